"""A run's report: sections built from the store's tables, rendered to markdown and to one self-contained
HTML page (plots inlined as base64 PNG; the markdown links the same PNGs written beside it).

`write_report(run, ...)` writes report.md, report.html, findings.json and plots/*.png into the run's
directory, each atomically; `gemma-oracle report RUN_DIR` calls it again on a stored run.
"""
from __future__ import annotations

import base64
import html
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from . import plots, tables
from .records import NO_ROUTE
from .regress import Finding
from .store import StoredRun, atomic_write_bytes

REPORT_MD, REPORT_HTML, FINDINGS_JSON, PLOTS_DIR = "report.md", "report.html", "findings.json", "plots"
TREND_RUNS_SHOWN = 10  # the trend table's columns; the trend plot shows every stored run

def _nmse_like(v: float) -> str:
    """An error metric: exactly 0 (bitwise equal) says so, anything else in scientific notation."""
    return tables.EXACT_ZERO if v == 0 else f"{v:.2e}"


def _roofline_pct(v: float) -> str:
    """% of the roofline; above tables.ROOFLINE_MAX_PCT it is a measurement error, never a figure."""
    return f"{v:.1f}" if v <= tables.ROOFLINE_MAX_PCT else f"({v:.0f}: measurement error)"


# Display formats by column name (the frames keep raw numbers; only the rendering rounds them).
_FORMATS = {
    "worst_nmse": _nmse_like, "worst_max_abs": _nmse_like, "worst_kl": _nmse_like,
    "tokens_per_s": "{:.1f}", "per_seq_tokens_per_s": "{:.1f}", "roofline_tokens_per_s": "{:.1f}",
    "mmq_tokens_per_s": "{:.1f}", "ws_tokens_per_s": "{:.1f}", "step_ms": "{:.3f}", "ms": "{:.3f}",
    "spread_pct": "{:.1f}", "roofline_pct": _roofline_pct, "share_pct": "{:.1f}", "ratio": "{:.3f}",
}
_MEGABYTES = {"weight_bytes": "weight MB", "kv_bytes": "KV MB"}
# Column headers a reader reads (the stored frames keep their field names)
_LABELS = {
    "route": "route mode", "n": "N", "fixtures": "fixtures", "cases": "cases (fixture x N)",
    "comparisons": "comparisons (sequence x step)", "worst_nmse": "worst NMSE", "test_id": "test", "seq": "sequence",
    "tokens_per_s": "t/s (all sequences)", "per_seq_tokens_per_s": "t/s per sequence", "step_ms": "step ms (median)",
    "spread_pct": "repeat spread %", "roofline_tokens_per_s": "roofline t/s", "roofline_pct": "% of roofline",
    "routes": "kernels (matrices)", "flags": "flags", "mmq_mode": "MMQ mode", "ws_mode": "WS mode",
    "mmq_tokens_per_s": "MMQ t/s", "ws_tokens_per_s": "WS t/s", "ratio": "MMQ / WS", "applies_to": "applies to",
    "rule": "passes when", "kind": "kind", "status": "status", "key": "case", "previous": "previous run",
    "current": "this run", "gated": "fails the job",
}


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


@dataclass
class Section:
    title: str
    text: str = ""
    table: pd.DataFrame | None = None
    plot: tuple[str, bytes] | None = None  # (file stem, PNG)
    level: int = 2


@dataclass
class Report:
    title: str
    sections: list[Section] = field(default_factory=list)


def _display(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    for col, fmt in _FORMATS.items():
        if col in out.columns:
            fn = fmt if callable(fmt) else fmt.format
            out[col] = out[col].map(lambda v, f=fn: "" if pd.isna(v) else f(v))
    for col, label in _MEGABYTES.items():
        if col in out.columns:
            out[col] = out[col].map(lambda v: f"{v / 1e6:.2f}")
    out = out.rename(columns=_MEGABYTES)
    for col in out.columns:
        if out[col].dtype.kind == "f":
            fmt = "{:.1f}" if str(col).endswith("%") else "{:.4g}"  # percentages (profile shares) vs the rest
            out[col] = out[col].map(lambda v, f=fmt: "" if pd.isna(v) else f.format(v))
    out.columns = [_LABELS.get(c, c) for c in out.columns]
    return out


def markdown_table(df: pd.DataFrame, *, pad: bool = False) -> str:
    """A markdown table; ``pad``: every column as wide as its widest cell (for a terminal)."""
    d = _display(df).astype(str)

    def cell(s) -> str:
        return str(s).replace("|", "\\|").replace("\n", " ")

    rows = [[cell(c) for c in d.columns]] + [[cell(v) for v in row] for row in d.itertuples(index=False)]
    if not pad:
        lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(d.columns)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows[1:]])
    widths = [max(3, *(len(r[i]) for r in rows)) for i in range(len(rows[0]))]
    line = lambda r: "| " + " | ".join(v.ljust(w) for v, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(rows[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows[1:]])


# ------------------------------------------------------------------------------------------------ content
def _run_details(run: StoredRun, previous: StoredRun | None) -> Section:
    m = run.meta
    pkgs = ", ".join(f"{k} {v}" for k, v in sorted(m.packages.items()))
    lines = [f"- run: `{m.run_id}` ({m.kind}), started {m.created}, {m.duration_s:.0f} s",
             f"- commit: `{m.git_commit[:12]}`{' (uncommitted changes)' if m.git_dirty else ''}",
             f"- backend: {m.backend} on {m.device}" + (f", driver {m.driver}" if m.driver else ""),
             f"- python {m.python}, {m.platform}", f"- packages: {pkgs}",
             f"- compared with: `{previous.run_id}` ({previous.meta.device}, {previous.meta.backend})"
             if previous is not None else "- compared with: nothing (no earlier finished run of this kind)"]
    lines += [f"- {k}: {v}" for k, v in sorted(m.notes.items())]
    return Section("Run details", "\n".join(lines))


def _verdict(run: StoredRun, previous: StoredRun | None, findings: list[Finding]) -> Section:
    """First on the page: PASS/FAIL, what the cases did, what changed, and the one line of context it needs."""
    gated = [f for f in findings if f.gated]
    summary = tables.correctness_summary(run["oracle"])
    cases = (f"{int((summary['verdict'] == 'pass').sum())} of {_plural(len(summary), 'correctness case')} passed "
             f"their policy" if not summary.empty else "no correctness cases in this run")
    planted = run["planted"]
    if not planted.empty:
        used = planted[planted["gated"].astype(bool)]
        act = used[used["active"].astype(bool)]
        clean = used[used["subject"] == tables.CORRECT_SUBJECT]
        cases += (f"; planted bugs: {int((act['verdict'] == 'fail').sum())} of {len(act)} active runs caught by the "
                  f"policies in use, {int((clean['verdict'] == 'fail').sum())} false alarms in {len(clean)} runs of "
                  f"the correct engines")
    counts = pd.Series([f.status for f in findings], dtype=object).value_counts().to_dict()
    found = ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "no findings"
    head = "**FAIL**" if gated else "**PASS**"
    against = f"against `{previous.run_id}`" if previous is not None else "(no earlier run to compare with)"
    m = run.meta
    text = (f"{head}: {cases}; {found} {against}. {m.backend} on {m.device}, commit `{m.git_commit[:12]}`"
            f"{' (uncommitted changes)' if m.git_dirty else ''}; details at the end of the page.")
    table = pd.DataFrame([f.as_dict() for f in findings]).drop(columns=["message"]) if findings else None
    return Section("Verdict", text, table)


def _correctness(run: StoredRun) -> list[Section]:
    oracle = run["oracle"]
    summary = tables.correctness_summary(oracle)
    if summary.empty:
        return []
    pols = tables.policies(oracle)
    rules = " ".join(f"Policy `{r.policy}` passes when: {r.rule}." for r in pols.itertuples())
    no_route = f" ({tables.NO_ROUTE_MEANING}.)" if (summary["route"] == NO_ROUTE).any() else ""
    out = [Section("Correctness", "Golden oracle: each batched row against its own single-user run. Cases = "
                   f"fixture x N; a case fails if any of its (sequence, step) comparisons fails its policy. {rules}"
                   f"{no_route}", tables.correctness_overview(summary)),
           Section("Policies and thresholds", "Each comparison is judged by the policy stored with it "
                   "(gemma_oracle.oracles.compare).", pols, level=3),
           Section("Worst NMSE per fixture x route x N", f"{rules} `{tables.EXACT_ZERO}` = bitwise equal; "
                   "FAIL k/m = k of m comparisons failed.", tables.correctness_matrix(summary), level=3)]
    fails = tables.failures(oracle)
    if not fails.empty:
        out.append(Section("First failures", table=fails, level=3))
    bounds = {name: tables.policy_nmse_bound(name) for name in pols["policy"]}
    lines = "; ".join(f"`{k}` NMSE <= {v:g}" if v else f"`{k}` exact 0 only" for k, v in bounds.items()
                      if v is not None)
    out.append(Section("Worst error vs N", f"Dashed lines: each policy's NMSE bound ({lines or 'none'}); the "
                       f"shaded band at the bottom holds exact zeros.",
                       plot=("worst_error_vs_n", plots.worst_error_vs_n(summary, bounds)), level=3))
    return out


def _engine_verdicts(run: StoredRun) -> list[Section]:
    """Per engine x fixture x test x N one verdict class, with the engines' own descriptions: what a user reads
    first about an outside engine (gemma-oracle check, the nightly's engine rows)."""
    verdicts = run["verdicts"]
    if verdicts.empty:
        return []
    counts = verdicts["verdict"].value_counts().to_dict()
    not_batched = int((verdicts["not_batched"].astype(int) > 0).sum())
    rules = "; ".join(f"`{r.policy}`: {r.thresholds}" for r in
                      verdicts[["policy", "thresholds"]].drop_duplicates().itertuples())
    text = ("Each engine x fixture x test x N gets one class: `bitwise` (every batched row bit-identical to its "
            "single-user run: batch-invariant), `close` (every row within the policy's tolerance), `near-tie "
            "flips` (the only failures are argmax flips where the reference's top-two margin is below the near-tie "
            "bound), `broken` (anything else); \"not batched k\" = k batched steps the engine's own counters say "
            f"were not one batch. Counts: {', '.join(f'{v} {k}' for k, v in sorted(counts.items()))}"
            f"{f'; {not_batched} cases not batched' if not_batched else ''}. Thresholds: {rules}.")
    out = [Section("Engines and verdicts", text, tables.verdict_matrix(verdicts))]
    engines = tables.engines(run["oracle"])
    if not engines.empty:
        out.append(Section("Engines", "What each engine said it is (its describe()), stored with every row.",
                           engines, level=3))
    worst = verdicts[~verdicts["passed"].astype(bool)]
    if not worst.empty:
        out.append(Section("Why not passed", table=worst[["engine", "fixture", "test", "n", "verdict", "reason"]]
                           .head(20).reset_index(drop=True), level=3))
    return out


def _catches(run: StoredRun) -> list[Section]:
    planted = run["planted"]
    if planted.empty:
        return []
    in_use = sorted(set(planted.loc[planted["gated"].astype(bool), "policy"]))
    retired = sorted(set(planted["policy"]) - set(in_use))
    wrong = planted[planted["gated"].astype(bool) & ~planted["ok"].astype(bool)]
    verdict = ("Every planted bug caught at every N where it is active, no false alarm" if wrong.empty else
               f"{_plural(len(wrong), 'run')} with the wrong verdict (see the findings)")
    text = (f"Planted batching bugs (gemma_oracle.harness.suites.planted): engines exact alone and wrong only in "
            f"batched decode, each judged by every policy in use ({', '.join(f'`{p}`' for p in in_use)}) at every "
            f"N; cells are caught/active runs, the last row the correct engines' failed/runs. {verdict}."
            + (f" For the record (not gated): {', '.join(f'`{p}`' for p in retired)} (retired fixed bounds, and "
               f"the calibrated rule on an int8-noise route, which cannot see bugs smaller than int8 noise)."
               if retired else ""))
    return [Section("What the oracle catches", text, tables.catch_table(planted))]


def _performance(run: StoredRun) -> list[Section]:
    bench = run["bench"]
    perf = tables.perf_summary(bench)
    if perf.empty:
        return []
    said_above = ["backend", "device", "timing"] + ([] if perf["routes"].astype(bool).any() else ["routes"])
    bw = ", ".join(f"{d}: {v:.1f} GB/s" for d, v in bench.groupby("device")["read_gb_s"].first().items())
    noisy = int(perf["flags"].str.contains("noisy").sum())
    broken = int((perf["roofline_pct"] > tables.ROOFLINE_MAX_PCT).sum())
    host = set(perf["timing"]) - set(tables.DEVICE_CLOCK_TIMINGS)
    text = (f"Decode step = one token for each of N sequences. Streaming-read bandwidth measured by this run: {bw}. "
            f"Roofline = N x bandwidth / (weight bytes + N x KV bytes per step): the memory-only ceiling; a "
            f"figure above {tables.ROOFLINE_MAX_PCT:g} % of it means the bandwidth probe under-read, and is shown as "
            f"a measurement error, not a percentage ({_plural(broken, 'row')} here). Times are medians over the "
            f"repeats; spread = (slowest - fastest) / median, and a figure whose spread exceeds "
            f"{tables.NOISY_SPREAD_PCT:g} % is flagged noisy ({_plural(noisy, 'row')} here). "
            f"Backend {', '.join(sorted(set(perf['backend'])))}, timing {', '.join(sorted(set(perf['timing'])))}.")
    if host:
        text += (" Host-clock timings on a shared machine swing between runs of one commit: they say how the "
                 "pipeline behaves, not how fast it is, and are never gated.")
    if (perf["route"] == NO_ROUTE).any():
        text += f" {tables.NO_ROUTE_MEANING[0].upper()}{tables.NO_ROUTE_MEANING[1:]}."
    out = [Section("Performance", text, perf.drop(columns=said_above)),
           Section("Tokens/s vs N", f"Dashed: the roofline; red ring: noisy (spread > {tables.NOISY_SPREAD_PCT:g} %); "
                   "x: a roofline below the measured t/s (measurement error).",
                   plot=("tokens_per_s_vs_n", plots.tokens_per_s_vs_n(
                       perf, noisy_pct=tables.NOISY_SPREAD_PCT, roofline_max_pct=tables.ROOFLINE_MAX_PCT)), level=3)]
    ratio = tables.mmq_ws_ratio(bench)
    out.append(Section(
        "MMQ / WS", "t/s of the decode-MMQ route mode over the weight-stationary one." if not ratio.empty else
        f"Not measured: needs a decode-MMQ mode {tables.MMQ_MODES} and a WS mode {tables.WS_MODES}; this run "
        f"measured {sorted(set(bench['route']))}.", ratio if not ratio.empty else None, level=3))
    profile = run["op_profile"]
    prof = tables.op_profile_matrix(profile)
    if not prof.empty:
        timing = ", ".join(sorted(set(profile["timing"]) & set(tables.DEVICE_CLOCK_TIMINGS)))
        out.append(Section("Per-op profile", f"Share of one decode step per op class ({timing}); matmuls by weight "
                           "role, 'other' = the step minus every timed op.", prof, level=3))
    elif not profile.empty:
        out.append(Section("Per-op profile", "Left out: this run timed its ops on the host clock "
                           f"({', '.join(sorted(set(profile['timing'])))}), where BLAS threads, Python and other jobs "
                           "share every span (two matmuls of one shape read 40 % and 20 %); a profile is shown only "
                           "when device clocks (CUDA events) time it.", level=3))
    routes = run["routes"]
    counts = tables.route_counts(routes)
    if not counts.empty:
        n_max = int(routes["n"].max())
        out.append(Section("Route table", "Matrices served by each kernel per route mode and N.", counts, level=3))
        out.append(Section(f"Kernels per weight role at N={n_max}", table=tables.route_roles(routes, n_max), level=3))
    return out


def _trends(history: list[StoredRun]) -> list[Section]:
    trend = tables.trends(history)
    if trend.empty:
        return []
    recent = trend[trend["run_id"].isin(trend.drop_duplicates("run_id").tail(TREND_RUNS_SHOWN)["run_id"])]
    cell = recent.apply(lambda r: (tables.EXACT_ZERO if r["value"] == 0 and r["figure"].startswith("worst NMSE")
                                   else f"{r['value']:.4g}") + (" (noisy)" if r["noisy"] else ""), axis=1)
    wide = recent.assign(cell=cell).pivot_table(index="figure", columns="run_id", values="cell", aggfunc="first")
    wide = wide[[r for r in recent.drop_duplicates("run_id")["run_id"]]].fillna("-")
    wide.columns.name = None  # the run ids head their own columns: no "run_id" header row above them
    runs = trend["run_id"].nunique()
    return [Section(f"Trends over {_plural(runs, 'stored run')}",
                    f"Headline figures per run (the table shows the latest {min(runs, TREND_RUNS_SHOWN)}); "
                    f"(noisy): its repeats spread more than {tables.NOISY_SPREAD_PCT:g} %, ringed red in the plot.",
                    wide.reset_index(), plot=("trends", plots.trends(trend)))]


def build_report(run: StoredRun, *, previous: StoredRun | None, findings: list[Finding],
                 history: list[StoredRun]) -> Report:
    """The verdict first, then correctness (with each policy's thresholds), performance, trends, and the run's
    details last."""
    rep = Report(f"gemma-oracle {run.meta.kind} {run.run_id}")
    rep.sections.append(_verdict(run, previous, findings))
    rep.sections += _engine_verdicts(run) + _correctness(run) + _catches(run) + _performance(run) + _trends(history)
    rep.sections.append(_run_details(run, previous))
    return rep


# ------------------------------------------------------------------------------------------------ output
def to_markdown(rep: Report) -> str:
    out = [f"# {rep.title}", ""]
    for s in rep.sections:
        out += ["#" * s.level + " " + s.title, ""]
        if s.text:
            out += [s.text, ""]
        if s.table is not None and not s.table.empty:
            out += [markdown_table(s.table), ""]
        if s.plot is not None and s.plot[1] is not None:
            out += [f"![{s.title}]({PLOTS_DIR}/{s.plot[0]}.png)", ""]
    return "\n".join(out)


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:110em;color:#222}
table{border-collapse:collapse;font-size:12px;margin:0.5em 0 1.5em}th,td{border:1px solid #ccc;padding:2px 6px;
text-align:left}th{background:#eee}td.num{text-align:right}img{max-width:100%}
.fail{color:#b00;font-weight:bold}.pass{color:#070;font-weight:bold}ul{font-size:13px}
td.flag{color:#a50;background:#fff4e0}"""


def _html_text(text: str) -> str:
    lines = text.splitlines()
    if lines and all(line.startswith("- ") for line in lines):
        items = "".join(f"<li>{_inline(line[2:])}</li>" for line in lines)
        return f"<ul>{items}</ul>"
    return f"<p>{_inline(text)}</p>"


def _inline(text: str) -> str:
    t = html.escape(text)
    t = t.replace("**FAIL**", '<span class="fail">FAIL</span>').replace("**PASS**", '<span class="pass">PASS</span>')
    parts = t.split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


_FLAGGED_CELL = re.compile(r"<td>([^<]*(?:noisy|measurement error)[^<]*)</td>")
_FAILED_CELL = re.compile(r"<td>(FAIL [^<]*)</td>")
_NUMBER_CELL = re.compile(r"<td>(-?[0-9][0-9.,]*(?:e[-+][0-9]+)?|0 \(exact\))</td>")  # right-aligned; text left


def _mark_cells(table_html: str) -> str:
    """Numbers right-aligned, text left; flagged figures (noise, a measurement error) and failing cases stand out."""
    table_html = _NUMBER_CELL.sub(r'<td class="num">\1</td>', table_html)
    table_html = _FLAGGED_CELL.sub(r'<td class="flag">\1</td>', table_html)
    return _FAILED_CELL.sub(r'<td class="fail">\1</td>', table_html)


def to_html(rep: Report) -> str:
    out = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(rep.title)}</title>"
           f"<style>{_CSS}</style></head><body><h1>{html.escape(rep.title)}</h1>"]
    for s in rep.sections:
        out.append(f"<h{s.level}>{html.escape(s.title)}</h{s.level}>")
        if s.text:
            out.append(_html_text(s.text))
        if s.table is not None and not s.table.empty:
            out.append(_mark_cells(_display(s.table).to_html(index=False, escape=True, border=0)))
        if s.plot is not None and s.plot[1] is not None:
            data = base64.b64encode(s.plot[1]).decode()
            out.append(f"<img alt='{html.escape(s.title)}' src='data:image/png;base64,{data}'>")
    out.append("</body></html>")
    return "\n".join(out)


def write_report(run: StoredRun, *, previous: StoredRun | None, findings: list[Finding],
                 history: list[StoredRun]) -> Report:
    rep = build_report(run, previous=previous, findings=findings, history=history)
    for s in rep.sections:
        if s.plot is not None and s.plot[1] is not None:
            atomic_write_bytes(run.dir / PLOTS_DIR / f"{s.plot[0]}.png", s.plot[1])
    atomic_write_bytes(run.dir / FINDINGS_JSON, json.dumps([f.as_dict() for f in findings], indent=1).encode())
    atomic_write_bytes(run.dir / REPORT_MD, to_markdown(rep).encode())
    atomic_write_bytes(run.dir / REPORT_HTML, to_html(rep).encode())
    return rep


def report_files(run_dir: Path) -> list[Path]:
    return [run_dir / n for n in (REPORT_MD, REPORT_HTML, FINDINGS_JSON)]
