"""Verdict classes (gemma_oracle.oracles.verdicts): each class reached by a constructed case, the order rule
(bitwise only when every row is identical, whatever the policy), the not-batched flag, and a golden run of an
engine that answers with top-k log-probabilities."""
from __future__ import annotations

import numpy as np
import pytest

from gemma_oracle.engine.protocol import TopKLogprobs
from gemma_oracle.oracles.compare import FLOAT64_POLICY, check_logits_close, exact, tolerance
from gemma_oracle.oracles.single_vs_batched import golden_single_vs_batched, host_logits
from gemma_oracle.oracles.verdicts import BITWISE, BROKEN, CLOSE, NEAR_TIE_FLIPS, classify

pytestmark = pytest.mark.synthetic

REF = np.array([3.0, 2.98, -1.0, 0.5, -2.0])     # top-2 margin 0.02: a near-tie
CLEAR = np.array([3.0, 1.0, -1.0, 0.5, -2.0])    # top-2 margin 2.0
LOOSE = tolerance(nmse_max=1e-6, topk=3, topk_min_overlap=3, name="loose")


def cmp(ref, cand, policy=LOOSE, where="row"):
    return check_logits_close(ref=ref, cand=cand, name_ref="single", name_cand="batched", policy=policy,
                              where=where)


def test_bitwise_even_under_a_loose_policy():
    v = classify([cmp(REF, REF.copy()), cmp(CLEAR, CLEAR.copy())], policy=LOOSE)
    assert v.klass == BITWISE and v.rows == 2 and "loose" in v.thresholds


def test_close_when_one_row_differs_within_tolerance():
    v = classify([cmp(REF, REF.copy()), cmp(CLEAR, CLEAR + 1e-6, where="seq 1, step 2")], policy=LOOSE)
    assert v.klass == CLOSE and "seq 1, step 2" in v.reason


def test_near_tie_flips_within_the_stated_bound_only():
    flipped = REF[[1, 0, 2, 3, 4]]                # swaps the two near-tied tokens: argmax flips
    rows = [cmp(CLEAR, CLEAR.copy()), cmp(REF, flipped, policy=tolerance(topk=3, topk_min_overlap=3, name="t"))]
    assert set(rows[1].failed) == {"argmax"}
    v = classify(rows, near_tie_eps=0.05, policy=tolerance(topk=3, topk_min_overlap=3, name="t"))
    assert v.klass == NEAR_TIE_FLIPS and "0.05" in v.reason and "0.05" in v.thresholds
    # The same flip with a bound below the margin is broken; the default bound of a policy without one is 0.
    assert classify(rows, near_tie_eps=0.01).klass == BROKEN
    assert classify(rows).klass == BROKEN


def test_a_flip_with_a_broken_bound_is_broken():
    flipped = REF[[1, 0, 2, 3, 4]]
    v = classify([cmp(REF, flipped, where="seq 0, step 3")], near_tie_eps=0.05)
    # LOOSE's nmse bound breaks too: not just an argmax flip
    assert v.klass == BROKEN and "seq 0, step 3" in v.reason and "nmse" in v.reason


def test_broken_names_the_worst_row():
    rows = [cmp(CLEAR, CLEAR + 0.01, where="small"), cmp(CLEAR, CLEAR + np.array([0, 0, 0, 0.9, 0]), where="big")]
    v = classify(rows)
    assert v.klass == BROKEN and "big" in v.reason and "2/2" in v.reason
    assert classify([]).klass == BROKEN


def test_bitwise_policy_pass_is_bitwise_and_flag_not_batched():
    rows = [cmp(CLEAR, CLEAR.copy(), policy=exact())]
    v = classify(rows, not_batched=3)
    assert v.klass == BITWISE and v.flags == ("not batched (3 step(s))",)
    assert "not batched" in v.line() and "bitwise equal" in v.thresholds


class TopKEngine:
    """A batch-invariant toy engine whose rows are top-3 log-probabilities: logits depend on (token, position)."""
    name, vocab_size, output_topk, output_logprobs = "toy-top3", 16, 3, True

    def new_sequence(self):
        return []

    def _row(self, seq):
        rng = np.random.default_rng(sum((i + 1) * t for i, t in enumerate(seq)))
        return rng.normal(size=self.vocab_size)

    def prefill(self, seq, tokens):
        seq.extend(tokens)
        return TopKLogprobs.from_logits(self._row(seq), 3)

    def decode(self, seqs, tokens):
        for s, t in zip(seqs, tokens):
            s.append(t)
        return TopKLogprobs.from_logits(np.stack([self._row(s) for s in seqs]), 3)


def test_golden_run_of_a_topk_engine_is_bitwise():
    eng = TopKEngine()
    res = golden_single_vs_batched(eng, [[1, 2, 3], [4, 5]], [[6, 7], [8, 9]], policy=FLOAT64_POLICY)
    assert res.passed and all(c.kind == "topk" for c in res.comparisons)
    assert classify(res).klass == BITWISE


def test_host_logits_checks_topk_rows():
    eng = TopKEngine()
    ok = host_logits(TopKLogprobs([[1, 2, 3]], [[-0.1, -1, -2]]), (1, 16), eng, "decode")
    assert isinstance(ok, TopKLogprobs) and ok.shape == (1, 3)
    for bad in (TopKLogprobs([[1, 2, 16]], [[-0.1, -1, -2]]), TopKLogprobs([[1, 1, 3]], [[-0.1, -1, -2]]),
                TopKLogprobs([[1, 2, 3]], [[-0.1, -1, -np.inf]]), TopKLogprobs([1, 2, 3], [-0.1, -1, -2])):
        with pytest.raises(ValueError):
            host_logits(bad, (1, 16), eng, "decode")
