"""Compile options for every CUDA source in kernels/cuda/, in one place.

The same options serve CuPy's NVRTC at run time (`load_module`) and the local `nvcc` in the CPU test
that reads `ptxas -v` for register use and spills (`nvcc_command`).
"""
from __future__ import annotations

import functools
from pathlib import Path

CUDA_DIR = Path(__file__).with_name("cuda")
ARCH = "sm_90"
# No fast-math: kernels must reproduce float32 reference arithmetic exactly (the bitwise WS/GEMM-N
# contract and the dequantizers' equality with ggml); FMA contraction stays on (nvcc's default), and
# kernels that need one rounding order spell it with __fmaf_rn.
# IEEE float semantics spelled out (they are the defaults, but the bitwise contracts depend on them):
# subnormals are kept (no flush-to-zero), division and sqrt are correctly rounded.
IEEE_OPTIONS = ("-ftz=false", "-prec-div=true", "-prec-sqrt=true")
COMMON_OPTIONS = ("-std=c++17", f"-I{CUDA_DIR}")
NVRTC_OPTIONS = COMMON_OPTIONS + tuple("-" + o for o in IEEE_OPTIONS) + (f"--gpu-architecture={ARCH}",)
NVCC_OPTIONS = COMMON_OPTIONS + IEEE_OPTIONS + (f"-arch={ARCH}", "-Xptxas", "-v", "--cubin")
# GEMMA_ORACLE_MMQ_PREFETCH=1 compiles in decode-MMQ's L2 prefetch of its weights before the grid dependency wait
# (mmq.cu, MMQ_L2_PREFETCH); unset or 0 compiles it out. Opt-in, as GEMMA_ORACLE_PDL, until a device A/B has
# measured it. (The local nvcc build of tests/test_kernels_compile.py has it in, so its registers are checked.)
PREFETCH_ENV = "GEMMA_ORACLE_MMQ_PREFETCH"


def nvrtc_options() -> tuple[str, ...]:
    """NVRTC_OPTIONS with the switches the environment sets now."""
    import os

    value = os.environ.get(PREFETCH_ENV, "0").strip()
    if value not in ("0", "1"):
        raise ValueError(f"{PREFETCH_ENV}={value!r}: expected 0 (no weight prefetch) or 1")
    return NVRTC_OPTIONS + (("-DMMQ_L2_PREFETCH=0",) if value == "0" else ())  # mmq.cu's default is 1


def source_path(name: str) -> Path:
    return CUDA_DIR / f"{name}.cu"


def nvcc_command(name: str, out: Path) -> list[str]:
    """The local nvcc command that compiles kernels/cuda/<name>.cu with the run-time options."""
    return ["nvcc", *NVCC_OPTIONS, "-o", str(out), str(source_path(name))]


def _headers_digest() -> str:
    """Hash of every header in kernels/cuda/: CuPy's on-disk kernel cache keys on the source text only, so
    the text handed to NVRTC carries this hash, and editing a .cuh never reuses a stale compiled kernel."""
    import hashlib

    h = hashlib.sha256()
    for header in sorted(CUDA_DIR.glob("*.cuh")):
        h.update(header.name.encode() + header.read_bytes())
    return h.hexdigest()


@functools.lru_cache(maxsize=None)
def _module(name: str, name_expressions: tuple[str, ...], device_id: int, options: tuple[str, ...]):
    import cupy

    from gemma_oracle.kernels.launch import Module

    code = f"// headers {_headers_digest()}\n" + source_path(name).read_text()
    return Module(cupy.RawModule(code=code, options=options, name_expressions=name_expressions or None))


def load_module(name: str, name_expressions: tuple[str, ...] = ()):
    """The compiled kernels/cuda/<name>.cu for the current device (memoized per device): its get_function gives
    kernels launched by kernels/launch.py (programmatic dependent launch where the device has it)."""
    import cupy

    return _module(name, tuple(name_expressions), cupy.cuda.Device().id, nvrtc_options())
