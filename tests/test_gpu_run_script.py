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


def test_llamaprebuilt_puts_a_carried_build_where_bench_sh_looks(tmp_path):
    """The carried build (scripts/llamacpp-prebuild) is copied to bench.sh's build dir with BUILD_RC=0 when its
    libraries resolve, and BUILD_RC=1 naming the missing one when they do not (a control: bench.sh then refuses)."""
    carried, build = tmp_path / "carried", tmp_path / "build"
    (carried / "bin").mkdir(parents=True)
    exe = carried / "bin" / "llama-batched-bench"
    exe.write_bytes(Path("/bin/true").read_bytes())  # a dynamic executable whose libraries resolve
    exe.chmod(0o755)
    env = dict(os.environ, LLAMACPP_BIN=str(carried), LLAMACPP_BUILD=str(build),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(["bash", "scripts/gpu-run", str(tmp_path / "out"), "llamaprebuilt"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (build / "bin" / "llama-batched-bench").exists() and (tmp_path / "build.log").read_text() == "BUILD_RC=0\n"
    assert "prebuilt llama.cpp ready" in proc.stdout
    # a library that is not there: ldd says "not found", the step fails and bench.sh would not run it
    import shutil

    if shutil.which("patchelf") is None:
        exe.write_text("not an executable\n")  # ldd: "not a dynamic executable"
    else:
        subprocess.run(["patchelf", "--add-needed", "libgemma-oracle-missing.so", str(exe)], check=True)
    proc = subprocess.run(["bash", "scripts/gpu-run", str(tmp_path / "out"), "llamaprebuilt"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and (tmp_path / "build.log").read_text() == "BUILD_RC=1\n", proc.stdout
    assert "llamaprebuilt:" in proc.stdout
    # nothing carried: a clear refusal
    shutil.rmtree(carried)
    proc = subprocess.run(["bash", "scripts/gpu-run", str(tmp_path / "out"), "llamaprebuilt"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no " in proc.stdout and "scripts/llamacpp-prebuild" in proc.stdout
