"""Launchers of kernels/cuda/dequant.cu: GGUF weight rows -> float32 on the GPU, bitwise equal to
kernels/reference/dequant.py, and the quantized embedding-row lookup.

Weights are raw GGUF bytes as a CuPy uint8 array [rows, row_bytes] (row-major, each row `row_bytes` long, as
in the file), starting 16-byte aligned (CuPy allocations are; a row slice of a matrix whose row_bytes is a
multiple of 16 is too). Every type the loader accepts is supported: F32, F16, BF16, Q4_0, Q5_0, Q8_0, Q4_K,
Q5_K, Q6_K; rows must hold a multiple of 32 values (the kernels' unit).

The host-side checks (`plan_*`) read only shapes, dtypes, flags and addresses, so they run (and are tested)
without a GPU; they raise ValueError naming the argument and what is wrong. This module also holds the checks
of a weight-row buffer that kernels/matvec.py shares.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gemma_oracle.kernels._compile import load_module
from gemma_oracle.kernels.reference.dequant import BLOCK_SIZES, row_bytes

MODULE = "dequant"
TYPE_NAMES: tuple[str, ...] = tuple(BLOCK_SIZES)  # every GGML type the loader accepts
UNIT = 32  # QB_UNIT in quant_blocks.cuh: values one thread decodes
WEIGHT_ALIGN = 16  # bytes: quant_blocks.cuh reads F32/F16/BF16/Q4_K/Q5_K with 16-byte vector loads
THREADS = 256  # DQ_THREADS in dequant.cu
ID_DTYPES = (np.dtype(np.int32), np.dtype(np.int64))


# --- host-side checks, shared with kernels/matvec.py and kernels/quantize_q8_1.py --------------------------------

def address(a) -> int:
    """Device (CuPy) or host (numpy) address of a's first element."""
    ptr = getattr(getattr(a, "data", None), "ptr", None)
    return int(ptr) if ptr is not None else int(a.__array_interface__["data"][0])


def check_array(name: str, a, *, dtype, ndim: int, shape: tuple[int, ...] | None = None, align: int = 1) -> None:
    """`a` has this dtype and rank (and shape), is C-contiguous, and starts `align`-byte aligned."""
    for attr in ("shape", "dtype", "flags"):
        if not hasattr(a, attr):
            raise ValueError(f"{name}: expected an array, got {type(a).__name__}")
    if np.dtype(a.dtype) != np.dtype(dtype):
        raise ValueError(f"{name}: expected dtype {np.dtype(dtype).name}, got {np.dtype(a.dtype).name}")
    if a.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim}-D, got shape {tuple(a.shape)}")
    if shape is not None and tuple(a.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(a.shape)}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name}: must be C-contiguous (strides {tuple(a.strides)} for shape {tuple(a.shape)})")
    if a.size and address(a) % align:
        raise ValueError(f"{name}: must start {align}-byte aligned, address {address(a):#x} is not")


def check_weight_rows(w_raw, type_name: str, n_cols: int) -> tuple[int, int]:
    """Check a GGUF weight buffer [rows, row_bytes] of `type_name` rows of `n_cols` values; (rows, row_bytes)."""
    if type_name not in BLOCK_SIZES:
        raise ValueError(f"type_name: unknown or unsupported GGML type {type_name!r}; known: {list(TYPE_NAMES)}")
    if not isinstance(n_cols, (int, np.integer)) or isinstance(n_cols, bool) or n_cols <= 0 or n_cols % UNIT:
        raise ValueError(f"n_cols: must be a positive multiple of {UNIT} (the kernels' unit), got {n_cols!r}")
    n_cols = int(n_cols)
    rb = row_bytes(type_name, n_cols)  # raises ValueError when n_cols is not a whole number of blocks
    check_array("w_raw", w_raw, dtype=np.uint8, ndim=2, align=WEIGHT_ALIGN)
    rows, got = (int(v) for v in w_raw.shape)
    if got != rb:
        raise ValueError(f"w_raw: a {type_name} row of {n_cols} values is {rb} bytes, got rows of {got} bytes")
    if rows <= 0 or rows >= 2**31:
        raise ValueError(f"w_raw: need 1 <= rows < 2**31, got {rows}")
    return rows, rb


def require_device_arrays(**arrays) -> None:
    """Every given array is a cupy.ndarray (the plan checks accept numpy too, a launch does not)."""
    import cupy

    for name, a in arrays.items():
        if a is not None and not isinstance(a, cupy.ndarray):
            raise ValueError(f"{name}: expected a cupy.ndarray on the GPU, got {type(a).__module__}.{type(a).__name__}")


# --- plans: validated arguments and launch geometry ---------------------------------------------------------------

@dataclass(frozen=True)
class DequantLaunch:
    entry: str  # extern "C" name in dequant.cu
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    rows: int  # rows in the weight buffer
    row_bytes: int
    units: int  # 32-value units per row
    out_shape: tuple[int, int]


def dequant_geometry(n_units: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """One thread per 32-value unit, THREADS per block (the grid never changes a value)."""
    return ((n_units + THREADS - 1) // THREADS, 1, 1), (THREADS, 1, 1)


def _check_out(out, shape: tuple[int, int]) -> None:
    if out is not None:
        check_array("out", out, dtype=np.float32, ndim=2, shape=shape, align=16)  # float4 stores


def plan_dequantize(w_raw, type_name: str, n_cols: int, *, out=None) -> DequantLaunch:
    rows, rb = check_weight_rows(w_raw, type_name, n_cols)
    units = n_cols // UNIT
    _check_out(out, (rows, n_cols))
    grid, block = dequant_geometry(rows * units)
    return DequantLaunch(f"dequant_{type_name.lower()}", grid, block, rows, rb, units, (rows, int(n_cols)))


def plan_dequantize_rows(w_raw, type_name: str, n_cols: int, row_ids, *, out=None) -> DequantLaunch:
    rows, rb = check_weight_rows(w_raw, type_name, n_cols)
    if not hasattr(row_ids, "dtype") or np.dtype(row_ids.dtype) not in ID_DTYPES:
        raise ValueError(f"row_ids: expected int32 or int64, got {getattr(row_ids, 'dtype', type(row_ids).__name__)}")
    check_array("row_ids", row_ids, dtype=row_ids.dtype, ndim=1)
    units = n_cols // UNIT
    n_ids = int(row_ids.shape[0])
    _check_out(out, (n_ids, n_cols))
    grid, block = dequant_geometry(n_ids * units)
    entry = f"dequant_rows_{type_name.lower()}_{'i32' if row_ids.dtype == np.int32 else 'i64'}"
    return DequantLaunch(entry, grid, block, rows, rb, units, (n_ids, int(n_cols)))


# --- launchers ----------------------------------------------------------------------------------------------------

def _kernel(entry: str):
    return load_module(MODULE).get_function(entry)


def dequantize(w_raw, type_name: str, n_cols: int, *, out=None):
    """GGUF rows [rows, row_bytes] -> float32 [rows, n_cols], bitwise equal to gemma_oracle.kernels.reference.dequant."""
    import cupy

    plan = plan_dequantize(w_raw, type_name, n_cols, out=out)
    require_device_arrays(w_raw=w_raw, out=out)
    y = cupy.empty(plan.out_shape, dtype=cupy.float32) if out is None else out
    _kernel(plan.entry)(plan.grid, plan.block,
                        (w_raw, np.int64(plan.row_bytes), np.int64(plan.rows), np.int32(plan.units), y))
    return y


def dequantize_rows(w_raw, type_name: str, n_cols: int, row_ids, *, out=None, check_ids: bool = False):
    """Embedding lookup: float32 [R, n_cols] whose row i is row `row_ids[i]` of the GGUF rows, dequantized.

    An id outside [0, rows) reads nothing and gives a row of NaN; with check_ids=True the ids are checked on the
    host first (one device sync) and a bad one raises ValueError.
    """
    import cupy

    plan = plan_dequantize_rows(w_raw, type_name, n_cols, row_ids, out=out)
    require_device_arrays(w_raw=w_raw, row_ids=row_ids, out=out)
    if check_ids and row_ids.size:
        lo, hi = int(row_ids.min()), int(row_ids.max())
        if lo < 0 or hi >= plan.rows:
            raise ValueError(f"row_ids: ids must lie in [0, {plan.rows}), got min {lo} and max {hi}")
    y = cupy.empty(plan.out_shape, dtype=cupy.float32) if out is None else out
    if plan.out_shape[0]:
        _kernel(plan.entry)(plan.grid, plan.block,
                            (w_raw, np.int64(plan.row_bytes), np.int64(plan.rows), np.int32(plan.units),
                             row_ids, np.int64(plan.out_shape[0]), y))
    return y
