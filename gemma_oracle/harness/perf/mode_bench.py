"""Decode throughput of one model in every route mode, on one engine (weights uploaded once).

    python -m gemma_oracle.harness.perf.mode_bench --model shape12b --out DIR      # DIR/mode-bench-<model>.md / .json

For each N, every mode gets its own N fresh sequences (prompts of `prompt_len` tokens, the same for every mode),
so every mode is timed at the same contexts (a first version reused the sequences across modes, so later modes
ran at longer contexts: 2026-11-25, forced-MMQ and auto with identical routes differed by 3 %). The timed runs
go round-robin over the modes (repeat 1 of every mode, then repeat 2, ...), so a drift of the GPU's speed during
an N's runs reaches every mode alike (timed one mode after another, auto and forced-MMQ with identical kernels
still differed by 3.6 % at N = 32 on 2026-11-25). Before each run the mode is switched on the engine and its
step graphs dropped and re-captured (untimed). Steps are graph replays timed with CUDA events (`steps` per
repeat, median of `repeats`, after `warmup`), the logits read back each step as in the engine protocol; contexts
run from `prompt_len` to `prompt_len` + warmup + (steps + 1) x repeats. Aggregate t/s = N / step time; the best
forced route per N, the crossover N where decode-MMQ overtakes WS, and auto / best and batch-invariant / auto
ratios are derived from the table.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

MODES = ("ws", "decode_mmq", "auto", "batch-invariant")
N_LIST = (1, 2, 4, 5, 6, 8, 16, 32)


def bench_modes(model, n_list=N_LIST, modes=MODES, *, prompt_len: int = 128, steps: int = 8, warmup: int = 2,
                repeats: int = 3, log=print, on_rows=None) -> list[dict]:
    """Per N (in order) and mode: the median step time of `repeats` round-robin runs of `steps` decode steps.
    on_rows(rows): called with every row so far after each N, so a caller can keep what a time limit would lose."""
    import cupy as cp
    import numpy as np

    from gemma_oracle.engine.gpu_engine import CupyEngine

    from gemma_oracle.harness.perf.devices import gpu_step_weight_bytes
    from gemma_oracle.harness.perf.roofline import kv_read_bytes

    # every mode's sequences live at once (round-robin timing); contexts stay below prompt_len + 64 here
    engine = CupyEngine(model, kv_dtype="float16", max_sequences=len(modes) * max(n_list) + 1,
                        max_context=prompt_len + 1 + warmup + (steps + 1) * repeats,
                        prefill_chunk=prompt_len, route_mode=modes[0])
    weight_bytes = gpu_step_weight_bytes(engine)
    rng = np.random.default_rng(0)
    rows = []
    for n in n_list:
        prompts = [[2] + [int(t) for t in rng.integers(4, engine.vocab_size, size=prompt_len - 1)] for _ in range(n)]
        tokens = [int(t) for t in rng.integers(4, engine.vocab_size, size=n)]
        seqs = {}
        for mode in modes:
            seqs[mode] = [engine.new_sequence() for _ in range(n)]
            engine.set_route_mode("decode_mmq")  # prefill rows (128+) are beyond WS; the int8 tile reads weights once
            for seq, prompt in zip(seqs[mode], prompts):
                engine.prefill(seq, prompt)

        def use(mode):  # switch the engine to `mode`; the first step after this captures its graph (untimed)
            engine.set_route_mode(mode)  # another mode than the last: its step graphs are dropped
            engine.decode(seqs[mode], tokens)

        for mode in modes:
            use(mode)
            for _ in range(warmup - 1):
                engine.decode(seqs[mode], tokens)
        times: dict[str, list[float]] = {m: [] for m in modes}
        routes_of: dict[str, dict[str, int]] = {}
        for _ in range(repeats):
            for mode in modes:
                use(mode)
                start, stop = cp.cuda.Event(), cp.cuda.Event()
                start.record()
                for _ in range(steps):
                    engine.decode(seqs[mode], tokens)
                stop.record()
                stop.synchronize()
                times[mode].append(cp.cuda.get_elapsed_time(start, stop) / steps)
                routes: dict[str, int] = {}
                for route in engine.routes_served[n].values():
                    routes[route] = routes.get(route, 0) + 1
                routes_of[mode] = routes
        # positions of the timed steps: after the prompt and `warmup` untimed steps, repeat r captures at
        # prompt_len + warmup + r (steps + 1) and times the next `steps` positions
        mean_position = prompt_len + warmup + (steps + 1) * repeats / 2
        kv_bytes = n * kv_read_bytes(engine.config, int(round(mean_position)), 2)  # F16 KV, the whole batch
        for mode in modes:
            step_ms = statistics.median(times[mode])
            rows.append(dict(n=n, mode=mode, step_ms=step_ms, spread_ms=max(times[mode]) - min(times[mode]),
                             tokens_per_s=1e3 * n / step_ms,
                             mean_context=float(np.mean([s.length for s in seqs[mode]])), weight_bytes=weight_bytes,
                             mean_position=mean_position, kv_bytes=kv_bytes,
                             routes=" ".join(f"{k}:{v}" for k, v in sorted(routes_of[mode].items()))))
            log(f"  N={n:3d} {mode:16s} {step_ms:8.3f} ms {1e3 * n / step_ms:9.1f} t/s  {rows[-1]['routes']}")
        if on_rows is not None:
            on_rows(list(rows))
        seqs.clear()  # the sequences' slots go back to the engine (GpuSequence finalizers)
    engine.set_route_mode(modes[0])  # frees the captured graphs
    return rows


def summarize(rows: list[dict], title: str, read_gb_s: float) -> str:
    import pandas as pd

    from gemma_oracle.harness.perf.roofline import roofline_tokens_per_s

    df = pd.DataFrame(rows)
    t = df.pivot(index="n", columns="mode", values="tokens_per_s")
    wb = int(df.weight_bytes.iloc[0])
    has_kv = "kv_bytes" in df  # runs recorded before the KV term: the weights-only ceiling
    kv = df.groupby("n").kv_bytes.first() if has_kv else None
    pos = df.groupby("n").mean_position.first() if has_kv else None
    lines = [f"# {title}", "", f"streaming read {read_gb_s:.0f} GB/s; weights {wb / 1e9:.3f} GB per step; "
             f"memory-only N = 1 ceiling {read_gb_s * 1e9 / wb:.0f} t/s (weights only)"
             + (f"; ceiling per N = N x read / (weights + the batch's F16 KV at the mean position, "
                f"{pos.min():.0f}..{pos.max():.0f})" if has_kv else ""), "",
             "| N | " + " | ".join(f"{m} t/s" for m in t.columns) + " | best forced | auto / best | batch-inv / auto |"
             + (" ceiling t/s | auto / ceiling |" if has_kv else ""),
             "|---|" + "---|" * (len(t.columns) + 3 + 2 * has_kv)]
    crossover = None
    # a run of some modes only (--modes) leaves the ratios that need the others as "–"
    auto = t["auto"] if "auto" in t.columns else None
    for n, r in t.iterrows():
        forced = {m: r[m] for m in ("ws", "decode_mmq") if m in t.columns}
        best_mode = max(forced, key=forced.get) if forced else "–"
        if crossover is None and r.get("decode_mmq", 0) > r.get("ws", float("inf")):
            crossover = n
        auto_best = f"{auto[n] / max(forced.values()):.3f}" if forced and auto is not None else "–"
        inv_auto = f"{r['batch-invariant'] / auto[n]:.3f}" if "batch-invariant" in t.columns and auto is not None \
            else "–"
        row = (f"| {n} | " + " | ".join(f"{r[m]:.1f}" for m in t.columns)
               + f" | {best_mode} | {auto_best} | {inv_auto} |")
        if has_kv:
            ceiling = roofline_tokens_per_s(n, read_gb_s, wb, kv[n])
            row += f" {ceiling:.0f} | " + (f"{auto[n] / ceiling:.1%} |" if auto is not None else "– |")
        lines.append(row)
    lines += ["", f"decode-MMQ overtakes WS (forced, whole step) first at N = {crossover}" if {"ws", "decode_mmq"}
              <= set(t.columns) else "decode-MMQ vs WS: not timed (needs both forced modes)", ""]
    routes = df.pivot(index="n", columns="mode", values="routes")
    lines += ["routes served per N and mode (matmuls per route):", "", "| N | " + " | ".join(routes.columns) + " |",
              "|---|" + "---|" * len(routes.columns)]
    lines += [f"| {n} | " + " | ".join(r) + " |" for n, r in routes.iterrows()]
    return "\n".join(lines) + "\n"


def write_bench_json(path: Path, meta: dict, rows: list[dict], complete: bool) -> None:
    """The bench's JSON (meta, the rows so far, complete), replaced whole: a run cut by a time limit keeps the N values
    it finished, marked complete: false (harness.perf.side_by_side names the rest as not run), and a reader never
    sees a half-written file."""
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps({**meta, "complete": complete, "rows": rows}))
    tmp.replace(path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m gemma_oracle.harness.perf.mode_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", nargs="+", default=["shape12b", "shape12b-q4_0"])
    p.add_argument("--n", nargs="+", type=int, default=list(N_LIST))
    p.add_argument("--modes", nargs="+", default=list(MODES))
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=128,
                   help="prompt tokens per sequence (178: timed at mean context ~192, the llama.cpp anchor's)")
    p.add_argument("--out")
    args = p.parse_args(argv)
    from gemma_oracle.engine.routing import MODES as ROUTE_MODES

    unknown = sorted(set(args.modes) - set(MODES) - set(ROUTE_MODES))
    if unknown:
        p.error(f"--modes: unknown {unknown}; expected some of {list(dict.fromkeys(MODES + ROUTE_MODES))}")
    import cupy as cp

    from gemma_oracle.engine.model_file import load_model

    from gemma_oracle.harness.perf.devices import gpu_read_bandwidth_gb_s as read_bandwidth_gb_s
    from gemma_oracle.harness.fixtures.cache import fixture_names, fixture_path
    from gemma_oracle.kernels.launch import launch_mode
    from gemma_oracle.kernels.mmq import weight_prefetch_enabled
    from gemma_oracle.kernels.packed_mma import (RECORD_WORDS, ahead_groups, carry_from_env, prefetch_groups,
                                                 record_words, sums_from_env, walk_from_env)

    device = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    # 'pdl' or 'plain' (GEMMA_ORACLE_PDL), whether decode-MMQ prefetches its weights (GEMMA_ORACLE_MMQ_PREFETCH) and
    # packed MMA its first groups (GEMMA_ORACLE_PACKED_PREFETCH) and ahead of its ring (GEMMA_ORACLE_PACKED_AHEAD),
    # how packed MMA adds its K slices (GEMMA_ORACLE_PACKED_SUMS) and how many blocks batch-invariant mode walks its K
    # chunks with from 16 tokens (GEMMA_ORACLE_PACKED_WALK), with the ring carried across them or not
    # (GEMMA_ORACLE_PACKED_CARRY), and whether Q4_0 records are padded (GEMMA_ORACLE_PACKED_Q4_0_PAD): an A/B's sides
    # say what they ran
    launch = (launch_mode() + ("" if weight_prefetch_enabled() else " without weight prefetch")
              + (f", packed prefetch {prefetch_groups()} groups" if prefetch_groups() else "")
              + (f", packed prefetch ahead {ahead_groups()} groups" if ahead_groups() else "")
              + f", packed sums {sums_from_env()}, invariant walk {walk_from_env()}"
              + (" (ring carried across chunks)" if carry_from_env() else "")
              + (", Q4_0 records padded to 640 bytes" if record_words("Q4_0") != RECORD_WORDS["Q4_0"] else ""))
    bw = read_bandwidth_gb_s()
    out = Path(args.out) if args.out else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)

    meta = {"device": device, "launch": launch, "read_gb_s": bw, "n_asked": list(args.n), "modes_asked": list(args.modes)}

    def save(name: str, rows: list[dict], complete: bool) -> None:
        if out is not None:
            write_bench_json(out / f"mode-bench-{name}.json", meta, rows, complete)

    for name in args.model:
        path = fixture_path(name) if name in fixture_names() else Path(name)
        print(f"{name}: {device}", file=sys.stderr)
        rows = bench_modes(load_model(path), tuple(args.n), tuple(args.modes), steps=args.steps,
                           prompt_len=args.prompt_len,
                           log=lambda m: print(m, file=sys.stderr, flush=True),
                           on_rows=lambda rows, name=name: save(name, rows, complete=False))
        text = summarize(rows, (f"{name} (synthetic 12B stand-in) on {device}" if name.startswith("shape12b")
                                else f"{name} on {device}") + f", {launch} launches", bw)
        print(text, flush=True)
        if out is not None:
            (out / f"mode-bench-{name}.md").write_text(text)
            save(name, rows, complete=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
