"""Host-side argument checks shared by the kernel launchers (run before any launch)."""
from __future__ import annotations

from gemma_oracle.kernels.dequant import address


def check_device_array(name: str, a, dtype, ndim: int) -> None:
    """`a` must be a C-contiguous CuPy array of `dtype` with `ndim` dims; the error names the argument."""
    import cupy as cp

    if not isinstance(a, cp.ndarray):
        raise TypeError(f"{name}: expected a cupy.ndarray, got {type(a).__name__}")
    if a.dtype != dtype:
        raise TypeError(f"{name}: expected {cp.dtype(dtype).name}, got {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dims, got shape {tuple(a.shape)}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name}: must be C-contiguous")


def _span(a) -> tuple[int, int]:
    start = address(a)
    return start, start + int(a.nbytes)


def check_no_overlap(outputs: dict, inputs: dict, in_place: tuple[tuple[str, str], ...] = ()) -> None:
    """No output shares a byte with an input or another output, except the (output, input) pairs of `in_place`,
    which may be the very same array (same address and shape) but not a partial overlap."""
    named = [(n, a) for n, a in {**inputs, **outputs}.items() if a is not None and a.size]
    for out_name, out in outputs.items():
        if out is None or not out.size:
            continue
        lo, hi = _span(out)
        for name, a in named:
            if name == out_name:
                continue
            a_lo, a_hi = _span(a)
            if a_lo >= hi or lo >= a_hi:
                continue
            if (out_name, name) in in_place and (lo, hi) == (a_lo, a_hi) and out.shape == a.shape:
                continue
            exact = f" (only exactly {name} itself is allowed)" if (out_name, name) in in_place else ""
            raise ValueError(f"{out_name}: overlaps {name}{exact}")
