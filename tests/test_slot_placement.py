"""The slot-placement planner (gemma_oracle.engine.adapters.slot_placement), on llama.cpp's rule replayed in
Python: the keys it makes put every prompt in its target, never in a live slot, and it refuses exactly where no key
can win. (The measured behaviour of the real server is tests/test_engine_llamacpp.py's.)"""
from __future__ import annotations

import pytest

from gemma_oracle.engine.adapters.slot_placement import (
    KeyPlan,
    PlacementImpossible,
    check_placed,
    place,
    plan_keys,
)


def test_the_replayed_rule_prefers_similarity_then_the_lower_id_and_skips_taken_and_empty_slots():
    held = {0: [], 1: [2, 7, 8], 2: [2, 7, 8], 3: [2, 7, 8, 9]}
    assert place([[2, 7, 8, 9, 10]], held, 0.1) == [3]             # 4/5 beats 3/5
    assert place([[2, 7, 8, 5]], held, 0.1) == [1]                 # a tie goes to the lower id
    assert place([[2, 7, 8, 5], [2, 7, 8, 5]], held, 0.1) == [1, 2]  # the second task cannot take slot 1 again
    assert place([[9] * 11], held, 0.1) == [None]                  # nothing above the threshold: llama.cpp's LRU


def test_keys_force_every_prompt_past_live_histories_that_share_its_start():
    live = {0: [2, 5, 6, 7, 8], 4: [2, 5, 6]}
    prompts = [[2, 5, 6, 1], [2, 9], [2, 5, 6, 7, 3, 3]]
    targets = [1, 2, 3]
    plan = plan_keys(prompts, targets, live)
    assert all(list(k) == p[:len(k)] for k, p in zip(plan.keys, prompts))
    state = {**live, **{t: list(k) for t, k in zip(targets, plan.keys)}}
    assert place([prompts[i] for i in plan.order], state, 0.1) == [targets[i] for i in plan.order]
    assert plan.order[0] == 2   # longest first


def test_identical_prompts_key_apart_by_order_and_id():
    plan = plan_keys([[2, 4, 4, 4]] * 3, [5, 6, 7], {0: [2, 9]})
    assert plan.order == (0, 1, 2) and [len(k) for k in plan.keys] == [2, 2, 2]   # beat slot 0's [2], tie upwards


def test_a_lower_live_slot_holding_the_whole_prompt_makes_it_impossible_a_higher_one_does_not():
    with pytest.raises(PlacementImpossible, match=r"slot 0 .*all 3 tokens of prompt 0"):
        plan_keys([[2, 5, 6], [2, 8]], [1, 2], {0: [2, 5, 6, 7]})
    plan = plan_keys([[2, 5, 6], [2, 8]], [1, 2], {3: [2, 5, 6, 7]})   # a tie with a higher id is won
    assert plan.keys[0] == (2, 5, 6)


def test_the_threshold_is_respected():
    plan = plan_keys([[2] + [3] * 29], [0], {}, threshold=0.1)
    assert len(plan.keys[0]) == 4          # 4/30 > 0.1, 3/30 is not
    with pytest.raises(PlacementImpossible, match="slot_prompt_similarity"):
        plan_keys([[2, 3]], [0], {}, threshold=1.0)


def test_check_placed_reads_slots():
    plan = KeyPlan(order=(1, 0), keys=((2,), (2, 3)))
    prompts, targets = [[2, 5], [2, 3, 4]], [4, 6]
    good = [{"id": 4, "id_task": 11, "n_prompt_tokens": 2}, {"id": 6, "id_task": 10, "n_prompt_tokens": 3}]
    assert check_placed(good, plan, prompts, targets) is None
    swapped = [{"id": 4, "id_task": 10, "n_prompt_tokens": 3}, {"id": 6, "id_task": 11, "n_prompt_tokens": 2}]
    assert check_placed(swapped, plan, prompts, targets).startswith("slot 6 shows task 11 with 2 prompt tokens")
    assert "no task for slot 6" in check_placed([{"id": 6}], plan, prompts, targets)
