"""Launcher of kernels/cuda/quantize_q8_1.cu: float32 activations [N, K] -> Q8_1 blocks uint8 [N, K / 32 * 36].

Bitwise equal to kernels/reference/q8_1.py (the .cu header and that module state the arithmetic and the order
of the block sum s). `plan_quantize_q8_1` validates on the host without a GPU.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gemma_oracle.kernels._compile import load_module
from gemma_oracle.kernels.dequant import check_array, require_device_arrays
from gemma_oracle.kernels.reference.q8_1 import BLOCK_BYTES, QK8_1

MODULE = "quantize_q8_1"
WARPS = 8  # Q8_1_WARPS in quantize_q8_1.cu: one warp per 32-value block
THREADS = 32 * WARPS


@dataclass(frozen=True)
class Q8_1Launch:
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    n_blocks: int
    out_shape: tuple[int, int]


def q8_1_geometry(n_blocks: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    return ((n_blocks + WARPS - 1) // WARPS, 1, 1), (THREADS, 1, 1)


def plan_quantize_q8_1(x, *, out=None) -> Q8_1Launch:
    check_array("x", x, dtype=np.float32, ndim=2)
    n, k = (int(v) for v in x.shape)
    if k <= 0 or k % QK8_1:
        raise ValueError(f"x: the row length must be a positive multiple of {QK8_1}, got shape {tuple(x.shape)}")
    out_shape = (n, k // QK8_1 * BLOCK_BYTES)
    if out is not None:
        check_array("out", out, dtype=np.uint8, ndim=2, shape=out_shape, align=4)  # 32-bit stores
    n_blocks = n * k // QK8_1
    grid, block = q8_1_geometry(n_blocks)
    return Q8_1Launch(grid, block, n_blocks, out_shape)


def quantize_q8_1(x, *, out=None):
    """Q8_1 blocks of x (float32 [N, K], K % 32 == 0) as uint8 [N, K // 32 * 36]."""
    import cupy

    plan = plan_quantize_q8_1(x, out=out)
    require_device_arrays(x=x, out=out)
    q = cupy.empty(plan.out_shape, dtype=cupy.uint8) if out is None else out
    if plan.n_blocks:
        load_module(MODULE).get_function("quantize_q8_1")(plan.grid, plan.block, (x, np.int64(plan.n_blocks), q))
    return q
