"""BatchDecodeMatMul routing as data: which kernel serves each matmul of a decode step at batch size N.

Routes (kernels/): WS (weight-stationary mat-vec, N <= 16, bitwise equal to N = 1), GEMM_N (token on the
grid, any N, bitwise equal to N = 1) and DECODE_MMQ (int8 tensor-core tile on Q8_1 activations: faster at
larger N, argmax-stable rather than bitwise). The seed engine's eligibility numbers (seed-project.md §1.6:
MMQ at N >= 5, rows >= 2048, cols % 256 == 0, a tile for the type; WS capacities up to 16) appear here once,
in ROUTE_TABLE; they are to be re-tuned from H100 measurements (issue 6).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

WS, GEMM_N, DECODE_MMQ = "ws", "gemm_n", "decode_mmq"
ROUTES = (WS, GEMM_N, DECODE_MMQ)
ALL_TYPES = frozenset({"F32", "F16", "BF16", "Q4_0", "Q5_0", "Q8_0", "Q4_K", "Q5_K", "Q6_K"})


@dataclass(frozen=True)
class Route:
    name: str
    types: frozenset[str]
    min_n: int = 1
    max_n: int | None = None
    min_rows: int = 0
    col_multiple: int = 1
    why: str = ""

    def eligible(self, type_name: str, rows: int, cols: int, n: int) -> str | None:
        """None when this route can serve the matmul, else the reason it cannot."""
        if type_name not in self.types:
            return f"no {self.name} kernel for {type_name}"
        if n < self.min_n:
            return f"N={n} < {self.min_n}"
        if self.max_n is not None and n > self.max_n:
            return f"N={n} > {self.max_n}"
        if rows < self.min_rows:
            return f"rows={rows} < {self.min_rows}"
        if cols % self.col_multiple:
            return f"cols={cols} not a multiple of {self.col_multiple}"
        return None


# Tried in order; the first eligible route serves the matmul. GEMM_N accepts everything, so a route is always found.
# DECODE_MMQ's types: those with a decode-MMQ tile that passed its GPU tests (kernels/mmq.py, H100 2026-11-24).
MMQ_TYPES: frozenset[str] = frozenset({"Q8_0", "Q4_0", "Q4_K"})
ROUTE_TABLE: tuple[Route, ...] = (
    Route(DECODE_MMQ, MMQ_TYPES, min_n=5, min_rows=2048, col_multiple=256,
          why="seed rule (#201/#206 on a 4070 Ti): the int8 tile wins from N = 5 on tall, 256-aligned matrices"),
    Route(WS, ALL_TYPES, max_n=16, why="weights read once per step for up to 16 tokens (capacities 1, 2, 4, 8, 16)"),
    Route(GEMM_N, ALL_TYPES, why="any N: one token per grid row, the N = 1 reduction each"),
)

# Modes a user A/B-tests routes with (CLI --route / env GEMMA_ORACLE_ROUTE):
#   auto             the table above
#   batch-invariant  WS/GEMM-N only: every sequence's logits bitwise independent of the batch
#   ws | gemm_n | decode_mmq   force one route wherever it is eligible (GEMM_N where it is not)
MODES = ("auto", "batch-invariant", WS, GEMM_N, DECODE_MMQ)
ENV_MODE = "GEMMA_ORACLE_ROUTE"
ENV_DISABLE = "GEMMA_ORACLE_DISABLE_ROUTES"  # comma-separated route names taken out of the table


def mode_from_env(default: str = "batch-invariant") -> str:
    mode = os.environ.get(ENV_MODE, default)
    if mode not in MODES:
        raise ValueError(f"{ENV_MODE}={mode!r}: expected one of {MODES}")
    return mode


def disabled_from_env() -> frozenset[str]:
    names = frozenset(n.strip() for n in os.environ.get(ENV_DISABLE, "").split(",") if n.strip())
    unknown = names - set(ROUTES)
    if unknown:
        raise ValueError(f"{ENV_DISABLE}: unknown route(s) {sorted(unknown)}; expected some of {ROUTES}")
    return names


def _candidates(mode: str, disabled: frozenset[str], table: tuple[Route, ...]) -> list[Route]:
    if mode not in MODES:
        raise ValueError(f"route mode {mode!r}: expected one of {MODES}")
    routes = [r for r in table if r.name not in disabled]
    if mode == "batch-invariant":
        routes = [r for r in routes if r.name != DECODE_MMQ]
    elif mode != "auto":
        routes = [r for r in routes if r.name == mode] + [r for r in routes if r.name == GEMM_N]
    return routes


def explain_route(type_name: str, rows: int, cols: int, n: int, *, mode: str = "auto",
                  disabled: frozenset[str] = frozenset(), table: tuple[Route, ...] = ROUTE_TABLE) -> tuple[str, str]:
    """(route name, reason) for one matmul; the reason lists why earlier routes were passed over."""
    skipped = []
    for route in _candidates(mode, disabled, table):
        why_not = route.eligible(type_name, rows, cols, n)
        if why_not is None:
            prefix = f"{'; '.join(skipped)}; " if skipped else ""
            return route.name, f"{prefix}{route.name}: {route.why}"
        skipped.append(f"not {route.name} ({why_not})")
    raise ValueError(f"no route serves {type_name} {rows}x{cols} at N={n} in mode {mode!r} with {sorted(disabled)} disabled")


def route_for(type_name: str, rows: int, cols: int, n: int, **kwargs) -> str:
    return explain_route(type_name, rows, cols, n, **kwargs)[0]
