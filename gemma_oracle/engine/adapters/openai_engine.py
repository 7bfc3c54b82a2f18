"""Any OpenAI-compatible completions server that returns logprobs (llama.cpp's server, vLLM, SGLang, TGI), as a
DecodeEngine: the same stateless-history scheme as the in-process llama.cpp engine (``history_engine``), over HTTP.

Each step POSTs ``{url}/v1/completions`` with the histories as token-id lists, ``max_tokens=1``,
``temperature=0`` and ``logprobs=k`` (plus ``return_tokens_as_token_ids`` for vLLM's spelling). What the server is
decides the rest, found out once at start:

* llama.cpp (``/props`` answers with ``build_info``): slots are pinned with ``id_slot``, incomplete UTF-8 byte
  tokens are banned from sampling (llama.cpp withholds their log-probabilities), and when ``/metrics`` has
  ``llamacpp:n_decode_total`` every step is checked to be one ``llama_decode`` (re-issued otherwise). A
  ``prefill_batch`` is one request whose placement is forced by keys (``slot_placement``), which must beat the
  server's ``--slot-prompt-similarity``: pass ``slot_similarity`` when the server was not started with the default
  0.1 (the server does not report it); ``/slots`` (on by default) is read to check where the prompts landed.
* anything else: no slot pinning, and ``last_batch()`` is None ("batch probe: none" in ``describe()``).

Every failure to talk to the server (refused, HTTP 4xx/5xx, timeout, not JSON) is an ``OpenAIServerError``
naming the URL and what was expected.
"""
from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Optional

from gemma_oracle.engine.adapters.gguf_vocab import read_vocab_info
from gemma_oracle.engine.adapters.history_engine import Counters, HistoryEngine
from gemma_oracle.engine.adapters.llamacpp_engine import parse_counters
from gemma_oracle.engine.adapters.slot_placement import DEFAULT_SIMILARITY
from gemma_oracle.engine.errors import GemmaOracleError

__all__ = ["HttpTransport", "OpenAIEngine", "OpenAIServerError", "make"]


class OpenAIServerError(GemmaOracleError):
    """A completions server that could not be reached or did not answer as expected (the message names the URL)."""


class HttpTransport:
    """JSON over HTTP to one server (urllib: no dependency; one connection per request, which the server's HTTP
    thread pool serves concurrently)."""

    def __init__(self, url: str, *, api_key: Optional[str] = None, timeout: float = 120, metrics: bool = True):
        self.url = url.rstrip("/")
        self.where = self.url
        self.timeout = float(timeout)
        self.api_key = api_key
        self.metrics = metrics
        self.has_slots = True

    def request(self, path: str, body: Any = None, *, expect: str, timeout: Optional[float] = None, raw: bool = False):
        url = self.url + path
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(url, data=data, headers=headers, method="POST" if body is not None else "GET")
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:
                payload = resp.read()
        except urllib.error.HTTPError as exc:
            text = exc.read()[:400].decode(errors="replace")
            raise OpenAIServerError(f"{url}: HTTP {exc.code} {exc.reason}, expected {expect}: {text}") from None
        except (urllib.error.URLError, ConnectionError, socket.timeout, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise OpenAIServerError(f"{url}: cannot reach the server ({reason}), expected {expect}") from None
        if raw:
            return payload.decode(errors="replace")
        try:
            return json.loads(payload)
        except ValueError:
            raise OpenAIServerError(f"{url}: answer is not JSON, expected {expect}: "
                                    f"{payload[:200].decode(errors='replace')!r}") from None

    def complete(self, body: dict) -> dict:
        return self.request("/v1/completions", body, expect="a completion with logprobs")

    def slots(self) -> Optional[list]:
        """llama.cpp's /slots, None when the server has none (asked once: a server without it never grows one)."""
        if not self.has_slots:
            return None
        try:
            listed = self.request("/slots", expect="llama.cpp /slots", timeout=10)
        except OpenAIServerError:
            listed = None
        if not isinstance(listed, list):
            self.has_slots = False
            return None
        return listed

    def counters(self) -> Optional[Counters]:
        if not self.metrics:
            return None
        try:
            return parse_counters(self.request("/metrics", expect="Prometheus metrics", raw=True, timeout=10))
        except OpenAIServerError:
            return None


class OpenAIEngine(HistoryEngine):
    """See the module docstring."""

    def __init__(self, model_path, *, url: str, model: Optional[str] = None, topk: int = 64,
                 api_key: Optional[str] = None, timeout: float = 120, metrics: bool = True, retries: int = 8,
                 slot_similarity: float = DEFAULT_SIMILARITY):
        path = str(Path(model_path))
        if not os.path.isfile(path):
            raise OpenAIServerError(f"{url}: model file {path} not found: the engine reads its vocabulary from it")
        transport = HttpTransport(url, api_key=api_key, timeout=timeout, metrics=metrics)
        self.model_path, self.url, self.model = path, transport.url, model
        info = self._server_info(transport)
        self.server_info = info
        self.is_llamacpp = "build_info" in info.get("props", {})
        transport.has_slots = self.is_llamacpp and info.get("props", {}).get("endpoint_slots", True) is not False
        slots = int(info.get("props", {}).get("total_slots") or 0) or 1_000_000
        probe = metrics and transport.counters() is not None
        transport.metrics = probe
        self.batch_probe = "llama.cpp n_decode_total (/metrics)" if probe else "none"
        vocab = read_vocab_info(path)
        extra = {"return_tokens_as_token_ids": True}
        if model:
            extra["model"] = model
        super().__init__(transport, name=f"openai[{transport.url},topk={topk}]:{Path(path).name}",
                         vocab_size=vocab.vocab_size, slots=slots, topk=topk,
                         ban_ids=vocab.partial_utf8_ids if self.is_llamacpp else (), pin_slots=self.is_llamacpp,
                         retries=retries, n_ubatch=int(info.get("n_ubatch", 512)), extra=extra,
                         slot_similarity=slot_similarity)

    def _server_info(self, transport: HttpTransport) -> dict:
        """What the server says about itself: llama.cpp's /props, else /v1/models; a dead URL fails here, typed."""
        info: dict = {}
        try:
            props = transport.request("/props", expect="llama.cpp /props", timeout=min(transport.timeout, 30))
            if isinstance(props, dict):
                info["props"] = props
        except OpenAIServerError as exc:
            if "cannot reach" in str(exc):
                raise
        try:
            info["models"] = transport.request("/v1/models", expect="the served models (/v1/models)",
                                               timeout=min(transport.timeout, 30))
        except OpenAIServerError:
            if "props" not in info:
                raise
        return info

    def served_model_path(self) -> Optional[str]:
        props = self.server_info.get("props", {})
        if props.get("model_path"):
            return str(props["model_path"])
        data = (self.server_info.get("models") or {}).get("data") or []
        return str(data[0].get("id")) if data and isinstance(data[0], dict) and data[0].get("id") else None

    def describe(self) -> dict:
        props = self.server_info.get("props", {})
        served = self.served_model_path()
        ours = Path(self.model_path).name
        if served is None:
            match = f"unknown: the server does not say which file it serves (expected {ours})"
        elif Path(served).name == ours:
            match = f"yes ({served})"
        else:
            match = f"WARNING: the server serves {served}, not {ours}"
        return {"name": self.name, "engine": "OpenAI-compatible completions server", "url": self.url,
                "server": "llama.cpp" if self.is_llamacpp else "unknown (not llama.cpp)",
                "build_info": props.get("build_info"), "slots": props.get("total_slots"), "model": self.model_path,
                "served_model": served, "same_model_file": match,
                "output": f"top-{self.output_topk} logprobs" if self.output_topk else "full-vocabulary logprobs",
                "batch probe": self.batch_probe, "retries": self.retries}


def make(model_path, *, url: str, model: Optional[str] = None, topk: int = 64, api_key: Optional[str] = None,
         timeout: float = 120, metrics: bool = True, retries: int = 8,
         slot_similarity: float = DEFAULT_SIMILARITY) -> OpenAIEngine:
    """The registry's factory (``--engine openai:url=http://127.0.0.1:8080,topk=64``); topk=0 = full vocabulary."""
    return OpenAIEngine(model_path, url=url, model=model, topk=topk, api_key=api_key, timeout=timeout,
                        metrics=metrics, retries=retries, slot_similarity=slot_similarity)
