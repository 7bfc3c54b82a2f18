"""GPU kernels against float64 numpy references: RMS norms, NEOX RoPE, gelu_tanh * up, softcap, row argmax.

Every launch writes into the middle of a guarded buffer: 1024 elements of a known bit pattern before and after the
output (llama.cpp's sentinels) must come back untouched, and the output is poisoned with NaN before the launch, so a
value the kernel forgot to write fails the NaN screen. References are engine/backends/numpy_backend.py's ops in
float64 (or np.argmax); distances come from gemma_oracle.oracles.metrics.
"""
from __future__ import annotations

import numpy as np
import pytest

from gemma_oracle.engine.backends.numpy_backend import NumpyBackend

from .kernel_support import Guarded, assert_rows_close, inv_freq_f32

try:  # collection must work without CuPy; the gpu marker makes the plugin skip these tests there
    import cupy as cp

    from gemma_oracle.kernels.ffn_act import argmax_rows, gelu_tanh_mul, softcap
    from gemma_oracle.kernels.norms import add_rms_norm, residual_scale, rms_norm
    from gemma_oracle.kernels.rope import rope_neox
except ImportError:
    cp = None

pytestmark = pytest.mark.gpu

EPS = 1e-6            # rms_norm_eps of every Gemma 3/4 config (spec §1)
SOFTCAP = 30.0        # final_logit_softcapping (spec §2.7)

BATCHES = (1, 2, 3, 5, 8, 9, 16, 17, 32)
REF = NumpyBackend("float64")


# --- helpers --------------------------------------------------------------------------------------------------

def rows_f32(rng, rows: int, d: int) -> np.ndarray:
    """Normal rows whose magnitudes span 1e-3..1e3 (norms must not care about the scale)."""
    mag = 10.0 ** rng.uniform(-3, 3, size=(rows, 1))
    return (rng.standard_normal((rows, d)) * mag).astype(np.float32)


def ids(table: dict) -> list:
    return [pytest.param(v, id=k) for k, v in table.items()]


# --- RMS norms ------------------------------------------------------------------------------------------------

NORM_DIMS = {"d64": 64, "d100": 100, "d256": 256, "d1000": 1000, "d2560": 2560, "d5376": 5376}
PER_HEAD = {"h8-d256": (8, 256), "h16-d512": (16, 512), "h4-d64": (4, 64), "h3-d100": (3, 100)}


@pytest.mark.parametrize("rows", BATCHES, ids=lambda r: f"r{r}")
@pytest.mark.parametrize("d", ids(NORM_DIMS))
def test_rms_norm(rows, d):
    rng = np.random.default_rng(rows * 7919 + d)
    x = rows_f32(rng, rows, d)
    w = rng.uniform(0.5, 1.5, d).astype(np.float32)
    g = Guarded((rows, d))
    got = rms_norm(cp.asarray(x), cp.asarray(w), EPS, out=g.view)
    assert got is g.view
    g.assert_guards_intact()
    assert_rows_close(REF.rms_norm(x.astype(np.float64), w.astype(np.float64), EPS), cp.asnumpy(got), "rms_norm")


@pytest.mark.parametrize("rows", BATCHES, ids=lambda r: f"r{r}")
@pytest.mark.parametrize("hd", ids(PER_HEAD))
@pytest.mark.parametrize("weighted", [True, False], ids=["qk-norm", "v-norm-weightless"])
def test_rms_norm_per_head(rows, hd, weighted):
    heads, d = hd
    rng = np.random.default_rng(rows * 31 + heads * d)
    x = rows_f32(rng, rows * heads, d).reshape(rows, heads, d)
    w = rng.uniform(0.5, 1.5, d).astype(np.float32) if weighted else None
    g = Guarded((rows, heads, d))
    got = rms_norm(cp.asarray(x), None if w is None else cp.asarray(w), EPS, out=g.view)
    g.assert_guards_intact()
    ref = REF.rms_norm(x.astype(np.float64), None if w is None else w.astype(np.float64), EPS)
    assert_rows_close(ref.reshape(rows * heads, d), cp.asnumpy(got).reshape(rows * heads, d), "per-head rms_norm")


@pytest.mark.parametrize("rows", BATCHES, ids=lambda r: f"r{r}")
@pytest.mark.parametrize("d", ids({"d256": 256, "d1000": 1000, "d2560": 2560}))
@pytest.mark.parametrize("scale", [1.0, 0.7109375], ids=["scale1", "layer-scale"])
def test_add_rms_norm(rows, d, scale):
    rng = np.random.default_rng(rows * 13 + d)
    h, x = rows_f32(rng, rows, d), rows_f32(rng, rows, d)
    w = rng.uniform(0.5, 1.5, d).astype(np.float32)
    g = Guarded((rows, d))
    got = add_rms_norm(cp.asarray(h), cp.asarray(x), cp.asarray(w), EPS, scale=scale, out=g.view)
    g.assert_guards_intact()
    ref = (h.astype(np.float64) + REF.rms_norm(x.astype(np.float64), w.astype(np.float64), EPS)) * scale
    assert_rows_close(ref, cp.asnumpy(got), "add_rms_norm")


def test_add_rms_norm_in_place_residual():
    rng = np.random.default_rng(5)
    h, x = rows_f32(rng, 9, 640), rows_f32(rng, 9, 640)
    w = rng.uniform(0.5, 1.5, 640).astype(np.float32)
    h_d = cp.asarray(h)
    got = add_rms_norm(h_d, cp.asarray(x), cp.asarray(w), EPS, out=h_d)
    assert got is h_d
    ref = h.astype(np.float64) + REF.rms_norm(x.astype(np.float64), w.astype(np.float64), EPS)
    assert_rows_close(ref, cp.asnumpy(h_d), "in-place add_rms_norm")


@pytest.mark.parametrize("rows", BATCHES, ids=lambda r: f"r{r}")
def test_residual_scale(rows):
    rng = np.random.default_rng(rows)
    x = rows_f32(rng, rows, 1000)
    g = Guarded((rows, 1000))
    got = residual_scale(cp.asarray(x), 0.7109375, out=g.view)
    g.assert_guards_intact()
    assert_rows_close(x.astype(np.float64) * 0.7109375, cp.asnumpy(got), "residual_scale")


@pytest.mark.parametrize("d", ids({"d100": 100, "d2560": 2560}))
def test_rms_norm_row_is_batch_independent(d):
    """A row's bits do not depend on how many rows share the launch (fixed reduction order)."""
    rng = np.random.default_rng(d)
    x = rows_f32(rng, 17, d)
    w = cp.asarray(rng.uniform(0.5, 1.5, d).astype(np.float32))
    batch = cp.asnumpy(rms_norm(cp.asarray(x), w, EPS))
    for r in range(17):
        alone = cp.asnumpy(rms_norm(cp.asarray(x[r:r + 1]), w, EPS))
        assert np.array_equal(alone[0], batch[r]), f"row {r} differs alone vs in a batch of 17"


# --- RoPE -----------------------------------------------------------------------------------------------------

ROPE_CASES = {
    # (heads, d, inv_freq): Gemma 4 sliding (θ 1e4 over all 256 dims)
    "g4-sliding-h8-d256": (8, 256, lambda: inv_freq_f32(1e4, 256)),
    # Gemma 4 full, proportional: n_rot 512 with rope_freqs = 64 x 1.0 ++ 192 x 1e30 (spec §2.3)
    "g4-full-prop-h16-d512": (16, 512, lambda: inv_freq_f32(1e6, 512, np.r_[np.ones(64), np.full(192, 1e30)])),
    "partial-h4-d128-rot64": (4, 128, lambda: inv_freq_f32(1e4, 64)),
    "h2-d64": (2, 64, lambda: inv_freq_f32(1e4, 64)),
}


def rope_reference(x: np.ndarray, positions: np.ndarray, inv_freq: np.ndarray) -> np.ndarray:
    """The launcher's contract: the angle position * inv_freq is one float32 multiply, the rest is float64.

    Reuses NumpyBackend.rope row by row with position 1 and the row's float32 angles as its inv_freq."""
    out = np.empty(x.shape, dtype=np.float64)
    for r in range(x.shape[0]):
        ang = (np.float32(positions[r]) * inv_freq).astype(np.float64)
        out[r] = REF.rope(x[r: r + 1].astype(np.float64), np.ones(1), ang)[0]
    return out


@pytest.mark.parametrize("rows", BATCHES, ids=lambda r: f"r{r}")
@pytest.mark.parametrize("case", ids(ROPE_CASES))
def test_rope_neox(rows, case):
    heads, d, make_inv = case
    inv = make_inv()
    rng = np.random.default_rng(rows * 101 + d)
    x = rng.standard_normal((rows, heads, d)).astype(np.float32)
    pos = rng.integers(0, 131072, size=rows).astype(np.int32)
    pos[0] = 0
    g = Guarded((rows, heads, d))
    got = rope_neox(cp.asarray(x), cp.asarray(pos), cp.asarray(inv), out=g.view)
    g.assert_guards_intact()
    ref = rope_reference(x, pos, inv)
    assert_rows_close(ref, cp.asnumpy(got), "rope_neox")
    got_np = cp.asnumpy(got)
    n_rot = 2 * inv.shape[0]
    assert np.array_equal(got_np[..., n_rot:], x[..., n_rot:]), "dims >= n_rot must pass through unchanged"
    if case is ROPE_CASES["g4-full-prop-h16-d512"]:
        # proportional RoPE: dims 64..255 and 320..511 carry factor-1e30 angles (<~1e-30 rad): unchanged to fp32
        keep = np.r_[64:256, 320:512]
        np.testing.assert_allclose(got_np[..., keep], x[..., keep], rtol=1e-6, atol=0)


def test_rope_in_place():
    rng = np.random.default_rng(3)
    inv = inv_freq_f32(1e4, 256)
    x = rng.standard_normal((5, 8, 256)).astype(np.float32)
    pos = np.array([0, 1, 511, 4096, 100000], dtype=np.int32)
    x_d = cp.asarray(x)
    rope_neox(x_d, cp.asarray(pos), cp.asarray(inv), out=x_d)
    assert_rows_close(rope_reference(x, pos, inv), cp.asnumpy(x_d), "in-place rope_neox")


# --- gelu_tanh * up, softcap ------------------------------------------------------------------------------------

FFN_WIDTHS = {"f704": 704, "f1000": 1000, "f2112": 2112, "f6144": 6144}


@pytest.mark.parametrize("rows", BATCHES, ids=lambda r: f"r{r}")
@pytest.mark.parametrize("f", ids(FFN_WIDTHS))
def test_gelu_tanh_mul(rows, f):
    rng = np.random.default_rng(rows * 17 + f)
    gate = (rng.standard_normal((rows, f)) * 3).astype(np.float32)
    gate[0, :8] = [-30, -10, -5, -1e-3, 0, 1e-3, 10, 30]
    up = rng.standard_normal((rows, f)).astype(np.float32)
    g = Guarded((rows, f))
    got = gelu_tanh_mul(cp.asarray(gate), cp.asarray(up), out=g.view)
    g.assert_guards_intact()
    ref = REF.gelu_tanh(gate.astype(np.float64)) * up.astype(np.float64)
    assert_rows_close(ref, cp.asnumpy(got), "gelu_tanh_mul")


@pytest.mark.parametrize("rows", BATCHES, ids=lambda r: f"r{r}")
@pytest.mark.parametrize("v", ids({"v1000": 1000, "v4097": 4097, "v262144": 262144}))
def test_softcap(rows, v):
    rng = np.random.default_rng(rows * 3 + v)
    x = (rng.standard_normal((rows, v)) * 40).astype(np.float32)
    g = Guarded((rows, v))
    got = softcap(cp.asarray(x), SOFTCAP, out=g.view)
    g.assert_guards_intact()
    assert_rows_close(REF.softcap(x.astype(np.float64), SOFTCAP), cp.asnumpy(got), "softcap")


# --- argmax -----------------------------------------------------------------------------------------------------

ARGMAX_VOCABS = {"v1": 1, "v1000": 1000, "v4097": 4097, "v262144": 262144}


def argmax_rows_input(rng, rows: int, v: int) -> np.ndarray:
    """Random logits with planted edge rows: ties (lower index must win), NaNs, all -inf, -0.0 vs +0.0."""
    x = rng.standard_normal((rows, v)).astype(np.float32)
    for r in range(rows):
        kind = r % 5
        if kind == 1 and v >= 3:    # tie between two maxima
            i, j = sorted(rng.choice(v, 2, replace=False))
            x[r, i] = x[r, j] = 100.0
        elif kind == 2 and v >= 3:  # NaNs: np.argmax returns the first NaN
            x[r, rng.choice(v, 2, replace=False)] = np.nan
        elif kind == 3:             # all -inf: index 0
            x[r] = -np.inf
        elif kind == 4 and v >= 3:  # signed zeros as the maximum: equal, the lower index wins
            x[r] = -1.0
            i, j = sorted(rng.choice(v, 2, replace=False))
            x[r, i], x[r, j] = -0.0, 0.0
    return x


@pytest.mark.parametrize("rows", BATCHES, ids=lambda r: f"r{r}")
@pytest.mark.parametrize("v", ids(ARGMAX_VOCABS))
def test_argmax_rows(rows, v):
    rng = np.random.default_rng(rows * 11 + v)
    x = argmax_rows_input(rng, rows, v)
    g = Guarded((rows,), dtype=np.int32, poison=-1)
    got = argmax_rows(cp.asarray(x), out=g.view)
    g.assert_guards_intact()
    want = np.argmax(x, axis=1).astype(np.int32)
    got_np = cp.asnumpy(got)
    bad = np.flatnonzero(got_np != want)
    assert bad.size == 0, f"row {bad[0]}: kernel {got_np[bad[0]]} vs np.argmax {want[bad[0]]}"


def test_launchers_refuse_bad_inputs():
    x = cp.zeros((4, 64), dtype=cp.float32)
    with pytest.raises(TypeError):
        rms_norm(x.astype(cp.float64), None, EPS)
    with pytest.raises(ValueError):
        rms_norm(x[:, ::2], None, EPS)  # not contiguous
    with pytest.raises(ValueError):
        rms_norm(x, cp.ones(63, dtype=cp.float32), EPS)
    with pytest.raises(ValueError):
        rms_norm(x, None, EPS, out=cp.empty((4, 63), dtype=cp.float32))
    with pytest.raises(ValueError):
        rope_neox(x.reshape(4, 1, 64), cp.zeros(4, dtype=cp.int32), cp.ones(33, dtype=cp.float32))
    with pytest.raises(ValueError):
        gelu_tanh_mul(x, cp.zeros((4, 65), dtype=cp.float32))
    with pytest.raises(ValueError):
        argmax_rows(cp.zeros((4, 0), dtype=cp.float32))
