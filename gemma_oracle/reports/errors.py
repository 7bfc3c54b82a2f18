"""Typed errors of the result store and the reports: each names the file and the key at fault and what
was expected, so a truncated run directory is told apart from a run written by another version."""
from __future__ import annotations

import os

from gemma_oracle.engine.errors import GemmaOracleError


class StoreError(GemmaOracleError):
    """A run directory or one of its files cannot be used; ``path`` is the file, ``key`` the key or column."""

    def __init__(self, path: os.PathLike | str, message: str, *, key: str | None = None):
        self.path = str(path)
        self.key = key
        where = self.path + (f" [{key}]" if key else "")
        super().__init__(f"{where}: {message}")
