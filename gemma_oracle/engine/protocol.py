"""The contract an engine meets to be put through the oracles, ours and outside ones alike.

Required members (``DecodeEngine``): ``name``, ``vocab_size``, ``new_sequence``, ``prefill``, ``decode``. Any object
with them qualifies (structural typing; ``isinstance(x, DecodeEngine)`` checks that the members exist, not their
signatures). Logits cross this boundary as host numpy arrays of any float dtype; the oracles never cast them before
an exact comparison.

Optional members, each grown from what an outside engine needs and met by our engines too (look them up with the
helpers below, never with ``hasattr`` ladders in callers):

* ``describe() -> dict``: the engine's configuration (build, slots, threads, KV type, route mode, ...), plain
  JSON-able values; stored beside every result row so a finding names what produced it.
* ``prefill_batch(seqs, prompts)``: N prompts processed in ONE step, each into its own fresh sequence; returns the
  logits of each prompt's last position, [N, vocab] (or ``TopKLogprobs`` of shape (N, k)).
* ``last_batch() -> BatchRecord | None``: what the last ``decode`` / ``prefill_batch`` call really did (how many
  forward passes the N rows took). An engine that offers it is held to it: a batched step that was not one batch is
  a finding, not a pass (a server that quietly re-processes whole prompts one by one is not batching).
* ``output_topk: int``: when set (> 0) the engine returns ``TopKLogprobs`` with that many entries per row instead of
  full-vocabulary logits (served engines: a compact transfer); the oracles then use the top-k metrics.
* ``output_logprobs: bool``: True when the rows are log-probabilities (log-softmax) rather than raw logits, as every
  served engine returns; comparisons against a logits reference then log-softmax the reference first.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

__all__ = ["BatchRecord", "DecodeEngine", "TopKLogprobs", "batch_record", "describe_engine", "output_logprobs",
           "output_topk", "prefill_batch_of"]


@runtime_checkable
class DecodeEngine(Protocol):
    """An engine that decodes many independent sequences, one step at a time.

    ``name`` identifies the engine in messages and in the reference memo key, so two engines that may give
    different logits must not share a name.
    """

    name: str
    vocab_size: int

    def new_sequence(self) -> Any:
        """Opaque per-sequence state (its own KV cache), empty."""
        ...

    def prefill(self, seq: Any, tokens: Sequence[int]) -> np.ndarray:
        """Run the prompt into ``seq``; return the logits [vocab] of the last prompt position."""
        ...

    def decode(self, seqs: Sequence[Any], tokens: Sequence[int]) -> np.ndarray:
        """ONE step for N sequences at once, each at its own position: feed tokens[i] to seqs[i].

        Returns logits [N, vocab]; row i = the logits after feeding tokens[i] to seqs[i].
        """
        ...


@dataclass(frozen=True)
class TopKLogprobs:
    """The k most likely next tokens of one row (shape (k,)) or of N rows (shape (N, k)), most likely first.

    ``ids`` are token ids (int64), ``logprobs`` their log-probabilities under the engine's full distribution
    (float64; finite). Entries outside the top k are *unknown*, not -inf: the top-k metrics never fill them in.
    """

    ids: np.ndarray
    logprobs: np.ndarray

    def __post_init__(self):
        ids = np.asarray(self.ids, dtype=np.int64)
        lp = np.asarray(self.logprobs, dtype=np.float64)
        if ids.shape != lp.shape or ids.ndim not in (1, 2):
            raise ValueError(f"TopKLogprobs: ids {ids.shape} and logprobs {lp.shape} must share one shape (k,) or (N, k)")
        object.__setattr__(self, "ids", ids)
        object.__setattr__(self, "logprobs", lp)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.ids.shape

    @property
    def k(self) -> int:
        return self.ids.shape[-1]

    def __len__(self) -> int:
        return self.ids.shape[0]

    def __getitem__(self, i) -> "TopKLogprobs":
        return TopKLogprobs(self.ids[i], self.logprobs[i])

    @classmethod
    def from_logits(cls, logits: np.ndarray, k: int) -> "TopKLogprobs":
        """The top k of dense logits [..., vocab] (log-softmax in float64; ties: lower id first)."""
        x = np.asarray(logits, dtype=np.float64)
        m = x.max(axis=-1, keepdims=True)
        lp = x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))
        order = np.argsort(-lp, axis=-1, kind="stable")[..., :k]
        return cls(order, np.take_along_axis(lp, order, axis=-1))


@dataclass(frozen=True)
class BatchRecord:
    """What one batched call really did: ``rows`` sequences went through ``forward_calls`` forward passes (for
    llama.cpp: ``llama_decode`` calls, from its own counters), where ``min_forward_calls`` is the fewest that could
    carry them together (1 for a decode step; for a batched prefill, the chunks or ubatches its longest prompt or
    its total token count needs). ``attempts`` > 1 when the engine retried the step to get one batch; ``detail``
    says how it was measured."""

    rows: int
    forward_calls: int
    min_forward_calls: int = 1
    attempts: int = 1
    detail: str = ""

    @property
    def batched(self) -> bool:
        """True when the rows really went through together (no more forward passes than batching them needs)."""
        return 0 < self.forward_calls <= self.min_forward_calls


def describe_engine(engine: Any) -> dict:
    """The engine's ``describe()`` (always with its ``name``), or just the name when it offers none."""
    info = dict(engine.describe()) if callable(getattr(engine, "describe", None)) else {}
    info.setdefault("name", engine.name)
    return info


def prefill_batch_of(engine: Any):
    """The engine's ``prefill_batch`` or None when it cannot process N prompts in one step."""
    fn = getattr(engine, "prefill_batch", None)
    return fn if callable(fn) else None


def batch_record(engine: Any) -> BatchRecord | None:
    """The engine's record of its last batched call, or None when it offers no such probe."""
    fn = getattr(engine, "last_batch", None)
    return fn() if callable(fn) else None


def output_topk(engine: Any) -> int:
    """k when the engine answers with ``TopKLogprobs``, 0 for full-vocabulary logits."""
    return int(getattr(engine, "output_topk", 0) or 0)


def output_logprobs(engine: Any) -> bool:
    """True when the engine's rows are log-probabilities, not raw logits."""
    return bool(getattr(engine, "output_logprobs", False))
