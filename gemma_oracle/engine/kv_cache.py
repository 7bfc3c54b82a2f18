"""Per-sequence KV caches: a ring buffer for sliding layers, a growing array for global layers.

A sliding ring holds `window + chunk - 1` slots, not `window`: a prefill chunk of `chunk` tokens is
written before its rows attend, and the first row of the chunk still needs the `window - 1` keys
before it. Decode (chunk 1) then uses exactly `window` + (chunk - 1) spare slots; the ring wraps.
KV-shared layers own no cache: they read their source layer's (gemma_oracle.engine.config kv_source).
"""
from __future__ import annotations

import numpy as np

# A global layer's cache starts with this many slots (or the context, if shorter) and doubles when a write reaches
# its end (LayerKV._grow): growth_positions lists where. The suites' input plans (gemma_oracle.harness.suites.inputs)
# read both, so their prompts cross every growth step.
GLOBAL_INITIAL_CAPACITY = 64


def growth_positions(max_len: int) -> tuple[int, ...]:
    """The positions whose write makes a global LayerKV of context `max_len` grow (writes in position order: a write
    at position p >= capacity)."""
    out, cap = [], min(GLOBAL_INITIAL_CAPACITY, max_len)
    while cap < max_len:
        out.append(cap)
        cap = min(cap * 2, max_len)
    return tuple(out)


class LayerKV:
    def __init__(self, backend, n_kv_heads: int, head_dim: int, *, ring_capacity: int | None, max_len: int):
        self.backend, self.shape = backend, (n_kv_heads, head_dim)
        self.ring = ring_capacity is not None
        self.max_len = max_len
        cap = ring_capacity if self.ring else min(GLOBAL_INITIAL_CAPACITY, max_len)
        self.k = backend.zeros((cap, *self.shape))
        self.v = backend.zeros((cap, *self.shape))
        self.pos = np.full(cap, -1, dtype=np.int64)  # position held by each slot (-1: empty)

    def clone(self) -> "LayerKV":
        twin = object.__new__(LayerKV)
        twin.__dict__.update(self.__dict__)
        twin.k, twin.v, twin.pos = self.k.copy(), self.v.copy(), self.pos.copy()
        return twin

    @property
    def capacity(self) -> int:
        return self.pos.shape[0]

    def _grow(self, needed: int) -> None:
        cap = self.capacity
        while cap < needed:
            cap *= 2
        cap = min(cap, self.max_len)
        for name in ("k", "v"):
            old = getattr(self, name)
            new = self.backend.zeros((cap, *self.shape))
            new[: old.shape[0]] = old
            setattr(self, name, new)
        self.pos = np.concatenate([self.pos, np.full(cap - self.pos.shape[0], -1, dtype=np.int64)])

    def write(self, position: int, k, v) -> None:
        if position >= self.max_len:
            raise ValueError(f"position {position} is beyond the model's context length {self.max_len}")
        if self.ring:
            slot = position % self.capacity
        else:
            if position >= self.capacity:
                self._grow(position + 1)
            slot = position
        self.k[slot], self.v[slot], self.pos[slot] = k, v, position

    def visible(self, position: int, window: int | None):
        """Keys and values a query at `position` attends to (causal; and p - j < window when sliding),
        in position order so the reduction order depends only on the sequence's own context."""
        ok = (self.pos >= 0) & (self.pos <= position)
        if window is not None:
            ok &= position - self.pos < window
        idx = np.nonzero(ok)[0]
        idx = idx[np.argsort(self.pos[idx], kind="stable")]
        if window is not None and self.ring and idx.size and idx.size < min(window, position + 1):
            raise AssertionError(f"sliding ring lost keys: {idx.size} visible at position {position}, window {window}")
        return self.k[idx], self.v[idx]


class SequenceState:
    """One sequence: its caches (one per KV-owning layer) and the position of its next token."""

    def __init__(self, cfg, backend, *, prefill_chunk: int):
        self.length = 0
        self.layers: dict[int, LayerKV] = {}
        max_len = cfg.context_length or 1 << 20
        for i in range(cfg.n_layers):
            if not cfg.owns_kv(i):
                continue
            ring = cfg.sliding_window + prefill_chunk - 1 if cfg.layer_is_sliding[i] else None
            self.layers[i] = LayerKV(backend, cfg.n_kv_heads[i], cfg.head_dim(i), ring_capacity=ring, max_len=max_len)

    def clone(self) -> "SequenceState":
        twin = object.__new__(SequenceState)
        twin.length = self.length
        twin.layers = {i: kv.clone() for i, kv in self.layers.items()}
        return twin

    def restore(self, other: "SequenceState") -> None:
        """Become a copy of `other` (used by the engine's prompt memo)."""
        self.length = other.length
        self.layers = {i: kv.clone() for i, kv in other.layers.items()}
