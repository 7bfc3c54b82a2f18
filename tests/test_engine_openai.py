"""The OpenAI-compatible engine against a REAL llama.cpp HTTP server (tests/llama_server.py: xllamacpp in a child
process): same rows as the in-process engine, one llama_decode per batched step when /metrics is there, no batch
record without it, typed errors for a dead URL and for answers in an unknown dialect."""
from __future__ import annotations

import socket

import numpy as np
import pytest

from gemma_oracle.engine.adapters import llamacpp
from gemma_oracle.engine.adapters.completion_rows import CompletionFormatError, dense_rows, topk_rows
from gemma_oracle.engine.errors import GemmaOracleError
from gemma_oracle.oracles.single_vs_batched import single_user_logits

from .llama_server import llama_server

pytestmark = [
    pytest.mark.synthetic,
    pytest.mark.parity,
    pytest.mark.skipif(not llamacpp.available(), reason=f"needs llama.cpp on the CPU: {llamacpp.INSTALL_HINT}"),
]

PRESET = "keqv-mixed"


def _openai(path, **kw):
    from gemma_oracle.engine.adapters.openai_engine import make

    return make(path, **kw)


@pytest.fixture(scope="module")
def model(synthetic_gguf):
    return synthetic_gguf(PRESET, "f32")


@pytest.fixture(scope="module")
def server(model):
    with llama_server(model, slots=4) as url:
        yield url


def test_http_rows_equal_the_in_process_rows(model, server):
    from gemma_oracle.engine.adapters.llamacpp_engine import make

    http = _openai(model, url=server, topk=0)
    local = make(model, slots=4)
    prompt, forced = [2, 9, 44, 301], [17, 250, 3]
    a = single_user_logits(http, prompt, forced)
    b = single_user_logits(local, prompt, forced)
    assert a.shape == (4, http.vocab_size) and np.array_equal(a, b)
    d = http.describe()
    assert d["server"] == "llama.cpp" and d["slots"] == 4 and d["same_model_file"].startswith("yes")
    assert d["batch probe"].startswith("llama.cpp n_decode_total")


def test_a_four_row_step_is_one_batch_and_topk_is_sorted(model, server):
    e = _openai(model, url=server, topk=16)
    seqs = [e.new_sequence() for _ in range(4)]
    for i, s in enumerate(seqs):
        e.prefill(s, [2, 30 + i, 60])
    for t in range(2):
        out = e.decode(seqs, [70 + t] * 4)
        assert out.shape == (4, 16) and np.all(np.diff(out.logprobs, axis=1) <= 0)
        rec = e.last_batch()
        assert rec.rows == 4 and rec.forward_calls == 1, rec
    with pytest.raises(GemmaOracleError, match="raise slots"):   # the server's total_slots bounds N
        e.decode(seqs + [e.new_sequence()], [1] * 5)


def test_no_metrics_means_no_batch_record(model):
    with llama_server(model, slots=2, metrics=False) as url:
        e = _openai(model, url=url, topk=4)
        s = e.new_sequence()
        e.prefill(s, [2, 3, 4])
        e.decode([s], [5])
        assert e.last_batch() is None and e.describe()["batch probe"] == "none"


def test_a_dead_url_is_a_typed_error_naming_it(model):
    with socket.socket() as sock:   # a port nobody listens on: bind, read it, close
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with pytest.raises(GemmaOracleError, match=f"127.0.0.1:{port}.*cannot reach"):
        _openai(model, url=url, timeout=5)


def test_vllm_and_llama_cpp_dialects_parse_and_others_are_refused():
    llama = {"logprobs": {"content": [{"top_logprobs": [{"id": 2, "logprob": -0.1}, {"id": 0, "logprob": -2.5},
                                                        {"id": 1, "logprob": -3.0}]}]}}
    vllm = {"logprobs": {"top_logprobs": [{"token_id:2": -0.1, "token_id:0": -2.5, "token_id:1": -3.0}]}}
    for choice in (llama, vllm):
        assert dense_rows([choice], 3, "x").tolist() == [[-2.5, -3.0, -0.1]]
        tk = topk_rows([choice], 2, "x")
        assert tk.ids.tolist() == [[2, 0]] and tk.logprobs.tolist() == [[-0.1, -2.5]]
    with pytest.raises(CompletionFormatError, match="missing"):
        dense_rows([llama], 4, "http://h")          # id 3 never came back: an error, not -inf
    with pytest.raises(CompletionFormatError, match="token_id"):
        dense_rows([{"logprobs": {"top_logprobs": [{" the": -0.1}]}}], 1, "http://h")
    with pytest.raises(CompletionFormatError, match="http://h.*expected logprobs.content"):
        dense_rows([{"logprobs": {"tokens": ["a"]}}], 1, "http://h")


def test_gemma3_270m_four_row_step_is_one_batch(gemma3_path):
    with llama_server(gemma3_path, slots=4, threads=1) as url:
        e = _openai(gemma3_path, url=url, topk=64)
        assert e.vocab_size == 262144
        prompts = [[2, 818, 5279, 529, 7001, 563], [2, 2063, 10779, 78113], [2, 818, 3823, 8864], [2, 902, 236743]]
        seqs = [e.new_sequence() for _ in prompts]
        for s, p in zip(seqs, prompts):
            e.prefill(s, p)
        out = e.decode(seqs, [506, 236769, 37423, 236770])
        assert out.shape == (4, 64) and e.last_batch().forward_calls == 1, e.last_batch()
