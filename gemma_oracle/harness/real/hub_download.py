"""One file of a Hugging Face Hub repo onto disk: resumable, verified before it is installed, locked.

huggingface_hub does the protocol and owns the cache: `get_hf_file_metadata` (HEAD: commit, LFS sha256,
size, typed 404s), `build_hf_headers` (HF_TOKEN), its cache layout under HF_HOME / --cache-dir and, once
our verified blob is in place, `hf_hub_download` writes the snapshot pointer and the ref (a HEAD, no GET).
The transfer itself is ours, because huggingface_hub (1.x and 2.x) downloads into a per-process
temporary file that it deletes on failure: a 7 GB transfer cut at 6 GB would start again from zero.
Here the partial blob keeps a stable name (`blobs/<sha256>.gemma-oracle.part`), every run continues it
with an HTTP Range request, and only bytes whose sha256 matched are renamed to `blobs/<sha256>`, where
huggingface_hub and the tests look. A mismatch deletes the partial and raises.
"""
from __future__ import annotations

import http.client
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from gemma_oracle.harness.real.errors import ChecksumMismatchError, DownloadError, RemoteNotFoundError
from gemma_oracle.harness.real.verification import is_sha256, remember_file, sha256_file, verify_file

READ_BLOCK = 1 << 20
ATTEMPTS = 5  # transfers per run; each continues where the last one stopped
TIMEOUT_S = 60.0
PART_SUFFIX = ".gemma-oracle.part"
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


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


def remote_file(repo_id: str, filename: str, revision: str, *, token=None) -> RemoteFile:
    """HEAD the file; typed errors for a missing repo, revision or file and for an unreachable endpoint."""
    from huggingface_hub import errors as hf_errors
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(repo_id, filename, revision=revision)
    where = f"{repo_id}@{revision} on {endpoint()}"
    try:
        meta = get_hf_file_metadata(url, token=token)
    except hf_errors.RevisionNotFoundError as exc:
        raise RemoteNotFoundError(f"{where}: no revision {revision!r} (Hub: RevisionNotFound); pass an existing "
                                  f"branch, tag or commit with --revision") from exc
    except hf_errors.EntryNotFoundError as exc:
        raise RemoteNotFoundError(f"{where}: no file {filename!r} (Hub: EntryNotFound)") from exc
    except hf_errors.GatedRepoError as exc:
        raise RemoteNotFoundError(f"{where}: the repo is gated: accept its licence on the Hub and set HF_TOKEN") from exc
    except hf_errors.RepositoryNotFoundError as exc:
        raise RemoteNotFoundError(f"{where}: no such repo (or a private one: set HF_TOKEN)") from exc
    except Exception as exc:  # connection refused, timeouts, 5xx: httpx or httpx2 errors depending on the version
        raise DownloadError(f"cannot get {url}: {type(exc).__name__}: {exc}. With a cached copy, "
                            "HF_HUB_OFFLINE=1 uses it without the network") from exc
    missing = [name for name, v in (("X-Repo-Commit", meta.commit_hash), ("ETag", meta.etag), ("size", meta.size))
               if v is None]
    if missing:
        raise DownloadError(f"{url}: the response lacks {missing}; is {endpoint()} a Hugging Face Hub?")
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


def _start_of_body(resp, have: int, url: str) -> int:
    """Offset in the file at which this response's body starts."""
    if resp.status == 200:
        return 0  # a server that ignores Range sends everything again
    if resp.status == 206:
        m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
        if m is None or int(m.group(1)) != have:
            raise DownloadError(f"GET {url}: asked for bytes {have}- and got Content-Range "
                                f"{resp.headers.get('Content-Range')!r}")
        return have
    raise DownloadError(f"GET {url}: unexpected HTTP {resp.status}")


def transfer(url: str, part: Path, size: int, *, token=None, label: str = "", progress: bool = True) -> None:
    """Bring `part` to `size` bytes from `url`, continuing what is already in it with Range requests;
    up to ATTEMPTS connections per call. The partial file stays for the next run if all of them fail."""
    from huggingface_hub.utils import tqdm

    opener = urllib.request.build_opener(_NoAuthAcrossHosts)
    headers = _headers(url, token)
    part.parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=size, unit="B", unit_scale=True, desc=label or part.name, disable=not progress)
    failures: list[str] = []
    try:
        for attempt in range(ATTEMPTS):
            have = part.stat().st_size if part.exists() else 0
            if have > size:  # longer than the file: not a prefix of it
                part.unlink()
                have = 0
            bar.n = have
            bar.refresh()
            if have == size:
                return
            if attempt > 1:
                time.sleep(0.5 * attempt)
            request = urllib.request.Request(url, headers=headers | ({"Range": f"bytes={have}-"} if have else {}))
            try:
                with opener.open(request, timeout=TIMEOUT_S) as resp:
                    start = _start_of_body(resp, have, url)
                    with part.open("r+b" if part.exists() else "wb") as fh:
                        fh.seek(start)
                        fh.truncate()
                        # read1: whatever has arrived, so an interruption loses at most one block in flight
                        while block := resp.read1(READ_BLOCK):
                            fh.write(block)
                            fh.flush()
                            bar.update(len(block))
            except urllib.error.HTTPError as exc:
                if exc.code == 416:  # our partial does not fit the file: start again
                    part.unlink(missing_ok=True)
                    failures.append("HTTP 416")
                    continue
                raise DownloadError(f"GET {url}: HTTP {exc.code} {exc.reason}") from exc
            except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
                continue
            got = part.stat().st_size
            if got < size:  # the server closed the connection early (http.client does not raise on that)
                failures.append(f"connection closed after {got} of {size} bytes")
        have = part.stat().st_size if part.exists() else 0
        if have == size:
            return
        raise DownloadError(f"GET {url}: {ATTEMPTS} connections ended before the file did ({'; '.join(failures)}); "
                            f"{have} of {size} bytes are kept in {part} and the next run continues from there")
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
                    token, progress: bool, on_bad=None) -> None:
    """`final` holds bytes with sha256 `expected` afterwards, or this raises and neither it nor `part` holds
    bad bytes. Callers hold the lock."""
    if final.exists():
        try:
            verify_file(final, expected, what=what, against=against, progress=progress)
            return
        except ChecksumMismatchError as exc:
            final.unlink()
            if on_bad is not None:
                on_bad()
            raise ChecksumMismatchError(f"{exc}; removed it, run `gemma-oracle fixtures download` again") from exc
    transfer(remote.url, part, remote.size, token=token, label=what, progress=progress)
    got = sha256_file(part, progress=progress, label=what)
    if got != expected:
        part.unlink()
        raise ChecksumMismatchError(
            f"{what}: the {remote.size} bytes downloaded from {remote.url} have sha256 {got}, expected {expected} "
            f"({against}); the download was deleted and nothing was installed")
    os.replace(part, final)
    remember_file(final, expected)


def download_to_cache(remote: RemoteFile, expected: str, *, what: str, against: str, cache_dir=None, token=None,
                      progress: bool = True) -> Path:
    """Install the verified file in the huggingface_hub cache; return its snapshot path."""
    from huggingface_hub import hf_hub_download

    cache = hub_cache(cache_dir)
    folder = repo_folder(cache, remote.repo_id)
    blob = folder / "blobs" / remote.etag
    blob.parent.mkdir(parents=True, exist_ok=True)
    lock = cache / ".locks" / folder.name / f"{remote.etag}.gemma-oracle.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock)):
        _fetch_verified(remote, blob, blob.with_name(blob.name + PART_SUFFIX), expected, what=what, against=against,
                        token=token, progress=progress, on_bad=lambda: _remove_pointers(folder, blob))
        # The blob is in place, so huggingface_hub only links the snapshot and writes refs/<revision>.
        path = Path(hf_hub_download(remote.repo_id, remote.filename, revision=remote.revision,
                                    cache_dir=str(cache), token=token))
    if os.path.realpath(path) != os.path.realpath(blob):
        raise DownloadError(f"{what}: {remote.repo_id}@{remote.revision} moved to another file while downloading "
                            f"({path} is not {blob}); run the download again")
    return path


def download_to_dir(remote: RemoteFile, expected: str, local_dir: os.PathLike | str, *, what: str, against: str,
                    token=None, progress: bool = True) -> Path:
    """Install the verified file as `local_dir/<filename>` (a plain file, no huggingface_hub metadata)."""
    final = Path(local_dir) / remote.filename
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(local_dir) / ".gemma-oracle"
    work.mkdir(parents=True, exist_ok=True)
    stem = remote.filename.replace("/", "--")
    with FileLock(str(work / f"{stem}.lock")):
        _fetch_verified(remote, final, work / f"{stem}.{remote.etag[:16]}{PART_SUFFIX}", expected, what=what,
                        against=against, token=token, progress=progress)
    return final
