"""A whole decode step under several run-time settings, timed in one process on one loaded model: an A/B without a
model load a side (harness/perf/ab_compare.py loads each side's models in a process of its own, about half a minute a
model), for switches a step reads at capture or at each launch (GEMMA_ORACLE_L2_AHEAD, GEMMA_ORACLE_ATTN_FUSED;
CupyEngine.read_step_switches). Not for switches that change compiled kernels or packed weights (those stay as the
process started: use the ab step of scripts/gpu-run).

The step is the engine's forward of N rows as a CUDA graph replays it (step_split.step_forward, gpu_timing), each
variant timed in turn for `rounds` rounds, so slow drift (clocks, heat) falls on every variant alike; a variant's
figure is the median of its rounds, and the table gives it against the first variant.

    python -m gemma_oracle.harness.perf.step_variants --model shape12b-q4_0 --n 1 32 --route-mode auto \
        --variant base: ahead24:GEMMA_ORACLE_L2_AHEAD=24 fused:GEMMA_ORACLE_ATTN_FUSED=1 --out DIR
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Variant:
    name: str
    env: tuple[tuple[str, str], ...]  # (variable, value); the variables of every variant are unset for the others


def parse_variant(spec: str) -> Variant:
    """'name:VAR=value,VAR2=value' (nothing after the colon: the environment as it is) -> Variant."""
    name, sep, rest = spec.partition(":")
    if not sep or not name.strip():
        raise ValueError(f"variant {spec!r}: expected name:VAR=value[,VAR=value] (name: alone for none)")
    env = []
    for item in filter(None, (i.strip() for i in rest.split(","))):
        var, eq, value = item.partition("=")
        if not eq or not var.strip().isidentifier():
            raise ValueError(f"variant {spec!r}: {item!r} is not VAR=value")
        env.append((var.strip(), value.strip()))
    return Variant(name.strip(), tuple(env))


@contextmanager
def applied(variant: Variant, every: list[Variant]):
    """The environment of `variant`: its variables set, the other variants' variables unset; restored after."""
    names = {var for v in every for var, _ in v.env}
    saved = {var: os.environ.get(var) for var in names}
    try:
        for var in names:
            os.environ.pop(var, None)
        os.environ.update(dict(variant.env))
        yield
    finally:
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value


def time_variants(engine, seqs, variants: list[Variant], *, rounds: int = 3, reps: int = 4,
                  repeats: int = 5) -> dict[str, list[float]]:
    """name -> the step's ms in each round (see module)."""
    from gemma_oracle.harness.perf.gpu_timing import graph_time_ms
    from gemma_oracle.harness.perf.step_split import step_forward

    forward = step_forward(engine, seqs)
    times: dict[str, list[float]] = {v.name: [] for v in variants}
    engine._decoding = True  # a decode step's routes and switches
    try:
        for _ in range(rounds):
            for v in variants:
                with applied(v, variants):
                    engine.read_step_switches()
                    ms, _ = graph_time_ms(forward, reps=reps, repeats=repeats)
                times[v.name].append(ms)
    finally:
        engine._decoding = False
        engine.read_step_switches()
    return times


def summarize(rows: list[dict]) -> str:
    lines = ["| model | N | mode | variant | ms a step (median) | t/s | / first | rounds (ms) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['n']} | {r['mode']} | {r['variant']} | {r['ms']:.4f} | "
                     f"{1e3 * r['n'] / r['ms']:.1f} | {r['ratio']:.3f} | "
                     f"{' '.join(f'{t:.4f}' for t in r['rounds'])} |")
    return "\n".join(lines) + "\n\n(/ first: the first variant's ms over this one's: above 1 is faster.)\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m gemma_oracle.harness.perf.step_variants",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--model", nargs="+", default=["shape12b-q4_0"], help="fixture names")
    p.add_argument("--n", nargs="+", type=int, default=[1])
    p.add_argument("--route-mode", nargs="+", default=["auto"])
    p.add_argument("--variant", nargs="+", required=True, help="name:VAR=value[,VAR=value] (the first is the base)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--prompt-len", type=int, default=178)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    variants = [parse_variant(s) for s in args.variant]
    if len({v.name for v in variants}) != len(variants):
        p.error("variant names must differ")
    from gemma_oracle.harness.perf.step_split import prefilled_steps

    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for model, engine, n, seqs in prefilled_steps(args.model, args.n, args.prompt_len):
        for mode in args.route_mode:
            engine.set_route_mode(mode)
            times = time_variants(engine, seqs, variants, rounds=args.rounds)
            base = statistics.median(times[variants[0].name])
            for v in variants:
                ms = statistics.median(times[v.name])
                rows.append(dict(model=model, n=n, mode=mode, variant=v.name, env=dict(v.env), ms=ms,
                                 ratio=base / ms, rounds=times[v.name]))
            print(summarize(rows[-len(variants):]), flush=True)
            (args.out / "step-variants.md").write_text(summarize(rows))  # what a time limit would lose
    (args.out / "step-variants.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
