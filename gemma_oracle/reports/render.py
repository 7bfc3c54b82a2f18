"""A run's report: sections built from the store's tables, rendered to markdown and to one self-contained
HTML page (plots inlined as base64 PNG; the markdown links the same PNGs written beside it).

`write_report(run, ...)` writes report.md, report.html, findings.json and plots/*.png into the run's
directory, each atomically; `gemma-oracle report RUN_DIR` calls it again on a stored run.
"""
from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from . import plots, tables
from .regress import Finding
from .store import StoredRun, atomic_write_bytes

REPORT_MD, REPORT_HTML, FINDINGS_JSON, PLOTS_DIR = "report.md", "report.html", "findings.json", "plots"
TREND_RUNS_SHOWN = 10  # the trend table's columns; the trend plot shows every stored run

# Display formats by column name (the frames keep raw numbers; only the rendering rounds them).
_FORMATS = {
    "worst_nmse": "{:.2e}", "worst_max_abs": "{:.2e}", "worst_kl": "{:.2e}",
    "tokens_per_s": "{:.1f}", "per_seq_tokens_per_s": "{:.1f}", "roofline_tokens_per_s": "{:.1f}",
    "mmq_tokens_per_s": "{:.1f}", "ws_tokens_per_s": "{:.1f}", "step_ms": "{:.3f}", "ms": "{:.3f}",
    "spread_pct": "{:.1f}", "roofline_pct": "{:.2f}", "share_pct": "{:.1f}", "ratio": "{:.3f}",
}
_MEGABYTES = {"weight_bytes": "weight MB", "kv_bytes": "KV MB"}


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
            out[col] = out[col].map(lambda v, f=fmt: "" if pd.isna(v) else f.format(v))
    for col, label in _MEGABYTES.items():
        if col in out.columns:
            out[col] = out[col].map(lambda v: f"{v / 1e6:.2f}")
    out = out.rename(columns=_MEGABYTES)
    for col in out.columns:
        if out[col].dtype.kind == "f":
            fmt = "{:.1f}" if str(col).endswith("%") else "{:.4g}"  # percentages (profile shares) vs the rest
            out[col] = out[col].map(lambda v, f=fmt: "" if pd.isna(v) else f.format(v))
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
def _header(run: StoredRun, previous: StoredRun | None) -> Section:
    m = run.meta
    pkgs = ", ".join(f"{k} {v}" for k, v in sorted(m.packages.items()))
    lines = [f"- run: `{m.run_id}` ({m.kind}), started {m.created}, {m.duration_s:.0f} s",
             f"- commit: `{m.git_commit[:12]}`{' (uncommitted changes)' if m.git_dirty else ''}",
             f"- backend: {m.backend} on {m.device}" + (f", driver {m.driver}" if m.driver else ""),
             f"- python {m.python}, {m.platform}", f"- packages: {pkgs}",
             f"- compared with: `{previous.run_id}` ({previous.meta.device}, {previous.meta.backend})"
             if previous is not None else "- compared with: nothing (no earlier finished run of this kind)"]
    lines += [f"- {k}: {v}" for k, v in sorted(m.notes.items())]
    return Section("Run", "\n".join(lines))


def _verdict(findings: list[Finding]) -> Section:
    gated = [f for f in findings if f.gated]
    counts = pd.Series([f.status for f in findings], dtype=object).value_counts().to_dict()
    summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "no findings"
    head = "**FAIL**" if gated else "**PASS**"
    table = pd.DataFrame([f.as_dict() for f in findings]).drop(columns=["message"]) if findings else None
    return Section("Verdict", f"{head}: {summary}.", table)


def build_report(run: StoredRun, *, previous: StoredRun | None, findings: list[Finding],
                 history: list[StoredRun]) -> Report:
    rep = Report(f"gemma-oracle {run.meta.kind} {run.run_id}")
    rep.sections += [_header(run, previous), _verdict(findings)]

    oracle = run["oracle"]
    summary = tables.correctness_summary(oracle)
    if not summary.empty:
        rep.sections.append(Section("Correctness", "Golden oracle: each batched row against its own single-user "
                                    "run. Cases = fixture x N; a case fails if any of its (sequence, step) "
                                    "comparisons does.", tables.correctness_overview(summary)))
        rep.sections.append(Section("Worst NMSE per fixture x route x N", table=tables.correctness_matrix(summary),
                                    level=3))
        fails = tables.failures(oracle)
        if not fails.empty:
            rep.sections.append(Section("First failures", table=fails, level=3))
        rep.sections.append(Section("Worst error vs N", plot=("worst_error_vs_n", plots.worst_error_vs_n(summary)),
                                    level=3))

    bench = run["bench"]
    perf = tables.perf_summary(bench)
    if not perf.empty:
        said_above = ["backend", "device", "timing"] + ([] if perf["routes"].astype(bool).any() else ["routes"])
        bw = ", ".join(f"{d}: {v:.1f} GB/s" for d, v in bench.groupby("device")["read_gb_s"].first().items())
        rep.sections.append(Section(
            "Performance", f"Decode step = one token for each of N sequences. Streaming-read bandwidth measured by "
            f"this run: {bw}. Roofline = N x bandwidth / (weight bytes + N x KV bytes per step): the memory-only "
            f"ceiling. Times are medians over the repeats; spread = (slowest - fastest) / median. "
            f"Backend {', '.join(sorted(set(perf['backend'])))}, timing {', '.join(sorted(set(perf['timing'])))}.",
            perf.drop(columns=said_above)))
        rep.sections.append(Section("Tokens/s vs N", plot=("tokens_per_s_vs_n", plots.tokens_per_s_vs_n(perf)),
                                    level=3))
        ratio = tables.mmq_ws_ratio(bench)
        rep.sections.append(Section(
            "MMQ / WS", "t/s of the decode-MMQ route mode over the weight-stationary one." if not ratio.empty else
            f"Not measured: needs a decode-MMQ mode {tables.MMQ_MODES} and a WS mode {tables.WS_MODES}; this run "
            f"measured {sorted(set(bench['route']))}.", ratio if not ratio.empty else None, level=3))
        prof = tables.op_profile_matrix(run["op_profile"])
        if not prof.empty:
            timing = ", ".join(sorted(set(run["op_profile"]["timing"])))
            rep.sections.append(Section("Per-op profile", f"Share of one decode step per op class ({timing}); "
                                        "matmuls by weight role, 'other' = the step minus every timed op.", prof,
                                        level=3))
        routes = run["routes"]
        counts = tables.route_counts(routes)
        if not counts.empty:
            n_max = int(routes["n"].max())
            rep.sections.append(Section("Route table", "Matrices served by each kernel per route mode and N.",
                                        counts, level=3))
            rep.sections.append(Section(f"Kernels per weight role at N={n_max}",
                                        table=tables.route_roles(routes, n_max), level=3))

    trend = tables.trends(history)
    if not trend.empty:
        recent = trend[trend["run_id"].isin(trend.drop_duplicates("run_id").tail(TREND_RUNS_SHOWN)["run_id"])]
        wide = recent.pivot_table(index="figure", columns="run_id", values="value", aggfunc="first")
        wide = wide[[r for r in recent.drop_duplicates("run_id")["run_id"]]].reset_index()
        rep.sections.append(Section(f"Trends over {trend['run_id'].nunique()} stored runs",
                                    "Headline figures per run (the table shows the latest "
                                    f"{TREND_RUNS_SHOWN}).", wide, plot=("trends", plots.trends(trend))))
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
text-align:right}th{background:#eee}td:first-child,th:first-child{text-align:left}img{max-width:100%}
.fail{color:#b00;font-weight:bold}.pass{color:#070;font-weight:bold}ul{font-size:13px}"""


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


def to_html(rep: Report) -> str:
    out = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(rep.title)}</title>"
           f"<style>{_CSS}</style></head><body><h1>{html.escape(rep.title)}</h1>"]
    for s in rep.sections:
        out.append(f"<h{s.level}>{html.escape(s.title)}</h{s.level}>")
        if s.text:
            out.append(_html_text(s.text))
        if s.table is not None and not s.table.empty:
            out.append(_display(s.table).to_html(index=False, escape=True, border=0))
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
