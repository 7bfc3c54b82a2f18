"""Where a decode step's GPU time goes, as a CUDA graph replay sees it (launch gaps and PDL overlap included, which an
ncu kernel list leaves out):

- the whole step (the engine's forward of N rows, captured as its step graphs are);
- the same step with every matmul left out (each returns zeroed outputs made before the capture): the norms,
  RoPE, attention, activations, packed_x and their gaps; and with each of those kinds left out in turn (OP_KINDS);
- the step's matmul launches alone, in step order (each weight read once a replay, as in the step);
- per matmul shape (route, type, rows, columns, tile): its launches of the step alone, ms and GB/s of weights.

    python -m gemma_oracle.harness.perf.step_split --model shape12b-q4_0 --n 1 32 \
        --route-mode auto batch-invariant [--sweep] --out DIR
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

# the launchers a step's matmuls go through (gpu_engine._matvecs imports them at call time, so patching the module
# attribute reaches every call)
MATMUL_LAUNCHERS = (("gemma_oracle.kernels.packed_mma", "packed_mma_group"),
                    ("gemma_oracle.kernels.mmq", "mmq_matvec_group"),
                    ("gemma_oracle.kernels.dq_mma", "dq_mma_matvec"),
                    ("gemma_oracle.kernels.matvec", "matvec"))


@dataclass
class MatmulCall:
    launcher: object
    args: tuple
    kwargs: dict
    outputs: object  # the arrays it returned (a list or one array): their shapes stand in when matmuls are left out
    key: str  # route type rows x cols (tile)
    weight_bytes: int


@dataclass
class StepSplit:
    model: str
    n: int
    route_mode: str
    step_ms: float
    rest_ms: float
    matmul_ms: float
    matmul_launches: int
    weight_bytes: int
    shapes: list[dict] = field(default_factory=list)
    sweeps: list[dict] = field(default_factory=list)  # packed shapes: each (tile, chunks, slices) timed in step order
    without: dict = field(default_factory=dict)  # OP_KINDS kind -> ms of the step with its launches left out


def packed_candidates(n: int, call: MatmulCall) -> list[tuple[str, int, int]]:
    """(tile, chunks, slices) to time a packed call with: every tile whose token tiles are no wider than N needs
    (all NT = 1 tiles at N <= 8), with K in 1, 2, 4, 8 or 16 chunks a block each, and the call's own chunks walked by
    each divisor (the splits a batch-invariant launch may take, which keeps its chunks)."""
    from gemma_oracle.kernels.packed_mma import TILES

    own = call.kwargs.get("chunks")
    nts = {t.nt for t in TILES.values() if 8 * t.nt <= max(8, -(-n // 8) * 8)}
    out = []
    for name, tile in TILES.items():
        if tile.nt not in nts:
            continue
        splits = [(c, c) for c in (1, 2, 4, 8, 16)]
        if own:
            splits += [(own, d) for d in range(1, own) if own % d == 0]
        out += [(name, c, s) for c, s in splits]
    return out


def _packed_bytes(w) -> int:
    """The bytes a packed launch reads of matrix w: its records without any padding (RECORD_WORDS)."""
    from gemma_oracle.kernels.packed_mma import GROUP, RECORD_WORDS

    return -(-w.rows // 16) * (w.n_cols // GROUP) * RECORD_WORDS[w.type_name] * 4


def _describe(name: str, args: tuple, kwargs: dict) -> tuple[str, int]:
    """(the call's shape key, the weight bytes it reads)."""
    if name == "packed_mma_group":
        from gemma_oracle.kernels.packed_mma import choose_tile

        members, x = list(args[0]), args[1]
        w0 = members[0]
        tokens = int(x[1].shape[0]) if isinstance(x, tuple) else int(x.shape[0])
        tile = kwargs.get("tile") or choose_tile(tokens, w0.rows, w0.n_cols).name
        rows = "+".join(str(w.rows) for w in members)
        return (f"packed {w0.type_name} {rows} x {w0.n_cols} {tile} chunks {kwargs.get('chunks')} slices "
                f"{kwargs.get('slices')}", sum(_packed_bytes(w) for w in members))
    if name == "mmq_matvec_group":
        members = list(args[0])
        rows = "+".join(str(int(m[0].shape[0])) for m in members)
        return f"decode_mmq {members[0][1]} {rows} x {members[0][2]}", sum(int(m[0].nbytes) for m in members)
    w_raw, type_name, n_cols = args[0], args[1], args[2]
    route = "dq_mma" if name == "dq_mma_matvec" else kwargs.get("route", "auto")
    return f"{route} {type_name} {int(w_raw.shape[0])} x {n_cols}", int(w_raw.nbytes)


# The step's other launches by kind, each left out in turn (without_ops) to time its share of the step: the engine's
# norm steps (gpu_engine FusedNorms / SeparateNorms, reached through engine.norms) and packed_x (imported at call time
# by _matvecs). A kind left out returns zeroed outputs of the recorded shapes; the kernels after it run on zeros.
OP_KINDS = {
    "packed_x": (("gemma_oracle.kernels.packed_mma", "packed_x"),),
    "norms": (("norms", "norm"), ("norms", "add_norm")),
    "rope + kv": (("norms", "qkv_rope_kv"), ("norms", "norm_rope")),
    "attention": (("norms", "attention"),),
    "gelu * up": (("norms", "gelu_mul"),),
}


class _Delegate:
    """Stands in for engine.norms while a step is timed: attributes set on it shadow the original's."""

    def __init__(self, original):
        self._original = original

    def __getattr__(self, name):
        return getattr(self._original, name)


def _owner(where: str, engine):
    return engine.norms if where == "norms" else importlib.import_module(where)


@contextlib.contextmanager
def _patched(make_wrapper, targets=MATMUL_LAUNCHERS, engine=None):
    """Each (owner, name) of targets replaced by make_wrapper(name, original) inside the context. An owner is a
    module name, or "norms" for engine.norms (then a _Delegate, installed by split_step)."""
    saved = []
    try:
        for where, name in targets:
            owner = _owner(where, engine)
            original = getattr(owner, name)
            saved.append((owner, name, original))
            setattr(owner, name, make_wrapper(name, original))
        yield
    finally:
        for owner, name, original in reversed(saved):
            if isinstance(owner, _Delegate):
                delattr(owner, name)
            else:
                setattr(owner, name, original)


def record_matmuls(forward) -> list[MatmulCall]:
    """The matmul calls of one forward(), in order, each with its arguments and outputs."""
    calls: list[MatmulCall] = []

    def wrap(name, original):
        def recorder(*args, **kwargs):
            out = original(*args, **kwargs)
            key, nbytes = _describe(name, args, kwargs)
            calls.append(MatmulCall(original, args, kwargs, out, key, nbytes))
            return out
        return recorder

    with _patched(wrap):
        forward()
    return calls


def record_outputs(forward, targets, engine) -> list:
    """The outputs of every call to `targets` in one forward(), in order."""
    outputs: list = []

    def wrap(name, original):
        def recorder(*args, **kwargs):
            outputs.append(original(*args, **kwargs))
            return outputs[-1]
        return recorder

    with _patched(wrap, targets, engine):
        forward()
    return outputs


def _zeros_like(out):
    """Zeroed arrays in the structure of `out` (device or host arrays, tuples and lists of them, None)."""
    import numpy as np

    if out is None:
        return None
    if isinstance(out, (tuple, list)):
        return type(out)(_zeros_like(o) for o in out)
    return np.zeros_like(out) if isinstance(out, np.ndarray) else importlib.import_module("cupy").zeros_like(out)


def _stubbed(outputs: list, targets, engine):
    """A context in which each call to `targets` returns, in the recorded order, zeroed stand-ins of the recorded
    outputs (made once, here) and launches nothing."""
    stand_ins = [_zeros_like(o) for o in outputs]
    position = [0]

    def wrap(name, original):
        def stand_in(*args, **kwargs):
            out = stand_ins[position[0] % len(stand_ins)]
            position[0] += 1
            return out
        return stand_in

    return _patched(wrap, targets, engine)


def without_matmuls(calls: list[MatmulCall]):
    """A context in which each matmul launcher returns, in the recorded order, zeroed arrays of the recorded
    outputs' shapes (made once, here) and launches nothing."""
    return _stubbed([c.outputs for c in calls], MATMUL_LAUNCHERS, None)


def without_ops(kind: str, forward, engine):
    """A context in which the step's launches of OP_KINDS[kind] are left out (the recorded outputs' zeroed
    stand-ins instead); engine.norms must be a _Delegate (split_step installs one)."""
    targets = OP_KINDS[kind]
    return _stubbed(record_outputs(forward, targets, engine), targets, engine)


def step_forward(engine, seqs):
    """The engine's forward of one decode step of len(seqs) rows (tokens 5 at the sequences' positions and slots),
    with device inputs made once, as a step graph captures it: a callable for graph_time_ms."""
    import cupy as cp
    import numpy as np

    n = len(seqs)
    static = (cp.full(n, 5, dtype=cp.int32), cp.asarray(np.asarray([s.length for s in seqs], dtype=np.int32)),
              cp.asarray(np.asarray([s.slot for s in seqs], dtype=np.int32)))

    def forward(_=0):
        return engine.forward(None, None, None, None, static=static)
    return forward


def prefilled_steps(models, ns, prompt_len: int):
    """(model, engine, n, seqs) for each model and N: one engine a model (F16 KV, context prompt_len + 8), and N
    sequences prefilled with random prompts of prompt_len tokens in decode-MMQ (the mode bench's choice); the caller
    sets the step's mode. A forward writes the step's KV at each sequence's length, so one set serves every mode."""
    import numpy as np

    from gemma_oracle.engine.gpu_engine import CupyEngine
    from gemma_oracle.harness.fixtures.cache import fixture_path

    for model in models:
        engine = CupyEngine(fixture_path(model), kv_dtype="float16", max_sequences=max(ns) + 1,
                            max_context=prompt_len + 8, prefill_chunk=prompt_len, route_mode="decode_mmq")
        rng = np.random.default_rng(0)
        for n in ns:
            seqs = [engine.new_sequence() for _ in range(n)]
            for s in seqs:
                engine.prefill(s, [2] + [int(t) for t in rng.integers(4, engine.vocab_size, size=prompt_len - 1)])
            yield model, engine, n, seqs
            engine.set_route_mode("decode_mmq")
            seqs.clear()  # the caller's list too: their slots are free before the next N's sequences take theirs
        del engine


def split_step(engine, seqs, *, reps: int = 4, repeats: int = 7, sweep: bool = False) -> StepSplit:
    """engine: a CupyEngine whose `seqs` hold their prompts; times its forward of one decode step of len(seqs)
    rows (tokens 5, the sequences' positions and slots) three ways (module docstring). sweep: also each packed
    shape's launches of the step with every tile and K split of packed_candidates (StepSplit.sweeps)."""
    import cupy as cp

    from gemma_oracle.harness.perf.gpu_timing import graph_time_ms

    n = len(seqs)
    forward = step_forward(engine, seqs)
    engine._decoding = True  # the routes and K splits of a decode step (a pinned mode pins these)
    norms, engine.norms = engine.norms, _Delegate(engine.norms)
    try:
        calls = record_matmuls(forward)
        cp.cuda.Device().synchronize()
        step_ms, _ = graph_time_ms(forward, reps=reps, repeats=repeats)
        with without_matmuls(calls):
            rest_ms, _ = graph_time_ms(forward, reps=reps, repeats=repeats)
        ops = {}  # kind -> the step without it, ms
        for kind in OP_KINDS:
            with without_ops(kind, forward, engine):
                ops[kind], _ = graph_time_ms(forward, reps=reps, repeats=repeats)

        def run(selected):
            def body(_=0):
                for c in selected:
                    c.launcher(*c.args, **c.kwargs)
            return body

        matmul_ms, _ = graph_time_ms(run(calls), reps=reps, repeats=repeats)
        shapes, sweeps = [], []
        for key in dict.fromkeys(c.key for c in calls):
            selected = [c for c in calls if c.key == key]
            ms, spread = graph_time_ms(run(selected), reps=reps, repeats=repeats)
            nbytes = sum(c.weight_bytes for c in selected)
            shapes.append(dict(shape=key, launches=len(selected), ms=ms, spread_ms=spread, weight_bytes=nbytes,
                               gb_s=nbytes / ms / 1e6, us_per_launch=1e3 * ms / len(selected)))
        if sweep:
            for key in dict.fromkeys(c.key for c in calls if c.key.startswith("packed ")):
                selected = [c for c in calls if c.key == key]
                for tile, chunks, slices in packed_candidates(n, selected[0]):
                    try:
                        variant = [MatmulCall(c.launcher, c.args, {**c.kwargs, "tile": tile, "chunks": chunks,
                                                                     "slices": slices}, None, key, c.weight_bytes)
                                   for c in selected]
                        ms, spread = graph_time_ms(run(variant), reps=reps, repeats=repeats)
                    except ValueError:  # a split this shape or tile cannot take (counters, K blocks)
                        continue
                    nbytes = sum(c.weight_bytes for c in selected)
                    sweeps.append(dict(shape=key, tile=tile, chunks=chunks, slices=slices, ms=ms, spread_ms=spread,
                                       gb_s=nbytes / ms / 1e6))
    finally:
        engine._decoding = False
        engine.norms = norms
    return StepSplit(engine.model_file.path.name, n, engine.route_mode, step_ms, rest_ms, matmul_ms, len(calls),
                     sum(c.weight_bytes for c in calls), shapes, sweeps, ops)


def summarize(splits: list[StepSplit]) -> str:
    lines = []
    for s in splits:
        lines += [f"## {s.model}, N = {s.n}, mode {s.route_mode}", "",
                  f"- whole step: {s.step_ms:.3f} ms ({1e3 * s.n / s.step_ms:.1f} t/s)",
                  f"- without the matmuls: {s.rest_ms:.3f} ms ({100 * s.rest_ms / s.step_ms:.1f} % of the step)",
                  f"- the {s.matmul_launches} matmul launches alone: {s.matmul_ms:.3f} ms, "
                  f"{s.weight_bytes / 1e9:.3f} GB at {s.weight_bytes / s.matmul_ms / 1e6:.0f} GB/s",
                  f"- both parts' sum less the step: {s.rest_ms + s.matmul_ms - s.step_ms:+.3f} ms",
                  *[f"- without {kind}: {ms:.3f} ms (its share: {s.step_ms - ms:.3f} ms, "
                    f"{100 * (s.step_ms - ms) / s.step_ms:.1f} %)" for kind, ms in s.without.items()], "",
                  "| matmul shape | launches | ms | us a launch | GB/s |", "|---|---|---|---|---|"]
        for r in sorted(s.shapes, key=lambda r: -r["ms"]):
            lines.append(f"| {r['shape']} | {r['launches']} | {r['ms']:.3f} | {r['us_per_launch']:.1f} | "
                         f"{r['gb_s']:.0f} |")
        lines.append("")
        for key in dict.fromkeys(r["shape"] for r in s.sweeps):
            rows = sorted((r for r in s.sweeps if r["shape"] == key), key=lambda r: r["ms"])
            own = next(r["ms"] for r in s.shapes if r["shape"] == key)
            lines += [f"sweep of {key} (its own: {own:.3f} ms), the 8 fastest:", "",
                      "| tile | chunks | slices | ms | own / this | GB/s |", "|---|---|---|---|---|---|"]
            lines += [f"| {r['tile']} | {r['chunks']} | {r['slices']} | {r['ms']:.3f} | {own / r['ms']:.3f} | "
                      f"{r['gb_s']:.0f} |" for r in rows[:8]]
            lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m gemma_oracle.harness.perf.step_split",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--model", nargs="+", default=["shape12b-q4_0"], help="fixture names")
    p.add_argument("--n", nargs="+", type=int, default=[1])
    p.add_argument("--route-mode", nargs="+", default=["auto"], help="route modes (each N is timed in each)")
    p.add_argument("--prompt-len", type=int, default=178)
    p.add_argument("--sweep", action="store_true", help="also time each packed shape with every tile and K split")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    splits = []
    for _, engine, n, seqs in prefilled_steps(args.model, args.n, args.prompt_len):
        for mode in args.route_mode:
            engine.set_route_mode(mode)
            splits.append(split_step(engine, seqs, sweep=args.sweep))
            print(summarize(splits[-1:]), flush=True)
            (args.out / "step-split.md").write_text(summarize(splits))  # what a time limit would lose
    (args.out / "step-split.md").write_text(summarize(splits))
    (args.out / "step-split.json").write_text(json.dumps([vars(s) for s in splits], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
