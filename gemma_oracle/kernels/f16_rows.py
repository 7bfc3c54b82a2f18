"""Launcher of kernels/cuda/f16_rows.cu: float32 activations [N, K] -> (fp16 rows [N, K], float32 inv [N]).

Each row is scaled by a power of two that puts its largest magnitude in [2^14, 2^15) before rounding to fp16, and
inv undoes it exactly (the dequant-MMA route multiplies its float32 results by inv). Bitwise equal to
kernels/reference/f16_operands.py `f16_rows`. `plan_f16_rows` validates on the host without a GPU.
"""
from __future__ import annotations

import numpy as np

from gemma_oracle.kernels._compile import load_module
from gemma_oracle.kernels.dequant import check_array, require_device_arrays

MODULE = "f16_rows"
THREADS = 256  # F16_ROWS_THREADS in f16_rows.cu
ROW_MULTIPLE = 8  # K % 8 == 0: dq_mma.cu reads fp16 rows in 16-byte pieces


def plan_f16_rows(x) -> tuple[int, int]:
    """(N, K) after checking x is float32 [N, K], C-contiguous, with K a positive multiple of 8."""
    check_array("x", x, dtype=np.float32, ndim=2)
    n, k = (int(v) for v in x.shape)
    if k <= 0 or k % ROW_MULTIPLE:
        raise ValueError(f"x: the row length must be a positive multiple of {ROW_MULTIPLE}, got shape {tuple(x.shape)}")
    return n, k


def f16_rows(x):
    """(x16 uint16 [N, K] holding fp16 bits, inv float32 [N]) with x16 * inv = x to fp16 rounding (see module)."""
    import cupy

    n, k = plan_f16_rows(x)
    require_device_arrays(x=x)
    x16 = cupy.empty((n, k), dtype=cupy.uint16)
    inv = cupy.empty((n,), dtype=cupy.float32)
    if n:
        load_module(MODULE).get_function("f16_rows")((n, 1, 1), (THREADS, 1, 1), (x, np.int32(k), x16, inv))
    return x16, inv
