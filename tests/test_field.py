"""Tests from the field (gemma_oracle.oracles.field), the batch probe of the golden comparison and the control
(gemma_oracle.engine.adapters.broken), on the g4-e2b-mini fixture (sliding window 8, so the ring of 8 + 8 - 1 = 15
slots wraps within short prompts). FlashInfer / vLLM style: parametrized over N, the needle at a random slot, and a
control that must fail where its bug can fire and pass where it cannot.

Which policies hold for our float64 numpy engine (measured when this file was written, asserted below only where
the engine promises it): every test passes FLOAT64_POLICY at every N; bitwise, only determinism holds at every N
(the same run twice), and the batched tests at N = 1; batched rows at N >= 2 go through one BLAS matmul of N rows
instead of N matmuls of one row, and decode vs prefill through different row counts, so they are float64-close,
not bitwise equal (a BLAS property, so not asserted either way).
"""
from __future__ import annotations

import functools
import json

import numpy as np
import pytest

from gemma_oracle.engine.protocol import BatchRecord
from gemma_oracle.engine.registry import make_engine
from gemma_oracle.harness.fixtures.cache import fixture_path
from gemma_oracle.harness.suites.inputs import EQUAL, MIXED, PAST_WINDOW, field_inputs, make_sequences, prefill_chunk
from gemma_oracle.oracles import field
from gemma_oracle.oracles.compare import FLOAT64_POLICY, exact
from gemma_oracle.oracles.single_vs_batched import golden_single_vs_batched

pytestmark = pytest.mark.synthetic

PRESET = "g4-e2b-mini"
T = 3
POOL = 6          # sequences an input kind makes: the needle's pool needs N - 1 <= 5 others
N_LIST = (1, 2, 3, 5)
MEMO: dict = {}   # single-user references, shared by every test of the file (keyed by engine name)


@functools.lru_cache(maxsize=None)
def engine(spec: str = "numpy"):
    return make_engine(spec, fixture_path(PRESET, "f32"))


@functools.lru_cache(maxsize=None)
def inputs(kind: str):
    return field_inputs(engine().config, kind, POOL, steps=T)


def run(test: str, eng, kind: str, n: int, policy=FLOAT64_POLICY, **kw):
    """One field test (or the sweep) on the first n sequences of an input kind (the needle: at a batch of n)."""
    data = inputs(kind)
    prompts, forced = data.prompts[:n], data.forced[:n]
    if test == "sweep":
        return golden_single_vs_batched(eng, prompts, forced, policy=policy, cache=MEMO, **kw)
    if test == "needle":
        return field.needle(eng, data.prompts, data.forced, n=n, policy=policy, cache=MEMO, **kw)
    if test == "determinism":
        return field.determinism(eng, prompts, forced, **kw)
    return getattr(field, test)(eng, prompts, forced, policy=policy, cache=MEMO, **kw)


# ------------------------------------------------------------------------------------------------ inputs

def test_field_inputs_reach_what_they_promise():
    cfg = engine().config
    window, ring = cfg.sliding_window, cfg.sliding_window + prefill_chunk() - 1
    for n in (2, 3, 5):
        past = field_inputs(cfg, PAST_WINDOW, n, steps=T)
        decoded = [range(length, length + T) for length in past.lengths]   # positions a decode step writes
        assert any(window in r for r in decoded) and any(ring in r for r in decoded), past.lengths
        assert len(set(field_inputs(cfg, MIXED, n, steps=T).lengths)) > 1
        equal = field_inputs(cfg, EQUAL, n, steps=T)
        assert len(set(equal.lengths)) == 1 and len({tuple(p) for p in equal.prompts}) == n   # one length, n prompts
    data = field_inputs(cfg, MIXED, 4, steps=T)
    assert [len(p) for p in data.prompts] == list(data.lengths) and all(len(f) == T for f in data.forced)
    assert (data.prompts, data.forced) == make_sequences(cfg.vocab_size, data.lengths, T)   # the public generator
    with pytest.raises(ValueError, match="no sliding window shorter than its context"):
        field_inputs(make_engine("numpy", fixture_path("keqv-mixed", "f32")).config, PAST_WINDOW, 2)
    with pytest.raises(ValueError, match="unknown input kind"):
        field_inputs(cfg, "long", 2)


# ------------------------------------------------------------------------------------------------ our engine

@pytest.mark.parametrize("kind,n", [(PAST_WINDOW, n) for n in N_LIST] + [(MIXED, 3)])
def test_numpy_engine_passes_every_field_test(kind, n):
    eng = engine()
    for test in ("sweep",) + field.FIELD_TESTS:
        res = run(test, eng, kind, n)
        res.assert_passed()
        assert res.test == test and not res.skipped and not res.not_batched
        assert res.engine_info["name"] == eng.name
        rows_per_seq = T + 1
        assert len(res.comparisons) == rows_per_seq * (3 if test == "needle" else n)   # 3 trials of one needle


def test_bitwise_where_it_holds():
    eng = engine()
    for n in N_LIST:
        run("determinism", eng, PAST_WINDOW, n).assert_passed()     # exact() by default
    for test in ("sweep", "needle", "changing_composition", "batched_prefill"):
        run(test, eng, PAST_WINDOW, 1, policy=exact()).assert_passed()


def test_results_carry_the_test_and_the_engine_into_every_row():
    eng = Recorder(engine())
    res = run("needle", eng, MIXED, 3, seed=7)
    rows = res.to_rows()
    assert len(rows) == len(res.comparisons)
    for row in rows:
        assert row["test"] == "needle" and json.loads(row["engine_info"]) == {"name": eng.name}
        assert "needle at slot" in row["case"] and row["case"] in row["message"] and row["one_batch"]
    # the slot a trial names is where the needle's tokens really went: its first decode step feeds forced[0][0]
    needle_token = inputs(MIXED).forced[0][0]
    batches = [b for b in eng.batches if len(b) == 3]     # not the reference's single-user steps
    assert len(batches) == 3 * T
    for trial in range(3):
        slot = int(res.cases[trial * (T + 1)].split("slot ")[1].split()[0])
        assert batches[trial * T][slot] == needle_token
    assert len({res.cases[trial * (T + 1)] for trial in range(3)}) > 1     # seeded, not one fixed slot
    sweep = run("sweep", engine(), MIXED, 2)
    assert {r["test"] for r in sweep.to_rows()} == {"sweep"}
    assert {json.loads(r["engine_info"])["engine"] for r in sweep.to_rows()} == {"gemma-oracle numpy"}


# ------------------------------------------------------------------------------------------------ the control

def test_the_control_is_named_and_described_as_one():
    broken, ours = engine("broken-rope"), engine()
    assert broken.name != ours.name and "broken" in broken.name
    assert "deliberately broken" in broken.describe()["control"]
    assert engine("broken-rope:base=numpy32").name != broken.name


@pytest.mark.parametrize("n", N_LIST)
@pytest.mark.parametrize("test", ["sweep", "needle", "changing_composition"])
def test_the_control_fails_where_rows_sit_at_different_positions(test, n):
    res = run(test, engine("broken-rope"), MIXED, n)
    if n == 1:   # one row: the largest position is its own
        res.assert_passed()
        return
    assert not res.passed
    assert all(c.passed for (_, step, _), c in zip(res.keys, res.comparisons) if step == 0)   # prefill is exact
    lengths = inputs(MIXED).lengths
    if test == "sweep":
        # a row at the batch's largest position is rotated right and reads only its own cache: exactly the shorter
        # rows fail, at every decode step
        expected = {(i, s) for i in range(n) for s in range(1, T + 1) if lengths[i] < max(lengths[:n])}
        assert {(i, s) for i, s, _ in res.failing_keys} == expected
    if test == "needle":
        assert lengths[0] == min(lengths)   # the needle is the shortest prompt: wrong at every slot, every trial
        assert {(trial, s) for trial, s, _ in res.failing_keys} == {(k, s) for k in range(3) for s in range(1, T + 1)}


@pytest.mark.parametrize("test", ["sweep", "needle"])
def test_the_control_passes_where_every_row_sits_at_one_position(test):
    run(test, engine("broken-rope"), EQUAL, 3).assert_passed()


def test_the_control_passes_continuous_batching_that_keeps_positions_equal():
    # a sequence that joins j ticks later has a prompt j tokens longer, so every batch has all rows at one position
    eng = engine("broken-rope")
    joins = [0, 0, 1, 2]
    prompts, forced = make_sequences(eng.vocab_size, [9 + j for j in joins], T)
    res = field.changing_composition(eng, prompts, forced, joins=joins, policy=FLOAT64_POLICY, cache=MEMO)
    res.assert_passed()
    # ...and the same schedule with one prompt a token shorter puts rows at different positions: caught
    prompts, forced = make_sequences(eng.vocab_size, [9, 9, 10, 10], T)
    assert not field.changing_composition(eng, prompts, forced, joins=joins, policy=FLOAT64_POLICY,
                                          cache=MEMO).passed


# ------------------------------------------------------------------------------------------------ broken engines

class Wrapper:
    """An outside engine around ours with only the protocol's required members (no prefill_batch, no probe)."""

    def __init__(self, inner, tag: str):
        self.inner, self.name, self.vocab_size = inner, f"{tag}:{inner.name}", inner.vocab_size

    def new_sequence(self):
        return self.inner.new_sequence()

    def prefill(self, seq, tokens):
        return self.inner.prefill(seq, tokens)

    def decode(self, seqs, tokens):
        return self.inner.decode(seqs, tokens)


class Recorder(Wrapper):
    """Keeps the tokens of every batched decode step, in row order."""

    def __init__(self, inner):
        super().__init__(inner, "recorder")
        self.batches = []

    def decode(self, seqs, tokens):
        self.batches.append(list(tokens))
        return super().decode(seqs, tokens)


class StaleProbe(Wrapper):
    """A probe that always describes one old single-row call: it cannot vouch for a batch of N."""

    def __init__(self, inner):
        super().__init__(inner, "stale-probe")

    def last_batch(self):
        return BatchRecord(rows=1, forward_calls=1)


class Noisy(Wrapper):
    """Adds fresh random noise to every decode row (a nondeterministic reduction)."""

    def __init__(self, inner):
        super().__init__(inner, "noisy")
        self.rng = np.random.default_rng()

    def decode(self, seqs, tokens):
        out = super().decode(seqs, tokens)
        return out + 1e-9 * self.rng.standard_normal(out.shape)


class PaddedPrefillBatch(Wrapper):
    """prefill_batch that left-pads the shorter prompts with token 0 to the longest (padding without a mask)."""

    def __init__(self, inner):
        super().__init__(inner, "padded-prefill")

    def prefill_batch(self, seqs, prompts):
        longest = max(len(p) for p in prompts)
        return self.inner.prefill_batch(seqs, [[0] * (longest - len(p)) + list(p) for p in prompts])


class OneByOne(Wrapper):
    """Right numbers, but its own probe says every decode took two forward passes (rows run apart)."""

    def __init__(self, inner):
        super().__init__(inner, "one-by-one")
        self.record = None

    def decode(self, seqs, tokens):
        self.record = BatchRecord(rows=len(seqs), forward_calls=2, detail="two llama_decode calls")
        return super().decode(seqs, tokens)

    def last_batch(self):
        return self.record


def test_noise_fails_determinism():
    res = run("determinism", Noisy(engine()), MIXED, 2)
    assert not res.passed
    assert {(i, s) for i, s, _ in res.failing_keys} == {(i, s) for i in range(2) for s in range(1, T + 1)}
    assert all("not bitwise equal" in c.message for c in res.failures)


def test_a_wrong_prefill_batch_fails_batched_prefill():
    res = run("batched_prefill", PaddedPrefillBatch(engine()), MIXED, 3)
    assert not res.passed
    lengths = inputs(MIXED).lengths[:3]
    padded = {i for i in range(3) if lengths[i] < max(lengths)}     # the longest prompt gets no padding
    assert {i for i, _, _ in res.failing_keys} == padded
    run("batched_prefill", PaddedPrefillBatch(engine()), EQUAL, 3).assert_passed()   # nothing to pad


def test_no_prefill_batch_is_skipped_with_its_reason():
    res = run("batched_prefill", Wrapper(engine(), "plain"), MIXED, 2)
    assert res.skipped and "offers no prefill_batch" in res.skipped and not res.comparisons
    assert "SKIPPED" in res.summary()


def test_an_engine_that_is_not_batching_fails_whatever_its_numbers():
    eng = OneByOne(engine())
    res = run("sweep", eng, MIXED, 3)
    assert all(c.passed for c in res.comparisons)          # the logits are our engine's
    assert not res.passed
    assert [step for step, _ in res.not_batched] == [1, 2, 3]
    assert all(rec.forward_calls == 2 and rec.rows == 3 for _, rec in res.not_batched)
    assert "NOT BATCHED" in res.summary() and "two llama_decode calls" in res.summary()
    with pytest.raises(AssertionError, match="NOT BATCHED"):
        res.assert_passed()
    rows = res.to_rows()
    assert {(r["seq"], r["step"]) for r in rows if not r["passed"]} == {(i, s) for i in range(3) for s in (1, 2, 3)}
    assert all(not r["one_batch"] and r["message"].startswith("not one batch") for r in rows if r["step"] > 0)
    # one row has nothing to batch; and a field test is held to the probe too
    run("sweep", eng, MIXED, 1).assert_passed()
    needle = run("needle", eng, MIXED, 2)
    assert not needle.passed and len(needle.not_batched) == 3 * T   # every decode of every trial
    stale = run("sweep", StaleProbe(engine()), MIXED, 2)
    assert not stale.passed and [rec.rows for _, rec in stale.not_batched] == [1] * T


def test_a_batched_prefill_plan_carries_one_chunk_of_every_running_prompt_per_forward():
    from gemma_oracle.engine.prefill_plan import prefill_forwards

    plan = prefill_forwards([[1, 2, 3], [4], [5, 6, 7, 8, 9]], chunk=2)
    assert [fw.pieces for fw in plan] == [((0, (1, 2)), (1, (4,)), (2, (5, 6))), ((0, (3,)), (2, (7, 8))),
                                          ((2, (9,)),)]
    # prompt 1 ends at row 2 of forward 0, prompt 0 at row 0 of forward 1, prompt 2 at row 0 of forward 2
    assert [fw.ends for fw in plan] == [((1, 2),), ((0, 0),), ((2, 0),)]
    with pytest.raises(ValueError, match="at least one token"):
        prefill_forwards([[1], []], chunk=2)
