"""Subprocess side of gemma_oracle.engine.adapters.llamacpp: loads a GGUF in xllamacpp (llama.cpp on the CPU) and answers
next-token log-probability requests. Run as `python -m gemma_oracle.engine.adapters.llamacpp_worker REQUEST.json RESULT.json`.

It lives in its own process because llama.cpp aborts the whole process on an assertion (e.g. a gemma4
file without sliding layers); the parent turns that into a typed error.
"""
from __future__ import annotations

import json
import os
import sys


_KEEP_ALIVE: list = []


def main(request_path: str, result_path: str) -> int:
    import xllamacpp as xlc

    req = json.loads(open(request_path).read())
    p = xlc.CommonParams()
    p.model.path = req["model"]
    p.n_ctx = int(req.get("n_ctx", 512))
    p.n_batch = p.n_ubatch = int(req.get("n_batch", 512))
    p.cpuparams.n_threads = int(req.get("threads", 1))
    p.cpuparams_batch.n_threads = int(req.get("threads", 1))
    p.n_parallel = 1
    # One thread: ggml worker threads spin-wait, and under pytest -n 2 two spinning pools on 2 cores
    # made a 3 s comparison take 40 s.
    if req.get("f32_kv", True):  # F32 KV cache: no fp16 rounding of K/V on store
        p.cache_type_k = xlc.ggml_type.GGML_TYPE_F32
        p.cache_type_v = xlc.ggml_type.GGML_TYPE_F32
    if not req.get("flash_attn", False):
        p.flash_attn_type = xlc.llama_flash_attn_type.LLAMA_FLASH_ATTN_TYPE_DISABLED
    p.warmup = False
    server = xlc.Server(p)
    _KEEP_ALIVE.append(server)  # never destroyed: see the os._exit below
    # The server withholds a token that is an incomplete UTF-8 sequence (a byte token >= 0x80), and its
    # logprobs with it; banning those ids from *sampling* keeps every answer, and the returned
    # top_logprobs are pre-sampling, so the distribution itself is unchanged.
    bias = [[int(i), False] for i in req.get("ban_ids", [])]
    results = []
    for prompt in req.get("prompts", []):
        r = server.handle_completions(
            {"prompt": prompt, "max_tokens": 1, "temperature": 0, "n_probs": int(req["n_probs"]),
             "cache_prompt": True, "ignore_eos": True, "logit_bias": bias}
        )
        logprobs = r["choices"][0].get("logprobs")
        if not logprobs:
            raise RuntimeError(f"llama.cpp returned no logprobs for prompt {prompt}: {r['choices'][0]}")
        content = logprobs["content"][0]["top_logprobs"]
        results.append({"ids": [c["id"] for c in content], "logprobs": [c["logprob"] for c in content]})
    generated = []
    for prompt in req.get("generate_from", []):  # greedy continuation with top-n logprobs at each step
        r = server.handle_completions(
            {"prompt": prompt, "max_tokens": int(req["generate_tokens"]), "temperature": 0,
             "n_probs": int(req["n_probs"]), "cache_prompt": False, "ignore_eos": True, "logit_bias": bias}
        )
        steps = r["choices"][0]["logprobs"]["content"]
        generated.append([{"id": st["id"], "ids": [c["id"] for c in st["top_logprobs"]],
                           "logprobs": [c["logprob"] for c in st["top_logprobs"]]} for st in steps])
    with open(result_path, "w") as fh:
        json.dump({"loaded": True, "results": results, "generated": generated}, fh)
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1], sys.argv[2])
    # Skip the Server destructor: it can wait forever for its main loop ("~Server: waiting for main loop
    # exit") when torn down right after start. The result file is already written and closed.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
