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

Numerics (the .cu header has the exact reduction order): K is split into slices chosen from the matrix shape
(split_k_slices), whose partial sums are added in slice order. Within a slice, per 32-value block the int8 code dot
is exact (int32 mma), it is scaled by d_w * d_x in float32 and summed over blocks in increasing order in float32
(Q4_K also subtracts m_w times d_x * the exact integer sum of the block's Q8_1 codes in one fused multiply-add, per
32-value sub-block; Q6_K fuses its two 16-value halves' products into one term). The result is deterministic and
independent of N,
of the tile and of the batch composition, but it is NOT bitwise equal to the WS mat-vec
(kernels/matvec.py): quantizing x to Q8_1 is an approximation (NMSE ~1e-5 for uniform activations, within
llama.cpp's MUL_MAT bound 5e-4), so decode-MMQ is argmax-stable, not bitwise, against WS.

`plan_mmq` does all host-side validation and the launch geometry without a GPU; `mmq_matvec` launches.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gemma_oracle.kernels._compile import load_module, nvrtc_options
from gemma_oracle.kernels.dequant import UNIT, check_array, check_weight_rows, require_device_arrays
from gemma_oracle.kernels.reference.q8_1 import BLOCK_BYTES as Q8_1_BLOCK_BYTES

MODULE = "mmq"
MMQ_TYPES = ("Q8_0", "Q4_0", "Q4_K", "Q5_K", "Q6_K")  # the mmq_<t>_<tile> entries of mmq.cu
XQ_ALIGN = 4  # 32-bit loads of Q8_1 blocks


def weight_prefetch_enabled() -> bool:
    """Whether the entries prefetch their weight bytes into L2 before the grid dependency wait (mmq.cu,
    mmq_prefetch_weights_l2): only with GEMMA_ORACLE_MMQ_PREFETCH=1."""
    return "-DMMQ_L2_PREFETCH=1" in nvrtc_options()


@dataclass(frozen=True)
class Tile:
    """One compiled tile variant of mmq.cu: bm weight rows x bn tokens per thread block.

    kind "mma": the int8 tensor-core tile, bm / 16 warps, kb 32-value blocks per shared-memory stage.
    kind "dp4a": the small-N kernel (mmq.cu, "Small-N decode-MMQ on dp4a"), 4 warps of 16 rows (8 at bn 4); its chunk of
    blocks (8 or 32) is picked per launch from the shape (dp4a_chunk), so kb is 0 here."""
    bm: int
    bn: int
    kb: int = 4
    kind: str = "mma"

    @property
    def name(self) -> str:
        if self.kind == "dp4a":
            return f"dp4a_bn{self.bn}"
        return f"bm{self.bm}_bn{self.bn}" + (f"_kb{self.kb}" if self.kb != 4 else "")

    @property
    def threads(self) -> int:
        return DP4A_THREADS if self.kind == "dp4a" else 2 * self.bm  # mma: 32 * (bm / 16)


DP4A_THREADS = 128  # MMQ_DP4A_WARPS * 32 in mmq.cu
DP4A_CHUNKS = (8, 32)  # the CW of mmq.cu's dp4a entries
DP4A_PAIR_TYPES = ("Q4_0", "Q4_K")  # types with a paired dp4a_bn1 entry (mmq.cu: MMQ_DP4A_PAIR_TILES)
DP4A_PAIR_CHUNK = 32  # the chunk width of the paired entries


def dp4a_rows_per_warp(bn: int) -> int:
    """MMQ_DP4A_ROWS in mmq.cu: 16 rows a warp, 8 for bn 4 (at most 32 accumulators, one per lane)."""
    return 8 if bn >= 4 else 16


def dp4a_tile(bn: int) -> Tile:
    return Tile(DP4A_THREADS // 32 * dp4a_rows_per_warp(bn), bn, 0, "dp4a")


def dp4a_chunk(units: int, slices: int) -> int:
    """Blocks per chunk of a dp4a launch: 8 when a K slice has at most 16 blocks (a 32-block chunk would leave more
    than half the lanes idle), else 32 (a row's activations are loaded once per 32 rows, not per 8)."""
    return DP4A_CHUNKS[0] if -(-units // slices) <= 16 else DP4A_CHUNKS[1]


def dp4a_pairs(type_name: str, tile: Tile, units: int, slices: int) -> bool:
    """Whether a launch takes the paired dp4a entry (mmq.cu, P = 2: a lane reads two consecutive blocks of a row at
    once, half the memory round trips): the 1-token dp4a tile, a type with a Pair (Q4_0, Q4_K), 32-block chunks and
    every K-slice bound even, so each lane's first block is even (a Q4_K sub-block pair shares its super-block's
    bytes). Measured on the H100 (route tuning, N = 1, 12B shapes): 15360 x 3840 19.1 -> 18.0 us (Q4_K) and
    19.4 -> 18.9 (Q4_0), 3840 x 15360 19.1 -> 18.3 (Q4_K); with 8-block chunks (3840 x 4096, 16 slices of 8) it was
    2.5 % (Q4_K) and 7 % (Q4_0) slower, so those keep one block a lane."""
    return (tile.kind == "dp4a" and tile.bn == 1 and type_name in DP4A_PAIR_TYPES
            and dp4a_chunk(units, slices) == DP4A_PAIR_CHUNK
            and all(z * units // slices % 2 == 0 for z in range(slices + 1)))


# MMQ_TILES in mmq.cu: bm 32 / 64 x bn 8 / 16 / 32 with 4-block stages, and the deeper-staged kb16 / kb8 tiles;
# MMQ_DP4A_TILES: the dp4a kernel for 1, 2 and 4 tokens a block.
TILES = {t.name: t for t in (Tile(32, 16), Tile(32, 32), Tile(64, 16), Tile(64, 32), Tile(32, 16, 16), Tile(64, 16, 8),
                              Tile(64, 8), Tile(32, 8, 16), dp4a_tile(1), dp4a_tile(2), dp4a_tile(4))}
MAX_N = 65535 * 8  # grid.y limit for the bn 8 tile (a smaller-bn tile forced on more tokens is refused in plan_mmq)

# Which tile a launch uses, as data (first match wins): (types or None for any, min N, min rows, min cols, tile).
# Every tile gives the same bits (the reduction order is per output and per K slice, and the slices depend on the
# shape only), so this is purely a speed choice, measured on the H100 over every matmul shape of the 12B-shaped
# stand-ins with split K (`python -m gemma_oracle.harness.perf.route_tuning`; mma tiles: reports/history/2026-11-25-h100-route-tuning-bn8-*.md,
# dp4a tiles: reports/history/2026-11-25-h100-route-tuning-dp4a-*.md; time relative to the best tile of each shape):
#   * 1 token: dp4a_bn1 on every shape (Q4_K 15360x3840 19.0 us against 29.5 for bm64_bn8; the Q6_K lm-head 380 us
#     against 555); 2 tokens: dp4a_bn2 (within 1.06x of the best on every shape, 1.3..1.7x faster than bm64_bn8);
#   * 3..4 tokens: dp4a_bn4 on Q6_K and on 15360-column matrices (Q6_K 3840x15360 36.8 us against 53.5 for
#     bm64_bn8), bm64_bn8 on the other >= 3840-row ones (dp4a within 0.97..1.3x), dp4a_bn2 (two token tiles) below
#     (2048 rows: 9.0 us against 10.6);
#   * 5..16 tokens: bm64_bn8 (bm64_bn16 at 9..16 on >= 3840 rows: a bn 16 tile does twice the per-block float work
#     for tokens that are not there, 1.06..1.20x at <= 8) except below 2048 rows, where dp4a_bn4 wins (512 rows:
#     6.3 us against 8.6);
#   * beyond 16 tokens bm64_bn32 reads each weight once where bn 16 reads it twice: best on >= 8192-row and
#     15360-column matrices (bm64_bn16 1.06..1.43x); bm64_bn16 on the other >= 2048-row ones (within 1.02..1.08x
#     of the best), bm64_bn8 on the 512-row ones (others >= 1.2x).
# Re-timed after the fused offset / half terms and with the bm64 tiles of 16 / 32 tokens held to 64 registers (mmq.cu,
# mmq_min_blocks; sixth session, reports/history/2026-11-25-h100-route-tuning-fma{,-lb8}-*.md, mma tiles at
# N = 5..32):
#   * beyond 16 tokens bm64_bn32 on >= 8192-row and 15360-column matrices, every type (Q4_K 15360 x 3840 at N = 32
#     60.3 us against 66.1 for bm64_bn16; the Q6_K lm-head 856 against 1227), and up to 24 tokens on the other
#     >= 2048-row ones (4096 x 3840 at 17: 26.5 against 29.9); from 25 tokens two bn 16 tiles win there (at 32:
#     31.2 against 35.5), for Q4_0 in the kb8 variant;
#   * Q4_0 at 9..16 tokens on >= 3840 rows: bm64_bn16_kb8 (15360 x 3840 41.9..44.9 us against 47.2..50.6 for
#     bm64_bn16 before the register bound; the K-quants lose with it).
TILE_RULES: tuple[tuple[frozenset[str] | None, int, int, int, str], ...] = (
    (None, 17, 8192, 0, "bm64_bn32"),
    (None, 17, 0, 15360, "bm64_bn32"),
    (frozenset({"Q4_0"}), 25, 2048, 0, "bm64_bn16_kb8"),
    (None, 25, 2048, 0, "bm64_bn16"),
    (None, 17, 2048, 0, "bm64_bn32"),
    (None, 17, 0, 0, "bm64_bn8"),
    (frozenset({"Q4_0"}), 9, 3840, 0, "bm64_bn16_kb8"),
    (None, 9, 3840, 0, "bm64_bn16"),
    (None, 5, 2048, 0, "bm64_bn8"),
    (None, 5, 0, 0, "dp4a_bn4"),
    (frozenset({"Q6_K"}), 3, 0, 0, "dp4a_bn4"),
    (None, 3, 0, 15360, "dp4a_bn4"),
    (None, 3, 3840, 0, "bm64_bn8"),
    (None, 3, 0, 0, "dp4a_bn2"),
    (None, 2, 0, 0, "dp4a_bn2"),
    (None, 1, 0, 0, "dp4a_bn1"),
)


# Split K (mmq.cu header): the number of K slices is a function of the matrix SHAPE only, so every N, every tile and
# every batch composition reduce each output in the same order (the batch-invariant contract). Slices double while
# the grid of the smallest tile (32 rows) stays within SPLIT_TARGET_BLOCKS thread blocks and every slice keeps at
# least SPLIT_MIN_UNITS 32-value blocks: the 12B's 15360 x 3840 gets 4 slices, 4096 x 3840 16, 2048 x 3840 16,
# 512 x 3840 16, 3840 x 15360 16, the lm-head 1. Measured on the H100 (route-tuning-splitk): these are the fastest
# split timed or within 5 % of it, against 1.5..8x the time unsplit; with SPLIT_MIN_UNITS = 16 (the first guess)
# the <= 4096-row matrices got 4 slices and took 1.3..2.3x their best time.
SPLIT_TARGET_BLOCKS = 2048
SPLIT_MIN_UNITS = 4
SPLIT_MAX = 64
COUNTER_SLOTS = 1 << 20  # int32 tile counters of a split-K launch (mmq.cu): grid.x * grid.y at most
_COUNTERS: dict[int, object] = {}  # device id -> zeroed int32 [COUNTER_SLOTS] (the kernels leave it zeroed)


def prepare_counters():
    """The current device's split-K tile counters, allocated and zeroed on first use. Call it before capturing a
    CUDA graph that contains a split-K launch (CupyEngine does at construction): a buffer first made inside a
    capture would be zeroed only when the graph replays."""
    import cupy

    dev = cupy.cuda.Device().id
    if dev not in _COUNTERS:
        stream = cupy.cuda.get_current_stream()
        if stream.ptr and cupy.cuda.runtime.streamIsCapturing(stream.ptr):
            raise RuntimeError("gemma_oracle.kernels.mmq: split-K counters first needed inside a CUDA graph capture; call "
                               "gemma_oracle.kernels.mmq.prepare_counters() before capturing")
        counters = cupy.zeros(COUNTER_SLOTS, dtype=cupy.int32)
        stream.synchronize()
        _COUNTERS[dev] = counters
    return _COUNTERS[dev]


def split_k_outputs(n: int, rows: int, slices: int, out=None):
    """(y, part, counters) of one split-K tile launch (mmq.cu, dq_mma.cu, packed_mma.cu): y float32 [n, rows] (`out`
    when given), the partial sums [slices, n, rows] and the zeroed tile counters; with one slice the kernel reads
    neither, and y stands in for both."""
    import cupy

    y = cupy.empty((n, rows), dtype=cupy.float32) if out is None else out
    if slices == 1:
        return y, y, y
    return y, cupy.empty((slices, n, rows), dtype=cupy.float32), prepare_counters()


def split_k_slices(rows: int, units: int, target_blocks: int = SPLIT_TARGET_BLOCKS,
                   min_units: int = SPLIT_MIN_UNITS) -> int:
    """K slices for a rows x (32 * units) matrix: shape only (never N or the tile)."""
    row_tiles, slices = -(-rows // 32), 1
    while (slices * 2 <= SPLIT_MAX and row_tiles * slices * 2 <= target_blocks
           and units // (slices * 2) >= min_units):
        slices *= 2
    return slices


def choose_tile(type_name: str, rows: int, cols: int, n: int, rules=TILE_RULES) -> Tile:
    for types, min_n, min_rows, min_cols, name in rules:
        if (types is None or type_name in types) and n >= min_n and rows >= min_rows and cols >= min_cols:
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
    slices: int  # K slices (grid.z); > 1: partial sums added in the kernel by each tile's last slice block
    pair: bool = False  # the paired dp4a entry (dp4a_pairs)


def mmq_geometry(rows: int, n: int, tile: Tile, slices: int = 1) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    return (-(-rows // tile.bm), -(-n // tile.bn), slices), (tile.threads, 1, 1)


def plan_mmq(w_raw, type_name: str, n_cols: int, x, *, out=None, tile: str | None = None,
             slices: int | None = None, pair: bool | None = None) -> MmqLaunch:
    """Validate the arguments of `mmq_matvec` on the host (types, shapes, dtypes, contiguity, alignment).
    pair: None takes the paired dp4a entry wherever dp4a_pairs allows it; True requires it; False never takes it
    (tests compare the two: the same bits)."""
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
    if slices is not None and not (isinstance(slices, int) and 1 <= slices <= min(SPLIT_MAX, units)):
        raise ValueError(f"slices: expected an int in 1..{min(SPLIT_MAX, units)} (K has {units} blocks), got {slices!r}")
    chosen = TILES[tile] if tile is not None else choose_tile(type_name, rows, int(n_cols), n)
    if n > 65535 * chosen.bn:
        raise ValueError(f"x: N={n} tokens need more than 65535 token tiles of {chosen.bn}")
    k_slices = split_k_slices(rows, units) if slices is None else slices
    grid, block = mmq_geometry(rows, n, chosen, k_slices)
    if k_slices > 1 and grid[0] * grid[1] > COUNTER_SLOTS:
        raise ValueError(f"x: N={n} tokens x {rows} rows make {grid[0] * grid[1]} tiles, more than the "
                         f"{COUNTER_SLOTS} split-K counters")
    pairs = dp4a_pairs(type_name, chosen, units, k_slices)
    if pair and not pairs:
        raise ValueError(f"pair: no paired dp4a launch for {type_name} on {chosen.name} with {k_slices} K slices of "
                         f"{units} blocks (needs dp4a_bn1, one of {list(DP4A_PAIR_TYPES)} and even slice bounds)")
    pairs = pairs and pair is not False
    entry = f"mmq_{type_name.lower()}_{chosen.name}"
    if chosen.kind == "dp4a":
        entry += f"_cw{dp4a_chunk(units, k_slices)}" + ("_p2" if pairs else "")
    return MmqLaunch(entry, chosen, grid, block, rows, rb, units, n, quantize, k_slices, pairs)


GROUP_MAX = 3  # MMQ_GROUP_MAX in mmq.cu (and PK_GROUP_MAX in packed_mma.cu): matrices one launch can serve


# --- grouped split-K launches (mmq.cu, packed_mma.cu): 1..GROUP_MAX matrices that read one input in one launch ------

def group_outs(members: list, outs, route: str) -> list:
    """The per-member outputs (None: allocate) after checking the group's size and that `outs` matches it."""
    if not 1 <= len(members) <= GROUP_MAX:
        raise ValueError(f"members: a grouped {route} launch takes 1..{GROUP_MAX} matrices, got {len(members)}")
    outs = [None] * len(members) if outs is None else list(outs)
    if len(outs) != len(members):
        raise ValueError(f"outs: expected {len(members)} outputs (one per member), got {len(outs)}")
    return outs


def check_group_counters(plans, split: int | None = None) -> None:
    """A split group's tiles (every member's row tiles x the token tiles) each need a split-K counter when its K is
    split (`split`: the plans' K split; default their slices, packed MMA passes its chunks)."""
    first = plans[0]
    if (first.slices if split is None else split) > 1 and sum(p.grid[0] for p in plans) * first.grid[1] > COUNTER_SLOTS:
        raise ValueError(f"members: {sum(p.grid[0] for p in plans) * first.grid[1]} tiles, more than the "
                         f"{COUNTER_SLOTS} split-K counters")


def group_grid(plans) -> tuple[tuple[int, int, int], tuple[np.int32, np.int32]]:
    """(grid, (tiles0, tiles01)): grid.x the members' row tiles one after another, and the grid.x bounds of member 0
    and of members 0-1 by which a block finds its member."""
    tiles = [p.grid[0] for p in plans]
    first = plans[0]
    return ((sum(tiles), first.grid[1], first.slices),
            (np.int32(tiles[0]), np.int32(tiles[0] + (tiles[1] if len(tiles) > 1 else 0))))


def pad_group(values, fill) -> list:
    """A kernel argument per member slot: members past the group's are never selected (no block's x reaches them)."""
    return list(values) + [fill] * (GROUP_MAX - len(values))


def plan_mmq_group(members, x, *, outs=None, tile: str | None = None, slices: int | None = None,
                   pair: bool | None = None) -> list[MmqLaunch]:
    """Validate a grouped launch on the host: each member (w_raw, type_name, n_cols) as plan_mmq does, and the
    members share what one launch must (type, columns, tile, K split). Returns one plan per member."""
    members = list(members)
    outs = group_outs(members, outs, "decode-MMQ")
    plans = [plan_mmq(w, t, c, x, out=o, tile=tile, slices=slices, pair=pair) for (w, t, c), o in zip(members, outs)]
    first = plans[0]
    for i, plan in enumerate(plans[1:], 1):
        if (members[i][1], int(members[i][2]), plan.tile, plan.slices) != (members[0][1], int(members[0][2]),
                                                                           first.tile, first.slices):
            raise ValueError(f"members[{i}]: {members[i][1]} {plan.rows}x{members[i][2]} on {plan.tile.name} with "
                             f"{plan.slices} K slices cannot share a launch with member 0 ({members[0][1]} "
                             f"{first.rows}x{members[0][2]} on {first.tile.name} with {first.slices}): a grouped "
                             "launch needs one type, column count, tile and K split")
    check_group_counters(plans)
    return plans


def mmq_matvec_group(members, x, *, outs=None, tile: str | None = None, slices: int | None = None,
                     pair: bool | None = None) -> list:
    """[x @ dequant(W_m).T for each member (w_raw, type_name, n_cols)] in one launch (mmq.cu: a block runs the member
    whose row tiles hold its blockIdx.x). The members share the activations, the type, K, the tile and the K split
    (the 12B's q/k/v and gate/up do at small N: choose_tile and split_k_slices give them the same); each output has
    the bits of its own mmq_matvec launch. x as in mmq_matvec (quantized once for all members when float32)."""
    plans = plan_mmq_group(members, x, outs=outs, tile=tile, slices=slices, pair=pair)
    outs = [None] * len(plans) if outs is None else list(outs)
    require_device_arrays(x=x, **{f"members[{i}].w_raw": m[0] for i, m in enumerate(members)},
                          **{f"outs[{i}]": o for i, o in enumerate(outs)})
    first = plans[0]
    if first.quantize:
        from gemma_oracle.kernels.quantize_q8_1 import quantize_q8_1

        x = quantize_q8_1(x)
    made = [split_k_outputs(p.n, p.rows, p.slices, o) for p, o in zip(plans, outs)]
    ys, parts, counters = [m[0] for m in made], [m[1] for m in made], made[0][2]
    grid, bounds = group_grid(plans)
    weights = pad_group([m[0] for m in members], members[0][0])
    row_bytes = [np.int64(v) for v in pad_group([p.row_bytes for p in plans], first.row_bytes)]
    rows = [np.int32(v) for v in pad_group([p.rows for p in plans], 0)]
    load_module(MODULE).get_function(first.entry)(
        grid, first.block,
        (*weights, *row_bytes, *rows, *bounds, *pad_group(ys, ys[0]), *pad_group(parts, parts[0]),
         np.int32(first.units), x, np.int32(first.n), np.int32(first.slices), counters))
    return ys


def mmq_matvec(w_raw, type_name: str, n_cols: int, x, *, out=None, tile: str | None = None,
               slices: int | None = None, pair: bool | None = None):
    """y [N, rows] float32 = x @ dequant(W).T with x quantized to Q8_1 (float32 x) or given as Q8_1 (uint8 x).

    out: an optional float32 C-contiguous [N, rows] array to write into (e.g. a view between guard regions).
    tile: force one of TILES (tests run every variant); default: choose_tile (TILE_RULES).
    slices: force the number of K slices (tuning and tests; it changes the bits); default: split_k_slices (shape).
    pair: the paired dp4a entry (plan_mmq; the same bits either way).
    A group of one (mmq_matvec_group).
    """
    return mmq_matvec_group([(w_raw, type_name, n_cols)], x, outs=[out], tile=tile, slices=slices, pair=pair)[0]
