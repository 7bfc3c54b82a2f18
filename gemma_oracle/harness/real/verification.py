"""sha256 verification of real-model files, and the records that make it happen once.

Two kinds of record live under $GEMMA_ORACLE_CACHE/verified (never in the repository):

* a **source record** per (Hub repo, file, revision): the sha256 that the first verified download saw as
  the Hub's LFS sha256, so later runs verify against it even if the revision moves (and the local copies
  that were verified, so `fixtures list` finds a --local-dir download again);
* a **file record** per local copy: (size, mtime, ctime, inode, sha256) of a file that hashed correctly, so
  a 7 GB file is hashed once, not at every test session. A copy whose stat changed is hashed again (a write
  in place changes the ctime even when the size and mtime are put back); bit rot that no stat shows is
  found by `gemma-oracle fixtures verify`, which re-hashes regardless of the record (verify_file(force=True)).

Records are written to a temporary name and renamed, so a reader never sees half a record. A records directory
that cannot be written (read-only, full) is a typed StorageError naming it (gemma_oracle.harness.real.storage).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from filelock import FileLock

from gemma_oracle.harness.real.errors import ChecksumMismatchError, FixtureError, StorageError
from gemma_oracle.harness.real.storage import check_writable, writing

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
HASH_BLOCK = 8 << 20
# Below this a progress bar only flickers.
PROGRESS_MIN_BYTES = 256 << 20
RECORDS_FIX = "set GEMMA_ORACLE_CACHE to a writable directory (it keeps the sha256 verification records)"


def is_sha256(text: str) -> bool:
    """64 lower-case hex digits (how the Hub and our records write a sha256)."""
    return bool(_SHA256.match(text))


def records_dir() -> Path:
    """$GEMMA_ORACLE_CACHE/verified (next to the synthetic fixtures' cache)."""
    from gemma_oracle.harness.fixtures.cache import cache_dir

    return cache_dir().parent / "verified"


def check_records_writable(what: str) -> None:
    """Fail (StorageError) before a download whose verification could not be recorded afterwards."""
    check_writable(records_dir(), doing=f"{what}: recording the verified sha256", fix=RECORDS_FIX)


def sha256_file(path: os.PathLike | str, *, progress: bool = True, label: str = "") -> str:
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256()
    bar = None
    if progress and size >= PROGRESS_MIN_BYTES:
        from huggingface_hub.utils import tqdm  # honours HF_HUB_DISABLE_PROGRESS_BARS

        bar = tqdm(total=size, unit="B", unit_scale=True, desc=f"sha256 {label or path.name}")
    with path.open("rb") as fh:
        while block := fh.read(HASH_BLOCK):
            digest.update(block)
            if bar is not None:
                bar.update(len(block))
    if bar is not None:
        bar.close()
    return digest.hexdigest()


def _write_json(path: Path, data: dict, *, doing: str) -> None:
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    with writing(path.parent, doing=f"{doing} (record {path.name})", fix=RECORDS_FIX):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise FixtureError(f"{path}: unreadable verification record ({exc}); delete it to record afresh") from exc
    if not isinstance(data, dict):
        raise FixtureError(f"{path}: verification record is not a JSON object; delete it to record afresh")
    return data


# ---------------------------------------------------------------------------------------------------------
# Source records: the sha256 a (repo, file, revision) was first verified with
# ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SourceKey:
    repo_id: str
    filename: str
    revision: str

    @property
    def path(self) -> Path:
        readable = f"{self.repo_id}--{self.filename}--{self.revision}".replace("/", "--")
        digest = hashlib.sha1(f"{self.repo_id}\0{self.filename}\0{self.revision}".encode()).hexdigest()[:12]
        return records_dir() / "sources" / f"{readable[:120]}-{digest}.json"


@dataclass(frozen=True)
class SourceRecord:
    sha256: str
    size: int
    commit: str
    recorded_at: str
    copies: tuple[str, ...] = ()


def read_source(key: SourceKey) -> SourceRecord | None:
    data = _read_json(key.path)
    if data is None:
        return None
    try:
        return SourceRecord(data["sha256"], int(data["size"]), data["commit"], data["recorded_at"], tuple(data.get("copies", ())))
    except (KeyError, TypeError, ValueError) as exc:
        raise FixtureError(f"{key.path}: verification record lacks {exc}; delete it to record afresh") from exc


def record_source(key: SourceKey, *, sha256: str, size: int, commit: str, copy: os.PathLike | str) -> SourceRecord:
    """Record the sha256 on first use (an existing record is kept: it is what later runs verify against)
    and add `copy` to the verified local copies."""
    lock = FileLock(str(key.path) + ".lock")
    with writing(key.path.parent, doing=f"recording the sha256 of {key.repo_id}/{key.filename}", fix=RECORDS_FIX):
        key.path.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    try:
        old = read_source(key)
        if old is not None and old.sha256 != sha256:
            raise ChecksumMismatchError(f"{key.path} records sha256 {old.sha256} for {key.repo_id}/{key.filename}"
                                        f"@{key.revision}, not {sha256}: delete the record to accept the new file")
        copies = tuple(dict.fromkeys((old.copies if old else ()) + (str(Path(copy).absolute()),)))
        rec = SourceRecord(sha256, size, old.commit if old else commit,
                           old.recorded_at if old else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), copies)
        data = asdict(rec) | {"repo_id": key.repo_id, "filename": key.filename, "revision": key.revision}
        data["copies"] = list(copies)
        _write_json(key.path, data, doing=f"recording the sha256 of {key.repo_id}/{key.filename}@{key.revision}")
    finally:
        lock.release()
    return rec


# ---------------------------------------------------------------------------------------------------------
# File records: this local copy hashed to that sha256
# ---------------------------------------------------------------------------------------------------------

def _file_record_path(path: Path) -> Path:
    return records_dir() / "files" / (hashlib.sha1(str(path).encode()).hexdigest()[:20] + ".json")


def _stat_key(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "ino": st.st_ino}


def file_verified(path: os.PathLike | str, sha256: str) -> bool:
    """True when this exact file (same size, mtime, ctime and inode) was hashed to `sha256` before."""
    real = Path(os.path.realpath(path))
    if not real.is_file():
        return False
    rec = _read_json(_file_record_path(real))
    return rec is not None and rec.get("sha256") == sha256 and rec.get("stat") == _stat_key(real)


def remember_file(path: os.PathLike | str, sha256: str, *, what: str = "") -> None:
    """Record that `path`, as it is now, hashed to `sha256` (`what`: the fixture, for messages)."""
    real = Path(os.path.realpath(path))
    _write_json(_file_record_path(real), {"path": str(real), "sha256": sha256, "stat": _stat_key(real)},
                doing=f"{what + ': ' if what else ''}recording that {real} has the verified sha256")


def forget_file(path: os.PathLike | str) -> None:
    """Drop the file record of `path`: the next use hashes it again."""
    record = _file_record_path(Path(os.path.realpath(path)))
    with writing(record.parent, doing=f"dropping the verification record of {path}", fix=RECORDS_FIX):
        record.unlink(missing_ok=True)


def verify_file(path: os.PathLike | str, expected: str, *, what: str, against: str, progress: bool = True,
                force: bool = False) -> str:
    """Hash `path` (unless its file record already says `expected` and not `force`) and raise
    ChecksumMismatchError naming `what` (the fixture) and `against` (where `expected` came from) on a mismatch,
    after dropping the file record. Deletes no copy. Returns the sha256."""
    if not force and file_verified(path, expected):
        return expected
    got = sha256_file(path, progress=progress, label=what)
    if got != expected:
        message, kept = f"{what}: {path} has sha256 {got}, expected {expected} ({against})", None
        try:
            forget_file(path)
        except StorageError as exc:  # the mismatch is the news; a record that stays must not go unmentioned
            kept = f"its verification record stays, trusted at its next use: {exc}"
            message += f"; {kept}"
        raise ChecksumMismatchError(message, path=path, got=got, expected=expected, record_kept=kept)
    if not file_verified(path, expected):
        remember_file(path, expected, what=what)
    return got
