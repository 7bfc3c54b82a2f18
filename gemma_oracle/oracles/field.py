"""Tests from the field: the ways batching engines have really gone wrong, each as one run against ANY engine of the
protocol (gemma_oracle.engine.protocol), answered as a GoldenResult with its ``test`` name so reports treat them
like the sweep (gemma_oracle.oracles.single_vs_batched).

* ``needle``: one prompt decoded alone vs the same prompt at a random slot among N - 1 others (vLLM's and
  FlashInfer's shape: a row's result must not depend on where it sits or what sits beside it);
* ``changing_composition``: sequences join (prefilled when they join, with ``prefill_batch`` when the engine
  offers it) and leave between steps, as continuous batching does; every row compared with its single-user run;
* ``decode_vs_prefill``: the logits at one position from token-by-token decode vs from prefilling the prefix;
* ``determinism``: the same batched run twice, bitwise;
* ``batched_prefill``: N prompts through ``prefill_batch`` in one step (then decoded together) vs each alone.

Inputs are the caller's: mixed prompt lengths and contexts past the sliding window (ring wrap) come from
gemma_oracle.harness.suites.inputs.field_inputs. Every test takes ``policy`` (a two-sided Policy, or a
CalibratedPolicy with ``precise_engine``, the float64 engine on the same file, as its third side), an optional
``reference_engine`` (default: the engine itself, alone) and the golden comparison's reference memo ``cache``. Keys, positions and step numbers
are the golden comparison's (step 0 = the prompt's last position, step s = after the s-th forced token); what a key's
``seq`` means, when it is not the sequence, each test says. Batched calls are numbered 1, 2, ... in the order a
test makes them; the engine's ``last_batch`` probe is read after each one, and a call that was not one batch fails
the result (GoldenResult.not_batched, by that number).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from gemma_oracle.engine.protocol import DecodeEngine, describe_engine, output_logprobs, prefill_batch_of
from gemma_oracle.oracles.calibrated import check_calibrated
from gemma_oracle.oracles.compare import CalibratedPolicy, Policy, check_logits_close, exact
from gemma_oracle.oracles.single_vs_batched import (
    GoldenResult,
    RefCache,
    check_golden_inputs,
    compared_rows,
    host_logits,
    memoised_single_user,
    probe_batch,
)

__all__ = ["FIELD_TESTS", "batched_prefill", "changing_composition", "decode_vs_prefill", "determinism", "needle"]

FIELD_TESTS = ("needle", "changing_composition", "decode_vs_prefill", "determinism", "batched_prefill")


class _Batcher:
    """The candidate's calls, batched ones numbered from 1 and probed (``last_batch``) after each."""

    def __init__(self, engine: DecodeEngine):
        self.engine, self.count, self.not_batched = engine, 0, []

    def prefill(self, seq, prompt) -> np.ndarray:
        e = self.engine
        return host_logits(e.prefill(seq, list(prompt)), (e.vocab_size,), e, "prefill")

    def prefill_batch(self, seqs, prompts) -> tuple[int, np.ndarray]:
        e, n = self.engine, len(seqs)
        out = host_logits(prefill_batch_of(e)(seqs, [list(p) for p in prompts]), (n, e.vocab_size), e,
                          f"prefill_batch (N={n})")
        self.count += 1
        probe_batch(e, self.count, n, self.not_batched)   # N prompts in one step: probed at any N
        return self.count, out

    def decode(self, seqs, tokens) -> tuple[Optional[int], np.ndarray]:
        e, n = self.engine, len(seqs)
        out = host_logits(e.decode(seqs, [int(t) for t in tokens]), (n, e.vocab_size), e, f"decode (N={n})")
        if n < 2:
            return None, out      # one row: nothing to batch
        self.count += 1
        probe_batch(e, self.count, n, self.not_batched)
        return self.count, out

    def run(self, prompts, forced):
        """The sweep's batched run (each prompt prefilled alone, then T decode steps of all N): [seq][step] rows
        and the batched call (or None) that made each."""
        seqs = [self.engine.new_sequence() for _ in prompts]
        rows = [[self.prefill(s, p)] for s, p in zip(seqs, prompts)]
        calls = [[None] for _ in prompts]
        for t in range(len(forced[0])):
            call, out = self.decode(seqs, [f[t] for f in forced])
            for i in range(len(seqs)):
                rows[i].append(out[i])
                calls[i].append(call)
        return rows, calls


class _Rows:
    """A field test's compared rows, in order, then its GoldenResult.

    Under a CalibratedPolicy (an engine that is not bitwise: decode-MMQ in auto mode, an outside float32 or quantized
    engine) every row is judged three-sided, as the calibrated sweep is: the candidate's row and its single-user row
    both against ``precise`` (the float64 engine) at the same sequence and position, read through the memo."""

    def __init__(self, policy: Policy | CalibratedPolicy, *, engine: Optional[DecodeEngine] = None,
                 precise: Optional[DecodeEngine] = None, cache: Optional[RefCache] = None):
        if isinstance(policy, CalibratedPolicy) and precise is None:
            raise ValueError(f"policy {policy.name} is calibrated: it needs precise_engine (the float64 engine on the "
                             "same file) to measure the route's own noise")
        self.policy, self.engine, self.precise, self.cache = policy, engine, precise, cache
        self.keys, self.positions, self.comparisons, self.calls, self.cases = [], [], [], [], []

    def compare(self, key, pos, *, ref, cand, name_ref, name_cand, where, call=None, case="", inputs=None, row=None):
        """``inputs`` = (prompt, forced script) and ``row`` = the row of its single-user run that both sides hold
        (needed under a calibrated policy only)."""
        self.keys.append(key)
        self.positions.append(pos)
        self.calls.append(call)
        self.cases.append(case)
        if isinstance(self.policy, CalibratedPolicy):
            precise, _ = memoised_single_user(self.precise, inputs[0], inputs[1], self.cache)
            self.comparisons.append(check_calibrated(
                ref=precise[row], single=ref, batched=cand, name_ref=self.precise.name, name_single=name_ref,
                name_batched=name_cand, policy=self.policy, where=where, cand_logprobs=output_logprobs(self.engine)))
            return
        self.comparisons.append(check_logits_close(ref=ref, cand=cand, name_ref=name_ref, name_cand=name_cand,
                                                   policy=self.policy, where=where))

    def result(self, test, engine, reference, n, t, *, hits=0, batcher=None, note="", skipped="") -> GoldenResult:
        return GoldenResult(engine=engine.name, reference=reference.name, policy=self.policy.name, n=n, t=t,
                            keys=tuple(self.keys), positions=tuple(self.positions),
                            comparisons=tuple(self.comparisons), reference_cache_hits=hits, test=test,
                            engine_info=describe_engine(engine),
                            not_batched=tuple(batcher.not_batched) if batcher else (),
                            calls=tuple(self.calls), cases=tuple(self.cases), note=note, skipped=skipped)


def _where(case: str, seq_label: str, step: int, token: int, pos: int) -> str:
    return f"{case}: {seq_label}, step {step}, token {token} (pos {pos})"


def needle(engine: DecodeEngine, prompts: Sequence[Sequence[int]], forced: Sequence[Sequence[int]], *, n: int,
           policy: Policy | CalibratedPolicy, trials: int = 3, seed: int = 0,
           reference_engine: Optional[DecodeEngine] = None, cache: Optional[RefCache] = None,
           precise_engine: Optional[DecodeEngine] = None) -> GoldenResult:
    """The needle (``prompts[0]``, ``forced[0]``) decoded alone vs placed at a random slot of a batch of ``n``, beside
    n - 1 others drawn at random from ``prompts[1:]`` (so at least n - 1 of them), ``trials`` times (numpy rng of
    ``seed``). Only the needle's rows are compared. Keys: (trial, step, token): ``seq`` is the trial; each row's
    ``case`` and message say the slot and the others."""
    ref_engine = engine if reference_engine is None else reference_engine
    _, t_steps = check_golden_inputs(engine, ref_engine, prompts, forced)
    if not 1 <= n <= len(prompts):
        raise ValueError(f"needle at N={n} needs 1 <= N and N - 1 other prompts, got {len(prompts) - 1}")
    rng = np.random.default_rng(seed)
    ref, hit = memoised_single_user(ref_engine, prompts[0], forced[0], cache)
    batcher, rows = _Batcher(engine), _Rows(policy, engine=engine, precise=precise_engine, cache=cache)
    for trial in range(trials):
        slot = int(rng.integers(n))
        others = [1 + int(i) for i in rng.choice(len(prompts) - 1, size=n - 1, replace=False)]
        order = others[:slot] + [0] + others[slot:]
        cand, calls = batcher.run([prompts[i] for i in order], [forced[i] for i in order])
        case = f"trial {trial}: needle at slot {slot} of N={n}, beside prompts {others}"
        for _, step, token, pos in compared_rows(prompts[:1], forced[:1]):
            rows.compare((trial, step, token), pos, ref=ref[step], cand=cand[slot][step],
                         name_ref=f"{ref_engine.name}[single]", name_cand=f"{engine.name}[slot {slot} of N={n}]",
                         where=_where(case, "needle", step, token, pos), call=calls[slot][step], case=case,
                         inputs=(prompts[0], forced[0]), row=step)
    return rows.result("needle", engine, ref_engine, n, t_steps, hits=int(hit), batcher=batcher,
                       note=f"needle at a random slot, {trials} trials, seed {seed}")


def default_joins(n: int) -> list[int]:
    """Two sequences join per step (0, 0, 1, 1, 2, ...): every step but the last adds rows while earlier ones run."""
    return [i // 2 for i in range(n)]


def changing_composition(engine: DecodeEngine, prompts: Sequence[Sequence[int]], forced: Sequence[Sequence[int]], *,
                         policy: Policy | CalibratedPolicy, joins: Optional[Sequence[int]] = None, seed: int = 0,
                         reference_engine: Optional[DecodeEngine] = None, cache: Optional[RefCache] = None,
                         precise_engine: Optional[DecodeEngine] = None) -> GoldenResult:
    """Continuous batching: sequence i joins at tick ``joins[i]`` (default_joins), is prefilled then (the joiners
    of one tick through ONE ``prefill_batch`` when the engine offers it, else one ``prefill`` each), decodes its T
    forced tokens in the batched steps of ticks joins[i] .. joins[i] + T - 1, and leaves. Each tick's batch is in
    a random row order (rng of ``seed``), as a server's free slots are. Every row of every sequence is compared with
    its single-user run; each row's ``case`` names its tick and batch."""
    ref_engine = engine if reference_engine is None else reference_engine
    n, t_steps = check_golden_inputs(engine, ref_engine, prompts, forced)
    joins = default_joins(n) if joins is None else [int(j) for j in joins]
    if len(joins) != n or min(joins) < 0:
        raise ValueError(f"need one join tick >= 0 per sequence, got {joins} for {n} sequences")
    refs, hits = [], 0
    for p, f in zip(prompts, forced):
        logits, hit = memoised_single_user(ref_engine, p, f, cache)
        refs.append(logits)
        hits += hit

    rng = np.random.default_rng(seed)
    batcher, batch_prefill = _Batcher(engine), prefill_batch_of(engine) is not None
    seqs: dict[int, object] = {}
    cand = [[None] * (t_steps + 1) for _ in range(n)]
    calls = [[None] * (t_steps + 1) for _ in range(n)]
    cases = [[""] * (t_steps + 1) for _ in range(n)]
    for tick in range(max(joins) + max(t_steps, 1)):
        joiners = [i for i in range(n) if joins[i] == tick]
        for i in joiners:
            seqs[i] = engine.new_sequence()
        if joiners and batch_prefill:
            call, out = batcher.prefill_batch([seqs[i] for i in joiners], [prompts[i] for i in joiners])
            for k, i in enumerate(joiners):
                cand[i][0], calls[i][0] = out[k], call
                cases[i][0] = f"tick {tick}: joined with {joiners} through prefill_batch"
        elif joiners:
            for i in joiners:
                cand[i][0] = batcher.prefill(seqs[i], prompts[i])
                cases[i][0] = f"tick {tick}: joined, prefilled alone"
        active = [int(i) for i in rng.permutation([i for i in seqs if tick - joins[i] < t_steps])]
        if active:
            call, out = batcher.decode([seqs[i] for i in active], [forced[i][tick - joins[i]] for i in active])
            for r, i in enumerate(active):
                step = tick - joins[i] + 1
                cand[i][step], calls[i][step] = out[r], call
                cases[i][step] = f"tick {tick}: row {r} of batch {active}"
        for i in [i for i in seqs if tick - joins[i] >= t_steps - 1]:
            del seqs[i]          # done: it leaves, and the engine may reuse its slot

    rows = _Rows(policy, engine=engine, precise=precise_engine, cache=cache)
    for i, step, token, pos in compared_rows(prompts, forced):
        rows.compare((i, step, token), pos, ref=refs[i][step], cand=cand[i][step],
                     name_ref=f"{ref_engine.name}[single]", name_cand=f"{engine.name}[continuous batching]",
                     where=_where(cases[i][step], f"seq {i}", step, token, pos), call=calls[i][step],
                     case=cases[i][step], inputs=(prompts[i], forced[i]), row=step)
    return rows.result("changing_composition", engine, ref_engine, n, t_steps, hits=hits, batcher=batcher,
                       note=f"joins {joins}, row order seed {seed}, "
                            + ("joiners prefilled with prefill_batch" if batch_prefill else "joiners prefilled alone"))


def decode_vs_prefill(engine: DecodeEngine, prompts: Sequence[Sequence[int]], forced: Sequence[Sequence[int]], *,
                      policy: Policy | CalibratedPolicy, reference_engine: Optional[DecodeEngine] = None,
                      cache: Optional[RefCache] = None,
                      precise_engine: Optional[DecodeEngine] = None) -> GoldenResult:
    """At each compared position of the golden comparison (a prompt's last token, then each forced token): the
    logits from ``engine`` decoding the whole sequence token by token (prefill of the first token only, then one
    single-user ``decode`` per token) vs from ``reference_engine`` (default the engine) prefilling the prefix up to
    that position in one ``prefill``. A TOLERANCE comparison: decode (one row per forward) and prefill (chunks of
    many rows) are different arithmetic paths of the same model, so a bitwise policy asks more than either promises;
    a wrong position, a wrong cache or a mask that differs between the paths shows under FLOAT64_POLICY."""
    ref_engine = engine if reference_engine is None else reference_engine
    n, t_steps = check_golden_inputs(engine, ref_engine, prompts, forced)
    rows, hits = _Rows(policy, engine=engine, precise=precise_engine, cache=cache), 0
    decoded = []
    for p, f in zip(prompts, forced):
        logits, hit = memoised_single_user(engine, p[:1], list(p[1:]) + list(f), cache)   # row = position
        decoded.append(logits)
        hits += hit
    for i, step, token, pos in compared_rows(prompts, forced):
        prefix = list(prompts[i]) + list(forced[i][:step])
        prefilled, hit = memoised_single_user(ref_engine, prefix, (), cache)
        hits += hit
        rows.compare((i, step, token), pos, ref=prefilled[0], cand=decoded[i][pos],
                     name_ref=f"{ref_engine.name}[prefill of {len(prefix)} tokens]",
                     name_cand=f"{engine.name}[token-by-token decode]",
                     where=_where("decode vs prefill", f"seq {i}", step, token, pos),
                     inputs=(prompts[i][:1], list(prompts[i][1:]) + list(forced[i])), row=pos)
    return rows.result("decode_vs_prefill", engine, ref_engine, n, t_steps, hits=hits,
                       note="tolerance comparison: decode and prefill are different arithmetic paths")


def determinism(engine: DecodeEngine, prompts: Sequence[Sequence[int]], forced: Sequence[Sequence[int]], *,
                policy: Optional[Policy] = None, runs: int = 2) -> GoldenResult:
    """The same batched run (the sweep's: each prompt prefilled alone, T decode steps of all N) ``runs`` times: every
    later run against the first, bitwise (``policy`` defaults to exact(); the same inputs in the same batch leave
    an engine no excuse to differ). The reference is the engine's own first run; keys are the sweep's."""
    n, t_steps = check_golden_inputs(engine, engine, prompts, forced)
    if runs < 2:
        raise ValueError(f"determinism needs runs >= 2, got {runs}")
    policy = exact() if policy is None else policy
    batcher, rows = _Batcher(engine), _Rows(policy)
    first, _ = batcher.run(prompts, forced)
    for r in range(1, runs):
        again, calls = batcher.run(prompts, forced)
        case = f"run {r + 1} vs run 1"
        for i, step, token, pos in compared_rows(prompts, forced):
            rows.compare((i, step, token), pos, ref=first[i][step], cand=again[i][step],
                         name_ref=f"{engine.name}[run 1]", name_cand=f"{engine.name}[run {r + 1}]",
                         where=_where(case, f"seq {i}", step, token, pos), call=calls[i][step], case=case)
    return rows.result("determinism", engine, engine, n, t_steps, batcher=batcher,
                       note=f"{runs} identical batched runs, each against the first")


def batched_prefill(engine: DecodeEngine, prompts: Sequence[Sequence[int]], forced: Sequence[Sequence[int]], *,
                    policy: Policy | CalibratedPolicy, reference_engine: Optional[DecodeEngine] = None,
                    cache: Optional[RefCache] = None,
                    precise_engine: Optional[DecodeEngine] = None) -> GoldenResult:
    """The N prompts through ONE ``prefill_batch`` (step 0), then T batched decode steps of all N (steps 1..T, which
    read the caches that prefill_batch wrote), vs each sequence alone (``prefill`` + single-user decode). An engine
    without ``prefill_batch`` gets a result with ``skipped`` set and no rows."""
    ref_engine = engine if reference_engine is None else reference_engine
    n, t_steps = check_golden_inputs(engine, ref_engine, prompts, forced)
    rows = _Rows(policy, engine=engine, precise=precise_engine, cache=cache)
    if prefill_batch_of(engine) is None:
        return rows.result("batched_prefill", engine, ref_engine, n, t_steps,
                           skipped=f"engine {engine.name!r} offers no prefill_batch(seqs, prompts): it cannot take "
                                   "N prompts in one step")
    refs, hits = [], 0
    for p, f in zip(prompts, forced):
        logits, hit = memoised_single_user(ref_engine, p, f, cache)
        refs.append(logits)
        hits += hit
    batcher = _Batcher(engine)
    seqs = [engine.new_sequence() for _ in prompts]
    call, out = batcher.prefill_batch(seqs, prompts)
    cand = [[out[i]] for i in range(n)]
    calls = [[call] for _ in range(n)]
    for t in range(t_steps):
        call, out = batcher.decode(seqs, [f[t] for f in forced])
        for i in range(n):
            cand[i].append(out[i])
            calls[i].append(call)
    for i, step, token, pos in compared_rows(prompts, forced):
        rows.compare((i, step, token), pos, ref=refs[i][step], cand=cand[i][step],
                     name_ref=f"{ref_engine.name}[single]", name_cand=f"{engine.name}[prefill_batch N={n}]",
                     where=_where("batched prefill", f"seq {i}", step, token, pos), call=calls[i][step],
                     inputs=(prompts[i], forced[i]), row=step)
    return rows.result("batched_prefill", engine, ref_engine, n, t_steps, hits=hits, batcher=batcher,
                       note=f"{n} prompts in one prefill_batch, then decoded together")
