"""A DecodeEngine over a completions server, where a sequence's state is its token history.

Every call is stateless: ``prefill`` sends the prompt, ``decode`` sends each sequence's whole history plus the new
token, always with ``max_tokens=1`` and ``temperature=0``, and reads back the log-probabilities of the next token.
What makes it fast is the server's prompt cache: a llama.cpp slot keeps the KV of the history it last saw, so a
decode step processes one new token per sequence. What makes it *right* is that nobody else's cache is reused:

* Prefill pins the sequence to a slot of its own (``id_slot``) and first scrubs that slot (a one-token request
  whose token differs from the prompt's first), so the prompt is always processed fresh, in one piece, the same way
  on every run; a dead sequence's slot is scrubbed too before the next request, so its stale history can never be
  picked up by a live sequence that happens to extend it (the golden run's single-user references would otherwise
  hand their KV to the batched candidates).
* ``prefill_batch`` of N prompts is ONE request too, with ``cache_prompt: false`` (every prompt processed whole),
  so llama.cpp queues its N tasks together and prefills them in one ``llama_decode`` (as many as the total token
  count needs ubatches). One request carries one ``id_slot``, so the placement is forced instead (``slot_placement``):
  each sequence's slot first gets a *key*, the shortest prefix of its prompt that makes it strictly the best
  match, by llama.cpp's own rule replayed here on what every slot holds (the engine tracks it), and never a slot
  that holds a live history. After the request ``/slots`` (when the server has it) must show each prompt's task in
  its slot. The fallback, N concurrent pinned requests (rarely one batch: the record says so), is used exactly
  when the placement cannot be forced: a slot outside the call holds a history that starts with a whole prompt of
  the call (a live sequence extending it), too many identical prompts for their length, or a server that is not
  llama.cpp (no slots to choose: one request, no placement).
* A decode step is ONE request carrying N prompts: llama.cpp posts its N tasks to its queue in one operation, so
  they are decoded together. (N concurrent single requests, the obvious way, were measured to land in one
  ``llama_decode`` in 2 of 30 steps at N=8: the server starts on the first request before the others arrive.)
  llama.cpp places each prompt in the idle slot with the longest common prefix, which, with the scrubbing above,
  is the sequence's own slot. Every row is checked: the server must report ``len(history) - 1`` cached tokens.
* When the server exposes llama.cpp's counters, each batched call is checked against them: ``n_decode_total`` must
  grow by exactly the forward passes the call needs, else the call is re-issued (safe: the requests are histories;
  a repeated history re-processes only its last token, at the same position), up to ``retries`` times, and
  ``last_batch()`` records what happened.

The transport (in-process xllamacpp or HTTP) is supplied by the engine modules that build on this one.
"""
from __future__ import annotations

import math
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol, Sequence

import numpy as np

from gemma_oracle.engine.adapters.completion_rows import dense_rows, ordered_choices, topk_rows
from gemma_oracle.engine.adapters.slot_placement import (
    DEFAULT_SIMILARITY,
    KeyPlan,
    PlacementImpossible,
    check_placed,
    plan_keys,
)
from gemma_oracle.engine.errors import GemmaOracleError
from gemma_oracle.engine.protocol import BatchRecord, TopKLogprobs

__all__ = ["BatchNotVerifiedError", "Counters", "HistoryEngine", "SlotAffinityError", "SlotsExhaustedError",
           "Transport"]


class SlotsExhaustedError(GemmaOracleError, ValueError):
    """More sequences at once than the server has slots."""


class SlotAffinityError(GemmaOracleError):
    """A decode row was not served from its own sequence's cached history (the numbers would not be the ones a
    token-by-token run gives)."""


class BatchNotVerifiedError(GemmaOracleError):
    """A batched call never ran as one batch within the allowed attempts (with ``strict_batch``)."""


@dataclass(frozen=True)
class Counters:
    """llama.cpp's cumulative counters: ``llama_decode`` calls and prompt tokens processed."""

    n_decode: int
    prompt_tokens: int


class Transport(Protocol):
    where: str  # the URL or "in-process ..." for messages

    def complete(self, body: dict) -> dict: ...

    def counters(self) -> Optional[Counters]: ...

    def slots(self) -> Optional[list]: ...   # llama.cpp's /slots, None where the server has none


@dataclass
class _Seq:
    """One sequence: its history and the slot it owns (None before prefill). Only the engine touches it."""

    history: list[int] = field(default_factory=list)
    slot: Optional[int] = None
    _finalizer: Any = None


class HistoryEngine:
    """See the module docstring. ``slots``: the server's parallel slots; ``topk`` 0 = dense [N, vocab] rows;
    ``ban_ids``: tokens never to *sample* (llama.cpp withholds an incomplete UTF-8 token's log-probabilities);
    ``pin_slots``: the server honours ``id_slot`` (llama.cpp); ``extra``: request fields added to every body;
    ``slot_similarity``: the server's ``slot_prompt_similarity`` (llama.cpp's default 0.1), which forced placement
    must beat."""

    output_logprobs = True

    def __init__(self, transport: Transport, *, name: str, vocab_size: int, slots: int, topk: int = 0,
                 ban_ids: Sequence[int] = (), pin_slots: bool = True, retries: int = 8, n_ubatch: int = 512,
                 extra: Optional[dict] = None, strict_batch: bool = False,
                 slot_similarity: float = DEFAULT_SIMILARITY):
        self.transport = transport
        self.name = name
        self.vocab_size = int(vocab_size)
        self.slots = int(slots)
        self.output_topk = int(topk)
        self.retries = int(retries)
        self.n_ubatch = int(n_ubatch)
        self.pin_slots = pin_slots
        self.strict_batch = strict_batch
        self.slot_similarity = float(slot_similarity)
        self._bias = [[int(i), False] for i in ban_ids]
        self._extra = dict(extra or {})
        self._owner: dict[int, int] = {}          # slot -> id of the live _Seq that owns it
        self._dirty: set[int] = set()             # slots whose owner died: scrub before the next request
        self._scrub_token: dict[int, int] = {}    # slot -> the one token it holds after a scrub
        self._held: dict[int, list[int]] = {}     # slot -> the tokens it holds (a slot keeps its last prompt)
        self.last_placement: str = ""             # how the last prefill_batch placed its prompts (for reports)
        self._lock = threading.Lock()
        self._last: Optional[BatchRecord] = None

    # ------------------------------------------------------------------ the protocol

    def new_sequence(self) -> _Seq:
        return _Seq()

    def prefill(self, seq: _Seq, tokens: Sequence[int]):
        return self._prefill([seq], [tokens], concurrent=False)

    def prefill_batch(self, seqs: Sequence[_Seq], prompts: Sequence[Sequence[int]]):
        """N prompts processed concurrently, each pinned to its own slot. The server may split them over several
        ``llama_decode`` calls (pinned requests arrive one by one); the record says so, and the call is re-run
        (slots scrubbed first, so every attempt starts fresh) up to ``retries`` times to get one batch."""
        return self._prefill(seqs, prompts, concurrent=True)

    def decode(self, seqs: Sequence[_Seq], tokens: Sequence[int]):
        n = len(seqs)
        if n != len(tokens) or n == 0:
            raise ValueError(f"{self.name}: decode needs one token per sequence, got {n} sequences and {len(tokens)} tokens")
        self._check_n(n)
        for s in seqs:
            if s.slot is None:
                raise ValueError(f"{self.name}: decode of a sequence that was never prefilled")
        if len({id(s) for s in seqs}) != n:
            raise ValueError(f"{self.name}: the same sequence twice in one decode step")
        for s, t in zip(seqs, tokens):
            s.history.append(int(t))
        histories = [list(s.history) for s in seqs]
        body = self._body(histories if n > 1 else histories[0])
        if n == 1 and self.pin_slots:
            body["id_slot"] = seqs[0].slot
        self._scrub_dirty(histories)

        expected_cached = sum(len(h) - 1 for h in histories)
        what = (f"decode of {n} histories: each should reuse all but its last token from its own slot "
                f"(does another live sequence's history extend one of them?)")
        # a multi-prompt response's ``usage`` is not per row (llama.cpp reports one task's), so N > 1 rows are checked
        # through the processed-token counter in _batched instead
        check = (lambda response: self._check_cached(response, expected_cached, what)) if n == 1 else (lambda r: None)
        rows = self._batched(body, n, min_calls=1, prompt_tokens=n, check=check, redo=None)
        for s, h in zip(seqs, histories):
            self._held[s.slot] = h   # checked above: each history ran in its own slot
        return rows

    def last_batch(self) -> Optional[BatchRecord]:
        return self._last

    # ------------------------------------------------------------------ internals

    def _check_n(self, n: int) -> None:
        if n > self.slots:
            raise SlotsExhaustedError(f"{self.name}: {n} sequences in one call but the server has {self.slots} slots; "
                                      f"raise slots (e.g. --engine llamacpp:slots={n}) to at least the largest N")

    def _body(self, prompt) -> dict:
        k = self.output_topk or self.vocab_size
        body = {"prompt": prompt, "max_tokens": 1, "temperature": 0, "logprobs": k, "n_probs": k,
                "cache_prompt": True, **self._extra}
        if self._bias:
            body["logit_bias"] = self._bias
        return body

    def _rows(self, response: dict, n: int):
        choices = ordered_choices(response, n, self.transport.where)
        if self.output_topk:
            return choices, topk_rows(choices, self.output_topk, self.transport.where)
        return choices, dense_rows(choices, self.vocab_size, self.transport.where)

    def _claim(self, seq: _Seq) -> int:
        with self._lock:
            if seq.slot is not None:   # a re-prefilled sequence starts over in its slot
                seq.history = []
                return seq.slot
            slot = next((s for s in range(self.slots) if s not in self._owner), None)
            if slot is None:
                raise SlotsExhaustedError(
                    f"{self.name}: all {self.slots} slots hold live sequences; raise slots to the number of sequences "
                    f"alive at once, or drop finished ones")
            self._owner[slot] = id(seq)
            seq.slot = slot
            seq._finalizer = weakref.finalize(seq, self._release, slot, id(seq))
            return slot

    def _release(self, slot: int, owner: int) -> None:
        with self._lock:
            if self._owner.get(slot) == owner:
                del self._owner[slot]
                self._dirty.add(slot)

    def _scrub(self, slot: int, avoid: set[int]) -> None:
        token = next(t for t in range(self.vocab_size) if t not in avoid)
        body = {"prompt": [token], "max_tokens": 1, "temperature": 0, "cache_prompt": True, "id_slot": slot}
        if self._bias:
            body["logit_bias"] = self._bias
        self.transport.complete(body)
        self._scrub_token[slot] = token
        self._held[slot] = [token]

    def _scrub_dirty(self, histories: Sequence[Sequence[int]]) -> None:
        """Overwrite dead sequences' slots with one token that starts no live history (see the module docstring)."""
        if not self.pin_slots:
            return
        with self._lock:
            dirty, self._dirty = sorted(self._dirty), set()
        avoid = {h[0] for h in histories if h}
        for slot in dirty:
            if slot not in self._owner:
                self._scrub(slot, avoid)

    def _prefill(self, seqs: Sequence[_Seq], prompts: Sequence[Sequence[int]], *, concurrent: bool):
        n = len(seqs)
        if n == 0 or n != len(prompts) or any(len(p) == 0 for p in prompts):
            raise ValueError(f"{self.name}: prefill needs one non-empty prompt per sequence")
        if len({id(s) for s in seqs}) != n:
            raise ValueError(f"{self.name}: the same sequence twice in one prefill_batch")
        self._check_n(n)
        slots = [self._claim(s) for s in seqs]
        prompts = [[int(t) for t in p] for p in prompts]
        total = sum(len(p) for p in prompts)
        min_calls = max(1, math.ceil(total / self.n_ubatch))   # the ubatches the total token count needs
        if n == 1 or not self.pin_slots:
            out = self._one_request(prompts, slots, min_calls=min_calls, total=total)
        else:
            try:
                out = self._forced(prompts, slots, min_calls=min_calls, total=total)
            except PlacementImpossible as exc:
                self.last_placement = f"fallback to {n} pinned requests: {exc}"
                out = self._pinned(prompts, slots, min_calls=min_calls, total=total)
        for s, p in zip(seqs, prompts):
            s.history = list(p)
        if concurrent:
            return out
        return out[0]

    def _fresh_check(self, n: int):
        return lambda response: self._check_cached(response, 0, f"prefill of {n} prompt(s) into scrubbed slots")

    def _one_request(self, prompts: list[list[int]], slots: list[int], *, min_calls: int, total: int):
        """One prompt pinned to its scrubbed slot, or N prompts to a server without slots (one request, no
        placement to force)."""
        n = len(prompts)

        def scrub_all():
            self._scrub_dirty(prompts)
            if self.pin_slots:   # fresh: the slot must share no prefix with the prompt
                self._scrub(slots[0], {prompts[0][0], self._scrub_token.get(slots[0], -1)})

        body = self._body(prompts[0] if n == 1 else prompts)
        if self.pin_slots:
            body["id_slot"] = slots[0]
        scrub_all()
        out = self._batched(body, n, min_calls=min_calls, prompt_tokens=total, check=self._fresh_check(n),
                            redo=scrub_all)
        if self.pin_slots:
            self._held[slots[0]] = prompts[0]
        self.last_placement = "one pinned request" if self.pin_slots else "one request (server without slots)"
        return out

    def _forced(self, prompts: list[list[int]], slots: list[int], *, min_calls: int, total: int):
        """N prompts in ONE request, each forced into its own slot by a key (``slot_placement``); raises
        PlacementImpossible, before anything is sent, when no keys can force it."""
        n = len(prompts)
        self._scrub_dirty(prompts)
        plan = self._plan(prompts, slots)

        def key_slots():
            for i, slot in enumerate(slots):
                body = {"prompt": list(plan.keys[i]), "max_tokens": 1, "temperature": 0, "cache_prompt": True,
                        "id_slot": slot}
                if self._bias:
                    body["logit_bias"] = self._bias
                self.transport.complete(body)
                self._held[slot] = list(plan.keys[i])

        def redo():   # an attempt that was not one batch left the prompts in their slots: key them again
            nonlocal plan
            plan = self._plan(prompts, slots)
            key_slots()

        body = self._body([prompts[i] for i in plan.order])
        body["cache_prompt"] = False   # each prompt processed whole, from position 0, whatever its slot held
        key_slots()
        rows = self._batched(body, n, min_calls=min_calls, prompt_tokens=total, check=self._fresh_check(n), redo=redo)
        listed = self.transport.slots() if hasattr(self.transport, "slots") else None
        if listed is not None:
            problem = check_placed(listed, plan, prompts, slots)
            if problem:
                raise SlotAffinityError(f"{self.transport.where}: prefill_batch of {n} prompts, forced by keys "
                                        f"{[list(k) for k in plan.keys]}, did not land as planned: {problem}")
        for slot, p in zip(slots, prompts):
            self._held[slot] = p
        keyed = ", ".join(f"{len(k)}/{len(p)}" for k, p in zip(plan.keys, prompts))
        self.last_placement = (f"one request, forced by keys of {keyed} tokens; "
                               + ("checked on /slots" if listed is not None else "not checked (no /slots)"))
        if self._last is not None:
            self._last = _with_detail(self._last, self.last_placement)
        inverse = np.argsort(np.asarray(plan.order))   # rows came back in request order
        return rows[inverse]

    def _plan(self, prompts: list[list[int]], slots: list[int]) -> KeyPlan:
        with self._lock:
            owners = dict(self._owner)
        held = {s: t for s, t in self._held.items() if s not in slots}

        def describe(slot):
            return f"slot {slot} ({'live' if slot in owners else 'free'})"
        return plan_keys(prompts, slots, held, threshold=self.slot_similarity, describe=describe)

    def _pinned(self, prompts: list[list[int]], slots: list[int], *, min_calls: int, total: int):
        """The fallback: N concurrent requests, each pinned to its scrubbed slot. llama.cpp starts on the first
        before the others arrive, so they are rarely one batch; the call is re-run (slots scrubbed first, so every
        attempt starts fresh) up to ``retries`` times, and the record says what happened."""
        n = len(prompts)
        firsts = {p[0] for p in prompts}

        def scrub_all():
            self._scrub_dirty(prompts)
            for slot in slots:   # fresh: the slot must share no prefix with the prompt
                self._scrub(slot, firsts | {self._scrub_token.get(slot, -1)})

        bodies = []
        for slot, p in zip(slots, prompts):
            b = self._body(p)
            b["id_slot"] = slot
            bodies.append(b)
        scrub_all()
        out = self._batched(bodies, n, min_calls=min_calls, prompt_tokens=total, check=self._fresh_check(n),
                            redo=scrub_all)
        for slot, p in zip(slots, prompts):
            self._held[slot] = p
        if self._last is not None:
            self._last = _with_detail(self._last, self.last_placement)
        return out

    def _send(self, body_or_bodies, n: int) -> dict:
        if isinstance(body_or_bodies, dict):
            return self.transport.complete(body_or_bodies)
        results: list[Any] = [None] * n
        errors: list[BaseException] = []
        barrier = threading.Barrier(n)

        def go(i):
            try:
                barrier.wait()
                results[i] = self.transport.complete(body_or_bodies[i])
            except BaseException as exc:  # re-raised in the caller's thread
                errors.append(exc)
        threads = [threading.Thread(target=go, args=(i,), daemon=True) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        # one response per prompt: merge them into one multi-choice response
        cached = [_cached_tokens(r) for r in results]
        usage = ({"prompt_tokens_details": {"cached_tokens": sum(cached)}} if None not in cached else {})
        return {"choices": [dict(r["choices"][0], index=i) for i, r in enumerate(results)], "usage": usage}

    def _check_cached(self, response: dict, expected: int, what: str) -> None:
        cached = _cached_tokens(response)
        if cached is not None and cached != expected:
            raise SlotAffinityError(f"{self.transport.where}: {what}: the server reused {cached} cached tokens, "
                                    f"expected {expected}")

    def _batched(self, body, n: int, *, min_calls: int, prompt_tokens: int, check: Callable, redo):
        attempts = 0
        while True:
            attempts += 1
            before = self.transport.counters()
            response = self._send(body, n)
            after = self.transport.counters()
            choices, rows = self._rows(response, n)
            check(response)
            if before is None or after is None:
                self._last = None
                return rows
            calls = after.n_decode - before.n_decode
            processed = after.prompt_tokens - before.prompt_tokens
            if processed != prompt_tokens:
                raise SlotAffinityError(f"{self.transport.where}: the server processed {processed} prompt tokens for "
                                        f"{n} row(s), expected {prompt_tokens}: a row did not land on its own slot")
            done = 0 < calls <= min_calls or attempts > self.retries
            if done:
                self._last = BatchRecord(
                    rows=n, forward_calls=calls, min_forward_calls=min_calls, attempts=attempts,
                    detail=f"llama.cpp n_decode_total +{calls}, prompt tokens +{processed} (expected {prompt_tokens}), "
                           f"from {self.transport.where} /metrics")
                if self.strict_batch and not self._last.batched:
                    raise BatchNotVerifiedError(f"{self.name}: {n} rows took {calls} llama_decode calls (at most "
                                                f"{min_calls} expected) in each of {attempts} attempts")
                return rows
            if redo is not None:
                redo()


def _with_detail(record: BatchRecord, more: str) -> BatchRecord:
    return BatchRecord(rows=record.rows, forward_calls=record.forward_calls, min_forward_calls=record.min_forward_calls,
                       attempts=record.attempts, detail=f"{record.detail}; {more}")


def _cached_tokens(choice_or_response: dict) -> Optional[int]:
    usage = choice_or_response.get("usage") if isinstance(choice_or_response, dict) else None
    if isinstance(usage, dict):
        details = usage.get("prompt_tokens_details") or {}
        if isinstance(details, dict) and isinstance(details.get("cached_tokens"), int):
            return details["cached_tokens"]
    return None
