"""CPU tests of kernels/l2_ahead.py: how one place in a decode step shares its bytes over the next matrices, the
switch, and the launch geometry (the launches themselves: tests/test_kernels_launch_gpu.py and test_gpu_engine.py)."""
from __future__ import annotations

import pytest

from gemma_oracle.kernels.l2_ahead import (ALIGN, ENV, MAX_BLOCKS, MB, SEGMENT, THREADS, ahead_bytes_from_env,
                                           launch_geometry, plan_ahead)


def test_earlier_launches_are_asked_for_first_and_whole():
    # o (8.8 MB) then gate and up (33 MB each) with 24 MB: o whole, what is left shared evenly by gate and up
    o, ffn = 8_847_360, 33_177_600
    shares = plan_ahead([[o], [ffn, ffn]], 24 * MB)
    assert shares[0] == [o]
    left = 24 * MB - o
    assert shares[1][0] == shares[1][1] == left // 2 // ALIGN * ALIGN
    assert sum(map(sum, shares)) <= 24 * MB


def test_a_small_member_leaves_the_rest_to_the_others_of_its_launch():
    assert plan_ahead([[1024, 10_000, 1 << 20]], 64 * 1024) == [[1024, 10_000, 64 * 1024 - 1024 - 10_000]]


def test_a_budget_larger_than_the_matrices_asks_for_each_whole_cut_to_16_bytes():
    assert plan_ahead([[100, 4096], [17]], 1 << 30) == [[96, 4096], [16]]


def test_nothing_is_asked_for_without_a_budget():
    assert plan_ahead([[4096], [4096, 4096]], 0) == [[0], [0, 0]]
    assert plan_ahead([], 1 << 20) == []


def test_every_share_is_a_multiple_of_16_within_its_matrix():
    sizes = [[1000, 2000, 3001], [5, 7], [123_456]]
    for budget in (0, 16, 100, 5000, 6000, 130_000, 10**7):
        shares = plan_ahead(sizes, budget)
        flat = [(s, n) for g, sh in zip(sizes, shares) for s, n in zip(g, sh)]
        assert all(n % ALIGN == 0 and 0 <= n <= s for s, n in flat), (budget, shares)
        assert sum(n for _, n in flat) <= budget


def test_bad_sizes_and_budgets_are_refused():
    with pytest.raises(ValueError, match="budget"):
        plan_ahead([[16]], -1)
    with pytest.raises(ValueError, match="sizes"):
        plan_ahead([[16, -16]], 64)


def test_switch(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert ahead_bytes_from_env() == 0
    monkeypatch.setenv(ENV, "24")
    assert ahead_bytes_from_env() == 24 * MB
    for bad in ("-1", "1.5", "x", "257"):
        monkeypatch.setenv(ENV, bad)
        with pytest.raises(ValueError, match=ENV):
            ahead_bytes_from_env()


def test_one_segment_a_thread_and_at_most_max_blocks():
    assert launch_geometry([SEGMENT]) == (1, THREADS, 1)
    assert launch_geometry([SEGMENT * THREADS + 1]) == (2, THREADS, THREADS + 1)
    assert launch_geometry([0, 16, 16]) == (1, THREADS, 2)
    blocks, _, segments = launch_geometry([1 << 34])
    assert blocks == MAX_BLOCKS and segments == (1 << 34) // SEGMENT
