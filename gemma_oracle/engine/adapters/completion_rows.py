"""Next-token log-probabilities out of a completions server's JSON, whatever the server's dialect.

Two dialects are read (anything else is a typed error quoting a snippet of what came back):

* llama.cpp (``/v1/completions`` and xllamacpp's ``handle_completions``):
  ``choices[i].logprobs.content[0].top_logprobs[j] = {"id": 123, "logprob": -1.5, ...}``.
* vLLM / SGLang (OpenAI's legacy completions shape): ``choices[i].logprobs.top_logprobs[0] = {token: logprob}``,
  where the token is spelled ``token_id:123`` when the request asked for ``return_tokens_as_token_ids``.

The rows are the server's own (pre-sampling) log-probabilities, returned as float64 without any re-normalisation,
so two runs can be compared bitwise.
"""
from __future__ import annotations

import json
from typing import Any, Sequence

import numpy as np

from gemma_oracle.engine.errors import GemmaOracleError
from gemma_oracle.engine.protocol import TopKLogprobs

__all__ = ["CompletionFormatError", "choice_entries", "dense_rows", "topk_rows"]


class CompletionFormatError(GemmaOracleError):
    """A completion response without the log-probabilities the engine asked for (``where`` names the server)."""


def _snippet(obj: Any, limit: int = 300) -> str:
    text = json.dumps(obj, default=str) if not isinstance(obj, str) else obj
    return text if len(text) <= limit else text[:limit] + "..."


def _token_id(token: str, where: str) -> int:
    if token.startswith("token_id:"):
        try:
            return int(token[len("token_id:"):])
        except ValueError:
            pass
    raise CompletionFormatError(f"{where}: top_logprobs key {token!r} is not 'token_id:<int>' (send "
                                f"return_tokens_as_token_ids: true, or serve llama.cpp's id field)")


def choice_entries(choice: dict, where: str) -> list[tuple[int, float]]:
    """(token id, logprob) pairs of the first generated token of one choice, in the server's order."""
    lp = choice.get("logprobs") if isinstance(choice, dict) else None
    if not isinstance(lp, dict):
        raise CompletionFormatError(f"{where}: choice without logprobs (a llama.cpp server withholds them when it "
                                    f"samples an incomplete UTF-8 byte token): {_snippet(choice)}")
    content = lp.get("content")
    if isinstance(content, list) and content and isinstance(content[0], dict) and "top_logprobs" in content[0]:
        try:
            return [(int(e["id"]), float(e["logprob"])) for e in content[0]["top_logprobs"]]
        except (KeyError, TypeError, ValueError):
            raise CompletionFormatError(f"{where}: llama.cpp top_logprobs entries need 'id' and 'logprob': "
                                        f"{_snippet(content[0]['top_logprobs'][:3])}") from None
    top = lp.get("top_logprobs")
    if isinstance(top, list) and top and isinstance(top[0], dict):
        return [(_token_id(str(k), where), float(v)) for k, v in top[0].items()]
    raise CompletionFormatError(f"{where}: expected logprobs.content[0].top_logprobs (llama.cpp) or "
                                f"logprobs.top_logprobs[0] (OpenAI/vLLM), got {_snippet(lp)}")


def ordered_choices(response: dict, n: int, where: str) -> list[dict]:
    """The response's n choices in prompt order (by their ``index``)."""
    choices = response.get("choices") if isinstance(response, dict) else None
    if not isinstance(choices, list) or len(choices) != n:
        raise CompletionFormatError(f"{where}: expected {n} choice(s), one per prompt, got {_snippet(response)}")
    out: list[dict | None] = [None] * n
    for c in choices:
        i = c.get("index") if isinstance(c, dict) else None
        if not isinstance(i, int) or not 0 <= i < n or out[i] is not None:
            raise CompletionFormatError(f"{where}: choice index {i!r} is not a fresh index in 0..{n - 1}")
        out[i] = c
    return out  # type: ignore[return-value]


def dense_rows(choices: Sequence[dict], vocab_size: int, where: str) -> np.ndarray:
    """[N, vocab] float64 log-probabilities; every id must come back exactly once (a missing one is an error,
    never -inf: -inf would read as 'impossible' where the truth is 'not sent')."""
    out = np.empty((len(choices), vocab_size), dtype=np.float64)
    for i, c in enumerate(choices):
        entries = choice_entries(c, where)
        ids = np.fromiter((e[0] for e in entries), dtype=np.int64, count=len(entries))
        if len(ids) != vocab_size or ids.min(initial=0) < 0 or ids.max(initial=0) >= vocab_size \
                or len(np.unique(ids)) != vocab_size:
            missing = np.setdiff1d(np.arange(vocab_size), ids)
            raise CompletionFormatError(
                f"{where}: row {i} has {len(entries)} log-probabilities ({len(np.unique(ids))} distinct ids), expected "
                f"one for each of the {vocab_size} tokens; missing e.g. {missing[:5].tolist()}")
        out[i, ids] = [e[1] for e in entries]
    return out


def topk_rows(choices: Sequence[dict], k: int, where: str) -> TopKLogprobs:
    """(N, k) top log-probabilities, most likely first (stable on the server's order for equal values)."""
    ids = np.empty((len(choices), k), dtype=np.int64)
    lps = np.empty((len(choices), k), dtype=np.float64)
    for i, c in enumerate(choices):
        entries = choice_entries(c, where)
        if len(entries) < k:
            raise CompletionFormatError(f"{where}: row {i} has {len(entries)} log-probabilities, expected k={k}")
        entries = sorted(entries, key=lambda e: -e[1])[:k]
        ids[i] = [e[0] for e in entries]
        lps[i] = [e[1] for e in entries]
    return TopKLogprobs(ids, lps)
