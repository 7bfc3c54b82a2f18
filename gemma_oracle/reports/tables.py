"""The report's tables, one function per table, each a pandas DataFrame built from stored records.

Nothing here recomputes a metric: tables group, count, take the worst value and divide stored figures
(t/s of one route mode by another's), look a stored policy name up for its pass rule, and flag stored figures
that break a stated rule (NOISY_SPREAD_PCT, ROOFLINE_MAX_PCT). Formatting for display is reports/render.py's
business.
"""
from __future__ import annotations

import pandas as pd

from gemma_oracle.oracles.compare import NAMED_POLICIES

from .records import NO_ROUTE

CASE_KEYS = ["suite", "test", "fixture", "backend", "route", "n"]
PERF_KEYS = ["model", "backend", "device", "route", "n"]
# MMQ/WS ratio: the decode-MMQ side and the weight-stationary side, in order of preference (forced modes
# first, since "auto" and "batch-invariant" mix in GEMM-N where MMQ or WS is not eligible)
MMQ_MODES = ("decode_mmq", "auto")
WS_MODES = ("ws", "batch-invariant")
# A figure whose timed repeats differ by more than this share of their median ((slowest - fastest) / median) is
# marked noisy: the host or device was not steady while it was measured, so a change smaller than its own spread
# says nothing. 10 %: GPU graph replays repeat within ~1-3 % (the regression rule's 5 % floor sits above that);
# the shared 2-core CI host swings 3x between runs of one commit (N = 16: 260 -> 865 t/s).
NOISY_SPREAD_PCT = 10.0
# No engine reads memory faster than the device's streaming-read bandwidth, so a t/s above 100 % of the roofline
# means the bandwidth probe under-read (a busy host, a buffer in cache): a measurement error, never a result.
ROOFLINE_MAX_PCT = 100.0
# Timings taken by the device's own clock. A per-op profile on the host clock (the numpy engine) times BLAS
# threads, Python and the other jobs on the host together: for one shape ffn_up read 40 % and ffn_gate 20 %.
DEVICE_CLOCK_TIMINGS = ("cuda-events-eager", "cuda-graph", "cuda-eager")
# Route mode NO_ROUTE in words (the numpy reference has one matmul path, so no router and no route mode).
NO_ROUTE_MEANING = (f"route mode `{NO_ROUTE}`: the engine has no matmul router (the numpy reference runs every "
                    "matmul one way), so there is no route mode to name")


CORRECT_SUBJECT = "correct"  # the planted table's subject for an engine without a planted bug


def catch_table(planted: pd.DataFrame) -> pd.DataFrame:
    """The planted-bug catch table: one row per bug with, per policy, "caught/active" (runs where the bug is
    active and the policy failed it / runs where it is active; where a calibrated policy missed some, the largest
    per-position noise ratio of those misses, e.g. "0/4 (<= 2.0x noise)"), then one row of the correct engines'
    false alarms ("failed/runs"). Policies in the order they were stored."""
    if planted.empty:
        return pd.DataFrame(columns=["bug", "fixture", "active N"])
    pols = list(dict.fromkeys(planted["policy"]))
    rows = []
    bugs = planted[planted["subject"] != CORRECT_SUBJECT]
    for bug, g in bugs.groupby("subject", sort=True):
        act = g[g["active"].astype(bool)]
        row = {"bug": bug, "fixture": ", ".join(dict.fromkeys(g["fixture"])),
               "active N": ",".join(str(n) for n in sorted(set(act["n"]))) or "none"}
        for p in pols:
            a = act[act["policy"] == p]
            row[p] = f"{int((a['verdict'] == 'fail').sum())}/{len(a)}"
            missed = a[a["verdict"] == "pass"]["noise_ratio"] if "noise_ratio" in a else pd.Series(dtype=float)
            if missed.notna().any():
                row[p] += f" (<= {missed.max():.1f}x noise)"
        rows.append(row)
    correct = planted[planted["subject"] == CORRECT_SUBJECT]
    if not correct.empty:
        row = {"bug": "(correct engines: false alarms)", "fixture": ", ".join(dict.fromkeys(correct["fixture"])),
               "active N": "-"}
        for p in pols:
            c = correct[correct["policy"] == p]
            row[p] = f"{int((c['verdict'] == 'fail').sum())}/{len(c)}"
        rows.append(row)
    return pd.DataFrame(rows)


def policy_rule(name: str) -> str:
    """The pass rule of a stored policy name, in words (gemma_oracle.oracles.compare.NAMED_POLICIES)."""
    policy = NAMED_POLICIES.get(name)
    if policy is None:
        return "not a named policy (gemma_oracle.oracles.compare.NAMED_POLICIES): its name lists its bounds"
    return policy.describe()


def policy_nmse_bound(name: str) -> float | None:
    """The NMSE a case of this policy may reach: 0 for an exact policy, None where NMSE is not bounded."""
    policy = NAMED_POLICIES.get(name)
    if policy is None:
        return None
    return 0.0 if policy.bitwise else policy.nmse_max


def policies(oracle: pd.DataFrame) -> pd.DataFrame:
    """One row per policy the stored comparisons were judged by: where it applied and its pass rule."""
    cols = ["policy", "applies_to", "rule"]
    if oracle.empty:
        return pd.DataFrame(columns=cols)
    used = oracle[["policy", "suite", "backend", "route"]].drop_duplicates().sort_values(["suite", "backend", "route"])
    used = used.assign(applies_to=used["suite"] + " " + used["backend"] + " " + used["route"])
    out = used.groupby("policy", sort=True)["applies_to"].agg(", ".join).reset_index()
    out["rule"] = out["policy"].map(policy_rule)
    return out[cols]


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
    cols = ["suite", "backend", "route", "policy", "fixtures", "cases", "passed", "failed", "comparisons", "worst_nmse"]
    if summary.empty:
        return pd.DataFrame(columns=cols)
    g = summary.assign(pass_=summary["verdict"].eq("pass")).groupby(["suite", "backend", "route", "policy"], sort=True)
    out = g.agg(fixtures=("fixture", "nunique"), cases=("verdict", "size"), passed=("pass_", "sum"),
                comparisons=("comparisons", "sum"), worst_nmse=("worst_nmse", "max")).reset_index()
    out["passed"] = out["passed"].astype(int)
    out["failed"] = out["cases"] - out["passed"]
    return out[cols]


EXACT_ZERO = "0 (exact)"  # an error metric that is exactly 0 (bitwise equal), not a rounded small number


def nmse_text(value: float) -> str:
    return EXACT_ZERO if value == 0 else f"{value:.1e}"


def correctness_matrix(summary: pd.DataFrame) -> pd.DataFrame:
    """fixture x route (rows) by N (columns): the worst NMSE of a passing case ("0 (exact)" when bitwise equal);
    "FAIL k/m" (failed of all comparisons) and the worst NMSE of a failing one."""
    if summary.empty:
        return pd.DataFrame()
    cell = summary.apply(
        lambda r: (nmse_text(r["worst_nmse"]) if r["verdict"] == "pass"
                   else f"FAIL {r['failed']}/{r['comparisons']} {nmse_text(r['worst_nmse'])}"), axis=1)
    wide = summary.assign(cell=cell).pivot_table(index=["suite", "test", "fixture", "backend", "route", "policy"], columns="n",
                                                 values="cell", aggfunc="first")
    wide.columns = [f"N={n}" for n in wide.columns]
    return wide.fillna("-").reset_index()


def engines(oracle: pd.DataFrame) -> pd.DataFrame:
    """One row per engine configuration that produced rows: its name (the backend column) and what it said it is
    (``describe()`` as stored, less the model file, which the fixture column already names), so every outside engine
    is labelled by its own words."""
    import json

    cols = ["engine", "configuration"]
    if oracle.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    for (engine, info), _ in oracle.groupby(["backend", "engine_info"], sort=True):
        try:
            parsed = json.loads(info) if info else {}
        except ValueError:
            parsed = {"describe": info}
        for key in ("name", "model"):
            parsed.pop(key, None)
        rows.append({"engine": engine, "configuration": ", ".join(f"{k} {v}" for k, v in parsed.items()) or "-"})
    return pd.DataFrame(rows, columns=cols).drop_duplicates().reset_index(drop=True)


def verdict_matrix(verdicts: pd.DataFrame) -> pd.DataFrame:
    """engine x fixture x test (rows) by N (columns): the verdict class of each case (gemma_oracle.oracles.verdicts),
    with "not batched k" appended where the engine's own probe said k batched steps were not one batch."""
    if verdicts.empty:
        return pd.DataFrame()
    cell = verdicts.apply(lambda r: r["verdict"] + (f", not batched {r['not_batched']}" if r["not_batched"] else ""),
                          axis=1)
    wide = verdicts.assign(cell=cell).pivot_table(index=["engine", "fixture", "test", "policy"], columns="n",
                                                  values="cell", aggfunc="first")
    wide.columns = [f"N={n}" for n in wide.columns]
    return wide.fillna("-").reset_index()


def failures(oracle: pd.DataFrame, limit: int = 20) -> pd.DataFrame:
    cols = ["test_id", "test", "fixture", "backend", "route", "n", "seq", "step", "message"]
    if oracle.empty:
        return pd.DataFrame(columns=cols)
    return oracle.loc[~oracle["passed"].astype(bool), cols].head(limit).reset_index(drop=True)


def perf_flags(row) -> str:
    """What a reader must know before using a bench row's figures ("" when nothing): noise, a roofline breach."""
    flags = []
    if row["spread_pct"] > NOISY_SPREAD_PCT:
        flags.append(f"noisy: repeats spread {row['spread_pct']:.0f} % > {NOISY_SPREAD_PCT:g} %")
    if row["roofline_pct"] > ROOFLINE_MAX_PCT:
        flags.append(f"measurement error: {row['roofline_pct']:.0f} % of a ceiling, the bandwidth probe under-read")
    return "; ".join(flags)


def perf_summary(bench: pd.DataFrame) -> pd.DataFrame:
    """The bench rows, with ``flags`` (perf_flags) saying which figures are noise or a measurement error."""
    cols = PERF_KEYS + ["tokens_per_s", "per_seq_tokens_per_s", "step_ms", "spread_pct", "weight_bytes",
                        "kv_bytes", "roofline_tokens_per_s", "roofline_pct", "routes", "timing", "flags"]
    if bench.empty:
        return pd.DataFrame(columns=cols)
    out = bench.assign(flags=bench.apply(perf_flags, axis=1))
    return out[cols].sort_values(["model", "route", "n"], kind="stable").reset_index(drop=True)


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
    """Per model x route: op (rows) by N (columns), the op's share of the step in percent; rows timed by a device
    clock (DEVICE_CLOCK_TIMINGS) only: a host-clock split is noise."""
    op_profile = op_profile[op_profile["timing"].isin(DEVICE_CLOCK_TIMINGS)]
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
TREND_COLUMNS = ["run_id", "created", "device", "backend", "figure", "value", "noisy"]


def headline(run) -> pd.DataFrame:
    """The figures a trend follows, long form (run_id, created, device, backend, figure, value, noisy): cases
    failed per suite, worst NMSE per suite x route, and t/s and % roofline (where it is at most ROOFLINE_MAX_PCT)
    at each model x route's largest N; ``noisy``: the figure's repeat spread exceeds NOISY_SPREAD_PCT."""
    meta, rows = run.meta, []
    summary = correctness_summary(run["oracle"])
    for (suite, route), g in summary.groupby(["suite", "route"]):
        rows.append((f"failed cases: {suite} {route}", int((g["verdict"] == "fail").sum()), False))
        rows.append((f"worst NMSE: {suite} {route}", float(g["worst_nmse"].max()), False))
    bench = run["bench"]
    if not bench.empty:
        top = bench.loc[bench.groupby(["model", "route"])["n"].idxmax()]
        for _, r in top.iterrows():
            noisy = bool(r["spread_pct"] > NOISY_SPREAD_PCT)
            rows.append((f"t/s: {r['model']} {r['route']} N={r['n']}", float(r["tokens_per_s"]), noisy))
            if r["roofline_pct"] <= ROOFLINE_MAX_PCT:  # above it: a measurement error, not a figure to follow
                rows.append((f"% roofline: {r['model']} {r['route']} N={r['n']}", float(r["roofline_pct"]), noisy))
    return pd.DataFrame([{"run_id": meta.run_id, "created": meta.created, "device": meta.device,
                          "backend": meta.backend, "figure": f, "value": v, "noisy": z} for f, v, z in rows],
                        columns=TREND_COLUMNS)


def trends(runs: list) -> pd.DataFrame:
    """headline() of every run, oldest first."""
    frames = [headline(r) for r in runs]
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame(columns=TREND_COLUMNS)
    return pd.concat(frames, ignore_index=True)
