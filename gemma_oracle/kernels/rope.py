"""Launcher of kernels/cuda/rope.cu: NEOX rotary embedding (pairs (i, i + n_rot/2)), float32.

x [R, H, d] float32 C-contiguous; positions [R] int32 (CuPy); inv_freq [n_rot/2] float32 (CuPy), already divided by
rope_freqs for Gemma 4 full layers (proportional RoPE). The angle is position * inv_freq[i] in float32; dims
>= n_rot pass through. `out=` may be x itself (in place) or a separate [R, H, d] float32 array.
"""
from __future__ import annotations

import cupy as cp

from ._checks import check_device_array
from ._compile import load_module

THREADS = 256  # ROPE_THREADS in rope.cu




def launch_geometry(rows: int, half: int) -> tuple[tuple[int], tuple[int], int]:
    """One block per row; dynamic shared memory holds the row's cos/sin table (2 * half floats)."""
    return (rows,), (THREADS,), 2 * half * 4


def rope_neox(x: cp.ndarray, positions: cp.ndarray, inv_freq: cp.ndarray, out: cp.ndarray | None = None) -> cp.ndarray:
    """NEOX RoPE of x [R, H, d] at positions [R] with inv_freq [n_rot/2]; returns [R, H, d] float32."""
    check_device_array("x", x, cp.float32, 3)
    check_device_array("positions", positions, cp.int32, 1)
    check_device_array("inv_freq", inv_freq, cp.float32, 1)
    rows, heads, d = (int(s) for s in x.shape)
    half = int(inv_freq.shape[0])
    if positions.shape[0] != rows:
        raise ValueError(f"positions: expected {rows} entries (one per row of x), got {positions.shape[0]}")
    if half == 0 or 2 * half > d:
        raise ValueError(f"inv_freq: n_rot = 2 * {half} must be in [2, head dim {d}]")
    if out is None:
        out = cp.empty_like(x)
    else:
        check_device_array("out", out, cp.float32, 3)
        if out.shape != x.shape:
            raise ValueError(f"out: expected shape {tuple(x.shape)}, got {tuple(out.shape)}")
        if out.data.ptr != x.data.ptr and cp.may_share_memory(out, x):
            raise ValueError("out: overlaps x without being x (only exact in-place is allowed)")
    if rows and heads:
        grid, block, smem = launch_geometry(rows, half)
        load_module("rope").get_function("rope_neox_f32")(
            grid, block, (x, positions, inv_freq, out, cp.int32(rows), cp.int32(heads), cp.int32(d), cp.int32(half)),
            shared_mem=smem)
    return out
