"""Inputs that reach every code path: prompt lengths, decode steps and batch sizes derived from a model's config
and the engines' own constants, as a few named plans.

A batching bug fires only where its path runs: a global cache that grows at position 64 is never reached by
prompts of 26 tokens; a ring that wraps at window + chunk - 1 is never reached when the window equals the
context; a RoPE-offset or padded-keys bug needs rows at different positions (mixed lengths) in one batch. So the
positions are not a fixed list: `boundaries(cfg)` reads them from the config (sliding window, context length,
which layers slide and own KV) and the engines (engine/kv_cache.py's growth rule, both engines' PREFILL_CHUNK, the
GPU attention's split-KV chunk in kernels/cuda/attention.cuh), and `plans(cfg)` makes prompts whose batched decode
steps cross each one, with rows reaching it at different steps (mixed) or all at once (equal). Batch sizes come
from the route tables the same way (`route_switch_points`, `batch_sizes`).

`make_sequences(vocab_size, lengths)` turns lengths into prompts and forced continuations; engine adapters reuse it.
`field_inputs(cfg, kind, n)` is the public entry for outside users and the field tests (gemma_oracle.oracles.field):
prompts and forced scripts of one kind ("mixed" lengths, "past-window", "equal") for any model's config.
Which plan runs on which preset x variant x N is the suite's choice (gemma_oracle.harness.suites.synthetic).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from gemma_oracle.engine import kv_cache as reference_kv
from gemma_oracle.engine import routing
from gemma_oracle.engine.config import GemmaConfig
from gemma_oracle.engine.engine import PREFILL_CHUNK as REFERENCE_PREFILL_CHUNK
from gemma_oracle.engine.gpu_engine import PREFILL_CHUNK as GPU_PREFILL_CHUNK
from gemma_oracle.kernels.matvec import WS_CAPACITIES
from gemma_oracle.kernels.mmq import TILE_RULES

DECODE_STEPS = 4  # teacher-forced decode steps after the prefill (the issue asks for >= 3)
SEQUENCE_SEED = 1234
BOS = 2
FIRST_ORDINARY_TOKEN = 4  # tokens avoid the special ids 0..3
# The rows one plan describes: a case of N sequences takes the first N (the GPU suite batches up to 32).
PLAN_ROWS = 32
# Kinds of positions (Boundary.kind)
WINDOW, RING, GROWTH, KV_CHUNK, CONTEXT_END = "window", "ring", "growth", "kv-chunk", "context-end"
# Split-KV chunk starts a plan must cross: the first two (a row's keys span 2, then 3 chunks; with a sliding window the
# window's start leaves chunk 0). Every later start runs the same 3+-chunk path, so crossing them is brute force.
KV_CHUNK_STARTS = 2


def attention_chunk() -> int:
    """Positions per split-KV chunk of the GPU attention: ATTN_CHUNK as kernels/cuda/attention.cuh defines it (read
    from the source: the launcher, kernels/attention.py, needs CuPy to import; a GPU test checks they agree)."""
    source = (Path(__file__).resolve().parents[2] / "kernels" / "cuda" / "attention.cuh").read_text()
    return int(re.search(r"^#define ATTN_CHUNK (\d+)", source, re.M).group(1))


def prefill_chunk() -> int:
    """The prefill chunk of both engines (a sliding ring holds window + chunk - 1 slots in each)."""
    if REFERENCE_PREFILL_CHUNK != GPU_PREFILL_CHUNK:
        raise AssertionError(f"engines disagree on the prefill chunk: {REFERENCE_PREFILL_CHUNK} vs {GPU_PREFILL_CHUNK}")
    return REFERENCE_PREFILL_CHUNK


@dataclass(frozen=True)
class Boundary:
    """A position where an engine takes another path: the first position on the far side of it."""

    position: int
    kind: str
    what: str  # in words, with the layers it concerns


def _layers(indices: Sequence[int]) -> str:
    return "layer" + ("s " if len(indices) > 1 else " ") + ",".join(map(str, indices))


def boundaries(cfg: GemmaConfig, context: int | None = None) -> tuple[Boundary, ...]:
    """Every position below the context where a layer's path changes, sorted by position.

    context: the positions an engine can reach (default: the model's context length; a GPU engine built with a smaller
    max_context passes it). A boundary at or past the context cannot be reached and is left out (on keqv-mixed the
    window equals the context: no window or ring boundary)."""
    ctx = min(x for x in (context, cfg.context_length) if x) if (context or cfg.context_length) else 1 << 20
    chunk = prefill_chunk()
    sliding = [i for i in range(cfg.n_layers) if cfg.layer_is_sliding[i]]
    sliding_owners = [i for i in sliding if cfg.owns_kv(i)]
    global_layers = [i for i in range(cfg.n_layers) if not cfg.layer_is_sliding[i]]
    global_owners = [i for i in global_layers if cfg.owns_kv(i)]
    out = []
    if sliding and cfg.sliding_window < ctx:
        w = cfg.sliding_window
        still = f"; {_layers(global_layers)} still do" if global_layers else ""
        out.append(Boundary(w, WINDOW, f"sliding window {w}: position {w} no longer sees position 0 "
                                       f"({_layers(sliding)}{still})"))
    ring = cfg.sliding_window + chunk - 1
    if sliding_owners and ring < ctx:
        out.append(Boundary(ring, RING, f"sliding ring of {ring} slots (window {cfg.sliding_window} + prefill chunk "
                                        f"{chunk} - 1) wraps: position {ring} overwrites slot 0 "
                                        f"({_layers(sliding_owners)})"))
    if global_owners:
        for p in reference_kv.growth_positions(ctx):
            out.append(Boundary(p, GROWTH, f"reference global KV cache grows at position {p} "
                                           f"({p} -> {min(2 * p, ctx)} slots; {_layers(global_owners)})"))
    kv = attention_chunk()
    for k in range(1, KV_CHUNK_STARTS + 1):
        if k * kv < ctx:
            out.append(Boundary(k * kv, KV_CHUNK, f"GPU attention: position {k * kv} starts split-KV chunk {k} "
                                                  f"(a row's keys span {k + 1} chunks of {kv})"))
    out.append(Boundary(ctx - 1, CONTEXT_END, f"the context's last position {ctx - 1} (the GPU pools' and the "
                                              f"reference cache's last slot)"))
    return tuple(sorted(out, key=lambda b: (b.position, b.kind)))


@dataclass(frozen=True)
class InputPlan:
    """Prompt lengths per sequence (a case of N takes the first N), decode steps, and the path they exercise."""

    name: str  # in test ids: `preset-variant-<name>-n<N>`
    purpose: str
    lengths: tuple[int, ...]
    steps: int = DECODE_STEPS
    targets: tuple[Boundary, ...] = ()  # the boundaries its decode steps cross

    def positions(self, n: int) -> list[range]:
        """The positions a batched decode step writes, per sequence of a case of N."""
        return [range(length, length + self.steps) for length in self.lengths[:n]]

    def crossed(self, n: int) -> set[int]:
        """Boundary positions (of `targets`) that some sequence reaches during a batched decode step at N."""
        return {b.position for b in self.targets for r in self.positions(n) if b.position in r}

    def mixed(self, n: int) -> bool:
        return len(set(self.lengths[:n])) > 1


def crossing_lengths(targets: Sequence[int], context: int, *, steps: int = DECODE_STEPS, count: int = PLAN_ROWS,
                     stagger: bool = True) -> tuple[int, ...]:
    """Prompt lengths whose decode steps cross the target positions: sequence i aims at targets[i % len(targets)],
    reaching it at decode step 1 + (i // len(targets)) % steps when staggered (so rows of one batch cross at different
    steps), at the last step when not. No decode step passes the context's last position."""
    out = []
    for i in range(count):
        t = targets[i % len(targets)]
        offset = (i // len(targets)) % steps if stagger else steps - 1
        out.append(max(1, min(t - offset, context - steps)))
    return tuple(out)


def legacy_lengths(count: int = PLAN_ROWS) -> tuple[int, ...]:
    """The suite's original prompts: 2..26 tokens, every prefill-chunk remainder, mixed in every batch."""
    return tuple(2 + (7 * i + 3) % 25 for i in range(count))


def plans(cfg: GemmaConfig, context: int | None = None, steps: int = DECODE_STEPS) -> tuple[InputPlan, ...]:
    """The named plans for one model; a plan whose boundaries the context cannot reach is left out."""
    ctx = min(x for x in (context, cfg.context_length) if x) if (context or cfg.context_length) else 1 << 20
    bounds = boundaries(cfg, context)
    by_kind = {kind: [b for b in bounds if b.kind == kind] for kind in (WINDOW, RING, GROWTH, KV_CHUNK, CONTEXT_END)}
    short = legacy_lengths()
    reached = tuple(b for b in bounds if b.position <= max(short) + steps - 1)
    out = [InputPlan(
        "short", f"mixed short prompts ({min(short)}..{max(short)} tokens, every prefill-chunk remainder), per-row "
                 "positions at every N of the list (the route switch points, on every quant variant)"
                 + "".join(f"; {b.kind} at {b.position}" for b in reached),
        short, steps, reached)]

    sliding = by_kind[WINDOW] + by_kind[RING]
    if sliding:
        pos = [b.position for b in sliding]
        words = "; ".join(b.what for b in sliding)
        out.append(InputPlan("sliding-mixed", f"mixed lengths, rows crossing at different decode steps: {words}",
                             crossing_lengths(pos, ctx, steps=steps), steps, tuple(sliding)))
        ring = by_kind[RING] or by_kind[WINDOW]
        out.append(InputPlan("sliding-equal", "equal lengths, every row at one position, crossing in one batched "
                                              f"step: {ring[-1].what}",
                             crossing_lengths([ring[-1].position], ctx, steps=steps, stagger=False), steps,
                             (ring[-1],)))
    first = [b for b in bounds if b.kind in (GROWTH, KV_CHUNK)]
    if first:
        p0 = first[0].position
        at = tuple(b for b in first if b.position == p0)
        words = "; ".join(b.what for b in at)
        out.append(InputPlan("growth-mixed", f"mixed lengths ({p0 - steps + 1}..{p0} tokens), rows crossing at "
                                             f"different batched steps: {words}",
                             crossing_lengths([p0], ctx, steps=steps), steps, at))
        out.append(InputPlan("growth-equal", f"equal lengths, every row crossing in one batched step: {words}",
                             crossing_lengths([p0], ctx, steps=steps, stagger=False), steps, at))
    far = sorted({b.position for b in bounds if b.kind in (GROWTH, KV_CHUNK, CONTEXT_END)}
                 - ({first[0].position} if first else set()))
    if far:
        targets = tuple(b for b in bounds if b.position in far and b.kind in (GROWTH, KV_CHUNK, CONTEXT_END))
        later = (f"every later cache growth and split-KV chunk start ({', '.join(str(p) for p in far[:-1])}) and "
                 if far[:-1] else "")
        out.append(InputPlan("far-mixed", f"mixed long prompts, one row per boundary: {later}the context's last "
                                          f"position {ctx - 1}",
                             crossing_lengths(far, ctx, steps=steps), steps, targets))
    return tuple(out)


def plan_named(cfg: GemmaConfig, name: str, context: int | None = None) -> InputPlan:
    for plan in plans(cfg, context):
        if plan.name == name:
            return plan
    raise KeyError(f"no input plan {name!r} for this model: expected one of {[p.name for p in plans(cfg, context)]}")


def make_sequences(vocab_size: int, lengths: Sequence[int], steps: int = DECODE_STEPS, *, seed: int = SEQUENCE_SEED):
    """One prompt per length (BOS, then random ordinary tokens) and a forced continuation of `steps` tokens each.
    Deterministic in (vocab_size, lengths, steps, seed); a prompt depends on the lengths before it (one stream)."""
    if any(length < 1 for length in lengths):
        raise ValueError(f"prompt lengths must be >= 1, got {list(lengths)}")
    rng = np.random.default_rng(seed)
    prompts, forced = [], []
    for length in lengths:
        prompts.append([BOS] + [int(t) for t in rng.integers(FIRST_ORDINARY_TOKEN, vocab_size, size=length - 1)])
        forced.append([int(t) for t in rng.integers(FIRST_ORDINARY_TOKEN, vocab_size, size=steps)])
    return prompts, forced


# --- inputs for outside users and the field tests ----------------------------------------------------------------
MIXED, PAST_WINDOW, EQUAL = "mixed", "past-window", "equal"
FIELD_KINDS = (MIXED, PAST_WINDOW, EQUAL)


@dataclass(frozen=True)
class FieldInputs:
    """N prompts and their forced scripts (one length, ``steps``) of one kind, with the lengths and what they reach."""

    kind: str
    purpose: str
    lengths: tuple[int, ...]
    prompts: list[list[int]]
    forced: list[list[int]]


def field_inputs(cfg: GemmaConfig, kind: str, n: int, *, steps: int = DECODE_STEPS, seed: int = SEQUENCE_SEED,
                 context: int | None = None, vocab_size: int | None = None) -> FieldInputs:
    """Prompts and forced scripts for N sequences of one kind, from a model's config (an engine's ``.config``, or
    ``gemma_oracle.engine.model_file.load_model(path).config`` for a GGUF that an outside engine serves):

    * ``"mixed"``: mixed prompt lengths (the "short" plan: 5, 12, 19, 26, 8, ... tokens, every prefill-chunk
      remainder), so rows of one batch sit at different positions from N = 2 (where RoPE-offset and padded-key bugs
      fire);
    * ``"past-window"``: mixed lengths whose decode steps cross the sliding window and the sliding ring's wrap
      (window + prefill chunk - 1) at different steps (the "sliding-mixed" plan); ValueError when the model has no
      sliding window shorter than its context (nothing to cross);
    * ``"equal"``: every row the same length (different tokens), so every batched step has all rows at one
      position; the "sliding-equal" plan (all rows wrap the ring in one step) where there is a window, else the
      mixed plan's first length. A bug that needs rows at different positions cannot fire here.

    ``steps`` is T, the forced tokens per sequence; ``context`` the positions the engine can reach (default the
    model's); ``vocab_size`` defaults to the config's. Deterministic in all arguments (make_sequences)."""
    if n < 1:
        raise ValueError(f"need n >= 1 sequences, got {n}")
    if n > PLAN_ROWS:
        raise ValueError(f"a plan describes at most {PLAN_ROWS} rows, asked for {n}")
    by_name = {p.name: p for p in plans(cfg, context, steps)}
    if kind == MIXED:
        plan = by_name["short"]
        lengths = plan.lengths[:n]
    elif kind == PAST_WINDOW:
        if "sliding-mixed" not in by_name:
            raise ValueError(f"kind {kind!r}: this model has no sliding window shorter than its context "
                             f"(window {cfg.sliding_window}, context {context or cfg.context_length})")
        plan = by_name["sliding-mixed"]
        lengths = plan.lengths[:n]
    elif kind == EQUAL:
        plan = by_name.get("sliding-equal", by_name["short"])
        lengths = (plan.lengths[0],) * n
    else:
        raise ValueError(f"unknown input kind {kind!r}: expected one of {', '.join(FIELD_KINDS)}")
    prompts, forced = make_sequences(vocab_size or cfg.vocab_size, lengths, steps, seed=seed)
    purpose = plan.purpose
    if kind == EQUAL:
        purpose = f"every row {lengths[0]} tokens, all at one position" + (
            f" ({plan.purpose})" if plan.name == "sliding-equal" else "")
    return FieldInputs(kind, purpose, tuple(lengths), prompts, forced)


# --- batch sizes ------------------------------------------------------------------------------------------------
def route_switch_points() -> tuple[int, ...]:
    """Every N at which a GPU kernel choice changes (the first N of a new regime): the route tables' N floors and
    capacities (engine/routing.py), the WS capacities (kernels/matvec.py: N = cap + 1 needs the next instantiation)
    and the decode-MMQ tile rules (kernels/mmq.py)."""
    points = {1}
    for route in routing.ROUTE_TABLE + routing.INVARIANT_TABLE:
        points.add(route.min_n)
        if route.max_n is not None:
            points.add(route.max_n + 1)
    points.update(cap + 1 for cap in WS_CAPACITIES)
    points.update(rule[1] for rule in TILE_RULES)
    return tuple(sorted(points))


def batch_sizes(max_n: int, extra: Sequence[int] = ()) -> tuple[int, ...]:
    """N at and just below every route switch point up to max_n, 2 and 3, and `extra`."""
    ns = {2, 3, *extra}
    for p in route_switch_points():
        ns.update((p - 1, p))
    return tuple(sorted(n for n in ns if 1 <= n <= max_n))
