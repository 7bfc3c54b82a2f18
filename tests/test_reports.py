"""Report tables and rendering on recorded runs (tests/recorded_runs.py): counts and worst values worked out
by hand, the markdown and the self-contained HTML page with its plots."""
from __future__ import annotations

import base64
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
    assert m.loc["b-f32", "N=3"] == "0.0e+00"
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
                    "## Trends over 1 stored runs"):
        assert heading in md, heading
    assert "| m-q4_k_m | 8 | auto | batch-invariant | 300.0 | 200.0 | 1.500 |" in md
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
