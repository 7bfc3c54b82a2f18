"""The real trained Gemma 3 270M (Q4_K_M, from PyPI; `pytest -m real`): the reference engine's greedy
continuation agrees with llama.cpp's under the first-divergence rule, and on the CPU (float64 reference)
and the GPU (CuPy engine, WS/GEMM-N routes): prefill with a per-sequence cache equals plain prefill, batched
decode equals single-user decode at N = 1, 2, 6, 17 over two steps, also in a batch whose 512-token
sliding rings wrap."""
from __future__ import annotations

import numpy as np
import pytest

from gemma_oracle.engine.adapters import llamacpp
from gemma_oracle.harness.suites.synthetic import POLICIES  # float64: BLAS-order noise only; cupy (WS/GEMM-N): exact
from gemma_oracle.reports.records import NO_ROUTE
from gemma_oracle.oracles.compare import first_divergence
from gemma_oracle.oracles.prefill_cache import prefill_cache_vs_plain
from gemma_oracle.oracles.single_vs_batched import golden_single_vs_batched, greedy_forced_tokens

pytestmark = pytest.mark.real

# Token ids from llama.cpp's own tokenizer (llama-server /tokenize on this file, add_special=True).
PROMPTS = {
    "The capital of France is": [2, 818, 5279, 529, 7001, 563],
    "def fibonacci(n):": [2, 2063, 10779, 78113, 236769, 236749, 1473],
    "The quick brown fox jumps over the": [2, 818, 3823, 8864, 37423, 38167, 1024, 506],
    "In 1969, the first humans landed on": [2, 902, 236743, 236770, 236819, 236825, 236819, 236764, 506, 1171, 14464, 30473, 580],
}
GREEDY_TOKENS = 16
N_LIST = (1, 2, 6, 17)  # the N = 2, 6, 17 (WS below 17, GEMM-N at 17 on the GPU) and the N = 1 baseline
DECODE_STEPS = 2  # "two steps": every golden run decodes twice after the prefill
BACKENDS = ["numpy64", pytest.param("cupy", marks=pytest.mark.gpu)]


@pytest.fixture(scope="module")
def gemma3_engine(gemma3_path):
    from gemma_oracle.engine.engine import GemmaEngine

    return GemmaEngine(gemma3_path, "numpy64", memo_prefill=True)


@pytest.fixture(scope="module", params=BACKENDS)
def engine(request, gemma3_path):
    """numpy64: the module's reference engine (its prompt memo shared); cupy: the GPU engine on its
    batch-invariant routes."""
    if request.param == "numpy64":
        return request.getfixturevalue("gemma3_engine")
    from gemma_oracle.engine.gpu_engine import CupyEngine

    return CupyEngine(gemma3_path, route_mode="batch-invariant")


def backend_of(engine) -> str:
    return "cupy" if engine.name.startswith("cupy") else "numpy64"


def greedy(engine, prompt: list[int], n: int) -> tuple[list[int], np.ndarray]:
    seq = engine.new_sequence()
    logits = [engine.prefill(seq, prompt)]
    tokens = [int(np.argmax(logits[-1]))]
    while len(tokens) < n:
        logits.append(engine.decode([seq], [tokens[-1]])[0])
        tokens.append(int(np.argmax(logits[-1])))
    return tokens, np.stack(logits)


def sequences(engine, count: int):
    """The real prompts (greedy continuations as the forced script), then random-token prompts of 3..12
    tokens with random forced tokens: short, so 17 float64 single-user references stay cheap."""
    prompts = list(PROMPTS.values())
    forced = [greedy_forced_tokens(engine, p, DECODE_STEPS) for p in prompts]
    rng = np.random.default_rng(270)
    for _ in range(count - len(prompts)):
        prompts.append([2] + [int(t) for t in rng.integers(4, engine.vocab_size, size=int(rng.integers(2, 12)))])
        forced.append([int(t) for t in rng.integers(4, engine.vocab_size, size=DECODE_STEPS)])
    return prompts[:count], forced[:count]


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


def test_prefill_with_sequence_cache_equals_plain_prefill(engine):
    # A prompt of its own (the reference engine memoises prefills: this one must be computed).
    prompt = [2, 818, 1171, 14464, 529, 7001, 563, 506, 5279, 529, 3823, 8864, 37423]
    result = prefill_cache_vs_plain(engine, prompt, occupants=list(PROMPTS.values())[:2], split=5,
                                    next_token=506, policy=POLICIES[backend_of(engine)])
    assert len(result.comparisons) == 2
    result.assert_passed()


def test_golden_oracle_holds_on_real_model(engine, gemma3_path, record_oracle):
    backend = backend_of(engine)
    if backend == "cupy":  # "exact" holds because these are the batch-invariant routes
        assert {n: {t[4] for t in engine.route_table(n)} for n in N_LIST} == {1: {"ws"}, 2: {"ws"}, 6: {"ws"}, 17: {"gemm_n"}}
    prompts, forced = sequences(engine, max(N_LIST))
    memo: dict = {}
    for n in N_LIST:
        result = golden_single_vs_batched(engine, prompts[:n], forced[:n], policy=POLICIES[backend], cache=memo)
        record_oracle(result, suite="gemma3-270m", fixture=gemma3_path.stem, backend=backend,
                      route=getattr(engine, "route_mode", NO_ROUTE))
        assert len(result.comparisons) == n * (DECODE_STEPS + 1)
        result.assert_passed()


def test_batch_whose_sliding_rings_wrap(engine):
    """One prompt longer than the sliding ring (window 512 + prefill chunk - 1 positions), so its ring wraps
    during prefill and again at every decode step, batched with a short one. The long prompt is the costly
    part on the CPU (about 70 float64 prefill chunks): one is enough."""
    ring = engine.config.sliding_window + engine.prefill_chunk - 1
    rng = np.random.default_rng(512)
    long_prompt = [2] + [int(t) for t in rng.integers(4, engine.vocab_size, size=ring + 8)]
    prompts = [long_prompt, list(PROMPTS.values())[0]]
    forced = [[int(t) for t in rng.integers(4, engine.vocab_size, size=DECODE_STEPS)] for _ in prompts]
    assert engine.config.sliding_window == 512 and len(long_prompt) > ring
    result = golden_single_vs_batched(engine, prompts, forced, policy=POLICIES[backend_of(engine)])
    assert len(result.comparisons) == 2 * (DECODE_STEPS + 1)
    result.assert_passed()
