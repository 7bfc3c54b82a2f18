"""Compile options for every CUDA source in kernels/cuda/, in one place.

The same options serve CuPy's NVRTC at run time (`load_module`) and the local `nvcc` in the CPU test
that reads `ptxas -v` for register use and spills (`nvcc_command`).
"""
from __future__ import annotations

import functools
import os
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
# The local nvcc build (tests/test_kernels_compile.py: registers and spills) compiles the opt-in variants below,
# which hold everything the default build holds and more.
NVCC_OPTIONS = COMMON_OPTIONS + IEEE_OPTIONS + (f"-arch={ARCH}", "-Xptxas", "-v", "--cubin", "-DGRID_DEPENDENCY=1",
                                                "-DMMQ_L2_PREFETCH=1", "-DPK_L2_PREFETCH=8",
                                                "-DPK_L2_AHEAD=8")
# Switches: programmatic dependent launch (kernels/launch.py, GEMMA_ORACLE_PDL: on unless 0) compiles every kernel
# with GRID_DEPENDENCY=1 (the wait in common.cuh's grid_dependency_enter); GEMMA_ORACLE_MMQ_PREFETCH=1 (opt-in) compiles in decode-MMQ's L2 prefetch of its weights before that
# wait (mmq.cu, MMQ_L2_PREFETCH).
PREFETCH_ENV = "GEMMA_ORACLE_MMQ_PREFETCH"
# GEMMA_ORACLE_PACKED_PREFETCH=G (G groups of 64 values; 0: none; unset: PACKED_PREFETCH_DEFAULT) compiles in packed
# MMA's L2 prefetch of the first G groups of each m16 tile's K slice before that wait (packed_mma.cu, PK_L2_PREFETCH;
# only with PDL). Whole 12B step on an H100, PDL and cluster sums on both sides (reports/history/2026-12-07-s20.md):
# 8 groups were 1.02-1.05x none at N = 1, 2, 16, 32 (auto and batch-invariant); 4 groups 0.96-1.01x 8, 16 groups 0.96x.
PACKED_PREFETCH_ENV = "GEMMA_ORACLE_PACKED_PREFETCH"
PACKED_PREFETCH_DEFAULT = 8
# GEMMA_ORACLE_PACKED_AHEAD=A (groups, a power of two; 0 or unset: PACKED_AHEAD_DEFAULT) compiles in packed MMA's
# rolling L2 prefetch: every A groups, each m16 tile's next A records, A to 2A groups past its register ring
# (packed_mma.cu, PK_L2_AHEAD; with or without PDL). Off by default: on an H100, A = 4 made the whole 12B step
# 0.91-0.92x at N = 1-2 (shape12b, auto; reports/history/2026-12-07-s21.md).
PACKED_AHEAD_ENV = "GEMMA_ORACLE_PACKED_AHEAD"
PACKED_AHEAD_DEFAULT = 0
# GEMMA_ORACLE_PACKED_Q4_0_PAD=1 pads packed MMA's Q4_0 records from 576 to 640 bytes (packed_mma.cu PK_Q4_0_RECORD;
# kernels/packed_mma.py record_words): every record's codes on a 128-byte line. Opt-in until a device A/B has timed it.
PACKED_Q4_0_PAD_ENV = "GEMMA_ORACLE_PACKED_Q4_0_PAD"


def q4_0_padded() -> bool:
    value = os.environ.get(PACKED_Q4_0_PAD_ENV, "0").strip() or "0"
    if value not in ("0", "1"):
        raise ValueError(f"{PACKED_Q4_0_PAD_ENV}={value!r}: expected 1 (640-byte Q4_0 records) or 0 (576)")
    return value == "1"


def _groups_from_env(name: str, default: int) -> int:
    value = os.environ.get(name, str(default)).strip() or str(default)
    if not value.isdigit() or int(value) > 1024:
        raise ValueError(f"{name}={value!r}: expected a count of 64-value groups, 0 (none) to 1024")
    return int(value)


def nvrtc_options(pdl: bool = False) -> tuple[str, ...]:
    """NVRTC_OPTIONS with the opt-in defines: GRID_DEPENDENCY=1 when `pdl` (kernels/launch.py decides it from
    GEMMA_ORACLE_PDL and the device), MMQ_L2_PREFETCH=1 when GEMMA_ORACLE_MMQ_PREFETCH=1, PK_L2_PREFETCH=G when
    GEMMA_ORACLE_PACKED_PREFETCH=G > 0 (unset: PACKED_PREFETCH_DEFAULT), PK_L2_AHEAD=A when
    GEMMA_ORACLE_PACKED_AHEAD=A > 0 (unset: PACKED_AHEAD_DEFAULT), PK_Q4_0_RECORD=40 when
    GEMMA_ORACLE_PACKED_Q4_0_PAD=1."""
    value = os.environ.get(PREFETCH_ENV, "0").strip()
    if value not in ("0", "1"):
        raise ValueError(f"{PREFETCH_ENV}={value!r}: expected 0 (no weight prefetch) or 1")
    groups = _groups_from_env(PACKED_PREFETCH_ENV, PACKED_PREFETCH_DEFAULT)
    ahead = _groups_from_env(PACKED_AHEAD_ENV, PACKED_AHEAD_DEFAULT)
    if ahead & (ahead - 1):
        raise ValueError(f"{PACKED_AHEAD_ENV}={ahead}: expected a power of two of 64-value groups, or 0 (none)")
    return (NVRTC_OPTIONS + (("-DGRID_DEPENDENCY=1",) if pdl else ())
            + (("-DMMQ_L2_PREFETCH=1",) if value == "1" else ())
            + ((f"-DPK_L2_PREFETCH={groups}",) if groups else ())
            + ((f"-DPK_L2_AHEAD={ahead}",) if ahead else ())
            + (("-DPK_Q4_0_RECORD=40",) if q4_0_padded() else ()))


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
    return Module(cupy.RawModule(code=code, options=options, name_expressions=name_expressions or None),
                  pdl="-DGRID_DEPENDENCY=1" in options)


def load_module(name: str, name_expressions: tuple[str, ...] = ()):
    """The compiled kernels/cuda/<name>.cu for the current device (memoized per device): its get_function gives
    kernels launched by kernels/launch.py (programmatic dependent launch where the device has it)."""
    import cupy

    from gemma_oracle.kernels.launch import launch_mode

    return _module(name, tuple(name_expressions), cupy.cuda.Device().id, nvrtc_options(pdl=launch_mode() == "pdl"))
