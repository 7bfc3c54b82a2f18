"""GPU tests of the producers that write a decode-MMQ input's Q8_1 blocks in their own launch, BITWISE:

  * gelu_tanh_mul(gate, up, quantize=True)  == (gelu_tanh_mul(gate, up), quantize_q8_1(that))
  * decode_attention(..., quantize=True)    == (decode_attention(...), quantize_q8_1(out.reshape(R, Hq * d)))
over rows 1, 3, 32, 129; gelu widths 256, 2560, 15360 (the 12B FFN) and 800 (a multiple of 32, not of 256);
attention head dims 64/128/256/512 with several Hq/Hkv, f16 pools (one f32), global and windowed layers, row
positions on both sides of the 64-key chunk boundaries. Planted Q8_1 edge cases: an all-zero 32-value block, outputs
that underflow to subnormal (Q8_1 flushes them; this build's arithmetic already gave 0 on the H100), a block of
outputs near FLT_MIN (its d = amax / 127 is subnormal), an all-zero row, and attention's NaN rows. Outputs are written
between guard regions over a poisoned body; the Q8_1 blocks are also checked against the numpy quantizer
(kernels/reference/q8_1.py). Plus in-place gelu, the launchers' refusals, and the engine: with fused producers no
quantize_q8_1 launch is left in a forced decode-MMQ pass, with the bits of the separate launches.
"""
from __future__ import annotations

import numpy as np
import pytest

from gemma_oracle.kernels.reference.q8_1 import BLOCK_BYTES, QK8_1
from gemma_oracle.kernels.reference.q8_1 import quantize_q8_1 as quantize_q8_1_reference
from tests.kernel_support import Guarded, assert_bits_equal, assert_q8_1_equal, first_bit_difference

try:  # collection must work without CuPy; the gpu marker makes the plugin skip these tests there
    import cupy as cp

    from gemma_oracle.kernels.attention import decode_attention
    from gemma_oracle.kernels.ffn_act import gelu_tanh_mul
    from gemma_oracle.kernels.quantize_q8_1 import quantize_q8_1
except ImportError:
    cp = None

pytestmark = pytest.mark.gpu

ROWS = (1, 3, 32, 129)
TINY = np.finfo(np.float32).tiny  # FLT_MIN: below it Q8_1 counts a value as 0


def assert_tiny(y: np.ndarray, what: str) -> None:
    """The planted edge blocks came out as meant: values 3..5 underflowed (|y| < FLT_MIN), block 2 (values 64..95)
    near FLT_MIN (amax < 127 * FLT_MIN: a subnormal d) but not all zero."""
    assert (np.abs(y[..., 3:6]) < TINY).all(), f"{what}: the underflowing values are >= FLT_MIN"
    block = np.abs(y[..., 64:96])
    assert (block.max(axis=-1) < 127 * TINY).all() and block.any(), f"{what}: block 2 is not near FLT_MIN"


def ids(table: dict) -> list:
    return [pytest.param(v, id=k) for k, v in table.items()]


def guarded_pair(shape: tuple[int, ...], k: int):
    """Guarded float32 `shape` and Q8_1 [rows, k / 32 * 36] outputs (poisoned bodies)."""
    return Guarded(shape), Guarded((shape[0], k // QK8_1 * BLOCK_BYTES), dtype=np.uint8, poison=0xCD)


def check_q8_1(yq, y2d, what: str) -> None:
    """yq == quantize_q8_1(y) on the GPU (the contract), and == the numpy quantizer on every block whose d = amax / 127
    is normal or 0: where it is subnormal (amax < 127 * FLT_MIN) the GPU's division flushes it and numpy's does not,
    so the codes differ (seen on the H100 for quantize_q8_1 itself; a reference question, not this fusion's)."""
    assert_q8_1_equal(yq, quantize_q8_1(y2d), f"{what}: vs quantize_q8_1")
    y = cp.asnumpy(y2d)
    amax = np.abs(np.where(np.abs(y) < TINY, 0, y)).reshape(y.shape[0], -1, QK8_1).max(axis=-1)
    keep = ((amax == 0) | (amax >= 127 * TINY))[..., None]
    got = np.where(keep, cp.asnumpy(yq).reshape(*amax.shape, BLOCK_BYTES), 0).reshape(y.shape[0], -1)
    want = np.where(keep, quantize_q8_1_reference(y).reshape(*amax.shape, BLOCK_BYTES), 0).reshape(y.shape[0], -1)
    assert_q8_1_equal(got, want, f"{what}: vs the numpy quantizer")


# --- gelu_tanh * up + Q8_1 ---------------------------------------------------------------------------------------

# 256 a mini FFN; 2560; 15360 the 12B FFN (ffn_down's K); 800 = 25 blocks (a multiple of 32, not of 256)
GELU_WIDTHS = {"f256": 256, "f800": 800, "f2560": 2560, "f15360": 15360}


def gelu_inputs(rng, rows: int, f: int) -> tuple[np.ndarray, np.ndarray]:
    """Gate of std 3 with magnitudes per row over 1e-2..1e2 in up; planted: block 1 of row 0 all zero (gate 0 gives
    0), values 3..5 of every row underflowing (gate 1e-20 times up -2e-20), block 2 of every row near FLT_MIN (gate
    2e-19: gelu ~ 1e-19, times up 1e-19..3e-19), the last row all zero (>= 3 rows)."""
    gate = (rng.standard_normal((rows, f)) * 3).astype(np.float32)
    gate[0, :8] = [-30, -10, -5, -1e-3, 0, 1e-3, 10, 30]
    up = (rng.standard_normal((rows, f)) * 10.0 ** rng.uniform(-2, 2, size=(rows, 1))).astype(np.float32)
    gate[0, QK8_1:2 * QK8_1] = 0.0
    gate[:, 3:6] = np.float32(1e-20)
    up[:, 3:6] = np.float32(-2e-20)
    gate[:, 64:96] = np.float32(2e-19)
    up[:, 64:96] = (rng.uniform(1.0, 3.0, (rows, 32)) * rng.choice([-1, 1], (rows, 32)) * 1e-19).astype(np.float32)
    if rows >= 3:
        gate[-1] = 0.0
    return gate, up


@pytest.mark.parametrize("rows", ROWS, ids=lambda r: f"r{r}")
@pytest.mark.parametrize("f", ids(GELU_WIDTHS))
def test_gelu_q8_1_equals_gelu_then_quantize(rows, f):
    rng = np.random.default_rng(rows * 31 + f)
    gate_h, up_h = gelu_inputs(rng, rows, f)
    gate, up = cp.asarray(gate_h), cp.asarray(up_h)
    want = gelu_tanh_mul(gate, up)
    assert_tiny(cp.asnumpy(want)[: rows - (rows >= 3)], "gelu")  # the last row of 3 or more is all zero
    gy, gq = guarded_pair((rows, f), f)
    y, yq = gelu_tanh_mul(gate, up, out=gy.view, quantize=True, out_q=gq.view)
    assert y is gy.view and yq is gq.view
    gy.assert_guards_intact()
    gq.assert_guards_intact()
    assert_bits_equal(y, want, "gelu y: fused vs plain launch")
    check_q8_1(yq, want, "gelu Q8_1")


def test_gelu_q8_1_in_place_and_new_outputs():
    rng = np.random.default_rng(5)
    gate_h, up_h = gelu_inputs(rng, 7, 2560)
    want = gelu_tanh_mul(cp.asarray(gate_h), cp.asarray(up_h))
    y, yq = gelu_tanh_mul(cp.asarray(gate_h), cp.asarray(up_h), quantize=True)  # new outputs
    assert yq.shape == (7, 2560 // QK8_1 * BLOCK_BYTES) and yq.dtype == cp.uint8
    assert_bits_equal(y, want, "new y")
    check_q8_1(yq, want, "new Q8_1")
    for target in ("gate", "up"):
        gate, up = cp.asarray(gate_h), cp.asarray(up_h)
        out = gate if target == "gate" else up
        y, yq = gelu_tanh_mul(gate, up, out=out, quantize=True)
        assert y is out
        assert_bits_equal(y, want, f"in-place (out={target}) y")
        check_q8_1(yq, want, f"in-place (out={target}) Q8_1")


def test_gelu_q8_1_zero_rows():
    y, yq = gelu_tanh_mul(cp.zeros((0, 256), cp.float32), cp.zeros((0, 256), cp.float32), quantize=True)
    assert y.shape == (0, 256) and yq.shape == (0, 8 * BLOCK_BYTES)


def test_gelu_q8_1_refuses_bad_inputs():
    x = cp.zeros((4, 256), dtype=cp.float32)
    cases = [
        (lambda: gelu_tanh_mul(cp.zeros((4, 100), cp.float32), cp.zeros((4, 100), cp.float32), quantize=True),
         "gate: Q8_1 needs a row length"),
        (lambda: gelu_tanh_mul(x.astype(cp.float64), x, quantize=True), "gate: expected dtype float32"),
        (lambda: gelu_tanh_mul(x.reshape(-1), x.reshape(-1), quantize=True), "gate: expected 2-D"),
        (lambda: gelu_tanh_mul(x, cp.zeros((4, 288), cp.float32), quantize=True), "up: expected shape"),
        (lambda: gelu_tanh_mul(x, x, quantize=True, out_q=cp.zeros((4, 287), cp.uint8)), "out_q: expected shape"),
        (lambda: gelu_tanh_mul(x, x, quantize=True, out_q=cp.zeros((4, 288), cp.int8)), "out_q: expected dtype"),
        (lambda: gelu_tanh_mul(x, x, out_q=cp.zeros((4, 288), cp.uint8)), "out_q: given with quantize=False"),
        (lambda: gelu_tanh_mul(x, x.copy(), quantize=True, out_q=x.view(cp.uint8).ravel()[:1152].reshape(4, 288)),
         "out_q: overlaps gate"),
        (lambda: gelu_tanh_mul(np.zeros((4, 256), np.float32), np.zeros((4, 256), np.float32), quantize=True),
         "gate: expected a cupy.ndarray"),
    ]
    for call, match in cases:
        with pytest.raises(ValueError, match=match):
            call()
    buf = cp.zeros(4 * 256 + 8, dtype=cp.float32)
    with pytest.raises(ValueError, match="out: overlaps gate"):  # a partial overlap, not in place
        gelu_tanh_mul(buf[:1024].reshape(4, 256), x, out=buf[8:].reshape(4, 256), quantize=True)
    qbuf = cp.zeros(4 * 256 * 4 + 4 * 288, dtype=cp.uint8)
    y_view = qbuf[: 4 * 256 * 4].view(cp.float32).reshape(4, 256)
    with pytest.raises(ValueError, match="out_q: overlaps out"):
        gelu_tanh_mul(x, x.copy(), out=y_view, quantize=True, out_q=qbuf[4 * 256 * 4 - 36:][: 4 * 288].reshape(4, 288))


# --- attention merge + Q8_1 ---------------------------------------------------------------------------------------

# (Hq, Hkv, d, window, pool dtype): window 0 = global; a windowed layer on a global array (ring=False) puts every row's
# first visible key mid-chunk
ATTN_CASES = {
    "hq4-hkv2-d64-global-f16": (4, 2, 64, 0, "float16"),
    "hq8-hkv1-d64-w100-f16": (8, 1, 64, 100, "float16"),
    "hq16-hkv8-d128-global-f16": (16, 8, 128, 0, "float16"),
    "hq16-hkv8-d256-w100-f16": (16, 8, 256, 100, "float16"),
    "hq16-hkv1-d512-global-f16": (16, 1, 512, 0, "float16"),
    "hq8-hkv2-d512-w130-f16": (8, 2, 512, 130, "float16"),
    "hq4-hkv1-d128-global-f32": (4, 1, 128, 0, "float32"),
}
CAPACITY = 300  # positions each sequence holds: 0..299 (global arrays), so chunks 0..4
# Row positions: both sides of the chunk boundaries 64, 128, 192, 256 and the ends
ROW_POSITIONS = (0, 1, 63, 64, 65, 127, 128, 129, 191, 192, 255, 256, 299)
N_SEQ = 5


def attention_inputs(hq: int, hkv: int, d: int, dtype: str, rows: int, seed: int):
    """q [rows, hq, d], pools [N_SEQ, CAPACITY, hkv, d] holding positions 0..CAPACITY - 1, rows_slot, positions.
    Planted in KV head 0 (so in the outputs of its query heads): V dims 32..63 zero (a zero Q8_1 block); with f32
    pools (f16 cannot hold such values) V dims 64..95 of magnitude 1e-38..3e-38 (outputs near FLT_MIN) and dims 3..5
    subnormal (outputs that underflow)."""
    rng = np.random.default_rng(seed)
    q = (rng.standard_normal((rows, hq, d)) * (2.0 / np.sqrt(d))).astype(np.float32)
    k = rng.standard_normal((N_SEQ, CAPACITY, hkv, d)).astype(np.float32)
    v = rng.standard_normal((N_SEQ, CAPACITY, hkv, d)).astype(np.float32)
    v[:, :, 0, 32:64] = 0.0
    if dtype == "float32":
        v[:, :, 0, 64:96] = (rng.uniform(1.0, 3.0, (N_SEQ, CAPACITY, 32)) * 1e-38).astype(np.float32)
        v[:, :, 0, 3:6] = np.float32(1e-39)
    pos_table = np.tile(np.arange(CAPACITY, dtype=np.int32), (N_SEQ, 1))
    rows_slot = (np.arange(rows) % N_SEQ).astype(np.int32)
    positions = np.array([ROW_POSITIONS[(r * 7) % len(ROW_POSITIONS)] for r in range(rows)], dtype=np.int32)
    positions[0] = CAPACITY - 1
    return (cp.asarray(q), cp.asarray(k.astype(dtype)), cp.asarray(v.astype(dtype)), cp.asarray(pos_table),
            rows_slot, positions)


def attention_pair(case, rows: int, seed: int, **launch):
    """(plain out, fused out, fused out_q, guards) for one launch of each over the same inputs."""
    hq, hkv, d, window, dtype = case
    q, k, v, pos_table, rows_slot, positions = attention_inputs(hq, hkv, d, dtype, rows, seed)
    kw = {"window": window, "ring": False, "scale": 1.0, "max_position": CAPACITY - 1, **launch}
    want = decode_attention(q, k, v, pos_table, rows_slot, positions, **kw)
    go, gq = guarded_pair((rows, hq, d), hq * d)
    out, out_q = decode_attention(q, k, v, pos_table, rows_slot, positions, out=go.view, quantize=True,
                                  out_q=gq.view, **kw)
    assert out is go.view and out_q is gq.view
    return want, out, out_q, (go, gq)


@pytest.mark.parametrize("rows", ROWS, ids=lambda r: f"r{r}")
@pytest.mark.parametrize("case", ids(ATTN_CASES))
def test_attention_q8_1_equals_attention_then_quantize(rows, case):
    hq, hkv, d, window, dtype = case
    want, out, out_q, guards = attention_pair(case, rows, seed=rows * 13 + d + hq)
    for g in guards:
        g.assert_guards_intact()
    assert_bits_equal(out, want, "attention out: fused vs plain merge")
    want_np = cp.asnumpy(want)
    assert np.isfinite(want_np).all()
    assert not want_np[:, : hq // hkv, 32:64].any(), "the planted zero block is not zero"
    if dtype == "float32":
        assert_tiny(want_np[:, : hq // hkv], "attention")
    check_q8_1(out_q, want.reshape(rows, hq * d), "attention Q8_1")


@pytest.mark.parametrize("d", [64, 512], ids=lambda d: f"d{d}")
def test_attention_q8_1_nan_rows(d):
    """Rows whose chunks do not fit the workspace (max_position underestimated) come back NaN; their Q8_1 blocks are
    quantize_q8_1's of those NaNs."""
    case = (4, 2, d, 0, "float16")
    want, out, out_q, guards = attention_pair(case, 5, seed=d, max_position=63)  # chunk 0 only
    for g in guards:
        g.assert_guards_intact()
    nan_rows = np.isnan(cp.asnumpy(want)).all(axis=(1, 2))
    assert nan_rows.any() and not nan_rows.all()
    assert_bits_equal(out, want, "attention out with NaN rows")
    assert_q8_1_equal(out_q, quantize_q8_1(want.reshape(5, 4 * d)), "Q8_1 of NaN rows vs quantize_q8_1")


def test_attention_q8_1_heads_per_block_and_new_outputs():
    """The fused merge reads the same workspace whatever the partial kernel's heads per block; new outputs."""
    case = (16, 2, 256, 0, "float16")
    hq, hkv, d, window, dtype = case
    q, k, v, pos_table, rows_slot, positions = attention_inputs(hq, hkv, d, dtype, 3, seed=3)
    want = decode_attention(q, k, v, pos_table, rows_slot, positions, window=0, ring=False, scale=1.0)
    for hpb in (1, 8):
        out, out_q = decode_attention(q, k, v, pos_table, rows_slot, positions, window=0, ring=False, scale=1.0,
                                      heads_per_block_override=hpb, quantize=True)
        assert out_q.shape == (3, hq * d // QK8_1 * BLOCK_BYTES) and out_q.dtype == cp.uint8
        assert_bits_equal(out, want, f"out (H = {hpb})")
        check_q8_1(out_q, want.reshape(3, hq * d), f"Q8_1 (H = {hpb})")


def test_attention_q8_1_refuses_bad_inputs():
    hq, hkv, d = 4, 2, 64
    q, k, v, pos_table, rows_slot, positions = attention_inputs(hq, hkv, d, "float16", 3, seed=1)
    kw = dict(window=0, ring=False, scale=1.0)
    out = cp.empty((3, hq, d), cp.float32)
    for out_q, match in [(cp.empty((3, 287), cp.uint8), "out_q: expected shape"),
                         (cp.empty((3, 288), cp.int8), "out_q: expected dtype"),
                         (out.view(cp.uint8).reshape(-1)[:864].reshape(3, 288), "out_q: overlaps out"),
                         (np.empty((3, 288), np.uint8), "out_q: expected a cupy.ndarray")]:
        with pytest.raises(ValueError, match=match):
            decode_attention(q, k, v, pos_table, rows_slot, positions, out=out, quantize=True, out_q=out_q, **kw)
    with pytest.raises(ValueError, match="out_q: given with quantize=False"):
        decode_attention(q, k, v, pos_table, rows_slot, positions, out_q=cp.empty((3, 288), cp.uint8), **kw)


# --- the engine: the producers make the blocks, the separate launch is gone, the bits stay ---------------------------

@pytest.mark.parametrize("n", (1, 8))
def test_engine_makes_no_separate_quantize_launch(monkeypatch, n):
    """g4-12b-mini in forced decode_mmq mode: every matmul reads Q8_1 blocks, each made by its input's producer (norms,
    attention, gelu) when the producers are fused, so an eager pass of n rows launches quantize_q8_1 never; with
    CupyEngine(fused_norms=False) it does, and the logits are the same bits. attn_output and ffn_down get xq."""
    import gemma_oracle.kernels.quantize_q8_1 as q81
    from gemma_oracle.engine.factory import make_engine
    from gemma_oracle.harness.fixtures.cache import fixture_path
    from gemma_oracle.harness.suites.synthetic import sequences

    calls = []
    plain = q81.quantize_q8_1
    monkeypatch.setattr(q81, "quantize_q8_1", lambda x, **kw: calls.append(x.shape) or plain(x, **kw))
    path = fixture_path("g4-12b-mini", "q4_k_m")
    logits, counts, given = {}, {}, {}
    for fused in (True, False):
        engine = make_engine("cupy", path, route_mode="decode_mmq", fused_norms=fused, use_graphs=False)
        got = given[fused] = {}
        matvecs = engine._matvecs

        def spy(names, x, xq=None, _matvecs=matvecs, _got=got):
            for name in names:
                _got.setdefault(name.split(".", 2)[-1], set()).add(xq is not None)
            return _matvecs(names, x, xq)

        engine._matvecs = spy
        prompt = sequences(engine.vocab_size)[0][3][:n]
        seq = engine.new_sequence()
        calls.clear()
        logits[fused] = cp.asnumpy(engine.forward(prompt, list(range(n)), [seq.slot] * n, list(range(n))))
        counts[fused] = len(calls)
        served = {k: r for k, r in engine.routes_served[n].items()
                  if k.endswith(("attn_output.weight", "ffn_down.weight"))}
        assert served and set(served.values()) == {"decode_mmq"}, served
    assert counts[True] == 0 and counts[False] > 0, counts
    assert not first_bit_difference(logits[True], logits[False]), first_bit_difference(logits[True], logits[False])
    for name in ("attn_output.weight", "ffn_down.weight"):
        assert given[True][name] == {True} and given[False][name] == {False}, (name, given[True][name])
