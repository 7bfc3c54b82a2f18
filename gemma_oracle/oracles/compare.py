"""Verdicts on logits: one policy record, one comparison routine, one greedy-path divergence check.

Shapes follow vLLM's tests/models/utils.py: keyword-only arguments, the two sides carry *names*, and the result
is a record whose ``message`` says where it happened, which sides, which numbers and which bounds. Nothing here
raises on a mismatch; callers (the golden comparison, a test's ``assert``) decide what to do with the record.

Bounds are inclusive (a metric passes when ``metric <= bound``, as in llama.cpp where only ``err > max_err``
fails); the near-tie rule is strict (``margin < near_tie_eps``, as in the seed project).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import numpy as np

from gemma_oracle.engine.protocol import TopKLogprobs
from gemma_oracle.oracles.metrics import (
    argmax_agreement,
    dense_as_topk,
    kl_divergence,
    log_softmax,
    max_abs,
    nmse,
    screen_nonfinite,
    top1_top2_margin,
    topk,
    topk_distance,
    topk_overlap,
)

__all__ = [
    "CALIBRATED_POLICY",
    "CalibratedPolicy",
    "Comparison",
    "Divergence",
    "FLOAT64_POLICY",
    "MMQ_POLICY",
    "NAMED_POLICIES",
    "OUTSIDE_F32_POLICY",
    "OUTSIDE_MAX_ABS_FACTOR",
    "OUTSIDE_NMSE_FACTOR",
    "OUTSIDE_QUANT_POLICY",
    "PINNED_POLICY",
    "Policy",
    "SEED_MMQ_POLICY",
    "as_logprobs",
    "check_logits_close",
    "exact",
    "first_divergence",
    "tolerance",
    "topk_side",
]


# --------------------------------------------------------------------------------------------------------------
# Policy
# --------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Policy:
    """A verdict rule. Build it with :meth:`exact` or :meth:`tolerance` (also exported as module functions).

    ``exact()`` (``bitwise=True``): the raw arrays must be equal value for value (``np.array_equal`` on the
    un-cast arrays, after the non-finite screen; -0.0 == 0.0, and a float32 value equals the same float64 value).
    The other fields then only say which metrics the record reports.
    ``tolerance``: every bound that is not None must hold; ``require_argmax`` applies the argmax-or-near-tie rule;
    ``topk_min_overlap`` > 0 requires that many shared tokens between the two top-``topk`` sets (capped at the
    vocab size, so a vocab smaller than ``topk`` needs the whole vocab).
    """

    name: str
    bitwise: bool = False
    nmse_max: Optional[float] = None
    max_abs_max: Optional[float] = None
    kl_max: Optional[float] = None
    near_tie_eps: float = 0.0
    require_argmax: bool = True
    topk: int = 5
    topk_min_overlap: int = 5

    def __post_init__(self):
        for field in ("nmse_max", "max_abs_max", "kl_max"):
            v = getattr(self, field)
            if v is not None and not v >= 0:
                raise ValueError(f"{field} must be >= 0 or None, got {v!r}")
        if not self.near_tie_eps >= 0:
            raise ValueError(f"near_tie_eps must be >= 0, got {self.near_tie_eps!r}")
        if self.topk < 0 or not 0 <= self.topk_min_overlap <= self.topk:
            raise ValueError(f"need 0 <= topk_min_overlap ({self.topk_min_overlap}) <= topk ({self.topk})")

    @classmethod
    def exact(cls, *, name: str = "exact", topk: int = 5) -> "Policy":
        return cls(name=name, bitwise=True, require_argmax=False, topk=topk, topk_min_overlap=0)

    @classmethod
    def tolerance(
        cls,
        *,
        nmse_max: Optional[float] = None,
        max_abs_max: Optional[float] = None,
        kl_max: Optional[float] = None,
        near_tie_eps: float = 0.0,
        require_argmax: bool = True,
        topk: int = 5,
        topk_min_overlap: int = 5,
        name: Optional[str] = None,
    ) -> "Policy":
        if name is None:
            parts = [f"{label}<={bound:g}" for label, bound in
                     (("nmse", nmse_max), ("max_abs", max_abs_max), ("kl", kl_max)) if bound is not None]
            if require_argmax:
                parts.append(f"argmax(eps={near_tie_eps:g})")
            if topk_min_overlap > 0:
                parts.append(f"top{topk}>={topk_min_overlap}")
            name = "tolerance(" + ", ".join(parts) + ")"
        return cls(name=name, bitwise=False, nmse_max=nmse_max, max_abs_max=max_abs_max, kl_max=kl_max,
                   near_tie_eps=near_tie_eps, require_argmax=require_argmax, topk=topk,
                   topk_min_overlap=topk_min_overlap)

    def describe(self) -> str:
        """The pass rule in words a reader of a report understands, e.g. "NMSE <= 1e-24, the same argmax
        (near-tie eps 0), top-5 sets share >= 5 tokens"."""
        if self.bitwise:
            return "bitwise equal logits (every value identical; NMSE and max |diff| exactly 0)"
        parts = [f"{label} <= {bound:g}" for label, bound in
                 (("NMSE", self.nmse_max), ("max |diff|", self.max_abs_max), ("KL", self.kl_max)) if bound is not None]
        if self.require_argmax:
            parts.append("the same argmax" + (f" unless the reference's top-2 margin < {self.near_tie_eps:g}"
                                              if self.near_tie_eps else ""))
        if self.topk_min_overlap > 0:
            parts.append(f"top-{self.topk} sets share >= {self.topk_min_overlap} tokens")
        return ", ".join(parts) or "no bound (reports its metrics only)"


exact = Policy.exact
tolerance = Policy.tolerance

# The project's "float64-level" policy: what two float64 numpy runs of the same model must meet when the only
# difference is summation order (single-user vs batched, or two float64 engines).
FLOAT64_POLICY = tolerance(
    # 1e-24 = (1e-12)²: NMSE is a squared relative error, so this allows an RMS relative error of 1e-12, about
    # 4500 float64 ulps (ulp(1.0) = 2**-52 ≈ 2.2e-16) of accumulated reordering error, while one float32 rounding
    # anywhere in the chain (relative ~6e-8, NMSE ~4e-15) fails it by nine orders of magnitude. For scale:
    # llama.cpp test-backend-ops uses 1e-7 for f32 ops and 5e-4 for MUL_MAT (quant-formats-and-kernels.md §5.1).
    nmse_max=1e-24,
    # 0.0: strict argmax equality, as the seed's dense Qwen3 oracles use (seed-project.md §3.1); the seed's
    # tie eps of 0.5-1.5 were for fp16/int8 GPU paths, far looser than float64 reordering.
    near_tie_eps=0.0,
    require_argmax=True,
    # top-5: vLLM check_logprobs_close uses num_logprobs=5 and the seed oracles compare top-5 sets
    # (quant-formats-and-kernels.md §5.3, seed-project.md §3.1); 5 of 5 = identical set at every step.
    topk=5,
    topk_min_overlap=5,
    name="float64",
)

# RETIRED fixed bounds, kept so stored runs that name them still render their rule; no suite uses them any more.
# They judged batched vs single-user with bounds fixed in advance, and the planted-bug suite
# (gemma_oracle/harness/suites/planted.py) shows what that passes: a skipped final softcap (monotonic: argmax and
# top-5 stay put), V taken from the normed K on a k_eq_v layer, an fp16 rounding of the FFN inputs from N >= 5
# (README "What the oracle catches"). Their replacement is CALIBRATED_POLICY below.
# "decode-mmq" (issue 6): argmax equal unless the reference's top-two margin is below 0.5, top-5 sharing at least
# 4 tokens, max |delta logit| <= 1.0, final-logit NMSE <= 5e-3 (issue 5's bound for Q8_1 paths).
MMQ_POLICY = tolerance(nmse_max=5e-3, max_abs_max=1.0, near_tie_eps=0.5, topk=5, topk_min_overlap=4, name="decode-mmq")
# "seed-12b-mmq": the seed's own tolerances for its 12B decode-MMQ oracle (seed-project.md).
SEED_MMQ_POLICY = tolerance(max_abs_max=5.0, near_tie_eps=1.5, topk=5, topk_min_overlap=3, name="seed-12b-mmq")


@dataclass(frozen=True)
class CalibratedPolicy:
    """A rule calibrated to a route's own noise, for routes that are not bitwise (decode-MMQ in auto mode, the
    12B stand-ins and the real 12B in auto mode, an outside quantized engine). Judged by
    gemma_oracle.oracles.calibrated.check_calibrated, which needs a third side, a more precise reference (the
    float64 engine; where that is too large, the same engine's float route): at each (sequence, step)

    * NMSE(ref, batched) <= nmse_factor x NMSE(ref, single-user) + nmse_floor,
    * max |ref - batched| <= max_abs_factor x max |ref - single-user| + max_abs_floor,
    * argmax(batched) == argmax(ref) wherever the reference's top-two margin exceeds twice that max-|d| bound.

    What it cannot see: a bug present identically in single-user decode (both errors grow together); an extra
    error below about the factor times the route's own noise at every position (on an int8 route an fp16
    rounding of one matmul family stays under the int8 noise); an error of the reference itself.
    ``bitwise`` and ``nmse_max`` let a report that reads policies by name treat it as a relative rule.
    """

    name: str
    nmse_factor: float
    nmse_floor: float
    max_abs_factor: float
    max_abs_floor: float
    topk: int = 5
    bitwise: bool = False
    nmse_max: Optional[float] = None

    def __post_init__(self):
        for field in ("nmse_factor", "nmse_floor", "max_abs_factor", "max_abs_floor"):
            if not getattr(self, field) >= 0:
                raise ValueError(f"{field} must be >= 0, got {getattr(self, field)!r}")
        if self.nmse_factor < 1 or self.max_abs_factor < 1:
            raise ValueError("a factor below 1 would fail a batched run that equals the single-user run")

    def describe(self) -> str:
        return (f"calibrated to the route's own noise, against a more precise reference at the same position: "
                f"batched NMSE <= {self.nmse_factor:g} x single-user NMSE + {self.nmse_floor:g}, batched "
                f"max |diff| <= {self.max_abs_factor:g} x single-user max |diff| + {self.max_abs_floor:g}, the "
                f"reference's argmax wherever its top-two margin exceeds twice that bound (blind to a bug that "
                f"single-user decode has too, and to extra error below ~{self.nmse_factor:g}x the route's noise)")


# The calibrated rule's constants. Measured on a route whose batch only reorders its arithmetic: the numpy32
# engine (float32 noise, single-user NMSE 3e-13..2e-12 against numpy64) on g4-12b-mini and g4-e2b-mini, 8
# mixed-length sequences (5..62 tokens) x 4 positions at N = 2, 3, 5, 8: the per-position ratio batched /
# single-user error was at most 3.0 (NMSE) and 2.3 (max |diff|) (tests/test_planted_bugs.py::
# test_noise_ratio_of_a_correct_noisy_route keeps that measurement). 10x NMSE (~3.2x RMS error) and 4x max |diff|
# leave ~3x and ~1.7x margin over it; the smallest planted bug exceeds its single-user NMSE by 2e5 x (fp16
# rounding from N >= 5), the others by 1e8 x or more.
CALIBRATED_NMSE_FACTOR = 10.0
CALIBRATED_MAX_ABS_FACTOR = 4.0
# Floors: a candidate whose single-user run equals the reference (error 0) may still differ from itself batched by
# float64 reordering. 1e-24 is FLOAT64_POLICY's NMSE bound; 1e-9 logit units is ~1e-10 relative on logits of size
# ~10, four orders below float32 rounding there (~1e-6), so no float32-sized error hides under the floor.
CALIBRATED_NMSE_FLOOR = 1e-24
CALIBRATED_MAX_ABS_FLOOR = 1e-9
CALIBRATED_POLICY = CalibratedPolicy(name="calibrated", nmse_factor=CALIBRATED_NMSE_FACTOR,
                                     nmse_floor=CALIBRATED_NMSE_FLOOR, max_abs_factor=CALIBRATED_MAX_ABS_FACTOR,
                                     max_abs_floor=CALIBRATED_MAX_ABS_FLOOR)

# Outside engines (llama.cpp and served OpenAI-compatible engines) judged by the calibrated rule against our float64
# engine, their rows log-probabilities (dense, output_logprobs, or TopKLogprobs; the reference is log-softmaxed
# first, gemma_oracle.oracles.calibrated). Measured 2026-12-06 with scripts/measure_llamacpp_batch_noise.py:
# xllamacpp b11549 (CPU, AVX2, 1 thread, F32 KV cache, flash attention off, n_parallel = N, N concurrent
# requests continuously batched; n_probs = vocab), synthetic g4-12b-mini and g4-e2b-mini, prompts of 62/20/9/40/
# 17/5/33/12 tokens x 3 seeds, 16 greedy tokens each; a batched row is compared while its greedy path equals the
# single-user one. Per position, batched error / single-user error, both against the numpy float64 engine, on
# log-probabilities (N = 2, 4, 5, 8; N = 1 is bit-identical, ratio 1):
#
#   fixture      weights  single NMSE   single max|d|  max NMSE ratio (N=2/4/5/8)     max |d| ratio (N=2/4/5/8)
#   g4-12b-mini  F32      <= 4.9e-8     <= 0.011       1.25 / 1.73 / 1.50 / 1.50      1.37 / 1.25 / 1.30 / 1.27
#   g4-e2b-mini  F32      <= 9.3e-8     <= 0.019       1.68 / 1.60 / 1.78 / 1.77      1.33 / 1.32 / 1.35 / 1.40
#   g4-12b-mini  Q4_K_M   <= 3.3e-4     <= 1.02        1.31 / 1.53 / 1.78 / 1.58      1.27 / 1.38 / 1.38 / 1.42
#   g4-e2b-mini  Q4_K_M   <= 6.4e-4     <= 1.35        1.31 / 1.36 / 1.42 / 1.64      1.28 / 1.70 / 1.70 / 1.70
#
# A second run of the same script (continuous batching is timing-dependent, so the batches differ run to run)
# gave max ratios 1.82 NMSE / 1.70 max |d| on the dense rows and, on each row's top 20 (NMSE over the 20 listed
# ids, max |d| lower bound: the metrics a served engine's answer allows), 3.06 / 1.87 (Q4_K_M) and 2.91 / 1.78 (F32).
# (3,573 batched positions in the first run; 0-88 % of the Q4_K_M rows and 0-9 % of the F32 rows bit-identical to single-user:
# llama.cpp's batched path is not batch-invariant but its batch noise is of the size of its single-user noise,
# as offline-references.md §3.5 found on the real Gemma 3 270M.) Argmax flips against the reference happen at
# the same rate single-user and batched (Q4_K_M N = 8: 22 batched, 21 single; all at reference margins far below
# the calibrated argmax rule's 2 x max-|d| bound), so only the ratios decide.
# Re-measured with every batched step verified as one llama_decode (the llamacpp engine of gemma-oracle check; the
# threaded requests above were batched by timing, unverified): keqv-window24 F32/Q4_K_M, g4-e2b-mini F32/Q4_K_M,
# g4-12b-mini Q4_K_M, N = 2, 4, 5, 8, T = 4: max ratios 1.52 NMSE / 1.23 max |d|
# (reports/history/2026-12-06-cpu-llamacpp-verified-batch-ratios.json).
# A second honest route: a float32 engine whose batched matmuls sum in another order than its single-user ones
# (the numpy32 engine of the planted-bug suite, its rows dressed as log-probabilities,
# gemma_oracle.harness.suites.planted.AsOutsideEngine), same float64 reference, 8 mixed-length prompts x 4
# positions at N = 2, 3, 5, 8: max ratios NMSE 8.4 / max |d| 2.4 on dense log-probabilities, 9.9 / 3.2 on its top
# 20 (NMSE over 20 ids has fewer degrees of freedom than over the vocabulary, so its per-position ratio spreads
# wider; the same holds for any engine that answers with top-k). An outside engine may batch like either, so the
# factors cover the larger: about 2x the worst honest ratio (20 over 9.9 NMSE, 6 over 3.2 max |d|). The smallest
# planted bug still exceeds its single-user NMSE by ~2e5 x (fp16 rounding from N >= 5). The two policies share
# the factors (the measured ratios did not depend on the weights' format: the single-user error carries the
# noise level into the bound) and differ in what they are blind to.
OUTSIDE_NMSE_FACTOR = 20.0
OUTSIDE_MAX_ABS_FACTOR = 6.0
OUTSIDE_F32_POLICY = CalibratedPolicy(
    name="outside-f32", nmse_factor=OUTSIDE_NMSE_FACTOR, nmse_floor=CALIBRATED_NMSE_FLOOR,
    max_abs_factor=OUTSIDE_MAX_ABS_FACTOR, max_abs_floor=CALIBRATED_MAX_ABS_FLOOR)
"""An outside engine on float weights (llama.cpp F32/BF16, a served engine in fp32), judged against our float64
engine on the same file: batched log-probability error <= 20 x single-user NMSE and <= 6 x single-user max |d|
at every position (measured honest ratios: llama.cpp <= 1.82 / 1.70 dense and <= 3.06 / 1.87 on its top 20, a
float32 engine reordering its sums <= 9.9 / 3.2; comment above). Its own noise is float32-sized (NMSE ~1e-7 on log-probabilities for llama.cpp), so a
batching bug adding more than ~20x that at some position fails: every planted bug does, by orders of magnitude.
What it cannot see: a bug in single-user decode too (both errors grow together); an extra error below ~20x the
engine's own noise at every position; the reference's own errors; on TopKLogprobs rows, anything outside the listed
ids (probability moved among tokens no side lists)."""

OUTSIDE_QUANT_POLICY = CalibratedPolicy(
    name="outside-quant", nmse_factor=OUTSIDE_NMSE_FACTOR, nmse_floor=CALIBRATED_NMSE_FLOOR,
    max_abs_factor=OUTSIDE_MAX_ABS_FACTOR, max_abs_floor=CALIBRATED_MAX_ABS_FLOOR)
"""An outside engine on quantized weights (llama.cpp Q4_K_M / Q8_0, whose matmuls also round activations to
Q8): the reference is our float64 engine on the SAME file (weights dequantized exactly), so what remains is the
engine's arithmetic noise, int8-sized (single-user NMSE 3e-4..6e-4, max |d logprob| up to 1.35 on the synthetic
fixtures; K-quant kernels change with the batch size, so the batched noise is a new draw of the same size).
Same factors as OUTSIDE_F32_POLICY (measured ratios for llama.cpp Q4_K_M <= 1.82 / 1.70 dense, <= 3.06 / 1.87
on its top 20). What it cannot see,
beyond OUTSIDE_F32_POLICY's list: any batching error below ~20x the int8 noise (NMSE ~1e-2 on log-probabilities
at the noisiest positions): an fp16 rounding of one matmul family (~1e-7), or a small semantic bug whose effect
is that small (the planted-bug suite's calibrated@int8 record shows which). Run the engine's F32 build under
OUTSIDE_F32_POLICY to see below that floor."""

# Every named policy of the project's suites and stored runs, by the name stored in each result row
# (OracleRecord.policy): the report states each table's pass rule from here instead of repeating its numbers.
# The auto mode's bitwise contract (gemma_oracle.oracles.pinned): batched at N against single-user on N's routes.
PINNED_POLICY = Policy.exact(name="pinned-exact")

NAMED_POLICIES: dict[str, "Policy | CalibratedPolicy"] = {
    p.name: p for p in (exact(), PINNED_POLICY, FLOAT64_POLICY, CALIBRATED_POLICY, OUTSIDE_F32_POLICY, OUTSIDE_QUANT_POLICY,
                        MMQ_POLICY, SEED_MMQ_POLICY)}


# --------------------------------------------------------------------------------------------------------------
# One logits pair
# --------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Comparison:
    """Everything measured for one (ref, cand) logits pair, plus the verdict under ``policy``.

    ``margin`` is the argmax rule's margin (ref logit of ref argmax minus ref logit of cand argmax; 0 when they
    agree); ``ref_top_margin`` is the reference's own top-1 minus top-2 gap (how close it was to a tie at all).
    ``single_nmse`` / ``single_max_abs``: the calibrated rule's third side, the single-user candidate against the
    reference (None for a two-sided comparison).

    ``kind`` = "dense" (full rows; logits, or log-probabilities on both sides after a logits side was
    log-softmaxed) or "topk" (a side was TopKLogprobs: gemma_oracle.oracles.metrics.topk_distance). On top-k rows
    ``max_abs`` is the rigorous lower bound of max |d logprob| (exact over the shared ids), ``nmse`` and ``kl`` are
    over the shared ids only (KL with each side renormalised over them), ``topk_overlap`` is the top-m
    containment (m = min(policy top-k, both sides' k)), ``shared`` the number of ids both sides list and
    ``max_abs_shared`` the exact max over them; both None on dense rows.

    ``identical``: the two candidate-side rows compared are bit-identical (two-sided: ref and cand; calibrated:
    the single-user and the batched row), None when unknown (a malformed pair). ``failed`` labels each broken
    check ("nonfinite", "bitwise", "nmse", "max_abs", "kl", "argmax", "topk"; "shape"), so a verdict class can
    tell an argmax flip from a broken bound without parsing the message (gemma_oracle.oracles.verdicts).
    """

    where: str
    name_ref: str
    name_cand: str
    policy: str
    max_abs: float
    nmse: float
    kl: float
    ref_argmax: int
    cand_argmax: int
    argmax_agree: bool
    near_tie: bool
    margin: float
    ref_top_margin: float
    topk: int
    topk_overlap: int
    nonfinite: Optional[str]
    passed: bool
    message: str
    single_nmse: Optional[float] = None
    single_max_abs: Optional[float] = None
    kind: str = "dense"
    shared: Optional[int] = None
    max_abs_shared: Optional[float] = None
    identical: Optional[bool] = None
    failed: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return asdict(self)


def _fmt_num(x: float) -> str:
    return f"{x:.3e}"


def _first_unequal(a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
    with np.errstate(invalid="ignore"):
        ne = a != b
    return int(ne.sum()), int(np.flatnonzero(ne)[0])


def as_logprobs(row, logprobs: bool) -> np.ndarray:
    """A dense row as log-probabilities: as it is when it already is (``logprobs``), else log-softmaxed."""
    return np.asarray(row) if logprobs else log_softmax(row)


def topk_side(row, *, logprobs: bool, vocab: Optional[int] = None,
              head: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """(ids, log-probabilities) of one row of either kind: a TopKLogprobs row as it is, a dense row as its whole
    vocabulary (gemma_oracle.oracles.metrics.dense_as_topk: ids looked up exactly; ``head`` ids in order)."""
    if isinstance(row, TopKLogprobs):
        if row.ids.ndim != 1:
            raise ValueError(f"expected one top-k row, got shape {row.shape}")
        return row.ids, row.logprobs
    return dense_as_topk(row, logprobs=logprobs, head=head)


def check_logits_close(
    *,
    ref,
    cand,
    name_ref: str,
    name_cand: str,
    policy: Policy,
    where: str = "",
    ref_logprobs: bool = False,
    cand_logprobs: bool = False,
) -> Comparison:
    """Compare one pair of rows under ``policy``; return the record (never raises on mismatch).

    Each side is a 1-D dense row (raw logits, or log-probabilities when its ``*_logprobs`` flag is set) or a
    ``TopKLogprobs`` row (always log-probabilities). Two dense rows of one kind are compared as they are. Two dense
    rows of different kinds: the logits side is log-softmaxed first (logits and log-probabilities differ by a
    per-row constant, so compared raw every value would differ). A top-k row on either side: the top-k metrics
    (:func:`_check_topk`), a dense side entering as its whole vocabulary, looked up exactly.

    The non-finite screen runs first and fails a dense pair on its own. A wrong shape is a failed record too.
    """
    if isinstance(ref, TopKLogprobs) or isinstance(cand, TopKLogprobs):
        return _check_topk(ref=ref, cand=cand, name_ref=name_ref, name_cand=name_cand, policy=policy, where=where,
                           ref_logprobs=ref_logprobs, cand_logprobs=cand_logprobs)
    a, b = np.asarray(ref), np.asarray(cand)
    if ref_logprobs != cand_logprobs and a.shape == b.shape:
        a, b = as_logprobs(a, ref_logprobs), as_logprobs(b, cand_logprobs)
    head = f"{where}: " if where else ""
    sides = f"{name_cand} vs {name_ref}"

    if a.ndim != 1 or a.shape != b.shape:
        nan = float("nan")
        msg = (f"{head}{sides} FAILED {policy.name}: shape mismatch, expected two 1-D logits vectors of one "
               f"length, got {name_ref} {a.shape} and {name_cand} {b.shape}")
        return Comparison(where, name_ref, name_cand, policy.name, nan, nan, nan, -1, -1, False, False, nan, nan,
                          policy.topk, 0, "shape mismatch", False, msg, failed=("shape",))

    screen = screen_nonfinite(a, b)
    with np.errstate(all="ignore"):
        m_abs, m_nmse, m_kl = max_abs(a, b), nmse(a, b), kl_divergence(a, b)
        verdict = argmax_agreement(a, b, policy.near_tie_eps)
        overlap = topk_overlap(a, b, policy.topk)
        top_margin = top1_top2_margin(a)

    failures: list[str] = []
    failed: list[str] = []   # one label per failure: nonfinite, bitwise, nmse, max_abs, kl, argmax, topk
    if screen is not None:
        failed.append("nonfinite")
        failures.append(screen)
    if policy.bitwise:
        if not np.array_equal(a, b):
            count, idx = _first_unequal(a, b)
            failed.append("bitwise")
            failures.append(f"not bitwise equal: {count} of {a.size} logits differ, first at token {idx}: "
                            f"{name_ref} {a[idx]!r} vs {name_cand} {b[idx]!r}")
    else:
        for label, value, bound in (("nmse", m_nmse, policy.nmse_max),
                                    ("max_abs", m_abs, policy.max_abs_max),
                                    ("kl", m_kl, policy.kl_max)):
            if bound is not None and not value <= bound:   # `not <=` also fails a NaN metric
                failed.append(label.split("(")[0])
                failures.append(f"{label} {_fmt_num(value)} > bound {bound:g}")
        if policy.require_argmax and not verdict.acceptable:
            failed.append("argmax")
            failures.append(f"argmax {name_ref}={verdict.ref_token} vs {name_cand}={verdict.cand_token}, "
                            f"{name_ref} margin {verdict.margin:.6g} >= near-tie eps {policy.near_tie_eps:g}")
        required = min(policy.topk_min_overlap, a.size)   # a vocab smaller than k: the whole vocab
        if overlap < required:
            failed.append("topk")
            failures.append(f"top-{policy.topk} overlap {overlap} < {required} "
                            f"({name_ref} {topk(a, policy.topk).tolist()}, "
                            f"{name_cand} {topk(b, policy.topk).tolist()})")

    numbers = (f"max_abs={_fmt_num(m_abs)} nmse={_fmt_num(m_nmse)} kl={_fmt_num(m_kl)} "
               f"argmax {name_ref}={verdict.ref_token} {name_cand}={verdict.cand_token} "
               f"top-{policy.topk} overlap={overlap}")
    passed = not failures
    if passed:
        message = f"{head}{sides} passed {policy.name} ({numbers})"
    else:
        message = f"{head}{sides} FAILED {policy.name}: " + "; ".join(failures) + f" [{numbers}]"
    return Comparison(
        where=where, name_ref=name_ref, name_cand=name_cand, policy=policy.name,
        max_abs=m_abs, nmse=m_nmse, kl=m_kl,
        ref_argmax=verdict.ref_token, cand_argmax=verdict.cand_token, argmax_agree=verdict.agree,
        near_tie=verdict.near_tie, margin=verdict.margin, ref_top_margin=top_margin,
        topk=policy.topk, topk_overlap=int(overlap), nonfinite=screen, passed=passed, message=message,
        identical=bool(np.array_equal(a, b)), failed=tuple(failed),
    )


def _check_topk(*, ref, cand, name_ref: str, name_cand: str, policy: Policy, where: str, ref_logprobs: bool,
                cand_logprobs: bool) -> Comparison:
    """:func:`check_logits_close` when a side is top-k rows. Bounds apply to the top-k metrics (Comparison says
    which): ``nmse_max`` to NMSE over the shared ids, ``max_abs_max`` to the rigorous lower bound of max |d|,
    ``kl_max`` to KL on the shared support; argmax is the two top-1 ids, a flip excused as a near-tie only when the
    candidate's top-1 is in the reference's list and the reference's own gap to it is < ``near_tie_eps``;
    containment is measured at m = min(policy top-k, both sides' k). Bitwise: equal ids and equal values (a dense
    side taken at the top-k side's k, as log-probabilities)."""
    head = f"{where}: " if where else ""
    sides = f"{name_cand} vs {name_ref}"
    try:
        # a dense side needs its head in order only as far as the other side lists ids (and the policy's top-k)
        k_of = {id(x): x.k for x in (ref, cand) if isinstance(x, TopKLogprobs)}
        head_len = max([policy.topk, *k_of.values()])
        ri, rv = topk_side(ref, logprobs=ref_logprobs, head=head_len)
        ci, cv = topk_side(cand, logprobs=cand_logprobs, head=head_len)
        d = topk_distance(ri, rv, ci, cv)
    except ValueError as exc:
        nan = float("nan")
        msg = f"{head}{sides} FAILED {policy.name}: not comparable top-k rows: {exc}"
        return Comparison(where, name_ref, name_cand, policy.name, nan, nan, nan, -1, -1, False, False, nan, nan,
                          policy.topk, 0, str(exc), False, msg, kind="topk",
                          failed=("shape",))

    # The argmax rule's margin: exact when the candidate's top-1 is in the reference's list, else only known to
    # be >= the reference's top-1 minus its k-th value, never an excuse (a near-tie must be shown, not assumed).
    listed = np.flatnonzero(ri == d.cand_top)
    margin = 0.0 if d.argmax_agree else (float(rv[0] - rv[listed[0]]) if listed.size else float(rv[0] - rv.min()))
    near_tie = (not d.argmax_agree) and listed.size > 0 and margin < policy.near_tie_eps
    mm = min(policy.topk, d.m)
    overlap = int(np.isin(ri[:mm], ci[:mm]).sum())

    both = isinstance(ref, TopKLogprobs) and isinstance(cand, TopKLogprobs)
    k = max(ri.size, ci.size) if both else min(ri.size, ci.size)
    identical = bool(np.array_equal(ri[:k], ci[:k]) and np.array_equal(rv[:k], cv[:k]))
    failures: list[str] = []
    failed: list[str] = []   # one label per failure: nonfinite, bitwise, nmse, max_abs, kl, argmax, topk
    if policy.bitwise:
        # Two top-k rows: the whole lists; a dense side: its top entries at the top-k side's k.
        if not identical:
            failed.append("bitwise")
            failures.append(f"not bitwise equal top-{k} rows: ids {name_ref} {ri[:k].tolist()} vs {name_cand} "
                            f"{ci[:k].tolist()}, max |d| over shared ids {d.max_abs_shared:.3e}")
    else:
        for label, value, bound in (("nmse(shared ids)", d.nmse_shared, policy.nmse_max),
                                    ("max_abs(lower bound)", d.max_abs_lower, policy.max_abs_max),
                                    ("kl(shared support)", d.kl_shared, policy.kl_max)):
            if bound is not None and not value <= bound:
                failed.append(label.split("(")[0])
                failures.append(f"{label} {_fmt_num(value)} > bound {bound:g}")
        if policy.require_argmax and not (d.argmax_agree or near_tie):
            failed.append("argmax")
            failures.append(f"argmax {name_ref}={d.ref_top} vs {name_cand}={d.cand_top}, {name_ref} margin "
                            f"{'>= ' if not listed.size else ''}{margin:.6g} >= near-tie eps {policy.near_tie_eps:g}")
        required = min(policy.topk_min_overlap, mm)
        if overlap < required:
            failed.append("topk")
            failures.append(f"top-{mm} containment {overlap} < {required} ({name_ref} {ri[:mm].tolist()}, "
                            f"{name_cand} {ci[:mm].tolist()})")

    numbers = (f"top-k: shared={d.shared} max_abs>={_fmt_num(d.max_abs_lower)} (shared {_fmt_num(d.max_abs_shared)}) "
               f"nmse(shared)={_fmt_num(d.nmse_shared)} kl(shared)={_fmt_num(d.kl_shared)} argmax {name_ref}="
               f"{d.ref_top} {name_cand}={d.cand_top} top-{mm} containment={overlap}")
    passed = not failures
    message = (f"{head}{sides} passed {policy.name} ({numbers})" if passed
               else f"{head}{sides} FAILED {policy.name}: " + "; ".join(failures) + f" [{numbers}]")
    return Comparison(where=where, name_ref=name_ref, name_cand=name_cand, policy=policy.name,
                      max_abs=d.max_abs_lower, nmse=d.nmse_shared, kl=d.kl_shared, ref_argmax=d.ref_top,
                      cand_argmax=d.cand_top, argmax_agree=d.argmax_agree, near_tie=near_tie, margin=margin,
                      ref_top_margin=d.ref_margin, topk=policy.topk, topk_overlap=overlap, nonfinite=None,
                      passed=passed, message=message, kind="topk", shared=d.shared,
                      max_abs_shared=d.max_abs_shared, identical=identical, failed=tuple(failed))


# --------------------------------------------------------------------------------------------------------------
# Two greedy paths (vLLM check_logprobs_close)
# --------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Divergence:
    """Where two token paths first differ and whether the split is acceptable.

    ``index`` is None when the compared prefix is identical; then the tokens and top-k flags are None too.
    ``matched_prefix`` = number of leading positions that agree. ``ref_in_cand_topk``: the reference's token is
    in the candidate's top-k at ``index``; ``cand_in_ref_topk`` the other way round.
    """

    name_ref: str
    name_cand: str
    index: Optional[int]
    ref_token: Optional[int]
    cand_token: Optional[int]
    ref_in_cand_topk: Optional[bool]
    cand_in_ref_topk: Optional[bool]
    k: int
    matched_prefix: int
    len_ref: int
    len_cand: int
    passed: bool
    message: str


def first_divergence(
    *,
    ref_tokens: Sequence[int],
    cand_tokens: Sequence[int],
    ref_logits,
    cand_logits,
    name_ref: str,
    name_cand: str,
    k: int = 5,
    where: str = "",
) -> Divergence:
    """vLLM's check_logprobs_close rule for two greedy paths.

    Paths must be identical up to the first differing position; there each side's token must be in the OTHER
    side's top-k (by that side's logits at that position); after it nothing is compared (the paths have split).
    ``*_logits`` are [T, vocab] with row t = the logits that produced token t. Paths of different lengths are
    compared over their common length, as vLLM's ``zip`` does; the message records both lengths.
    Raises ValueError only for misuse (logits with fewer rows than tokens, or not 2-D).
    """
    rt, ct = [int(t) for t in ref_tokens], [int(t) for t in cand_tokens]
    ra, ca = np.asarray(ref_logits), np.asarray(cand_logits)
    for label, toks, lg in (("ref", rt, ra), ("cand", ct, ca)):
        if lg.ndim != 2 or lg.shape[0] < len(toks):
            raise ValueError(f"{label}_logits must be [T >= {len(toks)}, vocab], got shape {lg.shape}")
    head = f"{where}: " if where else ""
    sides = f"{name_cand} vs {name_ref}"
    n = min(len(rt), len(ct))
    lengths = "" if len(rt) == len(ct) else f" (lengths differ: {name_ref} {len(rt)}, {name_cand} {len(ct)})"

    index = next((i for i in range(n) if rt[i] != ct[i]), None)
    if index is None:
        return Divergence(name_ref, name_cand, None, None, None, None, None, k, n, len(rt), len(ct), True,
                          f"{head}{sides}: identical greedy paths over {n} tokens{lengths}")

    ref_top, cand_top = topk(ra[index], k).tolist(), topk(ca[index], k).tolist()
    r_tok, c_tok = rt[index], ct[index]
    ref_in_cand, cand_in_ref = r_tok in cand_top, c_tok in ref_top
    passed = ref_in_cand and cand_in_ref
    verdict = "acceptable split" if passed else "FAILED"
    message = (f"{head}{sides} {verdict} at index {index} after a matched prefix of {index} tokens{lengths}: "
               f"{name_ref} token {r_tok} {'in' if ref_in_cand else 'NOT in'} {name_cand} top-{k} {cand_top}; "
               f"{name_cand} token {c_tok} {'in' if cand_in_ref else 'NOT in'} {name_ref} top-{k} {ref_top}")
    return Divergence(name_ref, name_cand, index, r_tok, c_tok, ref_in_cand, cand_in_ref, k, index, len(rt),
                      len(ct), passed, message)
