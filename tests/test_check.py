"""`gemma-oracle check --engine`, the pytest plugin's `--go-engine`, and the control that every policy must fail.

The control (`broken-rope`: every batched row rotated at the longest row's position) is exact alone and wrong in a
batch of mixed lengths; the verdicts and exit codes must say so, while our float64 engine passes the same checks."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from gemma_oracle.engine.registry import make_engine
from gemma_oracle.harness.cli import main
from gemma_oracle.harness.fixtures.cache import fixture_path
from gemma_oracle.harness.suites.check import TESTS, CheckPlan, run_check
from gemma_oracle.harness.suites.inputs import make_sequences
from gemma_oracle.harness.suites.synthetic import judge_with
from gemma_oracle.oracles.compare import (CALIBRATED_POLICY, FLOAT64_POLICY, OUTSIDE_F32_POLICY, OUTSIDE_QUANT_POLICY,
                                          exact)
from gemma_oracle.oracles.verdicts import BITWISE, BROKEN, CLOSE
from gemma_oracle.reports.store import load_run

pytestmark = pytest.mark.synthetic

REPO = Path(__file__).resolve().parents[1]
FIXTURE = "keqv-window24/f32"


@pytest.fixture(scope="module")
def control_and_numpy_runs():
    plan = CheckPlan(engines=("numpy", "broken-rope"), fixtures=(FIXTURE,), n_list=(1, 2, 3, 5), steps=3)
    return run_check(plan)


def _verdicts(outcome) -> pd.DataFrame:
    return pd.DataFrame([dataclasses.asdict(v) for v in outcome.verdicts])


def test_our_engine_passes_every_check(control_and_numpy_runs):
    v = _verdicts(control_and_numpy_runs)
    ours = v[v["engine"] == "numpy"]
    assert set(ours["test"]) == set(TESTS)
    assert ours["passed"].all() and set(ours["verdict"]) <= {BITWISE, CLOSE}
    # N = 1 is the single-user run itself; determinism is bitwise at every N
    assert (ours[(ours["test"] == "sweep") & (ours["n"] == 1)]["verdict"] == BITWISE).all()
    assert (ours[ours["test"] == "determinism"]["verdict"] == BITWISE).all()
    assert (ours["not_batched"] == 0).all()
    # rows that nothing batched are counted apart: the sweep's step 0 (prompts prefilled alone) and N = 1
    sweep = ours[ours["test"] == "sweep"].set_index("n")
    assert sweep.loc[1, "batched_rows"] == 0 and sweep.loc[3, "batched_rows"] == 3 * 3 < sweep.loc[3, "rows"] == 3 * 4
    assert (ours[ours["test"] == "batched-prefill"]["batched_rows"] == ours[ours["test"] == "batched-prefill"]["rows"]).all()


def test_the_control_is_broken_wherever_it_is_active(control_and_numpy_runs):
    v = _verdicts(control_and_numpy_runs)
    ctl = v[v["engine"] == "broken-rope"]
    batched = ctl[ctl["test"].isin(["sweep", "needle", "composition", "batched-prefill"]) & (ctl["n"] >= 2)]
    assert len(batched) == 4 * 3 and (batched["verdict"] == BROKEN).all() and not batched["passed"].any()
    alone = ctl[(ctl["test"] == "sweep") & (ctl["n"] == 1)]
    assert list(alone["verdict"]) == [BITWISE]  # exact alone: the oracle is not red everywhere
    assert (ctl[ctl["test"] == "determinism"]["verdict"] == BITWISE).all()
    # the verdict's reason names a failing row and the bound it broke
    assert batched["reason"].str.contains("rows fail; worst at").all()


@pytest.mark.parametrize("n", [2, 3, 5, 8])
@pytest.mark.parametrize("policy", [exact(), FLOAT64_POLICY, CALIBRATED_POLICY, OUTSIDE_F32_POLICY,
                                    OUTSIDE_QUANT_POLICY], ids=lambda p: p.name)
def test_every_policy_fails_the_control_at_every_active_n(policy, n):
    path = fixture_path("keqv-window24", "q4_k_m")
    control, reference = make_engine("broken-rope", path), make_engine("numpy", path)
    prompts, forced = make_sequences(control.vocab_size, (5, 30, 12, 27, 9, 33, 19, 41), 3)
    result = judge_with(control, policy, prompts[:n], forced[:n], reference=lambda: reference)
    assert not result.passed, result.summary()
    # every decode row of every sequence behind the longest one fails, never a prefill row; a tolerance policy fails
    # nothing else (exact() also fails the longest row's decode rows: the float64 engine's batched matmul sums in
    # another order than N = 1, which is why it is judged by FLOAT64_POLICY, not exact())
    lengths = [len(p) for p in prompts[:n]]
    behind = {(i, s) for i, length in enumerate(lengths) if length < max(lengths) for s in range(1, 4)}
    failing = {(k[0], k[1]) for k in result.failing_keys}
    assert behind <= failing and all(s >= 1 for _, s in failing)
    if not policy.bitwise:
        assert failing == behind
    # and the same engine, alone, passes the same policy
    alone = judge_with(control, policy, prompts[:1], forced[:1], reference=lambda: reference)
    assert alone.passed, alone.summary()


def test_check_cli_writes_a_run_with_verdicts_and_a_report(tmp_path, capsys):
    rc = main(["check", "--engine", "numpy", "--fixtures", "keqv-mixed/f32", "--n", "1", "2", "--steps", "2",
               "--out", str(tmp_path), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "| numpy  | keqv-mixed-f32 | sweep" in out and "PASS:" in out
    (run_dir,) = [d for d in tmp_path.iterdir() if d.is_dir()]
    run = load_run(run_dir)
    assert run.meta.kind == "check" and run.meta.backend == "numpy"
    assert set(run["verdicts"]["test"]) == set(TESTS) and run["verdicts"]["passed"].all()
    info = json.loads(run["oracle"]["engine_info"].iloc[0])
    assert info["engine"] == "gemma-oracle numpy" and info["dtype"] == "numpy64"
    md = (run_dir / "report.md").read_text()
    assert "## Engines and verdicts" in md and "gemma-oracle numpy" in md
    assert "numpy64" not in md.split("## Engines and verdicts")[1].split("##")[0].split("|")[1]  # labelled by --engine


def test_check_cli_fails_the_control_with_exit_1(tmp_path, capsys):
    rc = main(["check", "--engine", "broken-rope", "--fixtures", FIXTURE, "--n", "2", "--tests", "sweep",
               "--steps", "2", "--out", str(tmp_path), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 1 and "broken-rope keqv-window24-f32 sweep N=2: broken:" in out and "FAIL:" in out


@pytest.mark.parametrize("argv, message", [
    (["--engine", "nope"], "unknown engine 'nope'"),
    (["--engine", "numpy:prefill_chunk=0"], "option prefill_chunk='0' of engine 'numpy': expected an integer >= 1"),
    (["--engine", "numpy", "--fixtures", "no-such-preset/f32"], "--fixtures no-such-preset/f32"),
    (["--engine", "numpy", "--fixtures", "keqv-mixed/q9"], "variant 'q9'"),
    (["--engine", "numpy", "--n", "0"], "0 is out of range"),
])
def test_check_cli_refuses_bad_input_before_any_work(tmp_path, capsys, argv, message):
    try:
        rc = main(["check", *argv, "--out", str(tmp_path / "runs"), "--no-progress"])
    except SystemExit as exc:  # refused by the argument parser itself
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("gemma-oracle: error:") and message in err, err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_engines_lists_every_builtin_with_its_options(capsys):
    assert main(["engines"]) == 0
    out = capsys.readouterr().out
    for name in ("numpy", "numpy32", "cupy", "llamacpp", "openai", "process", "broken-rope"):
        assert f"\n{name} (built-in)" in "\n" + out
    assert "    url: base URL" in out and "    cmd: the command line" in out


def _pytest(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--go-no-results", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def test_the_pytest_plugin_runs_the_synthetic_suite_against_an_engine_spec():
    case = "test_batched_equals_single_user[keqv-window24-f32-sliding-mixed-n3]"
    ok = _pytest(f"tests/test_golden_synthetic.py::{case}", "--go-engine", "numpy")
    assert ok.returncode == 0 and "1 passed" in ok.stdout, ok.stdout[-2000:]
    bad = _pytest(f"tests/test_golden_synthetic.py::{case}", "--go-engine", "broken-rope")
    assert bad.returncode == 1 and "1 failed" in bad.stdout and "broken-rope[numpy64]" in bad.stdout, bad.stdout[-2000:]
    usage = _pytest("tests/test_golden_synthetic.py", "--go-engine", "numpy:nope=1", "--collect-only")
    assert usage.returncode == 4 and "engine 'numpy' has no option 'nope'" in usage.stderr, usage.stderr[-2000:]
