"""The input plans (gemma_oracle.harness.suites.inputs) reach every path: each preset's cases cross every window, ring,
cache-growth and split-KV boundary and the context's end during a batched decode step, with mixed and equal lengths,
at N around every route switch point and at 2 and 3; and the boundaries are the engines' own."""
from __future__ import annotations

import numpy as np
import pytest

from gemma_oracle.engine import kv_cache
from gemma_oracle.engine.backends import make_backend
from gemma_oracle.engine.engine import PREFILL_CHUNK
from gemma_oracle.harness.fixtures.presets import PRESETS
from gemma_oracle.harness.fixtures.tokenizer_table import small_vocab
from gemma_oracle.harness.pytest_plugin.xdist_groups import model_group
from gemma_oracle.harness.suites import inputs
from gemma_oracle.harness.suites.synthetic import (BOUNDARY_N, GPU_BOUNDARY_N, GPU_N_LIST, N_LIST, cases,
                                                   preset_plans, sequences)

VOCAB = len(small_vocab().tokens)
CPU_CASES = cases()
GPU_CASES = cases(n_list=GPU_N_LIST, boundary_n=GPU_BOUNDARY_N)

# Written out by hand from the presets (window, window + chunk 8 - 1, the reference cache's 64-slot start doubling
# to the context, split-KV chunks of 64 starting at 64 and 128, the context's last position), not by the code under
# test.
HAND_BOUNDARIES = {
    "keqv-mixed": {64, 128, 255},  # window 256 = context: no sliding boundary
    "keqv-all-global": {64, 128, 255},
    "keqv-window24": {24, 31, 64, 128, 255},
    "g4-12b-mini": {16, 23, 64, 128, 256, 511},
    "g4-e4b-mini": {12, 19, 64, 128, 256, 511},
    "g4-e2b-mini": {8, 15, 64, 128, 256, 511},
}


def _config(preset: str):
    return PRESETS[preset].config(VOCAB)


def _crossed(case_list, preset: str) -> set[int]:
    return {b for c in case_list if c.preset == preset for b in c.input_plan.crossed(c.n)}


def test_every_preset_has_its_hand_written_boundaries():
    assert set(HAND_BOUNDARIES) == set(PRESETS)
    for preset, expected in HAND_BOUNDARIES.items():
        assert {b.position for b in inputs.boundaries(_config(preset))} == expected, preset


@pytest.mark.parametrize("suite", ["cpu", "gpu"])
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_cases_cross_every_boundary_during_a_batched_step(preset, suite):
    """Some case of the preset has a sequence whose batched decode step writes the boundary's position."""
    case_list = CPU_CASES if suite == "cpu" else GPU_CASES
    missed = {b.position for b in inputs.boundaries(_config(preset))} - _crossed(case_list, preset)
    assert not missed, f"{preset} ({suite}): no batched decode step reaches positions {sorted(missed)}"


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_no_plan_runs_past_the_context(preset):
    ctx = _config(preset).context_length
    for plan in preset_plans(preset):
        assert len(plan.lengths) == inputs.PLAN_ROWS and min(plan.lengths) >= 1
        assert max(plan.lengths) + plan.steps - 1 <= ctx - 1, plan.name


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_mixed_and_equal_lengths_at_two_and_three(preset):
    """Every boundary plan family runs with mixed lengths (rows crossing at different steps) and with equal lengths,
    and the mixed ones are already mixed at N = 2."""
    mine = [c for c in CPU_CASES if c.preset == preset]
    names = {c.plan for c in mine}
    assert {"short", "growth-mixed", "growth-equal", "far-mixed"} <= names
    if HAND_BOUNDARIES[preset] & {8, 12, 15, 16, 19, 23, 24, 31}:  # a preset that slides within its context
        assert {"sliding-mixed", "sliding-equal"} <= names
    for c in mine:
        plan = c.input_plan
        if plan.name.endswith("-mixed"):
            assert plan.mixed(2), plan.name
        if plan.name.endswith("-equal"):
            assert not plan.mixed(inputs.PLAN_ROWS), plan.name
    for name in names - {"short"}:
        assert {2, 3} <= {c.n for c in mine if c.plan == name}, name


def test_a_k_eq_v_preset_has_a_window_shorter_than_its_context():
    """keqv-window24: the global k_eq_v layer sees past the window, and its ring wraps within the context."""
    cfg = _config("keqv-window24")
    assert any(cfg.layer_k_eq_v) and cfg.sliding_window < cfg.context_length
    crossed = _crossed(CPU_CASES, "keqv-window24")
    assert {24, 31} <= crossed  # window, ring (24 + 7)


def test_boundaries_are_the_engines_own():
    """The ring boundary is the reference cache's ring capacity, the growth positions those where a real LayerKV
    grows, and every growth happens where a sequence's batched step writes."""
    backend = make_backend("numpy64")
    cfg = _config("keqv-window24")
    state = kv_cache.SequenceState(cfg, backend, prefill_chunk=PREFILL_CHUNK)
    ring = {b.position for b in inputs.boundaries(cfg) if b.kind == inputs.RING}
    assert ring == {state.layers[0].capacity} == {cfg.sliding_window + PREFILL_CHUNK - 1}
    layer = state.layers[1]  # global
    grew, cap = [], layer.capacity
    for p in range(cfg.context_length):
        layer.write(p, np.zeros(layer.shape), np.zeros(layer.shape))
        if layer.capacity != cap:
            grew.append(p)
            cap = layer.capacity
    assert tuple(grew) == kv_cache.growth_positions(cfg.context_length) == (64, 128)


def test_batch_sizes_surround_every_route_switch_point():
    points = inputs.route_switch_points()
    assert {3, 5, 9, 17} <= set(points)  # decode-MMQ from N = 3 (auto), WS capacities 4 / 8 / 16, GEMM-N from 17
    for ns, top in ((N_LIST, 17), (GPU_N_LIST, 32)):
        assert {2, 3} <= set(ns)
        for p in points:
            if p <= top:
                assert {p - 1, p} - {0} <= set(ns), (p, ns)
    assert {2, 3} <= set(BOUNDARY_N) and set(GPU_BOUNDARY_N) == set(GPU_N_LIST) - {1}


def test_sequences_follow_the_lengths():
    lengths = (1, 7, 64, 9)
    prompts, forced = inputs.make_sequences(VOCAB, lengths, 3, seed=5)
    assert [len(p) for p in prompts] == list(lengths) and all(len(f) == 3 for f in forced)
    assert all(p[0] == inputs.BOS for p in prompts)
    tokens = [t for p in prompts for t in p[1:]] + [t for f in forced for t in f]
    assert min(tokens) >= inputs.FIRST_ORDINARY_TOKEN and max(tokens) < VOCAB
    assert inputs.make_sequences(VOCAB, lengths, 3, seed=5) == (prompts, forced)
    assert sequences(VOCAB, 5) == inputs.make_sequences(VOCAB, inputs.legacy_lengths(5))
    with pytest.raises(ValueError):
        inputs.make_sequences(VOCAB, (3, 0))


def test_case_ids_name_the_plan_and_group_by_model():
    ids = [c.id for c in GPU_CASES]
    assert len(ids) == len(set(ids))
    for c in GPU_CASES:
        assert model_group(f"tests/test_golden_synthetic.py::test_batched_equals_single_user[{c.id}]") == c.fixture
        assert (c.plan in c.id) or c.plan == "short"
    assert "g4-12b-mini-f32-n5" in ids and "keqv-window24-q4_k_m-growth-mixed-n3" in ids  # the short plan keeps its ids


def test_every_plan_says_what_it_is_for():
    for preset in PRESETS:
        for plan in preset_plans(preset):
            assert len(plan.purpose) > 40, plan
            if plan.name != "short":
                assert plan.targets and all(str(b.position) in plan.purpose for b in plan.targets), plan.name


@pytest.mark.gpu
def test_attention_chunk_is_the_launchers():
    from gemma_oracle.kernels.attention import CHUNK

    assert inputs.attention_chunk() == CHUNK
