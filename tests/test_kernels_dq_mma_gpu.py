"""Tests of kernels/dq_mma.py (dequant-MMA: GGUF weights dequantized to fp16 once per tile, fp16 tensor cores with
float32 accumulation) and kernels/f16_rows.py (its fp16 activations), after llama.cpp's test-backend-ops: one case
per (type, shape, N, tile), one compare harness, guard bytes.

GPU (marked `gpu`), per case:
  * the NaN-poisoned output is fully written and the 1024-float guards around it are intact;
  * the fp16 operands are the reference's bit for bit: f16_rows against kernels/reference/f16_operands.py, and the
    staged weights through identity activations (x = one-hot rows: y[j, r] = w16[r, k_j] * 2^14 * 2^-14, a single
    exact product), against dequant_f16;
  * against the float64 product of those fp16 operands, every output is within the float32 accumulation bound
    ACC_BOUND_ULPS * 2^-24 * (K / 16 + slices) * sum |w16 * x| (the tensor core's adds are not IEEE round-to-nearest,
    so no bitwise emulation: a bound on accumulated rounding instead, which any indexing or fragment error exceeds);
  * against the float64 product of the TRUE dequantized weights (kernels/reference/dequant.py) and the float32
    activations, NMSE <= DQ_NMSE_MAX (fp16 operands);
  * batch invariance, bitwise: token j of an N-token launch equals the N = 1 launch on x[j], on every tile; every
    tile gives the same bits; the same launch twice gives the same bits.
CPU (no mark): host-side validation, the launcher/#define agreement, and the references' own properties.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

from gemma_oracle.kernels._compile import source_path
from gemma_oracle.kernels.dq_mma import DQ_MMA_TYPES, TILES, choose_tile, dq_mma_matvec, plan_dq_mma
from gemma_oracle.kernels.f16_rows import plan_f16_rows
from gemma_oracle.kernels.mmq import split_k_slices
from gemma_oracle.kernels.reference.f16_operands import dequant_f16, f16_rows as f16_rows_host
from gemma_oracle.oracles.metrics import nmse
from tests.kernel_support import GuardedOutput, activations, first_bit_difference, matvec_reference, quantized_weights

try:  # collection must work without cupy; the gpu marker makes the plugin skip these items with its reason
    import cupy as cp
except ImportError:  # pragma: no cover - exercised only on machines without cupy
    cp = None

gpu = pytest.mark.gpu

# --- tolerances --------------------------------------------------------------------------------------------------
# Float32 accumulation of fp16 products: each mma adds 16 exact products to the running sum, and each slice sum is
# one more add; an add with round-to-nearest errs by at most 2^-24 of the running magnitude, a truncating one by
# 2^-23. 4 ulps per add over (K / 16 + slices) adds, relative to sum |w16 * x|, bounds both with a 2x margin.
ACC_BOUND_ULPS = 4
# Against the exact weights and float32 x: fp16 rounds each operand to 2^-11 relative (a weight's scale and offset
# each to 2^-11 of themselves), so for these uniform inputs NMSE ~ 3 * (2^-11)^2 / 3 ~ 2.5e-7; 1e-5 is 20x that
# and 50x below decode-MMQ's bound (5e-4, its int8 activations), over outputs of at least 8 elements.
DQ_NMSE_MAX = 1e-5
DQ_NMSE_MIN_OUTPUTS = 8

# --- cases ---------------------------------------------------------------------------------------------------------
# rows: tails of the 64- and 128-row tiles (1, 7, 77, 130, 2096 = 32 * 64 + 48); cols: 8, 9, 25, 32 and 81 32-value
# blocks (full and ragged 4- and 8-block stages); K-quants whole 256-value super-blocks.
SHAPES = ((1, 256), (7, 288), (77, 800), (130, 2592), (2096, 1056))
SHAPES_K = ((1, 256), (7, 512), (77, 768), (130, 2560), (2096, 1024))
K_QUANTS = ("Q4_K", "Q5_K", "Q6_K")
# both sides of the 8-, 16- and 32-token tiles, and 64 (several token tiles)
NS = (1, 2, 5, 8, 9, 16, 17, 32, 33, 64)


def _shapes(t):
    return SHAPES_K if t in K_QUANTS else SHAPES


CASES = [(t, rows, cols, n) for t in DQ_MMA_TYPES for rows, cols in _shapes(t) for n in NS]


def _id(case) -> str:
    t, rows, cols, n = case
    return f"{t.lower()}-r{rows}-c{cols}-n{n}"


def _inputs(t: str, rows: int, cols: int, n: int):
    return quantized_weights(t, rows, cols), activations(n, cols, "dq_mma", t, rows)


def _bound(w16: np.ndarray, x16: np.ndarray, inv: np.ndarray, slices: int):
    """(float64 reference on the fp16 operands, the accumulation bound per output)."""
    w, x = w16.astype(np.float64), x16.astype(np.float64) * inv.astype(np.float64)[:, None]
    steps = w.shape[1] // 16 + slices
    return x @ w.T, ACC_BOUND_ULPS * 2.0**-24 * steps * (np.abs(x) @ np.abs(w).T)


def _host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


# --- GPU tests -----------------------------------------------------------------------------------------------------

@gpu
@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_dq_mma_case(case):
    t, rows, cols, n = case
    raw, x = _inputs(t, rows, cols, n)
    w_dev, x_dev = cp.asarray(raw), cp.asarray(x)
    x16, inv = f16_rows_host(x)
    w16 = dequant_f16(raw, t, cols)
    ref16, bound = _bound(w16, x16, inv, split_k_slices(rows, cols // 32))
    exact = matvec_reference(raw, t, cols, x)
    outs = {}
    tiles = sorted({choose_tile(n).name, *(name for name, tile in TILES.items() if n <= 17 or tile.bn >= 16)},
                   key=lambda name: (TILES[name].kind, name))
    for tile in tiles:
        out = GuardedOutput(cp, (n, rows), np.float32)
        out.view[...] = np.nan
        dq_mma_matvec(w_dev, t, cols, x_dev, out=out.view, tile=tile)
        before, after = out.guards_intact()
        assert before and after, f"{tile}: guard overwritten (before intact {before}, after {after})"
        y = _host(out.view)
        assert np.isfinite(y).all(), f"{tile}: {int((~np.isfinite(y)).sum())} outputs not written or not finite"
        err = np.abs(y.astype(np.float64) - ref16)
        worst = np.unravel_index(np.argmax(err - bound), err.shape)
        assert (err <= bound).all(), (f"{tile}: |y - ref| {err[worst]:.3e} > bound {bound[worst]:.3e} at token "
                                      f"{worst[0]}, row {worst[1]}")
        if rows * n >= DQ_NMSE_MIN_OUTPUTS:
            e = float(nmse(exact.ravel(), y.astype(np.float64).ravel()))
            assert e <= DQ_NMSE_MAX, f"{tile}: NMSE {e:.3e} against the exact weights and float32 x"
        outs[tile] = y
    for kind in ("smem", "direct"):  # within a kind every tile gives the same bits
        same = [tile for tile in tiles if TILES[tile].kind == kind]
        for tile in same[1:]:
            diff = first_bit_difference(outs[tile], outs[same[0]])
            assert not diff, f"tile {tile} vs {same[0]}: {diff}"


@gpu
@pytest.mark.parametrize("kind_tile", ("w4_m1_bn8_kb4_pf0", "direct_w4_m1_bn8_p1"))
@pytest.mark.parametrize("t", DQ_MMA_TYPES)
def test_dq_mma_weights_through_identity(t, kind_tile):
    """The staged fp16 weights bit for bit: one-hot activations pick single columns (y = w16[r, k] exactly, a zero
    weight as +0)."""
    rows, cols = (77, 768) if t in K_QUANTS else (77, 800)
    raw = quantized_weights(t, rows, cols)
    picks = np.arange(0, cols, 7)
    x = np.zeros((len(picks), cols), np.float32)
    x[np.arange(len(picks)), picks] = 1.0
    y = _host(dq_mma_matvec(cp.asarray(raw), t, cols, cp.asarray(x), tile=kind_tile))
    # + 0.0: a -0 weight comes out +0 (the mma adds the product to a +0 accumulator), the same value
    want = dequant_f16(raw, t, cols)[:, picks].T.astype(np.float32) + np.float32(0.0)
    diff = first_bit_difference(y, want)
    assert not diff, f"{t}: staged weights differ from dequant_f16: {diff}"


@gpu
@pytest.mark.parametrize("t", ("Q4_0", "Q4_K", "Q6_K"))
def test_dq_mma_batch_invariant(t):
    """Token j of an N-token launch is bitwise the N = 1 launch on x[j], at several N and slots, on every tile, and a
    repeated launch gives the same bits (a needle token at a random slot among different neighbours)."""
    rows, cols = 2096, 1024 if t in K_QUANTS else 1056
    raw = cp.asarray(quantized_weights(t, rows, cols))
    rng = np.random.default_rng(3)
    needle = activations(1, cols, "needle", t)
    alone = {kind: _host(dq_mma_matvec(raw, t, cols, cp.asarray(needle), tile=first))
             for kind, first in (("smem", "w4_m1_bn8_kb4_pf0"), ("direct", "direct_w4_m1_bn8_p1"))}
    for n in (2, 7, 8, 9, 16, 17, 31, 32, 40):
        x = activations(n, cols, "batch", t, n) * rng.uniform(0.1, 10.0, size=(n, 1)).astype(np.float32)
        slot = int(rng.integers(n))
        x[slot] = needle[0]
        for tile in TILES:
            y = _host(dq_mma_matvec(raw, t, cols, cp.asarray(x), tile=tile))
            diff = first_bit_difference(y[slot], alone[TILES[tile].kind][0])
            assert not diff, f"N={n} slot {slot} tile {tile}: {diff}"
            again = _host(dq_mma_matvec(raw, t, cols, cp.asarray(x), tile=tile))
            assert not first_bit_difference(y, again), f"N={n} tile {tile}: not deterministic"


@gpu
def test_f16_rows_bitwise():
    """f16_rows on the GPU equals the numpy reference bit for bit, on rows that exercise the scale: ordinary, huge,
    tiny, subnormal, zero, a lone maximum, and values that round to fp16 subnormals."""
    from gemma_oracle.kernels.f16_rows import f16_rows

    rng = np.random.default_rng(5)
    x = rng.standard_normal((9, 1056)).astype(np.float32)
    x[1] *= np.float32(3e4)
    x[2] *= np.float32(1e-30)
    x[3] = np.float32(1e-41) * np.sign(x[3])  # float32 subnormals
    x[4] = 0.0
    x[5] = 0.0
    x[5, 17] = -np.float32(2.0**100)
    x[6, :8] = np.float32(1e6)
    x[7] = np.float32(65504.0)
    x[8] *= np.float32(2.0**-14)
    x16, inv = f16_rows(cp.asarray(x))
    want16, want_inv = f16_rows_host(x)
    assert not first_bit_difference(_host(x16), want16.view(np.uint16)), "fp16 rows differ from the reference"
    assert not first_bit_difference(_host(inv), want_inv), "inv differs from the reference"


# --- CPU tests -------------------------------------------------------------------------------------------------------

def test_launcher_matches_tile_list():
    """kernels/dq_mma.py's TILES and DQ_MMA_TYPES are exactly the entries dq_mma.cu compiles."""
    src = source_path("dq_mma").read_text()
    entries = re.findall(r"DQ_ENTRY\(name, Q, (\d+), (\d+), (\d+), (\d+), (\d+), \d+\)", src)
    direct = re.findall(r"DQ_DIRECT_ENTRY\(name, Q, (\d+), (\d+), (\d+), (\d+), \d+\)", src)
    assert sorted([f"w{w}_m{m}_bn{bn}_kb{kb}_pf{pf}" for w, m, bn, kb, pf in entries]
                  + [f"direct_w{w}_m{m}_bn{bn}_p{p}" for w, m, bn, p in direct]) == sorted(TILES)
    assert sorted(re.findall(r"^DQ_DIRECT_TILES\((\w+),", src, flags=re.M)) == sorted(t.lower() for t in DQ_MMA_TYPES)
    assert sorted(re.findall(r"^DQ_TILES\((\w+),", src, flags=re.M)) == sorted(t.lower() for t in DQ_MMA_TYPES)
    for w, m, bn, kb, pf in entries:
        tile = TILES[f"w{w}_m{m}_bn{bn}_kb{kb}_pf{pf}"]
        assert tile.bm == 16 * int(m) * int(w) and tile.bn % 8 == 0
        # static shared memory (weights + activations, fp16 rows of 32 * kb + 8) within the 48 KB a block may take
        assert (tile.bm + tile.bn) * (32 * tile.kb + 8) * 2 <= 48 * 1024
    for w, m, bn, p in direct:
        assert TILES[f"direct_w{w}_m{m}_bn{bn}_p{p}"].bm == 16 * int(m) * int(w)


def test_f16_rows_reference_properties():
    """The reference's scale and rounding, checked against float64: each row's largest magnitude lands in [2^14,
    2^15), inv is the exact inverse power of two, and x16 * inv is x to within fp16's half ulp."""
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((6, 512)) * np.exp2(rng.integers(-40, 40, (6, 1)))).astype(np.float32)
    x[5] = 0.0
    x16, inv = f16_rows_host(x)
    scaled = np.abs(x16.astype(np.float64)).max(axis=1)
    assert ((scaled[:5] >= 2.0**14) & (scaled[:5] <= 2.0**15)).all() and scaled[5] == 0 and inv[5] == 1.0
    sub = np.full((1, 64), np.float32(1e-40))  # a subnormal maximum counts as zero: e = 0
    assert f16_rows_host(sub)[1][0] == 1.0 and not f16_rows_host(sub)[0].astype(np.float32).any()
    assert (np.log2(inv) == np.round(np.log2(inv))).all()
    back = x16.astype(np.float64) * inv[:, None]
    amax = np.abs(x.astype(np.float64)).max(axis=1, keepdims=True)
    assert (np.abs(back - x) <= np.maximum(np.abs(x) * 2.0**-11, amax * 2.0**-39)).all()


@pytest.mark.parametrize("t", DQ_MMA_TYPES)
def test_dequant_f16_reference_against_ggml_dequant(t):
    """dequant_f16 is the ggml dequantization (kernels/reference/dequant.py) up to fp16 rounding of its scale,
    offset and result: |w16 - w| <= 2^-11 * (|w| + |d * code| + |m|) <= 2^-10 * max row magnitude scale."""
    from gemma_oracle.kernels.reference.dequant import dequantize

    rows, cols = (7, 512) if t in K_QUANTS else (7, 288)
    raw = quantized_weights(t, rows, cols)
    w16 = dequant_f16(raw, t, cols).astype(np.float64)
    w = dequantize(raw, t, (cols, rows)).astype(np.float64)
    # quantized_weights are uniform in [-1, 1): |d * code| and |m| are at most about 2 (K-quant offsets), so 2^-11
    # of (|w| + 2 + 2) bounds the error; a wrong code, scale or element order errs by a whole quant step (>= 1/64)
    assert (np.abs(w16 - w) <= 2.0**-11 * (np.abs(w) + 4.0)).all()
    assert np.abs(w16 - w).max() > 0  # it is the rounded operand, not a copy of the exact one


@pytest.mark.parametrize("n, expected", [(1, "direct_w4_m2_bn8_p1"), (8, "direct_w4_m2_bn8_p1"),
                                         (9, "direct_w4_m2_bn16_p1"), (16, "direct_w4_m2_bn16_p1"),
                                         (17, "direct_w4_m1_bn32_p1"), (64, "direct_w4_m1_bn32_p1")])
def test_choose_tile(n, expected):
    assert choose_tile(n).name == expected


def _arrays(rows=7, cols=288, n=3, t="Q8_0"):
    raw, x = _inputs(t, rows, cols, n)
    return np.array(raw), x


@pytest.mark.parametrize("bad, pattern", [
    (lambda raw, x: dict(w_raw=raw, type_name="Q5_0", n_cols=288, x=x), r"dequant-MMA supports \['Q8_0'"),
    (lambda raw, x: dict(w_raw=raw, type_name="Q8_0", n_cols=288, x=x, tile="w4_m9"), "tile: expected one of"),
    (lambda raw, x: dict(w_raw=raw, type_name="Q8_0", n_cols=288, x=x, slices=10), r"slices: expected an int in 1\.\.9"),
    (lambda raw, x: dict(w_raw=raw, type_name="Q8_0", n_cols=256, x=x), "w_raw"),
    (lambda raw, x: dict(w_raw=raw, type_name="Q8_0", n_cols=288, x=x.astype(np.float64)), "x: expected dtype float32"),
    (lambda raw, x: dict(w_raw=raw, type_name="Q8_0", n_cols=288, x=x[:, :256].copy()), "x: expected 288 columns"),
    (lambda raw, x: dict(w_raw=raw, type_name="Q8_0", n_cols=288, x=np.asfortranarray(x)), "C-contiguous"),
    (lambda raw, x: dict(w_raw=raw, type_name="Q8_0", n_cols=288, x=x[:0]), "1 <= N"),
    (lambda raw, x: dict(w_raw=raw, type_name="Q8_0", n_cols=288, x=(x,)), r"the pair \(x16, inv\)"),
    (lambda raw, x: dict(w_raw=raw, type_name="Q8_0", n_cols=288,
                         x=(x.view(np.uint16)[:, :288].copy(), np.ones(2, np.float32))), r"x\[1\] \(inv\): expected shape"),
    (lambda raw, x: dict(w_raw=raw, type_name="Q8_0", n_cols=288, x=x, out=np.empty((3, 8), np.float32)),
     "out: expected shape"),
])
def test_plan_rejects(bad, pattern):
    raw, x = _arrays()
    with pytest.raises(ValueError, match=pattern):
        plan_dq_mma(**bad(raw, x))


def test_plan_geometry():
    raw, x = _arrays(rows=77, cols=800, n=20)
    plan = plan_dq_mma(raw, "Q8_0", 800, x)
    assert plan.entry == "dq_mma_q8_0_direct_w4_m1_bn32_p1" and plan.grid == (2, 1, split_k_slices(77, 25))
    assert plan.block == (128, 1, 1) and plan.convert


def test_f16_rows_plan_rejects():
    with pytest.raises(ValueError, match="multiple of 8"):
        plan_f16_rows(np.zeros((2, 12), np.float32))
    with pytest.raises(ValueError, match="expected dtype float32"):
        plan_f16_rows(np.zeros((2, 16), np.float64))
