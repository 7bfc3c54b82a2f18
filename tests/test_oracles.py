"""Tests of the oracles package: metrics on hand-made vectors, policies, the greedy-path rule and the golden
single-vs-batched comparison against tiny fake engines. Expected values are worked out by hand in comments."""
from __future__ import annotations

import math

import numpy as np
import pytest

from gemma_oracle.oracles.compare import (
    FLOAT64_POLICY,
    Policy,
    check_logits_close,
    exact,
    first_divergence,
    tolerance,
)
from gemma_oracle.engine.protocol import DecodeEngine
from gemma_oracle.oracles.metrics import (
    argmax_agreement,
    kl_divergence,
    max_abs,
    nmse,
    screen_nonfinite,
    top1_top2_margin,
    topk,
    topk_overlap,
)
from gemma_oracle.oracles.single_vs_batched import golden_single_vs_batched, greedy_forced_tokens

INF, NAN = float("inf"), float("nan")

# A policy that checks nothing but the non-finite screen: isolates the screen in tests.
SCREEN_ONLY = tolerance(require_argmax=False, topk_min_overlap=0, name="screen-only")


# ------------------------------------------------------------------------------------------------ metrics

def test_max_abs_and_nmse_by_hand():
    # diff (0, 0.5): max_abs 0.5; nmse = 0.25 / (9 + 16) = 0.01
    assert max_abs([3.0, 4.0], [3.0, 4.5]) == 0.5
    assert nmse([3.0, 4.0], [3.0, 4.5]) == pytest.approx(0.01, rel=1e-15)
    # diff (0, 0, 3): 9 / (1 + 4 + 4) = 1
    assert nmse([1.0, 2.0, 2.0], [1.0, 2.0, 5.0]) == 1.0
    # identical, and the same infinity on both sides, give 0
    assert nmse([1.0, -INF], [1.0, -INF]) == 0.0
    assert max_abs([1.0, -INF], [1.0, -INF]) == 0.0


def test_nmse_zero_reference():
    assert nmse([0.0, 0.0], [0.0, 0.0]) == 0.0          # 0/0 := 0
    assert nmse([0.0, 0.0], [0.0, 1.0]) == INF          # x/0 := inf


def test_metrics_vectorise_over_leading_axis():
    ref = np.array([[3.0, 4.0], [1.0, 0.0]])
    cand = np.array([[3.0, 4.5], [1.0, 2.0]])
    np.testing.assert_array_equal(max_abs(ref, cand), [0.5, 2.0])
    np.testing.assert_array_equal(nmse(ref, cand), [0.25 / 25.0, 4.0 / 1.0])


def test_kl_by_hand():
    assert kl_divergence([0.3, -1.0, 2.0], [0.3, -1.0, 2.0]) == 0.0
    # p = softmax(0, 0) = (1/2, 1/2); q = softmax(0, ln 3) = (1/4, 3/4)
    # KL = 1/2 ln(2) + 1/2 ln(2/3) = 1/2 ln(4/3)
    expected = 0.5 * math.log(4.0 / 3.0)
    assert kl_divergence([0.0, 0.0], [0.0, math.log(3.0)]) == pytest.approx(expected, rel=1e-14)
    # log-sum-exp: a shift by 1000 overflows a naive exp but changes nothing
    assert kl_divergence([1000.0, 1000.0], [1000.0, 1000.0 + math.log(3.0)]) == pytest.approx(expected, rel=1e-12)
    # p = (1, 0), q = (1/2, 1/2): KL = ln 2; the -inf token contributes 0, not NaN
    assert kl_divergence([0.0, -INF], [0.0, 0.0]) == pytest.approx(math.log(2.0), rel=1e-15)
    # the reference can emit token 1, the candidate cannot: KL = inf
    assert kl_divergence([0.0, 0.0], [0.0, -INF]) == INF
    # batched rows
    np.testing.assert_allclose(kl_divergence([[0.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, math.log(3.0)]]),
                               [0.0, expected], rtol=1e-14)


def test_kl_shift_invariant_and_never_negative():
    x = np.linspace(-3.0, 5.0, 257)
    kl = kl_divergence(x, x + 0.1)   # mathematically 0; rounding may not be, but it is clipped at 0
    assert 0.0 <= kl < 1e-15


def test_argmax_agreement_and_near_tie_rule():
    v = argmax_agreement([0.0, 2.0, 1.0], [0.0, 2.5, 1.0], near_tie_eps=0.0)
    assert (v.ref_token, v.cand_token, v.agree, v.near_tie, v.margin) == (1, 1, True, False, 0.0)
    # argmaxes differ: ref margin between its token 0 and the candidate's token 1 is 1.0 - 0.75 = 0.25
    ref, cand = [1.0, 0.75, 0.0], [0.75, 1.0, 0.0]
    tie = argmax_agreement(ref, cand, near_tie_eps=0.5)
    assert (tie.ref_token, tie.cand_token, tie.agree, tie.near_tie, tie.margin) == (0, 1, False, True, 0.25)
    assert tie.acceptable
    bug = argmax_agreement(ref, cand, near_tie_eps=0.25)   # strict: margin 0.25 is not < 0.25
    assert (bug.agree, bug.near_tie, bug.acceptable) == (False, False, False)
    # the margin is read on the REFERENCE: a candidate that flips by a mile is judged by the ref's 0.25
    assert argmax_agreement(ref, [0.0, 100.0, 0.0], near_tie_eps=0.5).near_tie


def test_topk_tie_break_and_overlap():
    x = [1.0, 3.0, 3.0, 2.0, 3.0]
    assert topk(x, 2).tolist() == [1, 2]
    assert topk(x, 4).tolist() == [1, 2, 4, 3]
    assert topk(x, 9).tolist() == [1, 2, 4, 3, 0]     # k > vocab: all, in order
    assert topk(np.zeros(6), 3).tolist() == [0, 1, 2]  # all tied: lowest indices
    assert topk([[0.0, 1.0, 2.0], [2.0, 2.0, 0.0]], 2).tolist() == [[2, 1], [0, 1]]
    # ref top-3 {0, 1, 2}, cand top-3 {2, 3, 4}: overlap 1
    assert topk_overlap([5.0, 4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0, 5.0], 3) == 1
    assert topk_overlap([5.0, 4.0, 3.0], [5.0, 4.0, 3.0], 3) == 3


def test_top1_top2_margin():
    assert top1_top2_margin([1.0, 5.0, 3.0]) == 2.0
    assert top1_top2_margin([5.0, 5.0, 1.0]) == 0.0
    np.testing.assert_array_equal(top1_top2_margin([[1.0, 5.0, 3.0], [0.0, -1.0, 0.5]]), [2.0, 0.5])


@pytest.mark.parametrize("ref, cand, expected", [
    ([1.0, 2.0], [1.0, 2.0], None),
    ([-INF, 2.0], [-INF, 2.0], None),                    # same infinity on both sides: accepted
    ([INF, 2.0], [INF, 2.0], None),
    ([1.0, NAN], [1.0, 2.0], "NaN in ref"),
    ([1.0, 2.0], [NAN, 2.0], "NaN in cand"),
    ([INF, 2.0], [1.0, 2.0], "infinity mismatch"),       # inf on one side only
    ([1.0, 2.0], [1.0, -INF], "infinity mismatch"),
    ([INF, 2.0], [-INF, 2.0], "infinity mismatch"),      # different sign
    ([1.0, 2.0], [1.0, 2.0, 3.0], "shape mismatch"),
], ids=["finite", "same-neg-inf", "same-pos-inf", "nan-ref", "nan-cand", "inf-ref-only", "inf-cand-only",
        "inf-sign", "shape"])
def test_screen_nonfinite(ref, cand, expected):
    msg = screen_nonfinite(ref, cand)
    if expected is None:
        assert msg is None
    else:
        assert msg is not None and expected in msg


# ------------------------------------------------------------------------------------------------ policies

def test_exact_vs_tolerance_on_one_float32_ulp():
    ref = np.array([1.0, 2.0, 3.0, 0.5], dtype=np.float32)
    cand = ref.copy()
    cand[2] = np.nextafter(np.float32(3.0), np.float32(4.0))   # 3 + 2**-22 (float32 ulp in [2, 4))
    assert check_logits_close(ref=ref, cand=ref.copy(), name_ref="a", name_cand="b", policy=exact()).passed

    c = check_logits_close(ref=ref, cand=cand, name_ref="numpy64", name_cand="cupy", policy=exact(),
                           where="seq 0, step 1, token 9")
    assert not c.passed
    assert c.max_abs == 2.0 ** -22
    assert c.nmse == 2.0 ** -44 / 14.25                          # Σa² = 1 + 4 + 9 + 0.25
    for text in ("seq 0, step 1, token 9", "numpy64", "cupy", "not bitwise equal", "1 of 4", "token 2"):
        assert text in c.message

    loose = check_logits_close(ref=ref, cand=cand, name_ref="numpy64", name_cand="cupy",
                               policy=tolerance(nmse_max=1e-12, max_abs_max=1e-6))
    assert loose.passed and loose.argmax_agree and loose.topk_overlap == 4


def test_float64_policy():
    assert (FLOAT64_POLICY.name, FLOAT64_POLICY.nmse_max, FLOAT64_POLICY.near_tie_eps) == ("float64", 1e-24, 0.0)
    assert (FLOAT64_POLICY.require_argmax, FLOAT64_POLICY.topk, FLOAT64_POLICY.topk_min_overlap) == (True, 5, 5)
    ref = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])               # Σa² = 91
    one_ulp = ref.copy()
    one_ulp[5] = np.nextafter(6.0, 7.0)                          # nmse = (2**-50)² / 91 ≈ 8.7e-33
    assert check_logits_close(ref=ref, cand=one_ulp, name_ref="r", name_cand="c", policy=FLOAT64_POLICY).passed
    off = ref.copy()
    off[0] += 1e-9                                               # nmse ≈ 1e-18 / 91 ≈ 1.1e-20 > 1e-24
    c = check_logits_close(ref=ref, cand=off, name_ref="r", name_cand="c", policy=FLOAT64_POLICY, where="w")
    assert not c.passed and c.argmax_agree and c.topk_overlap == 5
    assert "nmse" in c.message and "1e-24" in c.message and c.message.startswith("w: ")


def test_tolerance_argmax_near_tie_and_topk_failures():
    ref, cand = np.array([1.0, 0.75, 0.0]), np.array([0.75, 1.0, 0.0])
    tie = tolerance(near_tie_eps=0.5, topk=3, topk_min_overlap=3)
    c = check_logits_close(ref=ref, cand=cand, name_ref="r", name_cand="c", policy=tie)
    assert c.passed and c.near_tie and c.margin == 0.25 and (c.ref_argmax, c.cand_argmax) == (0, 1)
    strict = tolerance(near_tie_eps=0.25, topk=3, topk_min_overlap=3)
    c = check_logits_close(ref=ref, cand=cand, name_ref="r", name_cand="c", policy=strict)
    assert not c.passed and "margin 0.25 >= near-tie eps 0.25" in c.message
    # top-3 of ref {0, 1, 2}; of cand {3, 4, 5}: overlap 0
    c = check_logits_close(ref=[5.0, 4.0, 3.0, 2.0, 1.0, 0.0], cand=[0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
                           name_ref="r", name_cand="c",
                           policy=tolerance(require_argmax=False, topk=3, topk_min_overlap=2))
    assert not c.passed and c.topk_overlap == 0 and "top-3 overlap 0 < 2" in c.message


def test_nonfinite_fails_any_policy_and_shape_mismatch_is_a_record():
    c = check_logits_close(ref=[1.0, 2.0], cand=[1.0, NAN], name_ref="r", name_cand="c", policy=SCREEN_ONLY)
    assert not c.passed and c.nonfinite is not None and "NaN in cand" in c.message
    c = check_logits_close(ref=[1.0, 2.0], cand=[1.0, 2.0, 3.0], name_ref="r", name_cand="c", policy=exact())
    assert not c.passed and "shape" in c.message


def test_policy_validation():
    with pytest.raises(ValueError):
        tolerance(topk=5, topk_min_overlap=6)
    with pytest.raises(ValueError):
        tolerance(nmse_max=-1.0)
    assert Policy.exact().bitwise and not Policy.tolerance(nmse_max=0.0).bitwise


# ------------------------------------------------------------------------------------------------ first_divergence

def _path_logits():
    """4 positions × vocab 8. Row 2 is where the paths split; row 3 is NaN (must never be read)."""
    rows = np.zeros((4, 8))
    rows[3] = NAN
    return rows


def test_first_divergence_identical_paths():
    lg = np.zeros((3, 8))
    d = first_divergence(ref_tokens=[3, 1, 4], cand_tokens=[3, 1, 4], ref_logits=lg, cand_logits=lg,
                         name_ref="single", name_cand="batched")
    assert d.passed and d.index is None and d.matched_prefix == 3
    assert "identical" in d.message


def test_first_divergence_within_top5_passes():
    ref_lg, cand_lg = _path_logits(), _path_logits()
    ref_lg[2] = [0, 1, 2, 3, 8, 7, 6, 5]    # ref top-5: 4, 5, 6, 7, 3  -> cand's token 5 is in it
    cand_lg[2] = [0, 1, 2, 3, 7, 8, 6, 5]   # cand top-5: 5, 4, 6, 7, 3 -> ref's token 4 is in it
    d = first_divergence(ref_tokens=[3, 1, 4, 1], cand_tokens=[3, 1, 5, 2], ref_logits=ref_lg,
                         cand_logits=cand_lg, name_ref="single", name_cand="batched")
    assert d.passed and d.index == 2 and d.matched_prefix == 2
    assert (d.ref_token, d.cand_token, d.ref_in_cand_topk, d.cand_in_ref_topk) == (4, 5, True, True)
    assert "index 2" in d.message and "matched prefix of 2" in d.message


def test_first_divergence_outside_topk_fails():
    ref_lg, cand_lg = _path_logits(), _path_logits()
    ref_lg[2] = [0, 1, 2, 3, 8, 7, 6, 5]    # ref top-5: 4, 5, 6, 7, 3  -> cand's token 5 in it
    cand_lg[2] = [8, 7, 6, 5, 0, 9, 4, 1]   # cand top-5: 5, 0, 1, 2, 3 -> ref's token 4 NOT in it
    d = first_divergence(ref_tokens=[3, 1, 4, 1], cand_tokens=[3, 1, 5, 2], ref_logits=ref_lg,
                         cand_logits=cand_lg, name_ref="single", name_cand="batched", where="prompt 7")
    assert not d.passed and d.index == 2
    assert (d.ref_in_cand_topk, d.cand_in_ref_topk) == (False, True)
    for text in ("prompt 7", "index 2", "matched prefix of 2", "single token 4 NOT in batched top-5"):
        assert text in d.message


# ------------------------------------------------------------------------------------------------ fake engines

VOCAB = 32
HASH_MOD = 251
_TABLE = np.random.default_rng(1234).standard_normal((HASH_MOD, VOCAB)).astype(np.float32)


def _history_row(history):
    """Logits = a fixed random table row picked by a rolling hash of the whole token history."""
    h = 17
    for tok in history:
        h = (h * 31 + tok + 1) % HASH_MOD
    return _TABLE[h]


class _Seq:
    def __init__(self):
        self.history: list[int] = []
        self.decode_steps = 0


class ToyEngine:
    """Batch-invariant by construction: each row depends only on its own sequence's history."""

    vocab_size = VOCAB

    def __init__(self, name: str = "toy"):
        self.name = name
        self.new_sequence_calls = 0

    def new_sequence(self):
        self.new_sequence_calls += 1
        return _Seq()

    def prefill(self, seq, tokens):
        seq.history.extend(int(t) for t in tokens)
        return _history_row(seq.history).copy()

    def decode(self, seqs, tokens):
        rows = []
        for seq, tok in zip(seqs, tokens):
            seq.history.append(int(tok))
            seq.decode_steps += 1
            rows.append(_history_row(seq.history))
        return np.stack(rows)


PERTURB_PER_N = 1e-3


class BatchDependentEngine(ToyEngine):
    """Batched decode adds N·1e-3 to the top logit of batch row 1 at its 2nd decode step (argmax/top-5 kept)."""

    def decode(self, seqs, tokens):
        out = super().decode(seqs, tokens)
        n = len(seqs)
        if n > 1 and seqs[1].decode_steps == 2:
            out[1, np.argmax(out[1])] += np.float32(PERTURB_PER_N * n)
        return out


class SharedBufferEngine(ToyEngine):
    """Returns the same output buffer every call, as a GPU engine with a preallocated logits buffer might."""

    def __init__(self, name: str = "toy"):
        super().__init__(name)
        self._buf = None

    def decode(self, seqs, tokens):
        out = super().decode(seqs, tokens)
        if self._buf is None or self._buf.shape != out.shape:
            self._buf = np.empty_like(out)
        self._buf[...] = out
        return self._buf


PROMPTS = [[2, 11, 5], [2, 7], [2, 30, 30, 1, 4], [2], [2, 19, 3, 8]]
T_STEPS = 4


def _forced(engine, n):
    return [greedy_forced_tokens(engine, p, T_STEPS) for p in PROMPTS[:n]]


def test_engines_meet_protocol():
    assert isinstance(ToyEngine(), DecodeEngine)
    assert not isinstance(object(), DecodeEngine)
    with pytest.raises(TypeError):
        golden_single_vs_batched(object(), [[1]], [[2]], policy=exact())


def test_greedy_forced_tokens_follows_argmax():
    eng = ToyEngine()
    toks = greedy_forced_tokens(eng, [2, 11, 5], 3)
    history = [2, 11, 5]
    for tok in toks:                                   # each token is the argmax after the history so far
        assert tok == int(np.argmax(_history_row(history)))
        history.append(tok)
    assert len(toks) == 3 and greedy_forced_tokens(eng, [2], 0) == []


@pytest.mark.parametrize("n", [1, 2, 3, 5], ids=lambda n: f"n{n}")
def test_golden_batch_invariant_engine_passes_exact(n):
    eng = ToyEngine()
    res = golden_single_vs_batched(eng, PROMPTS[:n], _forced(eng, n), policy=exact())
    res.assert_passed()
    assert res.passed and res.failures == [] and (res.n, res.t) == (n, T_STEPS)
    assert len(res.comparisons) == n * (T_STEPS + 1)             # step 0 = prefill, steps 1..T = decodes
    assert res.keys[0] == (0, 0, PROMPTS[0][-1])
    assert "all" in res.summary() and "passed" in res.summary()


def test_golden_copies_engine_buffers():
    eng = SharedBufferEngine()
    golden_single_vs_batched(eng, PROMPTS, _forced(eng, 5), policy=exact()).assert_passed()


def test_golden_batch_dependent_engine_fails_and_names_the_spot():
    eng = BatchDependentEngine("perturbed")
    forced = _forced(ToyEngine(), 3)
    bad_token = forced[1][1]                            # step 2 of seq 1 is fed forced[1][1]
    assert golden_single_vs_batched(eng, PROMPTS[:1], forced[:1], policy=exact()).passed   # N=1: untouched

    res = golden_single_vs_batched(eng, PROMPTS[:3], forced, policy=exact())
    assert not res.passed
    assert res.failing_keys == [(1, 2, bad_token)]
    (fail,) = res.failures
    assert fail.max_abs == pytest.approx(PERTURB_PER_N * 3, rel=1e-4)   # float32 rounding of the add
    with pytest.raises(AssertionError) as info:
        res.assert_passed()
    text = str(info.value)
    for piece in (f"seq 1, step 2, token {bad_token}", "perturbed[single]", "perturbed[batched N=3]",
                  "not bitwise equal", "1/15 comparisons FAILED"):
        assert piece in text

    rows = res.to_rows()
    assert len(rows) == 15
    bad = [r for r in rows if r["verdict"] == "fail"]
    assert [(r["seq"], r["step"], r["token"], r["pos"]) for r in bad] == [(1, 2, bad_token, len(PROMPTS[1]) + 1)]

    # float64 policy fails too; a tolerance with room for the perturbation passes (argmax and top-5 kept)
    assert not golden_single_vs_batched(eng, PROMPTS[:3], forced, policy=FLOAT64_POLICY).passed
    loose = tolerance(max_abs_max=1e-2)
    golden_single_vs_batched(eng, PROMPTS[:3], forced, policy=loose).assert_passed()


def test_golden_with_separate_reference_engine_and_memo():
    ref_engine, cand_engine = ToyEngine("ref"), ToyEngine("cand")
    forced = _forced(ToyEngine(), 5)
    cache: dict = {}
    hits = []
    for n in (1, 2, 3, 5):
        res = golden_single_vs_batched(cand_engine, PROMPTS[:n], forced[:n], policy=exact(),
                                       reference_engine=ref_engine, cache=cache)
        res.assert_passed()
        assert (res.engine, res.reference) == ("cand", "ref")
        hits.append(res.reference_cache_hits)
    # sequence i is first needed at the first n > i, so 5 single-user runs in all, the rest from the memo
    assert ref_engine.new_sequence_calls == 5
    assert len(cache) == 5 and hits == [0, 1, 2, 3]
    assert cand_engine.new_sequence_calls == 1 + 2 + 3 + 5
    assert ("ref", tuple(PROMPTS[0]), tuple(forced[0])) in cache


def test_golden_rejects_broken_engine_contract():
    class WrongShape(ToyEngine):
        def decode(self, seqs, tokens):
            return super().decode(seqs, tokens)[:, :-1]

    with pytest.raises(ValueError, match="shape"):
        golden_single_vs_batched(WrongShape(), [[1]], [[2]], policy=exact())
    with pytest.raises(ValueError, match="same length"):
        golden_single_vs_batched(ToyEngine(), [[1], [2]], [[3], [4, 5]], policy=exact())


# ------------------------------------------------------------------------------------------------ calibrated rule

def test_calibrated_rule_by_hand():
    from gemma_oracle.oracles.calibrated import check_calibrated
    from gemma_oracle.oracles.compare import CALIBRATED_POLICY as P

    assert (P.nmse_factor, P.max_abs_factor) == (10.0, 4.0)
    ref, single = [3.0, 4.0, 0.0], [3.0, 4.1, 0.0]   # single-user: nmse 0.01/25 = 4e-4, max |d| 0.1
    kw = dict(ref=ref, single=single, name_ref="f64", name_single="s", name_batched="b")
    # batched 0.2 off: nmse 0.04/25 = 1.6e-3 = 4x single (<= 10x), max |d| 0.2 (<= 4 x 0.1): passes
    assert check_calibrated(batched=[3.0, 4.2, 0.0], **kw).passed
    # batched 0.5 off: nmse 0.01 = 25x single, max |d| 0.5 > 0.4: fails on both, argmax kept
    c = check_calibrated(batched=[3.0, 4.5, 0.0], **kw)
    assert not c.passed and "batched nmse" in c.message and "batched max_abs" in c.message and c.argmax_agree
    # a flip where the reference's margin (1.0) exceeds twice the allowed max |d| (0.8) is named as such
    c = check_calibrated(batched=[4.5, 4.0, 0.0], **kw)
    assert not c.passed and "argmax f64=1 vs b=0" in c.message
    # an exact candidate: single-user error 0, batched off by float64 reordering only: the floors admit it
    exact_kw = dict(ref=ref, single=ref, name_ref="f64", name_single="s", name_batched="b")
    assert check_calibrated(batched=[3.0, 4.0 + 1e-12, 0.0], **exact_kw).passed   # nmse 4e-26, max |d| 1e-12
    assert not check_calibrated(batched=[3.0, 4.0 + 1e-6, 0.0], **exact_kw).passed  # a float32-sized error
    # a skipped softcap: monotonic (argmax and top-5 kept) yet far beyond the route's noise
    z = np.linspace(-40.0, 45.0, 64)
    capped = 30.0 * np.tanh(z / 30.0)
    c = check_calibrated(ref=capped, single=capped + 1e-5, batched=z, name_ref="f64", name_single="s",
                         name_batched="b")
    assert not c.passed and c.argmax_agree and c.topk_overlap == 5
    # NaN fails on its own; shapes must agree
    assert not check_calibrated(batched=[3.0, NAN, 0.0], **kw).passed
    assert not check_calibrated(batched=[3.0, 4.0], **kw).passed


class NoisyToyEngine(ToyEngine):
    """A non-bitwise but batch-honest route: every logit moved by a fixed per-token offset of 1e-3 (the same
    single-user and batched)."""

    def prefill(self, seq, tokens):
        return super().prefill(seq, tokens) + 1e-3 * np.cos(np.arange(VOCAB))

    def decode(self, seqs, tokens):
        return super().decode(seqs, tokens) + 1e-3 * np.cos(np.arange(VOCAB))


class NoisyBatchDependentEngine(NoisyToyEngine):
    """The same noise, plus 1e-2 on batch row 1's top logit at its 2nd decode step (10x the route's noise)."""

    def decode(self, seqs, tokens):
        out = super().decode(seqs, tokens)
        if len(seqs) > 1 and seqs[1].decode_steps == 2:
            out[1, np.argmax(out[1])] += 1e-2
        return out


@pytest.mark.parametrize("n", [1, 2, 5])
def test_calibrated_golden_passes_an_honest_noisy_route_and_fails_a_batch_bug(n):
    from gemma_oracle.oracles.calibrated import calibrated_single_vs_batched

    ref = ToyEngine("toy-f64")
    forced = _forced(ref, n)
    ok = calibrated_single_vs_batched(NoisyToyEngine("noisy"), PROMPTS[:n], forced, reference_engine=ref)
    assert ok.passed and ok.policy == "calibrated" and len(ok.comparisons) == n * (T_STEPS + 1)
    bad = calibrated_single_vs_batched(NoisyBatchDependentEngine("noisy-bug"), PROMPTS[:n], forced,
                                       reference_engine=ref)
    if n == 1:
        assert bad.passed   # the bug needs a batch
    else:
        assert bad.failing_keys == [(1, 2, forced[1][1])], bad.summary()
    with pytest.raises(ValueError, match="another engine"):
        calibrated_single_vs_batched(ref, PROMPTS[:n], forced, reference_engine=ToyEngine("toy-f64"))
