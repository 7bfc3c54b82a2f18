"""The pytest session's oracle recorder: tests hand it their golden results, it writes them to the store.

The plugin (harness/pytest_plugin.py) only wires hooks to this class. Under pytest-xdist the controller
picks the run id and hands it to every worker (``workerinput``); each worker writes its own
``oracle.<worker>.parquet`` when it finishes, and the controller, which finishes after every worker,
writes meta.json, so the run is listed only once all parts are in.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from .records import NO_ROUTE, OracleRecord, oracle_records
from .run_meta import collect_meta, utc_now

WORKERINPUT_KEY = "gemma_oracle_run_id"


def new_pytest_run_id() -> str:
    # pid: two sessions started in the same second (two checkouts, two CI jobs) get different ids
    return f"pytest-{utc_now():%Y-%m-%d-%H%M%S}-{os.getpid()}"


class SessionRecorder:
    def __init__(self, root: Path | None, run_id: str, *, worker: str | None = None, backend: str = "numpy64"):
        """``root`` None: record in memory only (--no-results). ``worker``: the xdist worker id, None on
        the controller or in a session without xdist."""
        self.root, self.run_id, self.worker, self.backend = root, run_id, worker, backend
        self.records: list[OracleRecord] = []
        self.started = utc_now()
        self._t0 = time.monotonic()

    @property
    def run_dir(self) -> Path | None:
        return None if self.root is None else self.root / self.run_id

    def record(self, result, *, test_id: str, fixture: str, backend: str, route: str = NO_ROUTE,
               suite: str = "pytest", gpu_index: int | None = None, routes_taken: str = "") -> list[OracleRecord]:
        """Add the rows of one GoldenResult; returns them (a test may look at what it recorded)."""
        rows = oracle_records(result, test_id=test_id, suite=suite, fixture=fixture, backend=backend, route=route,
                              gpu_index=gpu_index, routes_taken=routes_taken)
        self.records += rows
        return rows

    def finish(self) -> Path | None:
        """Write this process's part; on the controller (or without xdist) also meta.json, if any part exists."""
        if self.run_dir is None or not (self.records or self.run_dir.is_dir()):
            return None
        from .store import META_FILE, RunWriter  # pandas and pyarrow: only when there is something to write

        part = self.worker or "main"
        if self.records:
            RunWriter(self.run_dir).write_table("oracle", self.records, part=part)
        if self.worker is not None or not self.run_dir.is_dir():
            return None
        writer = RunWriter(self.run_dir)
        if not writer.has_parts() or (self.run_dir / META_FILE).exists():
            return None
        meta = collect_meta(self.run_id, "pytest", self.backend, created=self.started,
                            duration_s=time.monotonic() - self._t0)
        return writer.write_meta(meta)
