"""The report's tables, one function per table, each a pandas DataFrame built from stored records.

Nothing here recomputes a metric: tables group, count, take the worst value and divide stored figures
(t/s of one route mode by another's). Formatting for display is reports/render.py's business.
"""
from __future__ import annotations

import pandas as pd

CASE_KEYS = ["suite", "fixture", "backend", "route", "n"]
PERF_KEYS = ["model", "backend", "device", "route", "n"]
# MMQ/WS ratio: the decode-MMQ side and the weight-stationary side, in order of preference (forced modes
# first, since "auto" and "batch-invariant" mix in GEMM-N where MMQ or WS is not eligible)
MMQ_MODES = ("decode_mmq", "auto")
WS_MODES = ("ws", "batch-invariant")


def correctness_summary(oracle: pd.DataFrame) -> pd.DataFrame:
    """One row per fixture x backend x route x N: comparisons, failures, verdict, worst metrics."""
    if oracle.empty:
        return pd.DataFrame(columns=CASE_KEYS + ["comparisons", "failed", "verdict", "worst_nmse", "worst_max_abs",
                                                 "worst_kl", "min_topk_overlap", "argmax_disagree", "policy"])
    df = oracle.assign(failed_=~oracle["passed"].astype(bool), disagree_=~oracle["argmax_agree"].astype(bool))
    g = df.groupby(CASE_KEYS, sort=True)
    out = g.agg(comparisons=("passed", "size"), failed=("failed_", "sum"), worst_nmse=("nmse", "max"),
                worst_max_abs=("max_abs", "max"), worst_kl=("kl", "max"), min_topk_overlap=("topk_overlap", "min"),
                argmax_disagree=("disagree_", "sum"), policy=("policy", "first")).reset_index()
    out["failed"] = out["failed"].astype(int)
    out["argmax_disagree"] = out["argmax_disagree"].astype(int)
    out.insert(len(CASE_KEYS) + 2, "verdict", out["failed"].map(lambda f: "fail" if f else "pass"))
    return out


def correctness_overview(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per suite x backend x route: cases (fixture x N) passed and failed, the worst NMSE."""
    cols = ["suite", "backend", "route", "fixtures", "cases", "passed", "failed", "comparisons", "worst_nmse"]
    if summary.empty:
        return pd.DataFrame(columns=cols)
    g = summary.assign(pass_=summary["verdict"].eq("pass")).groupby(["suite", "backend", "route"], sort=True)
    out = g.agg(fixtures=("fixture", "nunique"), cases=("verdict", "size"), passed=("pass_", "sum"),
                comparisons=("comparisons", "sum"), worst_nmse=("worst_nmse", "max")).reset_index()
    out["passed"] = out["passed"].astype(int)
    out["failed"] = out["cases"] - out["passed"]
    return out[cols]


def correctness_matrix(summary: pd.DataFrame) -> pd.DataFrame:
    """fixture x route (rows) by N (columns): the worst NMSE of a passing case; "FAIL k/m" (failed of all
    comparisons) and the worst NMSE of a failing one."""
    if summary.empty:
        return pd.DataFrame()
    cell = summary.apply(
        lambda r: (f"{r['worst_nmse']:.1e}" if r["verdict"] == "pass"
                   else f"FAIL {r['failed']}/{r['comparisons']} {r['worst_nmse']:.1e}"), axis=1)
    wide = summary.assign(cell=cell).pivot_table(index=["suite", "fixture", "backend", "route"], columns="n",
                                                 values="cell", aggfunc="first")
    wide.columns = [f"N={n}" for n in wide.columns]
    return wide.fillna("-").reset_index()


def failures(oracle: pd.DataFrame, limit: int = 20) -> pd.DataFrame:
    cols = ["test_id", "fixture", "backend", "route", "n", "seq", "step", "message"]
    if oracle.empty:
        return pd.DataFrame(columns=cols)
    return oracle.loc[~oracle["passed"].astype(bool), cols].head(limit).reset_index(drop=True)


def perf_summary(bench: pd.DataFrame) -> pd.DataFrame:
    cols = PERF_KEYS + ["tokens_per_s", "per_seq_tokens_per_s", "step_ms", "spread_pct", "weight_bytes",
                        "kv_bytes", "roofline_tokens_per_s", "roofline_pct", "routes", "timing"]
    if bench.empty:
        return pd.DataFrame(columns=cols)
    return bench[cols].sort_values(["model", "route", "n"], kind="stable").reset_index(drop=True)


def mmq_ws_ratio(bench: pd.DataFrame) -> pd.DataFrame:
    """Per model x N: t/s of the decode-MMQ mode over t/s of the weight-stationary mode (both measured)."""
    cols = ["model", "n", "mmq_mode", "ws_mode", "mmq_tokens_per_s", "ws_tokens_per_s", "ratio"]
    if bench.empty:
        return pd.DataFrame(columns=cols)
    modes = set(bench["route"])
    mmq = next((m for m in MMQ_MODES if m in modes), None)
    ws = next((m for m in WS_MODES if m in modes), None)
    if mmq is None or ws is None:
        return pd.DataFrame(columns=cols)
    a = bench.loc[bench["route"] == mmq, ["model", "n", "tokens_per_s"]]
    b = bench.loc[bench["route"] == ws, ["model", "n", "tokens_per_s"]]
    out = a.merge(b, on=["model", "n"], suffixes=("_mmq", "_ws"))
    out = out.rename(columns={"tokens_per_s_mmq": "mmq_tokens_per_s", "tokens_per_s_ws": "ws_tokens_per_s"})
    out["mmq_mode"], out["ws_mode"] = mmq, ws
    out["ratio"] = out["mmq_tokens_per_s"] / out["ws_tokens_per_s"]
    return out[cols].sort_values(["model", "n"]).reset_index(drop=True)


def op_profile_matrix(op_profile: pd.DataFrame) -> pd.DataFrame:
    """Per model x route: op (rows) by N (columns), the op's share of the step in percent."""
    if op_profile.empty:
        return pd.DataFrame()
    wide = op_profile.pivot_table(index=["model", "route", "op"], columns="n", values="share_pct", aggfunc="first")
    wide.columns = [f"N={n} %" for n in wide.columns]
    order = op_profile.groupby(["model", "route", "op"])["share_pct"].mean().rename("mean_share")
    wide = wide.join(order).sort_values(["model", "route", "mean_share"], ascending=[True, True, False])
    return wide.drop(columns="mean_share").reset_index()


def route_counts(routes: pd.DataFrame) -> pd.DataFrame:
    """Per model x route mode x N: how many matrices each kernel serves ("ws:47 gemm_n:1" as columns)."""
    if routes.empty:
        return pd.DataFrame()
    counts = routes.groupby(["model", "route", "n", "kernel"]).size().unstack("kernel", fill_value=0)
    return counts.reset_index()


def route_roles(routes: pd.DataFrame, n: int) -> pd.DataFrame:
    """At batch size ``n``: role (rows) by route mode (columns), the kernels serving that role's matrices."""
    sub = routes[routes["n"] == n]
    if sub.empty:
        return pd.DataFrame()
    cell = sub.groupby(["model", "role", "route"])["kernel"].agg(lambda k: "/".join(sorted(set(k))))
    return cell.unstack("route").fillna("-").reset_index()


# --------------------------------------------------------------------------------------- headline figures
def headline(run) -> pd.DataFrame:
    """The figures a trend follows, long form (run_id, created, device, backend, figure, value): cases
    failed per suite, worst NMSE per suite x route, and t/s and % roofline at each model x route's largest N."""
    meta, rows = run.meta, []
    summary = correctness_summary(run["oracle"])
    for (suite, route), g in summary.groupby(["suite", "route"]):
        rows.append((f"failed cases: {suite} {route}", int((g["verdict"] == "fail").sum())))
        rows.append((f"worst NMSE: {suite} {route}", float(g["worst_nmse"].max())))
    bench = run["bench"]
    if not bench.empty:
        top = bench.loc[bench.groupby(["model", "route"])["n"].idxmax()]
        for _, r in top.iterrows():
            rows.append((f"t/s: {r['model']} {r['route']} N={r['n']}", float(r["tokens_per_s"])))
            rows.append((f"% roofline: {r['model']} {r['route']} N={r['n']}", float(r["roofline_pct"])))
    return pd.DataFrame([{"run_id": meta.run_id, "created": meta.created, "device": meta.device,
                          "backend": meta.backend, "figure": f, "value": v} for f, v in rows],
                        columns=["run_id", "created", "device", "backend", "figure", "value"])


def trends(runs: list) -> pd.DataFrame:
    """headline() of every run, oldest first."""
    frames = [headline(r) for r in runs]
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame(columns=["run_id", "created", "device", "backend", "figure", "value"])
    return pd.concat(frames, ignore_index=True)
