"""Launcher of kernels/cuda/mmq.cu: decode-MMQ, y[n, r] = sum_k W[r, k] * x[n, k] on int8 tensor cores.

W is raw GGUF bytes [rows, row_bytes] of Q8_0, Q4_0, Q4_K, Q5_K or Q6_K (MMQ_TYPES; see kernels/dequant.py for the
buffer rules): the kernels read the GGUF blocks as they are, so no repack is needed at load time, and a tied lm-head
(token_embd, Q6_K in Q4_K_M files) takes this path like any other matrix.
The activations are taken in either form (the dtype decides):
  * float32 [N, K] (K = n_cols, C-contiguous): quantized here to Q8_1 with kernels/quantize_q8_1.py (one extra
    launch into a temporary), then multiplied;
  * uint8 [N, K / 32 * 36] (C-contiguous, 4-byte aligned): Q8_1 blocks already made by quantize_q8_1, used as is
    (lets a caller quantize one activation once for several weight matrices).
y is float32 [N, rows].

Numerics (the .cu header has the exact reduction order): per 32-value block the int8 code dot is exact (int32
mma), it is scaled by d_w * d_x in float32 and summed over blocks in increasing order in float32 (Q4_K also
subtracts m_w * d_x * the exact integer sum of the block's Q8_1 codes, per 32-value sub-block; Q6_K scales and adds
its two 16-value halves one after the other). The result is
deterministic and independent of N and of the batch composition, but it is NOT bitwise equal to the WS mat-vec
(kernels/matvec.py): quantizing x to Q8_1 is an approximation (NMSE ~1e-5 for uniform activations, within
llama.cpp's MUL_MAT bound 5e-4), so decode-MMQ is argmax-stable, not bitwise, against WS.

`plan_mmq` does all host-side validation and the launch geometry without a GPU; `mmq_matvec` launches.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kernels._compile import load_module
from kernels.dequant import UNIT, check_array, check_weight_rows, require_device_arrays
from kernels.reference.q8_1 import BLOCK_BYTES as Q8_1_BLOCK_BYTES

MODULE = "mmq"
MMQ_TYPES = ("Q8_0", "Q4_0", "Q4_K", "Q5_K", "Q6_K")  # the mmq_<t>_<tile> entries of mmq.cu
XQ_ALIGN = 4  # 32-bit loads of Q8_1 blocks


@dataclass(frozen=True)
class Tile:
    """One compiled tile variant of mmq.cu: bm weight rows x bn tokens per thread block, bm / 16 warps, kb 32-value
    blocks per shared-memory stage."""
    bm: int
    bn: int
    kb: int = 4

    @property
    def name(self) -> str:
        return f"bm{self.bm}_bn{self.bn}" + (f"_kb{self.kb}" if self.kb != 4 else "")

    @property
    def threads(self) -> int:
        return 2 * self.bm  # 32 * (bm / 16)


# MMQ_TILES in mmq.cu. The deeper-staged kb16 / kb8 tiles (fewer barriers on the walk over K, which bounds the
# kb4 tiles: reports/history/2026-11-25-perf-notes.md) are compiled and tested but not yet in TILE_RULES: they
# wait for their H100 timings (`python -m harness.route_tuning` times every tile).
TILES = {t.name: t for t in (Tile(32, 16), Tile(32, 32), Tile(64, 16), Tile(64, 32), Tile(32, 16, 16), Tile(64, 16, 8))}
MAX_N = 65535 * 16  # grid.y limit for the smallest bn

# Which tile a launch uses, as data (first match wins): (types or None for any, min N, min weight bytes, min rows,
# tile). Every tile gives the same bits (the reduction order is per output), so this is purely a speed choice,
# measured on the H100 over every matmul shape of the 12B-shaped stand-ins with `python -m harness.route_tuning`
# (reports/history/2026-11-25-h100-route-tuning-*.md; times relative to the best tile of each shape and N):
#   * bn 32 only pays where the matrix does not fit in L2 (50 MiB): beyond 16 tokens the bn 16 grid reads the
#     weights once per 16 tokens, the second pass from L2 for everything but the 826 MB lm-head (bm64_bn32 there:
#     0.6x of bm64_bn16's time at N = 17..32); elsewhere bn 32 costs 1.1..1.3x;
#   * Q6_K stages twice the scales per block: bm 64 is 1.3x faster than bm 32 on every Q6_K shape;
#   * the 32-value-scale types: bm 32 is best up to 16 tokens (bm 64: 1.01..1.07x), bm 64 from 17 tokens on
#     matrices of >= 3840 rows (bm 32: 1.00..1.05x).
TILE_RULES: tuple[tuple[frozenset[str] | None, int, int, int, str], ...] = (
    (None, 17, 64 << 20, 0, "bm64_bn32"),
    (frozenset({"Q6_K"}), 1, 0, 0, "bm64_bn16"),
    (None, 17, 0, 3840, "bm64_bn16"),
    (None, 1, 0, 0, "bm32_bn16"),
)


def choose_tile(type_name: str, rows: int, row_bytes: int, n: int, rules=TILE_RULES) -> Tile:
    for types, min_n, min_bytes, min_rows, name in rules:
        if (types is None or type_name in types) and n >= min_n and rows * row_bytes >= min_bytes and rows >= min_rows:
            return TILES[name]
    raise ValueError(f"no tile rule matches {type_name} rows={rows}, N={n}")  # the last rule matches everything


@dataclass(frozen=True)
class MmqLaunch:
    entry: str  # extern "C" name in mmq.cu
    tile: Tile
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    rows: int
    row_bytes: int
    units: int  # 32-value blocks per row (K / 32)
    n: int  # tokens
    quantize: bool  # x is float32 and is quantized to Q8_1 first


def mmq_geometry(rows: int, n: int, tile: Tile) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    return (-(-rows // tile.bm), -(-n // tile.bn), 1), (tile.threads, 1, 1)


def plan_mmq(w_raw, type_name: str, n_cols: int, x, *, out=None, tile: str | None = None) -> MmqLaunch:
    """Validate the arguments of `mmq_matvec` on the host (types, shapes, dtypes, contiguity, alignment)."""
    if type_name not in MMQ_TYPES:
        raise ValueError(f"type_name: decode-MMQ supports {list(MMQ_TYPES)}, got {type_name!r}")
    rows, rb = check_weight_rows(w_raw, type_name, n_cols)
    units = int(n_cols) // UNIT
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        raise ValueError(f"x: expected an array, got {type(x).__name__}")
    if np.dtype(dtype) == np.float32:
        check_array("x", x, dtype=np.float32, ndim=2)
        want, quantize = int(n_cols), True
    elif np.dtype(dtype) == np.uint8:
        check_array("x", x, dtype=np.uint8, ndim=2, align=XQ_ALIGN)
        want, quantize = units * Q8_1_BLOCK_BYTES, False
    else:
        raise ValueError(f"x: expected float32 activations [N, {n_cols}] or uint8 Q8_1 blocks "
                         f"[N, {units * Q8_1_BLOCK_BYTES}], got dtype {np.dtype(dtype).name}")
    n, k = (int(v) for v in x.shape)
    if k != want:
        what = "columns (n_cols)" if quantize else f"bytes ({units} Q8_1 blocks of {Q8_1_BLOCK_BYTES})"
        raise ValueError(f"x: expected {want} {what}, got shape {tuple(x.shape)}")
    if not 1 <= n <= MAX_N:
        raise ValueError(f"x: need 1 <= N <= {MAX_N} tokens (rows), got shape {tuple(x.shape)}")
    if out is not None:
        check_array("out", out, dtype=np.float32, ndim=2, shape=(n, rows), align=4)
    if tile is not None and tile not in TILES:
        raise ValueError(f"tile: expected one of {sorted(TILES)}, got {tile!r}")
    chosen = TILES[tile] if tile is not None else choose_tile(type_name, rows, rb, n)
    if n > 65535 * chosen.bn:
        raise ValueError(f"x: N={n} tokens need more than 65535 token tiles of {chosen.bn}")
    grid, block = mmq_geometry(rows, n, chosen)
    return MmqLaunch(f"mmq_{type_name.lower()}_{chosen.name}", chosen, grid, block, rows, rb, units, n, quantize)


def mmq_matvec(w_raw, type_name: str, n_cols: int, x, *, out=None, tile: str | None = None):
    """y [N, rows] float32 = x @ dequant(W).T with x quantized to Q8_1 (float32 x) or given as Q8_1 (uint8 x).

    out: an optional float32 C-contiguous [N, rows] array to write into (e.g. a view between guard regions).
    tile: force one of TILES (tests run every variant); default: choose_tile (TILE_RULES).
    """
    import cupy

    plan = plan_mmq(w_raw, type_name, n_cols, x, out=out, tile=tile)
    require_device_arrays(w_raw=w_raw, x=x, out=out)
    if plan.quantize:
        from kernels.quantize_q8_1 import quantize_q8_1

        x = quantize_q8_1(x)
    y = cupy.empty((plan.n, plan.rows), dtype=cupy.float32) if out is None else out
    load_module(MODULE).get_function(plan.entry)(
        plan.grid, plan.block,
        (w_raw, np.int64(plan.row_bytes), np.int32(plan.rows), np.int32(plan.units), x, np.int32(plan.n), y))
    return y
