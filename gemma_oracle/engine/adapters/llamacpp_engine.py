"""llama.cpp in-process through xllamacpp, with real batching: N sequences in one ``llama_decode`` per step.

The server runs inside this process (``xlc.Server``: llama.cpp's own server loop and slots); requests go through
``handle_completions``, which releases the GIL while llama.cpp works, and the batch probe reads llama.cpp's
``/metrics`` counters through ``handle_metrics``. How sequences, slots and the one-batch check work is
``history_engine``'s business; this module builds the server and names the engine.

Before loading in-process, the file is loaded once in a child process (``llamacpp.check_loads``): llama.cpp aborts
the whole process on some files (an assertion), and that must become a typed ``LlamaCppError``, not a dead pytest.
"""
from __future__ import annotations

import importlib.metadata
import os
import re
from pathlib import Path
from typing import Optional

from gemma_oracle.engine.adapters import llamacpp
from gemma_oracle.engine.adapters.gguf_vocab import read_vocab_info
from gemma_oracle.engine.adapters.history_engine import Counters, HistoryEngine
from gemma_oracle.engine.adapters.llamacpp import LlamaCppError

__all__ = ["InProcessServer", "LlamaCppEngine", "llama_cpp_build", "make", "parse_counters"]

KV_TYPES = ("f32", "f16", "q8_0")
_COUNTER = re.compile(r"^llamacpp:(n_decode_total|prompt_tokens_total)\s+(\S+)$", re.M)


def parse_counters(metrics_text: str) -> Optional[Counters]:
    """llama.cpp's decode and prompt-token counters from Prometheus text, or None when they are absent."""
    found = {k: float(v) for k, v in _COUNTER.findall(metrics_text or "")}
    if "n_decode_total" not in found or "prompt_tokens_total" not in found:
        return None
    return Counters(int(found["n_decode_total"]), int(found["prompt_tokens_total"]))


def llama_cpp_build() -> tuple[str, str]:
    """(xllamacpp version, llama.cpp build): the package's last version component is llama.cpp's build number
    (2026.10.11549 -> b11549); the library's own BUILD_INFO says b0-unknown."""
    version = importlib.metadata.version("xllamacpp")
    return version, "b" + version.rsplit(".", 1)[-1]


class InProcessServer:
    """An xllamacpp Server in this process. ``where`` is its listening address (a real HTTP server too)."""

    def __init__(self, model_path: str, *, slots: int, threads: int, kv: str, flash_attn: bool, ctx: int,
                 n_ubatch: int):
        import xllamacpp as xlc

        p = xlc.CommonParams()
        # llama.cpp logs every slot's every task at its default verbosity (thousands of lines a check); keep its
        # errors only, unless GEMMA_ORACLE_LLAMACPP_VERBOSITY asks for more
        p.verbosity = int(os.environ.get("GEMMA_ORACLE_LLAMACPP_VERBOSITY", "0"))
        p.model.path = model_path
        p.n_parallel = slots
        p.n_ctx = ctx * slots                 # llama.cpp splits n_ctx evenly over the slots
        p.n_batch = p.n_ubatch = n_ubatch
        p.cpuparams.n_threads = p.cpuparams_batch.n_threads = threads
        kv_type = {"f32": xlc.ggml_type.GGML_TYPE_F32, "f16": xlc.ggml_type.GGML_TYPE_F16,
                   "q8_0": xlc.ggml_type.GGML_TYPE_Q8_0}[kv]
        p.cache_type_k = p.cache_type_v = kv_type
        fa = xlc.llama_flash_attn_type
        p.flash_attn_type = fa.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else fa.LLAMA_FLASH_ATTN_TYPE_DISABLED
        p.swa_full = True          # full-size SWA cache: a cached history is reusable, not re-processed whole
        p.cache_ram_mib = 0        # no host prompt cache: a slot may only ever hold its own sequence's KV
        p.cache_idle_slots = False
        p.endpoint_metrics = True  # n_decode_total: the one-batch probe
        p.endpoint_slots = True    # /slots: where a forced prefill_batch placement really landed
        p.warmup = False
        p.port = 0
        self._server = xlc.Server(p)
        self.slot_similarity = float(p.slot_prompt_similarity)   # what a forced placement must beat
        self.where = f"llama.cpp in-process at {self._server.listening_address}"
        self.address = self._server.listening_address

    def complete(self, body: dict) -> dict:
        try:
            response = self._server.handle_completions(body)
        except Exception as exc:
            raise LlamaCppError(f"{self.where}: completion request failed: {type(exc).__name__}: {exc}") from None
        if isinstance(response, dict) and "error" in response and "choices" not in response:
            raise LlamaCppError(f"{self.where}: llama.cpp refused the request: {response['error']}")
        return response

    def counters(self) -> Optional[Counters]:
        return parse_counters(self._server.handle_metrics())

    def slots(self) -> Optional[list]:
        """llama.cpp's /slots (each slot's last task and prompt length), None when it cannot be read."""
        return _get_json(self.address + "/slots")

    def slot_context(self) -> Optional[int]:
        """The context each slot really has (llama.cpp caps it at the model's training context), from /props."""
        props = _get_json(self.address + "/props")
        try:
            return int(props["default_generation_settings"]["n_ctx"])
        except (TypeError, KeyError, ValueError):   # describe() only; the asked-for value is reported beside it
            return None

    def close(self) -> None:
        self._server = None


def _get_json(url: str):
    """GET a JSON endpoint of the in-process server (it is a real HTTP server too); None when it does not answer."""
    import json
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return json.loads(resp.read())
    except Exception:   # the callers treat a missing answer as "not known"
        return None


class LlamaCppEngine(HistoryEngine):
    """llama.cpp (xllamacpp) in-process; see the module docstring and ``history_engine``."""

    def __init__(self, model_path, *, slots: int = 8, threads: int = 1, kv: str = "f32", flash_attn: bool = False,
                 topk: int = 0, ctx: int = 512, n_ubatch: int = 512, retries: int = 8, check_loads: bool = True):
        if not llamacpp.available():
            raise LlamaCppError(f"xllamacpp is not installed: {llamacpp.INSTALL_HINT}")
        if kv not in KV_TYPES:
            raise ValueError(f"kv={kv!r}: expected one of {', '.join(KV_TYPES)}")
        path = str(Path(model_path))
        if not os.path.isfile(path):
            raise LlamaCppError(f"{path}: no such model file")
        if check_loads:
            llamacpp.check_loads(path)   # an abort in llama.cpp kills a child, not us
        vocab = read_vocab_info(path)
        self.model_path = path
        self.threads, self.kv, self.flash_attn, self.ctx = int(threads), kv, bool(flash_attn), int(ctx)
        self.server = InProcessServer(path, slots=slots, threads=threads, kv=kv, flash_attn=flash_attn, ctx=ctx,
                                      n_ubatch=n_ubatch)
        settings = f"slots={slots},threads={threads},kv={kv},fa={'on' if flash_attn else 'off'}" + \
                   (f",topk={topk}" if topk else "")
        super().__init__(self.server, name=f"llamacpp[{settings}]:{Path(path).name}", vocab_size=vocab.vocab_size,
                         slots=slots, topk=topk, ban_ids=vocab.partial_utf8_ids, pin_slots=True, retries=retries,
                         n_ubatch=n_ubatch, slot_similarity=self.server.slot_similarity)

    def describe(self) -> dict:
        version, build = llama_cpp_build()
        return {"name": self.name, "engine": "llama.cpp (xllamacpp)", "xllamacpp": version, "llama_cpp_build": build,
                "model": self.model_path, "slots": self.slots, "threads": self.threads, "kv": self.kv,
                "flash_attn": self.flash_attn, "n_ctx": self.ctx * self.slots, "n_ctx_per_slot": self.server.slot_context() or self.ctx,
                "n_ubatch": self.n_ubatch, "swa_full": True,
                "output": f"top-{self.output_topk} logprobs" if self.output_topk else "full-vocabulary logprobs",
                "batch probe": "llama.cpp n_decode_total (in-process /metrics)", "retries": self.retries}

    def close(self) -> None:
        self.server.close()


def make(model_path, *, slots: int = 8, threads: int = 1, kv: str = "f32", flash_attn: bool = False, topk: int = 0,
         ctx: int = 512, retries: int = 8) -> LlamaCppEngine:
    """The registry's factory (``--engine llamacpp[:slots=8,threads=1,kv=f32,flash_attn=off,topk=0]``)."""
    return LlamaCppEngine(model_path, slots=slots, threads=threads, kv=kv, flash_attn=flash_attn, topk=topk, ctx=ctx,
                          retries=retries)
