"""Bench (not a timed test): the Gemma 3 270M golden sweep over HTTP against a llama.cpp server this starts.

    python -m gemma_oracle.harness.perf.http_sweep [--topk 64] [--ns 1,2,4,5,8] [--steps 4] [--threads 1]

For each N: N single-user runs (memoised across N, as the golden oracle does) and one batched run of T forced
steps, every row compared bitwise (top-k ids and log-probabilities). Prints the seconds per N and in total, how
many batched steps llama.cpp's counter verified as one ``llama_decode``, and, for contrast, the time of ONE
full-vocabulary row (a 262,144-entry JSON answer).

The golden oracle itself (``golden_single_vs_batched``) compares dense rows; top-k rows are compared here with the
same protocol (prefill = step 0, then T teacher-forced decode steps) so the sweep measures the served path.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

__all__ = ["main", "sweep"]


def _prompts(n: int, vocab: int) -> list[list[int]]:
    """The real suite's prompts (llama.cpp's tokenization), then seeded random ones beyond its four."""
    from gemma_oracle.harness.suites.real import REAL_SUITES

    prompts = [list(p) for p in REAL_SUITES[0].prompts]
    rng = np.random.default_rng(270)
    while len(prompts) < n:
        prompts.append([2] + rng.integers(4, vocab, size=int(rng.integers(3, 10))).tolist())
    return prompts[:n]


def _run(engine, prompts, forced, batched: bool):
    """Rows [seq][step] as (ids, logprobs); batched=False runs each sequence alone."""
    steps = len(forced[0])
    if not batched:
        out = []
        for p, f in zip(prompts, forced):
            seq = engine.new_sequence()
            rows = [engine.prefill(seq, p)]
            rows += [engine.decode([seq], [t])[0] for t in f]
            out.append(rows)
        return out, 0, 0
    seqs = [engine.new_sequence() for _ in prompts]
    rows = [[engine.prefill(s, p)] for s, p in zip(seqs, prompts)]
    one_batch = checked = 0
    for t in range(steps):
        out = engine.decode(seqs, [f[t] for f in forced])
        rec = engine.last_batch()
        if rec is not None:
            checked += 1
            one_batch += rec.batched
        for i in range(len(seqs)):
            rows[i].append(out[i])
    return rows, one_batch, checked


def sweep(url: str, model_path, *, ns=(1, 2, 4, 5, 8), steps: int = 4, topk: int = 64, out=sys.stdout) -> dict:
    from gemma_oracle.engine.adapters.openai_engine import make

    engine = make(model_path, url=url, topk=topk)
    rng = np.random.default_rng(4)
    all_prompts = _prompts(max(ns), engine.vocab_size)
    all_forced = [rng.integers(4, engine.vocab_size, size=steps).tolist() for _ in all_prompts]
    refs: dict[int, list] = {}
    totals = {"seconds": 0.0, "one_batch": 0, "checked": 0, "rows": 0, "bitwise_equal": 0}
    for n in ns:
        t0 = time.perf_counter()
        for i in range(n):
            if i not in refs:
                refs[i] = _run(engine, [all_prompts[i]], [all_forced[i]], batched=False)[0][0]
        rows, one_batch, checked = _run(engine, all_prompts[:n], all_forced[:n], batched=True)
        equal = sum(np.array_equal(refs[i][s].ids, rows[i][s].ids)
                    and np.array_equal(refs[i][s].logprobs, rows[i][s].logprobs)
                    for i in range(n) for s in range(steps + 1))
        dt = time.perf_counter() - t0
        print(f"N={n}: {dt:6.2f} s, {checked and one_batch}/{checked} batched steps verified as one llama_decode, "
              f"{equal}/{n * (steps + 1)} rows bitwise equal to single-user", file=out, flush=True)
        totals["seconds"] += dt
        totals["one_batch"] += one_batch
        totals["checked"] += checked
        totals["rows"] += n * (steps + 1)
        totals["bitwise_equal"] += equal
    share = totals["one_batch"] / totals["checked"] if totals["checked"] else float("nan")
    print(f"total: {totals['seconds']:.2f} s; {totals['one_batch']}/{totals['checked']} batched steps one llama_decode "
          f"({share:.0%}); {totals['bitwise_equal']}/{totals['rows']} rows bitwise equal", file=out, flush=True)
    return totals


def full_row_seconds(url: str, model_path, prompt) -> float:
    """Seconds for ONE full-vocabulary row over HTTP (prefill of a short prompt, every log-probability as JSON)."""
    from gemma_oracle.engine.adapters.openai_engine import make

    engine = make(model_path, url=url, topk=0, timeout=600)
    seq = engine.new_sequence()
    t0 = time.perf_counter()
    row = engine.prefill(seq, prompt)
    dt = time.perf_counter() - t0
    assert row.shape == (engine.vocab_size,) and np.isfinite(row).all()
    return dt


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--topk", type=int, default=64)
    ap.add_argument("--ns", default="1,2,4,5,8")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-full-row", action="store_true", help="skip the full-vocabulary row")
    args = ap.parse_args(argv)
    from gemma_oracle.engine.adapters.llamacpp_server import llama_server
    from gemma_oracle.harness.suites.real import REAL_SUITES

    suite = REAL_SUITES[0]
    missing = suite.missing()
    if missing:
        print(f"skipped: {missing}", file=sys.stderr)
        return 2
    path = suite.locate()
    ns = tuple(int(x) for x in args.ns.split(","))
    t0 = time.perf_counter()
    with llama_server(path, slots=max(ns), threads=args.threads) as url:
        print(f"llama.cpp server on {path} at {url}, {max(ns)} slots, {args.threads} thread(s), up in "
              f"{time.perf_counter() - t0:.2f} s; top-{args.topk}, T={args.steps}", flush=True)
        sweep(url, path, ns=ns, steps=args.steps, topk=args.topk)
        if not args.no_full_row:
            print(f"one full-vocabulary row over HTTP: {full_row_seconds(url, path, list(suite.prompts[0])):.2f} s",
                  flush=True)
    print(f"wall, server start to stop: {time.perf_counter() - t0:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
