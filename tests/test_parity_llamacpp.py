"""Parity of the float64 reference engine with llama.cpp (CPU, F32 KV cache, flash attention off) on the
F32 variant of every synthetic preset, teacher-forced: this pins our Gemma 4 semantics (k_eq_v, V-norm,
proportional RoPE, PLE, shared KV, softcap, layer_output_scale) to an independent implementation."""
from __future__ import annotations

import numpy as np
import pytest

from gemma_oracle.engine.engine import GemmaEngine
from gemma_oracle.engine.adapters import llamacpp
from gemma_oracle.harness.fixtures.tokenizer_table import small_vocab
from gemma_oracle.oracles.parity import compare_with_llamacpp

from .conftest import PRESET_NAMES

pytestmark = [
    pytest.mark.synthetic,
    pytest.mark.parity,
    pytest.mark.skipif(not llamacpp.available(), reason=f"needs llama.cpp on the CPU: {llamacpp.INSTALL_HINT}"),
]

# Two teacher-forced sequences: 24 and 34 positions. The longer one wraps every sliding ring of the
# mini presets (window + prefill chunk - 1 <= 23) and passes the 12-16 token windows many times.
SEQUENCE_LENGTHS = (24, 34)


def parity_sequences(vocab_size: int) -> list[list[int]]:
    rng = np.random.default_rng(20261124)
    return [[2] + [int(t) for t in rng.integers(4, vocab_size, size=n - 1)] for n in SEQUENCE_LENGTHS]


def engine_logits_per_position(engine: GemmaEngine, tokens: list[int]) -> np.ndarray:
    """Logits after each prefix tokens[:k], k = 1..len: one prefill of the first token, then decode steps."""
    seq = engine.new_sequence()
    rows = [engine.prefill(seq, tokens[:1])]
    for t in tokens[1:]:
        rows.append(engine.decode([seq], [t])[0])
    return np.stack(rows)


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_reference_engine_matches_llama_cpp(synthetic_gguf, preset):
    path = synthetic_gguf(preset, "f32")
    engine = GemmaEngine(path, "numpy64")
    vocab = small_vocab()
    ban = llamacpp.partial_utf8_byte_tokens(vocab.tokens, vocab.types)
    ours, theirs = [], []
    for tokens in parity_sequences(engine.vocab_size):
        ours.append(engine_logits_per_position(engine, tokens))
        theirs.append(llamacpp.next_token_logprobs(path, [tokens[:k] for k in range(1, len(tokens) + 1)],
                                                   engine.vocab_size, ban_ids=ban))
    report = compare_with_llamacpp(name=preset, engine_logits=np.concatenate(ours), llamacpp_logprobs=np.concatenate(theirs))
    print(report.message)
    assert report.positions == sum(SEQUENCE_LENGTHS) >= 16
    assert report.argmax_checked > report.positions // 2  # the margin rule must not excuse most positions
    assert report.passed, report.message
