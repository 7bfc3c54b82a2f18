"""Where llama.cpp's server puts the prompts of ONE multi-prompt request, and how to make that the slots we chose.

llama.cpp (``get_available_slot`` in tools/server/server-context.cpp) places a request's N tasks one by one, in
prompt order. A task goes to the idle slot (not already taken by an earlier task) whose cached tokens share the
largest fraction of the task's prompt as a common prefix, ``float(lcp) / len(prompt)``, strictly above
``slot_prompt_similarity`` (0.1 unless the server was started otherwise) and strictly above the best so far, so ties
go to the lowest slot id; a slot that has never held tokens is never matched. When no slot passes, the task goes to
the least recently used idle slot, which may be one that holds a LIVE sequence's history: a fresh prompt written
there would destroy that history.

Measured on xllamacpp 2026.10.11549 (llama.cpp b11549), and relied on here:

* after a completion a slot holds exactly that request's prompt (the sampled token is not kept);
* a request with ``cache_prompt: false`` processes every prompt whole, from position 0, whatever its slot held,
  and the N prompts of one request are decoded together (one ``llama_decode`` when they fit one ubatch);
* ``/slots`` lists, per slot, the ``id_task`` of its last task and its ``n_prompt_tokens``; the tasks of one
  request have consecutive ids in prompt order;
* of two slots that match a prompt equally well, the lower slot id gets it.

So the placement can be FORCED, without a per-prompt ``id_slot`` (a request has one ``id_slot`` for all its
prompts): before the request, each target slot gets a *key*, a prefix of its own prompt just long enough to be
the best match for that prompt among the slots still idle when its task is placed (strictly better than any
lower slot id, at least as good as any higher one), and above the threshold. ``plan_keys`` computes the shortest such keys from what every slot holds, and proves the plan by
replaying llama.cpp's rule (``place``). Prompts are placed longest first, so a prompt that another one extends is
placed after it, when the longer one's slot is already taken.

A plan is impossible (``PlacementImpossible``) exactly when, for some prompt, a slot with a LOWER id than its
target, other than the targets of prompts placed before it, holds tokens that start with the WHOLE prompt (no key
can beat that: the best similarity is 1.0 and the tie goes to the lower id): a live sequence whose history extends
the prompt, or the key of a prompt of the same call placed after it (identical prompts, more of them than their
length can key apart); or when the server matches no similarity at all (threshold >= 1). The
engine then falls back to pinned requests (see ``history_engine``). ``check_placed`` verifies a placement after
the fact from ``/slots``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np

from gemma_oracle.engine.errors import GemmaOracleError

__all__ = ["DEFAULT_SIMILARITY", "KeyPlan", "PlacementImpossible", "check_placed", "common_prefix", "place",
           "plan_keys"]

DEFAULT_SIMILARITY = 0.1   # llama.cpp's --slot-prompt-similarity default


class PlacementImpossible(GemmaOracleError):
    """No keys make every prompt land in its target slot (the message says which prompt and which slot)."""


@dataclass(frozen=True)
class KeyPlan:
    """``order``: the prompt indices in the order they go into the request; ``keys[i]``: the tokens target slot
    ``targets[i]`` must hold before the request, a prefix of ``prompts[i]``."""

    order: tuple[int, ...]
    keys: tuple[tuple[int, ...], ...]


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _similarity(lcp: int, length: int) -> np.float32:
    # llama.cpp computes it in float and compares with a float threshold: do the same, so the edge cases agree
    return np.float32(lcp) / np.float32(length)


def place(prompts: Sequence[Sequence[int]], held: Mapping[int, Sequence[int]], threshold: float) -> list[Optional[int]]:
    """llama.cpp's similarity rule replayed: the slot each prompt of one request (in request order) goes to, given
    what every slot holds; None where no slot passes the threshold (llama.cpp would then pick by LRU, which this
    module never relies on)."""
    taken: set[int] = set()
    out: list[Optional[int]] = []
    thr = np.float32(threshold)
    for p in prompts:
        best, best_sim = None, np.float32(0)
        for slot in sorted(held):
            tokens = held[slot]
            if slot in taken or not tokens:
                continue
            sim = _similarity(common_prefix(tokens, p), len(p))
            if sim > best_sim and sim > thr:
                best, best_sim = slot, sim
        out.append(best)
        if best is not None:
            taken.add(best)
    return out


def _shortest_above(length: int, threshold: float) -> int:
    thr = np.float32(threshold)
    for m in range(1, length + 1):
        if _similarity(m, length) > thr:
            return m
    return length + 1


def plan_keys(prompts: Sequence[Sequence[int]], targets: Sequence[int], held: Mapping[int, Sequence[int]], *,
              threshold: float = DEFAULT_SIMILARITY, describe=lambda slot: f"slot {slot}") -> KeyPlan:
    """The shortest keys that force ``prompts[i]`` into slot ``targets[i]`` (see the module docstring). ``held``:
    what every slot holds now (a slot not in it, or empty, has never held tokens); what the targets hold is
    irrelevant, the keys replace it. ``describe(slot)`` names a slot in the error ("slot 3 (live)")."""
    n = len(prompts)
    if n != len(targets) or len(set(targets)) != n or any(len(p) == 0 for p in prompts):
        raise ValueError(f"plan_keys needs one non-empty prompt per distinct target slot, got {n} prompts for "
                         f"targets {list(targets)}")
    order = tuple(sorted(range(n), key=lambda i: (-len(prompts[i]), i)))
    others = {s: list(t) for s, t in held.items() if s not in set(targets) and t}
    keys: dict[int, list[int]] = {}
    # backwards: the task placed k-th competes with the non-target slots and with the targets of the tasks placed
    # after it (their keys, already chosen); the targets of earlier tasks are taken by then
    for k in range(n - 1, -1, -1):
        i = order[k]
        p = [int(t) for t in prompts[i]]
        rivals = dict(others)
        rivals.update({targets[j]: keys[j] for j in order[k + 1:]})
        # a rival with a lower id must be beaten, one with a higher id only matched (ties go to the lower id)
        best_slot, need = None, 1
        for slot, tokens in sorted(rivals.items()):
            lcp = common_prefix(tokens, p) + (1 if slot < targets[i] else 0)
            if lcp > need:
                best_slot, need = slot, lcp
        m = max(need, _shortest_above(len(p), threshold))
        if m > len(p):
            why = (f"{describe(best_slot)} holds tokens that start with all {len(p)} tokens of prompt {i}"
                   if need > len(p) else
                   f"the server's slot_prompt_similarity {threshold} leaves no key of a {len(p)}-token prompt above it")
            raise PlacementImpossible(f"prompt {i} cannot be forced into slot {targets[i]}: {why}")
        keys[i] = p[:m]
    plan = KeyPlan(order=order, keys=tuple(tuple(keys[i]) for i in range(n)))
    # the proof: llama.cpp's own rule, replayed on the state the keys create, puts every prompt where we want it
    state = {**others, **{targets[i]: list(plan.keys[i]) for i in range(n)}}
    landed = place([prompts[i] for i in order], state, threshold)
    want = [targets[i] for i in order]
    if landed != want:   # a bug here, not in the server: the keys were built to make this hold
        raise AssertionError(f"plan_keys: keys {plan.keys} place the prompts in {landed}, not {want}")
    return plan


def check_placed(slots: Sequence[dict], plan: KeyPlan, prompts: Sequence[Sequence[int]],
                 targets: Sequence[int]) -> Optional[str]:
    """What ``/slots`` shows against the plan, after the request: None when every target slot ran its prompt (its
    last task is the request's task for that prompt: consecutive ids in request order, with the prompt's length),
    else a sentence saying what differs."""
    by_id = {int(s["id"]): s for s in slots if isinstance(s, dict) and "id" in s}
    first = by_id.get(targets[plan.order[0]], {}).get("id_task")
    if not isinstance(first, int):
        return f"/slots has no task for slot {targets[plan.order[0]]}"
    for k, i in enumerate(plan.order):
        entry = by_id.get(targets[i], {})
        got = (entry.get("id_task"), entry.get("n_prompt_tokens"))
        if got != (first + k, len(prompts[i])):
            return (f"slot {targets[i]} shows task {got[0]} with {got[1]} prompt tokens, expected task {first + k} "
                    f"(prompt {i}, {len(prompts[i])} tokens)")
    return None
