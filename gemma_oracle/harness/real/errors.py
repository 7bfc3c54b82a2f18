"""Typed errors for real-model fixtures: the catalog, downloads, verification and local copies.

Every message names the fixture (and the file, key or URL at fault) and says what was expected or what
to run, so a user can tell a typo in a catalog from a missing file from a corrupt download.
"""
from __future__ import annotations

from gemma_oracle.engine.errors import GemmaOracleError


class FixtureError(GemmaOracleError):
    """Base of the errors in this module."""


class CatalogError(FixtureError):
    """A catalog file that cannot be used: unreadable TOML, a missing or mistyped key, an unknown source."""

    def __init__(self, path, message: str, *, key: str | None = None):
        self.path, self.key = str(path), key
        super().__init__(f"{self.path}" + (f" [{key}]" if key else "") + f": {message}")


class UnknownFixtureError(FixtureError, KeyError):
    """A name that is neither in the catalog nor an existing file."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


class FixtureNotPresentError(FixtureError):
    """The fixture is not on this machine (and could not be fetched: offline, or not asked to)."""


class RemoteNotFoundError(FixtureError):
    """The Hub (or HF_ENDPOINT) has no such repository, revision or file."""


class DownloadError(FixtureError):
    """The transfer failed (network, HTTP status, size); what was received is kept for a resume."""


class ChecksumMismatchError(FixtureError):
    """Bytes whose sha256 differs from the expected one; the bad copy has been removed where we own it, and is
    never recorded as verified. `path`, `got` and `expected` are set where one local copy was hashed."""

    def __init__(self, message: str, *, path=None, got: str | None = None, expected: str | None = None,
                 record_kept: str | None = None):
        self.path = None if path is None else str(path)
        self.got, self.expected = got, expected
        self.record_kept = record_kept  # why a wrong copy's verification record could not be dropped, if it could not
        super().__init__(message)


class MissingPackageError(FixtureError):
    """A fixture shipped in a PyPI package that is not installed."""


class SizeMismatchError(DownloadError):
    """The server sends a file of another size than the Hub's metadata announced; the partial was deleted."""


class StorageError(FixtureError):
    """A local directory that cannot take the file: full, read-only or not writable. Never retried; `directory`
    is the one at fault. What was already received stays where it was for the next run."""

    def __init__(self, message: str, *, directory):
        self.directory = str(directory)
        super().__init__(message)


class DiskFullError(StorageError):
    """No space left (ENOSPC) or quota exceeded (EDQUOT) while writing under `directory`."""


class NotWritableError(StorageError):
    """`directory` is read-only (EROFS) or not writable by this user (EACCES, EPERM)."""
