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
