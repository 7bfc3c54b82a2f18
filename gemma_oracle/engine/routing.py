"""BatchDecodeMatMul routing as data: which kernel serves each matmul of a decode step at batch size N.

Routes (kernels/): WS (weight-stationary mat-vec, N <= 16, bitwise equal to N = 1), GEMM_N (token on the
grid, any N, bitwise equal to N = 1 and to WS), DECODE_MMQ (int8 tensor-core tile on Q8_1 activations,
kernels/mmq.py: its output depends on the shape only, never on N, but it is not bitwise equal to the float
routes) and DQ_MMA (weights dequantized to fp16 once per tile, fp16 tensor cores with float32 accumulation,
kernels/dq_mma.py: likewise shape-only, bitwise equal to none of the others; its per-weight work does not grow
with N) and PACKED_MMA (the same fp16 tensor-core arithmetic on a copy of the Q4_0 / Q4_K / Q6_K weights repacked at load into
fragment order, kernels/packed_mma.py: bitwise equal to DQ_MMA's shared-memory tiles). The seed's rules (seed-project.md 1.6: MMQ at N >= 5, rows >= 2048, cols % 256 == 0; WS up to 16)
were re-tuned from H100 timings of every matmul shape of the 12B-shaped stand-ins (`python -m
gemma_oracle.harness.perf.route_tuning`, reports/history/2026-11-25-h100-route-tuning-*.md): the numbers live in the tables below.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

WS, GEMM_N, DECODE_MMQ, DQ_MMA, PACKED_MMA = "ws", "gemm_n", "decode_mmq", "dq_mma", "packed_mma"
ROUTES = (WS, GEMM_N, DECODE_MMQ, DQ_MMA, PACKED_MMA)
ALL_TYPES = frozenset({"F32", "F16", "BF16", "Q4_0", "Q5_0", "Q8_0", "Q4_K", "Q5_K", "Q6_K"})


@dataclass(frozen=True)
class Route:
    name: str
    types: frozenset[str]  # capability: the GGML types this route has a kernel for
    min_n: int = 1  # speed rules: smallest N, smallest row count, rows/cols aspect, column multiple, largest
    max_n: int | None = None  # capability: the kernel's largest N (WS: 16)
    min_rows: int = 0  #   row count at which the route pays
    max_rows: int | None = None
    min_aspect: float = 0.0
    col_multiple: int = 1
    why: str = ""
    cap_col_multiple: int = 1  # capability: the kernel needs rows of a multiple of this many values (packed MMA: 64)

    def eligible(self, type_name: str, rows: int, cols: int, n: int, *, rules: str = "all") -> str | None:
        """None when this route can serve the matmul, else the reason it cannot.

        rules: "all" (the table as written), "shape" (no N floor: batch-invariant mode) or "capability" (only what
        the kernel cannot do: a type without a kernel, N beyond max_n; forced modes)."""
        if type_name not in self.types:
            return f"no {self.name} kernel for {type_name}"
        if self.max_n is not None and n > self.max_n:
            return f"N={n} > {self.max_n}"
        if cols % self.cap_col_multiple:
            return f"cols={cols} not a multiple of {self.cap_col_multiple}"
        if rules == "capability":
            return None
        if rules == "all" and n < self.min_n:
            return f"N={n} < {self.min_n}"
        if rows < self.min_rows:
            return f"rows={rows} < {self.min_rows}"
        if self.max_rows is not None and rows > self.max_rows:
            return f"rows={rows} > {self.max_rows}"
        if rows < self.min_aspect * cols:
            return f"rows/cols={rows / cols:.2f} < {self.min_aspect}"
        if cols % self.col_multiple:
            return f"cols={cols} not a multiple of {self.col_multiple}"
        return None


# DECODE_MMQ's types: those with a decode-MMQ tile that passed its GPU tests (kernels/mmq.py, H100 2026-11-25).
MMQ_TYPES: frozenset[str] = frozenset({"Q8_0", "Q4_0", "Q4_K", "Q5_K", "Q6_K"})
# DQ_MMA's types: the same GGUF block decoders (kernels/cuda/mmq_blocks.cuh)
DQ_MMA_TYPES: frozenset[str] = MMQ_TYPES
# PACKED_MMA's types: those kernels/cuda/packed_mma.cu packs (rows of a multiple of 64 values)
PACKED_TYPES: frozenset[str] = frozenset({"Q4_0", "Q4_K", "Q6_K"})
PACKED_ROUTE = Route(PACKED_MMA, PACKED_TYPES, cap_col_multiple=64,
                     why="packed MMA: Q4_0 / Q4_K / Q6_K weights repacked at load into mma fragment order, fp16 tensor "
                         "cores, every N (the same bits at every N)")

# The fast mode ("auto"): tried in order, the first eligible route serves the matmul; GEMM_N accepts everything.
# Packed MMA first: every Q4_0 / Q4_K / Q6_K matrix of a multiple of 64 columns takes it at every N. On an H100 its
# whole step, with the residual-add norm writing its records (gpu_engine PACKED_PRODUCERS), was 1.01x decode-MMQ's at
# N = 1 and 1.36x at N = 32 on the 12B stand-in (reports/history/2026-12-07-s18.md, call 1); with it taken out
# (GEMMA_ORACLE_DISABLE_ROUTES=packed_mma) the table below is decode-MMQ's as tuned before. Each MMQ line is the measured crossover (time of the split-K int8 tile over the best float route, H100, 12B
# shapes, Q4_K_M and Q4_0 stand-ins, reports/history/2026-11-25-h100-route-tuning-bn8-*.md): decode-MMQ's time is
# nearly flat in N and, since K is split by shape (kernels/mmq.py), no longer bound by a long serial K walk; the
# float routes' time grows with N. Only the few-row matrices keep a float route at the smallest N.
ROUTE_TABLE: tuple[Route, ...] = (
    PACKED_ROUTE,
    Route(DECODE_MMQ, MMQ_TYPES, min_n=1, min_rows=2048, col_multiple=256,
          why="2048+-row matrices (every 12B matmul but the global attn_k, the tied lm-head included): the tile "
              "wins from N = 1 (0.40..0.92x the best float route's time)"),
    Route(DECODE_MMQ, MMQ_TYPES, min_n=1, min_aspect=4.0, col_multiple=256,
          why="tall matrices (rows >= 4 cols; no 12B matrix below 2048 rows is): from N = 1, as the 12B's tall "
              "ffn gate/up and lm-head (many row tiles: the tile is never short of thread blocks); it keeps a small "
              "model's single-user path on the kernel its batched steps take"),
    Route(DECODE_MMQ, MMQ_TYPES, min_n=3, min_rows=512, col_multiple=256,
          why="512..2047 rows (the 512-row global attn_k): from N = 3 (0.92..0.98x; 1.09..1.12x at N = 2); smaller "
              "matrices (none in the 12B) were not measured and keep the float routes, bitwise with single-user"),
    Route(WS, ALL_TYPES, max_n=16, max_rows=2048,
          why="up to 16 tokens on <= 2048-row matrices WS beats GEMM-N (0.8..0.98x from N = 3)"),
    Route(GEMM_N, ALL_TYPES, why="any N: one token per grid row, the N = 1 reduction each (faster than WS on "
                                 "3840+-row matrices: WS is 1.3..1.7x slower there from N = 3)"),
)

# batch-invariant mode: the route of a matrix may depend on its shape only, so one choice serves every N. Packed MMA
# first, at every N (its order is fixed by the shape and its K split, kernels/packed_mma.py packed_split). With the
# split-K tile decode-MMQ is the faster route from N = 1 on every >= 2048-row matrix (route tuning above), so the
# seed's shape rule is also the fast choice there: decode-MMQ on rows >= 2048, else WS / GEMM-N (the 512-row global
# attn_k: 1.1..1.4x slower on the tile up to N = 2, faster from 3).
INVARIANT_TABLE: tuple[Route, ...] = (
    PACKED_ROUTE,
    Route(DECODE_MMQ, MMQ_TYPES, min_rows=2048, col_multiple=256,
          why="batch-invariant: decode-MMQ on every >= 2048-row 256-aligned matrix, at every N"),
    Route(WS, ALL_TYPES, max_n=16, why="batch-invariant: the float route, WS up to 16 tokens"),
    Route(GEMM_N, ALL_TYPES, why="batch-invariant: the float route beyond 16 tokens (bitwise equal to WS)"),
)

# Routes a forced mode can take that neither table lists (yet): dequant-MMA, until its crossovers are timed on the GPU
FORCE_ONLY: tuple[Route, ...] = (
    Route(DQ_MMA, DQ_MMA_TYPES, why="forced dequant-MMA: fp16 weights dequantized once per tile, fp16 tensor cores"),
    PACKED_ROUTE,
)

# The packed modes of the sessions before packed MMA led both tables (reports/history/2026-12-07-s17.md): now the
# same tables, kept as names so earlier commands and recorded runs still read.
PACKED_TABLES: dict[str, tuple[str, tuple[Route, ...]]] = {
    "packed": ("auto", ROUTE_TABLE),
    "packed-invariant": ("batch-invariant", INVARIANT_TABLE),
}

# Modes a user A/B-tests routes with (CLI --route / env GEMMA_ORACLE_ROUTE):
#   auto             ROUTE_TABLE (the fast mode): packed MMA, else decode-MMQ or the float routes by N and shape
#   batch-invariant  INVARIANT_TABLE: packed MMA at every N; decode-MMQ judged on the shape alone: each matrix takes it at every N
#                    (N = 1 included) or never; the float routes it falls back to (WS, GEMM-N beyond 16) share one
#                    reduction order, so every sequence's logits are bitwise independent of the batch.
#   packed           the same as auto (PACKED_TABLES)
#   packed-invariant the same as batch-invariant
#   ws | gemm_n | decode_mmq | dq_mma | packed_mma   force one route wherever its kernel can serve the matmul (type, N capacity), the
#                    speed rules ignored; GEMM_N where it cannot. All four are batch-invariant too (each kernel's
#                    order is fixed by the shape); ws and gemm_n are the float path (no Q8_1 activations), dq_mma
#                    reads fp16 activation rows (kernels/f16_rows.py)
#   auto@K           the auto mode's routes for a K-row decode step, whatever the step's own row count (prefill keeps
#                    its own): the single-user twin of an auto-mode batch of K. Every kernel's order is fixed by the
#                    shape and only the route CHOICE depends on N, so an auto-mode step of K rows must be bitwise
#                    equal, row by row, to single-user decode on auto@K (gemma_oracle.oracles: the pinned contract).
MODES = ("auto", "batch-invariant", "packed", "packed-invariant", WS, GEMM_N, DECODE_MMQ, DQ_MMA, PACKED_MMA)
PIN = "@"
ENV_MODE = "GEMMA_ORACLE_ROUTE"
ENV_DISABLE = "GEMMA_ORACLE_DISABLE_ROUTES"  # comma-separated route names taken out of the table


def routes_vary_with_n(mode: str) -> bool:
    """Whether a mode may route one matrix differently at different N ("auto"; "packed", whose matrices without a
    packed copy keep the auto routes): such a mode is judged by the calibrated policy, every other one bitwise."""
    return mode in ("auto", "packed")


def uses_packed(mode: str, disabled: frozenset[str] = frozenset()) -> bool:
    """Whether a mode may route a matrix to packed MMA (the engine then makes the packed copies, 4.5-7 bits a weight
    beside the GGUF rows): every table mode and the forced packed_mma, unless packed MMA is disabled."""
    return PACKED_MMA not in disabled and split_mode(mode)[0] in ("auto", "batch-invariant", *PACKED_TABLES,
                                                                   PACKED_MMA)


def packable(type_name: str, rows: int, cols: int) -> bool:
    """Whether packed MMA can serve a matrix of this type and shape (the engine packs exactly these)."""
    return PACKED_ROUTE.eligible(type_name, rows, cols, 1) is None


def pinned_mode(n: int) -> str:
    """The mode serving every decode step on the auto mode's routes for ``n`` rows ("auto@n")."""
    if int(n) < 1:
        raise ValueError(f"a pinned route mode needs N >= 1, got {n}")
    return f"auto{PIN}{int(n)}"


def split_mode(mode: str) -> tuple[str, int | None]:
    """(table mode, pinned N or None): "auto@5" -> ("auto", 5), "auto" -> ("auto", None). A mode outside MODES and
    not auto@K (K >= 1) raises ValueError naming what is expected."""
    base, sep, k = mode.partition(PIN)
    if not sep and base in MODES:
        return base, None
    if sep and base == "auto" and k.isdigit() and int(k) >= 1:
        return base, int(k)
    raise ValueError(f"route mode {mode!r}: expected one of {MODES} or auto{PIN}K (K >= 1: the auto routes of a "
                     f"K-row step)")


def mode_from_env(default: str = "batch-invariant") -> str:
    mode = os.environ.get(ENV_MODE, default)
    try:
        split_mode(mode)
    except ValueError as e:
        raise ValueError(f"{ENV_MODE}={mode!r}: {e}") from None
    return mode


def checked_disabled(names, source: str = ENV_DISABLE) -> frozenset[str]:
    """The route names to take out of the tables; ValueError naming `source` and any unknown name."""
    names = frozenset(names)
    unknown = names - set(ROUTES)
    if unknown:
        raise ValueError(f"{source}: unknown route(s) {sorted(unknown)}; expected some of {ROUTES}")
    return names


def disabled_from_env() -> frozenset[str]:
    return checked_disabled(n.strip() for n in os.environ.get(ENV_DISABLE, "").split(",") if n.strip())


def _candidates(mode: str, disabled: frozenset[str], table: tuple[Route, ...] | None) -> list[Route]:
    if mode not in MODES:
        raise ValueError(f"route mode {mode!r}: expected one of {MODES}")
    if table is None:
        table = PACKED_TABLES[mode][1] if mode in PACKED_TABLES else INVARIANT_TABLE if mode == "batch-invariant" \
            else ROUTE_TABLE
    routes = [r for r in table if r.name not in disabled]
    if mode not in ("auto", "batch-invariant", *PACKED_TABLES):
        forced = ([r for r in routes if r.name == mode]
                  + [r for r in FORCE_ONLY if r.name == mode and r.name not in disabled])[:1]
        routes = forced + [Route(GEMM_N, ALL_TYPES, why="forced route cannot serve this matmul")]
        if GEMM_N in disabled and mode != GEMM_N:
            routes = forced
    return routes


def explain_route(type_name: str, rows: int, cols: int, n: int, *, mode: str = "auto",
                  disabled: frozenset[str] = frozenset(), table: tuple[Route, ...] | None = None) -> tuple[str, str]:
    """(route name, reason) for one matmul; the reason lists why earlier routes were passed over. In a pinned
    mode (auto@K) the route is chosen as for K rows; the caller applies it to decode steps only.

    table: the table to use (default: INVARIANT_TABLE in batch-invariant mode, ROUTE_TABLE otherwise)."""
    mode, pin = split_mode(mode)
    rows_served, n = n, (n if pin is None else pin)
    skipped = []
    # batch-invariant: decode-MMQ is judged on the shape alone, so a matrix takes it at every N or never
    table_mode = PACKED_TABLES[mode][0] if mode in PACKED_TABLES else mode
    rules = {"auto": "all", "batch-invariant": "shape"}.get(table_mode, "capability")
    for route in _candidates(mode, disabled, table):
        route_rules = rules if route.name == DECODE_MMQ or rules == "capability" else "all"
        why_not = route.eligible(type_name, rows, cols, n, rules=route_rules)
        if why_not is None:
            if route.max_n is not None and rows_served > route.max_n:  # auto@K for K <= max_n, run on more rows
                raise ValueError(f"route mode auto{PIN}{pin}: a step of {rows_served} rows cannot take {route.name} "
                                 f"(at most {route.max_n} rows); a pinned mode is for the single-user twin")
            prefix = f"{'; '.join(skipped)}; " if skipped else ""
            return route.name, f"{prefix}{route.name}: {route.why}"
        skipped.append(f"not {route.name} ({why_not})")
    raise ValueError(f"no route serves {type_name} {rows}x{cols} at N={n} in mode {mode!r} with {sorted(disabled)} disabled")


def route_for(type_name: str, rows: int, cols: int, n: int, **kwargs) -> str:
    return explain_route(type_name, rows, cols, n, **kwargs)[0]
