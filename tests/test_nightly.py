"""The nightly job end to end on the CPU with a small plan: a complete run directory, a second run compared with
the first, and an injected regression (one case's comparisons turned into failures) that must fail the job."""
from __future__ import annotations

import dataclasses

import pytest

import gemma_oracle.harness.nightly as nightly
from gemma_oracle.harness.perf.bench import BenchConfig
from gemma_oracle.harness.nightly import NightlyPlan, run_nightly
from gemma_oracle.harness.suites.real import RealSuite
from gemma_oracle.reports.records import NO_ROUTE
from gemma_oracle.reports.render import FINDINGS_JSON, PLOTS_DIR, REPORT_HTML, REPORT_MD
from gemma_oracle.reports.store import META_FILE, list_runs

pytestmark = pytest.mark.synthetic

ABSENT = RealSuite("absent-model", "real12b", missing=lambda: "not here: gemma-oracle fixtures download absent-model",
                   locate=lambda: None, prompts=())
PLAN = NightlyPlan(
    "numpy64", synthetic_n=(1, 2), route_modes=(None,), presets=("keqv-mixed",), variants=("f32",),
    real_suites=(ABSENT,), synthetic_boundary_n=(),  # the short plan only (no boundary input plans)
    bench=BenchConfig(models=("keqv-mixed",), variant="f32", n_list=(1, 2), route_modes=(NO_ROUTE,), context=32,
                      warmup=0, steps=1, repeats=2, profile_passes=1),
    parts=("synthetic", "real", "bench"))  # the planted part has its own test below


def test_two_nightlies_and_an_injected_regression(tmp_path, monkeypatch):
    first = run_nightly(PLAN, tmp_path, progress=False)
    files = {p.name for p in first.run_dir.iterdir()}
    assert {META_FILE, "oracle.main.parquet", "bench.main.parquet", "op_profile.main.parquet", REPORT_MD, REPORT_HTML,
            FINDINGS_JSON, PLOTS_DIR} <= files
    assert first.previous is None and first.findings == [] and first.exit_code == 0
    run = first.run
    assert run.meta.kind == "nightly" and run.meta.backend == "numpy64"
    # keqv-mixed f32 at N = 1, 2: 1 + 2 sequences x (prefill + 4 decode steps)
    assert len(run["oracle"]) == 15 and run["oracle"]["verdict"].eq("pass").all()
    assert set(run["oracle"]["fixture"]) == {"keqv-mixed-f32"} and set(run["oracle"]["route"]) == {NO_ROUTE}
    assert run["bench"]["n"].tolist() == [1, 2]
    assert run.meta.notes["real suite absent-model (pytest -m real12b)"].startswith("skipped: not here")
    md = (first.run_dir / REPORT_MD).read_text()
    assert "**PASS**" in md and "skipped: not here" in md

    second = run_nightly(PLAN, tmp_path, progress=False)
    assert second.previous is not None and second.previous.run_id == first.run_dir.name
    assert second.exit_code == 0
    assert [f.status for f in second.findings if f.kind == "correctness"] == []
    assert all(not f.gated for f in second.findings)  # CPU speed differences are never gated
    assert f"compared with: `{first.run_dir.name}`" in (second.run_dir / REPORT_MD).read_text()

    real_run_case = nightly.run_case

    def broken_at_n2(case, backend, route_mode=None):
        result = real_run_case(case, backend, route_mode)
        if case.n != 2:
            return result
        bad = tuple(dataclasses.replace(c, passed=False, message=f"injected: {c.where}") for c in result.comparisons)
        return dataclasses.replace(result, comparisons=bad)

    monkeypatch.setattr(nightly, "run_case", broken_at_n2)
    third = run_nightly(PLAN, tmp_path, progress=False)
    assert third.previous.run_id == second.run_dir.name
    caught = [f for f in third.findings if f.status == "regression"]
    assert len(caught) == 1 and "n=2" in caught[0].key and caught[0].gated
    assert third.exit_code == 1
    assert "**FAIL**" in (third.run_dir / REPORT_MD).read_text()
    assert [p.name for p in list_runs(tmp_path)] == [first.run_dir.name, second.run_dir.name, third.run_dir.name]


def test_planted_part_reports_the_catch_table_and_gates_a_missed_bug(tmp_path, monkeypatch):
    """The nightly's planted part on a slice of the suite (two bugs, N = 1 and 5): the table is stored, the
    report shows it, every policy in use catches both; a policy made to miss one fails the job."""
    from gemma_oracle.harness.suites import planted

    monkeypatch.setattr(planted, "N_LIST", (1, 5))
    monkeypatch.setattr(planted, "BUGS", {k: planted.BUGS[k] for k in ("softcap-skipped", "padded-keys")})
    plan = dataclasses.replace(PLAN, parts=("planted",))
    first = run_nightly(plan, tmp_path, progress=False)
    table = first.run["planted"]
    assert len(table) == (2 + len(planted.FIXTURES)) * len(planted.POLICIES + planted.RECORD_ONLY) * 2
    assert table.loc[table["gated"], "ok"].all() and first.exit_code == 0
    md = (first.run_dir / REPORT_MD).read_text()
    assert "What the oracle catches" in md and "| softcap-skipped | g4-12b-mini | 5 | 1/1 | 1/1 | 1/1 |" in md
    assert "For the record (not gated): `calibrated@int8`, `decode-mmq`, `seed-12b-mmq`" in md

    real_run = planted.run

    def blind_calibrated(preset, policy, bug, n):
        result = real_run(preset, policy, bug, n)
        if policy == "calibrated" and bug == "padded-keys":
            ok = tuple(dataclasses.replace(c, passed=True) for c in result.comparisons)
            return dataclasses.replace(result, comparisons=ok)
        return result

    monkeypatch.setattr(planted, "run", blind_calibrated)
    second = run_nightly(plan, tmp_path, progress=False)
    missed = [f for f in second.findings if f.kind == "planted"]
    assert [f.status for f in missed] == ["planted bug missed"] and missed[0].gated
    assert "policy=calibrated n=5" in missed[0].key and second.exit_code == 1
