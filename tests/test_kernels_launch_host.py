"""CPU tests of kernels/launch.py (programmatic dependent launch) and of the kernels' side of its contract.

* Every `__global__` in kernels/cuda/*.cu starts with `grid_dependency_enter();`: a kernel launched with PDL that
  read or wrote memory before `griddepcontrol.wait` would race with the grid before it. The scan is shown to find a
  kernel that lacks the call.
* The ctypes mirrors of CUlaunchConfig / CUlaunchAttribute have the sizes and field offsets that the C compiler gives
  the structs of the installed cuda.h (skipped, with the reason, where no cuda.h or C compiler is found).
* pack_args passes each argument as CuPy does (device array -> pointer, NumPy scalar -> its own bytes, Python int ->
  int64, float -> float64) and names the kernel and position of one it cannot pass.
* GEMMA_ORACLE_PDL and GEMMA_ORACLE_MMQ_PREFETCH take 0 or 1 and nothing else; PDL is on when unset, decode-MMQ's
  prefetch off; GEMMA_ORACLE_PACKED_PREFETCH is a count of groups, PACKED_PREFETCH_DEFAULT (8) when unset.
"""
from __future__ import annotations

import ctypes
import re
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from gemma_oracle.kernels import launch
from gemma_oracle.kernels._compile import CUDA_DIR

ENTER = "grid_dependency_enter();"
# The only statements a kernel may run before the wait: they read kernel parameters and block indices, and touch
# nothing but weight bytes, which no kernel writes while a step runs (mmq.cu: the member a block serves, then the L2
# prefetch of its weights; l2_ahead.cu: the next grid released first, then weights asked into L2).
BEFORE_ENTER = (re.compile(r"MMQ_MEMBER\b"), re.compile(r"mmq_prefetch_weights_l2<[^;]*>\([^;]*\);"),
                re.compile(r"PK_MEMBER\b"), re.compile(r"pk_prefetch_weights_l2<[^;]*>\([^;]*\);"),
                re.compile(r"grid_dependency_release\(\);"), re.compile(r"l2_ahead_ranges\([^;]*\);"))


def kernels_without_enter(source: str) -> list[str]:
    """Names of the __global__ functions in `source` whose body does not begin with grid_dependency_enter(), after
    at most the BEFORE_ENTER statements (macro line continuations and comments are skipped)."""
    missing = []
    for m in re.finditer(r"__global__\b", source):
        head_end = source.index("{", m.end())
        head = source[m.end():head_end]
        name = re.findall(r"([A-Za-z_][A-Za-z0-9_#]*)\s*\(", head)
        body = source[head_end + 1:]
        body = re.sub(r"\\\s*\n", "\n", body)        # macro continuations
        body = re.sub(r"//[^\n]*", "", body).lstrip()  # comments
        progress = True
        while progress:
            progress = False
            for allowed in BEFORE_ENTER:
                hit = allowed.match(body)
                if hit:
                    body, progress = body[hit.end():].lstrip(), True
        if not body.startswith(ENTER):
            missing.append(name[-1] if name else head.strip())
    return missing


@pytest.mark.parametrize("source", sorted(CUDA_DIR.glob("*.cu")), ids=lambda p: p.name)
def test_every_kernel_enters_through_the_grid_dependency_wait(source: Path):
    text = source.read_text()
    assert "__global__" in text, f"{source.name}: no kernel found"
    assert kernels_without_enter(text) == [], f"{source.name}: kernels that would race under PDL"


def test_the_scan_finds_a_kernel_without_the_wait():
    good = 'extern "C" __global__ void __launch_bounds__(256) ok(const float* x) {\n    ' + ENTER + "\n    x[0];\n}\n"
    macro = ('#define E(n) \\\n    extern "C" __global__ void k_##n(int a) { \\\n        ' + ENTER + " \\\n    }\n")
    bad = 'extern "C" __global__ void racy(const float* x, float* y) {\n    y[0] = x[0];\n    ' + ENTER + "\n}\n"
    prologue = ('extern "C" __global__ void pre(MMQ_PARAMS) {\n    MMQ_MEMBER\n    '
                'mmq_prefetch_weights_l2<64>(w, row_bytes, rows, units, bx, slices);\n    ' + ENTER + "\n}\n")
    early = ('extern "C" __global__ void early(MMQ_PARAMS) {\n    MMQ_MEMBER\n    const float v = y[0];\n    '
             + ENTER + "\n}\n")
    assert kernels_without_enter(good + macro + prologue) == []
    assert kernels_without_enter(good + bad + macro) == ["racy"]
    assert kernels_without_enter(early + prologue) == ["early"]  # only the listed prologue may come first


def _cuda_header() -> Path | None:
    for root in (Path("/usr/local/cuda/include"), *Path("/usr/local").glob("cuda-*/include")):
        if (root / "cuda.h").exists():
            return root
    nvcc = shutil.which("nvcc")
    if nvcc and (Path(nvcc).resolve().parent.parent / "include" / "cuda.h").exists():
        return Path(nvcc).resolve().parent.parent / "include"
    return None


def test_launch_structs_match_cuda_h(tmp_path):
    include, cc = _cuda_header(), shutil.which("cc") or shutil.which("gcc")
    if include is None or cc is None:
        pytest.skip(f"needs cuda.h (found: {include}) and a C compiler (found: {cc}) to read the C layout")
    src = tmp_path / "layout.c"
    src.write_text('#include <stdio.h>\n#include <stddef.h>\n#include <cuda.h>\nint main(void) {\n'
                   '  printf("%zu %zu %zu\\n", sizeof(CUlaunchAttribute), offsetof(CUlaunchAttribute, value),'
                   ' sizeof(CUlaunchAttributeValue));\n'
                   '  printf("%zu %zu %zu %zu %zu\\n", sizeof(CUlaunchConfig), offsetof(CUlaunchConfig, sharedMemBytes),'
                   ' offsetof(CUlaunchConfig, hStream), offsetof(CUlaunchConfig, attrs),'
                   ' offsetof(CUlaunchConfig, numAttrs));\n'
                   '  printf("%d\\n", (int)CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION);\n  return 0;\n}\n')
    exe = tmp_path / "layout"
    subprocess.run([cc, f"-I{include}", str(src), "-o", str(exe)], check=True, capture_output=True)
    attr, config, attr_id = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.split("\n")[:3]
    A, C = launch._LaunchAttribute, launch._LaunchConfig
    assert [int(v) for v in attr.split()] == [ctypes.sizeof(A), A.value.offset, ctypes.sizeof(A) - A.value.offset]
    assert [int(v) for v in config.split()] == [ctypes.sizeof(C), C.sharedMemBytes.offset, C.hStream.offset,
                                                C.attrs.offset, C.numAttrs.offset]
    assert int(attr_id) == launch._ATTR_PROGRAMMATIC_STREAM_SERIALIZATION


class _DeviceArray:
    """Stands in for a cupy.ndarray: what pack_args reads of one is .data.ptr."""

    class _Mem:
        ptr = 0x7F00_1234_5600

    data = _Mem()


def test_pack_args_passes_arguments_as_cupy_does():
    values = launch.pack_args("k", (_DeviceArray(), np.int32(-2), np.float32(1.5), np.int64(1 << 40), 7, 0.25, True,
                                     np.uint8(255)))
    raw = [bytes(memoryview(v).cast("B")) for v in values]
    assert raw == [struct.pack("<Q", 0x7F00_1234_5600), struct.pack("<i", -2), struct.pack("<f", 1.5),
                   struct.pack("<q", 1 << 40), struct.pack("<q", 7), struct.pack("<d", 0.25), b"\x01", b"\xff"]


@pytest.mark.parametrize("bad", ["text", None, [1, 2], np.zeros(3, dtype=np.float32)], ids=repr)
def test_pack_args_names_the_kernel_and_position_of_what_it_cannot_pass(bad):
    with pytest.raises(TypeError, match=r"attn_merge_d256: argument 1 is a "):
        launch.pack_args("attn_merge_d256", (np.int32(1), bad))


def test_compile_switches(monkeypatch):
    from gemma_oracle.kernels import _compile
    from gemma_oracle.kernels.mmq import weight_prefetch_enabled

    monkeypatch.delenv(_compile.PREFETCH_ENV, raising=False)  # decode-MMQ's prefetch is opt-in
    monkeypatch.delenv(_compile.PACKED_PREFETCH_ENV, raising=False)  # packed MMA's: 8 groups unless set
    assert _compile.PACKED_PREFETCH_DEFAULT == 8
    assert _compile.nvrtc_options() == _compile.NVRTC_OPTIONS + ("-DPK_L2_PREFETCH=8",) and not weight_prefetch_enabled()
    assert _compile.nvrtc_options(pdl=True) == _compile.NVRTC_OPTIONS + ("-DGRID_DEPENDENCY=1", "-DPK_L2_PREFETCH=8")
    monkeypatch.setenv(_compile.PACKED_PREFETCH_ENV, "0")
    assert _compile.nvrtc_options(pdl=True) == _compile.NVRTC_OPTIONS + ("-DGRID_DEPENDENCY=1",)
    monkeypatch.setenv(_compile.PREFETCH_ENV, "1")
    assert _compile.nvrtc_options() == _compile.NVRTC_OPTIONS + ("-DMMQ_L2_PREFETCH=1",)
    assert weight_prefetch_enabled()
    monkeypatch.setenv(_compile.PREFETCH_ENV, "0")
    assert not weight_prefetch_enabled()
    monkeypatch.setenv(_compile.PREFETCH_ENV, "no")
    with pytest.raises(ValueError, match=r"GEMMA_ORACLE_MMQ_PREFETCH='no': expected 0"):
        _compile.nvrtc_options()
    monkeypatch.setenv(_compile.PREFETCH_ENV, "0")
    monkeypatch.setenv(_compile.PACKED_PREFETCH_ENV, "6")  # packed MMA's: a count of groups
    assert _compile.nvrtc_options(pdl=True) == _compile.NVRTC_OPTIONS + ("-DGRID_DEPENDENCY=1", "-DPK_L2_PREFETCH=6")
    monkeypatch.setenv(_compile.PACKED_PREFETCH_ENV, "0")
    assert _compile.nvrtc_options() == _compile.NVRTC_OPTIONS
    monkeypatch.setenv(_compile.PACKED_PREFETCH_ENV, "yes")
    with pytest.raises(ValueError, match=r"GEMMA_ORACLE_PACKED_PREFETCH='yes': expected a count"):
        _compile.nvrtc_options()
    monkeypatch.setenv(_compile.PACKED_PREFETCH_ENV, "0")
    # packed MMA's rolling prefetch: opt-in, a count of groups, with or without PDL
    monkeypatch.delenv(_compile.PACKED_AHEAD_ENV, raising=False)
    assert _compile.PACKED_AHEAD_DEFAULT == 0 and _compile.nvrtc_options() == _compile.NVRTC_OPTIONS
    monkeypatch.setenv(_compile.PACKED_AHEAD_ENV, "4")
    assert _compile.nvrtc_options() == _compile.NVRTC_OPTIONS + ("-DPK_L2_AHEAD=4",)
    assert _compile.nvrtc_options(pdl=True) == _compile.NVRTC_OPTIONS + ("-DGRID_DEPENDENCY=1", "-DPK_L2_AHEAD=4")
    monkeypatch.setenv(_compile.PACKED_AHEAD_ENV, "6")
    with pytest.raises(ValueError, match=r"GEMMA_ORACLE_PACKED_AHEAD=6: expected a power of two"):
        _compile.nvrtc_options()
    monkeypatch.setenv(_compile.PACKED_AHEAD_ENV, "-1")
    with pytest.raises(ValueError, match=r"GEMMA_ORACLE_PACKED_AHEAD='-1': expected a count"):
        _compile.nvrtc_options()


def test_pdl_switch(monkeypatch):
    monkeypatch.delenv(launch.ENV, raising=False)  # the default: on when unset
    assert launch.pdl_requested() is True
    monkeypatch.setenv(launch.ENV, "")
    assert launch.pdl_requested() is True
    monkeypatch.setenv(launch.ENV, "0")
    assert launch.pdl_requested() is False
    monkeypatch.setenv(launch.ENV, "1")
    assert launch.pdl_requested() is True
    monkeypatch.setenv(launch.ENV, "off")
    with pytest.raises(ValueError, match=r"GEMMA_ORACLE_PDL='off': expected 0 .* or 1"):
        launch.pdl_requested()


def test_a_plain_module_hands_every_launch_to_cupy_unchanged():
    """Module(pdl=False), what every load_module gives by default: get_function memoizes, and a call reaches the
    compiled kernel (CuPy's RawKernel) with the same grid, block, arguments and shared memory."""
    calls = []

    class FakeRawKernel:
        def __init__(self, name):
            self.name = name

        def __call__(self, grid, block, args, shared_mem=0):
            calls.append((self.name, grid, block, args, shared_mem))

    class FakeRawModule:
        def get_function(self, name):
            return FakeRawKernel(name)

    module = launch.Module(FakeRawModule(), pdl=False)
    k = module.get_function("rms_norm_f32")
    assert module.get_function("rms_norm_f32") is k and not k.pdl
    args = (np.int32(3), np.float32(0.5))
    k((4, 1, 1), (256, 1, 1), args, shared_mem=128)
    module.get_function("scale_f32")((1,), (32,), ())
    assert calls == [("rms_norm_f32", (4, 1, 1), (256, 1, 1), args, 128), ("scale_f32", (1,), (32,), (), 0)]
