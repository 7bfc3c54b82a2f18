"""The package as a user installs it: the wheel holds one import name and builds without deprecation warnings; a
plain install (no extras, no pytest) runs the CLI; the pytest plugin changes nothing in a project that does not
ask for it, and loads when it does.

Each check runs in virtual environments made here from the wheel built here. Their dependencies are the ones this
environment already has, seen through a folder of links (tests/venvs.py), so no network is needed; a folder
leaves out gemma-oracle itself (and, for the "no extras" install, pytest and its plugins), so an environment
without the wheel is this machine without gemma-oracle.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
from filelock import FileLock

from tests.venvs import build_wheel, checkout_source, deps_folder, make_venv
from tests.venvs import clean_env as _clean_env
from tests.venvs import run as _run


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """The wheel, its build log and the environments, made once for every xdist worker of the session."""
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "packaging"
    root.mkdir(exist_ok=True)
    with FileLock(str(root.with_suffix(".lock"))):
        done = root / "done.json"
        if not done.exists():
            shutil.rmtree(root)  # whatever an interrupted build left
            src = checkout_source(root / "src")
            wheel, log = build_wheel(src, root / "dist")
            assert wheel is not None, log
            plain = deps_folder(root / "deps-plain", with_test_tooling=False)
            tooled = deps_folder(root / "deps-tooled", with_test_tooling=True)
            envs = {
                "plain": make_venv(root / "venv-plain", plain, wheel),  # `pip install gemma-oracle`, no extras
                "with": make_venv(root / "venv-with", tooled, wheel),  # pytest and gemma-oracle
                "without": make_venv(root / "venv-without", tooled),  # pytest alone
            }
            done.write_text(json.dumps({"wheel": str(wheel), "log": log,
                                        "envs": {k: str(v) for k, v in envs.items()}}))
    info = json.loads(done.read_text())
    return {"wheel": Path(info["wheel"]), "log": info["log"], **{k: Path(v) for k, v in info["envs"].items()}}


# ----------------------------------------------------------------------------------------------- the wheel
def test_the_wheel_installs_exactly_one_import_name(built):
    with zipfile.ZipFile(built["wheel"]) as whl:
        names = whl.namelist()
        metadata = whl.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        entry_points = whl.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    top_level = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top_level == {"gemma_oracle"}
    # what the engine and the catalog read at run time travels with the code
    assert "gemma_oracle/kernels/cuda/mmq.cu" in names and "gemma_oracle/harness/real/catalog.toml" in names
    assert "License-Expression: MIT" in metadata
    assert "pytest" not in [re.split(r"[<>=!~; \[]", line.split(": ", 1)[1])[0]
                            for line in metadata.splitlines() if line.startswith("Requires-Dist: ") and "extra ==" not in line]
    assert "pytest11" not in entry_points  # the plugin is never loaded behind a project's back
    assert "gemma-oracle = gemma_oracle.harness.cli:main" in entry_points


def test_the_wheel_builds_without_deprecation_warnings(built):
    flagged = [line for line in built["log"].splitlines() if re.search(r"deprecat", line, re.I)]
    assert not flagged, "\n".join(flagged)


# ------------------------------------------------------------------------------- a plain install, no extras
def test_a_plain_install_runs_the_cli_without_test_tooling(built, tmp_path):
    python = built["plain"]
    cli = python.parent / "gemma-oracle"
    env = _clean_env()
    assert _run([python, "-c", "import pytest"], cwd=tmp_path, env=env).returncode != 0  # really no test tooling
    where = _run([python, "-c", "import gemma_oracle; print(gemma_oracle.__file__)"], cwd=tmp_path, env=env, check=True)
    assert Path(where.stdout.strip()).is_relative_to(python.parents[1])  # the installed copy, not the checkout

    from gemma_oracle import __version__

    for cmd in ([cli, "--version"], [python, "-m", "gemma_oracle", "--version"]):
        proc = _run(cmd, cwd=tmp_path, env=env)
        assert (proc.returncode, proc.stdout.strip()) == (0, f"gemma-oracle {__version__}"), proc.stderr
    presets = _run([cli, "fixtures", "presets"], cwd=tmp_path, env=env)
    assert presets.returncode == 0, presets.stderr
    assert "keqv-mixed" in presets.stdout and "g4-12b-mini" in presets.stdout
    oracle = _run([cli, "oracle", "--backend", "numpy", "--presets", "keqv-mixed", "--variants", "f32", "--n", "2"],
                  cwd=tmp_path, env=env)
    assert oracle.returncode == 0, oracle.stdout + oracle.stderr
    # N = 2: the short plan's case and growth-mixed's (suites/synthetic.py PLAN_VARIANTS: f32 runs the mixed plans)
    assert re.search(r"^keqv-mixed\s+f32\s+2/2 .* PASS$", oracle.stdout, re.M), oracle.stdout
    assert "2 passed, 0 failed" in oracle.stdout


# --------------------------------------------------------------------------- the pytest plugin: a good citizen
UNRELATED_CONFTEST = '''
def pytest_addoption(parser):
    parser.addoption("--model", default="theirs", help="this project's own model option")
'''

UNRELATED_TESTS = '''
import json
import os
import sys
from pathlib import Path

import pytest


def _record(request):
    dump = {"env": dict(os.environ), "gemma_modules": sorted(m for m in sys.modules if m.split(".")[0] in
                                                             ("gemma_oracle", "cupy", "harness", "engine", "kernels"))}
    (Path(os.environ["DUMP_DIR"]) / f"{request.node.name}.json").write_text(json.dumps(dump))


@pytest.mark.gpu
def test_their_gpu_test(request):
    _record(request)


def test_their_model_option(request):
    assert request.config.getoption("--model") == "theirs"
    _record(request)
'''

# differ from run to run or from worker to worker whatever is installed (DUMP_DIR: each side writes its own)
RUN_IDENTITY = ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_TESTRUNUID", "PYTEST_CURRENT_TEST", "DUMP_DIR")


def _pytest_in(python: Path, project: Path, dump: Path, *args: str) -> subprocess.CompletedProcess:
    dump.mkdir(parents=True, exist_ok=True)
    env = _clean_env(CUDA_VISIBLE_DEVICES="0,1", DUMP_DIR=str(dump))
    return _run([python, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=project, env=env)


def _outcome(proc: subprocess.CompletedProcess) -> tuple[int, list[str], str]:
    """(exit code, the -rA result lines, the closing counts without the time)."""
    lines = [ln for ln in proc.stdout.splitlines() if re.match(r"^(PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS) ", ln)]
    counts = re.sub(r" in [0-9.]+s.*$", "", proc.stdout.strip().splitlines()[-1])
    return proc.returncode, sorted(lines), counts


def test_an_unrelated_project_runs_the_same_with_gemma_oracle_installed(built, tmp_path):
    project = tmp_path / "unrelated"
    project.mkdir()
    (project / "conftest.py").write_text(UNRELATED_CONFTEST)
    (project / "test_theirs.py").write_text(UNRELATED_TESTS)
    seen = {}
    for side in ("without", "with"):
        python = built[side]
        run = _pytest_in(python, project, tmp_path / f"dump-{side}", "-n", "2", "-rA")
        seen[side] = {
            "outcome": _outcome(run),
            "help": _pytest_in(python, project, tmp_path / "unused", "--help").stdout,
            "markers": _pytest_in(python, project, tmp_path / "unused", "--markers").stdout,
            "dumps": {p.stem: json.loads(p.read_text()) for p in sorted((tmp_path / f"dump-{side}").glob("*.json"))},
        }
    without, with_ = seen["without"], seen["with"]
    # both pass; the unregistered `gpu` mark draws pytest's warning there, as it must without us
    assert without["outcome"][0] == 0 and re.search(r"\b2 passed\b", without["outcome"][2]), without["outcome"]
    assert with_["outcome"] == without["outcome"]  # no skip, no failure, no usage error from a clashing option
    assert with_["help"] == without["help"] and "--go-" not in with_["help"]  # no option added
    assert with_["markers"] == without["markers"]  # no marker registered
    assert set(with_["dumps"]) == set(without["dumps"]) == {"test_their_gpu_test", "test_their_model_option"}
    for test, dump in with_["dumps"].items():
        env = {k: v for k, v in dump["env"].items() if k not in RUN_IDENTITY}
        env_without = {k: v for k, v in without["dumps"][test]["env"].items() if k not in RUN_IDENTITY}
        assert env == env_without, {k: (env.get(k), env_without.get(k)) for k in set(env) ^ set(env_without)
                                    | {k for k in env if env[k] != env_without.get(k)}}
        assert env["CUDA_VISIBLE_DEVICES"] == "0,1"  # each worker still sees both GPUs
        assert dump["gemma_modules"] == []  # nothing of ours imported, so no CUDA initialised by us either


def test_a_project_that_asks_for_the_plugin_gets_it(built, tmp_path):
    """Installed (not a checkout), `-p gemma_oracle.harness.pytest_plugin` loads the markers and the prefixed
    options, which sit beside a project's own --model."""
    project = tmp_path / "asking"
    project.mkdir()
    (project / "conftest.py").write_text(UNRELATED_CONFTEST)
    (project / "test_theirs.py").write_text(UNRELATED_TESTS)
    python = built["with"]
    plugin = ("-p", "gemma_oracle.harness.pytest_plugin")
    usage = _pytest_in(python, project, tmp_path / "unused", *plugin, "--help").stdout
    for option in ("--go-backend", "--go-model", "--go-gpus", "--go-results-dir", "--go-no-results", "--model"):
        assert option in usage
    markers = _pytest_in(python, project, tmp_path / "unused", *plugin, "--markers").stdout
    assert "@pytest.mark.real12b:" in markers and "@pytest.mark.synthetic:" in markers
    run = _pytest_in(python, project, tmp_path / "dump", *plugin, "-rA", "--go-no-results", "-p", "no:xdist")
    code, lines, counts = _outcome(run)
    assert code == 0 and re.search(r"\b1 passed, 1 skipped\b", counts), run.stdout
    assert any(ln.startswith("SKIPPED") and "needs an NVIDIA GPU with CuPy" in ln for ln in lines), lines
