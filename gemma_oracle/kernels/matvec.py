"""Launcher of kernels/cuda/matvec.cu: the batched mat-vec y[n, r] = sum_k W[r, k] * x[n, k].

W is raw GGUF bytes [rows, row_bytes] of any type the loader accepts (see kernels/dequant.py for the buffer
rules), x is float32 [N, K] (K = n_cols, C-contiguous, 16-byte aligned), y is float32 [N, rows].

Routes (seed-project.md section 1.2-1.3):
  "ws"      weight-stationary, N in 1..16: one launch; the smallest capacity NCAP in WS_CAPACITIES >= N is used.
  "gemm_n"  any N up to MAX_GEMM_N: the token is grid.y, each (row, token) runs the NCAP = 1 reduction.
  "auto"    ws for N <= WS_MAX_N, else gemm_n.
Contract: every route at every N is BITWISE equal to the N = 1 path (route "ws", N = 1) on the same inputs; the
.cu header says how that holds by construction.

`plan_matvec` does all host-side validation and the launch geometry and needs no GPU; `matvec` launches.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gemma_oracle.kernels._compile import load_module
from gemma_oracle.kernels.dequant import UNIT, check_array, check_weight_rows, require_device_arrays

MODULE = "matvec"
ROWS_PER_BLOCK = 4  # MV_WARPS in matvec.cu: one warp per row
THREADS = 32 * ROWS_PER_BLOCK
WS_CAPACITIES = (1, 2, 4, 8, 16)  # the NCAP instantiations in matvec.cu (ws_<t>_n<NCAP>)
WS_MAX_N = WS_CAPACITIES[-1]
MAX_GEMM_N = 65535  # CUDA's grid.y limit
ROUTES = ("auto", "ws", "gemm_n")
X_ALIGN = 16  # float4 activation loads


@dataclass(frozen=True)
class MatvecLaunch:
    route: str  # "ws" or "gemm_n" (auto resolved)
    entry: str  # extern "C" name in matvec.cu
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    rows: int
    row_bytes: int
    units: int  # 32-value units per row (K / 32)
    n: int  # tokens


def ws_capacity(n: int) -> int:
    """The smallest WS capacity that holds n tokens."""
    for cap in WS_CAPACITIES:
        if n <= cap:
            return cap
    raise ValueError(f"n: WS holds at most {WS_MAX_N} tokens, got {n}; use route='gemm_n' (or 'auto')")


def resolve_route(route: str, n: int) -> str:
    if route not in ROUTES:
        raise ValueError(f"route: expected one of {ROUTES}, got {route!r}")
    if route == "auto":
        return "ws" if n <= WS_MAX_N else "gemm_n"
    if route == "ws" and n > WS_MAX_N:
        raise ValueError(f"route='ws' holds at most {WS_MAX_N} tokens, got N = {n}; use 'gemm_n' or 'auto'")
    if route == "gemm_n" and n > MAX_GEMM_N:
        raise ValueError(f"route='gemm_n' takes at most {MAX_GEMM_N} tokens (grid.y), got N = {n}")
    return route


def matvec_geometry(rows: int, n: int, route: str) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(grid, block): ROWS_PER_BLOCK rows per block (a tail block's spare warps exit); GEMM-N adds tokens on y."""
    blocks = (rows + ROWS_PER_BLOCK - 1) // ROWS_PER_BLOCK
    return (blocks, n if route == "gemm_n" else 1, 1), (THREADS, 1, 1)


def plan_matvec(w_raw, type_name: str, n_cols: int, x, *, route: str = "auto", out=None) -> MatvecLaunch:
    """Validate the arguments of `matvec` on the host (shapes, dtypes, contiguity, alignment) and plan the launch."""
    rows, rb = check_weight_rows(w_raw, type_name, n_cols)
    check_array("x", x, dtype=np.float32, ndim=2, align=X_ALIGN)
    n, k = (int(v) for v in x.shape)
    if k != n_cols:
        raise ValueError(f"x: expected {n_cols} columns (n_cols), got shape {tuple(x.shape)}")
    if n < 1:
        raise ValueError(f"x: need at least one token (row), got shape {tuple(x.shape)}")
    route = resolve_route(route, n)
    if out is not None:
        check_array("out", out, dtype=np.float32, ndim=2, shape=(n, rows), align=4)
    t = type_name.lower()
    entry = f"ws_{t}_n{ws_capacity(n)}" if route == "ws" else f"gemm_n_{t}"
    grid, block = matvec_geometry(rows, n, route)
    return MatvecLaunch(route, entry, grid, block, rows, rb, int(n_cols) // UNIT, n)


def _kernel(entry: str):
    return load_module(MODULE).get_function(entry)


def matvec(w_raw, type_name: str, n_cols: int, x, *, route: str = "auto", out=None):
    """y [N, rows] float32 = x [N, n_cols] @ dequant(W).T, W the GGUF rows `w_raw` of `type_name`.

    out: an optional float32 C-contiguous [N, rows] array to write into (e.g. a view between guard regions).
    """
    import cupy

    plan = plan_matvec(w_raw, type_name, n_cols, x, route=route, out=out)
    require_device_arrays(w_raw=w_raw, x=x, out=out)
    y = cupy.empty((plan.n, plan.rows), dtype=cupy.float32) if out is None else out
    _kernel(plan.entry)(plan.grid, plan.block,
                        (w_raw, np.int64(plan.row_bytes), np.int32(plan.rows), np.int32(plan.units), x,
                         np.int32(plan.n), y))
    return y
