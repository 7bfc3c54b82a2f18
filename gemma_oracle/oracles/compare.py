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

from gemma_oracle.oracles.metrics import (
    argmax_agreement,
    kl_divergence,
    max_abs,
    nmse,
    screen_nonfinite,
    top1_top2_margin,
    topk,
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
    "Policy",
    "SEED_MMQ_POLICY",
    "check_logits_close",
    "exact",
    "first_divergence",
    "tolerance",
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

# Every named policy of the project's suites and stored runs, by the name stored in each result row
# (OracleRecord.policy): the report states each table's pass rule from here instead of repeating its numbers.
NAMED_POLICIES: dict[str, "Policy | CalibratedPolicy"] = {
    p.name: p for p in (exact(), FLOAT64_POLICY, CALIBRATED_POLICY, MMQ_POLICY, SEED_MMQ_POLICY)}


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

    def as_dict(self) -> dict:
        return asdict(self)


def _fmt_num(x: float) -> str:
    return f"{x:.3e}"


def _first_unequal(a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
    with np.errstate(invalid="ignore"):
        ne = a != b
    return int(ne.sum()), int(np.flatnonzero(ne)[0])


def check_logits_close(
    *,
    ref,
    cand,
    name_ref: str,
    name_cand: str,
    policy: Policy,
    where: str = "",
) -> Comparison:
    """Compare one pair of 1-D logits vectors under ``policy``; return the record (never raises on mismatch).

    The non-finite screen runs first and fails the pair on its own. A wrong shape is a failed record too.
    """
    a, b = np.asarray(ref), np.asarray(cand)
    head = f"{where}: " if where else ""
    sides = f"{name_cand} vs {name_ref}"

    if a.ndim != 1 or a.shape != b.shape:
        nan = float("nan")
        msg = (f"{head}{sides} FAILED {policy.name}: shape mismatch, expected two 1-D logits vectors of one "
               f"length, got {name_ref} {a.shape} and {name_cand} {b.shape}")
        return Comparison(where, name_ref, name_cand, policy.name, nan, nan, nan, -1, -1, False, False, nan, nan,
                          policy.topk, 0, "shape mismatch", False, msg)

    screen = screen_nonfinite(a, b)
    with np.errstate(all="ignore"):
        m_abs, m_nmse, m_kl = max_abs(a, b), nmse(a, b), kl_divergence(a, b)
        verdict = argmax_agreement(a, b, policy.near_tie_eps)
        overlap = topk_overlap(a, b, policy.topk)
        top_margin = top1_top2_margin(a)

    failures: list[str] = []
    if screen is not None:
        failures.append(screen)
    if policy.bitwise:
        if not np.array_equal(a, b):
            count, idx = _first_unequal(a, b)
            failures.append(f"not bitwise equal: {count} of {a.size} logits differ, first at token {idx}: "
                            f"{name_ref} {a[idx]!r} vs {name_cand} {b[idx]!r}")
    else:
        for label, value, bound in (("nmse", m_nmse, policy.nmse_max),
                                    ("max_abs", m_abs, policy.max_abs_max),
                                    ("kl", m_kl, policy.kl_max)):
            if bound is not None and not value <= bound:   # `not <=` also fails a NaN metric
                failures.append(f"{label} {_fmt_num(value)} > bound {bound:g}")
        if policy.require_argmax and not verdict.acceptable:
            failures.append(f"argmax {name_ref}={verdict.ref_token} vs {name_cand}={verdict.cand_token}, "
                            f"{name_ref} margin {verdict.margin:.6g} >= near-tie eps {policy.near_tie_eps:g}")
        required = min(policy.topk_min_overlap, a.size)   # a vocab smaller than k: the whole vocab
        if overlap < required:
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
    )


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
