"""A local stand-in for the Hugging Face Hub's resolve endpoint, for download tests (no mocks of huggingface_hub).

`HEAD|GET /{org}/{name}/resolve/{revision}/{path}` answers as the Hub does for an LFS file
(offline-references.md §5): `X-Repo-Commit`, `ETag` (the git sha1 of the LFS pointer), `X-Linked-Etag`
(the sha256 of the content, which huggingface_hub prefers), `X-Linked-Size`, `Content-Length`,
`Accept-Ranges`; GET honours `Range: bytes=N-` with 206 and `Content-Range`. An unknown repo, revision or
file is a 404 with the Hub's `X-Error-Code` (RepoNotFound, RevisionNotFound, EntryNotFound).

Faults, per server (each applies to the first GET only): `drop_after` (send that many bytes, then close
the connection), `stall_after` (send that many bytes, then wait until `release()`), `hold_until_heads`
(keep the body back until that many HEADs arrived or 30 s passed), `corrupt` (flip a byte of every body,
headers unchanged). `head_statuses` / `get_statuses` answer the first HEADs / GETs of a file with these
statuses (503: overloaded, ...) and no body, one status per request, before any other fault; `advertised_size`
is the size the metadata (X-Linked-Size, a HEAD's Content-Length) claims while a GET sends the real bytes.
`requests` records (method, path, Range header) of every request.
"""
from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Repo:
    files: dict[str, bytes]
    commit: str = "0123456789abcdef0123456789abcdef01234567"
    branches: tuple[str, ...] = ("main",)


@dataclass
class Faults:
    drop_after: int | None = None
    stall_after: int | None = None
    hold_until_heads: int | None = None
    corrupt: bool = False
    head_statuses: tuple[int, ...] = ()
    get_statuses: tuple[int, ...] = ()
    advertised_size: int | None = None


def lfs_pointer_sha1(content: bytes) -> str:
    """The git blob sha1 of the LFS pointer file, which the Hub sends as the plain ETag of an LFS file."""
    pointer = (f"version https://git-lfs.github.com/spec/v1\noid sha256:{hashlib.sha256(content).hexdigest()}\n"
               f"size {len(content)}\n").encode()
    return hashlib.sha1(b"blob %d\0" % len(pointer) + pointer).hexdigest()


@dataclass
class LocalHub:
    repos: dict[str, Repo]
    faults: Faults = field(default_factory=Faults)
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    bytes_sent: int = 0

    def __post_init__(self):
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._gets = 0
        self._answered = {"HEAD": 0, "GET": 0}
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_HEAD(self):
                hub._serve(self, body=False)

            def do_GET(self):
                hub._serve(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> "LocalHub":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()

    def release(self) -> None:
        self._released.set()

    def count(self, method: str) -> int:
        with self._lock:
            return sum(1 for m, _, _ in self.requests if m == method)

    def ranges(self) -> list[str | None]:
        with self._lock:
            return [r for m, _, r in self.requests if m == "GET"]

    # --- the protocol -------------------------------------------------------------------------------
    def _error(self, h, code: int, error_code: str, message: str) -> None:
        h.send_response(code)
        h.send_header("X-Error-Code", error_code)
        h.send_header("X-Error-Message", message)
        h.send_header("Content-Length", "0")
        h.end_headers()

    def _serve(self, h, *, body: bool) -> None:
        with self._lock:
            self.requests.append((h.command, h.path, h.headers.get("Range")))
        parts = h.path.split("?")[0].split("/")
        # ['', org, name, 'resolve', revision, *path]
        if len(parts) < 6 or parts[3] != "resolve":
            return self._error(h, 404, "RepoNotFound", "not a resolve URL")
        repo_id, revision, filename = f"{parts[1]}/{parts[2]}", parts[4], "/".join(parts[5:])
        repo = self.repos.get(repo_id)
        if repo is None:
            return self._error(h, 404, "RepoNotFound", f"Repository {repo_id} not found")
        if revision not in repo.branches and revision != repo.commit:
            return self._error(h, 404, "RevisionNotFound", f"Invalid rev id: {revision}")
        if filename not in repo.files:
            return self._error(h, 404, "EntryNotFound", f"{filename} does not exist on {revision}")
        content = repo.files[filename]
        with self._lock:
            n = self._answered[h.command]
            self._answered[h.command] += 1
        statuses = self.faults.get_statuses if body else self.faults.head_statuses
        if n < len(statuses):
            return self._error(h, statuses[n], "ServiceUnavailable", "injected fault")
        start = 0
        rng = h.headers.get("Range")
        if body and rng and rng.startswith("bytes=") and rng.endswith("-"):
            start = int(rng[len("bytes="):-1])
            if start >= len(content):
                h.send_response(416)
                h.send_header("Content-Range", f"bytes */{len(content)}")
                h.send_header("Content-Length", "0")
                return h.end_headers()
        h.send_response(206 if start else 200)
        h.send_header("X-Repo-Commit", repo.commit)
        h.send_header("ETag", f'"{lfs_pointer_sha1(content)}"')
        h.send_header("X-Linked-Etag", f'"{hashlib.sha256(content).hexdigest()}"')
        announced = self.faults.advertised_size if self.faults.advertised_size is not None else len(content)
        h.send_header("X-Linked-Size", str(announced))
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Length", str((len(content) if body else announced) - start))
        if start:
            h.send_header("Content-Range", f"bytes {start}-{len(content) - 1}/{len(content)}")
        h.end_headers()
        if body:
            self._send_body(h, content, start)

    def _send_body(self, h, content: bytes, start: int) -> None:
        with self._lock:
            self._gets += 1
            first = self._gets == 1
        data = content[start:]
        if self.faults.corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        f = self.faults if first else Faults(corrupt=self.faults.corrupt)
        if f.hold_until_heads is not None:
            deadline = time.monotonic() + 30
            while self.count("HEAD") < f.hold_until_heads and time.monotonic() < deadline:
                time.sleep(0.02)
        cut = f.drop_after if f.drop_after is not None else f.stall_after
        try:
            if cut is None:
                self._write(h, data)
                return
            self._write(h, data[:cut])
            if f.stall_after is not None:
                self._released.wait(60)
            h.close_connection = True
            h.connection.shutdown(2)  # the client sees the connection end before Content-Length bytes
        except OSError:  # the client went away (killed mid-transfer)
            h.close_connection = True

    def _write(self, h, data: bytes) -> None:
        for i in range(0, len(data), 64 << 10):
            h.wfile.write(data[i:i + (64 << 10)])
            h.wfile.flush()
            with self._lock:
                self.bytes_sent += len(data[i:i + (64 << 10)])
