"""One file of a Hugging Face Hub repo onto disk: resumable, verified before it is installed, locked.

huggingface_hub does the protocol and owns the cache: `get_hf_file_metadata` (HEAD: commit, LFS sha256,
size, typed 404s), `build_hf_headers` (HF_TOKEN), its cache layout under HF_HOME / --cache-dir and, once
our verified blob is in place, `hf_hub_download` writes the snapshot pointer and the ref (a HEAD, no GET).
The transfer itself is ours, because huggingface_hub (1.x and 2.x) downloads into a per-process
temporary file that it deletes on failure: a 7 GB transfer cut at 6 GB would start again from zero.
Here the partial blob keeps a stable name (`blobs/<sha256>.gemma-oracle.part`), every run continues it
with an HTTP Range request, and only bytes whose sha256 matched are renamed to `blobs/<sha256>`, where
huggingface_hub and the tests look. A mismatch deletes the partial and raises.

What is retried, and what is not: a dropped connection and a transient HTTP status (TRANSIENT_HTTP: 408, 429,
5xx gateway errors) get ATTEMPTS tries per run, with exponential backoff (BACKOFF_S, or
$GEMMA_ORACLE_DOWNLOAD_BACKOFF_S, doubled per failure, at least the server's Retry-After, at most MAX_DELAY_S).
A server whose file has another size than the metadata said (a 200/206 of the wrong length, a 416 whose
Content-Range names another size) is a SizeMismatchError at once: the partial is deleted, nothing re-downloaded.
A full disk or a read-only / unwritable directory is a StorageError naming the directory, never retried.
"""
from __future__ import annotations

import http.client
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from gemma_oracle.harness.real.errors import (ChecksumMismatchError, DownloadError, FixtureError, RemoteNotFoundError,
                                              SizeMismatchError)
from gemma_oracle.harness.real.storage import write_all, writing
from gemma_oracle.harness.real.verification import file_verified, is_sha256, remember_file, sha256_file, verify_file

READ_BLOCK = 1 << 20
ATTEMPTS = 5  # requests per run (HEAD, and the transfers: each continues where the last one stopped)
TIMEOUT_S = 60.0
PART_SUFFIX = ".gemma-oracle.part"
# Statuses a Hub or CDN answers while overloaded or restarting: worth another try, like a dropped connection.
TRANSIENT_HTTP = frozenset({408, 429, 500, 502, 503, 504})
BACKOFF_S = 1.0  # the wait after the first failure; doubled after each further one
BACKOFF_ENV = "GEMMA_ORACLE_DOWNLOAD_BACKOFF_S"
MAX_DELAY_S = 60.0
CACHE_FIX = ("pass --cache-dir DIR (or set HF_HOME) to a writable directory with room for the file, or "
             "--local-dir DIR")
LOCAL_DIR_FIX = "pass a --local-dir that is writable and has room for the file"
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_UNSATISFIED_RANGE = re.compile(r"^bytes \*/(\d+)$")


def backoff_s(failures: int, retry_after: str | None = None) -> float:
    """Seconds to wait after `failures` failed requests: the base (BACKOFF_S or $GEMMA_ORACLE_DOWNLOAD_BACKOFF_S)
    doubled per failure after the first, at least a Retry-After given in seconds, at most MAX_DELAY_S."""
    raw = os.environ.get(BACKOFF_ENV)
    try:
        base = BACKOFF_S if raw is None else float(raw)
    except ValueError:
        base = -1.0
    if not base >= 0:
        raise FixtureError(f"{BACKOFF_ENV}={raw!r}: expected a number of seconds >= 0 (the first retry's wait)")
    delay = base * 2 ** max(failures - 1, 0)
    if retry_after is not None and retry_after.strip().isdigit():
        delay = max(delay, float(retry_after.strip()))
    return min(delay, MAX_DELAY_S)


def _status_of(exc: BaseException) -> int | None:
    """The HTTP status behind a huggingface_hub (httpx / httpx2) error, if it has one."""
    status = getattr(getattr(exc, "response", None), "status_code", None)
    return status if isinstance(status, int) else None


def is_offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub read it (at its import)."""
    from huggingface_hub import constants

    check = getattr(constants, "is_offline_mode", None)
    return bool(check() if check is not None else constants.HF_HUB_OFFLINE)


def endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def hub_cache(cache_dir: os.PathLike | str | None = None) -> Path:
    from huggingface_hub import constants

    return Path(cache_dir) if cache_dir is not None else Path(constants.HF_HUB_CACHE)


def repo_folder(cache: Path, repo_id: str) -> Path:
    # huggingface_hub's documented cache layout: models--{org}--{name}/{blobs,snapshots,refs}
    return cache / ("models--" + repo_id.replace("/", "--"))


def cached_copy(repo_id: str, filename: str, revision: str, cache_dir=None) -> Path | None:
    """The file in the huggingface_hub cache for this revision, without any network."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename, cache_dir=str(hub_cache(cache_dir)), revision=revision)
    return Path(found) if isinstance(found, str) and os.path.isfile(found) else None


@dataclass(frozen=True)
class RemoteFile:
    repo_id: str
    filename: str
    revision: str
    commit: str
    etag: str
    size: int
    url: str

    @property
    def lfs_sha256(self) -> str | None:
        """The Hub's ETag of an LFS file is the sha256 of its content; a git file's is a sha1."""
        return self.etag if is_sha256(self.etag) else None


def _head(url: str, *, token, what: str):
    """get_hf_file_metadata, with a transient HTTP status (TRANSIENT_HTTP) retried up to ATTEMPTS requests."""
    from huggingface_hub import get_hf_file_metadata

    failures: list[str] = []
    while True:
        try:
            return get_hf_file_metadata(url, token=token)
        except Exception as exc:  # the typed 404s and the rest go to remote_file; httpx or httpx2 by version
            status = _status_of(exc)
            if status not in TRANSIENT_HTTP:
                raise
            failures.append(f"HTTP {status}")
            if len(failures) == ATTEMPTS:
                raise DownloadError(f"{what}cannot get {url}: {ATTEMPTS} requests were answered {_summary(failures)}: "
                                    f"the Hub is unavailable for now, run the download again later. With a cached "
                                    f"copy, HF_HUB_OFFLINE=1 uses it without the network") from exc
            time.sleep(backoff_s(len(failures), exc.response.headers.get("Retry-After")))


def remote_file(repo_id: str, filename: str, revision: str, *, token=None, what: str = "") -> RemoteFile:
    """HEAD the file (transient statuses retried with backoff); typed errors for a missing repo, revision or file
    and for an unreachable endpoint."""
    from huggingface_hub import errors as hf_errors
    from huggingface_hub import hf_hub_url

    url = hf_hub_url(repo_id, filename, revision=revision)
    what = f"{what}: " if what else ""
    where = f"{what}{repo_id}@{revision} on {endpoint()}"
    try:
        meta = _head(url, token=token, what=what)
    except hf_errors.RevisionNotFoundError as exc:
        raise RemoteNotFoundError(f"{where}: no revision {revision!r} (Hub: RevisionNotFound); pass an existing "
                                  f"branch, tag or commit with --revision") from exc
    except hf_errors.EntryNotFoundError as exc:
        raise RemoteNotFoundError(f"{where}: no file {filename!r} (Hub: EntryNotFound)") from exc
    except hf_errors.GatedRepoError as exc:
        raise RemoteNotFoundError(f"{where}: the repo is gated: accept its licence on the Hub and set HF_TOKEN") from exc
    except hf_errors.RepositoryNotFoundError as exc:
        raise RemoteNotFoundError(f"{where}: no such repo (or a private one: set HF_TOKEN)") from exc
    except DownloadError:
        raise
    except Exception as exc:  # connection refused, timeouts, other statuses: httpx or httpx2 errors by version
        raise DownloadError(f"{what}cannot get {url}: {type(exc).__name__}: {exc}. With a cached copy, "
                            "HF_HUB_OFFLINE=1 uses it without the network") from exc
    missing = [name for name, v in (("X-Repo-Commit", meta.commit_hash), ("ETag", meta.etag), ("size", meta.size))
               if v is None]
    if missing:
        raise DownloadError(f"{what}{url}: the response lacks {missing}; is {endpoint()} a Hugging Face Hub?")
    return RemoteFile(repo_id, filename, revision, meta.commit_hash, meta.etag, int(meta.size), meta.location)


# ---------------------------------------------------------------------------------------------------------
# The transfer
# ---------------------------------------------------------------------------------------------------------

class _NoAuthAcrossHosts(urllib.request.HTTPRedirectHandler):
    """The Hub redirects LFS files to a signed CDN URL: the token must not follow to another host."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and urllib.parse.urlsplit(newurl).netloc != urllib.parse.urlsplit(req.full_url).netloc:
            new.remove_header("Authorization")
        return new


def _headers(url: str, token) -> dict[str, str]:
    from huggingface_hub.utils import build_hf_headers

    headers = build_hf_headers(token=token)
    if urllib.parse.urlsplit(url).netloc != urllib.parse.urlsplit(endpoint()).netloc:
        headers.pop("authorization", None)
        headers.pop("Authorization", None)
    headers["Accept-Encoding"] = "identity"  # byte ranges of the file itself, never of a compressed body
    return headers


def _size_mismatch(url: str, part: Path, size: int, served: int | None, label: str) -> SizeMismatchError:
    """Delete the partial (a prefix of a file we will not get) and say what to do."""
    try:
        part.unlink(missing_ok=True)
        deleted = "The partial download was deleted and nothing"
    except OSError as exc:
        deleted = f"The partial download {part} could not be deleted ({exc.strerror}; delete it) and nothing"
    return SizeMismatchError(
        f"{label}: GET {url} " + (f"serves a file of {served} bytes" if served is not None else
                                  "refuses the byte range of its file twice (HTTP 416)")
        + f", but the Hub's metadata says {size} bytes: the file changed "
        f"on the Hub while downloading, or something between (a proxy, the HF_ENDPOINT mirror) alters it. "
        f"{deleted} was installed; run `gemma-oracle fixtures download {label}` again, and if it persists check "
        f"HF_ENDPOINT and proxies")


def _start_of_body(resp, have: int, size: int, url: str, part: Path, label: str) -> int:
    """Offset in the file at which this response's body starts; a body of another total size than `size` is a
    SizeMismatchError before a byte of it is written."""
    if resp.status == 200:  # the whole file: also what a server that ignores Range sends
        length = resp.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) != size:
            raise _size_mismatch(url, part, size, int(length), label)
        return 0
    if resp.status == 206:
        m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
        if m is None or int(m.group(1)) != have:
            raise DownloadError(f"{label}: GET {url}: asked for bytes {have}- and got Content-Range "
                                f"{resp.headers.get('Content-Range')!r}")
        if m.group(3) != "*" and int(m.group(3)) != size:
            raise _size_mismatch(url, part, size, int(m.group(3)), label)
        return have
    raise DownloadError(f"{label}: GET {url}: unexpected HTTP {resp.status}")


def _receive(resp, part: Path, start: int, bar, *, doing: str, fix: str) -> None:
    """Write the body into `part` from `start`; the disk's errors are typed (StorageError), the network's are not."""
    with writing(part.parent, doing=doing, fix=fix):
        fh = open(part, "r+b" if part.exists() else "wb", buffering=0)  # raw: a failed write leaves no buffer
    try:
        with writing(part.parent, doing=doing, fix=fix):
            fh.seek(start)
            fh.truncate()
        # read1: whatever has arrived, so an interruption loses at most one block in flight
        while block := resp.read1(READ_BLOCK):
            with writing(part.parent, doing=doing, fix=fix):
                write_all(fh, block)
            bar.update(len(block))
    finally:
        fh.close()


def _summary(failures: list[str]) -> str:
    """'HTTP 503 Service Unavailable (x5)' for a run of equal failures, in order."""
    runs: list[list] = []
    for f in failures:
        if runs and runs[-1][0] == f:
            runs[-1][1] += 1
        else:
            runs.append([f, 1])
    return "; ".join(f if n == 1 else f"{f} (x{n})" for f, n in runs)


def transfer(url: str, part: Path, size: int, *, token=None, label: str = "", progress: bool = True,
             fix: str = CACHE_FIX) -> None:
    """Bring `part` to `size` bytes from `url`, continuing what is already in it with Range requests; up to
    ATTEMPTS requests per call, a dropped connection or a transient HTTP status retried after backoff_s. The
    partial file stays for the next run if all of them fail. A size mismatch (SizeMismatchError) and a local
    disk error (StorageError: full, read-only; `fix` says what to do) end the call at once."""
    from huggingface_hub.utils import tqdm

    label = label or part.name
    doing = f"{label}: writing the {size}-byte download into {part}"
    fix = f"{fix}; what arrived is kept in {part.name} and the next run continues it"
    opener = urllib.request.build_opener(_NoAuthAcrossHosts)
    headers = _headers(url, token)
    with writing(part.parent, doing=doing, fix=fix):
        part.parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=size, unit="B", unit_scale=True, desc=label, disable=not progress)
    failures: list[str] = []
    retry_after = None
    restarted = False
    try:
        for _ in range(ATTEMPTS):
            have = part.stat().st_size if part.exists() else 0
            if have > size:  # longer than the file: not a prefix of it
                with writing(part.parent, doing=doing, fix=fix):
                    part.unlink()
                have = 0
            bar.n = have
            bar.refresh()
            if have == size:
                return
            if failures:
                time.sleep(backoff_s(len(failures), retry_after))
                retry_after = None
            request = urllib.request.Request(url, headers=headers | ({"Range": f"bytes={have}-"} if have else {}))
            try:
                with opener.open(request, timeout=TIMEOUT_S) as resp:
                    _receive(resp, part, _start_of_body(resp, have, size, url, part, label), bar, doing=doing, fix=fix)
            except urllib.error.HTTPError as exc:
                exc.close()
                if exc.code == 416:  # the partial does not fit the file
                    m = _UNSATISFIED_RANGE.match(exc.headers.get("Content-Range", ""))
                    if m is not None and int(m.group(1)) != size:
                        raise _size_mismatch(url, part, size, int(m.group(1)), label) from exc
                    if restarted:
                        raise _size_mismatch(url, part, size, None, label) from exc
                    with writing(part.parent, doing=doing, fix=fix):
                        part.unlink(missing_ok=True)  # start again from zero, once
                    restarted = True
                    failures.append(f"HTTP 416 at byte {have}")
                    continue
                if exc.code in TRANSIENT_HTTP:
                    failures.append(f"HTTP {exc.code} {exc.reason}")
                    retry_after = exc.headers.get("Retry-After")
                    continue
                raise DownloadError(f"{label}: GET {url}: HTTP {exc.code} {exc.reason}") from exc
            except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:  # the network's, not the disk's
                failures.append(f"{type(exc).__name__}: {exc}")
                continue
            got = part.stat().st_size
            if got < size:  # the server closed the connection early (http.client does not raise on that)
                failures.append(f"connection closed after {got} of {size} bytes")
        have = part.stat().st_size if part.exists() else 0
        if have == size:
            return
        kept = f"{have} of {size} bytes are kept in {part}" if have else "nothing was received"
        raise DownloadError(f"{label}: GET {url}: {ATTEMPTS} requests ended before the file did "
                            f"({_summary(failures)}); {kept}: run `gemma-oracle fixtures download {label}` again "
                            f"later" + (" to continue from there" if have else ""))
    finally:
        bar.close()


# ---------------------------------------------------------------------------------------------------------
# Installing: into the huggingface_hub cache, or into a plain directory
# ---------------------------------------------------------------------------------------------------------

def _remove_pointers(folder: Path, blob: Path) -> None:
    """Snapshot entries that resolve to `blob` (symlinks, or copies where symlinks are unavailable)."""
    for entry in (folder / "snapshots").glob("*/**/*"):
        if entry.is_symlink() and os.path.realpath(entry) == os.path.realpath(blob):
            entry.unlink()


def _fetch_verified(remote: RemoteFile, final: Path, part: Path, expected: str, *, what: str, against: str,
                    token, progress: bool, fix: str, on_bad=None) -> None:
    """`final` holds bytes with sha256 `expected` afterwards, or this raises and neither it nor `part` holds
    bad bytes. A `final` that hashes wrong (bit rot, an edit) is removed and downloaded again, once. Callers
    hold the lock."""
    doing = f"{what}: installing {final.name}"
    if final.exists():
        try:
            verify_file(final, expected, what=what, against=against, progress=progress)
            return
        except ChecksumMismatchError as exc:
            with writing(final.parent, doing=doing, fix=fix):
                final.unlink()
                if on_bad is not None:
                    on_bad()
            print(f"warning: {exc}; removed it, downloading it again", file=sys.stderr)
    transfer(remote.url, part, remote.size, token=token, label=what, progress=progress, fix=fix)
    got = sha256_file(part, progress=progress, label=what)
    if got != expected:
        part.unlink()
        raise ChecksumMismatchError(
            f"{what}: the {remote.size} bytes downloaded from {remote.url} have sha256 {got}, expected {expected} "
            f"({against}); the download was deleted and nothing was installed", got=got, expected=expected)
    with writing(final.parent, doing=doing, fix=fix):
        os.replace(part, final)
    remember_file(final, expected, what=what)


def download_to_cache(remote: RemoteFile, expected: str, *, what: str, against: str, cache_dir=None, token=None,
                      progress: bool = True) -> Path:
    """Install the verified file in the huggingface_hub cache; return its snapshot path. A copy that is complete
    and recorded as verified is returned without a write, so a read-only cache that has the file works."""
    from huggingface_hub import hf_hub_download

    cache = hub_cache(cache_dir)
    folder = repo_folder(cache, remote.repo_id)
    blob = folder / "blobs" / remote.etag
    snapshot = folder / "snapshots" / remote.commit / remote.filename
    if snapshot.is_file() and os.path.realpath(snapshot) == os.path.realpath(blob) and file_verified(blob, expected):
        return snapshot
    lock_path = cache / ".locks" / folder.name / f"{remote.etag}.gemma-oracle.lock"
    lock = FileLock(str(lock_path))
    with writing(cache, doing=f"{what}: preparing the download into {folder}", fix=CACHE_FIX):
        blob.parent.mkdir(parents=True, exist_ok=True)
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire()  # the lock file is the first write: a read-only cache fails here, before any GET
    try:
        _fetch_verified(remote, blob, blob.with_name(blob.name + PART_SUFFIX), expected, what=what, against=against,
                        token=token, progress=progress, fix=CACHE_FIX, on_bad=lambda: _remove_pointers(folder, blob))
        # The blob is in place, so huggingface_hub only links the snapshot and writes refs/<revision>.
        with writing(folder, doing=f"{what}: linking {remote.filename} in {folder / 'snapshots'}", fix=CACHE_FIX):
            path = Path(hf_hub_download(remote.repo_id, remote.filename, revision=remote.revision,
                                        cache_dir=str(cache), token=token))
    finally:
        lock.release()
    if os.path.realpath(path) != os.path.realpath(blob):
        raise DownloadError(f"{what}: {remote.repo_id}@{remote.revision} moved to another file while downloading "
                            f"({path} is not {blob}); run the download again")
    return path


def download_to_dir(remote: RemoteFile, expected: str, local_dir: os.PathLike | str, *, what: str, against: str,
                    token=None, progress: bool = True) -> Path:
    """Install the verified file as `local_dir/<filename>` (a plain file, no huggingface_hub metadata)."""
    final = Path(local_dir) / remote.filename
    work = Path(local_dir) / ".gemma-oracle"
    stem = remote.filename.replace("/", "--")
    lock = FileLock(str(work / f"{stem}.lock"))
    with writing(local_dir, doing=f"{what}: preparing the download into {local_dir}", fix=LOCAL_DIR_FIX):
        final.parent.mkdir(parents=True, exist_ok=True)
        work.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    try:
        _fetch_verified(remote, final, work / f"{stem}.{remote.etag[:16]}{PART_SUFFIX}", expected, what=what,
                        against=against, token=token, progress=progress, fix=LOCAL_DIR_FIX)
    finally:
        lock.release()
    return final
