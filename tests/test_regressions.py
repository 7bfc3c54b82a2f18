"""Regression rules on recorded runs: a pass that fails is always caught; a t/s drop is gated only on the same
GPU model and backend beyond max(5 %, 3x the run's repeat spread); CPU timings are reported, never gated.
Ends with two stored nightlies, the second with an injected regression, through `gemma-oracle report`."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from gemma_oracle.harness.cli import main
from gemma_oracle.harness.nightly import previous_run, report_run
from gemma_oracle.reports.regress import compare_runs, correctness_findings, exit_code, perf_findings
from gemma_oracle.reports.render import FINDINGS_JSON, REPORT_MD
from gemma_oracle.reports.store import load_run
from gemma_oracle.reports.tables import correctness_summary

from .recorded_runs import CPU, GPU, bench_row, golden_records, meta, store_run

EARLY, LATE = "2026-11-24T03:00:00+00:00", "2026-11-25T03:00:00+00:00"


def _summary(*records_lists):
    return correctness_summary(pd.DataFrame([r.__dict__ for rows in records_lists for r in rows]))


def test_a_pass_that_fails_is_a_gated_regression():
    before = _summary(golden_records("a-f32"))
    after = _summary(golden_records("a-f32", broken_n=3))
    found = correctness_findings(after, before)
    assert [(f.status, f.gated) for f in found] == [("regression", True)]
    assert "fixture=a-f32" in found[0].key and "n=3" in found[0].key
    assert found[0].previous.startswith("pass") and found[0].current.startswith("fail (4/15")
    assert exit_code(found) == 1


def test_new_and_persisting_failures_are_gated_too():
    broken = _summary(golden_records("a-f32", broken_n=2))
    assert [f.status for f in correctness_findings(broken, None)] == ["new failure"]
    assert [f.status for f in correctness_findings(broken, broken)] == ["still failing"]
    assert exit_code(correctness_findings(broken, broken)) == 1


def test_a_clean_run_has_no_findings_and_cases_not_run_are_reported_ungated():
    before = _summary(golden_records("a-f32"), golden_records("b-f32"))
    after = _summary(golden_records("a-f32"))
    found = correctness_findings(after, before)
    assert [(f.status, f.gated, f.previous) for f in found] == [("not run", False, "3 cases")]
    assert exit_code(found) == 0
    assert correctness_findings(before, before) == []


def _perf(cur_rows, prev_rows, cur_meta=None, prev_meta=None):
    cur_meta = cur_meta or meta("cur", created=LATE)
    prev_meta = prev_meta or meta("prev", created=EARLY)
    return perf_findings(pd.DataFrame(cur_rows), pd.DataFrame(prev_rows), cur_meta, prev_meta)


@pytest.mark.parametrize("now,spread,caught", [
    (900.0, 1.0, True),    # -10 % > max(5, 3 x 1) = 5
    (960.0, 1.0, False),   # -4 % <= 5
    (900.0, 4.0, False),   # -10 % <= max(5, 3 x 4) = 12
    (870.0, 4.0, True),    # -13 % > 12
    (1100.0, 0.0, False),  # faster
])
def test_gpu_speed_drop_bound(now, spread, caught):
    found = _perf([bench_row(tokens_per_s=now, spread_pct=spread)], [bench_row(tokens_per_s=1000.0)])
    assert [(f.status, f.gated) for f in found] == ([("slower", True)] if caught else [])


def test_cpu_speed_drops_are_reported_never_gated():
    cpu = dict(device=CPU, backend="numpy64", timing="host-clock", route="none")
    found = _perf([bench_row(tokens_per_s=500.0, **cpu)], [bench_row(tokens_per_s=1000.0, **cpu)],
                  meta("cur", created=LATE, device=CPU, backend="numpy64"),
                  meta("prev", created=EARLY, device=CPU, backend="numpy64"))
    assert [(f.status, f.gated) for f in found] == [("slower (not gated)", False)]
    assert "-50.0 %" in found[0].message and exit_code(found) == 0


@pytest.mark.parametrize("prev_meta", [
    meta("prev", created=EARLY, device="NVIDIA H200"),          # another GPU model
    meta("prev", created=EARLY, device=GPU, backend="numpy64"),  # same machine, another backend
])
def test_speed_is_not_compared_across_devices_or_backends(prev_meta):
    found = _perf([bench_row(tokens_per_s=100.0)], [bench_row(tokens_per_s=1000.0)], prev_meta=prev_meta)
    assert [(f.status, f.gated) for f in found] == [("not compared", False)]


def test_speed_is_compared_per_route_mode_and_n():
    prev = [bench_row(route="auto", n=8, tokens_per_s=1000.0),
            bench_row(route="batch-invariant", n=8, tokens_per_s=500.0)]
    cur = [bench_row(route="auto", n=8, tokens_per_s=1000.0),
           bench_row(route="batch-invariant", n=8, tokens_per_s=400.0),
           bench_row(route="auto", n=32, tokens_per_s=10.0)]  # N=32 is new: nothing to compare with
    found = _perf(cur, prev)
    assert [f.key for f in found] == ["model=m-q4_k_m route=batch-invariant n=8"]


def test_stored_nightlies_with_an_injected_regression(tmp_path, capsys):
    """Two recorded nightlies on one H100; the second has a broken N=3 and a 20 % slower N=8."""
    first = store_run(tmp_path, "2026-11-24-030000", created=EARLY, oracle=golden_records("a-f32"),
                      bench=[bench_row(n=8, tokens_per_s=1000.0)])
    second = store_run(tmp_path, "2026-11-25-030000", created=LATE, oracle=golden_records("a-f32", broken_n=3),
                       bench=[bench_row(n=8, tokens_per_s=800.0)])
    assert previous_run(tmp_path, second) == first and previous_run(tmp_path, first) is None

    outcome = report_run(second, first)
    assert sorted((f.kind, f.status) for f in outcome.findings) == [("correctness", "regression"), ("perf", "slower")]
    assert outcome.exit_code == 1
    md = (second / REPORT_MD).read_text()
    assert "**FAIL**" in md and "regression" in md and "compared with: `2026-11-24-030000`" in md
    assert len(json.loads((second / FINDINGS_JSON).read_text())) == 2

    # the same through the CLI, which finds the previous run by itself
    assert main(["report", str(second)]) == 1
    out = capsys.readouterr().out
    assert "FAIL: nightly 2026-11-25-030000, compared with 2026-11-24-030000" in out
    assert "regression: suite=synthetic test=sweep fixture=a-f32" in out

    # the first run compared with nothing is clean
    assert main(["report", str(first)]) == 0
    assert compare_runs(load_run(first), None) == []


def test_report_of_a_directory_that_is_not_a_run_is_a_clean_error(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "meta.json" in capsys.readouterr().err
