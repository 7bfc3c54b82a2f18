"""gemma_oracle.harness.fixtures.fast_blocks: random but valid quantized blocks with a chosen value distribution.

Expectations are derived by hand from the block layouts (docs: quant-formats-and-kernels.md §1), decoded with
the independent reference dequantizer and with gguf-py, never taken from the code under test.
"""

from __future__ import annotations

import time

import gguf
import numpy as np
import pytest

from gemma_oracle.harness.fixtures import fast_blocks as fb
from gemma_oracle.kernels.reference.dequant import dequantize

pytestmark = pytest.mark.synthetic

# (values per block, bytes per block), ggml-common.h
LAYOUT = {"Q4_0": (32, 18), "Q5_0": (32, 22), "Q8_0": (32, 34),
          "Q4_K": (256, 144), "Q5_K": (256, 176), "Q6_K": (256, 210)}
TYPES = sorted(LAYOUT)

ROWS, COLS = 16, 3840          # 16 rows x 3840 = 61440 values: 1920 blocks of 32, 240 super-blocks of 256
STD = 1 / np.sqrt(3840)        # 1/sqrt(fan_in) of a Gemma 4 12B linear layer


def _decode(blocks: np.ndarray, t: str, rows: int, cols: int) -> np.ndarray:
    x = dequantize(blocks, t, (cols, rows))
    y = gguf.quants.dequantize(blocks, getattr(gguf.GGMLQuantizationType, t))
    assert np.array_equal(x, y.reshape(x.shape)), f"{t}: reference dequant and gguf-py disagree"
    return x


@pytest.mark.parametrize("t", TYPES)
def test_shape_bytes_and_distribution(t):
    block, size = LAYOUT[t]
    b = fb.random_blocks(t, ROWS, COLS, STD, np.random.default_rng(123))
    assert b.dtype == np.uint8 and b.shape == (ROWS, COLS // block * size)
    x = _decode(b, t, ROWS, COLS)
    assert x.shape == (ROWS, COLS) and np.isfinite(x).all()
    assert abs(x.std() / STD - 1) < 0.10, (t, x.std(), STD)
    assert abs(x.mean()) < 0.1 * STD, (t, x.mean(), STD)
    # every block decodes to finite values and is not all zero
    per_block = x.reshape(-1, block)
    assert (np.abs(per_block).max(axis=1) > 0).all()


@pytest.mark.parametrize("t", TYPES)
@pytest.mark.parametrize("std", [1e-3, 0.02, 1.0, 30.0])
def test_std_over_range(t, std):
    b = fb.random_blocks(t, 8, 2048, std, np.random.default_rng(7))
    x = _decode(b, t, 8, 2048)
    assert np.isfinite(x).all()
    assert abs(x.std() / std - 1) < 0.10, (t, std, x.std())
    assert abs(x.mean()) < 0.1 * std


def test_achieved_std_close_for_gemma_fan_ins():
    for t in TYPES:
        for fan_in in (3840, 15360):
            std = 1 / np.sqrt(fan_in)
            assert abs(fb.achieved_std(t, std) / std - 1) < 0.01, (t, fan_in)


def _f16(raw: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(raw).view("<f2")[..., 0].astype(np.float64)


@pytest.mark.parametrize("t", ["Q4_0", "Q5_0", "Q8_0"])
def test_simple_scale_field(t):
    """d = +-std/sqrt(E[code^2]): Q4_0 codes -8..7 -> 21.5, Q5_0 -16..15 -> 85.5, Q8_0 -128..127 -> 5461.5."""
    e_q2 = {"Q4_0": 21.5, "Q5_0": 85.5, "Q8_0": 5461.5}[t]
    _, size = LAYOUT[t]
    blk = fb.random_blocks(t, 8, 1024, 0.05, np.random.default_rng(1)).reshape(-1, size)
    d = _f16(blk[:, 0:2])
    assert np.isfinite(d).all()
    np.testing.assert_allclose(np.abs(d), 0.05 / np.sqrt(e_q2), rtol=1e-3)
    frac_neg = (d < 0).mean()
    assert 0.35 < frac_neg < 0.65  # random sign per block


@pytest.mark.parametrize("t,centre,e_c2", [("Q4_K", 7.5, 255 / 12), ("Q5_K", 15.5, 1023 / 12)])
def test_k_scale_fields(t, centre, e_c2):
    _, size = LAYOUT[t]
    blk = fb.random_blocks(t, 4, 2560, 0.05, np.random.default_rng(2)).reshape(-1, size)
    d, dmin = _f16(blk[:, 0:2]), _f16(blk[:, 2:4])
    assert (d > 0).all() and np.isfinite(dmin).all()
    np.testing.assert_allclose(dmin, centre * d, rtol=1e-3)       # centred: dmin*m = centre*d*sc with m = sc
    s = blk[:, 4:16].astype(np.int64)
    # unpack get_scale_min_k4 by hand
    sc = np.concatenate([s[:, 0:4] & 63, (s[:, 8:12] & 15) | ((s[:, 0:4] >> 6) << 4)], axis=1)
    m = np.concatenate([s[:, 4:8] & 63, (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)], axis=1)
    assert np.array_equal(sc, m)
    assert sc.min() >= 32 and sc.max() <= 63 and len(np.unique(sc)) == 32
    # d * sqrt(E[(q-centre)^2] * E[sc^2]) = std, sc uniform 32..63 -> E[sc^2] = 85.25 + 47.5^2
    np.testing.assert_allclose(d, 0.05 / np.sqrt(e_c2 * (85.25 + 47.5 ** 2)), rtol=1e-3)


def test_q6_k_scale_fields():
    blk = fb.random_blocks("Q6_K", 4, 2560, 0.05, np.random.default_rng(3)).reshape(-1, 210)
    d = _f16(blk[:, 208:210])
    assert (d < 0).all()  # d at the END, negative like the reference quantizer's usual output
    sc = blk[:, 192:208].view(np.int8).astype(np.int64)
    assert (np.abs(sc) >= 64).all()
    assert 0.35 < (sc < 0).mean() < 0.65
    # E[(q-32)^2] = 341.5; s uniform on 64..127 and -128..-65 -> E[s^2] = 341.25 + (95.5^2 + 96.5^2)/2
    np.testing.assert_allclose(-d, 0.05 / np.sqrt(341.5 * (341.25 + (95.5 ** 2 + 96.5 ** 2) / 2)), rtol=1e-3)


@pytest.mark.parametrize("t", TYPES)
def test_deterministic_and_out_param(t):
    a = fb.random_blocks(t, 8, 1024, 0.1, np.random.default_rng(42))
    b = fb.random_blocks(t, 8, 1024, 0.1, np.random.default_rng(42))
    c = fb.random_blocks(t, 8, 1024, 0.1, np.random.default_rng(43))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    out = np.zeros_like(a)
    assert fb.random_blocks(t, 8, 1024, 0.1, np.random.default_rng(42), out=out) is out
    assert np.array_equal(out, a)


def test_internal_steps_bound_and_valid(monkeypatch):
    """Tiny MAX_CHUNK_BYTES forces many generation steps; result still valid and deterministic."""
    monkeypatch.setattr(fb, "MAX_CHUNK_BYTES", 3 * 2160)  # 3 rows of Q4_K x 3840 per step
    a = fb.random_blocks("Q4_K", 20, 3840, STD, np.random.default_rng(5))
    b = fb.random_blocks("Q4_K", 20, 3840, STD, np.random.default_rng(5))
    assert np.array_equal(a, b)
    x = _decode(a, "Q4_K", 20, 3840)
    assert abs(x.std() / STD - 1) < 0.10


@pytest.mark.parametrize("t", ["Q4_0", "Q6_K"])
def test_chunked_equals_one_shot(t):
    rows = 2 * fb.CHUNK_ROWS + 37  # 3 chunks, the last partial
    cols = 512
    whole = fb.random_tensor(t, rows, cols, 0.02, seed=9, name="blk.0.ffn_up.weight")
    parts = {k: fb.random_tensor_chunk(t, rows, cols, 0.02, 9, "blk.0.ffn_up.weight", k) for k in (2, 0, 1)}
    assert np.array_equal(whole, np.concatenate([parts[0], parts[1], parts[2]]))
    out = np.zeros_like(whole)
    for k in (1, 2, 0):  # any order, into a preallocated buffer
        fb.random_tensor(t, rows, cols, 0.02, 9, "blk.0.ffn_up.weight", out=out, chunks=[k])
    assert np.array_equal(out, whole)
    other = fb.random_tensor(t, rows, cols, 0.02, seed=9, name="blk.1.ffn_up.weight")
    assert not np.array_equal(other, whole)


def test_chunk_seed_stable():
    assert fb.chunk_seed(1, "a", 0) == fb.chunk_seed(1, "a", 0)
    seeds = {fb.chunk_seed(s, n, k) for s in (0, 1) for n in ("a", "b") for k in (0, 1)}
    assert len(seeds) == 8
    assert fb.n_chunks(fb.CHUNK_ROWS) == 1 and fb.n_chunks(fb.CHUNK_ROWS + 1) == 2


def test_parallel_file_fill(tmp_path):
    t, rows, cols = "Q4_K", 3 * fb.CHUNK_ROWS, 256
    rb = cols // 256 * 144
    offset = 100
    path = tmp_path / "t.bin"
    path.write_bytes(b"\xAA" * (offset + rows * rb + 10))
    fb.random_tensor_parallel(path, offset, t, rows, cols, 0.02, 3, "w", processes=2)
    raw = np.fromfile(path, dtype=np.uint8)
    assert (raw[:offset] == 0xAA).all() and (raw[offset + rows * rb:] == 0xAA).all()
    expected = fb.random_tensor(t, rows, cols, 0.02, 3, "w")
    assert np.array_equal(raw[offset:offset + rows * rb].reshape(rows, rb), expected)


def test_bad_args():
    with pytest.raises(ValueError):
        fb.random_blocks("Q4_K", 2, 100, 0.1, np.random.default_rng(0))   # not a multiple of 256
    with pytest.raises(ValueError):
        fb.random_blocks("Q3_K", 2, 256, 0.1, np.random.default_rng(0))
    with pytest.raises(ValueError):
        fb.random_blocks("Q4_0", 2, 256, 0.0, np.random.default_rng(0))
    with pytest.raises(ValueError):
        fb.random_blocks("Q4_0", 2, 256, 1e9, np.random.default_rng(0))  # d overflows fp16
    with pytest.raises(ValueError):
        fb.random_blocks("Q4_0", 2, 256, 1e-12, np.random.default_rng(0))  # d underflows to 0


@pytest.mark.parametrize("t", TYPES)
def test_throughput_smoke(t, capsys):
    rows = 2048
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    b = fb.random_blocks(t, rows, COLS, STD, rng)
    dt = time.perf_counter() - t0
    with capsys.disabled():
        print(f"\n[fast_blocks] {t}: {b.nbytes / dt / 1e6:.0f} MB/s ({b.nbytes / 1e6:.1f} MB in {dt * 1e3:.0f} ms)")
