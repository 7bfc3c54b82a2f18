"""The pytest plugin's result store: a test hands its golden result to `record_oracle`, the session writes it as
parquet with run metadata; under pytest-xdist every worker writes its own part into the controller's run."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from gemma_oracle.reports.store import list_runs, load_run

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[1]

TEST_FILE = """
import pytest
from gemma_oracle.oracles.compare import FLOAT64_POLICY
from gemma_oracle.oracles.single_vs_batched import golden_single_vs_batched
from tests.recorded_runs import FORCED, PROMPTS, ToyEngine

@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_golden(n, record_oracle):
    result = golden_single_vs_batched(ToyEngine(), PROMPTS[:n], FORCED[:n], policy=FLOAT64_POLICY)
    rows = record_oracle(result, fixture="toy-f32", backend="numpy64", suite="toy")
    assert len(rows) == n * 5

def test_not_recorded():
    assert True
"""


@pytest.fixture
def inner(pytester, monkeypatch):
    # The inner session loads the plugin the way the root conftest does (pytest_plugins) and imports this
    # checkout's packages, also in a subprocess.
    pytester.makeconftest((REPO / "conftest.py").read_text())
    pytester.makepyfile(test_recorded=TEST_FILE)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    monkeypatch.syspath_prepend(str(REPO))
    return pytester


def _check(results_dir: Path, outcome) -> None:
    outcome.assert_outcomes(passed=5)
    (run_dir,) = list_runs(results_dir)
    run = load_run(run_dir)
    assert run.meta.kind == "pytest" and run_dir.name.startswith("pytest-")
    df = run["oracle"]
    assert len(df) == 5 * (1 + 2 + 3 + 4)
    assert sorted(set(df["test_id"])) == [f"test_recorded.py::test_golden[{n}]" for n in (1, 2, 3, 4)]
    assert set(df["suite"]) == {"toy"} and set(df["route"]) == {"none"} and df["passed"].all()


def test_plugin_records_a_session(inner):
    results = inner.path / "results"
    _check(results, inner.runpytest("-p", "no:xdist", f"--go-results-dir={results}"))
    (run_dir,) = list_runs(results)
    assert [p.name for p in sorted(run_dir.glob("*.parquet"))] == ["oracle.main.parquet"]


def test_plugin_under_xdist_merges_worker_parts(inner):
    results = inner.path / "results"
    _check(results, inner.runpytest_subprocess("-n", "2", f"--go-results-dir={results}"))
    (run_dir,) = list_runs(results)
    parts = {p.name for p in run_dir.glob("*.parquet")}
    # workers' parts only (which worker ran which test is xdist's choice); _check saw all 50 rows in one run
    assert parts and parts <= {"oracle.gw0.parquet", "oracle.gw1.parquet"}


def test_no_results_writes_nothing(inner):
    inner.runpytest("-p", "no:xdist", "--go-no-results").assert_outcomes(passed=5)
    assert not (inner.path / "reports").exists()


def test_default_results_dir_is_under_the_rootdir(inner):
    inner.runpytest("-p", "no:xdist").assert_outcomes(passed=5)
    assert len(list_runs(inner.path / "reports" / "runs")) == 1
