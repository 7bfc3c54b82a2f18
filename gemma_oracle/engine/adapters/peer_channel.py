"""One peer process and the framed request/response channel to it (the transport under process_engine).

The peer is started from a command line (no shell), gets requests on its stdin and answers on its stdout; its
stderr is drained all the time into a bounded log, so a chatty peer can neither block on a full pipe nor grow our
memory, and every error can quote the tail of what it said. Every read has a deadline. Whatever goes wrong becomes
a ``PeerError`` naming the command, the request and that tail; a crash, a timeout or a broken frame also leaves
the channel closed (the peer killed), since the two sides can no longer agree on where the next message starts.
"""
from __future__ import annotations

import collections
import json
import os
import shlex
import subprocess
import threading
import time
from typing import Any, Mapping, Sequence

import numpy as np

from gemma_oracle.engine.errors import GemmaOracleError

from .stdio_wire import MAX_HEADER_BYTES, array_specs, decode_arrays, encode

__all__ = ["PeerChannel", "PeerCrashedError", "PeerError", "PeerProtocolError", "PeerRequestError", "PeerShapeError",
           "PeerTimeoutError", "StderrLog"]

STDERR_TAIL_LINES = 20


class PeerError(GemmaOracleError):
    """An engine in another process failed a request. ``cmd`` is its command line, ``request`` the request's op,
    ``stderr_tail`` the last lines it wrote to stderr."""

    def __init__(self, message: str, *, cmd: str, request: str, stderr_tail: str = ""):
        self.cmd, self.request, self.stderr_tail = cmd, request, stderr_tail
        text = f"peer `{cmd}`, request {request!r}: {message}"
        if stderr_tail:
            text += "\n--- peer stderr (tail) ---\n" + stderr_tail
        else:
            text += " (the peer wrote nothing to stderr)"
        super().__init__(text)


class PeerCrashedError(PeerError):
    """The peer exited, or closed its stdout or stdin, before answering."""


class PeerTimeoutError(PeerError):
    """The peer did not answer within the timeout (it has been killed)."""


class PeerProtocolError(PeerError):
    """The peer's answer is not a well-formed message of the protocol (not JSON, wrong id or op, bad array specs,
    a missing field, another protocol version)."""


class PeerShapeError(PeerProtocolError):
    """A well-formed answer whose arrays have the wrong names, shapes or dtypes for the request."""


class PeerRequestError(PeerError):
    """The peer answered the request with an error response; ``error_type`` is its type (docs/stdio-protocol.md).
    The session goes on: the peer stays up and later requests are answered."""

    def __init__(self, message: str, *, error_type: str, **kw):
        self.error_type = error_type
        super().__init__(message, **kw)


class StderrLog:
    """The last ``max_lines`` lines a stream wrote (each cut to ``max_line`` characters), read by a daemon thread."""

    def __init__(self, stream, *, max_lines: int = 200, max_line: int = 2000):
        self._lines: collections.deque[str] = collections.deque(maxlen=max_lines)
        self._max_line = max_line
        self._lock = threading.Lock()
        self._fd = stream.fileno()
        self._thread = threading.Thread(target=self._drain, args=(stream,), name="peer-stderr", daemon=True)
        self._thread.start()

    def _drain(self, stream) -> None:
        try:
            for raw in iter(stream.readline, b""):
                line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                with self._lock:
                    self._lines.append(line[: self._max_line])
        except (OSError, ValueError):  # the pipe was closed under us: nothing more to read
            pass

    def settle(self, limit: float = 0.5) -> None:
        """Wait (at most ``limit`` s) until everything already in the pipe has been read: a peer that answers with an
        error has usually just logged why on stderr, and that pipe is read by another thread."""
        import select

        end = time.monotonic() + limit
        while time.monotonic() < end:
            try:
                pending, _, _ = select.select([self._fd], [], [], 0)
            except (OSError, ValueError):  # closed: nothing more will come
                return
            if not pending:
                time.sleep(0.02)  # the reader may hold the last bytes in its buffer, not yet split into lines
                return
            time.sleep(0.01)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def tail(self, n: int = STDERR_TAIL_LINES) -> str:
        with self._lock:
            return "\n".join(list(self._lines)[-n:])


class _Reader:
    """The peer's stdout, read by a daemon thread into a buffer the caller takes from with deadlines.

    A thread rather than select(): it works on pipes on every platform, and the blocking read is the thread's only
    job, so a hung peer never blocks the caller past its deadline."""

    def __init__(self, stream):
        self._buf = bytearray()
        self._eof = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._pump, args=(stream,), name="peer-stdout", daemon=True)
        self._thread.start()

    def _pump(self, stream) -> None:
        fd = stream.fileno()
        try:
            while True:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    break
                with self._cond:
                    self._buf += chunk
                    self._cond.notify_all()
        except OSError:
            pass
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def _wait(self, ready, deadline: float) -> str:
        """'ok' once ready() holds, 'eof' when the stream ended first, 'timeout' at the deadline."""
        with self._cond:
            while not ready():
                if self._eof:
                    return "eof"
                left = deadline - time.monotonic()
                if left <= 0:
                    return "timeout"
                self._cond.wait(left)
            return "ok"

    def line(self, deadline: float) -> tuple[str, bytes]:
        """(state, the line without its newline); state 'toolong' when no newline came in MAX_HEADER_BYTES."""
        state = self._wait(lambda: b"\n" in self._buf or len(self._buf) > MAX_HEADER_BYTES, deadline)
        with self._cond:
            end = self._buf.find(b"\n")
            if state != "ok":
                return state, bytes(self._buf[:200])
            if end < 0:
                return "toolong", bytes(self._buf[:200])
            line = bytes(self._buf[:end])
            del self._buf[: end + 1]
            return "ok", line

    def exact(self, n: int, deadline: float) -> tuple[str, bytes]:
        state = self._wait(lambda: len(self._buf) >= n, deadline)
        with self._cond:
            if state != "ok":
                return state, b""
            data = bytes(self._buf[:n])
            del self._buf[:n]
            return "ok", data


class PeerChannel:
    """A started peer and its request/response channel. ``request(header)`` sends one request and returns the
    answer's header and arrays; ``close()`` asks the peer to leave and kills it if it does not."""

    def __init__(self, cmd: str | Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None,
                 cwd: str | None = None):
        argv = shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]
        if not argv:
            raise PeerError("empty command line", cmd=str(cmd), request="start")
        self.cmd = cmd if isinstance(cmd, str) else shlex.join(argv)
        self.timeout = float(timeout)
        self._next_id = 0
        self._dead: PeerError | None = None
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         env=None if env is None else dict(env), cwd=cwd, bufsize=0)
        except OSError as exc:
            raise PeerCrashedError(f"could not start the peer: {exc}", cmd=self.cmd, request="start") from None
        self.stderr = StderrLog(self.proc.stderr)
        self._reader = _Reader(self.proc.stdout)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self._dead is None and self.proc.poll() is None

    # ---------------------------------------------------------------------------------------------- errors
    def _tail(self, settle: float = 0.0) -> str:
        if settle:  # a peer that just died may still be flushing its last words to stderr
            try:
                self.proc.wait(settle)
            except subprocess.TimeoutExpired:
                pass
            self.stderr.join(settle)
        return self.stderr.tail()

    def _fatal(self, kind: type[PeerError], message: str, op: str) -> PeerError:
        """The error that ends the session: the peer is killed first, so its stderr tail is complete."""
        settle = 1.0
        if kind is not PeerCrashedError:
            self._kill()
        elif self.proc.poll() is None:
            settle = 2.0
        exit_note = ""
        try:
            self.proc.wait(settle)
            code = self.proc.returncode
            if kind is PeerCrashedError:
                exit_note = f" (exit status {code})" if code is not None else ""
        except subprocess.TimeoutExpired:
            self._kill()
        err = kind(message + exit_note, cmd=self.cmd, request=op, stderr_tail=self._tail(1.0))
        self._dead = err
        return err

    # ---------------------------------------------------------------------------------------------- requests
    def request(self, header: Mapping[str, Any], *, timeout: float | None = None) -> tuple[dict, dict[str, np.ndarray]]:
        """Send one request (``header`` has ``op``; ``id`` is added) and return (answer header, arrays).

        Raises PeerRequestError for an error response (the session goes on) and the other PeerErrors for a crash,
        a timeout or a malformed answer (the session is over)."""
        op = str(header["op"])
        if self._dead is not None:
            raise PeerCrashedError(f"the peer is no longer usable after an earlier failure: {self._dead.args[0].splitlines()[0]}",
                                   cmd=self.cmd, request=op, stderr_tail=self._dead.stderr_tail)
        rid = self._next_id
        self._next_id += 1
        try:
            self.proc.stdin.write(encode({**header, "id": rid}))
            self.proc.stdin.flush()
        except (BrokenPipeError, ConnectionResetError, ValueError, OSError) as exc:
            raise self._fatal(PeerCrashedError, f"the peer stopped reading its stdin ({type(exc).__name__})", op) from None
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        wait = self.timeout if timeout is None else timeout

        state, line = self._reader.line(deadline)
        if state == "eof":
            what = f" after writing {line!r}" if line else ""
            raise self._fatal(PeerCrashedError, f"the peer closed its stdout before answering{what}", op)
        if state == "timeout":
            raise self._fatal(PeerTimeoutError, f"no answer within {wait:g} s (the peer was killed)", op)
        if state == "toolong":
            raise self._fatal(PeerProtocolError, f"no header line within {MAX_HEADER_BYTES} bytes; the answer starts "
                                                 f"{line!r}", op)
        try:
            answer = json.loads(line.decode("utf-8"))
            if not isinstance(answer, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            raise self._fatal(PeerProtocolError, f"expected a JSON header line, got {line[:200]!r} ({exc})", op) from None
        if answer.get("id") != rid:
            raise self._fatal(PeerProtocolError, f"answer has id {answer.get('id')!r}, expected {rid} "
                                                 f"(every answer echoes its request's id, in order)", op)
        if answer.get("ok") is not True:
            error = answer.get("error")
            if answer.get("ok") is False and isinstance(error, dict):
                etype, message = str(error.get("type", "engine_error")), str(error.get("message", ""))
                # an error response may carry arrays too in principle; read them so the stream stays in step
                self._payload(answer, op, deadline, wait)
                self.stderr.settle()
                raise PeerRequestError(f"the peer refused it: {etype}: {message}", error_type=etype, cmd=self.cmd,
                                       request=op, stderr_tail=self._tail())
            raise self._fatal(PeerProtocolError, f"expected 'ok': true, or 'ok': false with an 'error' object, "
                                                 f"got {line[:200]!r}", op)
        return answer, self._payload(answer, op, deadline, wait)

    def _payload(self, answer: dict, op: str, deadline: float, wait: float) -> dict[str, np.ndarray]:
        try:
            specs = array_specs(answer)
        except ValueError as exc:
            raise self._fatal(PeerProtocolError, f"bad array specs in the answer header: {exc}", op) from None
        nbytes = answer.get("nbytes", 0)
        if not nbytes:
            return decode_arrays(specs, b"")
        state, payload = self._reader.exact(nbytes, deadline)
        if state == "eof":
            raise self._fatal(PeerCrashedError, f"the peer closed its stdout inside a {nbytes}-byte payload", op)
        if state == "timeout":
            raise self._fatal(PeerTimeoutError, f"the {nbytes}-byte payload did not arrive within {wait:g} s "
                                                f"(the peer was killed)", op)
        return decode_arrays(specs, payload)

    def fail(self, kind: type[PeerError], message: str, op: str) -> PeerError:
        """An error found by the caller in a well-framed answer (a wrong shape): ends the session like a bad frame."""
        return self._fatal(kind, message, op)

    # ---------------------------------------------------------------------------------------------- shutdown
    def _kill(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.kill()
            except OSError:
                pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass

    def close(self, *, grace: float = 5.0) -> int | None:
        """Ask the peer to leave (``shutdown``), wait ``grace`` seconds for it to exit, then kill it. Returns its
        exit status. Never raises: closing is what error paths and finalizers do."""
        if self.proc.poll() is None and self._dead is None:
            try:
                self.request({"op": "shutdown"}, timeout=grace)
            except PeerError:
                pass
        try:
            self.proc.stdin.close()  # EOF on stdin: the other way a peer learns the session is over
        except (OSError, ValueError):
            pass
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self._kill()
        self._kill()
        self._reader._thread.join(1.0)
        self.stderr.join(1.0)
        for stream in (self.proc.stdout, self.proc.stderr):
            try:
                stream.close()
            except (OSError, ValueError):
                pass
        if self._dead is None:
            self._dead = PeerCrashedError("the peer was shut down", cmd=self.cmd, request="shutdown")
        return self.proc.returncode
