"""Measure llama.cpp's single-user and batched error against our float64 engine, on log-probabilities.

The calibration behind gemma_oracle.oracles.compare's outside-engine policies (OUTSIDE_F32_POLICY,
OUTSIDE_QUANT_POLICY). For each fixture and N: one xllamacpp Server with n_parallel = N (F32 KV cache, flash
attention off, 1 thread); every prompt generated greedily ALONE (requests one after another), then all N at once
from N threads (continuous batching puts their prompt chunks and decode steps into shared llama_decode calls).
Rows are llama.cpp's full-vocabulary pre-sampling log-probabilities (n_probs = vocab). The float64 reference is
our numpy engine, teacher-forced along llama.cpp's single-user path and log-softmaxed; a batched row is compared
only while the batched greedy path still equals the single-user path.

Usage: python scripts/measure_llamacpp_batch_noise.py OUT.json [preset ...]
The figures behind the policies (2026-12-06): reports/history/2026-12-06-cpu-llamacpp-batch-noise.json.
"""
from __future__ import annotations

import json
import sys
import threading
import time

import numpy as np

PROMPT_LENGTHS = (62, 20, 9, 40, 17, 5, 33, 12)
GEN = 16
N_LIST = (1, 2, 4, 5, 8)
SEEDS = (2026, 2027, 2028)


def server(path: str, n: int, vocab: int):
    import xllamacpp as xlc

    p = xlc.CommonParams()
    p.model.path = path
    p.n_ctx = 256 * n
    p.n_batch = p.n_ubatch = 512
    p.cpuparams.n_threads = 1
    p.cpuparams_batch.n_threads = 1
    p.n_parallel = n
    p.cache_type_k = xlc.ggml_type.GGML_TYPE_F32
    p.cache_type_v = xlc.ggml_type.GGML_TYPE_F32
    p.flash_attn_type = xlc.llama_flash_attn_type.LLAMA_FLASH_ATTN_TYPE_DISABLED
    p.warmup = False
    return xlc.Server(p)


def generate(srv, prompt, vocab, ban):
    r = srv.handle_completions({"prompt": list(prompt), "max_tokens": GEN, "temperature": 0, "n_probs": vocab,
                                "cache_prompt": False, "ignore_eos": True, "logit_bias": [[i, False] for i in ban]})
    steps = r["choices"][0]["logprobs"]["content"]
    toks, rows = [], np.full((len(steps), vocab), np.nan)
    for t, st in enumerate(steps):
        toks.append(int(st["id"]))
        ids = [c["id"] for c in st["top_logprobs"]]
        rows[t, ids] = [c["logprob"] for c in st["top_logprobs"]]
    assert not np.isnan(rows).any(), "llama.cpp returned fewer than vocab log-probabilities"
    return toks, rows


def ref_rows(engine, prompt, toks):
    from gemma_oracle.oracles.metrics import log_softmax

    seq = engine.new_sequence()
    rows = [engine.prefill(seq, list(prompt))]
    for t in toks[:-1]:
        rows.append(engine.decode([seq], [t])[0])
    return log_softmax(np.stack(rows))


def err(ref, x):
    d = ref - x
    return float(np.sum(d * d) / np.sum(ref * ref)), float(np.max(np.abs(d)))


def topk_err(ref, x, k=20):
    """(NMSE over the candidate's top-k ids, max |d| lower bound): the top-k metrics of a served engine's answer."""
    from gemma_oracle.engine.protocol import TopKLogprobs
    from gemma_oracle.oracles.metrics import dense_as_topk, topk_distance

    t = TopKLogprobs.from_logits(x, k)
    d = topk_distance(*dense_as_topk(ref, logprobs=True), t.ids, t.logprobs)
    return d.nmse_shared, d.max_abs_lower


def main(out_path, presets):
    from gemma_oracle.engine.adapters.llamacpp import partial_utf8_byte_tokens
    from gemma_oracle.engine.registry import make_engine
    from gemma_oracle.harness.fixtures.cache import fixture_path
    from gemma_oracle.harness.fixtures.tokenizer_table import small_vocab

    sv = small_vocab()
    ban = partial_utf8_byte_tokens(sv.tokens, sv.types)
    results = []
    for preset in presets:
        for variant in ("f32", "q4_k_m"):
            path = str(fixture_path(preset, variant))
            ref = make_engine("numpy", path)
            vocab = ref.vocab_size
            for seed in SEEDS:
                rng = np.random.default_rng(seed)
                prompts = [[2] + [int(t) for t in rng.integers(4, vocab, size=n - 1)] for n in PROMPT_LENGTHS]
                ref_memo = {}
                for n in N_LIST:
                    t0 = time.time()
                    srv = server(path, n, vocab)
                    single = [generate(srv, p, vocab, ban) for p in prompts[:n]]
                    batched = [None] * n

                    def go(i):
                        batched[i] = generate(srv, prompts[i], vocab, ban)

                    ths = [threading.Thread(target=go, args=(i,)) for i in range(n)]
                    for th in ths:
                        th.start()
                    for th in ths:
                        th.join()
                    rows = []
                    for i in range(n):
                        (st, sr), (bt, br) = single[i], batched[i]
                        key = (i, tuple(st))
                        if key not in ref_memo:
                            ref_memo[key] = ref_rows(ref, prompts[i], st)
                        r = ref_memo[key]
                        for t in range(GEN):
                            if bt[:t] != st[:t]:
                                break  # paths split: later rows are other positions
                            s_n, s_a = err(r[t], sr[t])
                            b_n, b_a = err(r[t], br[t])
                            top2 = np.sort(r[t])[-2:]
                            ts, tb = topk_err(r[t], sr[t]), topk_err(r[t], br[t])
                            rows.append({"seq": i, "step": t, "single_nmse": s_n, "single_max_abs": s_a,
                                         "batched_nmse": b_n, "batched_max_abs": b_a,
                                         "top20_single": ts, "top20_batched": tb,
                                         "bit_identical": bool(np.array_equal(sr[t], br[t])),
                                         "argmax_ref": int(np.argmax(r[t])), "argmax_single": int(np.argmax(sr[t])),
                                         "argmax_batched": int(np.argmax(br[t])), "ref_margin": float(top2[1] - top2[0])})
                    summ = {"preset": preset, "variant": variant, "seed": seed, "n": n, "rows": len(rows),
                            "bit_identical": sum(r["bit_identical"] for r in rows),
                            "max_single_nmse": max(r["single_nmse"] for r in rows),
                            "max_batched_nmse": max(r["batched_nmse"] for r in rows),
                            "max_single_max_abs": max(r["single_max_abs"] for r in rows),
                            "max_batched_max_abs": max(r["batched_max_abs"] for r in rows),
                            "max_nmse_ratio": max(r["batched_nmse"] / r["single_nmse"] for r in rows),
                            "max_abs_ratio": max(r["batched_max_abs"] / r["single_max_abs"] for r in rows),
                            "argmax_flips_batched": sum(r["argmax_batched"] != r["argmax_ref"] for r in rows),
                            "argmax_flips_single": sum(r["argmax_single"] != r["argmax_ref"] for r in rows),
                            "seconds": round(time.time() - t0, 1)}
                    print(json.dumps(summ), flush=True)
                    results.append({"summary": summ, "rows": rows})
                    with open(out_path, "w") as fh:
                        json.dump({"date": time.strftime("%Y-%m-%d"), "gen": GEN, "prompt_lengths": PROMPT_LENGTHS,
                                   "results": results}, fh)
    sys.stdout.flush()


if __name__ == "__main__":
    import os

    main(sys.argv[1], sys.argv[2:] or ["g4-12b-mini"])
    os._exit(0)  # skip the Server destructors (see llamacpp_worker)

