"""Launcher of kernels/cuda/dq_mma.cu: dequant-MMA, y[n, r] = sum_k W[r, k] * x[n, k] on fp16 tensor cores.

W is raw GGUF bytes [rows, row_bytes] of Q8_0, Q4_0, Q4_K, Q5_K or Q6_K, dequantized to fp16 once per tile (in
shared memory, or straight into a lane's mma registers: the two tile kinds of TILES); x is taken as float32 [N, K]
(converted here with kernels/f16_rows.py) or as the pair (x16, inv) that f16_rows made (one conversion for every
matrix that reads the same input). y is float32 [N, rows].

Numerics (the .cu header states them): fp16 weights (one rounding of d * code - m) and fp16 activations (one
rounding after an exact power-of-two row scale), float32 accumulation inside the tensor cores over 16-value steps
in increasing K, K split into decode-MMQ's shape-only slices (kernels/mmq.py split_k_slices) whose partial sums are
added in slice order. Every tile of a kind gives the same bits and a token's output does not depend on the batch;
it is not bitwise equal to WS or decode-MMQ (other operands, other order).

`plan_dq_mma` validates on the host without a GPU; `dq_mma_matvec` launches.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gemma_oracle.kernels._compile import load_module
from gemma_oracle.kernels.dequant import UNIT, check_array, check_weight_rows, require_device_arrays
from gemma_oracle.kernels.mmq import COUNTER_SLOTS, split_k_outputs, split_k_slices

MODULE = "dq_mma"
DQ_MMA_TYPES = ("Q8_0", "Q4_0", "Q4_K", "Q5_K", "Q6_K")


@dataclass(frozen=True)
class Tile:
    """One compiled tile of dq_mma.cu.

    kind "smem": `warps` warps of `mt` m16 tiles each (bm = 16 * mt * warps rows) x bn tokens, weights decoded to fp16
    in shared memory kb 32-value blocks a stage, their L2 prefetch `pf` stages ahead (0: none).
    kind "direct": `warps` warps of 16 * mt rows x bn tokens, each lane decoding its share of every block straight into
    its mma registers from the bytes of a group (4 blocks of Q8_0 / Q4_0, a K-quant super-block) loaded at once;
    pipeline depth `p` 2: the next group's bytes and the next block's activations are loaded before this one's mmas.
    The two kinds assign values to mma slots differently, so they agree to rounding, not bitwise; within a kind every
    tile gives the same bits."""
    warps: int
    mt: int
    bn: int
    kb: int
    pf: int = 0
    kind: str = "smem"
    p: int = 0

    @property
    def bm(self) -> int:
        return 16 * self.mt * self.warps

    @property
    def name(self) -> str:
        if self.kind == "direct":
            return f"direct_w{self.warps}_m{self.mt}_bn{self.bn}_p{self.p}"
        return f"w{self.warps}_m{self.mt}_bn{self.bn}_kb{self.kb}_pf{self.pf}"


def direct_tile(warps: int, mt: int, bn: int, p: int) -> Tile:
    return Tile(warps, mt, bn, 0, 0, "direct", p)


# DQ_TILES and DQ_DIRECT_TILES in dq_mma.cu
TILES = {t.name: t for t in (Tile(4, 1, 8, 4), Tile(4, 1, 16, 4), Tile(4, 1, 32, 4), Tile(4, 2, 16, 4),
                              Tile(4, 2, 32, 4), Tile(4, 1, 16, 8), Tile(8, 1, 32, 4), Tile(4, 1, 8, 4, 1),
                              Tile(4, 1, 16, 4, 1), Tile(4, 1, 32, 4, 1), Tile(4, 1, 32, 4, 2),
                              direct_tile(4, 1, 8, 1), direct_tile(4, 2, 8, 1), direct_tile(4, 2, 16, 1),
                              direct_tile(4, 1, 32, 1), direct_tile(4, 4, 32, 1), direct_tile(4, 1, 8, 2),
                              direct_tile(4, 2, 8, 2), direct_tile(4, 1, 16, 2), direct_tile(4, 2, 16, 2),
                              direct_tile(4, 1, 32, 2))}
MAX_N = 65535 * 8

# Which tile a launch uses (first match: min N, tile). Within a kind every tile gives the same bits, so this is a speed
# choice only; all rules name one kind, so a token's bits do not depend on N. The fastest direct tiles of the
# twelfth session's route tuning (H200, reports/history/2026-12-06-h200-route-tuning-dq-mma-direct-p2-s12-shape12b.md,
# Q4_K 15360 x 3840: 25.3 / 31.1 / 38.8 / 63.7 us at N = 1 / 8 / 16 / 32): the pipelined P = 2 tiles, chosen before
# that run, were slower than their P = 1 twins in every geometry.
TILE_RULES: tuple[tuple[int, str], ...] = (
    (17, "direct_w4_m1_bn32_p1"),
    (9, "direct_w4_m2_bn16_p1"),
    (1, "direct_w4_m2_bn8_p1"),
)


def choose_tile(n: int, rules=TILE_RULES) -> Tile:
    for min_n, name in rules:
        if n >= min_n:
            return TILES[name]
    raise ValueError(f"no dequant-MMA tile rule matches N={n}")


@dataclass(frozen=True)
class DqMmaLaunch:
    entry: str
    tile: Tile
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    rows: int
    row_bytes: int
    units: int
    n: int
    convert: bool  # x is float32 and is converted with f16_rows first
    slices: int


def plan_dq_mma(w_raw, type_name: str, n_cols: int, x, *, out=None, tile: str | None = None,
                slices: int | None = None) -> DqMmaLaunch:
    """Validate the arguments of `dq_mma_matvec` on the host. x: float32 [N, K], or (x16 uint16 [N, K], inv float32
    [N]) from f16_rows."""
    if type_name not in DQ_MMA_TYPES:
        raise ValueError(f"type_name: dequant-MMA supports {list(DQ_MMA_TYPES)}, got {type_name!r}")
    rows, rb = check_weight_rows(w_raw, type_name, n_cols)
    units = int(n_cols) // UNIT
    if isinstance(x, tuple):
        if len(x) != 2:
            raise ValueError(f"x: expected float32 [N, {n_cols}] or the pair (x16, inv) from f16_rows, got a tuple "
                             f"of {len(x)}")
        x16, inv = x
        check_array("x[0] (x16)", x16, dtype=np.uint16, ndim=2, align=16)
        n = int(x16.shape[0])
        check_array("x[1] (inv)", inv, dtype=np.float32, ndim=1, shape=(n,))
        convert, k = False, int(x16.shape[1])
    else:
        if getattr(x, "dtype", None) is None:
            raise ValueError(f"x: expected an array, got {type(x).__name__}")
        check_array("x", x, dtype=np.float32, ndim=2)
        n, k, convert = int(x.shape[0]), int(x.shape[1]), True
    if k != int(n_cols):
        raise ValueError(f"x: expected {n_cols} columns (n_cols), got {k}")
    if not 1 <= n <= MAX_N:
        raise ValueError(f"x: need 1 <= N <= {MAX_N} tokens (rows), got {n}")
    if out is not None:
        check_array("out", out, dtype=np.float32, ndim=2, shape=(n, rows), align=4)
    if tile is not None and tile not in TILES:
        raise ValueError(f"tile: expected one of {sorted(TILES)}, got {tile!r}")
    if slices is not None and not (isinstance(slices, int) and 1 <= slices <= units):
        raise ValueError(f"slices: expected an int in 1..{units} (K has {units} blocks), got {slices!r}")
    chosen = TILES[tile] if tile is not None else choose_tile(n)
    if n > 65535 * chosen.bn:
        raise ValueError(f"x: N={n} tokens need more than 65535 token tiles of {chosen.bn}")
    k_slices = split_k_slices(rows, units) if slices is None else slices
    grid = (-(-rows // chosen.bm), -(-n // chosen.bn), k_slices)
    if k_slices > 1 and grid[0] * grid[1] > COUNTER_SLOTS:
        raise ValueError(f"x: N={n} tokens x {rows} rows make {grid[0] * grid[1]} tiles, more than the "
                         f"{COUNTER_SLOTS} split-K counters")
    return DqMmaLaunch(f"dq_mma_{type_name.lower()}_{chosen.name}", chosen, grid, (32 * chosen.warps, 1, 1), rows, rb,
                       units, n, convert, k_slices)


def dq_mma_matvec(w_raw, type_name: str, n_cols: int, x, *, out=None, tile: str | None = None,
                  slices: int | None = None):
    """y [N, rows] float32 = x @ W.T with fp16 operands and float32 accumulation (see module).

    x: float32 [N, K] or (x16, inv) from kernels/f16_rows.py. out: optional float32 [N, rows] to write into.
    tile: force one of TILES (tests run every one; the same bits); slices: force the K split (tuning; other bits)."""
    from gemma_oracle.kernels.f16_rows import f16_rows

    plan = plan_dq_mma(w_raw, type_name, n_cols, x, out=out, tile=tile, slices=slices)
    require_device_arrays(w_raw=w_raw, out=out, **({"x": x} if plan.convert else {"x16": x[0], "inv": x[1]}))
    x16, inv = f16_rows(x) if plan.convert else x
    y, part, counters = split_k_outputs(plan.n, plan.rows, plan.slices, out)
    load_module(MODULE).get_function(plan.entry)(
        plan.grid, plan.block, (w_raw, np.int64(plan.row_bytes), np.int32(plan.rows), np.int32(plan.units), x16, inv,
                                np.int32(plan.n), y, np.int32(plan.slices), part, counters))
    return y
