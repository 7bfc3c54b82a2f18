"""One verdict class per engine x fixture x N, from the rows of a golden result: what a reader of a field report
needs first, with the policy and its thresholds printed beside it.

Classes, checked in this order (the first that holds is the class):

* ``bitwise``: every compared batched row is bit-identical to its single-user row (the engine is batch-invariant).
  Decided from the rows themselves (``Comparison.identical``), never from the policy: a result judged by a loose
  policy is still ``bitwise`` only when every row is identical, and a run under a bitwise policy that passes is
  bitwise by construction.
* ``close``: every row passed the policy (within the stated tolerance).
* ``near-tie flips``: the only failed check of every failing row is the argmax, and at each such row the reference's
  top-two margin is below the stated near-tie bound: the numbers are otherwise within tolerance and the flips are
  where the reference itself nearly ties.
* ``broken``: anything else (a bound broken, a flip at a clear margin, a non-finite value, a malformed row, or no
  row compared at all).

Beside the class, the flag ``not batched``: the engine's batch probe (gemma_oracle.engine.protocol.BatchRecord)
said some batched steps were not one batch, so the rows may be single-user rows in disguise; the count comes from
the caller (the field tests), and the flag says how many.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, Sequence, Union

from gemma_oracle.oracles.compare import NAMED_POLICIES, CalibratedPolicy, Comparison, Policy

__all__ = ["BITWISE", "BROKEN", "CLASSES", "CLOSE", "NEAR_TIE_FLIPS", "Verdict", "classify"]

BITWISE, CLOSE, NEAR_TIE_FLIPS, BROKEN = "bitwise", "close", "near-tie flips", "broken"
CLASSES = (BITWISE, CLOSE, NEAR_TIE_FLIPS, BROKEN)


@dataclass(frozen=True)
class Verdict:
    """The class of one engine x fixture x N. ``reason``: one line naming the worst row and the bound it broke (or,
    for a passing class, the row closest to its bound). ``thresholds``: the policy and its rule in words, plus the
    near-tie bound. ``not_batched``: batched steps the engine's probe said were not one batch (0: none, or no
    probe)."""

    klass: str
    reason: str
    thresholds: str
    rows: int
    not_batched: int = 0

    @property
    def flags(self) -> tuple[str, ...]:
        return (f"not batched ({self.not_batched} step(s))",) if self.not_batched else ()

    def line(self) -> str:
        """``class [flags] -- reason (thresholds)`` for a report table cell."""
        flags = "".join(f" [{f}]" for f in self.flags)
        return f"{self.klass}{flags} -- {self.reason} ({self.thresholds})"


def _policy_text(name: str, policy: Union[Policy, CalibratedPolicy, None]) -> str:
    policy = policy if policy is not None else NAMED_POLICIES.get(name)
    return f"policy {name}: {policy.describe()}" if policy is not None else f"policy {name}"


def _failure_text(c: Comparison) -> str:
    """The failure part of a record's message (between "FAILED <policy>: " and the numbers in brackets)."""
    msg = c.message
    marker = f"FAILED {c.policy}: "
    if marker in msg:
        msg = msg.split(marker, 1)[1]
    return msg.rsplit(" [", 1)[0]


def classify(
    result_or_comparisons: "Union[object, Sequence[Comparison]]",
    *,
    near_tie_eps: Optional[float] = None,
    not_batched: int = 0,
    policy: Union[Policy, CalibratedPolicy, None] = None,
) -> Verdict:
    """The verdict class of a GoldenResult (anything with ``comparisons`` and ``policy``) or of its comparisons.

    ``near_tie_eps``: the reference's top-two margin below which an argmax flip is a near-tie; default the
    policy's own ``near_tie_eps`` (a Policy), else 0.0 (no flip is excused). ``not_batched``: how many batched
    steps the engine's batch probe said were not one batch (the flag). ``policy``: the policy record, when its name
    is not one of NAMED_POLICIES (for the thresholds text).
    """
    comparisons: Sequence[Comparison] = tuple(getattr(result_or_comparisons, "comparisons", result_or_comparisons))
    name = getattr(result_or_comparisons, "policy", None) or (comparisons[0].policy if comparisons else "?")
    rule = policy if policy is not None else NAMED_POLICIES.get(name)
    if near_tie_eps is None:
        near_tie_eps = rule.near_tie_eps if isinstance(rule, Policy) else 0.0
    if not near_tie_eps >= 0:
        raise ValueError(f"near_tie_eps must be >= 0, got {near_tie_eps!r}")
    thresholds = f"{_policy_text(name, rule)}; near-tie bound: reference top-2 margin < {near_tie_eps:g}"

    def verdict(klass: str, reason: str) -> Verdict:
        return Verdict(klass, reason, thresholds, len(comparisons), int(not_batched))

    if not comparisons:
        return verdict(BROKEN, "no row was compared")
    total = len(comparisons)
    if all(c.identical for c in comparisons):
        return verdict(BITWISE, f"all {total} rows bit-identical to single-user")
    failures = [c for c in comparisons if not c.passed]
    if not failures:
        worst = max(comparisons, key=lambda c: (c.nmse, c.max_abs))
        return verdict(CLOSE, f"all {total} rows within tolerance; largest error at {worst.where}: "
                              f"nmse {worst.nmse:.3e}, max_abs {worst.max_abs:.3e}")

    def excused(c: Comparison) -> bool:
        return set(c.failed) == {"argmax"} and c.ref_top_margin < near_tie_eps

    hard = [c for c in failures if not excused(c)]
    if not hard:
        widest = max(failures, key=lambda c: c.ref_top_margin)
        return verdict(NEAR_TIE_FLIPS, f"{len(failures)}/{total} rows flip the argmax, all at near-ties; widest "
                                       f"reference margin {widest.ref_top_margin:.3g} < {near_tie_eps:g} at "
                                       f"{widest.where}")
    worst = max(hard, key=_severity)
    return verdict(BROKEN, f"{len(hard)}/{total} rows fail; worst at {worst.where}: {_failure_text(worst)}")


def _severity(c: Comparison) -> tuple:
    """Order failing rows for the one a report names: a non-finite or malformed row first, then the largest
    error against the bound it broke (NMSE, then max |d|)."""
    structural = bool({"nonfinite", "shape", "bitwise"} & set(c.failed))
    nmse = c.nmse if c.nmse == c.nmse else float("inf")
    max_abs = c.max_abs if c.max_abs == c.max_abs else float("inf")
    return (structural, nmse, max_abs)


def classify_all(results: Iterable, **kwargs) -> list[Verdict]:
    """:func:`classify` for each result of a sweep (one per engine x fixture x N)."""
    return [classify(r, **kwargs) for r in results]
