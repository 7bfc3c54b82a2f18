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
    """Bytes whose sha256 differs from the expected one; the bad copy has been removed where we own it."""


class MissingPackageError(FixtureError):
    """A fixture shipped in a PyPI package that is not installed."""
