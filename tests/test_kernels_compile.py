"""Every kernels/cuda/*.cu compiles with the local nvcc for the project's arch, without register spills.

CPU only (no GPU, no cupy): each source is compiled with `gemma_oracle.kernels._compile.nvcc_command` (the same options as the
run-time NVRTC build, plus `-Xptxas -v`), and the `ptxas info` lines are parsed per function. A function FAILS
when it spills (spill stores or loads > 0) or has a stack frame (local memory: a register array indexed at run
time, or a non-inlined call). The per-kernel register table is printed (pytest -s, or -rA, shows it).
New .cu files are picked up automatically.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass

import pytest

from gemma_oracle.kernels._compile import ARCH, CUDA_DIR, nvcc_command

SOURCES = sorted(p.stem for p in CUDA_DIR.glob("*.cu"))
NVCC_MISSING = ("nvcc is not on PATH: export PATH=/usr/local/cuda/bin:$PATH "
                "(or install a CUDA toolkit >= 12 that targets " + ARCH + ")")

_ENTRY = re.compile(r"Compiling entry function '([^']+)'")
_PROPS = re.compile(r"Function properties for (\S+)")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGS = re.compile(r"Used (\d+) registers")


# Stack frames that are not ours to remove. Each entry names the kernel and why its frame is acceptable; a
# spill is never acceptable.
KNOWN_STACK_FRAMES = {
    # sincosf's accurate argument reduction (Payne-Hanek, taken for |angle| > 105615: positions times
    # inv_freq reach that at long context) keeps its digits in a small local array inside libdevice.
    "rope_neox_f32": "sincosf slow-path argument reduction",
    "rms_norm_rope_neox_f32": "sincosf slow-path argument reduction (fused_norms.cu: the same rope_pair.cuh)",
    "qkv_rope_kv_f16": "sincosf slow-path argument reduction (qkv_rope_kv.cu: the same rope_pair.cuh)",
    "qkv_rope_kv_f32": "sincosf slow-path argument reduction (qkv_rope_kv.cu: the same rope_pair.cuh)",
}


@dataclass
class PtxasFunction:
    name: str
    registers: int | None = None
    stack: int = 0
    spill_stores: int = 0
    spill_loads: int = 0

    @property
    def problem(self) -> str:
        if self.spill_stores or self.spill_loads:
            return f"spills ({self.spill_stores} B stores, {self.spill_loads} B loads)"
        if self.stack and self.name not in KNOWN_STACK_FRAMES:
            return f"{self.stack} B stack frame (local array or non-inlined call)"
        return ""


def parse_ptxas(log: str) -> dict[str, PtxasFunction]:
    """Per-function ptxas -v facts; `Function properties` blocks cover device functions too."""
    funcs: dict[str, PtxasFunction] = {}
    current: PtxasFunction | None = None
    for line in log.splitlines():
        for pattern in (_ENTRY, _PROPS):
            m = pattern.search(line)
            if m:
                current = funcs.setdefault(m.group(1), PtxasFunction(m.group(1)))
        m = _FRAME.search(line)
        if m and current is not None:
            current.stack, current.spill_stores, current.spill_loads = (int(v) for v in m.groups())
        m = _REGS.search(line)
        if m and current is not None:
            current.registers = int(m.group(1))
    return funcs


def register_table(source: str, funcs: dict[str, PtxasFunction]) -> str:
    lines = [f"{source}.cu ({ARCH}): {'kernel':<28} {'regs':>5} {'stack':>6} {'spill st':>9} {'spill ld':>9}"]
    for f in sorted(funcs.values(), key=lambda f: f.name):
        regs = "-" if f.registers is None else str(f.registers)
        lines.append(f"{'':>{len(source) + 12}}{f.name:<28} {regs:>5} {f.stack:>6} {f.spill_stores:>9} "
                     f"{f.spill_loads:>9}{'  <-- ' + f.problem if f.problem else ''}")
    return "\n".join(lines)


def test_ptxas_parser_reads_spills():
    log = ("ptxas info    : Compiling entry function 'k1' for 'sm_90'\n"
           "ptxas info    : Function properties for k1\n"
           "    8 bytes stack frame, 12 bytes spill stores, 16 bytes spill loads\n"
           "ptxas info    : Used 96 registers, used 0 barriers, 400 bytes cmem[0]\n"
           "ptxas info    : Compiling entry function 'k2' for 'sm_90'\n"
           "ptxas info    : Function properties for k2\n"
           "    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n"
           "ptxas info    : Used 32 registers, used 0 barriers, 380 bytes cmem[0]\n")
    funcs = parse_ptxas(log)
    k1 = funcs["k1"]
    assert (k1.registers, k1.stack, k1.spill_stores, k1.spill_loads) == (96, 8, 12, 16)
    assert funcs["k1"].problem.startswith("spills") and funcs["k2"].problem == ""


@pytest.mark.parametrize("source", SOURCES)
def test_compiles_without_spills(source, tmp_path):
    if shutil.which("nvcc") is None:
        pytest.skip(NVCC_MISSING)
    cmd = nvcc_command(source, tmp_path / f"{source}.cubin")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"nvcc failed ({' '.join(cmd)}):\n{log}"
    funcs = parse_ptxas(log)
    assert funcs, f"no 'ptxas info' lines in the output of {' '.join(cmd)}:\n{log}"
    table = register_table(source, funcs)
    print(table)
    bad = [f"{f.name}: {f.problem}" for f in funcs.values() if f.problem]
    assert not bad, f"{source}.cu: " + "; ".join(bad) + "\n" + table
