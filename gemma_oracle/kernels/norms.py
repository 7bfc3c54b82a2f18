"""Launchers of kernels/cuda/norms.cu: RMS norm, the fused residual add + RMS norm, the residual scale.

All arrays are CuPy float32, C-contiguous. The normalised axis is the LAST one; every leading axis is a row, so the
per-head q/k/v norms are the same call on [R, H, d] (viewed as [R*H, d]). `out=` may be the input itself
(in-place) or a separate C-contiguous float32 array of the same shape; a partial overlap is refused.
"""
from __future__ import annotations

import cupy as cp

from ._compile import load_module

THREADS = 256  # NORM_THREADS in norm_row.cuh (fixes the reduction order)
ELEMENTWISE_THREADS = 256


def _kernel(name: str):
    return load_module("norms").get_function(name)


def _check_f32(name: str, a, shape=None) -> None:
    if not isinstance(a, cp.ndarray):
        raise TypeError(f"{name}: expected a cupy.ndarray, got {type(a).__name__}")
    if a.dtype != cp.float32:
        raise TypeError(f"{name}: expected float32, got {a.dtype}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name}: must be C-contiguous")
    if shape is not None and tuple(a.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(a.shape)}")


def _out(out, like, *inputs):
    """The output array: a new one, or `out` checked (same shape, float32, contiguous, no partial overlap)."""
    if out is None:
        return cp.empty_like(like)
    _check_f32("out", out, like.shape)
    for a in inputs:
        if a is not None and out.data.ptr != a.data.ptr and cp.may_share_memory(out, a):
            raise ValueError("out: overlaps an input without being the same array (only exact in-place is allowed)")
    return out


def _rows(x) -> tuple[int, int]:
    if x.ndim < 1 or x.shape[-1] == 0:
        raise ValueError(f"x: needs a non-empty last axis, got shape {tuple(x.shape)}")
    d = int(x.shape[-1])
    return x.size // d, d


def _weight(weight, d: int):
    if weight is None:
        return None, 0
    _check_f32("weight", weight, (d,))
    return weight, 1


def launch_geometry(rows: int) -> tuple[tuple[int], tuple[int]]:
    """One block of THREADS per row."""
    return (rows,), (THREADS,)


def _elementwise_geometry(n: int) -> tuple[tuple[int], tuple[int]]:
    return (max(1, min((n + ELEMENTWISE_THREADS - 1) // ELEMENTWISE_THREADS, 65535)),), (ELEMENTWISE_THREADS,)


def rms_norm(x: cp.ndarray, weight: cp.ndarray | None, eps: float, out: cp.ndarray | None = None) -> cp.ndarray:
    """x [..., D] float32 -> x * (1 / sqrt(mean(x^2) + eps)) [* weight[D]] over the last axis."""
    _check_f32("x", x)
    rows, d = _rows(x)
    weight, has_w = _weight(weight, d)
    y = _out(out, x, x, weight)
    if rows:
        grid, block = launch_geometry(rows)
        _kernel("rms_norm_f32")(grid, block, (x, weight if has_w else x, y, cp.int32(rows), cp.int32(d),
                                              cp.float32(eps), cp.int32(has_w)))
    return y


def add_rms_norm(h: cp.ndarray, x: cp.ndarray, weight: cp.ndarray | None, eps: float, scale: float = 1.0,
                 out: cp.ndarray | None = None) -> cp.ndarray:
    """(h + rms_norm(x) [* weight]) * scale, h and x [..., D] float32 of one shape.

    The post-attention / post-FFN residual; pass layer_output_scale as `scale` on a layer's last add (1.0 leaves
    the sum unchanged exactly). `out=h` updates the residual in place.
    """
    _check_f32("h", h)
    _check_f32("x", x, h.shape)
    rows, d = _rows(x)
    weight, has_w = _weight(weight, d)
    y = _out(out, h, h, x, weight)
    if rows:
        grid, block = launch_geometry(rows)
        _kernel("add_rms_norm_f32")(grid, block, (h, x, weight if has_w else x, y, cp.int32(rows), cp.int32(d),
                                                  cp.float32(eps), cp.float32(scale), cp.int32(has_w)))
    return y


def residual_scale(x: cp.ndarray, scale: float, out: cp.ndarray | None = None) -> cp.ndarray:
    """x * scale (layer_output_scale applied to the whole residual stream, spec §2.6), any shape, float32."""
    _check_f32("x", x)
    y = _out(out, x, x)
    n = x.size
    if n:
        grid, block = _elementwise_geometry(n)
        _kernel("scale_f32")(grid, block, (x, y, cp.int64(n), cp.float32(scale)))
    return y
