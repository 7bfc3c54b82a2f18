"""Metrics on logits vectors: the numbers that oracles/compare.py turns into verdicts.

Every function takes a reference (``ref``) and a candidate (``cand``) or a single logits vector, works in float64
whatever the input dtype, and reduces over the LAST axis, so a leading batch axis ([N, vocab] or [T, vocab]) gives
one value per row. A 1-D input gives a Python scalar.

Order of use follows llama.cpp's test-backend-ops: :func:`screen_nonfinite` runs first; the other metrics assume
inputs that passed it (a NaN reaching them propagates as NaN, it is never hidden).

Tie rule used everywhere (argmax, top-k): among equal logits the LOWER token index wins, which is also what
``np.argmax`` does.

Rows that are an engine's top k only (gemma_oracle.engine.protocol.TopKLogprobs) have their own metrics at the end
(:func:`topk_distance`): an entry outside a side's top k is unknown there, never -inf.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import numpy as np

Scalar = Union[float, np.ndarray]

__all__ = [
    "ArgmaxVerdict",
    "TopKDistance",
    "argmax_agreement",
    "dense_as_topk",
    "kl_divergence",
    "log_softmax",
    "max_abs",
    "nmse",
    "screen_nonfinite",
    "top1_top2_margin",
    "topk",
    "topk_distance",
    "topk_overlap",
]


def _f64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _pair(ref, cand) -> tuple[np.ndarray, np.ndarray]:
    a, b = _f64(ref), _f64(cand)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: ref {a.shape} vs cand {b.shape}")
    return a, b


def _out(x: np.ndarray) -> Scalar:
    """A 0-d result becomes a Python float; a batched result stays an array."""
    return float(x) if np.ndim(x) == 0 else x


def _diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # Equal values give 0 even when both are the same infinity (inf - inf would be NaN).
    with np.errstate(invalid="ignore"):
        return np.where(a == b, 0.0, a - b)


# --------------------------------------------------------------------------------------------------------------
# Non-finite screen (llama.cpp test-backend-ops: NaN anywhere fails; inf on one side only or with another sign fails)
# --------------------------------------------------------------------------------------------------------------

def _first_index(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argwhere(mask)[0])


def screen_nonfinite(ref, cand) -> Optional[str]:
    """Return a message when the pair must fail before any tolerance is applied, else None.

    Fails on: a shape mismatch; a NaN anywhere on either side; an infinity present on one side only, or with a
    different sign. The same infinity at the same index on both sides is accepted (e.g. masked logits).
    """
    a, b = _f64(ref), _f64(cand)
    if a.shape != b.shape:
        return f"shape mismatch: ref {a.shape} vs cand {b.shape}"
    for side, x in (("ref", a), ("cand", b)):
        nan = np.isnan(x)
        if nan.any():
            return f"NaN in {side}: {int(nan.sum())} value(s), first at index {_first_index(nan)}"
    inf_a, inf_b = np.isinf(a), np.isinf(b)
    bad = (inf_a != inf_b) | (inf_a & inf_b & (np.sign(a) != np.sign(b)))
    if bad.any():
        idx = _first_index(bad)
        return (f"infinity mismatch: {int(bad.sum())} index(es), first at {idx}: "
                f"ref {a[idx]!r} vs cand {b[idx]!r}")
    return None


# --------------------------------------------------------------------------------------------------------------
# Distances
# --------------------------------------------------------------------------------------------------------------

def max_abs(ref, cand) -> Scalar:
    """max |ref - cand| over the last axis (0.0 for an empty last axis)."""
    a, b = _pair(ref, cand)
    d = np.abs(_diff(a, b))
    if d.shape[-1:] == (0,):
        return _out(np.zeros(d.shape[:-1]))
    return _out(d.max(axis=-1))


def nmse(ref, cand) -> Scalar:
    """Normalised mean squared error Σ(a−b)² / Σa² with a = ref (llama.cpp's default ``err()``).

    0/0 is defined as 0 (both all-zero) and x/0 with x > 0 as +inf (reference all zero, candidate not).
    """
    a, b = _pair(ref, cand)
    num = np.sum(np.square(_diff(a, b)), axis=-1)
    den = np.sum(np.square(a), axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(num == 0.0, 0.0, np.where(den == 0.0, np.inf, num / den))
    return _out(out)


def log_softmax(logits) -> np.ndarray:
    """Numerically stable log-softmax over the last axis (log-sum-exp with the row max subtracted)."""
    x = _f64(logits)
    m = np.max(x, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        lse = np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True)) + m
    return x - lse


def kl_divergence(ref_logits, cand_logits) -> Scalar:
    """KL(softmax(ref) || softmax(cand)) in nats, over the last axis.

    Tokens the reference gives zero probability (logit -inf) contribute 0; a token the reference can emit but
    the candidate gives -inf makes KL +inf. Tiny negatives from rounding are clipped to 0.
    """
    a, b = _pair(ref_logits, cand_logits)
    lp, lq = log_softmax(a), log_softmax(b)
    p = np.exp(lp)
    with np.errstate(invalid="ignore"):
        terms = np.where(p > 0.0, p * (lp - lq), 0.0)
    return _out(np.maximum(np.sum(terms, axis=-1), 0.0))


# --------------------------------------------------------------------------------------------------------------
# Rank metrics
# --------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ArgmaxVerdict:
    """Outcome of the argmax-or-near-tie rule for one logits pair.

    ``margin`` = ref[ref_token] − ref[cand_token] (the REFERENCE's own logits; 0.0 when the argmaxes agree).
    ``near_tie`` is True only when the argmaxes differ AND margin < near_tie_eps (strict).
    """

    ref_token: int
    cand_token: int
    agree: bool
    near_tie: bool
    margin: float

    @property
    def acceptable(self) -> bool:
        return self.agree or self.near_tie


def argmax_agreement(ref, cand, near_tie_eps: float = 0.0) -> ArgmaxVerdict:
    """Argmax equality, or a near-tie judged on the reference's logits (the seed project's tieEps rule).

    If the argmaxes differ the pair is still acceptable when the reference's logits at the two tokens differ by
    less than ``near_tie_eps``; otherwise it is a wiring bug. With eps = 0 only identical argmaxes pass.
    """
    a, b = _pair(ref, cand)
    if a.ndim != 1:
        raise ValueError(f"argmax_agreement takes 1-D logits, got shape {a.shape}")
    rt, ct = int(np.argmax(a)), int(np.argmax(b))
    agree = rt == ct
    margin = 0.0 if agree else float(a[rt] - a[ct])
    return ArgmaxVerdict(ref_token=rt, cand_token=ct, agree=agree,
                         near_tie=(not agree) and margin < near_tie_eps, margin=margin)


def _topk_1d(x: np.ndarray, k: int) -> np.ndarray:
    n = x.shape[0]
    if k >= n:
        return np.argsort(-x, kind="stable")
    kth = np.partition(x, n - k)[n - k]          # the k-th largest value
    cand = np.flatnonzero(x >= kth)               # ascending index order, includes every tie at the boundary
    order = np.argsort(-x[cand], kind="stable")   # stable: equal logits keep the lower index first
    return cand[order[:k]]


def topk(logits, k: int) -> np.ndarray:
    """Indices of the k largest logits, by descending logit, ties broken by the lower index (deterministic).

    Works on [..., vocab]; returns int64 [..., min(k, vocab)].
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    x = _f64(logits)
    if x.ndim == 0:
        raise ValueError("topk needs at least 1-D logits")
    k = min(k, x.shape[-1])
    flat = x.reshape(-1, x.shape[-1])
    out = np.empty((flat.shape[0], k), dtype=np.int64)
    for r in range(flat.shape[0]):
        out[r] = _topk_1d(flat[r], k)
    return out.reshape(x.shape[:-1] + (k,))


def topk_overlap(ref, cand, k: int) -> Union[int, np.ndarray]:
    """|topk(ref, k) ∩ topk(cand, k)| as an int (per row for batched input)."""
    a, b = _pair(ref, cand)
    ta, tb = topk(a, k), topk(b, k)
    if a.ndim == 1:
        return len(set(ta.tolist()) & set(tb.tolist()))
    ra, rb = ta.reshape(-1, ta.shape[-1]), tb.reshape(-1, tb.shape[-1])
    counts = [len(set(x.tolist()) & set(y.tolist())) for x, y in zip(ra, rb)]
    return np.asarray(counts, dtype=np.int64).reshape(a.shape[:-1])


def top1_top2_margin(logits) -> Scalar:
    """Largest minus second-largest logit over the last axis (0.0 at an exact tie, +inf for a vocab of 1).

    How close a row is to flipping its greedy token: a report uses it to tell near-ties from wiring bugs.
    """
    x = _f64(logits)
    if x.shape[-1] < 2:
        return _out(np.full(x.shape[:-1], np.inf))
    top2 = np.partition(x, x.shape[-1] - 2, axis=-1)[..., -2:]
    return _out(_diff(top2[..., 1], top2[..., 0]))


# --------------------------------------------------------------------------------------------------------------
# Top-k rows (an engine that answers with TopKLogprobs instead of full logits)
# --------------------------------------------------------------------------------------------------------------
# A TopKLogprobs row knows the log-probabilities of its k ids and nothing else: an id outside it is UNKNOWN (its
# log-probability is at most the row's k-th value, nothing more). So no metric below ever fills a missing entry
# with -inf (that would give inf/NaN distances that say nothing); each is defined on what both sides know, and the
# one metric that reaches past the shared ids (the max |d| lower bound) only uses the k-th value as an upper bound.

@dataclass(frozen=True)
class TopKDistance:
    """What two top-k rows (ids most likely first, log-probabilities) say about each other.

    ``m`` = min(k_ref, k_cand): containment is measured between the two sides' top-m, so a side that knows more
    (a dense row is a top-vocab row) is not credited for ids the other could not list. ``ref_in_cand`` = how many
    of ref's top-m ids are in cand's top-m, ``cand_in_ref`` the other way (equal for distinct ids; both kept so a
    report reads either). ``shared`` = ids present on both sides (full lists). ``kl_shared``: KL(ref || cand)
    with EACH side renormalised over the shared ids only (the divergence of the two conditional distributions on
    what both sides know; 0.0 when nothing is shared, where ``shared`` = 0 carries the failure). ``nmse_shared``:
    Σ(a−b)²/Σa² over the shared ids' log-probabilities (a = ref). ``max_abs_shared`` = max |d logprob| over shared
    ids (exact); ``max_abs_lower`` = a rigorous lower bound of max |d| over every id either side lists: for an id
    on one side only, the other side's value is at most its own k-th (last) value, so |d| >= value − that k-th
    value when positive. ``argmax_agree``: the two top-1 ids are equal; ``ref_margin`` = ref's top-1 minus top-2
    log-probability (+inf when ref lists one id: no near-tie can then be claimed, the strict choice).
    """

    m: int
    ref_in_cand: int
    cand_in_ref: int
    shared: int
    kl_shared: float
    nmse_shared: float
    max_abs_shared: float
    max_abs_lower: float
    ref_top: int
    cand_top: int
    argmax_agree: bool
    ref_margin: float


def _topk_row(ids, logprobs) -> tuple[np.ndarray, np.ndarray]:
    i, v = np.asarray(ids, dtype=np.int64), _f64(logprobs)
    if i.ndim != 1 or i.shape != v.shape or i.size == 0:
        raise ValueError(f"a top-k row needs 1-D ids and log-probabilities of one length >= 1, got {i.shape}, {v.shape}")
    if not np.isfinite(v).all():
        raise ValueError("a top-k row's log-probabilities must be finite (an unknown entry is left out, not -inf)")
    if i.min() < 0:
        raise ValueError(f"a top-k row lists a negative id: {i[i < 0][:8].tolist()}")
    # linear in the ids (a full-vocabulary side has 262k of them; a sort per comparison cost seconds a sweep)
    counts = np.bincount(i)
    if counts.max() > 1:
        raise ValueError(f"a top-k row lists an id twice: {np.flatnonzero(counts > 1)[:8].tolist()}")
    return i, v


def _renormalised(v: np.ndarray) -> np.ndarray:
    m = v.max()
    return v - m - np.log(np.exp(v - m).sum())


def topk_distance(ref_ids, ref_logprobs, cand_ids, cand_logprobs) -> TopKDistance:
    """The top-k metrics of one pair of rows (see :class:`TopKDistance`). Each row: 1-D ids, most likely first,
    and their finite log-probabilities. A dense row enters as its full vocabulary (``dense_as_topk``), so a
    dense-vs-top-k pair looks the top-k side's ids up exactly in the dense side."""
    ri, rv = _topk_row(ref_ids, ref_logprobs)
    ci, cv = _topk_row(cand_ids, cand_logprobs)
    m = min(ri.size, ci.size)
    # membership by table lookup (ids are token ids: small non-negative integers), linear in both rows
    size = int(max(ri.max(), ci.max())) + 1
    pos_in_c = np.full(size, -1, dtype=np.int64)
    pos_in_c[ci] = np.arange(ci.size)
    in_r = np.zeros(size, dtype=bool)
    in_r[ri] = True
    ref_in_cand = int((pos_in_c[ri[:m]] >= 0).sum() if m == ci.size else np.isin(ri[:m], ci[:m]).sum())
    cand_in_ref = int(in_r[ci[:m]].sum() if m == ri.size else np.isin(ci[:m], ri[:m]).sum())

    c_at_all = pos_in_c[ri]
    r_at = np.flatnonzero(c_at_all >= 0)
    r_at = r_at[np.argsort(ri[r_at], kind="stable")]   # shared ids in id order: sums independent of either side's order
    c_at = c_at_all[r_at]
    shared = ri[r_at]
    a, b = rv[r_at], cv[c_at]
    if shared.size:
        d = np.abs(a - b)
        max_shared = float(d.max())
        den = float(np.sum(a * a))
        num = float(np.sum((a - b) ** 2))
        nmse_s = 0.0 if num == 0.0 else (num / den if den > 0 else float("inf"))
        lp, lq = _renormalised(a), _renormalised(b)
        kl = max(float(np.sum(np.exp(lp) * (lp - lq))), 0.0)
    else:
        max_shared, nmse_s, kl = 0.0, 0.0, 0.0
    # One side only: the other side's value is <= its k-th value, so |d| >= value - kth when that is positive.
    r_only, c_only = c_at_all < 0, ~in_r[ci]
    bound = max_shared
    if r_only.any():
        bound = max(bound, float(np.max(rv[r_only] - cv.min())))
    if c_only.any():
        bound = max(bound, float(np.max(cv[c_only] - rv.min())))
    margin = float(rv[0] - rv[1]) if rv.size >= 2 else float("inf")
    return TopKDistance(m=m, ref_in_cand=ref_in_cand, cand_in_ref=cand_in_ref, shared=int(shared.size),
                        kl_shared=kl, nmse_shared=nmse_s, max_abs_shared=max_shared, max_abs_lower=bound,
                        ref_top=int(ri[0]), cand_top=int(ci[0]), argmax_agree=bool(ri[0] == ci[0]),
                        ref_margin=margin)


def dense_as_topk(row, *, logprobs: bool, head: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """A dense row [vocab] as a top-vocab row of log-probabilities (every id; most likely first; ties: lower id
    first): its values as they are when ``logprobs`` (an exact lookup, nothing renormalised), else log-softmaxed first
    (raw logits and log-probabilities differ by a per-row constant; compared raw they would differ everywhere). Ids
    whose value is -inf (masked tokens, probability 0) are left out: unknown is never -inf here, and a
    probability-0 token is not a candidate anyone lists.

    ``head``: only the first ``head`` ids need to be in order (the top-k metrics read the order of the first k ids
    only, k the other side's length): they are, and the rest follow in id order, which is linear instead of a sort
    of the whole vocabulary."""
    x = _f64(row)
    if x.ndim != 1:
        raise ValueError(f"dense_as_topk takes one row, got shape {x.shape}")
    lp = x if logprobs else log_softmax(x)
    if head is None or head >= lp.size:
        order = np.argsort(-lp, kind="stable")
    else:
        top = np.argpartition(-lp, head)[: head + 1]
        # the head in order (ties lower id first), including every id tied with the head's last value
        kth = np.sort(lp[top])[::-1][head - 1] if head > 0 else np.inf
        top = np.flatnonzero(lp >= kth)
        top = top[np.lexsort((top, -lp[top]))]
        rest = np.setdiff1d(np.arange(lp.size), top, assume_unique=True)
        order = np.concatenate([top, rest])
    order = order[np.isfinite(lp[order])]
    return order, lp[order]
