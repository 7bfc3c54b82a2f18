"""Progress on stderr for the long-running commands (oracle, nightly, bench, fixtures build).

On a terminal a tqdm bar; anywhere else (a CI log, a file) one plain line every ``PERIOD_S`` seconds and one when a
stage ends, never ``\\r`` counters; with ``--no-progress`` nothing. Lines printed while a bar is shown go through
``write`` (``tqdm.write``), so they never land inside the bar.
"""
from __future__ import annotations

import sys
import time

PERIOD_S = 10.0  # seconds between two progress lines when stderr is not a terminal


def progress_mode(enabled: bool | str) -> str:
    """"bar" on a terminal, "lines" elsewhere, "off" when disabled; a mode string is passed through."""
    if isinstance(enabled, str):
        return enabled
    if not enabled:
        return "off"
    return "bar" if getattr(sys.stderr, "isatty", lambda: False)() else "lines"


def write(line: str) -> None:
    """One line on stderr, above a progress bar if one is shown."""
    from tqdm import tqdm

    tqdm.write(line, file=sys.stderr)
    sys.stderr.flush()


class Progress:
    """A tqdm bar (mode "bar"), periodic one-line progress (mode "lines"), or nothing (mode "off")."""

    def __init__(self, total: int, desc: str, enabled: bool | str = True, *, unit: str = "case",
                 period_s: float = PERIOD_S):
        from tqdm import tqdm

        self.mode = progress_mode(enabled)
        self.total, self.desc, self.unit, self.period_s = total, desc, unit, period_s
        self.done, self.postfix = 0, ""
        self.t0 = self.last = time.monotonic()
        self.bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=self.mode != "bar", leave=False)

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text
        self.bar.set_postfix_str(text)

    def update(self, n: int = 1) -> None:
        self.done += n
        self.bar.update(n)
        now = time.monotonic()
        if self.mode == "lines" and (now - self.last >= self.period_s or self.done >= self.total):
            self.last = now
            at = f" ({self.postfix})" if self.postfix and self.done < self.total else ""
            print(f"{self.desc}: {self.done}/{self.total} {self.unit}s{at}, {now - self.t0:.0f} s", file=sys.stderr,
                  flush=True)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
