"""scripts/gpu-run's own contract on a GPU-less machine: every finished step comes back packed, and DEADLINE bounds the
whole run (the device tool kills a command at its limit, and a killed command never reaches its exit trap).

The step used is `tests` (pytest on PYTEST_TARGETS) with a test that sleeps longer than the deadline allows.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="scripts/gpu-run is a bash script")


def test_deadline_cuts_the_step_and_skips_the_rest(tmp_path):
    sleeper = tmp_path / "test_sleeps.py"
    sleeper.write_text("import time\n\ndef test_sleeps():\n    time.sleep(60)\n")
    out = tmp_path / "out"
    env = dict(os.environ, DEADLINE="17", PYTEST_TARGETS=f"-p gemma_oracle.harness.pytest_plugin {sleeper}",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    start = time.monotonic()
    proc = subprocess.run(["bash", "scripts/gpu-run", str(out), "tests", "tests"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - start
    assert elapsed < 30, f"DEADLINE=17 but the run took {elapsed:.0f} s"
    assert proc.returncode == 1, proc.stdout + proc.stderr  # the cut step and the skipped one both count as failed
    steps = [line for line in proc.stdout.splitlines() if line.startswith("== step tests")]
    assert len(steps) == 2 and "skipped" in steps[1] and "DEADLINE=17" in steps[1], proc.stdout
    with tarfile.open(out / "results.tgz") as tar:
        names = {Path(n).name for n in tar.getnames()}
    assert {"gpu.txt", "pytest-tests.log"} <= names
    assert not (out / "results.tgz.part").exists()


def test_tests_step_takes_a_k_expression_of_several_words(tmp_path):
    """PYTEST_K reaches pytest as one -k expression (PYTEST_TARGETS is split on spaces, so quotes inside it break)."""
    targets = tmp_path / "test_three.py"
    targets.write_text("def test_alpha():\n    pass\n\ndef test_beta():\n    pass\n\ndef test_gamma():\n    pass\n")
    out = tmp_path / "out"
    env = dict(os.environ, PYTEST_TARGETS=f"-p gemma_oracle.harness.pytest_plugin {targets}", PYTEST_K="alpha or beta",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(["bash", "scripts/gpu-run", str(out), "tests"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 passed, 1 deselected" in proc.stdout, proc.stdout


def test_llamaprebuilt_puts_a_carried_build_where_bench_sh_looks(tmp_path):
    """The carried tarball (scripts/llamacpp-prebuild) is unpacked to bench.sh's build dir with BUILD_RC=0 when the
    executable's libraries resolve, and BUILD_RC=1 naming the problem when they do not (a control: bench.sh then
    refuses); a missing or wrong tarball is refused by name."""
    import shutil

    def pack(exe_bytes: bytes) -> Path:
        root = tmp_path / "pack" / "llamacpp-bin" / "bin"
        shutil.rmtree(tmp_path / "pack", ignore_errors=True)
        root.mkdir(parents=True)
        (root / "llama-batched-bench").write_bytes(exe_bytes)
        (root / "llama-batched-bench").chmod(0o755)
        tgz = tmp_path / "llamacpp-bin.tgz"
        with tarfile.open(tgz, "w:gz") as tar:
            tar.add(tmp_path / "pack" / "llamacpp-bin", arcname="llamacpp-bin")
        return tgz

    tgz, build = pack(Path("/bin/true").read_bytes()), tmp_path / "build"  # a dynamic executable that resolves
    env = dict(os.environ, LLAMACPP_BIN=str(tgz), LLAMACPP_BUILD=str(build),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")

    def run() -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "scripts/gpu-run", str(tmp_path / "out"), "llamaprebuilt"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)

    proc = run()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (build / "bin" / "llama-batched-bench").exists() and (tmp_path / "build.log").read_text() == "BUILD_RC=0\n"
    assert "prebuilt llama.cpp ready" in proc.stdout
    pack(b"not an executable\n")  # ldd: "not a dynamic executable"
    proc = run()
    assert proc.returncode == 1 and (tmp_path / "build.log").read_text() == "BUILD_RC=1\n", proc.stdout
    assert "llamaprebuilt:" in proc.stdout
    tgz.write_bytes(b"not a tarball")
    proc = run()
    assert proc.returncode == 2 and "is not a llamacpp-bin tarball" in proc.stdout
    tgz.unlink()
    proc = run()
    assert proc.returncode == 2 and "scripts/llamacpp-prebuild" in proc.stdout
