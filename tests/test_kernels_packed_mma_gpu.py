"""Tests of kernels/packed_mma.py (packed-weight MMA: Q4_0 / Q4_K / Q6_K weights repacked at load into mma fragment order,
fp16 tensor cores with float32 accumulation), one case per (type, shape, N), one compare harness, guard bytes.

GPU (marked `gpu`):
  * the GPU pack and activation kernels write kernels/reference/packed.py's records bit for bit (whose layout a CPU
    test ties to the PTX fragment tables: tests/test_kernels_packed_host.py);
  * per case and every tile: the NaN-poisoned output is fully written and its guards intact; every output is BITWISE
    dequant-MMA's shared-memory tile at the same K slices (the same fp16 operands in the same mma slots and chain:
    the .cu header), at the shape's own slices and at a split whose bounds fall inside a 64-value group; and within
    the float32 accumulation bound of the float64 product of the fp16 operands;
  * batch invariance, bitwise: a needle token at a random slot of N-token launches equals the N = 1 launch, on every
    tile; a repeated launch gives the same bits;
  * a grouped launch gives each member its own launch's bits; the producers that write packed_x of their output
    in their own launch (the fused norm, gelu * up) write packed_x's bits; so do both kernels of gelu * up (one block
    a row; a thread block cluster a row) at K = 64 .. 15360, N = 1 .. 17, on rows of every exponent case.
CPU (no mark): host-side validation and the launcher / .cu agreement.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

from gemma_oracle.kernels._compile import source_path
from gemma_oracle.kernels.mmq import GROUP_MAX, split_k_slices
from gemma_oracle.kernels.packed_mma import (CLUSTER_MAX, ENV_SUMS, ENV_TILES, ENV_WALK, PACKED_TYPES,
                                             SHAPE_SLICE_CAP, SLICE_CAP, SLICE_CAP_MIN_N, SUMS, TILE_RULES, TILES,
                                             WALK_TILES, WALK_TYPES, PackedMatrix,
                                             choose_tile, cluster_shared_bytes, packed_split, plan_pack,
                                             plan_packed_group, plan_packed_mma, plan_packed_x, sums_from_env,
                                             uses_cluster, walk_from_env)
from gemma_oracle.kernels.reference import packed as ref
from gemma_oracle.kernels.reference.f16_operands import dequant_f16, f16_rows as f16_rows_host
from tests.kernel_support import GuardedOutput, activations, first_bit_difference, quantized_weights

try:  # collection must work without cupy; the gpu marker makes the plugin skip these items with its reason
    import cupy as cp
except ImportError:  # pragma: no cover - exercised only on machines without cupy
    cp = None

gpu = pytest.mark.gpu

ACC_BOUND_ULPS = 4  # as tests/test_kernels_dq_mma_gpu.py: 4 ulps a float32 add, (K / 16 + slices) adds
DQ_SMEM_TILE = "w4_m1_bn8_kb4_pf0"  # the dequant-MMA tile packed MMA equals bit for bit

# rows: tails of the 64- and 128-row blocks (1, 7, 77, 130, 2096 = 16 * 131); cols: 4 to 17 groups of 64
SHAPES = {"Q4_0": ((1, 256), (7, 320), (77, 832), (130, 2560), (2096, 1088)),
          "Q4_K": ((1, 256), (7, 512), (77, 768), (130, 2560), (2096, 1024)),
          "Q6_K": ((1, 256), (7, 512), (77, 768), (130, 2560), (2096, 1024))}
NS = (1, 2, 5, 8, 9, 16, 17, 32, 33, 64)
CASES = [(t, rows, cols, n) for t in PACKED_TYPES for rows, cols in SHAPES[t] for n in NS]


def _id(case) -> str:
    t, rows, cols, n = case
    return f"{t.lower()}-r{rows}-c{cols}-n{n}"


def _host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


def _odd_slices(units: int) -> int:
    """A K split with a bound inside a 64-value group (an odd block index), where one exists."""
    for s in (3, 5, 7, 2):
        if s <= units and any((z * units // s) % 2 for z in range(1, s)):
            return s
    return 1


@gpu
@pytest.mark.parametrize("t", PACKED_TYPES)
@pytest.mark.parametrize("shape", range(5))
def test_pack_kernel_writes_the_reference_records(t, shape):
    from gemma_oracle.kernels.packed_mma import pack_weights

    rows, cols = SHAPES[t][shape]
    raw = quantized_weights(t, rows, cols)
    packed = pack_weights(cp.asarray(raw), t, cols)
    diff = first_bit_difference(_host(packed.data), ref.pack(raw, t, cols))
    assert not diff, f"{t} {rows}x{cols}: packed records differ from the reference: {diff}"


@gpu
@pytest.mark.parametrize("n", (1, 5, 8, 9, 33))
def test_packed_x_writes_the_reference_records(n):
    """f16_rows' values and inv in fragment order (the words of tokens < N), on rows that exercise the scale."""
    from gemma_oracle.kernels.packed_mma import packed_x

    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, 1088)).astype(np.float32)
    x[0] *= np.float32(3e4)
    if n > 2:
        x[1] = 0.0
        x[2, :8] = np.float32(1e-41)  # float32 subnormals in a row with normal values
    xf, inv = packed_x(cp.asarray(x))
    want_xf, want_inv = ref.x_fragments(x)
    live = ref.x_written(n, 1088)  # the padding tokens' words are left unwritten
    assert not first_bit_difference(_host(xf)[live], want_xf[live]), "activation records differ from the reference"
    assert not first_bit_difference(_host(inv), want_inv), "inv differs from the reference"


@gpu
@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_packed_mma_case(case):
    from gemma_oracle.kernels.dq_mma import dq_mma_matvec
    from gemma_oracle.kernels.packed_mma import pack_weights, packed_mma_matvec

    t, rows, cols, n = case
    raw, x = quantized_weights(t, rows, cols), activations(n, cols, "packed_mma", t, rows)
    w_dev, x_dev = cp.asarray(raw), cp.asarray(x)
    packed = pack_weights(w_dev, t, cols)
    units = cols // 32
    w16 = dequant_f16(raw, t, cols).astype(np.float64)
    x16, inv = f16_rows_host(x)
    xs = x16.astype(np.float64) * inv.astype(np.float64)[:, None]
    for slices in sorted({split_k_slices(rows, units), min(split_k_slices(rows, units), CLUSTER_MAX),
                          _odd_slices(units)}):
        want = _host(dq_mma_matvec(w_dev, t, cols, x_dev, tile=DQ_SMEM_TILE, slices=slices))
        bound = ACC_BOUND_ULPS * 2.0**-24 * (cols // 16 + slices) * (np.abs(xs) @ np.abs(w16).T)
        # a split adds its slices through a cluster's shared memory (up to CLUSTER_MAX) or the counted split
        for tile, sums in [(tile, sums) for tile in TILES for sums in (SUMS if slices > 1 else ("counters",))]:
            out = GuardedOutput(cp, (n, rows), np.float32)
            out.view[...] = np.nan
            packed_mma_matvec(packed, x_dev, out=out.view, tile=tile, slices=slices, sums=sums)
            what = f"{tile} slices {slices} ({sums if uses_cluster(slices, sums) else 'counters'})"
            before, after = out.guards_intact()
            assert before and after, f"{what}: guard overwritten ({before}, {after})"
            y = _host(out.view)
            assert np.isfinite(y).all(), f"{what}: {int((~np.isfinite(y)).sum())} outputs not written or not finite"
            err = np.abs(y.astype(np.float64) - xs @ w16.T)
            assert (err <= bound).all(), f"{what}: beyond the accumulation bound ({err.max():.3e})"
            diff = first_bit_difference(y, want)
            assert not diff, f"{what}: differs from dequant-MMA {DQ_SMEM_TILE}: {diff}"


# (rows, cols, chunks): the 12B's 4096 x 3840 and 3840 x 15360 splits (8 chunks), 6 chunks of a 130-row matrix, and
# chunk bounds inside a 64-value group (15 blocks a chunk of 120)
CHUNK_CASES = ((4096, 3840, 8), (3840, 15360, 8), (130, 2560, 6), (64, 3840, 8))


@gpu
@pytest.mark.parametrize("t", PACKED_TYPES)
@pytest.mark.parametrize("rows,cols,chunks", CHUNK_CASES)
def test_packed_mma_chunks_walked_by_fewer_blocks_keep_the_bits(t, rows, cols, chunks):
    """K in `chunks` chunks walked by `slices` blocks (chunks / slices each: packed_split's batch-invariant walk from
    SLICE_CAP_MIN_N tokens) is bitwise one block a chunk, for every divisor of chunks, both sums, at N = 1, 16, 33, on
    a grouped launch too; the plan refuses a slice count that does not divide the chunks."""
    from gemma_oracle.kernels.packed_mma import pack_weights, packed_mma_group, packed_mma_matvec, packed_x

    raw = quantized_weights(t, rows, cols)
    packed = pack_weights(cp.asarray(raw), t, cols)
    other = pack_weights(cp.asarray(quantized_weights(t, 77, cols)), t, cols)
    for n in (1, 16, 33):
        xf = packed_x(cp.asarray(activations(n, cols, "packed_mma_chunks", t, rows)))
        want = _host(packed_mma_matvec(packed, xf, slices=chunks, sums="counters"))
        want_other = _host(packed_mma_matvec(other, xf, slices=chunks, sums="counters"))
        for slices in [d for d in range(1, chunks + 1) if chunks % d == 0]:
            for sums in SUMS:
                what = f"N={n} {chunks} chunks on {slices} slices ({sums})"
                out = GuardedOutput(cp, (n, rows), np.float32)
                out.view[...] = np.nan
                packed_mma_matvec(packed, xf, out=out.view, slices=slices, chunks=chunks, sums=sums)
                before, after = out.guards_intact()
                assert before and after, f"{what}: guard overwritten ({before}, {after})"
                diff = first_bit_difference(_host(out.view), want)
                assert not diff, f"{what}: differs from one block a chunk: {diff}"
                ys = packed_mma_group([packed, other], xf, slices=slices, chunks=chunks, sums=sums)
                assert not first_bit_difference(_host(ys[0]), want), f"{what}: grouped member 0 differs"
                assert not first_bit_difference(_host(ys[1]), want_other), f"{what}: grouped member 1 differs"
    with pytest.raises(ValueError, match="cannot walk"):
        plan_packed_mma(packed, np.zeros((1, cols), np.float32), slices=3, chunks=8)


@gpu
@pytest.mark.parametrize("t", WALK_TYPES)
@pytest.mark.parametrize("tile", WALK_TILES)
def test_carried_ring_entries_keep_the_bits(t, tile):
    """The entries whose register ring runs on across a block's K chunks (suffix _w: launched when chunks > slices)
    are bitwise one block a chunk (the loop per chunk), forced onto each walk tile: chunk bounds inside a 64-value
    group (15 blocks a chunk) and on one, chunks shorter than the ring (130 x 512: 2 blocks a chunk), N = 1, 16, 33
    (a padded token tile), both sums, a grouped launch, guard bytes; the plan names the _w entry only when a block
    walks several chunks of a walk type, and GEMMA_ORACLE_PACKED_CARRY=1 or carry=True asks for it."""
    from gemma_oracle.kernels.packed_mma import pack_weights, packed_mma_group, packed_mma_matvec, packed_x

    for rows, cols, chunks in ((64, 3840, 8), (4096, 3840, 8), (130, 512, 8), (130, 2560, 4)):
        packed = pack_weights(cp.asarray(quantized_weights(t, rows, cols)), t, cols)
        other = pack_weights(cp.asarray(quantized_weights(t, 77, cols)), t, cols)
        for n in (1, 16, 33):
            xf = packed_x(cp.asarray(activations(n, cols, "packed_mma_walk", t, rows)))
            want = _host(packed_mma_matvec(packed, xf, tile=tile, slices=chunks, chunks=chunks, sums="counters"))
            want_other = _host(packed_mma_matvec(other, xf, tile=tile, slices=chunks, chunks=chunks))
            for slices in [d for d in range(1, chunks) if chunks % d == 0]:
                assert plan_packed_mma(packed, xf, tile=tile, slices=slices, chunks=chunks, carry=True).entry \
                    .endswith("_w")
                assert not plan_packed_mma(packed, xf, tile=tile, slices=slices, chunks=chunks, carry=False).entry \
                    .endswith("_w")
                for sums in SUMS:
                    what = f"{tile} {rows}x{cols} N={n} {chunks} chunks on {slices} slices ({sums})"
                    out = GuardedOutput(cp, (n, rows), np.float32)
                    out.view[...] = np.nan
                    packed_mma_matvec(packed, xf, out=out.view, tile=tile, slices=slices, chunks=chunks, sums=sums,
                                      carry=True)
                    before, after = out.guards_intact()
                    assert before and after, f"{what}: guard overwritten ({before}, {after})"
                    diff = first_bit_difference(_host(out.view), want)
                    assert not diff, f"{what}: differs from one block a chunk: {diff}"
                    ys = packed_mma_group([packed, other], xf, tile=tile, slices=slices, chunks=chunks, sums=sums,
                                          carry=True)
                    assert not first_bit_difference(_host(ys[0]), want), f"{what}: grouped member 0 differs"
                    assert not first_bit_difference(_host(ys[1]), want_other), f"{what}: grouped member 1 differs"
    assert not plan_packed_mma(packed, xf, tile=tile, slices=chunks, chunks=chunks, carry=True).entry.endswith("_w")


@gpu
@pytest.mark.parametrize("t", PACKED_TYPES)
def test_packed_mma_batch_invariant(t):
    """A needle token at a random slot of N-token launches is bitwise the N = 1 launch, on every tile; a repeated
    launch gives the same bits."""
    from gemma_oracle.kernels.packed_mma import pack_weights, packed_mma_matvec

    rows, cols = 2096, 1024
    packed = pack_weights(cp.asarray(quantized_weights(t, rows, cols)), t, cols)
    rng = np.random.default_rng(3)
    needle = activations(1, cols, "needle", t)
    alone = _host(packed_mma_matvec(packed, cp.asarray(needle)))
    for n in (2, 7, 8, 9, 16, 17, 31, 32, 40):
        x = activations(n, cols, "batch", t, n) * rng.uniform(0.1, 10.0, size=(n, 1)).astype(np.float32)
        slot = int(rng.integers(n))
        x[slot] = needle[0]
        for tile in TILES:
            y = _host(packed_mma_matvec(packed, cp.asarray(x), tile=tile))
            diff = first_bit_difference(y[slot], alone[0])
            assert not diff, f"N={n} slot {slot} tile {tile}: {diff}"
            again = _host(packed_mma_matvec(packed, cp.asarray(x), tile=tile))
            assert not first_bit_difference(y, again), f"N={n} tile {tile}: not deterministic"


@gpu
@pytest.mark.parametrize("n", (1, 3, 8, 9))
@pytest.mark.parametrize("d", (3840, 1088))
def test_producers_write_packed_x_of_their_output(n, d):
    """add_rms_norm_rms_norm(packed=True) and gelu_tanh_mul(packed=True) write, in their own launch, the records
    packed_x writes for their output (the words of tokens < N and inv, bit for bit); their other outputs are the
    plain launches' bits."""
    from gemma_oracle.kernels.ffn_act import gelu_tanh_mul
    from gemma_oracle.kernels.fused_norms import add_rms_norm_rms_norm
    from gemma_oracle.kernels.packed_mma import packed_x

    rng = np.random.default_rng(n * d)
    h, x = (cp.asarray(rng.standard_normal((n, d)).astype(np.float32) * np.float32(s)) for s in (40.0, 3.0))
    w_add, w_next = (cp.asarray(rng.uniform(0.5, 2.0, d).astype(np.float32)) for _ in range(2))
    live = ref.x_written(n, d)
    h2, y, (xf, inv) = add_rms_norm_rms_norm(h, x, w_add, w_next, 1e-6, 0.5, quantize=False, packed=True)
    h2_plain, y_plain, none = add_rms_norm_rms_norm(h, x, w_add, w_next, 1e-6, 0.5, quantize=False)
    assert none is None
    assert not first_bit_difference(_host(h2), _host(h2_plain)) and not first_bit_difference(_host(y), _host(y_plain))
    want_xf, want_inv = packed_x(y_plain)
    assert not first_bit_difference(_host(xf)[live], _host(want_xf)[live]), "norm: records differ from packed_x(y)"
    assert not first_bit_difference(_host(inv), _host(want_inv)), "norm: inv differs from packed_x(y)"
    gate, up = h, x
    act, (xf, inv) = gelu_tanh_mul(gate, up, packed=True)
    act_plain = gelu_tanh_mul(gate, up)
    assert not first_bit_difference(_host(act), _host(act_plain))
    want_xf, want_inv = packed_x(act_plain)
    assert not first_bit_difference(_host(xf)[live], _host(want_xf)[live]), "gelu: records differ from packed_x(y)"
    assert not first_bit_difference(_host(inv), _host(want_inv)), "gelu: inv differs from packed_x(y)"


# gelu_tanh_mul(packed=True)'s two kernels (kernels/packed_out.py): 1 to 240 groups of 64 (clusters of 1, 2, 3 and 8
# blocks, 8 with 30 groups each at the 12B ffn's 15360), token tiles with and without padding tokens
GELU_PACKED_KS = (64, 128, 192, 640, 3840, 15360)
GELU_PACKED_ROWS = (1, 3, 9, 17)
GELU_ROW_KINDS = 6


def _gelu_packed_inputs(n: int, k: int, shift: int) -> tuple[np.ndarray, np.ndarray]:
    """gate, up [n, k] whose row r gives y the exponent case (r + shift) % 6: 0, normal values with the row's max
    planted in its last group (the last cluster block's); 1, all zero (signed zeros); 2, a max near float32's largest
    (e = -113); 3, a max below 2^-112 (e clamped at 126; most values subnormal); 4, only subnormals (e = 0); 5, inf and
    NaN among large values (fmaxf drops the NaN; inf sets e)."""
    rng = np.random.default_rng(k * 1000 + n * 10 + shift)
    gate = (rng.standard_normal((n, k)) * 3).astype(np.float32)
    up = rng.standard_normal((n, k)).astype(np.float32)
    for r in range(n):
        kind = (r + shift) % GELU_ROW_KINDS
        if kind == 0:
            i = k - 1 - int(rng.integers(64))
            gate[r, i], up[r, i] = 40.0, -100.0
        elif kind == 1:
            up[r] = 0.0
        elif kind == 2:  # gelu(x) = x for such x: |y| < 2e18 * 8e19
            gate[r] = rng.uniform(1e18, 2e18, k).astype(np.float32)
            up[r] = rng.uniform(-8e19, 8e19, k).astype(np.float32)
        elif kind == 3:
            gate[r] *= np.float32(1e-17)
            up[r] *= np.float32(1e-19)
        elif kind == 4:
            gate[r] *= np.float32(1e-20)
            up[r] *= np.float32(1e-20)
        else:
            up[r] *= np.float32(1e30)
            i, j = rng.choice(k, 2, replace=False)
            gate[r, i], gate[r, j] = np.inf, np.nan
    return gate, up


@gpu
@pytest.mark.parametrize("n", GELU_PACKED_ROWS)
@pytest.mark.parametrize("k", GELU_PACKED_KS)
def test_gelu_tanh_mul_packed_kernels_write_packed_x_of_gelu_tanh_mul(k, n, monkeypatch):
    """Both kernels of gelu_tanh_mul(packed=True), and the launcher's own choice (cluster=None), write y bitwise
    gelu_tanh_mul(gate, up) and (xf, inv) bitwise packed_x(y) (the words of tokens < N, and inv): into poisoned
    buffers (a word, inv or y left unwritten fails), and in place over gate; on rows of every exponent case."""
    from gemma_oracle.kernels import packed_mma
    from gemma_oracle.kernels.ffn_act import gelu_tanh_mul
    from gemma_oracle.kernels.launch import device_is_sm90

    fresh = packed_mma.packed_x_buffers

    def poisoned(rows: int, cols: int):
        xf, inv = fresh(rows, cols)
        xf.fill(0xFFFFFFFF)  # fp16 NaN 0xFFFF twice: no word of a finite or canonical-NaN value
        inv.fill(np.nan)
        return xf, inv

    monkeypatch.setattr(packed_mma, "packed_x_buffers", poisoned)  # the launcher's and packed_x's buffers
    kernels = (None, False) + ((True,) if device_is_sm90(cp.cuda.Device().id) else ())
    live = ref.x_written(n, k)
    for shift in range(GELU_ROW_KINDS) if n < GELU_ROW_KINDS else (0,):
        gate_h, up_h = _gelu_packed_inputs(n, k, shift)
        gate, up = cp.asarray(gate_h), cp.asarray(up_h)
        want_y = _host(gelu_tanh_mul(gate, up))
        want_xf, want_inv = (_host(a) for a in packed_mma.packed_x(cp.asarray(want_y)))
        for cluster in kernels:
            out = cp.full((n, k), np.nan, dtype=cp.float32)
            in_place = gate.copy()
            runs = (("into out", out, gelu_tanh_mul(gate, up, out=out, packed=True, cluster=cluster)),
                    ("in place over gate", in_place, gelu_tanh_mul(in_place, up, out=in_place, packed=True,
                                                                   cluster=cluster)))
            for how, buf, (y, (xf, inv)) in runs:
                what = f"K={k} N={n} row kinds from {shift}, cluster={cluster}, {how}"
                assert y is buf, what
                diff = first_bit_difference(_host(y), want_y)
                assert not diff, f"{what}: y differs from gelu_tanh_mul: {diff}"
                diff = first_bit_difference(_host(xf)[live], want_xf[live])
                assert not diff, f"{what}: records differ from packed_x(y): {diff}"
                diff = first_bit_difference(_host(inv), want_inv)
                assert not diff, f"{what}: inv differs from packed_x(y): {diff}"


@gpu
def test_gelu_tanh_mul_cluster_argument():
    """`cluster` belongs to packed=True and is None, False or True; True needs a device with clusters."""
    from gemma_oracle.kernels.ffn_act import gelu_tanh_mul
    from gemma_oracle.kernels.launch import device_is_sm90

    gate, up = (cp.ones((2, 128), dtype=cp.float32) for _ in range(2))
    with pytest.raises(ValueError, match="cluster: given with packed=False"):
        gelu_tanh_mul(gate, up, cluster=False)
    with pytest.raises(ValueError, match="cluster: expected None"):
        gelu_tanh_mul(gate, up, packed=True, cluster="yes")
    if not device_is_sm90(cp.cuda.Device().id):
        with pytest.raises(ValueError, match="cluster: True needs thread block clusters"):
            gelu_tanh_mul(gate, up, packed=True, cluster=True)


GROUP_ROWS = (130, 77, 2096)  # one K split at 1024 columns (asserted), tiles of 64 and 128 rows with tails


@gpu
@pytest.mark.parametrize("t", PACKED_TYPES)
@pytest.mark.parametrize("n", (1, 9, 33))
def test_grouped_launch_gives_each_output_its_own_launchs_bits(t, n):
    """packed_mma_group: 1..3 matrices that read one input in one launch (q/k/v, gate/up), each output bitwise its
    own packed_mma_matvec launch, guards intact, at the shape's K split and unsplit."""
    from gemma_oracle.kernels.packed_mma import pack_weights, packed_mma_group, packed_mma_matvec, packed_x

    cols = 1024
    assert len({split_k_slices(r, cols // 32) for r in GROUP_ROWS}) == 1
    packed = [pack_weights(cp.asarray(quantized_weights(t, r, cols)), t, cols) for r in GROUP_ROWS]
    xf = packed_x(cp.asarray(activations(n, cols, "group", t, n)))
    for slices, sums in ((None, "counters"), (4, "cluster"), (1, "counters")):
        alone = [_host(packed_mma_matvec(w, xf, slices=slices, sums="counters")) for w in packed]
        for size in (1, 2, 3):
            outs = [GuardedOutput(cp, (n, w.rows), np.float32) for w in packed[:size]]
            for o in outs:
                o.view[...] = np.nan
            packed_mma_group(packed[:size], xf, outs=[o.view for o in outs], slices=slices, sums=sums)
            for i, o in enumerate(outs):
                what = f"group of {size}, member {i} ({GROUP_ROWS[i]} rows), slices {slices}, {sums}"
                assert all(o.guards_intact()), f"{what}: guard overwritten"
                diff = first_bit_difference(_host(o.view), alone[i])
                assert not diff, f"{what}: {diff}"


# --- CPU tests -------------------------------------------------------------------------------------------------------

def test_launcher_matches_the_compiled_entries():
    """kernels/packed_mma.py's TILES and PACKED_TYPES are exactly the entries packed_mma.cu compiles."""
    src = source_path("packed_mma").read_text()
    entries = re.findall(r"PK_ENTRY\(name, P, (\d+), (\d+), (\d+), (true|false), (true|false), (_x)?(_w)?\)", src)
    tiles = [e for e in entries if e[4] == "false"]
    assert sorted(f"m{m}_n{nt}_d{d}{x}" for m, nt, d, _, _, x, w in tiles) == sorted(TILES)
    assert all(TILES[f"m{m}_n{nt}_d{d}{x}"].xr == (xr == "true") and not w for m, nt, d, xr, _, x, w in tiles)
    # the carried-ring entries (suffix _w, CARRY true): exactly WALK_TILES, for WALK_TYPES
    walks = [e for e in entries if e[4] == "true"]
    assert sorted(f"m{m}_n{nt}_d{d}{x}" for m, nt, d, _, _, x, w in walks) == sorted(WALK_TILES)
    assert all(w == "_w" and TILES[f"m{m}_n{nt}_d{d}{x}"].xr == (xr == "true") for m, nt, d, xr, _, x, w in walks)
    assert sorted(re.findall(r"^PK_WALK_TILES\((\w+),", src, flags=re.M)) == sorted(t.lower() for t in WALK_TYPES)
    assert sorted(re.findall(r"^PK_TILES\((\w+),", src, flags=re.M)) == sorted(t.lower() for t in PACKED_TYPES)
    assert sorted(re.findall(r"^PK_PACK\((\w+),", src, flags=re.M)) == sorted(t.lower() for t in PACKED_TYPES)
    for n in (1, 8, 9, 16, 17, 32, 64):
        assert choose_tile(n).name in TILES
    assert re.search(r"#define PK_GROUP_MAX (\d+)", src).group(1) == str(GROUP_MAX)
    # the entry's parameters: GROUP_MAX weights, rows, outputs and partial sums each, then the cluster switch and
    # the K chunks last (the launcher's order)
    params = re.search(r"#define PK_PARAMS (.*?)\n#define", src, flags=re.S).group(1)
    for name in ("w", "rows", "y", "part"):
        assert re.findall(rf"\b{name}(\d)\b", params) == [str(i) for i in range(GROUP_MAX)], name
    assert re.search(r"int \*counters, int cluster, int chunks\s*$", params.split("\n//")[0])
    assert re.search(r"#define PK_CLUSTER_MAX (\d+)", src).group(1) == str(CLUSTER_MAX)
    # pk_cluster_store's shared memory: [chunk slot][MT * NT * 4][THREADS] floats
    assert "float* part = pk_part + (size_t)slot * E * THREADS + threadIdx.x;" in src
    assert "part[((m * NT + h) * 4 + e) * THREADS]" in src
    assert cluster_shared_bytes(TILES["m2_n4_d2"]) == 2 * 4 * 4 * 128 * 4
    assert cluster_shared_bytes(TILES["m1_n2_d3_x"], 2) == 2 * 1 * 2 * 4 * 128 * 4


def test_sums_switch(monkeypatch):
    """GEMMA_ORACLE_PACKED_SUMS: cluster (the default) or counters; anything else names the variable."""
    monkeypatch.delenv(ENV_SUMS, raising=False)
    assert sums_from_env() == "cluster"
    monkeypatch.setenv(ENV_SUMS, "counters")
    assert sums_from_env() == "counters"
    monkeypatch.setenv(ENV_SUMS, "cluster")
    assert sums_from_env() == "cluster"
    monkeypatch.setenv(ENV_SUMS, "dsmem")
    with pytest.raises(ValueError, match="GEMMA_ORACLE_PACKED_SUMS='dsmem': expected one of"):
        sums_from_env()
    with pytest.raises(ValueError, match="sums: expected one of"):
        uses_cluster(4, "atomic")


def test_tile_rules_from_the_environment(monkeypatch):
    """GEMMA_ORACLE_PACKED_TILES replaces TILE_RULES (a tuning's choice, timed before it is written down); a value
    that names no tile, or leaves N = 1 without one, is refused with the variable's name."""
    monkeypatch.setenv(ENV_TILES, "1:m1_n1_d4_x, 17:m2_n4_d2,9:m1_n2_d3,17@4:m1_n4_d3")
    assert [choose_tile(n).name for n in (1, 8, 9, 16, 17, 64)] == ["m1_n1_d4_x"] * 2 + ["m1_n2_d3"] * 2 + [
        "m2_n4_d2"] * 2
    # a tall matrix (rows >= 4 cols) takes its own rule from 17 tokens, the others' below
    assert [choose_tile(n, 15360, 3840).name for n in (16, 17, 64)] == ["m1_n2_d3", "m1_n4_d3", "m1_n4_d3"]
    assert choose_tile(17, 15359, 3840).name == "m2_n4_d2"
    for bad, what in (("1:m9_n9_d9", "m9_n9_d9"), ("2:m2_n1_d3", "N = 1"), ("m2_n1_d3", "min_n[@min_aspect]:tile"),
                      ("1@4:m2_n1_d3", "N = 1"), ("1:m2_n1_d3,8@x:m1_n2_d3", "8@x")):
        monkeypatch.setenv(ENV_TILES, bad)
        with pytest.raises(ValueError, match=ENV_TILES) as e:
            choose_tile(4)
        assert what in str(e.value)
    monkeypatch.delenv(ENV_TILES)
    top = max(n for n, _, _ in TILE_RULES)
    assert choose_tile(32) == TILES[dict(((n, a), t) for n, a, t in TILE_RULES)[(top, 0.0)]]


def test_packed_split_caps_chunks_only_where_numbers_may_vary_with_n():
    """A batch-invariant caller keeps one K chunking at every N (the shape's split, capped at SHAPE_SLICE_CAP) and
    from SLICE_CAP_MIN_N tokens walks it with at most SLICE_CAP blocks, each taking whole chunks; a varying caller
    caps the chunks themselves there, and never raises a split (a 4-slice shape stays 4)."""
    for rows, units in ((3840, 480), (3840, 128), (15360, 120), (262144, 120), (512, 120), (2048, 120)):
        own = min(split_k_slices(rows, units), SHAPE_SLICE_CAP)
        for n in (1, 8, 15, 16, 32, 128):
            chunks, slices = packed_split(rows, units, n, vary_with_n=False)
            assert chunks == own and chunks % slices == 0
            assert slices == (own if n < SLICE_CAP_MIN_N else max(d for d in range(1, SLICE_CAP + 1) if own % d == 0))
            capped = packed_split(rows, units, n, vary_with_n=True)
            assert capped == ((min(own, SLICE_CAP),) * 2 if n >= SLICE_CAP_MIN_N else (own, own))
    assert split_k_slices(3840, 480) > SHAPE_SLICE_CAP > SLICE_CAP  # the 12B's 3840 x 15360: both caps change it
    assert packed_split(3840, 480, 32, vary_with_n=False) == (8, 4)  # 2 chunks a block
    assert packed_split(3840, 480, 32, vary_with_n=True) == (4, 4)


def test_packed_walk_switch(monkeypatch):
    """GEMMA_ORACLE_PACKED_WALK: the most blocks a batch-invariant launch walks its chunks with from SLICE_CAP_MIN_N
    tokens (SLICE_CAP when unset); the chunks, hence the bits, never change; anything but 1..8 names the variable."""
    monkeypatch.delenv(ENV_WALK, raising=False)
    assert walk_from_env() == SLICE_CAP
    for walk, want in (("2", (8, 2)), ("8", (8, 8)), ("1", (8, 1)), ("3", (8, 2))):
        monkeypatch.setenv(ENV_WALK, walk)
        assert packed_split(3840, 480, 32, vary_with_n=False) == want
        assert packed_split(3840, 480, 8, vary_with_n=False) == (8, 8)  # below SLICE_CAP_MIN_N: a block a chunk
        assert packed_split(3840, 480, 32, vary_with_n=True) == (4, 4)  # auto caps its chunks instead
    for bad in ("0", "9", "two"):
        monkeypatch.setenv(ENV_WALK, bad)
        with pytest.raises(ValueError, match=f"GEMMA_ORACLE_PACKED_WALK='{bad}': expected"):
            walk_from_env()


def test_packed_carry_switch(monkeypatch):
    """GEMMA_ORACLE_PACKED_CARRY=1: a launch whose blocks walk several K chunks on a WALK_TILES tile of a WALK_TYPES
    matrix names the carried ring's entry (suffix _w); one block a chunk, another tile or Q6_K never does; unset is
    DEFAULT_CARRY; anything but 0 / 1 names the variable."""
    from gemma_oracle.kernels.packed_mma import DEFAULT_CARRY, ENV_CARRY, carry_from_env

    w = PackedMatrix(None, "Q4_0", 4096, 3840)
    x = np.zeros((32, 3840), np.float32)
    monkeypatch.delenv(ENV_CARRY, raising=False)
    assert carry_from_env() == (DEFAULT_CARRY == "1")
    monkeypatch.setenv(ENV_CARRY, "1")
    assert plan_packed_mma(w, x, tile="m1_n2_d3_x", slices=4, chunks=8).entry == "packed_mma_q4_0_m1_n2_d3_x_w"
    assert plan_packed_mma(w, x, tile="m1_n2_d3_x", slices=8, chunks=8).entry == "packed_mma_q4_0_m1_n2_d3_x"
    assert plan_packed_mma(w, x, tile="m2_n2_d2", slices=4, chunks=8).entry == "packed_mma_q4_0_m2_n2_d2"
    assert plan_packed_mma(PackedMatrix(None, "Q6_K", 4096, 3840), x, tile="m1_n4_d3", slices=2, chunks=8).entry \
        == "packed_mma_q6_k_m1_n4_d3"
    assert plan_packed_mma(w, x, tile="m1_n4_d3", slices=2, chunks=8, carry=False).entry == "packed_mma_q4_0_m1_n4_d3"
    monkeypatch.setenv(ENV_CARRY, "0")
    assert plan_packed_mma(w, x, tile="m1_n2_d3_x", slices=4, chunks=8).entry == "packed_mma_q4_0_m1_n2_d3_x"
    assert plan_packed_mma(w, x, tile="m1_n2_d3_x", slices=4, chunks=8, carry=True).entry.endswith("_w")
    monkeypatch.setenv(ENV_CARRY, "yes")
    with pytest.raises(ValueError, match="GEMMA_ORACLE_PACKED_CARRY='yes': expected"):
        plan_packed_mma(w, x, tile="m1_n2_d3_x", slices=4, chunks=8)


def test_q4_0_pad_switch(monkeypatch):
    """GEMMA_ORACLE_PACKED_Q4_0_PAD=1 (opt-in): the kernels compile with 40-uint4 Q4_0 records, the launcher and the
    reference packer both size a Q4_0 record at 160 words (the reference's extra words zero) and the other types
    keep theirs; unset or 0 is the 144-word layout; anything else names the variable."""
    from gemma_oracle.kernels._compile import nvrtc_options
    from gemma_oracle.kernels.packed_mma import RECORD_WORDS, record_words

    monkeypatch.delenv("GEMMA_ORACLE_PACKED_Q4_0_PAD", raising=False)
    assert record_words("Q4_0") == ref.record_words("Q4_0") == 144
    assert not any(o.startswith("-DPK_Q4_0_RECORD") for o in nvrtc_options())
    monkeypatch.setenv("GEMMA_ORACLE_PACKED_Q4_0_PAD", "1")
    assert "-DPK_Q4_0_RECORD=40" in nvrtc_options()
    assert record_words("Q4_0") == ref.record_words("Q4_0") == 160
    assert [record_words(t) for t in ("Q4_K", "Q6_K")] == [RECORD_WORDS["Q4_K"], RECORD_WORDS["Q6_K"]]
    raw = quantized_weights("Q4_0", 16, 128)
    padded = ref.pack(raw, "Q4_0", 128).reshape(1, 2, 160)
    monkeypatch.setenv("GEMMA_ORACLE_PACKED_Q4_0_PAD", "0")
    plain = ref.pack(raw, "Q4_0", 128).reshape(1, 2, 144)
    assert np.array_equal(padded[:, :, :144], plain) and not padded[:, :, 144:].any()
    monkeypatch.setenv("GEMMA_ORACLE_PACKED_Q4_0_PAD", "2")
    with pytest.raises(ValueError, match="GEMMA_ORACLE_PACKED_Q4_0_PAD='2': expected"):
        nvrtc_options()


def test_host_validation_names_what_is_wrong():
    raw = quantized_weights("Q4_K", 7, 512)
    with pytest.raises(ValueError, match="packed MMA supports"):
        plan_pack(quantized_weights("Q5_K", 7, 512), "Q5_K", 512)
    with pytest.raises(ValueError, match="multiple of 64"):
        plan_pack(quantized_weights("Q4_0", 7, 288), "Q4_0", 288)
    with pytest.raises(ValueError, match="bytes"):
        plan_pack(np.ascontiguousarray(raw[:, :-16]), "Q4_K", 512)
    with pytest.raises(ValueError, match="multiple of 64"):
        plan_packed_x(np.zeros((3, 96), np.float32))
    w = PackedMatrix(np.zeros(7 * 160 * 8, np.uint32), "Q4_K", 7, 512)
    with pytest.raises(ValueError, match="512 columns"):
        plan_packed_mma(w, np.zeros((3, 256), np.float32))
    with pytest.raises(ValueError, match="x\\[0\\] \\(xf\\)"):
        plan_packed_mma(w, (np.zeros(10, np.uint32), np.zeros(3, np.float32)))
    with pytest.raises(ValueError, match="tile"):
        plan_packed_mma(w, np.zeros((3, 512), np.float32), tile="m9_n9_d9")
    with pytest.raises(ValueError, match="PackedMatrix"):
        plan_packed_mma(raw, np.zeros((3, 512), np.float32))
    plan = plan_packed_mma(w, np.zeros((33, 512), np.float32))
    assert plan.grid == (1, -(-33 // plan.tile.bn), split_k_slices(7, 16)) and plan.entry.startswith("packed_mma_q4_k_")


def test_group_validation_names_the_member_that_cannot_share():
    def w(t, rows, cols):
        return PackedMatrix(np.zeros(1, np.uint32), t, rows, cols)

    x = np.zeros((5, 1024), np.float32)
    q, k = w("Q4_K", 3072, 1024), w("Q4_K", 2048, 1024)  # neither tall (rows < TALL cols): one tile
    plans = plan_packed_group([q, k, k], x)
    assert [p.rows for p in plans] == [3072, 2048, 2048] and len({p.entry for p in plans}) == 1
    with pytest.raises(ValueError, match=r"members\[1\]: Q6_K 2048x1024 .* cannot share a launch"):
        plan_packed_group([q, w("Q6_K", 2048, 1024)], x)
    with pytest.raises(ValueError, match=r"members\[1\]: Q4_K 4096x1024 .* and tile m2_n1_d3_x cannot share"):
        plan_packed_group([k, w("Q4_K", 4096, 1024)], x)  # a tall matrix takes another tile at N = 5
    with pytest.raises(ValueError, match="1..3 matrices, got 4"):
        plan_packed_group([q, k, k, k], x)
    with pytest.raises(ValueError, match="1..3 matrices, got 0"):
        plan_packed_group([], x)
    with pytest.raises(ValueError, match="expected 2 outputs"):
        plan_packed_group([q, k], x, outs=[None])
    # a different K split (shape only): 15360 rows x 3840 take 4 slices, 4096 x 3840 take 16
    x3840 = np.zeros((1, 3840), np.float32)
    assert split_k_slices(15360, 120) != split_k_slices(4096, 120)
    with pytest.raises(ValueError, match=r"members\[1\]: .* with 16 K slices"):
        plan_packed_group([w("Q4_K", 15360, 3840), w("Q4_K", 4096, 3840)], x3840)


def test_prefetch_groups_only_with_pdl(monkeypatch):
    """GEMMA_ORACLE_PACKED_PREFETCH counts only where kernels are launched with PDL (the prologue is empty else)."""
    from gemma_oracle.kernels import _compile, launch
    from gemma_oracle.kernels.packed_mma import prefetch_groups

    monkeypatch.setenv(_compile.PACKED_PREFETCH_ENV, "8")
    monkeypatch.setattr(launch, "launch_mode", lambda: "pdl")
    assert prefetch_groups() == 8
    monkeypatch.setattr(launch, "launch_mode", lambda: "plain")
    assert prefetch_groups() == 0
    monkeypatch.setattr(launch, "launch_mode", lambda: "pdl")
    monkeypatch.setenv(_compile.PACKED_PREFETCH_ENV, "0")
    assert prefetch_groups() == 0
    monkeypatch.delenv(_compile.PACKED_PREFETCH_ENV)  # the default
    assert prefetch_groups() == _compile.PACKED_PREFETCH_DEFAULT == 8
