"""Launcher of kernels/cuda/packed_mma.cu: packed-weight MMA, y[n, r] = sum_k W[r, k] * x[n, k] on fp16 tensor cores.

The weights are repacked once, on the GPU, from GGUF rows (Q4_0, Q4_K, Q6_K) into the order the mma fragments take
them (`pack_weights` -> PackedMatrix: Q4_K 5 bits a weight, Q4_0 4.5, Q6_K 7), so the kernel's work per weight is a few instructions whatever N.
The activations are converted per call into fragment-ordered fp16 rows (`packed_x`: f16_rows' values and inv, one
launch) that every packed matrix reading the same input shares.

Numerics (the .cu header): the fp16 weights and activations of the dequant-MMA route (kernels/dq_mma.py) in the same
mma slots and the same chain (one mma per 16-value step, increasing K, decode-MMQ's shape-only K slices added in
slice order), so an output is bitwise equal to dq_mma's shared-memory tiles at the same slices, and every tile here
gives the same bits: batch-invariant at every N.

`plan_pack`, `plan_packed_mma` and `plan_packed_group` validate on the host without a GPU; `pack_weights`, `packed_x`,
`packed_mma_matvec` and `packed_mma_group` (matrices that read one input in one launch) launch.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np

from gemma_oracle.kernels._compile import load_module, nvrtc_options
from gemma_oracle.kernels.dequant import UNIT, check_array, check_weight_rows, require_device_arrays
from gemma_oracle.kernels.mmq import (COUNTER_SLOTS, check_group_counters, group_grid, group_outs, pad_group,
                                      split_k_outputs, split_k_slices)

MODULE = "packed_mma"
PACKED_TYPES = ("Q4_0", "Q4_K", "Q6_K")  # the pack_<t> / packed_mma_<t>_<tile> entries
GROUP = 64  # values of K a packed record covers (two 32-value blocks)
# uint32 words of one (m16 tile, group) record (the type's RECORD uint4s): 4-bit codes 128 + scales 32 (Q4_K: 5 bits
# a weight) or 16 (Q4_0, d alone: 4.5 bits); Q6_K low nibbles 128 + high bits 64 + scales 32 (7 bits)
RECORD_WORDS = {"Q4_0": 144, "Q4_K": 160, "Q6_K": 224}
X_RECORD_WORDS = 256  # uint32 words of one (8-token tile, group) activation record (PK_X_RECORD uint4s)
WARPS = 4  # PK_WARPS
PACK_THREADS = 256
X_THREADS = 256  # F16_ROWS_THREADS


def record_words(type_name: str) -> int:
    """RECORD_WORDS, with Q4_0's padded to 160 under GEMMA_ORACLE_PACKED_Q4_0_PAD=1 (kernels/_compile.py)."""
    from gemma_oracle.kernels._compile import q4_0_padded

    return 160 if type_name == "Q4_0" and q4_0_padded() else RECORD_WORDS[type_name]


@dataclass(frozen=True)
class Tile:
    """One compiled tile of packed_mma.cu: 4 warps of `mt` m16 tiles (bm = 64 mt rows) x 8 `nt` tokens, the weight
    records of `d` - 1 groups ahead in flight, and with `xr` the activation words too. Every tile gives the same
    bits."""
    mt: int
    nt: int
    d: int
    xr: bool = False

    @property
    def bm(self) -> int:
        return 16 * self.mt * WARPS

    @property
    def bn(self) -> int:
        return 8 * self.nt

    @property
    def name(self) -> str:
        return f"m{self.mt}_n{self.nt}_d{self.d}" + ("_x" if self.xr else "")


# PK_TILES in packed_mma.cu
# (Deeper rings, m1_n1_d8 / m2_n1_d5 / m1_n2_d6, were 1-20 % slower than these on every 12B shape at N = 1-2 on an
# H100: reports/history/2026-12-07-s16.md; the N = 1 tile is not short of bytes in flight. m2_n4_d3, m4_n2_d2 and
# m4_n4_d2 were slower than m2_n4_d2 / m2_n2_d2 at N = 16-32 on every 12B shape but the lm head, where m4_n2_d2 won by
# 2 %; m1_n4_d3_x, m1_n4_d2_x and m2_n4_d2_x lost to the plain tiles at N = 8-32 (their registers), and so did every
# tile with a shared-memory ring of activation words: reports/history/2026-12-07-s17.md.)
TILES = {t.name: t for t in (
    Tile(2, 1, 3), Tile(1, 1, 4), Tile(1, 2, 3), Tile(2, 2, 2), Tile(2, 4, 2), Tile(1, 4, 3), Tile(1, 2, 2),
    Tile(1, 4, 2),
    Tile(2, 1, 3, True), Tile(2, 1, 2, True), Tile(1, 1, 4, True), Tile(1, 2, 3, True), Tile(2, 2, 2, True),
    Tile(1, 1, 3, True))}
# Which tile a launch uses: (min N, min rows / cols, tile), the first rule that matches in (min N, min aspect)
# descending order. A speed choice only (the same bits). The fastest tile a step, count-weighted over the 12B shapes
# at each timed N with packed_split's splits (route tuning on an H100, reports/history/2026-12-07-s18.md, call 1):
# the tall matrices (rows >= TALL cols: the ffn gate / up at 4 slices and the lm head at 1, which have row tiles
# enough) two m16 tiles a warp up to N = 15, then two and four token tiles; the others (at most 8 slices) one m16 tile
# a warp, the activation words in the register ring, two token tiles from 32.
TALL = 4.0
TILE_RULES: tuple[tuple[int, float, str], ...] = (
    (32, TALL, "m1_n4_d3"), (32, 0.0, "m1_n2_d3_x"), (16, TALL, "m1_n2_d3_x"), (1, TALL, "m2_n1_d3_x"),
    (1, 0.0, "m1_n1_d4_x"))
MAX_N = 65535 * 8
# The tiles and types with a second entry (suffix _w, packed_mma.cu PK_WALK_TILES) whose register ring runs on across
# a block's K chunks: launched when a block walks several (chunks > slices: a batch-invariant launch from
# SLICE_CAP_MIN_N tokens), where the loop per chunk drains its ring at each bound. The tiles TILE_RULES gives from
# 32 tokens (and the tall shapes' from 16); not Q6_K, whose registers would cost a block an SM. A speed choice: the
# same bits. Whole 12B step, batch-invariant at N = 32 on an H100 (reports/history/2026-12-07-s23.md, call 1): 1.060x
# the loop per chunk on the Q4_0 stand-in, 1.014x on the Q4_K_M one; auto (never walks) and N = 1 level.
# (m1_n1_d4_x had an entry too in that A/B, the N = 16 tile of the other shapes: it took 112-120 registers against
# 80-90, 6 blocks an SM to 4, and batch-invariant / auto at N = 16 did not move: 0.977 -> 0.973, 0.983 -> 0.980.)
WALK_TILES = ("m1_n2_d3_x", "m1_n4_d3")
WALK_TYPES = ("Q4_0", "Q4_K")
# Whether those entries are launched: GEMMA_ORACLE_PACKED_CARRY (1 or 0; unset: DEFAULT_CARRY), so that one device
# call can time both in one tree.
ENV_CARRY = "GEMMA_ORACLE_PACKED_CARRY"
DEFAULT_CARRY = "1"


def carry_from_env() -> bool:
    value = os.environ.get(ENV_CARRY, DEFAULT_CARRY).strip() or DEFAULT_CARRY
    if value not in ("0", "1"):
        raise ValueError(f"{ENV_CARRY}={value!r}: expected 1 (the ring carried across a block's K chunks) or 0")
    return value == "1"

# How a split launch adds its K slices: "cluster" (the default; sm_90, else counters): the slice blocks of an output
# tile are one thread block cluster and add up through distributed shared memory (packed_mma.cu pk_cluster_sums), at
# most CLUSTER_MAX slices (the portable cluster size); "counters": mmq.cu's counted split (the partials in global
# memory, the last block adds them). The same bits either way (one chain, slice order); a speed choice. On an H100,
# one matmul at a time, cluster sums were 2-6 % faster at N = 1-2 and 4-25 % at N = 16-32 on 16 of 19 12B shapes and
# splits (reports/history/2026-12-07-s19.md); the whole 12B step 1.01-1.09x counters on both stand-ins at N = 1, 2,
# 16, 32, auto and batch-invariant (one bi case 0.999x; reports/history/2026-12-07-s20.md).
ENV_SUMS = "GEMMA_ORACLE_PACKED_SUMS"
SUMS = ("counters", "cluster")
DEFAULT_SUMS = "cluster"
CLUSTER_MAX = 8  # PK_CLUSTER_MAX


def sums_from_env() -> str:
    value = os.environ.get(ENV_SUMS, DEFAULT_SUMS).strip() or DEFAULT_SUMS
    if value not in SUMS:
        raise ValueError(f"{ENV_SUMS}={value!r}: expected one of {SUMS}")
    return value


def uses_cluster(slices: int, sums: str | None = None, chunks: int | None = None) -> bool:
    """Whether a launch of `slices` K slices (over `chunks` K chunks; default one a slice) adds them in a cluster
    (ENV_SUMS, or `sums`; the device must have clusters: compute capability 9.0 or more)."""
    sums = sums_from_env() if sums is None else sums
    if sums not in SUMS:
        raise ValueError(f"sums: expected one of {SUMS}, got {sums!r}")
    chunks = slices if chunks is None else chunks
    if not (2 <= slices <= CLUSTER_MAX and chunks <= CLUSTER_MAX and sums == "cluster"):
        return False
    import cupy

    from gemma_oracle.kernels.launch import device_is_sm90

    return device_is_sm90(cupy.cuda.Device().id)


def prefetch_groups() -> int:
    """The groups of each tile's K slice the packed entries ask into L2 before the PDL wait (packed_mma.cu,
    pk_prefetch_weights_l2): GEMMA_ORACLE_PACKED_PREFETCH when kernels are launched with PDL, else 0."""
    from gemma_oracle.kernels.launch import launch_mode

    if launch_mode() != "pdl":
        return 0
    return max([int(o.split("=")[1]) for o in nvrtc_options(pdl=True) if o.startswith("-DPK_L2_PREFETCH=")] or [0])


def ahead_groups() -> int:
    """How far past its register ring each m16 tile's rolling L2 prefetch asks, in groups (packed_mma.cu,
    pk_prefetch_ahead; GEMMA_ORACLE_PACKED_AHEAD; 0: none)."""
    return max([int(o.split("=")[1]) for o in nvrtc_options() if o.startswith("-DPK_L2_AHEAD=")] or [0])


def cluster_shared_bytes(tile: Tile, chunks_per_block: int = 1) -> int:
    """Dynamic shared memory of a cluster launch: each thread's MT * NT * 4 partial sums of each of its block's K
    chunks (pk_cluster_store)."""
    return tile.mt * tile.nt * 4 * 32 * WARPS * 4 * chunks_per_block


CLUSTER_SHARED_MAX = 48 * 1024  # dynamic shared memory a launch gets without opting in to more


# The K split of a launch: decode-MMQ's shape-only split (split_k_slices) capped at SHAPE_SLICE_CAP, which a
# batch-invariant mode keeps at every N; a mode whose numbers may vary with N (routing.routes_vary_with_n: auto) caps
# it further at SLICE_CAP from SLICE_CAP_MIN_N tokens. The split-K partial sums grow with N. Route tuning on an H100,
# count-weighted matmul us a step of the 12B stand-in, each shape's fastest tile (reports/history/2026-12-07-s18.md,
# call 1):
#   | K split      | N = 1 | 2    | 16   | 32    |
#   | own (<= 16)  | 4818  | 5074 | 7929 | 10760 |
#   | at most 8    | 4880  | 4991 | 7032 | 9685  |
#   | at most 4    | 5493  | 5593 | 7085 | 8890  |
SHAPE_SLICE_CAP, SLICE_CAP, SLICE_CAP_MIN_N = 8, 4, 16
# The most blocks a batch-invariant launch walks its K chunks with from SLICE_CAP_MIN_N tokens (default SLICE_CAP):
# a speed choice (the same bits), an environment variable so that a device call can time the walks side by side.
ENV_WALK = "GEMMA_ORACLE_PACKED_WALK"


def walk_from_env() -> int:
    value = os.environ.get(ENV_WALK, "").strip() or str(SLICE_CAP)
    if not value.isdigit() or not 1 <= int(value) <= SHAPE_SLICE_CAP:
        raise ValueError(f"{ENV_WALK}={value!r}: expected the most blocks along K, 1 to {SHAPE_SLICE_CAP}")
    return int(value)


def packed_split(rows: int, units: int, n: int, vary_with_n: bool, walk: int | None = None) -> tuple[int, int]:
    """(chunks, slices) of a packed launch of `rows` x `units` 32-value blocks at N tokens: K in `chunks` chunks,
    each summed on its own and the chunks added in order (the bits), walked by `slices` blocks (chunks / slices
    chunks a block; a speed choice). A batch-invariant caller keeps the shape's chunks at every N and, from
    SLICE_CAP_MIN_N tokens, walks them with at most `walk` blocks (default ENV_WALK, else SLICE_CAP; the largest
    divisor of chunks up to it), so it comes near the auto mode's speed at N >= 16 with the bits of N = 1. A caller
    whose numbers may vary with N caps the chunks themselves there. Whole 12B step on an H100, batch-invariant / auto (reports/history/2026-12-07-s20.md):
    0.91-0.96x at N = 16 with 8 blocks, 0.97-0.98x walked by 4; at N = 32 0.93-0.94x with 8, 0.86-0.97x walked by 4
    (four runs on both stand-ins: a wide spread, not understood yet)."""
    base = min(split_k_slices(rows, units), SHAPE_SLICE_CAP)
    if n < SLICE_CAP_MIN_N:
        return base, base
    if vary_with_n:
        return min(base, SLICE_CAP), min(base, SLICE_CAP)
    walk = walk_from_env() if walk is None else walk
    return base, max(d for d in range(1, min(base, walk) + 1) if base % d == 0)


# A tuning's rules instead of TILE_RULES, to time whole steps before they are written down: "min_n[@min_aspect]:tile,..."
# (route_tuning writes the fastest per timed N as packed-rules.txt). A speed choice only: every tile, the same bits.
ENV_TILES = "GEMMA_ORACLE_PACKED_TILES"


@functools.lru_cache(maxsize=8)
def parse_tile_rules(value: str) -> tuple[tuple[int, float, str], ...]:
    """'1:m2_n1_d3_x,32:m1_n2_d2,32@4:m1_n4_d3' -> ((32, 4.0, 'm1_n4_d3'), (32, 0.0, 'm1_n2_d2'), (1, 0.0,
    'm2_n1_d3_x')): min N, min rows / cols (0 without @), tile, in matching order; a rule for every shape at N = 1
    is required (every launch needs a tile)."""
    rules = []
    for item in value.split(","):
        key, sep, name = item.strip().partition(":")
        min_n, at, aspect = key.strip().partition("@")
        try:
            min_aspect = float(aspect) if at else 0.0
        except ValueError:
            min_aspect = -1.0
        if not sep or not min_n.strip().isdigit() or name.strip() not in TILES or min_aspect < 0:
            raise ValueError(f"{ENV_TILES}: {item!r} is not min_n[@min_aspect]:tile with a tile of {sorted(TILES)}")
        rules.append((int(min_n), min_aspect, name.strip()))
    rules.sort(reverse=True)
    if (1, 0.0) not in [(n, a) for n, a, _ in rules]:
        raise ValueError(f"{ENV_TILES}={value!r}: no rule for N = 1 on every shape (a '1:tile' rule)")
    return tuple(rules)


def choose_tile(n: int, rows: int = 0, cols: int = 1, rules=None) -> Tile:
    """The tile a launch of N tokens on a rows x cols matrix uses (TILE_RULES, or ENV_TILES's rules)."""
    if rules is None:
        value = os.environ.get(ENV_TILES, "").strip()
        rules = parse_tile_rules(value) if value else TILE_RULES
    for min_n, min_aspect, name in rules:
        if n >= min_n and rows >= min_aspect * cols:
            return TILES[name]
    raise ValueError(f"no packed-MMA tile rule matches N={n}, {rows} x {cols}")


@dataclass(frozen=True)
class PackedMatrix:
    """A weight matrix in packed_mma.cu's layout: `data` uint32 [tiles * groups * RECORD_WORDS[type]] on the GPU."""
    data: object
    type_name: str
    rows: int
    n_cols: int


@dataclass(frozen=True)
class PackLaunch:
    entry: str
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    rows: int
    row_bytes: int
    units: int
    words: int  # uint32 words of the packed copy


def check_packable(type_name: str, n_cols: int) -> None:
    if type_name not in PACKED_TYPES:
        raise ValueError(f"type_name: packed MMA supports {list(PACKED_TYPES)}, got {type_name!r}")
    if not isinstance(n_cols, (int, np.integer)) or n_cols <= 0 or n_cols % GROUP:
        raise ValueError(f"n_cols: packed MMA needs a positive multiple of {GROUP} columns, got {n_cols!r}")


def plan_pack(w_raw, type_name: str, n_cols: int) -> PackLaunch:
    """Validate a GGUF weight buffer [rows, row_bytes] for `pack_weights` on the host."""
    check_packable(type_name, n_cols)
    rows, rb = check_weight_rows(w_raw, type_name, n_cols)
    units = int(n_cols) // UNIT
    tiles, groups = -(-rows // 16), int(n_cols) // GROUP
    threads = tiles * groups * 32
    return PackLaunch(f"pack_{type_name.lower()}", (-(-threads // PACK_THREADS), 1, 1), (PACK_THREADS, 1, 1), rows, rb,
                      units, tiles * groups * record_words(type_name))


def pack_weights(w_raw, type_name: str, n_cols: int) -> PackedMatrix:
    """The packed copy of GGUF rows w_raw (uint8 [rows, row_bytes] on the GPU), made on the GPU."""
    import cupy

    plan = plan_pack(w_raw, type_name, n_cols)
    require_device_arrays(w_raw=w_raw)
    data = cupy.zeros(plan.words, dtype=cupy.uint32)  # a padded record's unused words: zero
    load_module(MODULE).get_function(plan.entry)(
        plan.grid, plan.block, (w_raw, np.int64(plan.row_bytes), np.int32(plan.rows), np.int32(plan.units), data))
    return PackedMatrix(data, type_name, plan.rows, int(n_cols))


def plan_packed_x(x) -> tuple[int, int]:
    """(N, K) after checking x is float32 [N, K], C-contiguous, with K a positive multiple of 64."""
    check_array("x", x, dtype=np.float32, ndim=2)
    n, k = (int(v) for v in x.shape)
    if k <= 0 or k % GROUP:
        raise ValueError(f"x: packed MMA needs rows of a positive multiple of {GROUP} values, got shape {tuple(x.shape)}")
    if not 1 <= n <= MAX_N:
        raise ValueError(f"x: need 1 <= N <= {MAX_N} tokens (rows), got {n}")
    return n, k


def packed_x_buffers(n: int, k: int):
    """(xf, inv) to hold the fragment-ordered rows of N tokens of K values: uint32 [ceil(N / 8) * K / 64 * 256] and
    float32 [N]. The words of the last tile's padding tokens are never written nor read."""
    import cupy

    return (cupy.empty(-(-n // 8) * (k // GROUP) * X_RECORD_WORDS, dtype=cupy.uint32),
            cupy.empty((n,), dtype=cupy.float32))


def packed_x(x):
    """(xf, inv) (packed_x_buffers) for float32 x [N, K]: f16_rows' fp16 rows and inv in mma fragment order."""
    n, k = plan_packed_x(x)
    require_device_arrays(x=x)
    xf, inv = packed_x_buffers(n, k)
    load_module(MODULE).get_function("packed_x")((n, 1, 1), (X_THREADS, 1, 1), (x, np.int32(k), xf, inv))
    return xf, inv


@dataclass(frozen=True)
class PackedLaunch:
    entry: str
    tile: Tile
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    rows: int
    units: int
    n: int
    slices: int
    chunks: int


def plan_packed_mma(w: PackedMatrix, x, *, out=None, tile: str | None = None,
                    slices: int | None = None, chunks: int | None = None, carry: bool | None = None) -> PackedLaunch:
    """Validate the arguments of `packed_mma_matvec` on the host. x: float32 [N, K], or the pair (xf, inv) from
    `packed_x` (then N is inv's length). carry: launch a WALK_TILES entry's carried ring where a block walks several
    chunks (default ENV_CARRY)."""
    if not isinstance(w, PackedMatrix):
        raise ValueError(f"w: expected a PackedMatrix from pack_weights, got {type(w).__name__}")
    check_packable(w.type_name, w.n_cols)
    units = w.n_cols // UNIT
    if isinstance(x, tuple):
        if len(x) != 2:
            raise ValueError(f"x: expected float32 [N, {w.n_cols}] or the pair (xf, inv) from packed_x, got a tuple "
                             f"of {len(x)}")
        xf, inv = x
        check_array("x[1] (inv)", inv, dtype=np.float32, ndim=1)
        n_tok = int(inv.shape[0])
        want = -(-n_tok // 8) * (w.n_cols // GROUP) * X_RECORD_WORDS
        check_array("x[0] (xf)", xf, dtype=np.uint32, ndim=1, shape=(want,), align=16)
    else:
        n_tok, k = plan_packed_x(x)
        if k != w.n_cols:
            raise ValueError(f"x: expected {w.n_cols} columns (the matrix's), got {k}")
    if not 1 <= n_tok <= MAX_N:
        raise ValueError(f"x: need 1 <= N <= {MAX_N} tokens, got {n_tok}")
    if out is not None:
        check_array("out", out, dtype=np.float32, ndim=2, shape=(n_tok, w.rows), align=4)
    if tile is not None and tile not in TILES:
        raise ValueError(f"tile: expected one of {sorted(TILES)}, got {tile!r}")
    if slices is not None and not (isinstance(slices, int) and 1 <= slices <= units):
        raise ValueError(f"slices: expected an int in 1..{units} (K has {units} blocks), got {slices!r}")
    if chunks is not None and not (isinstance(chunks, int) and 1 <= chunks <= units):
        raise ValueError(f"chunks: expected an int in 1..{units} (K has {units} blocks), got {chunks!r}")
    chosen = TILES[tile] if tile is not None else choose_tile(n_tok, w.rows, w.n_cols)
    k_chunks = chunks if chunks is not None else slices if slices is not None else split_k_slices(w.rows, units)
    k_slices = k_chunks if slices is None else slices
    if k_chunks % k_slices:
        raise ValueError(f"slices: {k_slices} blocks cannot walk {k_chunks} K chunks (chunks must be a multiple of "
                         "slices)")
    grid = (-(-w.rows // chosen.bm), -(-n_tok // chosen.bn), k_slices)
    if grid[1] > 65535:
        raise ValueError(f"x: N={n_tok} tokens need more than 65535 token tiles of {chosen.bn}")
    if k_chunks > 1 and grid[0] * grid[1] > COUNTER_SLOTS:
        raise ValueError(f"x: N={n_tok} tokens x {w.rows} rows make {grid[0] * grid[1]} tiles, more than the "
                         f"{COUNTER_SLOTS} split-K counters")
    walks = (k_chunks > k_slices and w.type_name in WALK_TYPES and chosen.name in WALK_TILES
             and (carry_from_env() if carry is None else carry))
    return PackedLaunch(f"packed_mma_{w.type_name.lower()}_{chosen.name}" + ("_w" if walks else ""), chosen, grid,
                        (32 * WARPS, 1, 1), w.rows, units, n_tok, k_slices, k_chunks)


def plan_packed_group(members, x, *, outs=None, tile: str | None = None, slices: int | None = None,
                      chunks: int | None = None, carry: bool | None = None) -> list[PackedLaunch]:
    """Validate a grouped launch on the host: each member PackedMatrix as plan_packed_mma does, and the members
    share what one launch must (type, columns, K split, tile). Returns one plan per member."""
    members = list(members)
    outs = group_outs(members, outs, "packed-MMA")
    plans = [plan_packed_mma(w, x, out=o, tile=tile, slices=slices, chunks=chunks, carry=carry)
             for w, o in zip(members, outs)]
    first, w0 = plans[0], members[0]
    for i, (w, plan) in enumerate(zip(members[1:], plans[1:]), 1):
        if ((w.type_name, w.n_cols, plan.slices, plan.chunks, plan.tile)
                != (w0.type_name, w0.n_cols, first.slices, first.chunks, first.tile)):
            raise ValueError(f"members[{i}]: {w.type_name} {w.rows}x{w.n_cols} with {plan.slices} K slices "
                             f"({plan.chunks} chunks) and tile {plan.tile.name} cannot share a launch with member 0 "
                             f"({w0.type_name} {w0.rows}x{w0.n_cols} with {first.slices} ({first.chunks}), "
                             f"{first.tile.name}): a grouped launch needs one type, column count, K split and tile")
    check_group_counters(plans, split=first.chunks)
    return plans


def packed_mma_group(members, x, *, outs=None, tile: str | None = None, slices: int | None = None,
                     chunks: int | None = None, sums: str | None = None, carry: bool | None = None) -> list:
    """[x @ W_m.T for each member PackedMatrix W_m] in one launch (packed_mma.cu: a block runs the member whose row
    tiles hold its blockIdx.x): the members read the same activations and share type, K and K split (the 12B's
    q/k/v and gate/up do); each output has the bits of its own packed_mma_matvec launch. x as in packed_mma_matvec
    (converted once for all members when float32). sums: how a split adds its slices (SUMS; default ENV_SUMS); carry:
    as plan_packed_mma (default ENV_CARRY; the same bits)."""
    plans = plan_packed_group(members, x, outs=outs, tile=tile, slices=slices, chunks=chunks, carry=carry)
    outs = [None] * len(plans) if outs is None else list(outs)
    if not isinstance(x, tuple):
        require_device_arrays(x=x)
        x = packed_x(x)
    xf, inv = x
    require_device_arrays(xf=xf, inv=inv, **{f"outs[{i}]": o for i, o in enumerate(outs)})
    first = plans[0]
    per = first.chunks // first.slices
    cluster = (uses_cluster(first.slices, sums, first.chunks)
               and cluster_shared_bytes(first.tile, per) <= CLUSTER_SHARED_MAX)
    # a cluster launch adds its chunks in shared memory: no partial sums nor counters (y stands in for both)
    made = [split_k_outputs(p.n, p.rows, 1 if cluster else p.chunks, o) for p, o in zip(plans, outs)]
    ys, parts, counters = [m[0] for m in made], [m[1] for m in made], made[0][2]
    grid, bounds = group_grid(plans)
    launch = dict(shared_mem=cluster_shared_bytes(first.tile, per), cluster=(1, 1, first.slices)) if cluster else {}
    load_module(MODULE).get_function(first.entry)(
        grid, first.block,
        (*pad_group([w.data for w in members], members[0].data),
         *[np.int32(v) for v in pad_group([p.rows for p in plans], 0)], *bounds, *pad_group(ys, ys[0]),
         *pad_group(parts, parts[0]), np.int32(first.units), xf, inv, np.int32(first.n), np.int32(first.slices),
         counters, np.int32(cluster), np.int32(first.chunks)), **launch)
    return ys


def packed_mma_matvec(w: PackedMatrix, x, *, out=None, tile: str | None = None, slices: int | None = None,
                      chunks: int | None = None, sums: str | None = None, carry: bool | None = None):
    """y [N, rows] float32 = x @ W.T with fp16 operands and float32 accumulation (see module).

    x: float32 [N, K] or (xf, inv) from packed_x. tile: force one of TILES (tests run every one; the same bits);
    chunks: force the K split (tests compare with dq_mma at the same split; other chunks give other bits; default
    `slices`, else the shape's split_k_slices); slices: the blocks that walk the chunks (a divisor of chunks; the
    same bits whatever it is; default chunks); sums: how a split adds its chunks (SUMS; the same bits); carry: the
    carried ring's entry where a block walks several chunks (WALK_TILES; default ENV_CARRY; the same bits). A group
    of one (packed_mma_group)."""
    return packed_mma_group([w], x, outs=[out], tile=tile, slices=slices, chunks=chunks, sums=sums, carry=carry)[0]
