"""Numpy Q8_1 activation quantizer: the oracle for kernels/cuda/quantize_q8_1.cu.

Q8_1 is an activation-only GGML type (36 bytes per 32 values: fp16 d, fp16 s, int8 qs[32]); it never appears in a
model file, and gguf-py cannot quantize it (and still lists it as 40 bytes, which is stale). This module follows
the description of llama.cpp's CUDA `quantize_q8_1` in /work/shared/reference/quant-formats-and-kernels.md
section 1.3, not any kernel source:

* subnormal inputs (|x| < FLT_MIN) count as +0 (the GPU flushes them; see kernels/cuda/quantize_q8_1.cu);
* d = amax / 127 in float32, where amax is the largest |x| of the 32 values;
* q = roundf(x / d) with the float32 quotient, rounded half AWAY from zero (C `roundf`), and q = 0 for every value
  of a block whose amax is 0 (no 0/0);
* s = the sum of the 32 UNQUANTIZED float32 values (the CPU reference's s = d * sum(q) is a different quantity);
* d and s are stored as fp16, rounded to nearest even (numpy's astype(float16), ggml's conversion). The codes use
  the float32 d, not its fp16 rounding.

Summation order of s (a float32 sum is only bitwise reproducible in one stated order): fold the block in halves,
five times: s16[i] = x[i] + x[i + 16] for i < 16, then s8[i] = s16[i] + s16[i + 8], s4, s2, and s = s2[0] + s2[1],
every addition rounded to float32. That is the order a 32-lane xor butterfly (offsets 16, 8, 4, 2, 1) produces,
the reduction llama.cpp's quantizer uses.
"""
from __future__ import annotations

import numpy as np

QK8_1 = 32  # values per block
BLOCK_BYTES = 36  # fp16 d + fp16 s + 32 int8 codes (ggml-common.h; gguf-py's 40 is stale)


def _roundf(v: np.ndarray) -> np.ndarray:
    """C roundf on float32 values: nearest integer, halves away from zero.

    Evaluated in float64, where |v| + 0.5 is exact for every float32 |v| <= 2^24 (quotients here are <= ~127),
    so a value just below one half (0.49999997) is not pushed up to 1 as float32 addition would.
    """
    a = np.abs(v.astype(np.float64))
    return np.copysign(np.floor(a + 0.5), v)


def _halving_sum(b: np.ndarray) -> np.ndarray:
    """Float32 sum of each row of b (n, 32) in the halving order stated in the module docstring."""
    s = b
    while s.shape[1] > 1:
        half = s.shape[1] // 2
        s = s[:, :half] + s[:, half:]  # float32 + float32 -> float32, one rounding per addition
    return s[:, 0]


def quantize_q8_1(x: np.ndarray) -> np.ndarray:
    """float32 values [..., K] (K % 32 == 0) -> uint8 Q8_1 blocks [..., K // 32 * 36]."""
    x = np.asarray(x)
    if x.dtype != np.float32:
        raise ValueError(f"Q8_1: expected float32 activations, got {x.dtype}")
    if x.ndim == 0 or x.shape[-1] % QK8_1:
        raise ValueError(f"Q8_1: last axis ({x.shape[-1] if x.ndim else 0} values) is not a multiple of {QK8_1}")
    b = np.ascontiguousarray(x).reshape(-1, QK8_1)
    b = np.where(np.abs(b) < np.finfo(np.float32).tiny, np.float32(0), b)
    amax = np.abs(b).max(axis=1)
    d = amax / np.float32(127)  # float32 / float32: IEEE-rounded quotient
    zero = amax == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        quotient = b / np.where(zero, np.float32(1), d)[:, None]
    q = np.where(zero[:, None], 0.0, _roundf(quotient)).astype(np.int8)
    s = _halving_sum(b)
    out = np.empty((b.shape[0], BLOCK_BYTES), dtype=np.uint8)
    with np.errstate(over="ignore"):  # a sum beyond fp16's range becomes inf, as the GPU's cvt.rn.f16.f32 gives
        out[:, 0:2] = d.astype(np.float16).view(np.uint8).reshape(-1, 2)
        out[:, 2:4] = s.astype(np.float16).view(np.uint8).reshape(-1, 2)
    out[:, 4:] = q.view(np.uint8)
    return out.reshape(*x.shape[:-1], x.shape[-1] // QK8_1 * BLOCK_BYTES)


def dequantize_q8_1(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 Q8_1 blocks [..., nb * 36] -> (d * q as float32 [..., nb * 32], the stored s as float32 [..., nb])."""
    blocks = np.asarray(blocks)
    if blocks.dtype != np.uint8 or blocks.ndim == 0 or blocks.shape[-1] % BLOCK_BYTES:
        raise ValueError(f"Q8_1: expected uint8 with a last axis of whole {BLOCK_BYTES}-byte blocks, "
                         f"got {blocks.dtype} {blocks.shape}")
    b = np.ascontiguousarray(blocks).reshape(-1, BLOCK_BYTES)
    d = b[:, 0:2].copy().view(np.float16).astype(np.float32)
    s = b[:, 2:4].copy().view(np.float16).astype(np.float32)[:, 0]
    values = d * b[:, 4:].view(np.int8).astype(np.float32)
    lead = blocks.shape[:-1]
    nb = blocks.shape[-1] // BLOCK_BYTES
    return values.reshape(*lead, nb * QK8_1), s.reshape(*lead, nb)
