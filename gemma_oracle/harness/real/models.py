"""The model the real-model suites run on (pytest `--model`): a catalog name or a GGUF path, resolved to a
local file, with the reason a test must skip when there is none and a label that marks synthetic results.

`--model real12b` (the default) finds the verified real file or skips with the command that fetches it;
`--model shape12b` / `shape12b-q4_0` build the MMQ issue's 12B-shaped stand-ins through
gemma_oracle.harness.fixtures.cache.fixture_path (catalog `preset`, `variant`), and everything they report says SYNTHETIC;
`--model /path/to/file.gguf` runs on any file (no layout expectations, labelled as a local file).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from gemma_oracle.harness.real import catalog as _catalog
from gemma_oracle.harness.real import files as real_files
from gemma_oracle.harness.real.catalog import CatalogEntry, Layout
from gemma_oracle.harness.real.errors import UnknownFixtureError

DEFAULT_MODEL = "real12b"


@dataclass(frozen=True)
class ResolvedModel:
    spec: str  # what --model said
    path: Path
    entry: CatalogEntry | None  # None for a bare path
    verified: bool

    @property
    def synthetic(self) -> bool:
        return self.entry is not None and self.entry.synthetic

    @property
    def layout(self) -> Layout | None:
        return self.entry.layout if self.entry is not None else None

    @property
    def label(self) -> str:
        return label(self.spec)

    @property
    def description(self) -> str:
        return describe(self.spec) + f" -> {self.path}" + ("" if self.verified else " (sha256 not verified)")


def _entry(spec: str) -> CatalogEntry | None:
    """The catalog entry of `spec`, None for a path to a file; UnknownFixtureError for neither."""
    entries = _catalog.catalog()
    if spec in entries:
        return entries[spec]
    if Path(spec).is_file():
        return None
    raise UnknownFixtureError(f"--model {spec!r}: neither a catalog name ({', '.join(sorted(entries))}) "
                              "nor an existing GGUF file")


def label(spec: str) -> str:
    """Test-id label: the catalog name, NAME-SYNTHETIC for a stand-in, the file name for a path."""
    entry = _entry(spec)
    if entry is None:
        return f"file-{Path(spec).name}"
    return f"{entry.name}-SYNTHETIC" if entry.synthetic else entry.name


def describe(spec: str) -> str:
    """One line for report headers and summaries."""
    entry = _entry(spec)
    if entry is None:
        return f"{spec}: a local GGUF file (not in the catalog, no layout expectations)"
    if entry.synthetic:
        return (f"{entry.name}: SYNTHETIC stand-in for {entry.stands_in_for} (preset {entry.preset}, {entry.variant}; "
                "random weights): results are not from the real model")
    return f"{entry.name}: {entry.origin}"


def absent_reason(spec: str) -> str | None:
    """Why tests on `spec` must skip on this machine (cheap: nothing hashed, built or downloaded), or None."""
    entry = _entry(spec)
    return None if entry is None else real_files.absent_reason(entry)


@functools.lru_cache(maxsize=None)
def resolve(spec: str) -> ResolvedModel:
    """The verified local file of `spec` (a stand-in is built here on first use). Raises
    FixtureNotPresentError when absent, ChecksumMismatchError when a copy is corrupt."""
    entry = _entry(spec)
    if entry is None:
        return ResolvedModel(spec, Path(spec), None, False)
    path, verified = real_files.local_path(entry, real_files.Options(progress=False))
    return ResolvedModel(spec, path, entry, verified)
