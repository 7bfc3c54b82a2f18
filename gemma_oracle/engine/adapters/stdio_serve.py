"""The peer side of the stdio protocol (docs/stdio-protocol.md) for any registered engine:

    python -m gemma_oracle.engine.adapters.stdio_serve --engine numpy

serves our float64 engine (or any ``--engine NAME[:key=value,...]`` of gemma_oracle.engine.registry) on stdin and
stdout. It is the reference implementation of the peer side, for users who write a client in another language and
want something to talk to, and the peer our tests put behind ``--engine process`` to show the transport loses
nothing: the same engine through it gives bitwise the same logits as in-process.

The model is the one the client names in ``hello``. Whatever the engine returns is sent as it is (dtype, shape):
judging it is the client's job, and a transport that "fixed" answers would hide an engine's faults.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from typing import Any, BinaryIO, Callable

import numpy as np

from gemma_oracle.engine.protocol import (TopKLogprobs, batch_record, describe_engine, output_logprobs, output_topk,
                                          prefill_batch_of)

from .stdio_wire import PROTOCOL_VERSION, encode


class RequestError(Exception):
    """A request this peer refuses; ``error_type`` goes into the error response."""

    def __init__(self, error_type: str, message: str):
        self.error_type = error_type
        super().__init__(message)


def _tokens(value: Any, what: str) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        raise RequestError("bad_request", f"{what} must be a list of integers")
    return value


def _host(x: Any) -> np.ndarray:
    if hasattr(x, "__cuda_array_interface__"):  # a device array: copy it to the host as it is
        x = x.get()
    return np.asarray(x)


class Session:
    """One client's session: the engine (made at ``hello``) and the sequences it created, by id."""

    def __init__(self, make: Callable[[str], Any]):
        self._make = make
        self.engine = None
        self.seqs: dict[int, Any] = {}
        self._next_seq = 0

    def _seq(self, sid: Any) -> Any:
        if isinstance(sid, bool) or not isinstance(sid, int) or sid not in self.seqs:
            raise RequestError("unknown_sequence", f"no live sequence {sid!r} (ids come from new_sequence; freed ids are gone)")
        return self.seqs[sid]

    def _rows(self, out: Any) -> list[tuple[str, np.ndarray]]:
        if isinstance(out, TopKLogprobs):
            return [("ids", out.ids), ("logprobs", out.logprobs)]
        return [("logits", _host(out))]

    def handle(self, req: dict) -> tuple[dict, list]:
        """(answer header fields, arrays) for one request; RequestError for a refused one."""
        op = req.get("op")
        if op == "hello":
            if req.get("protocol") != PROTOCOL_VERSION:
                raise RequestError("unsupported", f"this peer speaks protocol {PROTOCOL_VERSION}, not {req.get('protocol')!r}")
            if not isinstance(req.get("model"), str):
                raise RequestError("bad_request", "hello needs 'model', the model file's path")
            self.engine = e = self._make(req["model"])
            caps = {"describe": True, "prefill_batch": prefill_batch_of(e) is not None,
                    "last_batch": callable(getattr(e, "last_batch", None)),
                    "topk": output_topk(e), "logprobs": output_logprobs(e)}
            return {"protocol": PROTOCOL_VERSION, "name": e.name, "vocab_size": int(e.vocab_size),
                    "capabilities": caps}, []
        if op == "shutdown":
            return {}, []
        if self.engine is None:
            raise RequestError("bad_request", f"{op!r} before hello")
        e = self.engine
        if op == "describe":
            return {"describe": json.loads(json.dumps(describe_engine(e), default=str))}, []
        if op == "new_sequence":
            sid, self._next_seq = self._next_seq, self._next_seq + 1
            self.seqs[sid] = e.new_sequence()
            return {"seq": sid}, []
        if op == "free":
            for sid in _tokens(req.get("seqs"), "'seqs'"):
                self.seqs.pop(sid, None)  # freeing an unknown or freed id is harmless (frees may race a crash)
            return {}, []
        if op == "prefill":
            return {}, self._rows(e.prefill(self._seq(req.get("seq")), _tokens(req.get("tokens"), "'tokens'")))
        if op == "prefill_batch":
            fn = prefill_batch_of(e)
            if fn is None:
                raise RequestError("unsupported", "this engine has no prefill_batch")
            prompts = req.get("prompts")
            if not isinstance(prompts, list):
                raise RequestError("bad_request", "'prompts' must be a list of token lists")
            seqs = [self._seq(s) for s in _tokens(req.get("seqs"), "'seqs'")]
            return {}, self._rows(fn(seqs, [_tokens(p, "each prompt") for p in prompts]))
        if op == "decode":
            seqs = [self._seq(s) for s in _tokens(req.get("seqs"), "'seqs'")]
            return {}, self._rows(e.decode(seqs, _tokens(req.get("tokens"), "'tokens'")))
        if op == "last_batch":
            rec = batch_record(e)
            return {"record": None if rec is None else {
                "rows": rec.rows, "forward_calls": rec.forward_calls, "min_forward_calls": rec.min_forward_calls,
                "attempts": rec.attempts, "detail": rec.detail}}, []
        raise RequestError("unknown_op", f"unknown op {op!r}")


def serve(make: Callable[[str], Any], stdin: BinaryIO, stdout: BinaryIO) -> int:
    """Answer requests from ``stdin`` on ``stdout`` until ``shutdown`` or end of input; the exit status."""
    session = Session(make)
    for line in iter(stdin.readline, b""):
        if not line.strip():
            continue
        rid, op = None, None
        try:
            try:
                req = json.loads(line)
            except ValueError as exc:
                raise RequestError("bad_request", f"request line is not JSON: {exc}") from None
            if not isinstance(req, dict):
                raise RequestError("bad_request", "request line is not a JSON object")
            rid, op = req.get("id"), req.get("op")
            fields, arrays = session.handle(req)
            head = {"id": rid, "op": op, "ok": True, **fields}
        except RequestError as exc:
            head, arrays = {"id": rid, "op": op, "ok": False, "error": {"type": exc.error_type, "message": str(exc)}}, []
        except Exception as exc:  # the engine failed: say so and serve on (the traceback goes to stderr)
            traceback.print_exc(file=sys.stderr)
            head, arrays = {"id": rid, "op": op, "ok": False,
                            "error": {"type": "engine_error", "message": f"{type(exc).__name__}: {exc}"}}, []
        stdout.write(encode(head, arrays))
        stdout.flush()
        if op == "shutdown" and head["ok"]:
            return 0
    return 0


def protocol_stdout() -> BinaryIO:
    """The real stdout for protocol frames; fd 1 then points at stderr, so a stray print (ours, a library's, a C
    extension's) lands in the peer's log instead of corrupting a frame."""
    sys.stdout.flush()
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gemma_oracle.engine.adapters.stdio_serve",
                                 description="serve a registered engine over the stdio protocol (docs/stdio-protocol.md)")
    ap.add_argument("--engine", default="numpy", help="NAME[:key=value,...] of gemma_oracle.engine.registry (default numpy)")
    args = ap.parse_args(argv)
    from gemma_oracle.engine.registry import check_spec, make_engine

    check_spec(args.engine)  # a bad spec fails here, before the client's hello
    out = protocol_stdout()
    return serve(lambda model: make_engine(args.engine, model), sys.stdin.buffer, out)


if __name__ == "__main__":
    sys.exit(main())
