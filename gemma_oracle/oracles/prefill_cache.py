"""Prefill into a per-sequence cache next to live neighbours vs plain prefill (the seed's #283 item
`PrefillWithCache` vs `Prefill`).

* **plain**: a fresh sequence takes the whole prompt in one ``prefill`` call, then decodes ``next_token``.
* **per-sequence cache**: ``occupants`` other prompts are prefilled first and stay alive (so this sequence
  gets another cache slot, beside other caches, as in a batch); the prompt then goes in as two ``prefill``
  calls split at ``split`` (the cache carries the first part into the second); then the same decode.

Compared under ``policy``: the logits of the prompt's last position and those of the decode step. The
second pair checks what the cache *holds*, which the prefill logits alone would not show.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from gemma_oracle.oracles.compare import Comparison, Policy, check_logits_close
from gemma_oracle.engine.protocol import DecodeEngine

__all__ = ["PrefillCacheResult", "prefill_cache_vs_plain"]


@dataclass(frozen=True)
class PrefillCacheResult:
    engine: str
    policy: str
    comparisons: tuple[Comparison, ...]  # (last prompt position, decode step)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.comparisons)

    def assert_passed(self) -> None:
        if not self.passed:
            raise AssertionError(f"prefill with a per-sequence cache vs plain prefill on {self.engine}, policy "
                                 f"{self.policy}:\n" + "\n".join(f"  - {c.message}" for c in self.comparisons))


def prefill_cache_vs_plain(engine: DecodeEngine, prompt: Sequence[int], *, occupants: Sequence[Sequence[int]],
                           split: int, next_token: int, policy: Policy) -> PrefillCacheResult:
    if not 0 < split < len(prompt):
        raise ValueError(f"split must cut the prompt in two non-empty parts: 0 < split < {len(prompt)}, got {split}")
    if not occupants:
        raise ValueError("need at least one occupant: without neighbours the two sides share one situation")
    v = engine.vocab_size
    tokens = [int(t) for t in prompt]

    plain = engine.new_sequence()
    plain_logits = [np.array(engine.prefill(plain, tokens), copy=True)]
    plain_logits.append(np.array(engine.decode([plain], [int(next_token)]), copy=True).reshape(v))

    neighbours = [engine.new_sequence() for _ in occupants]  # held until the end: their slots stay taken
    for seq, other in zip(neighbours, occupants):
        engine.prefill(seq, [int(t) for t in other])
    cached = engine.new_sequence()
    engine.prefill(cached, tokens[:split])
    cached_logits = [np.array(engine.prefill(cached, tokens[split:]), copy=True)]
    cached_logits.append(np.array(engine.decode([cached], [int(next_token)]), copy=True).reshape(v))

    wheres = (f"last prompt position (pos {len(tokens) - 1})", f"decode of token {next_token} (pos {len(tokens)})")
    comparisons = tuple(
        check_logits_close(ref=p, cand=c, name_ref=f"{engine.name}[plain prefill]",
                           name_cand=f"{engine.name}[per-sequence cache, split {split}, {len(occupants)} neighbours]",
                           policy=policy, where=w)
        for p, c, w in zip(plain_logits, cached_logits, wheres))
    del neighbours, plain, cached
    return PrefillCacheResult(engine.name, policy.name, comparisons)
