"""The pinned contract: a router's batch against single-user decode on the batch's own routes, bitwise.

Our GPU engine's kernels (WS, GEMM-N, decode-MMQ, attention, norms) each fix their reduction order by the shape,
never by the row count; only the router's CHOICE of kernel depends on N (gemma_oracle.engine.routing). So an
auto-mode step of N rows must give, row for row, the very bits of single-user decode with the routes of an N-row
step pinned (route mode ``auto@N``). That is a bitwise contract for the fast mode, where the plain single-user
comparison can only be calibrated to the noise of the route switch (gemma_oracle.oracles.calibrated), and so cannot
see a batching bug smaller than int8 noise (the planted-bug suite's ``calibrated@int8`` column): under the pinned
contract such a bug flips bits and fails.

It needs an engine that can pin its routes; outside engines cannot, and keep the calibrated rule. It does not judge
the routes' own accuracy (a route that is wrong alone is wrong in the twin too): the calibrated comparison against
the float64 reference does, beside it.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

from gemma_oracle.engine.protocol import DecodeEngine
from gemma_oracle.oracles.compare import PINNED_POLICY
from gemma_oracle.oracles.single_vs_batched import GoldenResult, RefCache, golden_single_vs_batched

__all__ = ["PINNED_POLICY", "pinned_single_vs_batched"]


def pinned_single_vs_batched(engine: DecodeEngine, prompts: Sequence[Sequence[int]],
                             forced: Sequence[Sequence[int]], *, pinned: Callable[[int], DecodeEngine],
                             cache: Optional[RefCache] = None) -> GoldenResult:
    """The golden protocol (gemma_oracle.oracles.single_vs_batched) with ``pinned(N)``, the candidate's twin whose
    decode steps take the routes of an N-row step, running each sequence alone; every row must be bitwise equal."""
    twin = pinned(len(prompts))
    if twin.name == engine.name:
        raise ValueError(f"pinned({len(prompts)}) returned an engine named as the candidate ({engine.name!r}): the "
                         f"memo of single-user runs would mix the two")
    return golden_single_vs_batched(engine, prompts, forced, policy=PINNED_POLICY, reference_engine=twin, cache=cache)
