"""Throwaway virtual environments for the tests that install things as a user would (tests/test_packaging.py,
tests/test_engine_entry_points.py): wheels built here with this environment's setuptools, and environments whose
dependencies are the ones this environment already has, seen through a folder of links (`deps_folder`), so no
network is needed. A folder leaves out gemma-oracle itself (and, unless asked, pytest and its plugins), so an
environment without our wheel is this machine without gemma-oracle.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# what building the wheel reads: the rest of the checkout (tests, scripts, reports) is not part of it
BUILD_INPUTS = ("pyproject.toml", "README.md", "LICENSE", "gemma_oracle")
OURS = re.compile(r"^(gemma_oracle|gemma-oracle|__editable__)")
TEST_TOOLING = re.compile(r"^(_?pytest|pytest_xdist|xdist|pluggy|iniconfig|execnet|py)([-.].*)?$")


def run(cmd, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    kw.setdefault("timeout", 300)
    return subprocess.run([str(c) for c in cmd], **kw)


def deps_folder(dest: Path, *, with_test_tooling: bool) -> Path:
    """Links to every distribution of this environment's site-packages except gemma-oracle (and pytest and its
    plugins unless asked for). `.pth` files are left out: in a folder that is not a site directory they would not
    run, and gemma-oracle's editable install is one of them."""
    dest.mkdir(parents=True)
    site = Path(sysconfig.get_paths()["purelib"])
    for entry in site.iterdir():
        name = entry.name
        if OURS.match(name) or name.endswith(".pth") or name == "__pycache__":
            continue
        if not with_test_tooling and TEST_TOOLING.match(name):
            continue
        (dest / name).symlink_to(entry)
    return dest


def make_venv(path: Path, deps: Path, *wheels: Path) -> Path:
    """A new virtual environment that sees `deps` and has the wheels installed by pip (offline); its python."""
    run([sys.executable, "-m", "venv", "--without-pip", path], check=True)
    python = path / "bin" / "python"
    purelib = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], check=True).stdout
    Path(purelib.strip(), "dependencies.pth").write_text(f"{deps}\n")
    if wheels:
        run([sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps", "--no-index",
             "--no-compile", *wheels], check=True)
    return python


def build_wheel(src: Path, dist: Path) -> tuple[Path | None, str]:
    """(the wheel built from the project in `src` into `dist`, or None, the build log). The build backend runs
    here with every warning shown, so a deprecation cannot hide in pip's quiet mode."""
    proc = run([sys.executable, "-W", "always", "-c",
                "import sys, setuptools.build_meta as b; print(b.build_wheel(sys.argv[1]))", dist], cwd=src, check=False)
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        return None, log
    return dist / proc.stdout.strip().splitlines()[-1], log


def checkout_source(dest: Path) -> Path:
    """A copy of what building this checkout's wheel reads (BUILD_INPUTS), without caches."""
    dest.mkdir(parents=True)
    for name in BUILD_INPUTS:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, dest / name)
    return dest


def clean_env(**extra) -> dict[str, str]:
    """This process's environment without what would make the checkout importable or steer pytest."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTEST_ADDOPTS", "PYTEST_PLUGINS", "PYTEST_XDIST_WORKER",
                        "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID", "PYTEST_CURRENT_TEST",
                        "CUDA_VISIBLE_DEVICES", "GEMMA_ORACLE_GPU_INDEX", "OPENBLAS_NUM_THREADS")}
    env.update(extra)
    return env
