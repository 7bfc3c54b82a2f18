"""llama.cpp (CPU, via the `parity` extra's xllamacpp) as an independent reference.

Each call runs llama.cpp in a child process (gemma_oracle.engine.adapters.llamacpp_worker) with an F32 KV cache and flash
attention off, and returns, for every prompt, the log-probabilities of the next token over the whole
vocabulary (llama.cpp's pre-sampling log-softmax).
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from gemma_oracle.engine.errors import GemmaOracleError

INSTALL_HINT = "pip install 'gemma-oracle[parity]'"


class LlamaCppError(GemmaOracleError):
    """llama.cpp refused or crashed on a model (the message carries the tail of its log)."""


def available() -> bool:
    return importlib.util.find_spec("xllamacpp") is not None


def _run(request: dict, timeout: float) -> dict:
    if not available():
        raise LlamaCppError(f"xllamacpp is not installed: {INSTALL_HINT}")
    with tempfile.TemporaryDirectory(prefix="gemma-oracle-llamacpp-") as d:
        req, res = Path(d) / "request.json", Path(d) / "result.json"
        req.write_text(json.dumps(request))
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "gemma_oracle.engine.adapters.llamacpp_worker", str(req), str(res)],
                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        except subprocess.TimeoutExpired as exc:
            err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
            tail = "\n".join(err.strip().splitlines()[-12:])
            raise LlamaCppError(f"llama.cpp did not finish on {request['model']} within {timeout:.0f} s:\n{tail}") from None
        if proc.returncode != 0 or not res.exists():
            tail = "\n".join((proc.stderr or "").strip().splitlines()[-8:])
            raise LlamaCppError(f"llama.cpp failed on {request['model']} (exit {proc.returncode}):\n{tail}")
        return json.loads(res.read_text())


def check_loads(model_path: os.PathLike | str, *, timeout: float = 30) -> None:
    """Load the model in llama.cpp and decode one token; raise LlamaCppError if it refuses."""
    _run({"model": str(model_path), "prompts": [], "n_probs": 1, "n_ctx": 64}, timeout)


def partial_utf8_byte_tokens(tokens: Sequence[str], types: Sequence[int]) -> list[int]:
    """Ids of byte-fallback tokens <0x80>..<0xFF>: alone they are not valid UTF-8."""
    BYTE = 6
    return [i for i, (t, ty) in enumerate(zip(tokens, types)) if ty == BYTE and t.startswith("<0x") and int(t[3:5], 16) >= 0x80]


def next_token_logprobs(
    model_path: os.PathLike | str, prompts: Sequence[Sequence[int]], vocab_size: int, *,
    ban_ids: Sequence[int] = (), n_ctx: int = 512, timeout: float = 600,
) -> np.ndarray:
    """[len(prompts), vocab] log-probabilities of the token after each prompt (float64).

    `ban_ids`: tokens the server must not *sample* (see partial_utf8_byte_tokens); their
    log-probabilities are still returned."""
    out = _run(
        {"model": str(model_path), "prompts": [list(map(int, p)) for p in prompts], "n_probs": vocab_size,
         "n_ctx": n_ctx, "ban_ids": list(map(int, ban_ids))},
        timeout,
    )
    rows = np.full((len(prompts), vocab_size), -np.inf)
    for i, r in enumerate(out["results"]):
        rows[i, r["ids"]] = r["logprobs"]
    return rows


def greedy_continuations(
    model_path: os.PathLike | str, prompts: Sequence[Sequence[int]], n_tokens: int, vocab_size: int, *,
    top_n: int = 20, ban_ids: Sequence[int] = (), n_ctx: int = 512, timeout: float = 600,
) -> list[tuple[list[int], np.ndarray]]:
    """llama.cpp's greedy continuation of each prompt: (tokens, [n_tokens, vocab] log-probs that are
    -inf outside the top_n llama.cpp reported at each step)."""
    out = _run(
        {"model": str(model_path), "generate_from": [list(map(int, p)) for p in prompts], "generate_tokens": n_tokens,
         "n_probs": top_n, "n_ctx": n_ctx, "ban_ids": list(map(int, ban_ids))},
        timeout,
    )
    result = []
    for steps in out["generated"]:
        lp = np.full((len(steps), vocab_size), -np.inf)
        for t, st in enumerate(steps):
            lp[t, st["ids"]] = st["logprobs"]
        result.append(([int(st["id"]) for st in steps], lp))
    return result
