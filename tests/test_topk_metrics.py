"""Top-k log-probability rows (gemma_oracle.engine.protocol.TopKLogprobs): the metrics on them, against values
worked out here by hand; no -inf/NaN on disjoint supports; dense-vs-top-k lookups; the golden and calibrated
comparisons on engines that answer with log-probabilities or their top k."""
from __future__ import annotations

import math

import numpy as np
import pytest

from gemma_oracle.engine.protocol import TopKLogprobs
from gemma_oracle.oracles.calibrated import check_calibrated
from gemma_oracle.oracles.compare import (
    FLOAT64_POLICY,
    OUTSIDE_F32_POLICY,
    check_logits_close,
    exact,
    tolerance,
)
from gemma_oracle.oracles.metrics import dense_as_topk, topk_distance

pytestmark = pytest.mark.synthetic


def test_topk_distance_hand_computed():
    # ref lists ids 3, 1, 7 at -0.5, -1.5, -2.0; cand lists 3, 7, 9 at -0.6, -1.4, -2.5. Shared: 3 and 7.
    d = topk_distance([3, 1, 7], [-0.5, -1.5, -2.0], [3, 7, 9], [-0.6, -1.4, -2.5])
    assert d.m == 3 and d.ref_in_cand == 2 and d.cand_in_ref == 2 and d.shared == 2
    # shared |d|: id 3: 0.1, id 7: 0.6
    assert d.max_abs_shared == pytest.approx(0.6)
    # one side only: ref's id 1 at -1.5 vs cand's k-th -2.5 -> |d| >= 1.0; cand's id 9 at -2.5 vs ref's k-th -2.0
    # -> nothing (cand's value is below ref's floor). So the bound is 1.0.
    assert d.max_abs_lower == pytest.approx(1.0)
    # NMSE over shared ids, a = ref: (0.1^2 + 0.6^2) / (0.5^2 + 2.0^2)
    assert d.nmse_shared == pytest.approx((0.01 + 0.36) / (0.25 + 4.0))
    # KL on the shared support, each side renormalised over {3, 7}
    p = np.exp([-0.5, -2.0]); p /= p.sum()
    q = np.exp([-0.6, -1.4]); q /= q.sum()
    assert d.kl_shared == pytest.approx(float(np.sum(p * np.log(p / q))))
    assert d.argmax_agree and d.ref_top == d.cand_top == 3
    assert d.ref_margin == pytest.approx(1.0)   # -0.5 - (-1.5)


def test_disjoint_supports_give_finite_numbers():
    d = topk_distance([0, 1], [-0.1, -3.0], [5, 6], [-0.2, -2.5])
    values = [d.kl_shared, d.nmse_shared, d.max_abs_shared, d.max_abs_lower, d.ref_margin]
    assert all(math.isfinite(v) for v in values)
    assert d.shared == 0 and d.ref_in_cand == 0 and not d.argmax_agree
    # ref id 0 at -0.1 vs cand floor -2.5: >= 2.4; cand id 5 at -0.2 vs ref floor -3.0: >= 2.8
    assert d.max_abs_lower == pytest.approx(2.8)
    c = check_logits_close(ref=TopKLogprobs([0, 1], [-0.1, -3.0]), cand=TopKLogprobs([5, 6], [-0.2, -2.5]),
                           name_ref="r", name_cand="c", policy=FLOAT64_POLICY)
    assert not c.passed and set(c.failed) == {"argmax", "topk"}   # float64 has no max_abs bound
    assert all(math.isfinite(v) for v in (c.nmse, c.kl, c.max_abs, c.ref_top_margin, c.margin))


def test_topk_rows_reject_minus_inf_and_repeats():
    with pytest.raises(ValueError):
        topk_distance([0, 1], [-0.1, -np.inf], [0, 1], [-0.1, -1.0])
    with pytest.raises(ValueError):
        topk_distance([0, 0], [-0.1, -0.2], [0, 1], [-0.1, -1.0])


def test_dense_side_is_looked_up_exactly():
    logits = np.array([2.0, 0.5, 3.0, -1.0, 1.0])
    lse = math.log(sum(math.exp(x) for x in logits))
    lp = logits - lse
    ids, vals = dense_as_topk(logits, logprobs=False)
    assert ids.tolist() == [2, 0, 4, 1, 3]
    assert vals == pytest.approx(lp[[2, 0, 4, 1, 3]])
    # Already log-probabilities: taken as they are (no renormalisation).
    raw = np.array([-0.1, -5.0, -0.2])
    assert dense_as_topk(raw, logprobs=True)[1].tolist() == [-0.1, -0.2, -5.0]
    # A masked token (-inf) is not listed.
    assert dense_as_topk(np.array([0.0, -np.inf, 1.0]), logprobs=False)[0].tolist() == [2, 0]

    # Dense logits vs the top-3 of themselves with one value moved by 0.25: exact lookup, so max |d| = 0.25.
    top = TopKLogprobs([2, 0, 4], [lp[2], lp[0] - 0.25, lp[4]])
    c = check_logits_close(ref=logits, cand=top, name_ref="dense", name_cand="top3",
                           policy=tolerance(max_abs_max=0.3, topk=3, topk_min_overlap=3))
    assert c.kind == "topk" and c.shared == 3 and c.passed, c.message
    assert c.max_abs == pytest.approx(0.25) and c.max_abs_shared == pytest.approx(0.25)
    c = check_logits_close(ref=logits, cand=top, name_ref="dense", name_cand="top3",
                           policy=tolerance(max_abs_max=0.2, topk=3, topk_min_overlap=3))
    assert not c.passed and c.failed == ("max_abs",)
    # The same the other way round (top-k reference, dense candidate).
    c = check_logits_close(ref=top, cand=logits, name_ref="top3", name_cand="dense",
                           policy=tolerance(max_abs_max=0.3, topk=3, topk_min_overlap=3))
    assert c.passed and c.max_abs == pytest.approx(0.25)


def test_dense_logits_vs_dense_logprobs_are_log_softmaxed():
    logits = np.array([1.0, 2.0, 0.0, -1.0])
    lp = logits - math.log(sum(math.exp(x) for x in logits))
    # Raw, every value differs by the log-normaliser; with the kinds declared, they are the same distribution.
    assert not check_logits_close(ref=logits, cand=lp, name_ref="a", name_cand="b", policy=FLOAT64_POLICY).passed
    c = check_logits_close(ref=logits, cand=lp, name_ref="a", name_cand="b", policy=FLOAT64_POLICY,
                           cand_logprobs=True)
    assert c.passed and c.max_abs < 1e-15, c.message


def test_bitwise_on_topk_rows_means_equal_ids_and_values():
    a = TopKLogprobs([4, 2, 9], [-0.3, -1.0, -2.0])
    assert check_logits_close(ref=a, cand=TopKLogprobs([4, 2, 9], [-0.3, -1.0, -2.0]), name_ref="a",
                              name_cand="b", policy=exact()).passed
    for other in (TopKLogprobs([4, 9, 2], [-0.3, -1.0, -2.0]), TopKLogprobs([4, 2, 9], [-0.3, -1.0, -2.0000001])):
        c = check_logits_close(ref=a, cand=other, name_ref="a", name_cand="b", policy=exact())
        assert not c.passed and c.failed == ("bitwise",) and c.identical is False


def test_near_tie_on_topk_rows_needs_the_flipped_token_listed():
    ref = TopKLogprobs([1, 2, 3], [-0.70, -0.72, -3.0])
    flip = TopKLogprobs([2, 1, 3], [-0.70, -0.72, -3.0])
    pol = tolerance(near_tie_eps=0.05, topk=3, topk_min_overlap=3)
    c = check_logits_close(ref=ref, cand=flip, name_ref="r", name_cand="c", policy=pol)
    assert c.passed and c.near_tie and c.margin == pytest.approx(0.02)
    # The candidate's top-1 is not in the reference's list: its margin is unknown, never excused.
    c = check_logits_close(ref=TopKLogprobs([1, 2], [-0.70, -0.71]), cand=TopKLogprobs([5, 1], [-0.69, -0.70]),
                           name_ref="r", name_cand="c", policy=tolerance(near_tie_eps=1.0, topk=2, topk_min_overlap=1))
    assert not c.passed and "argmax" in c.failed and not c.near_tie


def test_calibrated_rule_on_logprobs_and_topk_rows():
    rng = np.random.default_rng(7)
    ref = rng.normal(size=200) * 4
    noise = lambda s: ref + rng.normal(size=200) * s  # noqa: E731
    single, batched, buggy = noise(1e-3), noise(1e-3), noise(5e-2)
    lsm = lambda x: x - np.log(np.exp(x - x.max()).sum()) - x.max()  # noqa: E731
    for make, flag in ((lsm, True), (lambda x: TopKLogprobs.from_logits(x, 20), False)):
        ok = check_calibrated(ref=ref, single=make(single), batched=make(batched), name_ref="r", name_single="s",
                              name_batched="b", policy=OUTSIDE_F32_POLICY, cand_logprobs=flag)
        assert ok.passed, ok.message
        # Log-softmax first: the errors are noise-sized, not the log-normaliser (~|lse| ~ 10)
        assert ok.single_max_abs < 0.02
        bad = check_calibrated(ref=ref, single=make(single), batched=make(buggy), name_ref="r", name_single="s",
                               name_batched="b", policy=OUTSIDE_F32_POLICY, cand_logprobs=flag)
        assert not bad.passed and "nmse" in bad.failed


@pytest.mark.parametrize("seed", range(6))
def test_a_partly_ordered_dense_side_gives_the_fully_sorted_sides_metrics(seed):
    """dense_as_topk(head=k) orders only the first k ids (linear, not a sort of 262k ids per comparison): every metric
    of topk_distance must equal the fully sorted side's, ties included (values rounded so ties occur)."""
    rng = np.random.default_rng(seed)
    vocab, k = 3000, int(rng.integers(1, 80))
    dense = np.round(rng.normal(size=vocab) * 3, 1)          # many ties
    cand = np.round(dense + rng.normal(scale=0.3, size=vocab), 1)
    cid, clp = dense_as_topk(cand, logprobs=False)
    cid, clp = cid[:k], clp[:k]
    full = topk_distance(*dense_as_topk(dense, logprobs=False), cid, clp)
    part = topk_distance(*dense_as_topk(dense, logprobs=False, head=k), cid, clp)
    assert full == part
    ids, _ = dense_as_topk(dense, logprobs=False, head=k)
    assert sorted(ids.tolist()) == list(range(vocab))         # still every id, once
