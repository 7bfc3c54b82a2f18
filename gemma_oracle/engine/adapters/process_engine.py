"""An engine in another process, in any language, put through the oracles over the stdio protocol
(docs/stdio-protocol.md): ``--engine process:cmd="./my-peer --threads 2",timeout=30``.

``ProcessEngine`` meets gemma_oracle.engine.protocol: the required members always, and each optional member
(prefill_batch, last_batch, output_topk, output_logprobs) exactly when the peer announces it in its ``hello``
answer, so the oracles see the peer's capabilities, not the adapter's. Logits come back in the dtype the peer sent
(float32 or float64), never cast, because the exact policy compares raw values.

Sequences are handles (``PeerSequence``) carrying the peer's id; a handle that is garbage-collected is freed on
the peer with the next request, so a peer with a fixed number of slots (a server's parallel slots) is not
exhausted by a sweep over N that never frees its sequences explicitly.
"""
from __future__ import annotations

import os
import weakref
from typing import Any, Sequence

from gemma_oracle.engine.protocol import BatchRecord, TopKLogprobs

from .peer_channel import (PeerChannel, PeerCrashedError, PeerError, PeerProtocolError, PeerRequestError,
                           PeerShapeError, PeerTimeoutError)
from .stdio_wire import PROTOCOL_VERSION

__all__ = ["PeerCrashedError", "PeerError", "PeerProtocolError", "PeerRequestError", "PeerSequence", "PeerShapeError",
           "PeerTimeoutError", "ProcessEngine", "make"]


class PeerSequence:
    """One sequence living in the peer. Dropping the last reference queues a ``free`` for it."""

    __slots__ = ("id", "_owner", "_freed", "__weakref__")

    def __init__(self, seq_id: int, owner: "ProcessEngine"):
        self.id = seq_id
        self._owner = owner._token
        self._freed = False
        weakref.finalize(self, owner._pending_free.append, seq_id)

    def __repr__(self) -> str:
        return f"PeerSequence({self.id})"


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    return value


class ProcessEngine:
    """The DecodeEngine of a peer process. Use it as a context manager, or call ``close()``; a finalizer kills the
    peer anyway if neither happens."""

    def __init__(self, model_path: os.PathLike | str, cmd: str | Sequence[str], *, timeout: float = 120,
                 env=None, cwd=None):
        self.model_path = str(model_path)
        self._token = object()  # which engine a PeerSequence belongs to
        self._pending_free: list[int] = []
        self._channel = PeerChannel(cmd, timeout=timeout, env=env, cwd=cwd)
        self.cmd = self._channel.cmd
        # kill the peer when this engine is collected or the interpreter exits, whatever the caller forgot
        self._finalizer = weakref.finalize(self, PeerChannel.close, self._channel)
        try:
            self._hello()
        except BaseException:
            self.close()
            raise

    # --------------------------------------------------------------------------------------------- handshake
    def _hello(self) -> None:
        from gemma_oracle import __version__

        answer, _ = self._channel.request({"op": "hello", "protocol": PROTOCOL_VERSION, "model": self.model_path,
                                           "client": f"gemma-oracle {__version__}"})
        try:
            version = _int(answer.get("protocol"), "'protocol'")
            if version != PROTOCOL_VERSION:
                raise ValueError(f"the peer speaks protocol version {version}, this client speaks {PROTOCOL_VERSION}")
            name = answer.get("name")
            if not isinstance(name, str) or not name:
                raise ValueError(f"'name' must be a non-empty string, got {name!r}")
            vocab = _int(answer.get("vocab_size"), "'vocab_size'")
            if vocab < 1:
                raise ValueError(f"'vocab_size' must be >= 1, got {vocab}")
            caps = answer.get("capabilities", {})
            if not isinstance(caps, dict):
                raise ValueError(f"'capabilities' must be an object, got {caps!r}")
            topk = _int(caps.get("topk", 0), "capability 'topk'")
            if not 0 <= topk <= vocab:
                raise ValueError(f"capability 'topk' must be in 0..vocab_size, got {topk}")
        except ValueError as exc:
            raise self._channel.fail(PeerProtocolError, f"bad hello answer: {exc}", "hello") from None
        # the process boundary is part of what is tested: never share a reference-memo key with an in-process engine
        self.peer_name = name
        self.name = f"process:{name}"
        self.vocab_size = vocab
        self.protocol = version
        self.capabilities = dict(caps)
        self.output_topk = topk
        self.output_logprobs = bool(caps.get("logprobs", False))
        # optional members exist only when announced: the oracles look them up with getattr (engine.protocol)
        if caps.get("prefill_batch"):
            self.prefill_batch = self._prefill_batch
        if caps.get("last_batch"):
            self.last_batch = self._last_batch

    # --------------------------------------------------------------------------------------------- plumbing
    def _request(self, header: dict, **kw):
        if self._pending_free:
            ids = []
            while self._pending_free:  # pop, not copy-and-clear: a finalizer may append while we collect
                ids.append(self._pending_free.pop())
            if self._channel.alive:
                self._channel.request({"op": "free", "seqs": ids})
        return self._channel.request(header, **kw)

    def _ids(self, seqs: Sequence[Any], op: str) -> list[int]:
        ids = []
        for s in seqs:
            if not isinstance(s, PeerSequence) or s._owner is not self._token:
                raise TypeError(f"{op}: {s!r} is not a sequence of this engine ({self.name}); use its new_sequence()")
            ids.append(s.id)
        if len(set(ids)) != len(ids):
            raise ValueError(f"{op}: the same sequence appears twice in one batch ({ids})")
        return ids

    def _rows(self, answer: dict, arrays: dict, op: str, shape: tuple[int, ...]):
        """The logits (or TopKLogprobs) of an answer, checked against the shape the request implies."""
        if self.output_topk:
            k = self.output_topk
            want = shape[:-1] + (k,)
            ids, lp = arrays.get("ids"), arrays.get("logprobs")
            if ids is None or lp is None or ids.shape != want or lp.shape != want \
                    or ids.dtype.kind != "i" or lp.dtype.kind != "f":
                got = {n: (a.dtype.name, a.shape) for n, a in arrays.items()}
                raise self._channel.fail(PeerShapeError, f"expected arrays 'ids' (int) and 'logprobs' (float) of shape "
                                                         f"{want}, got {got}", op)
            if ((ids < 0) | (ids >= self.vocab_size)).any():
                raise self._channel.fail(PeerShapeError, f"top-k ids outside 0..{self.vocab_size - 1}", op)
            return TopKLogprobs(ids, lp)
        logits = arrays.get("logits")
        if logits is None or logits.shape != shape or logits.dtype.kind != "f":
            got = {n: (a.dtype.name, a.shape) for n, a in arrays.items()}
            raise self._channel.fail(PeerShapeError, f"expected array 'logits' (float32 or float64) of shape {shape}, "
                                                     f"got {got or 'no arrays'}", op)
        return logits

    # --------------------------------------------------------------------------------------------- the protocol
    def describe(self) -> dict:
        """The peer's own describe() when it offers one, plus how it was reached (command, protocol version)."""
        info: dict = {}
        if self.capabilities.get("describe"):
            answer, _ = self._request({"op": "describe"})
            peer = answer.get("describe")
            if not isinstance(peer, dict):
                raise self._channel.fail(PeerProtocolError, f"'describe' must be an object, got {peer!r}", "describe")
            info.update(peer)
        info.setdefault("peer_name", self.peer_name)
        info["name"] = self.name
        info["process"] = {"cmd": self.cmd, "protocol": self.protocol}
        return info

    def new_sequence(self) -> PeerSequence:
        answer, _ = self._request({"op": "new_sequence"})
        try:
            return PeerSequence(_int(answer.get("seq"), "'seq'"), self)
        except ValueError as exc:
            raise self._channel.fail(PeerProtocolError, str(exc), "new_sequence") from None

    def free(self, seq: PeerSequence) -> None:
        """Free a sequence on the peer now (dropping the handle does it later)."""
        ids = self._ids([seq], "free")
        self._request({"op": "free", "seqs": ids})

    def prefill(self, seq: PeerSequence, tokens: Sequence[int]):
        ids = self._ids([seq], "prefill")
        answer, arrays = self._request({"op": "prefill", "seq": ids[0], "tokens": [int(t) for t in tokens]})
        return self._rows(answer, arrays, "prefill", (self.vocab_size,))

    def _prefill_batch(self, seqs: Sequence[PeerSequence], prompts: Sequence[Sequence[int]]):
        ids = self._ids(seqs, "prefill_batch")
        if len(prompts) != len(ids):
            raise ValueError(f"prefill_batch: {len(ids)} sequences but {len(prompts)} prompts")
        answer, arrays = self._request({"op": "prefill_batch", "seqs": ids,
                                        "prompts": [[int(t) for t in p] for p in prompts]})
        return self._rows(answer, arrays, "prefill_batch", (len(ids), self.vocab_size))

    def decode(self, seqs: Sequence[PeerSequence], tokens: Sequence[int]):
        ids = self._ids(seqs, "decode")
        if len(tokens) != len(ids):
            raise ValueError(f"decode: {len(ids)} sequences but {len(tokens)} tokens")
        answer, arrays = self._request({"op": "decode", "seqs": ids, "tokens": [int(t) for t in tokens]})
        return self._rows(answer, arrays, "decode", (len(ids), self.vocab_size))

    def _last_batch(self) -> BatchRecord | None:
        answer, _ = self._request({"op": "last_batch"})
        record = answer.get("record")
        if record is None:
            return None
        try:
            if not isinstance(record, dict):
                raise ValueError(f"'record' must be an object or null, got {record!r}")
            return BatchRecord(rows=_int(record.get("rows"), "'rows'"),
                               forward_calls=_int(record.get("forward_calls"), "'forward_calls'"),
                               min_forward_calls=_int(record.get("min_forward_calls", 1), "'min_forward_calls'"),
                               attempts=_int(record.get("attempts", 1), "'attempts'"),
                               detail=str(record.get("detail", "")))
        except ValueError as exc:
            raise self._channel.fail(PeerProtocolError, f"bad last_batch record: {exc}", "last_batch") from None

    # --------------------------------------------------------------------------------------------- lifecycle
    @property
    def pid(self) -> int:
        return self._channel.pid

    def stderr_tail(self, n: int = 20) -> str:
        return self._channel.stderr.tail(n)

    def close(self) -> int | None:
        """Shut the peer down (``shutdown``, then a kill if it does not leave); its exit status."""
        self._finalizer.detach()
        return self._channel.close()

    def __enter__(self) -> "ProcessEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ProcessEngine({self.name!r}, cmd={self.cmd!r})"


def make(model_path: os.PathLike | str, *, cmd: str | Sequence[str] | None = None, timeout: float = 120) -> ProcessEngine:
    """The registry's ``process`` engine: ``--engine process:cmd="./peer --flag",timeout=30``."""
    if not cmd:
        from gemma_oracle.engine.registry import EngineSpecError

        raise EngineSpecError("engine 'process' needs cmd=... (the command line that starts the peer), e.g. "
                              "--engine process:cmd=\"python -m gemma_oracle.engine.adapters.stdio_serve --engine numpy\"")
    return ProcessEngine(model_path, cmd, timeout=timeout)
