"""Numpy references for the dequant-MMA route's fp16 operands (kernels/cuda/f16_rows.cu and dq_mma.cu):

* `f16_rows(x)`: float32 activations [n, K] -> (fp16 rows, inv): each row scaled by the power of two 2^e that puts
  its largest magnitude in [2^14, 2^15) and rounded to fp16 (nearest even); inv = 2^-e. Bitwise equal to the kernel.
* `dequant_f16(raw, type_name, n_cols)`: the fp16 weights dq_mma.cu stages in shared memory: per 32-value block (Q6_K:
  16-value half) the float32 scale d and offset m of ggml's dequantization (value = d * code - m), then
  w16 = fp16_rn(code * fp16_rn(d) + fp16_rn(-m)) with the product and sum exact (one fused half2 multiply-add).
  Bitwise equal to what the kernel multiplies (test_kernels_dq_mma_gpu.py checks it through an identity matrix).
"""
from __future__ import annotations

import numpy as np

from gemma_oracle.kernels.reference.dequant import block_codes

TARGET_EXP = 15  # the row's largest magnitude times 2^e lies in [2^(TARGET_EXP - 1), 2^TARGET_EXP)
MAX_E = 126  # |e| bound: 2^e and 2^-e stay normal float32


def row_exponents(x: np.ndarray) -> np.ndarray:
    """e per row of float32 x [n, K]: 15 - ex with max |x| in [2^(ex - 1), 2^ex), clamped to [-126, 126]; 0 for a row
    whose max |x| is zero or a float32 subnormal."""
    amax = np.abs(np.asarray(x, dtype=np.float32)).max(axis=1)
    biased = ((amax.view(np.uint32) >> np.uint32(23)) & np.uint32(0xFF)).astype(np.int64)
    e = np.clip(TARGET_EXP - (biased - 126), -MAX_E, MAX_E)
    return np.where(biased > 0, e, 0).astype(np.int64)


def f16_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fp16 [n, K], float32 inv [n]) for float32 x [n, K]."""
    x = np.asarray(x, dtype=np.float32)
    e = row_exponents(x)
    up = np.ldexp(np.float32(1), e.astype(np.int32)).astype(np.float32)[:, None]
    x16 = (x * up).astype(np.float16)  # x * 2^e is exact in float32; astype rounds to nearest even
    inv = np.ldexp(np.float32(1), (-e).astype(np.int32)).astype(np.float32)
    return x16, inv


def dequant_f16(raw: np.ndarray, type_name: str, n_cols: int) -> np.ndarray:
    """fp16 [rows, n_cols]: the weights as dq_mma.cu multiplies them."""
    raw = np.asarray(raw)
    codes, d, m = block_codes(raw.reshape(-1), type_name)
    d16 = d.astype(np.float16).astype(np.float64)
    neg_m16 = (-m).astype(np.float16).astype(np.float64)
    # code * d16 (<= 8 + 11 significant bits) + neg_m16 is exact in float64; one rounding to fp16
    return (codes * d16 + neg_m16).astype(np.float16).reshape(raw.shape[0], int(n_cols))
