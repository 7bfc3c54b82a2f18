"""Tolerances calibrated to a route's own noise: batched error against a reference vs single-user error.

For a route that is not bitwise (decode-MMQ in auto mode, an outside quantized engine) a fixed bound on
batched vs single-user is either loose enough to pass semantic bugs (the seed's 12B bounds passed a skipped final
softcap: monotonic, so argmax and top-5 stay put) or tight enough to fail the route's honest noise. This rule
measures the noise instead: at every (sequence, step) both the single-user and the batched logits of the candidate
are compared with a more precise reference (the float64 numpy engine; on models too large for it, the same engine's
float route, e.g. the GPU's WS / batch-invariant mode), and the batched error must be of the same size as the
single-user error at that very position:

* NMSE(ref, batched)     <= nmse_factor    x NMSE(ref, single)     + nmse_floor
* max|ref - batched|     <= max_abs_factor x max|ref - single|     + max_abs_floor
* argmax(batched) == argmax(ref) wherever the reference's top-two margin exceeds twice the max-|d| bound (implied
  by the max-|d| bound; checked on its own so a report names the flip)

A bug present in batched decode only adds its own error on top of the route's noise; once that error is larger
than the factor times the noise at some position, the position fails, whatever argmax and top-5 do.

The policy record and its constants (with their provenance) are gemma_oracle.oracles.compare.CalibratedPolicy and
CALIBRATED_POLICY, beside the other named policies. What it cannot see (stated in every report through
``CalibratedPolicy.describe``):

* a bug present identically in single-user and batched decode (both errors grow together; that is the job of the
  parity and reference-semantics tests, not of a batching oracle);
* an extra error smaller than about the factor times the route's own noise at every position: on an int8 route
  (Q8_1 activations: by a rounding estimate NMSE ~5e-5 per matmul input) an fp16 rounding of one matmul family
  (~1e-7) is invisible, and harmless next to the int8 noise; on a float32 route (the planted-bug suite's noisy
  candidate) the same rounding fails by five orders of magnitude. The planted-bug suite's ``calibrated@int8``
  column shows it, and that a small semantic bug can hide there too (V from the normed K on fixtures whose k_norm
  weights are nearly uniform);
* errors of the reference itself (it is trusted).

For an engine that can pin its routes (our GPU engine's auto mode) gemma_oracle.oracles.pinned adds a bitwise
contract that needs no noise model and sees what this rule cannot; outside engines have only this rule.

Outside engines answer with log-probabilities (``output_logprobs``) or their top k (``TopKLogprobs``): the
reference's logits are then log-softmaxed before any error is measured (an NMSE of log-probabilities against
logits measures the log-normaliser, not the engine), and top-k rows are measured on the ids they list
(gemma_oracle.oracles.metrics.topk_distance). Our own engines' raw logits are compared as before.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from gemma_oracle.engine.protocol import describe_engine, DecodeEngine, TopKLogprobs, output_logprobs
from gemma_oracle.oracles.compare import CALIBRATED_POLICY, CalibratedPolicy, Comparison
from gemma_oracle.oracles.metrics import (
    argmax_agreement,
    dense_as_topk,
    kl_divergence,
    log_softmax,
    max_abs,
    nmse,
    screen_nonfinite,
    top1_top2_margin,
    topk_distance,
    topk_overlap,
)
from gemma_oracle.oracles.single_vs_batched import (
    GoldenResult,
    RefCache,
    batched_logits,
    check_golden_inputs,
    compared_rows,
    memoised_single_user,
)

__all__ = ["CALIBRATED_POLICY", "CalibratedPolicy", "calibrated_single_vs_batched", "check_calibrated", "noise_ratios"]


def _against_reference(ref_lp: np.ndarray, row, k: int) -> tuple[float, float, float, int, int, int, Optional[int]]:
    """(nmse, max_abs, kl, reference argmax, candidate argmax, top-k overlap, shared ids) of one candidate row against
    the reference's log-probabilities: dense rows directly, TopKLogprobs rows by the top-k metrics with the
    reference looked up exactly at the candidate's ids (nmse over those ids, max_abs the rigorous lower bound,
    gemma_oracle.oracles.metrics.topk_distance)."""
    if isinstance(row, TopKLogprobs):
        rid, rlp = dense_as_topk(ref_lp, logprobs=True, head=max(row.k, k))
        d = topk_distance(rid, rlp, row.ids, row.logprobs)
        mm = min(k, d.m)
        return (d.nmse_shared, d.max_abs_lower, d.kl_shared, d.ref_top, d.cand_top,
                int(np.isin(rid[:mm], row.ids[:mm]).sum()), d.shared)
    x = np.asarray(row)
    v = argmax_agreement(ref_lp, x, 0.0)
    return (nmse(ref_lp, x), max_abs(ref_lp, x), kl_divergence(ref_lp, x), v.ref_token, v.cand_token,
            int(topk_overlap(ref_lp, x, k)), None)


def _identical(single, batched) -> bool:
    """The batched row is bit-identical to the single-user row (for top-k rows: ids and values)."""
    if isinstance(single, TopKLogprobs):
        return bool(np.array_equal(single.ids, batched.ids) and np.array_equal(single.logprobs, batched.logprobs))
    return bool(np.array_equal(np.asarray(single), np.asarray(batched)))


def check_calibrated(*, ref, single, batched, name_ref: str, name_single: str, name_batched: str,
                     policy: CalibratedPolicy = CALIBRATED_POLICY, where: str = "",
                     cand_logprobs: bool = False) -> Comparison:
    """One position: the batched candidate's error against ``ref`` vs the single-user candidate's.

    ``ref`` is the reference's dense logits row. The candidate's rows are raw logits (our engines: compared with the
    reference as they are), dense log-probabilities (``cand_logprobs``) or ``TopKLogprobs`` (outside engines):
    then the reference is log-softmaxed first, since an NMSE of log-probabilities against logits measures the
    per-row log-normaliser, not the engine. Top-k rows are judged by the top-k metrics (NMSE over the listed ids,
    max |d| as its rigorous lower bound; Comparison's docstring). The record's metrics (max_abs, nmse, kl, argmax,
    top-k) are batched vs reference; the message carries the single-user numbers and the bounds derived from
    them. Never raises on a mismatch.
    """
    a = np.asarray(ref)
    topk_rows = isinstance(single, TopKLogprobs) or isinstance(batched, TopKLogprobs)
    head = f"{where}: " if where else ""
    sides = f"{name_batched} vs {name_ref} (single-user {name_single})"
    kind = "topk" if topk_rows else "dense"

    def shape_of(x):
        return x.shape if isinstance(x, TopKLogprobs) else np.shape(x)

    bad_shape = a.ndim != 1 or any(len(shape_of(x)) != 1 for x in (single, batched)) or (
        not topk_rows and not (a.shape == np.shape(single) == np.shape(batched)))
    if isinstance(single, TopKLogprobs) != isinstance(batched, TopKLogprobs):
        bad_shape = True   # one engine answers one way: a switch between its two runs is an adapter bug
    if bad_shape:
        nan = float("nan")
        msg = (f"{head}{sides} FAILED {policy.name}: shape mismatch, ref {a.shape}, single {shape_of(single)}, "
               f"batched {shape_of(batched)}")
        return Comparison(where, name_ref, name_batched, policy.name, nan, nan, nan, -1, -1, False, False, nan,
                          nan, policy.topk, 0, "shape mismatch", False, msg, kind=kind, failed=("shape",))

    if topk_rows:
        screen = screen_nonfinite(a, a)
        if screen is None and not all(np.isfinite(x.logprobs).all() for x in (single, batched)):
            screen = "non-finite log-probability in a top-k row"
    else:
        screen = screen_nonfinite(a, batched) or screen_nonfinite(a, single)
    with np.errstate(all="ignore"):
        ref_row = log_softmax(a) if (topk_rows or cand_logprobs) else a
        try:
            e_s_nmse, e_s_abs = _against_reference(ref_row, single, policy.topk)[:2]
            e_b_nmse, e_b_abs, kl, ref_tok, cand_tok, overlap, shared = _against_reference(ref_row, batched,
                                                                                             policy.topk)
        except ValueError as exc:   # a malformed top-k row (repeated id, no entries)
            nan = float("nan")
            msg = f"{head}{sides} FAILED {policy.name}: not comparable top-k rows: {exc}"
            return Comparison(where, name_ref, name_batched, policy.name, nan, nan, nan, -1, -1, False, False, nan,
                              nan, policy.topk, 0, str(exc), False, msg, kind=kind, failed=("shape",))
        top_margin = top1_top2_margin(a)
    agree = ref_tok == cand_tok
    margin = 0.0 if agree else float(ref_row[ref_tok] - ref_row[cand_tok])
    nmse_bound = policy.nmse_factor * e_s_nmse + policy.nmse_floor
    abs_bound = policy.max_abs_factor * e_s_abs + policy.max_abs_floor

    failures: list[str] = []
    failed: list[str] = []   # one label per failure: nonfinite, bitwise, nmse, max_abs, kl, argmax, topk
    if screen is not None:
        failed.append("nonfinite")
        failures.append(screen)
    if not e_b_nmse <= nmse_bound:   # `not <=` also fails a NaN
        failed.append("nmse")
        failures.append(f"batched nmse {e_b_nmse:.3e} > {policy.nmse_factor:g} x single-user {e_s_nmse:.3e} "
                        f"+ {policy.nmse_floor:g}")
    if not e_b_abs <= abs_bound:
        failed.append("max_abs")
        failures.append(f"batched max_abs {e_b_abs:.3e} > {policy.max_abs_factor:g} x single-user {e_s_abs:.3e} "
                        f"+ {policy.max_abs_floor:g}")
    if not agree and top_margin > 2 * abs_bound:
        failed.append("argmax")
        failures.append(f"argmax {name_ref}={ref_tok} vs {name_batched}={cand_tok} where the "
                        f"reference's margin {top_margin:.4g} > 2 x allowed max_abs {abs_bound:.3e}")
    on = " (log-probs, top-k ids)" if topk_rows else (" (log-probs)" if cand_logprobs else "")
    numbers = (f"batched: nmse={e_b_nmse:.3e} max_abs={e_b_abs:.3e}; single-user: nmse={e_s_nmse:.3e} "
               f"max_abs={e_s_abs:.3e}{on}; argmax {name_ref}={ref_tok} {name_batched}={cand_tok}")
    passed = not failures
    message = (f"{head}{sides} passed {policy.name} ({numbers})" if passed
               else f"{head}{sides} FAILED {policy.name}: " + "; ".join(failures) + f" [{numbers}]")
    return Comparison(where=where, name_ref=name_ref, name_cand=name_batched, policy=policy.name,
                      max_abs=e_b_abs, nmse=e_b_nmse, kl=kl, ref_argmax=ref_tok,
                      cand_argmax=cand_tok, argmax_agree=agree, near_tie=False,
                      margin=margin, ref_top_margin=top_margin, topk=policy.topk,
                      topk_overlap=int(overlap), nonfinite=screen, passed=passed, message=message,
                      single_nmse=e_s_nmse, single_max_abs=e_s_abs, kind=kind, shared=shared,
                      identical=_identical(single, batched), failed=tuple(failed))


def calibrated_single_vs_batched(
    engine: DecodeEngine,
    prompts: Sequence[Sequence[int]],
    forced: Sequence[Sequence[int]],
    *,
    reference_engine: DecodeEngine,
    policy: CalibratedPolicy = CALIBRATED_POLICY,
    cache: Optional[RefCache] = None,
    single_engine: Optional[DecodeEngine] = None,
) -> GoldenResult:
    """The golden protocol of gemma_oracle.oracles.single_vs_batched (teacher-forced, same step numbering) with a
    third side: every sequence also decoded alone by ``reference_engine``. Each (sequence, step) is judged by
    :func:`check_calibrated`. ``cache`` memoises single-user runs of both engines by (engine name, prompt,
    forced). The result's ``reference`` names the reference engine.

    ``single_engine`` runs each sequence alone (default: the candidate itself). The rule measures the noise of the
    route the batch takes, so a router that serves N = 1 on another route than the batch (auto mode: float WS alone,
    int8 decode-MMQ from some N on small shapes) passes the candidate pinned to the batch's int8 route (forced
    decode_mmq, which serves every eligible matrix on it): its single-user error is then that route's noise, not
    the float route's ten times smaller one."""
    n, t_steps = check_golden_inputs(engine, reference_engine, prompts, forced)
    alone = engine if single_engine is None else single_engine
    if alone.vocab_size != engine.vocab_size:
        raise ValueError(f"single_engine {alone.name} has vocab {alone.vocab_size}, the candidate {engine.vocab_size}")
    if reference_engine.name == engine.name:
        raise ValueError(f"the reference must be another engine than the candidate, both are {engine.name!r}")

    hits = 0
    refs, singles = [], []
    for p, f in zip(prompts, forced):
        r, hit_r = memoised_single_user(reference_engine, p, f, cache)
        s, hit_s = memoised_single_user(alone, p, f, cache)
        refs.append(r)
        singles.append(s)
        hits += hit_r + hit_s

    not_batched: list = []
    cand = batched_logits(engine, prompts, forced, not_batched=not_batched)
    keys, positions, comparisons = [], [], []
    for i, step, token, pos in compared_rows(prompts, forced):
        keys.append((i, step, token))
        positions.append(pos)
        comparisons.append(check_calibrated(
            ref=refs[i][step], single=singles[i][step], batched=cand[i][step],
            name_ref=f"{reference_engine.name}[single]", name_single=f"{alone.name}[single]",
            name_batched=f"{engine.name}[batched N={n}]", policy=policy,
            where=f"seq {i}, step {step}, token {token} (pos {pos})", cand_logprobs=output_logprobs(engine)))

    return GoldenResult(engine=engine.name, reference=reference_engine.name, policy=policy.name, n=n, t=t_steps,
                        keys=tuple(keys), positions=tuple(positions), comparisons=tuple(comparisons),
                        reference_cache_hits=hits, engine_info=describe_engine(engine), not_batched=tuple(not_batched))


def noise_ratios(result: GoldenResult) -> dict:
    """The measurement the calibrated factors rest on, for one calibrated run: the largest per-position ratio of the
    batched error to the single-user error (NMSE and max |diff|, both against the reference), over positions
    where single-user's error is not 0, and how many positions that was. A GPU run records it, so the factors are
    checked against the route's own noise."""
    pairs = [(c.nmse, c.single_nmse, c.max_abs, c.single_max_abs) for c in result.comparisons
             if c.single_nmse is not None]
    if len(pairs) != len(result.comparisons):
        raise ValueError(f"{result.policy}: not a calibrated result (no single-user errors recorded)")
    nmse_r = [b / s for b, s, _, _ in pairs if s > 0]
    abs_r = [b / s for _, _, b, s in pairs if s > 0]
    return {"positions": len(nmse_r), "max_nmse_ratio": max(nmse_r, default=0.0),
            "max_abs_ratio": max(abs_r, default=0.0)}
