"""Kernel launches with programmatic dependent launch (PDL), the one place every kernel of kernels/cuda/ is launched.

A decode step is hundreds of dependent launches (513 at N = 1 on the 12B stand-in), most of them a few microseconds
long, replayed from one CUDA graph. Between two of them the GPU drains the first grid, then launches the next and
starts its blocks. With PDL (sm_90: the launch attribute PROGRAMMATIC_STREAM_SERIALIZATION, `griddepcontrol` in the
kernels) the next grid is launched while the current one still runs, and its blocks wait on the device until the
current grid has completed and its writes are visible.

Stream order is kept exactly: every kernel's first statement is `grid_dependency_enter()` (kernels/cuda/common.cuh),
which, compiled with GRID_DEPENDENCY=1 (kernels/_compile.py does so exactly when PDL is asked for), waits for the
grid before it before reading or writing anything, and only then lets the grid after it launch; compiled without it,
it is empty and the kernels are the plain ones. A module remembers which it was compiled as (Module.pdl).
So no kernel overlaps the memory work of another (the exceptions read weights, which no kernel writes: packed MMA
asks its first weight groups into L2 before the wait, GEMMA_ORACLE_PACKED_PREFETCH, and decode-MMQ may, opt-in), the results are the same bits as plain launches, and
only the launch and block start-up of the next grid overlap the tail of this one. `tests/test_kernels_launch_host.py` checks
that every `__global__` in kernels/cuda/ starts with that call; a kernel without it, launched here, would race.

PDL is the default on devices of compute capability 9.0 or more (`GEMMA_ORACLE_PDL` unset or 1); `GEMMA_ORACLE_PDL=0`
launches every kernel through CuPy as before. Measured on an H100 (reports/history/2026-12-07-s20.md), the whole 12B
step at N = 1, 2, 16, 32 on both stand-ins, auto and batch-invariant: PDL with packed MMA's L2 prefetch (8 groups)
was 1.02-1.07x plain launches (cluster sums on both sides, same call). Launches are captured into CUDA graphs like any other (programmatic edges, CUDA 12.3+ drivers).
"""
from __future__ import annotations

import ctypes
import functools
import os

import numpy as np

ENV = "GEMMA_ORACLE_PDL"
# cuda.h: CUlaunchAttributeID
_ATTR_CLUSTER_DIMENSION = 4
_ATTR_PROGRAMMATIC_STREAM_SERIALIZATION = 6


class _LaunchAttribute(ctypes.Structure):
    """CUlaunchAttribute: an id, padding to 8 bytes, a 64-byte value union (8-byte aligned)."""
    _fields_ = [("id", ctypes.c_int), ("pad", ctypes.c_char * 4), ("value", ctypes.c_uint64 * 8)]


class _LaunchConfig(ctypes.Structure):
    """CUlaunchConfig."""
    _fields_ = [("gridDimX", ctypes.c_uint), ("gridDimY", ctypes.c_uint), ("gridDimZ", ctypes.c_uint),
                ("blockDimX", ctypes.c_uint), ("blockDimY", ctypes.c_uint), ("blockDimZ", ctypes.c_uint),
                ("sharedMemBytes", ctypes.c_uint), ("hStream", ctypes.c_void_p),
                ("attrs", ctypes.POINTER(_LaunchAttribute)), ("numAttrs", ctypes.c_uint)]


class LaunchError(RuntimeError):
    """A launch the driver refused: names the kernel and the driver's error."""


def pack_args(kernel: str, args) -> list:
    """One ctypes value per kernel argument, as CuPy passes them: a device array as its pointer, a NumPy scalar as
    its own type, a Python bool / int / float as bool / int64 / float64 (CuPy's rule). Anything else is a TypeError
    naming the kernel and the argument's position."""
    out = []
    for i, a in enumerate(args):
        if hasattr(a, "data") and hasattr(a.data, "ptr"):  # cupy.ndarray
            out.append(ctypes.c_uint64(int(a.data.ptr)))
        elif isinstance(a, np.generic):
            buf = (ctypes.c_char * a.itemsize).from_buffer_copy(a.tobytes())
            out.append(buf)
        elif isinstance(a, bool):
            out.append(ctypes.c_bool(a))
        elif isinstance(a, int):
            out.append(ctypes.c_int64(a))
        elif isinstance(a, float):
            out.append(ctypes.c_double(a))
        else:
            raise TypeError(f"{kernel}: argument {i} is a {type(a).__name__}; expected a device array, a NumPy "
                            "scalar, or a Python bool, int or float")
    return out


def pdl_requested() -> bool:
    """True when GEMMA_ORACLE_PDL is 1 or unset (the default); 0: plain launches."""
    value = os.environ.get(ENV, "1").strip() or "1"
    if value not in ("0", "1"):
        raise ValueError(f"{ENV}={value!r}: expected 0 (plain launches) or 1 (programmatic dependent launch)")
    return value == "1"


@functools.lru_cache(maxsize=None)
def device_is_sm90(device_id: int) -> bool:
    """Compute capability 9.0 or more: programmatic dependent launch and thread block clusters."""
    import cupy

    major = int(cupy.cuda.Device(device_id).compute_capability[:-1] or 0)
    return major >= 9


@functools.lru_cache(maxsize=1)
def _driver():
    lib = ctypes.CDLL("libcuda.so.1")
    lib.cuLaunchKernelEx.argtypes = [ctypes.POINTER(_LaunchConfig), ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p),
                                     ctypes.c_void_p]
    lib.cuLaunchKernelEx.restype = ctypes.c_int
    lib.cuGetErrorName.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]
    return lib


def launch_mode() -> str:
    """'pdl' or 'plain': how kernels compiled now are launched on the current device (the bench records it)."""
    import cupy

    return "pdl" if pdl_requested() and device_is_sm90(cupy.cuda.Device().id) else "plain"


class Kernel:
    """A compiled kernel, called as CuPy's are: kernel(grid, block, args, shared_mem=0, cluster=None), on the current
    stream. `pdl` is fixed when its module is compiled: only a kernel compiled with GRID_DEPENDENCY=1 (the wait in
    grid_dependency_enter) may be launched with the attribute, whatever the environment says later. `cluster`
    (x, y, z): launch in thread block clusters of that shape (sm_90; the grid a multiple of it in each dimension),
    for kernels that share shared memory across a cluster (packed_mma.cu's split K)."""

    def __init__(self, function, name: str, pdl: bool):
        self.function = function  # cupy RawKernel (RawModule.get_function)
        self.name = name
        self.pdl = pdl

    def __call__(self, grid, block, args, shared_mem: int = 0, cluster=None):
        if not self.pdl and cluster is None:
            return self.function(grid, block, args, shared_mem=shared_mem)
        import cupy

        grid, block = _dims(grid), _dims(block)
        values = pack_args(self.name, args)
        params = (ctypes.c_void_p * max(len(values), 1))(*[ctypes.addressof(v) for v in values])
        attrs = []
        if self.pdl:
            attr = _LaunchAttribute(id=_ATTR_PROGRAMMATIC_STREAM_SERIALIZATION)
            attr.value[0] = 1  # programmaticStreamSerializationAllowed (an int at offset 0, little-endian)
            attrs.append(attr)
        if cluster is not None:
            cluster = _dims(cluster)
            if any(g % c for g, c in zip(grid, cluster)):
                raise LaunchError(f"{self.name}: grid {grid} is not a multiple of the cluster {cluster}")
            attr = _LaunchAttribute(id=_ATTR_CLUSTER_DIMENSION)
            words = (ctypes.c_uint * 16).from_buffer(attr.value)  # CUlaunchAttributeValue.clusterDim: x, y, z
            words[0], words[1], words[2] = cluster
            attrs.append(attr)
        array = (_LaunchAttribute * len(attrs))(*attrs)
        config = _LaunchConfig(*grid, *block, int(shared_mem), ctypes.c_void_p(cupy.cuda.get_current_stream().ptr),
                               array, len(attrs))
        function = getattr(self.function, "kernel", self.function)  # RawKernel -> cupy.cuda.function.Function
        lib = _driver()
        status = lib.cuLaunchKernelEx(ctypes.byref(config), ctypes.c_void_p(function.ptr), params, None)
        if status:
            name = ctypes.c_char_p()
            lib.cuGetErrorName(status, ctypes.byref(name))
            raise LaunchError(f"{self.name}: cuLaunchKernelEx(grid={grid}, block={block}, shared_mem={shared_mem}, "
                              f"cluster={cluster}) failed with {(name.value or b'?').decode()} ({status})")


def _dims(d) -> tuple[int, int, int]:
    d = (d,) if isinstance(d, int) else tuple(int(v) for v in d)
    return (d + (1, 1, 1))[:3]


class Module:
    """A compiled kernels/cuda/<name>.cu whose get_function gives Kernels (memoized); `pdl`: it was compiled with
    GRID_DEPENDENCY=1 (kernels/_compile.py), so its kernels are launched with PDL."""

    def __init__(self, raw_module, pdl: bool):
        self.raw = raw_module
        self.pdl = pdl
        self._kernels: dict[str, Kernel] = {}

    def get_function(self, name: str) -> Kernel:
        k = self._kernels.get(name)
        if k is None:
            k = self._kernels[name] = Kernel(self.raw.get_function(name), name, self.pdl)
        return k
