"""Host-side argument checks shared by the kernel launchers (run before any launch)."""
from __future__ import annotations


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
