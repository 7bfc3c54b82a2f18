"""The contract an engine meets to be put through the golden single-vs-batched comparison.

Any object with these members qualifies (structural typing; ``isinstance(x, DecodeEngine)`` checks that the
members exist, not their signatures). Logits cross this boundary as host numpy arrays of any float dtype; the
oracles never cast them before an exact comparison.
"""
from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

__all__ = ["DecodeEngine"]


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
