"""Local writes of real-model fixtures: an OSError from the disk becomes one typed error that names the directory
and what to do (gemma_oracle.harness.real.errors.StorageError), never a retry, never a traceback.

A full disk (ENOSPC, EDQUOT) is a DiskFullError, a read-only or unwritable directory (EROFS, EACCES, EPERM) a
NotWritableError; anything else the disk says is a StorageError with the system's words.
"""
from __future__ import annotations

import errno
import os
from contextlib import contextmanager
from pathlib import Path

from gemma_oracle.harness.real.errors import DiskFullError, NotWritableError, StorageError

_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
_NOT_WRITABLE = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})


def storage_error(exc: OSError, directory: os.PathLike | str, *, doing: str, fix: str) -> StorageError:
    """The typed error for `exc`, raised while `doing` (which names the fixture) under `directory`."""
    d = str(directory)
    reason = exc.strerror or str(exc)
    if exc.errno in _FULL:
        return DiskFullError(f"{doing}: no space left in {d} ({reason}): free space there, or {fix}", directory=d)
    if exc.errno in _NOT_WRITABLE:
        return NotWritableError(f"{doing}: cannot write in {d} ({reason}): make it writable, or {fix}", directory=d)
    return StorageError(f"{doing}: cannot write in {d} ({reason}{f': {exc.filename}' if exc.filename else ''}): "
                        f"{fix}", directory=d)


@contextmanager
def writing(directory: os.PathLike | str, *, doing: str, fix: str):
    """Local file operations in this block raise the typed error of storage_error instead of OSError."""
    try:
        yield
    except OSError as exc:
        raise storage_error(exc, directory, doing=doing, fix=fix) from exc


def check_writable(directory: os.PathLike | str, *, doing: str, fix: str) -> None:
    """Create `directory` if needed and a file in it (removed again): fail before any transfer, not after it.
    A probe, not a permission check: root passes a chmod'ed directory because root really can write there."""
    directory = Path(directory)
    with writing(directory, doing=doing, fix=fix):
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".gemma-oracle-probe.{os.getpid()}"
        try:
            probe.write_bytes(b"")
        finally:
            probe.unlink(missing_ok=True)


def write_all(fh, block: bytes) -> None:
    """All of `block` into an unbuffered file (a raw write may take part of it; the next one then raises)."""
    view = memoryview(block)
    while view:
        view = view[fh.write(view):]
