"""Metrics on logits vectors: the numbers that oracles/compare.py turns into verdicts.

Every function takes a reference (``ref``) and a candidate (``cand``) or a single logits vector, works in float64
whatever the input dtype, and reduces over the LAST axis, so a leading batch axis ([N, vocab] or [T, vocab]) gives
one value per row. A 1-D input gives a Python scalar.

Order of use follows llama.cpp's test-backend-ops: :func:`screen_nonfinite` runs first; the other metrics assume
inputs that passed it (a NaN reaching them propagates as NaN, it is never hidden).

Tie rule used everywhere (argmax, top-k): among equal logits the LOWER token index wins, which is also what
``np.argmax`` does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import numpy as np

Scalar = Union[float, np.ndarray]

__all__ = [
    "ArgmaxVerdict",
    "argmax_agreement",
    "kl_divergence",
    "log_softmax",
    "max_abs",
    "nmse",
    "screen_nonfinite",
    "top1_top2_margin",
    "topk",
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
