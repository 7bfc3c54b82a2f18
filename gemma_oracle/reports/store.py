"""The result store: one directory per run, one parquet file per (table, part), meta.json written last.

Layout of ``<root>/<run_id>/``::

    oracle.<part>.parquet      OracleRecord rows   (part: "main", or the pytest-xdist worker id "gw0", ...)
    bench.<part>.parquet       BenchRecord rows
    op_profile.<part>.parquet  OpProfileRecord rows
    routes.<part>.parquet      RouteRecord rows
    meta.json                  RunMeta; its presence marks the run finished

Every file is written to a temporary name and renamed into place, so a reader never sees half a file; a run
without meta.json (killed, or still running) is never listed, so a later run never compares against it.
Parallel writers (xdist workers) each write their own part; the loader concatenates the parts.
"""
from __future__ import annotations

import dataclasses

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from .errors import StoreError
from .records import TABLES, arrow_table, columns
from .run_meta import RunMeta

META_FILE = "meta.json"
FILE_MODE = 0o644  # mkstemp creates 0600; stored runs are meant to be read by others (CI artifacts, a web server)


def atomic_write(path: Path, write) -> Path:
    """write(tmp_path) fills a temporary file beside `path`, which is then renamed into place: a reader never
    sees a half-written file, and a failed write leaves nothing behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def create_run_dir(root: Path, stem: str) -> Path:
    """A new, empty run directory named ``stem`` (``stem-2``, ``stem-3``, ... if taken): mkdir is atomic,
    so two runs started in the same second still get different directories."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(1, 1000):
        path = root / (stem if i == 1 else f"{stem}-{i}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise StoreError(root, f"no free run directory name for {stem!r} after 999 tries")


class RunWriter:
    """Writes one run's tables and metadata into ``run_dir`` (which may already hold other writers' parts)."""

    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)

    def write_table(self, table: str, records: Sequence, part: str = "main") -> Path | None:
        """Write ``records`` as ``<table>.<part>.parquet``; nothing (None) when there are none."""
        import pyarrow.parquet as pq

        if table not in TABLES:
            raise ValueError(f"unknown table {table!r}: expected one of {sorted(TABLES)}")
        if not records:
            return None
        return atomic_write(self.dir / f"{table}.{part}.parquet",
                            lambda tmp: pq.write_table(arrow_table(records, TABLES[table]), tmp))

    def write_meta(self, meta: RunMeta) -> Path:
        return atomic_write_bytes(self.dir / META_FILE, (meta.to_json() + "\n").encode())

    def write_file(self, name: str, data: str | bytes) -> Path:
        return atomic_write_bytes(self.dir / name, data.encode() if isinstance(data, str) else data)

    def has_parts(self) -> bool:
        return any(self.dir.glob("*.parquet"))


@dataclass
class StoredRun:
    dir: Path
    meta: RunMeta
    tables: dict[str, pd.DataFrame]

    @property
    def run_id(self) -> str:
        return self.meta.run_id

    def __getitem__(self, table: str) -> pd.DataFrame:
        return self.tables[table]


def read_meta(run_dir: Path) -> RunMeta:
    path = Path(run_dir) / META_FILE
    if not path.is_file():
        raise StoreError(path, "missing: a finished run directory holds meta.json (this run did not finish, "
                               "or the path is not a run directory)")
    return RunMeta.from_json(path.read_text(), path)


def _read_table(run_dir: Path, table: str) -> pd.DataFrame:
    import pyarrow.parquet as pq

    expected = columns(TABLES[table])
    frames = []
    for path in sorted(run_dir.glob(f"{table}.*.parquet")):
        try:
            df = pq.read_table(path).to_pandas()
        except Exception as exc:  # pyarrow raises several types for a damaged file
            raise StoreError(path, f"not a readable parquet file ({type(exc).__name__}: {exc})") from None
        # a column added to the record type later, with a default, reads back from older runs as that default
        for f in dataclasses.fields(TABLES[table]):
            if f.name not in df.columns and f.default is not dataclasses.MISSING:
                df[f.name] = f.default
        missing = [c for c in expected if c not in df.columns]
        if missing:
            raise StoreError(path, f"columns {missing} missing; a {table} table has {expected}", key=missing[0])
        frames.append(df[expected])
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in expected})
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def load_run(run_dir: os.PathLike | str) -> StoredRun:
    """A finished run: its metadata and every table (parts concatenated; an absent table is empty)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise StoreError(run_dir, "not a directory: expected a run directory holding meta.json and *.parquet")
    meta = read_meta(run_dir)
    return StoredRun(run_dir, meta, {name: _read_table(run_dir, name) for name in TABLES})


def list_runs(root: os.PathLike | str) -> list[Path]:
    """Finished runs under ``root``, oldest first (by creation time, then name)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for d in root.iterdir():
        if d.is_dir() and not d.name.startswith(".") and (d / META_FILE).is_file():
            found.append((read_meta(d).created, d.name, d))
    return [d for *_, d in sorted(found)]
