"""Regression rules: what a run must be flagged for, compared with the previous run of its kind.

Correctness (always gated, whatever the device): a case (suite x fixture x backend x route x N) that
passed before and fails now is a regression; a failing case with no previous result is a new failure; one
that failed before too is still failing. All three fail the nightly; cases that ran before and not now are
reported without failing it.

Planted bugs (always gated): a policy in use that passes a planted bug where it is active, or fails a correct
engine (a false alarm), fails the nightly; retired policies are shown, never gated.

Speed (issue 8): a tokens/s drop at one (model, route mode, N, timing) counts only between runs on the same
device model and backend, on a GPU, and only when it exceeds max(5 %, 3 x the current run's own repeat
spread at that row). CPU timings are reported, never gated.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import pandas as pd

from .tables import CASE_KEYS, correctness_summary

PERF_MIN_DROP_PCT = 5.0
PERF_SPREAD_FACTOR = 3.0
PERF_KEYS = ["model", "route", "n", "timing"]


@dataclass(frozen=True)
class Finding:
    kind: str  # correctness | planted | perf
    status: str  # regression | new failure | still failing | not run | slower | slower (not gated) | not compared
    key: str
    previous: str
    current: str
    gated: bool  # makes the run's job exit non-zero
    message: str

    def as_dict(self) -> dict:
        return asdict(self)


def _key(row, keys) -> str:
    return " ".join(f"{k}={row[k]}" for k in keys)


def correctness_findings(current: pd.DataFrame, previous: pd.DataFrame | None) -> list[Finding]:
    """``current``/``previous``: tables.correctness_summary frames (``previous`` None: no earlier run)."""
    prev = {} if previous is None or previous.empty else {
        tuple(r[k] for k in CASE_KEYS): r for _, r in previous.iterrows()}
    out = []
    for _, r in current[current["verdict"] == "fail"].iterrows():
        before = prev.get(tuple(r[k] for k in CASE_KEYS))
        now = f"fail ({r['failed']}/{r['comparisons']} comparisons, worst NMSE {r['worst_nmse']:.3g})"
        if before is None:
            status, was = "new failure", "no result"
        elif before["verdict"] == "pass":
            status, was = "regression", f"pass (worst NMSE {before['worst_nmse']:.3g})"
        else:
            status, was = "still failing", f"fail ({before['failed']}/{before['comparisons']})"
        key = _key(r, CASE_KEYS)
        out.append(Finding("correctness", status, key, was, now, True, f"{status}: {key}: was {was}, now {now}"))
    if prev:
        ran_now = {tuple(r[k] for k in CASE_KEYS) for _, r in current.iterrows()}
        gone = pd.DataFrame([dict(zip(CASE_KEYS, k)) for k in prev if k not in ran_now], columns=CASE_KEYS)
        for (suite, backend, route), g in gone.groupby(["suite", "backend", "route"]):
            key = f"suite={suite} backend={backend} route={route}"
            out.append(Finding("correctness", "not run", key, f"{len(g)} cases", "0 cases", False,
                               f"not run: {key}: {len(g)} cases ran in the previous run and not in this one"))
    return out


def planted_findings(planted: pd.DataFrame) -> list[Finding]:
    """``planted``: the run's planted-bug table (records.PlantedRecord rows). One gated finding per policy in use
    whose verdict is not the expected one at some (subject, N)."""
    if planted.empty:
        return []
    bad = planted[planted["gated"].astype(bool) & ~planted["ok"].astype(bool)]
    out = []
    for _, r in bad.iterrows():
        status = "false alarm" if r["expected"] == "pass" else "planted bug missed"
        key = f"subject={r['subject']} fixture={r['fixture']} policy={r['policy']} n={r['n']}"
        out.append(Finding("planted", status, key, f"expected {r['expected']}", r["verdict"], True,
                           f"{status}: {key}" + (f": {r['message']}" if r["message"] else "")))
    return out


def perf_findings(current: pd.DataFrame, previous: pd.DataFrame | None, current_meta, previous_meta) -> list[Finding]:
    """``current``/``previous``: bench tables; the metas say which device and backend each run used."""
    if previous is None or previous.empty or current.empty:
        return []
    same_device = current_meta.device == previous_meta.device and current_meta.backend == previous_meta.backend
    if not same_device:
        return [Finding("perf", "not compared", "bench", f"{previous_meta.device} / {previous_meta.backend}",
                        f"{current_meta.device} / {current_meta.backend}", False,
                        "speed not compared: the previous run used another device or backend")]
    gated = current_meta.device_kind == "gpu"
    prev = {tuple(r[k] for k in PERF_KEYS): r for _, r in previous.iterrows()}
    out = []
    for _, r in current.iterrows():
        before = prev.get(tuple(r[k] for k in PERF_KEYS))
        if before is None:
            continue
        drop = 100 * (before["tokens_per_s"] - r["tokens_per_s"]) / before["tokens_per_s"]
        bound = max(PERF_MIN_DROP_PCT, PERF_SPREAD_FACTOR * r["spread_pct"])
        if not drop > bound:
            continue
        key = _key(r, ["model", "route", "n"])
        status = "slower" if gated else "slower (not gated)"
        why = "" if gated else " (CPU timings are reported, never gated)"
        out.append(Finding("perf", status, key, f"{before['tokens_per_s']:.1f} t/s", f"{r['tokens_per_s']:.1f} t/s",
                           gated, f"{status}: {key}: {before['tokens_per_s']:.1f} -> {r['tokens_per_s']:.1f} t/s "
                                  f"(-{drop:.1f} % > bound {bound:.1f} %){why}"))
    return out


def compare_runs(current, previous) -> list[Finding]:
    """Every finding of ``current`` (a store.StoredRun) against ``previous`` (a StoredRun or None)."""
    cur = correctness_summary(current["oracle"])
    prev = None if previous is None else correctness_summary(previous["oracle"])
    found = correctness_findings(cur, prev) + planted_findings(current["planted"])
    if previous is not None:
        found += perf_findings(current["bench"], previous["bench"], current.meta, previous.meta)
    return found


def exit_code(findings: list[Finding]) -> int:
    return 1 if any(f.gated for f in findings) else 0
