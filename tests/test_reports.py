"""Report tables and rendering on recorded runs (tests/recorded_runs.py): counts and worst values worked out
by hand, the markdown and the self-contained HTML page with its plots."""
from __future__ import annotations

import base64
import dataclasses
import re

import pandas as pd
import pytest

from gemma_oracle.reports import tables
from gemma_oracle.reports.render import (FINDINGS_JSON, PLOTS_DIR, REPORT_HTML, REPORT_MD, build_report, markdown_table, to_html,
                            to_markdown, write_report)
from gemma_oracle.reports.store import load_run

from .recorded_runs import CPU, bench_row, golden_records, op_row, route_row, store_run

CREATED = "2026-11-25T03:00:00+00:00"


@pytest.fixture
def run(tmp_path):
    """Fixture a: N = 1, 2, 3 with N = 3 broken (4 failing comparisons); fixture b: clean. GPU bench of two
    route modes; a profile; a route table."""
    oracle = golden_records("a-f32", broken_n=3) + golden_records("b-f32")
    bench = [bench_row(route="batch-invariant", n=n, tokens_per_s=t) for n, t in ((1, 100.0), (8, 200.0))]
    bench += [bench_row(route="auto", n=n, tokens_per_s=t) for n, t in ((1, 100.0), (8, 300.0))]
    prof = [op_row("ffn_gate", 50.0), op_row("attention", 30.0), op_row("other", 20.0),
            op_row("ffn_gate", 40.0, n=1), op_row("attention", 35.0, n=1), op_row("other", 25.0, n=1)]
    routes = [route_row("blk.0.ffn_gate.weight", "decode_mmq"), route_row("blk.0.attn_q.weight", "ws"),
              route_row("blk.1.attn_q.weight", "ws")]
    return load_run(store_run(tmp_path, "2026-11-25-030000", created=CREATED, oracle=oracle, bench=bench,
                              op_profile=prof, routes=routes))


def test_correctness_summary_counts_and_worst_values(run):
    s = tables.correctness_summary(run["oracle"]).set_index(["fixture", "n"])
    # N sequences x (prefill + 4 decode steps)
    assert s["comparisons"].tolist() == [5, 10, 15, 5, 10, 15]
    assert s.loc[("a-f32", 3), "failed"] == 4 and s.loc[("a-f32", 3), "verdict"] == "fail"
    assert s["verdict"].tolist().count("fail") == 1
    # the clean toy engine is bitwise batch-invariant: NMSE exactly 0 wherever nothing was injected
    assert s.loc[("b-f32", 3), "worst_nmse"] == 0.0 and s.loc[("a-f32", 2), "worst_nmse"] == 0.0
    assert s.loc[("a-f32", 3), "worst_nmse"] > 0.0
    assert s.loc[("a-f32", 3), "argmax_disagree"] == 0  # +1.0 on every logit keeps the argmax


def test_correctness_overview_and_matrix(run):
    summary = tables.correctness_summary(run["oracle"])
    ov = tables.correctness_overview(summary)
    assert ov[["fixtures", "cases", "passed", "failed", "comparisons"]].values.tolist() == [[2, 6, 5, 1, 60]]
    m = tables.correctness_matrix(summary).set_index("fixture")
    assert m.loc["a-f32", "N=3"].startswith("FAIL 4/15 ")
    assert m.loc["b-f32", "N=3"] == "0 (exact)"  # an exact zero says so, never "0.0e+00" or 1e-40
    assert set(m["policy"]) == {"float64"}
    assert list(m.columns[-3:]) == ["N=1", "N=2", "N=3"]


def test_failures_table_lists_the_injected_rows(run):
    f = tables.failures(run["oracle"])
    assert len(f) == 4
    assert set(f["seq"]) == {0} and sorted(f["step"]) == [1, 2, 3, 4]


def test_mmq_ws_ratio_prefers_forced_modes():
    auto_only = [bench_row(route="batch-invariant", n=8, tokens_per_s=200.0),
                 bench_row(route="auto", n=8, tokens_per_s=300.0)]
    r = tables.mmq_ws_ratio(pd.DataFrame(auto_only))
    assert r[["mmq_mode", "ws_mode", "ratio"]].values.tolist() == [["auto", "batch-invariant", 1.5]]
    forced = auto_only + [bench_row(route="ws", n=8, tokens_per_s=250.0),
                          bench_row(route="decode_mmq", n=8, tokens_per_s=500.0)]
    r = tables.mmq_ws_ratio(pd.DataFrame(forced))
    assert r[["mmq_mode", "ws_mode", "ratio"]].values.tolist() == [["decode_mmq", "ws", 2.0]]
    assert tables.mmq_ws_ratio(pd.DataFrame([bench_row(route="auto")])).empty


def test_op_profile_matrix_orders_ops_by_share(run):
    m = tables.op_profile_matrix(run["op_profile"])
    assert m["op"].tolist() == ["ffn_gate", "attention", "other"]  # mean shares 45, 32.5, 22.5
    assert m.loc[0, "N=1 %"] == 40.0 and m.loc[0, "N=8 %"] == 50.0


def test_route_tables(run):
    counts = tables.route_counts(run["routes"])
    assert counts[["decode_mmq", "ws"]].values.tolist() == [[1, 2]]
    roles = tables.route_roles(run["routes"], 8).set_index("role")
    assert roles.loc["ffn_gate", "auto"] == "decode_mmq" and roles.loc["attn_q", "auto"] == "ws"


def test_headline_figures(run):
    h = tables.headline(run).set_index("figure")["value"]
    assert h["failed cases: synthetic none"] == 1
    assert h["t/s: m-q4_k_m auto N=8"] == 300.0 and h["t/s: m-q4_k_m batch-invariant N=8"] == 200.0
    assert h["% roofline: m-q4_k_m auto N=8"] == 100 * 300.0 / 4000.0


def test_markdown_report_has_every_section(run):
    md = to_markdown(build_report(run, previous=None, findings=[], history=[run]))
    for heading in ("## Run", "## Verdict", "## Correctness", "### Worst NMSE per fixture x route x N",
                    "### First failures", "## Performance", "### MMQ / WS", "### Per-op profile", "### Route table",
                    "## Trends over 1 stored run", "## Run details"):
        assert heading in md, heading
    assert "| m-q4_k_m | 8 | auto | batch-invariant | 300.0 | 200.0 | 1.500 |" in md
    assert "stored runs" not in md  # one run: "1 stored run"
    assert "FAIL 4/15" in md
    assert f"![Tokens/s vs N]({PLOTS_DIR}/tokens_per_s_vs_n.png)" in md


def test_html_report_is_self_contained(run):
    page = to_html(build_report(run, previous=None, findings=[], history=[run]))
    assert page.startswith("<!DOCTYPE html>")
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(images) == 3  # worst error vs N, t/s vs N, trends
    assert all(base64.b64decode(i).startswith(b"\x89PNG\r\n\x1a\n") for i in images)
    assert not re.search(r"(src|href)=['\"]?(https?:|//|[a-z_]+/)", page)  # nothing fetched from elsewhere
    assert "<link" not in page and "<script" not in page


def test_cpu_run_without_routes_or_oracle_still_renders(tmp_path):
    r = load_run(store_run(tmp_path, "b", created=CREATED, backend="numpy64", device=CPU, kind="bench",
                           bench=[bench_row(route="none", n=1, device=CPU, backend="numpy64", timing="host-clock")]))
    md = to_markdown(build_report(r, previous=None, findings=[], history=[r]))
    assert "## Correctness" not in md and "## Performance" in md
    assert "Not measured: needs a decode-MMQ mode" in md


def test_markdown_table_escapes_cell_pipes():
    assert markdown_table(pd.DataFrame({"a": ["x|y"], "b": ["line\nbreak"]})).splitlines() == [
        "| a | b |", "|---|---|", "| x\\|y | line break |"]


def test_write_report_writes_every_file_atomically(run):
    write_report(run, previous=None, findings=[], history=[run])
    names = sorted(p.name for p in run.dir.iterdir())
    assert {REPORT_MD, REPORT_HTML, FINDINGS_JSON, PLOTS_DIR} <= set(names)
    assert not [n for n in names if n.endswith(".tmp")]
    assert sorted(p.name for p in (run.dir / PLOTS_DIR).iterdir()) == [
        "tokens_per_s_vs_n.png", "trends.png", "worst_error_vs_n.png"]
    assert (run.dir / FINDINGS_JSON).read_text() == "[]"


def _section_titles(rep) -> list[str]:
    return [s.title for s in rep.sections]


def test_verdict_comes_before_everything_and_metadata_last(run):
    rep = build_report(run, previous=None, findings=[], history=[run])
    titles = _section_titles(rep)
    assert titles[0] == "Verdict" and titles[-1] == "Run details"
    assert rep.sections[0].text.startswith("**PASS**: 5 of 6 correctness cases passed their policy")
    md = to_markdown(rep)
    assert md.index("## Verdict") < md.index("## Correctness") < md.index("- commit:")
    page = to_html(rep)
    assert page.index("Verdict") < page.index("class=\"pass\"") < page.index("packages:")


def test_every_correctness_table_states_its_policy_and_thresholds(run):
    rep = build_report(run, previous=None, findings=[], history=[run])
    by_title = {s.title: s for s in rep.sections}
    rule = "NMSE <= 1e-24, the same argmax, top-5 sets share >= 5 tokens"
    for title in ("Correctness", "Worst NMSE per fixture x route x N"):
        assert f"Policy `float64` passes when: {rule}." in by_title[title].text, title
        assert "policy" in by_title[title].table.columns
    pols = by_title["Policies and thresholds"].table
    assert pols.values.tolist() == [["float64", "synthetic numpy64 none", rule]]
    # route "none" is explained where it appears
    assert "the engine has no matmul router" in by_title["Correctness"].text
    assert tables.policy_rule("exact").startswith("bitwise equal")
    assert tables.policy_rule("decode-mmq") == ("NMSE <= 0.005, max |diff| <= 1, the same argmax unless the "
                                                "reference's top-2 margin < 0.5, top-5 sets share >= 4 tokens")
    assert "not a named policy" in tables.policy_rule("tolerance(nmse<=1)")


def test_error_plot_draws_threshold_lines_and_labels_exact_zeros(run, monkeypatch):
    from gemma_oracle.reports import plots

    drawn = {}

    def keep(fig):
        (ax,) = fig.axes
        drawn["labels"] = [t.get_text() for t in ax.get_yticklabels()]
        drawn["lines"] = [(line.get_label(), list(line.get_ydata())) for line in ax.get_lines()]
        drawn["ylim"] = ax.get_ylim()
        return b"png"

    monkeypatch.setattr(plots, "_png", keep)
    summary = tables.correctness_summary(run["oracle"])
    plots.worst_error_vs_n(summary, {"float64": 1e-24, "exact": 0.0})
    assert drawn["labels"][0] == "exact (0)"
    bound = [ys for label, ys in drawn["lines"] if label == "policy float64: pass if NMSE <= 1e-24"]
    assert bound and bound[0] == [1e-24, 1e-24]
    assert any(label.startswith("policy exact: pass only at exact 0") for label, _ in drawn["lines"])
    # zeros sit on the band three decades under the smallest positive value (the 1e-24 bound), not at 1e-40
    (data,) = [ys for label, ys in drawn["lines"] if label.startswith("synthetic")]
    assert min(data) == pytest.approx(1e-27) and drawn["ylim"][0] > 1e-30


def _perf_run(tmp_path, rows, prof=()):
    return load_run(store_run(tmp_path, "p", created=CREATED, backend="numpy64", device=CPU, kind="bench",
                              bench=rows, op_profile=prof))


def test_roofline_above_100_percent_is_a_flagged_measurement_error(tmp_path):
    rows = [bench_row(route="none", n=n, tokens_per_s=t, roofline_tokens_per_s=1000.0, device=CPU, backend="numpy64",
                      timing="host-clock") for n, t in ((1, 500.0), (16, 1650.0))]
    rep = build_report(_perf_run(tmp_path, rows), previous=None, findings=[], history=[])
    md = to_markdown(rep)
    assert "(165: measurement error)" in md and "| 165.0" not in md and "165.00" not in md
    assert "| 50.0 |" in md  # a percentage under the ceiling is a figure
    perf = next(s for s in rep.sections if s.title == "Performance").table
    assert perf.loc[perf["n"] == 16, "flags"].item().startswith("measurement error")
    assert perf.loc[perf["n"] == 1, "flags"].item() == ""
    assert "1 row here" in next(s for s in rep.sections if s.title == "Performance").text


def test_noisy_figures_are_flagged_and_host_clock_profiles_left_out(tmp_path):
    rows = [bench_row(route="none", n=n, tokens_per_s=100.0 * n, spread_pct=s, device=CPU, backend="numpy64",
                      timing="host-clock") for n, s in ((1, 2.0), (16, 25.0))]
    prof = [dataclasses.replace(op_row("ffn_up", 40.0), timing="host-clock", backend="numpy64")]
    r = _perf_run(tmp_path, rows, prof)
    rep = build_report(r, previous=None, findings=[], history=[r])
    perf = next(s for s in rep.sections if s.title == "Performance").table
    assert perf["flags"].tolist() == ["", f"noisy: repeats spread 25 % > {tables.NOISY_SPREAD_PCT:g} %"]
    md = to_markdown(rep)
    assert "noisy: repeats spread 25 %" in md
    assert '<td class="flag">noisy: repeats spread 25 %' in to_html(rep)
    profile = next(s for s in rep.sections if s.title == "Per-op profile")
    assert profile.table is None and profile.text.startswith("Left out: this run timed its ops on the host clock")
    assert tables.op_profile_matrix(pd.DataFrame([dataclasses.asdict(p) for p in prof])).empty
    # the trend follows the largest N, whose figure is noisy: flagged in the trend table too
    assert tables.headline(r).set_index("figure")["noisy"].to_dict() == {
        "t/s: m-q4_k_m none N=16": True, "% roofline: m-q4_k_m none N=16": True}
    assert "| t/s: m-q4_k_m none N=16 | 1600 (noisy) |" in md


def test_human_column_names_and_no_empty_run_id_header(run):
    page = to_html(build_report(run, previous=None, findings=[], history=[run]))
    for raw in ("tokens_per_s", "worst_nmse", "spread_pct", "roofline_pct", "per_seq_tokens_per_s"):
        assert f"<th>{raw}</th>" not in page, raw
    assert "<th>t/s (all sequences)</th>" in page and "<th>% of roofline</th>" in page
    assert "<th>run_id</th>" not in page
