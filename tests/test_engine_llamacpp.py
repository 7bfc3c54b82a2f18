"""The in-process llama.cpp engine (xllamacpp, real batching): the machinery, not llama.cpp's numbers. Every
batched step must be ONE llama_decode by llama.cpp's own counter, single-user runs must repeat bitwise, and the
golden oracle run on it must agree with a bitwise comparison computed here by hand."""
from __future__ import annotations

import numpy as np
import pytest

from gemma_oracle.engine.adapters import llamacpp
from gemma_oracle.engine.adapters.history_engine import SlotsExhaustedError
from gemma_oracle.engine.protocol import DecodeEngine, TopKLogprobs
from gemma_oracle.oracles.compare import exact
from gemma_oracle.oracles.single_vs_batched import golden_single_vs_batched, single_user_logits

pytestmark = [
    pytest.mark.synthetic,
    pytest.mark.parity,
    pytest.mark.skipif(not llamacpp.available(), reason=f"needs llama.cpp on the CPU: {llamacpp.INSTALL_HINT}"),
]

PRESET = "keqv-mixed"


def _make(path, **kw):
    from gemma_oracle.engine.adapters.llamacpp_engine import make

    return make(path, **kw)


@pytest.fixture(scope="module")
def engines(synthetic_gguf):
    """One f32 and one q4_k_m engine with 8 slots, shared by the module (a Server start is ~0.2 s, the child-process
    load check ~1 s)."""
    return {v: _make(synthetic_gguf(PRESET, v), slots=8) for v in ("f32", "q4_k_m")}


def inputs(n: int, t: int, vocab: int, seed: int):
    rng = np.random.default_rng(seed)
    prompts = [[2] + rng.integers(4, vocab, size=int(rng.integers(2, 7))).tolist() for _ in range(n)]
    forced = [rng.integers(4, vocab, size=t).tolist() for _ in range(n)]
    return prompts, forced


def test_meets_the_protocol_and_describes_itself(engines):
    e = engines["f32"]
    assert isinstance(e, DecodeEngine) and e.output_logprobs and e.output_topk == 0
    d = e.describe()
    assert d["engine"] == "llama.cpp (xllamacpp)" and d["llama_cpp_build"].startswith("b") and d["swa_full"] is True
    assert (d["slots"], d["threads"], d["kv"], d["flash_attn"]) == (8, 1, "f32", False)
    assert "slots=8" in e.name and "kv=f32" in e.name and e.name != engines["q4_k_m"].name


@pytest.mark.parametrize("n", [2, 4, 5, 8])
def test_every_batched_step_is_one_llama_decode(engines, n):
    e = engines["f32"]
    prompts, forced = inputs(n, 2, e.vocab_size, seed=n)
    seqs = [e.new_sequence() for _ in range(n)]
    for s, p in zip(seqs, prompts):
        e.prefill(s, p)
    for t in range(2):
        rows = e.decode(seqs, [f[t] for f in forced])
        rec = e.last_batch()
        assert rows.shape == (n, e.vocab_size) and rows.dtype == np.float64 and np.isfinite(rows).all()
        assert rec.rows == n and rec.forward_calls == 1 and rec.batched, rec
        # log-probabilities: each row is a distribution
        np.testing.assert_allclose(np.exp(rows).sum(axis=1), 1.0, rtol=1e-4)


def test_single_user_decode_is_deterministic(engines):
    e = engines["f32"]
    prompts, forced = inputs(1, 4, e.vocab_size, seed=7)
    a = single_user_logits(e, prompts[0], forced[0])
    b = single_user_logits(e, prompts[0], forced[0])
    assert np.array_equal(a, b)


@pytest.mark.parametrize("variant", ["f32", "q4_k_m"])
def test_golden_run_agrees_with_a_bitwise_comparison_by_hand(engines, variant):
    e = engines[variant]
    prompts, forced = inputs(4, 3, e.vocab_size, seed=11)
    result = golden_single_vs_batched(e, prompts, forced, policy=exact())
    assert e.last_batch().forward_calls == 1
    singles = [single_user_logits(e, p, f) for p, f in zip(prompts, forced)]
    seqs = [e.new_sequence() for _ in prompts]
    batched = [[e.prefill(s, p)] for s, p in zip(seqs, prompts)]
    for t in range(3):
        out = e.decode(seqs, [f[t] for f in forced])
        assert e.last_batch().batched
        for i in range(len(seqs)):
            batched[i].append(out[i])
    by_hand = [np.array_equal(singles[i][step], batched[i][step]) for i in range(4) for step in range(4)]
    assert [c.passed for c in result.comparisons] == by_hand
    print(variant, result.summary())


def test_topk_is_the_top_of_the_full_row(engines, synthetic_gguf):
    full = engines["f32"]
    k = 8
    top = _make(synthetic_gguf(PRESET, "f32"), slots=2, topk=k)
    assert top.output_topk == k and top.name != full.name
    prompt, forced = [2, 17, 33, 90], [41, 5]
    a, b = full.new_sequence(), top.new_sequence()
    rows = [(full.prefill(a, prompt), top.prefill(b, prompt))]
    for t in forced:
        rows.append((full.decode([a], [t])[0], top.decode([b], [t])))
    for dense, tk in rows:
        tk = tk if tk.ids.ndim == 1 else tk[0]
        assert isinstance(tk, TopKLogprobs) and tk.k == k
        order = np.argsort(-dense, kind="stable")[:k]
        assert set(tk.ids.tolist()) == set(order.tolist())
        assert np.array_equal(tk.logprobs, dense[tk.ids]) and np.all(np.diff(tk.logprobs) <= 0)


def test_more_rows_than_slots_is_a_typed_error(synthetic_gguf):
    e = _make(synthetic_gguf(PRESET, "f32"), slots=2)
    seqs = [e.new_sequence() for _ in range(3)]
    with pytest.raises(SlotsExhaustedError, match="raise slots"):
        e.prefill_batch(seqs, [[2, 5], [2, 6], [2, 7]])
    e.prefill(seqs[0], [2, 5])
    e.prefill(seqs[1], [2, 6])
    with pytest.raises(SlotsExhaustedError, match="raise slots"):
        e.prefill(seqs[2], [2, 7])
    with pytest.raises(SlotsExhaustedError, match="slots=3"):
        e.decode(seqs, [1, 2, 3])


def test_prefill_batch_records_its_forward_passes(engines):
    e = engines["f32"]
    prompts, _ = inputs(4, 0, e.vocab_size, seed=3)
    seqs = [e.new_sequence() for _ in prompts]
    rows = e.prefill_batch(seqs, prompts)
    rec = e.last_batch()
    assert rows.shape == (4, e.vocab_size)
    assert rec.rows == 4 and rec.min_forward_calls == 1 and rec.forward_calls >= 1 and rec.attempts >= 1
    out = e.decode(seqs, [5, 6, 7, 8])   # the prefilled sequences decode on from their own slots
    assert out.shape == (4, e.vocab_size) and e.last_batch().forward_calls == 1


def test_a_file_llama_cpp_refuses_is_a_typed_error(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\x00" * 64)
    with pytest.raises(llamacpp.LlamaCppError):
        _make(bad, slots=2)


# ---------------------------------------------------------------------------------------- prefill_batch placement

def test_prefill_batch_is_one_request_forced_into_its_own_slots(engines):
    """Beside live sequences (one of them sharing a prefix with a joiner), N prompts go through ONE llama_decode,
    each into the slot the engine chose (checked on /slots), and the live ones decode on from their own slots."""
    e = engines["f32"]
    live = [e.new_sequence() for _ in range(3)]
    e.prefill_batch(live, [[2, 10, 11, 12, 13], [2, 20, 21], [2, 30, 31, 32, 33, 34, 35]])
    e.decode(live, [40, 41, 42])
    joiners = [e.new_sequence() for _ in range(4)]
    e.prefill_batch(joiners, [[2, 10, 11, 99], [2, 50], [2, 60, 61, 62, 63, 64, 65, 66, 67, 68, 69], [2, 50]])
    rec = e.last_batch()
    assert rec.rows == 4 and rec.forward_calls == 1 and rec.attempts == 1, rec
    assert "forced by keys" in rec.detail and "checked on /slots" in rec.detail, rec.detail
    out = e.decode(live + joiners, [5, 6, 7, 8, 9, 10, 11])   # every row reuses its own slot (else an error)
    assert out.shape == (7, e.vocab_size) and e.last_batch().forward_calls == 1


def test_prefill_batch_falls_back_to_pinned_requests_when_a_live_history_extends_a_prompt(engines):
    e = engines["f32"]
    live = e.new_sequence()
    e.prefill(live, [2, 70, 71, 72])           # lowest free slot: below the joiners' slots
    joiners = [e.new_sequence() for _ in range(2)]
    e.prefill_batch(joiners, [[2, 70, 71], [2, 80]])   # [2, 70, 71] is a prefix of the live history
    rec = e.last_batch()
    assert "fallback to 2 pinned requests" in rec.detail and "(live) holds tokens that start with all 3" in rec.detail
    e.decode([live] + joiners, [1, 2, 3])      # the live history was not touched
    assert e.last_batch().forward_calls == 1
