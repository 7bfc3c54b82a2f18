"""GPU tests of kernels/fused_norms.py: each fused kernel BITWISE equal to the unfused kernel sequence it replaces.

  * rms_norm_q8_1            == rms_norm then quantize_q8_1
  * add_rms_norm_rms_norm    == add_rms_norm then rms_norm (then quantize_q8_1)
  * rms_norm_rope_neox       == rms_norm per head then rope_neox
over rows 1, 3, 32, 129 and row lengths 256, 512, 640 and 2560 (multiples of 32, not all of 256), 3840 (the 12B
hidden size) and 5376 (> NORM_REG_MAX: the strided-loop path); scale 1 and a layer_output_scale; weights present and
absent. Inputs span magnitudes 1e-3..1e3 per row and plant the Q8_1 edge cases: an all-zero 32-value block
(amax = 0), values whose normed output is subnormal (flushed to 0 by Q8_1), and an all-zero row. Every fused output
is written between guard regions (llama.cpp's sentinels) over a poisoned body; the Q8_1 blocks are also checked
against the numpy quantizer (kernels/reference/q8_1.py). Plus in-place forms, positions past sincosf's fast path,
and the launchers' refusal of bad inputs.
"""
from __future__ import annotations

import numpy as np
import pytest

from gemma_oracle.kernels.reference.q8_1 import BLOCK_BYTES, QK8_1
from gemma_oracle.kernels.reference.q8_1 import quantize_q8_1 as quantize_q8_1_reference
from tests.kernel_support import Guarded, assert_bits_equal, assert_q8_1_equal, inv_freq_f32

try:  # collection must work without CuPy; the gpu marker makes the plugin skip these tests there
    import cupy as cp

    from gemma_oracle.kernels.fused_norms import add_rms_norm_rms_norm, rms_norm_q8_1, rms_norm_rope_neox
    from gemma_oracle.kernels.norms import add_rms_norm, rms_norm
    from gemma_oracle.kernels.quantize_q8_1 import quantize_q8_1
    from gemma_oracle.kernels.rope import rope_neox
except ImportError:
    cp = None

pytestmark = pytest.mark.gpu

EPS = 1e-6  # rms_norm_eps of every Gemma 3/4 config (spec §1)
LAYER_SCALE = 0.7109375  # a layer_output_scale != 1

ROWS = (1, 3, 32, 129)
# D -> why: 256 a head dim / mini hidden; 512 the global head dim; 640 (Gemma 3 270M hidden) and 2560 multiples of
# 32, 640 not of 256 (the last register step holds only some warps' blocks); 3840 the 12B hidden; 5376 > NORM_REG_MAX
# (4096), the strided loop
DIMS = {"d256": 256, "d512": 512, "d640": 640, "d2560": 2560, "d3840": 3840, "d5376": 5376}


def ids(table: dict) -> list:
    return [pytest.param(v, id=k) for k, v in table.items()]


def rows_f32(rng, rows: int, d: int) -> np.ndarray:
    """Normal rows of magnitudes 1e-3..1e3, with planted Q8_1 edge cases: block 1 of row 0 all zero (amax = 0),
    a few values 1e-40 times smaller than the row (their normed output is subnormal), the last row all zero when
    there are 3 rows or more."""
    mag = 10.0 ** rng.uniform(-3, 3, size=(rows, 1))
    x = (rng.standard_normal((rows, d)) * mag).astype(np.float32)
    if d >= 2 * QK8_1:
        x[0, QK8_1:2 * QK8_1] = 0.0
    x[:, 3:6] = (x[:, 3:6].astype(np.float64) * 1e-40).astype(np.float32)
    if rows >= 3:
        x[-1] = 0.0
    return x


def weight(rng, d: int) -> np.ndarray:
    return rng.uniform(0.5, 1.5, d).astype(np.float32)


def guarded_pair(rows: int, d: int):
    """Guarded float32 [rows, d] and Q8_1 [rows, d / 32 * 36] outputs (poisoned bodies)."""
    return Guarded((rows, d)), Guarded((rows, d // QK8_1 * BLOCK_BYTES), dtype=np.uint8, poison=0xCD)


# --- rms_norm + Q8_1 ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rows", ROWS, ids=lambda r: f"r{r}")
@pytest.mark.parametrize("d", ids(DIMS))
@pytest.mark.parametrize("weighted", [True, False], ids=["w", "no-w"])
def test_rms_norm_q8_1_equals_norm_then_quantize(rows, d, weighted):
    rng = np.random.default_rng(rows * 7919 + d + weighted)
    x = cp.asarray(rows_f32(rng, rows, d))
    w = cp.asarray(weight(rng, d)) if weighted else None
    want_y = rms_norm(x, w, EPS)
    want_q = quantize_q8_1(want_y)
    gy, gq = guarded_pair(rows, d)
    y, yq = rms_norm_q8_1(x, w, EPS, out=gy.view, out_q=gq.view)
    assert y is gy.view and yq is gq.view
    gy.assert_guards_intact()
    gq.assert_guards_intact()
    assert_bits_equal(y, want_y, "y")
    assert_q8_1_equal(yq, want_q, "Q8_1")
    assert_q8_1_equal(yq, quantize_q8_1_reference(cp.asnumpy(want_y)), "Q8_1 vs the numpy quantizer")


def test_rms_norm_q8_1_in_place_and_new_outputs():
    rng = np.random.default_rng(11)
    x_host = rows_f32(rng, 5, 640)
    w = cp.asarray(weight(rng, 640))
    want_y = rms_norm(cp.asarray(x_host), w, EPS)
    y, yq = rms_norm_q8_1(cp.asarray(x_host), w, EPS)  # new outputs
    assert_bits_equal(y, want_y, "new y")
    assert_q8_1_equal(yq, quantize_q8_1(want_y), "new Q8_1")
    x = cp.asarray(x_host)
    y, _ = rms_norm_q8_1(x, w, EPS, out=x)
    assert y is x
    assert_bits_equal(x, want_y, "in-place y")


# --- residual add + next norm (+ Q8_1) -------------------------------------------------------------------------------

@pytest.mark.parametrize("rows", ROWS, ids=lambda r: f"r{r}")
@pytest.mark.parametrize("d", ids(DIMS))
@pytest.mark.parametrize("scale", [1.0, LAYER_SCALE], ids=["scale1", "layer-scale"])
@pytest.mark.parametrize("quantize", [True, False], ids=["q8_1", "no-q8_1"])
def test_add_rms_norm_rms_norm_equals_unfused(rows, d, scale, quantize):
    rng = np.random.default_rng(rows * 13 + d + int(quantize))
    h, x = cp.asarray(rows_f32(rng, rows, d)), cp.asarray(rows_f32(rng, rows, d))
    w_add, w_next = cp.asarray(weight(rng, d)), cp.asarray(weight(rng, d))
    want_h = add_rms_norm(h, x, w_add, EPS, scale=scale)
    want_y = rms_norm(want_h, w_next, EPS)
    gh, (gy, gq) = Guarded((rows, d)), guarded_pair(rows, d)
    h2, y, yq = add_rms_norm_rms_norm(h, x, w_add, w_next, EPS, scale, quantize=quantize, out_h=gh.view,
                                      out=gy.view, out_q=gq.view if quantize else None)
    assert h2 is gh.view and y is gy.view
    for g in (gh, gy, gq):
        g.assert_guards_intact()
    assert_bits_equal(h2, want_h, "residual h2")
    assert_bits_equal(y, want_y, "next norm y")  # with quantize=False, a stray Q8_1 write would land in y
    if quantize:
        assert yq is gq.view
        assert_q8_1_equal(yq, quantize_q8_1(want_y), "Q8_1")
    else:
        assert yq is None


@pytest.mark.parametrize("d", ids({"d640": 640, "d5376": 5376}))
@pytest.mark.parametrize("absent", ["w_add", "w_next", "both"])
def test_add_rms_norm_rms_norm_without_weights(d, absent):
    rng = np.random.default_rng(d + len(absent))
    h, x = cp.asarray(rows_f32(rng, 3, d)), cp.asarray(rows_f32(rng, 3, d))
    w_add = None if absent in ("w_add", "both") else cp.asarray(weight(rng, d))
    w_next = None if absent in ("w_next", "both") else cp.asarray(weight(rng, d))
    want_h = add_rms_norm(h, x, w_add, EPS, scale=LAYER_SCALE)
    want_y = rms_norm(want_h, w_next, EPS)
    h2, y, yq = add_rms_norm_rms_norm(h, x, w_add, w_next, EPS, LAYER_SCALE, quantize=True)
    assert_bits_equal(h2, want_h, "residual h2")
    assert_bits_equal(y, want_y, "next norm y")
    assert_q8_1_equal(yq, quantize_q8_1(want_y), "Q8_1")


@pytest.mark.parametrize("d", ids({"d3840": 3840, "d5376": 5376}))
def test_add_rms_norm_rms_norm_residual_in_place(d):
    rng = np.random.default_rng(d)
    h_host, x_host = rows_f32(rng, 9, d), rows_f32(rng, 9, d)
    w_add, w_next = cp.asarray(weight(rng, d)), cp.asarray(weight(rng, d))
    x = cp.asarray(x_host)
    want_h = add_rms_norm(cp.asarray(h_host), x, w_add, EPS, scale=LAYER_SCALE)
    want_y = rms_norm(want_h, w_next, EPS)
    h = cp.asarray(h_host)
    h2, y, yq = add_rms_norm_rms_norm(h, x, w_add, w_next, EPS, LAYER_SCALE, quantize=True, out_h=h)
    assert h2 is h
    assert_bits_equal(h, want_h, "in-place residual")
    assert_bits_equal(y, want_y, "next norm y")
    assert_q8_1_equal(yq, quantize_q8_1(want_y), "Q8_1")


def test_fused_rows_are_batch_independent():
    """A row's bits (residual, norm, Q8_1) do not depend on how many rows share the launch."""
    rng = np.random.default_rng(17)
    h, x = rows_f32(rng, 17, 2560), rows_f32(rng, 17, 2560)
    w_add, w_next = cp.asarray(weight(rng, 2560)), cp.asarray(weight(rng, 2560))
    batch = [cp.asnumpy(a) for a in add_rms_norm_rms_norm(cp.asarray(h), cp.asarray(x), w_add, w_next, EPS,
                                                         LAYER_SCALE, quantize=True)]
    for r in (0, 5, 16):
        alone = add_rms_norm_rms_norm(cp.asarray(h[r:r + 1]), cp.asarray(x[r:r + 1]), w_add, w_next, EPS,
                                      LAYER_SCALE, quantize=True)
        for name, a, b in zip(("h2", "y", "yq"), alone, batch):
            assert np.array_equal(cp.asnumpy(a)[0], b[r]), f"row {r} {name} differs alone vs in a batch of 17"


# --- per-head rms_norm + RoPE --------------------------------------------------------------------------------------

ROPE_CASES = {
    # (heads, d, inv_freq): Gemma 4 12B q on a sliding layer (θ 1e4 over all 256 dims) and its 8 KV heads
    "q-sliding-h16-d256": (16, 256, lambda: inv_freq_f32(1e4, 256)),
    "k-sliding-h8-d256": (8, 256, lambda: inv_freq_f32(1e4, 256)),
    # global layer, proportional RoPE: n_rot 512 with rope_freqs = 64 x 1.0 ++ 192 x 1e30 (spec §2.3); 1 KV head
    "q-global-prop-h16-d512": (16, 512, lambda: inv_freq_f32(1e6, 512, np.r_[np.ones(64), np.full(192, 1e30)])),
    "k-global-prop-h1-d512": (1, 512, lambda: inv_freq_f32(1e6, 512, np.r_[np.ones(64), np.full(192, 1e30)])),
    # partial rotation (dims >= n_rot pass through) and a small head
    "partial-h4-d128-rot64": (4, 128, lambda: inv_freq_f32(1e4, 64)),
    "h3-d64": (3, 64, lambda: inv_freq_f32(1e4, 64)),
}


def positions_for(rng, rows: int) -> np.ndarray:
    """Positions 0 .. 131071 (angles past sincosf's fast-path bound 105615 take its slow argument reduction)."""
    pos = rng.integers(0, 131072, size=rows).astype(np.int32)
    pos[0] = 0
    if rows > 1:
        pos[1] = 131071
    return pos


@pytest.mark.parametrize("rows", ROWS, ids=lambda r: f"r{r}")
@pytest.mark.parametrize("case", ids(ROPE_CASES))
@pytest.mark.parametrize("weighted", [True, False], ids=["w", "no-w"])
def test_rms_norm_rope_neox_equals_norm_then_rope(rows, case, weighted):
    heads, d, make_inv = case
    inv = cp.asarray(make_inv())
    rng = np.random.default_rng(rows * 101 + heads * d + weighted)
    x = cp.asarray(rows_f32(rng, rows * heads, d).reshape(rows, heads, d))
    w = cp.asarray(weight(rng, d)) if weighted else None
    pos = cp.asarray(positions_for(rng, rows))
    want = rope_neox(rms_norm(x, w, EPS), pos, inv)
    g = Guarded((rows, heads, d))
    got = rms_norm_rope_neox(x, w, EPS, pos, inv, out=g.view)
    assert got is g.view
    g.assert_guards_intact()
    assert_bits_equal(got, want, "rms_norm + rope_neox")


def test_rms_norm_rope_neox_in_place_and_new_output():
    heads, d, make_inv = ROPE_CASES["q-global-prop-h16-d512"]
    inv = cp.asarray(make_inv())
    rng = np.random.default_rng(23)
    x_host = rows_f32(rng, 5 * heads, d).reshape(5, heads, d)
    w = cp.asarray(weight(rng, d))
    pos = cp.asarray(positions_for(rng, 5))
    want = rope_neox(rms_norm(cp.asarray(x_host), w, EPS), pos, inv)
    assert_bits_equal(rms_norm_rope_neox(cp.asarray(x_host), w, EPS, pos, inv), want, "new output")
    x = cp.asarray(x_host)
    assert rms_norm_rope_neox(x, w, EPS, pos, inv, out=x) is x
    assert_bits_equal(x, want, "in place")


# --- bad inputs ------------------------------------------------------------------------------------------------------

def test_launchers_refuse_bad_inputs():
    x = cp.zeros((4, 256), dtype=cp.float32)
    w = cp.ones(256, dtype=cp.float32)
    with pytest.raises(ValueError, match="x: expected dtype float32"):
        rms_norm_q8_1(x.astype(cp.float64), w, EPS)
    with pytest.raises(ValueError, match="Q8_1"):
        rms_norm_q8_1(cp.zeros((4, 100), dtype=cp.float32), None, EPS)  # not a multiple of 32
    with pytest.raises(ValueError, match="weight"):
        rms_norm_q8_1(x, cp.ones(255, dtype=cp.float32), EPS)
    with pytest.raises(ValueError, match="out_q"):
        rms_norm_q8_1(x, w, EPS, out_q=cp.empty((4, 8 * 36 - 1), dtype=cp.uint8))
    with pytest.raises(ValueError, match="out"):
        rms_norm_q8_1(x, w, EPS, out=x[:, ::2])
    with pytest.raises(ValueError, match="numpy|cupy"):
        rms_norm_q8_1(np.zeros((4, 256), dtype=np.float32), w, EPS)
    buf = cp.zeros((5, 256), dtype=cp.float32)
    with pytest.raises(ValueError, match="out_h: overlaps h"):  # a shifted view of h: a partial overlap
        add_rms_norm_rms_norm(buf[:4], x, w, w, EPS, quantize=False, out_h=buf[1:])
    with pytest.raises(ValueError, match="out: overlaps"):
        add_rms_norm_rms_norm(buf[:4], x, w, w, EPS, quantize=False, out=x)
    with pytest.raises(ValueError, match="x"):
        add_rms_norm_rms_norm(x, cp.zeros((4, 128), dtype=cp.float32), w, w, EPS, quantize=False)
    q = cp.zeros((2, 4, 256), dtype=cp.float32)
    inv = cp.ones(128, dtype=cp.float32)
    with pytest.raises(ValueError, match="inv_freq"):
        rms_norm_rope_neox(q, w, EPS, cp.zeros(2, dtype=cp.int32), cp.ones(129, dtype=cp.float32))
    with pytest.raises(ValueError, match="positions"):
        rms_norm_rope_neox(q, w, EPS, cp.zeros(3, dtype=cp.int32), inv)
    with pytest.raises(ValueError, match="positions: expected dtype int32"):
        rms_norm_rope_neox(q, w, EPS, cp.zeros(2, dtype=cp.int64), inv)
    with pytest.raises(ValueError, match="head dim"):
        rms_norm_rope_neox(cp.zeros((1, 1, 4352), dtype=cp.float32), None, EPS, cp.zeros(1, dtype=cp.int32), inv)
