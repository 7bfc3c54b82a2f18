"""Launchers of kernels/cuda/fused_norms.cu: RMS norms fused with Q8_1 quantization, with the next norm, or with RoPE.

Each is one launch with the bits of the unfused kernel sequence (kernels/norms.py, kernels/quantize_q8_1.py,
kernels/rope.py), which the .cu header explains:

* `rms_norm_q8_1(x, w, eps)` = (rms_norm(x, w, eps), quantize_q8_1(that))
* `add_rms_norm_rms_norm(h, x, w_add, w_next, eps, scale, quantize=..., packed=...)` = (h2 := add_rms_norm(h, x,
  w_add, eps, scale), rms_norm(h2, w_next, eps), quantize_q8_1(that) or packed_x(that) or None): a residual add and
  the next sub-block's norm
* `rms_norm_rope_neox(x, w, eps, positions, inv_freq)` = rope_neox(rms_norm(x, w, eps), positions, inv_freq)
  per head (the q/k norm and RoPE)

Arrays are CuPy, C-contiguous; float32 rows [rows, D] (Q8_1: D % 32 == 0, blocks uint8 [rows, D / 32 * 36]).
Outputs are new arrays unless given; `out_h=h` (the residual in place) and rms_norm_rope_neox's `out=x` are the
only overlaps allowed. The `plan_*` functions validate on the host from shapes, dtypes, flags and addresses, so
they run (and are tested) on numpy arrays without a GPU; a bad argument raises ValueError naming the argument
(gemma_oracle.kernels.dequant.check_array, as every launcher: not an array, dtype, rank, shape, layout, alignment; and overlap).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gemma_oracle.kernels._checks import check_no_overlap
from gemma_oracle.kernels._compile import load_module
from gemma_oracle.kernels.dequant import check_array, require_device_arrays
from gemma_oracle.kernels.reference.q8_1 import BLOCK_BYTES, QK8_1

MODULE = "fused_norms"
THREADS = 256  # NORM_THREADS in norm_row.cuh (fixes the reduction order)
REG_MAX = 4096  # NORM_REG_MAX in norm_row.cuh: the longest head row rms_norm_rope_neox takes
ENTRIES = ("rms_norm_q8_1_f32", "add_rms_norm_rms_norm_f32", "rms_norm_rope_neox_f32", "add_rms_norm_rms_norm_packed_f32")
PACKED_GROUP = 64  # packed MMA's activation records cover 64 values of a row (kernels/packed_mma.py GROUP)


@dataclass(frozen=True)
class FusedNormLaunch:
    entry: str  # extern "C" name in fused_norms.cu
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    rows: int  # rows of the launch's row-major view (rms_norm_rope_neox: rows of x, each holding `heads` blocks)
    d: int  # normalized length
    q_shape: tuple[int, int] | None = None  # Q8_1 output [rows, D / 32 * 36], when the launch quantizes
    shared_mem: int = 0


# --- host-side checks ----------------------------------------------------------------------------------------------

def _check(name: str, a, dtype, ndim: int, shape: tuple[int, ...] | None = None, align: int = 4) -> None:
    check_array(name, a, dtype=dtype, ndim=ndim, shape=shape, align=align)


def _rows(name: str, x) -> tuple[int, int]:
    _check(name, x, np.float32, 2)
    rows, d = (int(v) for v in x.shape)
    if d == 0:
        raise ValueError(f"{name}: needs a non-empty last axis, got shape {tuple(x.shape)}")
    return rows, d


def _weight(name: str, w, d: int) -> None:
    if w is not None:
        _check(name, w, np.float32, 1, (d,))


def _q_shape(rows: int, d: int) -> tuple[int, int]:
    if d % QK8_1:
        raise ValueError(f"x: Q8_1 needs a row length that is a multiple of {QK8_1}, got {d}")
    return rows, d // QK8_1 * BLOCK_BYTES


def _geometry(blocks: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """One block of THREADS per row (per head row for the RoPE entry)."""
    return (blocks, 1, 1), (THREADS, 1, 1)


# --- plans -----------------------------------------------------------------------------------------------------------

def plan_rms_norm_q8_1(x, weight, *, out=None, out_q=None) -> FusedNormLaunch:
    rows, d = _rows("x", x)
    _weight("weight", weight, d)
    q_shape = _q_shape(rows, d)
    if out is not None:
        _check("out", out, np.float32, 2, (rows, d))
    if out_q is not None:
        _check("out_q", out_q, np.uint8, 2, q_shape)
    check_no_overlap({"out": out, "out_q": out_q}, {"x": x, "weight": weight}, in_place=(("out", "x"),))
    grid, block = _geometry(rows)
    return FusedNormLaunch(ENTRIES[0], grid, block, rows, d, q_shape)


def plan_add_rms_norm_rms_norm(h, x, w_add, w_next, *, quantize: bool, out_h=None, out=None,
                               out_q=None, packed: bool = False) -> FusedNormLaunch:
    rows, d = _rows("h", h)
    if packed and quantize:
        raise ValueError("packed: one of quantize (Q8_1 blocks) and packed (packed-MMA records) per launch")
    if packed and (d % PACKED_GROUP or rows == 0):
        raise ValueError(f"h: packed-MMA records need at least one row of a multiple of {PACKED_GROUP} values, got "
                         f"shape {tuple(h.shape)}")
    _check("x", x, np.float32, 2, (rows, d))
    _weight("w_add", w_add, d)
    _weight("w_next", w_next, d)
    q_shape = _q_shape(rows, d) if quantize else None
    for name, a in (("out_h", out_h), ("out", out)):
        if a is not None:
            _check(name, a, np.float32, 2, (rows, d))
    if out_q is not None:
        if not quantize:
            raise ValueError("out_q: given with quantize=False")
        _check("out_q", out_q, np.uint8, 2, q_shape)
    check_no_overlap({"out_h": out_h, "out": out, "out_q": out_q},
                      {"h": h, "x": x, "w_add": w_add, "w_next": w_next}, in_place=(("out_h", "h"),))
    grid, block = _geometry(rows)
    return FusedNormLaunch(ENTRIES[3] if packed else ENTRIES[1], grid, block, rows, d, q_shape)


def plan_rms_norm_rope_neox(x, weight, positions, inv_freq, *, out=None) -> FusedNormLaunch:
    _check("x", x, np.float32, 3)
    rows, heads, d = (int(v) for v in x.shape)
    if not 0 < d <= REG_MAX:
        raise ValueError(f"x: head dim must be in [1, {REG_MAX}] (one block holds a head row), got {d}")
    _weight("weight", weight, d)
    _check("positions", positions, np.int32, 1, (rows,))
    _check("inv_freq", inv_freq, np.float32, 1)
    half = int(inv_freq.shape[0])
    if half == 0 or 2 * half > d:
        raise ValueError(f"inv_freq: n_rot = 2 * {half} must be in [2, head dim {d}]")
    if out is not None:
        _check("out", out, np.float32, 3, (rows, heads, d))
    check_no_overlap({"out": out}, {"x": x, "weight": weight, "positions": positions, "inv_freq": inv_freq},
                      in_place=(("out", "x"),))
    if rows * heads >= 2**31:
        raise ValueError(f"x: rows * heads = {rows * heads} head rows exceed one launch's grid")
    grid, block = _geometry(rows * heads)
    return FusedNormLaunch(ENTRIES[2], grid, block, rows, d, None, shared_mem=4 * d)


# --- launchers -------------------------------------------------------------------------------------------------------

def _kernel(entry: str):
    return load_module(MODULE).get_function(entry)


def rms_norm_q8_1(x, weight, eps: float, *, out=None, out_q=None):
    """(y, yq): y = rms_norm(x, weight, eps) float32 [rows, D], yq its Q8_1 blocks uint8 [rows, D / 32 * 36]."""
    import cupy as cp

    plan = plan_rms_norm_q8_1(x, weight, out=out, out_q=out_q)
    require_device_arrays(x=x, weight=weight, out=out, out_q=out_q)
    y = cp.empty_like(x) if out is None else out
    yq = cp.empty(plan.q_shape, dtype=cp.uint8) if out_q is None else out_q
    if plan.rows:
        _kernel(plan.entry)(plan.grid, plan.block,
                            (x, x if weight is None else weight, y, yq, np.int32(plan.rows), np.int32(plan.d),
                             np.float32(eps), np.int32(weight is not None)))
    return y, yq


def add_rms_norm_rms_norm(h, x, w_add, w_next, eps: float, scale: float = 1.0, *, quantize: bool, out_h=None,
                          out=None, out_q=None, packed: bool = False):
    """(h2, y, yq): h2 = (h + rms_norm(x) [* w_add]) * scale (the residual), y = rms_norm(h2) [* w_next], and yq
    = y's Q8_1 blocks when `quantize`, y's packed-MMA records (xf, inv) (kernels/packed_mma.py packed_x(y), bit for
    bit) when `packed`, else None. h, x float32 [rows, D]; `out_h=h` updates the residual in place."""
    import cupy as cp

    plan = plan_add_rms_norm_rms_norm(h, x, w_add, w_next, quantize=quantize, out_h=out_h, out=out, out_q=out_q,
                                      packed=packed)
    require_device_arrays(h=h, x=x, w_add=w_add, w_next=w_next, out_h=out_h, out=out, out_q=out_q)
    h2 = cp.empty_like(h) if out_h is None else out_h
    y = cp.empty_like(h) if out is None else out
    if packed:
        from gemma_oracle.kernels.packed_mma import packed_x_buffers

        xf, inv = packed_x_buffers(plan.rows, plan.d)
        _kernel(plan.entry)(plan.grid, plan.block,
                            (h, x, x if w_add is None else w_add, x if w_next is None else w_next, h2, y, xf, inv,
                             np.int32(plan.rows), np.int32(plan.d), np.float32(eps), np.float32(scale),
                             np.int32(w_add is not None), np.int32(w_next is not None)))
        return h2, y, (xf, inv)
    yq = None if not quantize else cp.empty(plan.q_shape, dtype=cp.uint8) if out_q is None else out_q
    if plan.rows:
        _kernel(plan.entry)(plan.grid, plan.block,
                            (h, x, x if w_add is None else w_add, x if w_next is None else w_next, h2, y,
                             y if yq is None else yq,  # never written when has_q = 0
                             np.int32(plan.rows), np.int32(plan.d), np.float32(eps), np.float32(scale),
                             np.int32(w_add is not None), np.int32(w_next is not None), np.int32(quantize)))
    return h2, y, yq


def rms_norm_rope_neox(x, weight, eps: float, positions, inv_freq, *, out=None):
    """rope_neox(rms_norm(x, weight, eps), positions, inv_freq) of x [R, H, d] float32 (each head row normed);
    positions [R] int32, inv_freq [n_rot / 2] float32 (as gemma_oracle.kernels.rope.rope_neox takes them). `out=x` is allowed."""
    import cupy as cp

    plan = plan_rms_norm_rope_neox(x, weight, positions, inv_freq, out=out)
    require_device_arrays(x=x, weight=weight, positions=positions, inv_freq=inv_freq, out=out)
    y = cp.empty_like(x) if out is None else out
    rows, heads, d = x.shape
    if rows and heads:
        _kernel(plan.entry)(plan.grid, plan.block,
                            (x, x if weight is None else weight, positions, inv_freq, y, np.int32(rows),
                             np.int32(heads), np.int32(d), np.int32(inv_freq.shape[0]), np.float32(eps),
                             np.int32(weight is not None)),
                            shared_mem=plan.shared_mem)
    return y
