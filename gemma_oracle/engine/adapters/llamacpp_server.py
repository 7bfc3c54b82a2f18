"""A llama.cpp HTTP server (xllamacpp's Server) in a child process on 127.0.0.1, port 0: for tests and benches
that need a REAL server to talk to. A child, so a crash in llama.cpp cannot take the caller with it; stopped by
killing the child (the in-process destructor can wait forever for its main loop). F32 KV cache, flash attention
off, full-size SWA cache, no host prompt cache (the settings of ``llamacpp_engine``, so the two give the same rows).

    with llama_server(path, slots=4) as url:   # url = "http://127.0.0.1:PORT"
        ...
"""
from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys

from gemma_oracle.engine.adapters.llamacpp import LlamaCppError

_CHILD = r"""
import json, os, sys, time
import xllamacpp as xlc
cfg = json.loads(sys.argv[1])
p = xlc.CommonParams()
p.verbosity = int(os.environ.get("GEMMA_ORACLE_LLAMACPP_VERBOSITY", "0"))  # errors only (see llamacpp_engine)
p.model.path = cfg["model"]
p.n_parallel = cfg["slots"]
p.n_ctx = cfg["ctx"] * cfg["slots"]
p.n_batch = p.n_ubatch = cfg["n_ubatch"]
p.cpuparams.n_threads = p.cpuparams_batch.n_threads = cfg["threads"]
p.cache_type_k = p.cache_type_v = xlc.ggml_type.GGML_TYPE_F32
p.flash_attn_type = xlc.llama_flash_attn_type.LLAMA_FLASH_ATTN_TYPE_DISABLED
p.swa_full = True
p.cache_ram_mib = 0
p.cache_idle_slots = False
p.endpoint_metrics = cfg["metrics"]
p.endpoint_props = True
p.endpoint_slots = True   # where a forced prefill_batch placement landed (history_engine)
p.warmup = False
p.port = 0
server = xlc.Server(p)
print(json.dumps({"address": server.listening_address}), flush=True)
sys.stdin.read()   # until the parent closes our stdin (or kills us)
"""


@contextlib.contextmanager
def llama_server(model_path, *, slots: int = 4, metrics: bool = True, ctx: int = 512, threads: int = 1,
                 n_ubatch: int = 512, start_timeout: float = 60):
    """Start the server, yield its base URL, kill it at exit (LlamaCppError when it dies before listening)."""
    cfg = {"model": str(model_path), "slots": slots, "metrics": metrics, "ctx": ctx, "threads": threads,
           "n_ubatch": n_ubatch}
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(cfg)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        ready, _, _ = select.select([proc.stdout], [], [], start_timeout)
        if not ready:
            raise LlamaCppError(f"llama.cpp server on {model_path} did not listen within {start_timeout} s")
        line = proc.stdout.readline()   # the child prints its address once the model is loaded
        if not line:
            raise LlamaCppError(f"llama.cpp server on {model_path} exited (code {proc.wait(5)}) before listening")
        yield json.loads(line)["address"]
    finally:
        proc.kill()
        proc.wait(10)
