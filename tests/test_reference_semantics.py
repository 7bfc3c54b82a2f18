"""Reference semantics of the float64 engine, pinned against expectations computed here from the spec.

Spec: ../shared/reference/gemma4-architecture.md §2 (forward pass), §4 (norms), §5.4 (Gemma 3 switches) and the
unit tests its §8 item 4 asks for. Every expected value below is computed in this file, from the formula in the
spec and the file's dequantized weights (scalar `math` loops for RoPE, GELU, softcap, attention), never taken
from the code under test. Where a test needs the input of a deep layer it records that input from the engine
and recomputes the layer itself; the layer's own arithmetic is what is pinned.

Numbers are compared through gemma_oracle.oracles.metrics (max_abs, nmse, argmax_agreement); exact identity uses
np.array_equal.
"""
from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import numpy as np
import pytest

from gemma_oracle.engine.backends.numpy_backend import NumpyBackend
from gemma_oracle.engine.config import GemmaConfig, config_from_gguf
from gemma_oracle.engine.engine import GemmaEngine
from gemma_oracle.engine.gguf_file import GGUFFile
from gemma_oracle.engine.model import rope_inv_freq
from gemma_oracle.engine.model_file import load_model
from gemma_oracle.harness.fixtures.cache import fixture_path
from gemma_oracle.oracles.metrics import argmax_agreement, max_abs, nmse, screen_nonfinite

pytestmark = pytest.mark.synthetic

# --- tolerances (float64 throughout unless stated) ------------------------------------------------------------
# Same formula, different evaluation order (numpy vectorised vs scalar math loop) on O(1) values: ~1e-15.
F64_CLOSE = 1e-12
# RoPE angle p * w at p = 1e5: math.pow and numpy's power may differ by one ulp in w, i.e. ~1e5 * 2e-16 rad.
ROPE_ANGLE_CLOSE = 1e-9
# Proportional RoPE: the "unrotated" pairs turn by p * w / 1e30 <= 1e5 * 1 / 1e30 = 1e-25 rad (spec §8 item 4).
UNROTATED_REL = 1e-25
# Weightless rms: mean(v^2) = ms / (ms + eps) = 1 - eps/ms; the synthetic V projections have ms ~ 1, eps 1e-6.
UNIT_RMS_TOL = 1e-4
# A mistake shows as an O(1) difference; this floor says "clearly not the same".
CLEARLY_DIFFERENT = 1e-2
# Chunked prefill vs token-by-token decode, float64: only BLAS blocking differs (~1e-16 relative -> NMSE ~1e-32).
CHUNK_NMSE_MAX = 1e-24
# numpy32 vs numpy64 on g4-12b-mini f32: observed NMSE 6.5e-13 .. 9.0e-13 over 5 positions; bound from the brief.
F32_VS_F64_NMSE_MAX = 1e-8
SOFTCAP = 30.0

GELU_C = math.sqrt(2.0 / math.pi)


# ============================================================================================ scalar references
def ref_rms(x: np.ndarray, w: np.ndarray | None, eps: float) -> np.ndarray:
    """x / sqrt(mean(x^2) + eps) over the last axis, times w as stored (spec §2 notation, §4)."""
    x = np.asarray(x, dtype=np.float64)
    y = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)
    return y if w is None else y * np.asarray(w, dtype=np.float64)


def ref_omega(d: int, base: float, rotated_pairs: int) -> list[float]:
    """Spec §2.3: w_i = base^(-2i/d) for the first `rotated_pairs` pairs, 0 for the rest (d is the FULL head dim)."""
    return [math.pow(base, -2.0 * i / d) if i < rotated_pairs else 0.0 for i in range(d // 2)]


def ref_rope(x: np.ndarray, p: int, omega: list[float]) -> np.ndarray:
    """NEOX RoPE of one vector (last axis d) at position p, pair (i, i + d/2), by scalar loops."""
    x = np.asarray(x, dtype=np.float64)
    half = x.shape[-1] // 2
    assert len(omega) == half
    y = x.copy()
    for i in range(half):
        c, s = math.cos(p * omega[i]), math.sin(p * omega[i])
        y[..., i] = x[..., i] * c - x[..., i + half] * s
        y[..., i + half] = x[..., i + half] * c + x[..., i] * s
    return y


def ref_rope_partial_first(x: np.ndarray, p: int, n_rot: int, base: float) -> np.ndarray:
    """The common mistake (spec §2.3): standard partial NEOX over the first n_rot dims, pairs (i, i + n_rot/2)."""
    y = np.asarray(x, dtype=np.float64).copy()
    h = n_rot // 2
    for i in range(h):
        a = p * math.pow(base, -2.0 * i / n_rot)
        c, s = math.cos(a), math.sin(a)
        y[..., i] = x[..., i] * c - x[..., i + h] * s
        y[..., i + h] = x[..., i + h] * c + x[..., i] * s
    return y


def ref_gelu(x: float) -> float:
    return 0.5 * x * (1.0 + math.tanh(GELU_C * (x + 0.044715 * x**3)))


def ref_attend(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float, *, interleaved: bool = False) -> np.ndarray:
    """Brute force: head h reads KV head h // (Hq/Hkv); softmax over keys of scale * q.k (spec §2.3 steps 4-6).
    interleaved=True is the wrong mapping h % Hkv (used to show the test tells them apart)."""
    hq, d = q.shape
    n, hkv, _ = k.shape
    group = hq // hkv
    out = np.zeros((hq, d))
    for h in range(hq):
        g = h % hkv if interleaved else h // group
        s = [scale * sum(float(q[h, e]) * float(k[j, g, e]) for e in range(d)) for j in range(n)]
        m = max(s)
        w = [math.exp(t - m) for t in s]
        z = sum(w)
        for j in range(n):
            out[h] += (w[j] / z) * v[j, g]
    return out


def gemma4_like_config() -> GemmaConfig:
    """Two layers with the real Gemma 4 head dims: 0 slides (d 256, base 1e4), 1 is full (d 512, base 1e6)."""
    return GemmaConfig(
        arch="gemma4", n_layers=2, hidden=64, n_heads=2, vocab_size=16, context_length=1 << 20, rms_eps=1e-6,
        layer_is_sliding=(True, False), head_dim_full=512, head_dim_sliding=256, n_kv_heads=(1, 1), n_ff=(64, 64),
        sliding_window=512, rope_base_full=1e6, rope_base_sliding=1e4, rope_dims_full=512, rope_dims_sliding=256,
        final_softcap=SOFTCAP, has_rope_freqs=True,
    )


# Spec §2.3 / §3.2: rope_freqs.weight = [1.0] x 64 ++ [1e30] x 192, stored as F32 (the engine reads it as F32).
ROPE_FREQS = np.array([1.0] * 64 + [1e30] * 192, dtype=np.float32).astype(np.float64)
ROPE_POSITIONS = (1, 17, 1000, 100000)


# ============================================================================================ RoPE
@pytest.mark.parametrize("p", ROPE_POSITIONS, ids=[f"p{p}" for p in ROPE_POSITIONS])
def test_proportional_rope_full_layer(p):
    cfg = gemma4_like_config()
    inv = rope_inv_freq(cfg, 1, ROPE_FREQS)
    x = np.random.default_rng(p).standard_normal((1, 3, 512))  # [rows, heads, d]
    y = NumpyBackend("float64").rope(x, np.array([p]), inv)[0]
    x = x[0]

    untouched = np.r_[64:256, 320:512]
    assert max_abs(x[:, untouched], y[:, untouched]).max() <= UNROTATED_REL * np.abs(x).max(), \
        "dims 64..255 and 320..511 must pass through a proportional (factor 0.25) full layer unchanged"

    expected = ref_rope(x, p, ref_omega(512, 1e6, rotated_pairs=64))  # denominator 512, not 128
    rotated = np.r_[0:64, 256:320]
    assert max_abs(expected[:, rotated], y[:, rotated]).max() <= ROPE_ANGLE_CLOSE
    assert max_abs(expected, y).max() <= ROPE_ANGLE_CLOSE

    # The common mistake, "rotate the first 128 dims" (pairs (i, i+64), w = 1e6^(-2i/128)), is not what happens.
    wrong = ref_rope_partial_first(x, p, n_rot=128, base=1e6)
    assert max_abs(wrong, y).max() > CLEARLY_DIFFERENT


@pytest.mark.parametrize("p", ROPE_POSITIONS, ids=[f"p{p}" for p in ROPE_POSITIONS])
def test_sliding_rope_rotates_all_pairs_neox(p):
    cfg = gemma4_like_config()
    inv = rope_inv_freq(cfg, 0, ROPE_FREQS)  # rope_freqs must be ignored on sliding layers
    x = np.random.default_rng(p + 1).standard_normal((1, 2, 256))
    y = NumpyBackend("float64").rope(x, np.array([p]), inv)[0]
    expected = ref_rope(x[0], p, ref_omega(256, 1e4, rotated_pairs=128))
    assert max_abs(expected, y).max() <= ROPE_ANGLE_CLOSE
    # GPT-J / interleaved pairing (2i, 2i+1) would give something else.
    inter = x[0].copy()
    for i in range(128):
        a = p * math.pow(1e4, -2.0 * i / 256)
        c, s = math.cos(a), math.sin(a)
        inter[:, 2 * i] = x[0][:, 2 * i] * c - x[0][:, 2 * i + 1] * s
        inter[:, 2 * i + 1] = x[0][:, 2 * i + 1] * c + x[0][:, 2 * i] * s
    assert max_abs(inter, y).max() > CLEARLY_DIFFERENT


def test_rope_rows_use_their_own_positions():
    """A prefill chunk ropes each row at its own position."""
    cfg = gemma4_like_config()
    inv = rope_inv_freq(cfg, 1, ROPE_FREQS)
    positions = [0, 5, 77]
    x = np.random.default_rng(7).standard_normal((3, 2, 512))
    y = NumpyBackend("float64").rope(x, np.array(positions), inv)
    omega = ref_omega(512, 1e6, 64)
    for r, p in enumerate(positions):
        assert max_abs(ref_rope(x[r], p, omega), y[r]).max() <= ROPE_ANGLE_CLOSE
    assert np.array_equal(x[0], y[0])  # position 0: identity


# ============================================================================================ small ops
def test_rms_norm_uses_weight_as_stored_with_eps_inside_sqrt():
    ops = NumpyBackend("float64")
    rng = np.random.default_rng(0)
    w = 1.0 + 0.3 * rng.standard_normal(16)
    eps = 1e-6
    # Tiny activations (mean x^2 ~ 1e-8 << eps) so eps inside vs outside the sqrt differ by O(1).
    for scale in (1.0, 1e-4):
        x = scale * rng.standard_normal((3, 16))
        expected = np.empty_like(x)
        for r in range(3):
            ms = sum(float(t) * float(t) for t in x[r]) / 16
            expected[r] = [x[r, i] / math.sqrt(ms + eps) * w[i] for i in range(16)]
        got = ops.rms_norm(x, w, eps)
        assert max_abs(expected, got).max() <= F64_CLOSE * max(1.0, np.abs(expected).max())
        plus_one = expected / w * (1.0 + w)  # the "(1+w)" convention, wrong for Gemma 4 (spec §4)
        assert max_abs(plus_one, got).max() > CLEARLY_DIFFERENT
    # eps outside the sqrt, x / (sqrt(ms) + eps), is a different function on small inputs.
    x = 1e-4 * rng.standard_normal((1, 16))
    outside = x / (np.sqrt(np.mean(x * x)) + eps) * w
    assert max_abs(outside, ops.rms_norm(x, w, eps)).max() > CLEARLY_DIFFERENT


def test_rms_norm_weightless():
    ops = NumpyBackend("float64")
    x = np.random.default_rng(1).standard_normal((2, 3, 32))  # per head: last axis only
    got = ops.rms_norm(x, None, 1e-6)
    for idx in np.ndindex(2, 3):
        ms = sum(float(t) ** 2 for t in x[idx]) / 32
        assert max_abs(x[idx] / math.sqrt(ms + 1e-6), got[idx]) <= F64_CLOSE


GQA_CASES = {"hq8-hkv2": (8, 2), "hq4-hkv1": (4, 1), "hq3-hkv3": (3, 3), "hq16-hkv1": (16, 1)}


@pytest.mark.parametrize("hq,hkv", GQA_CASES.values(), ids=GQA_CASES.keys())
def test_attend_gqa_matches_brute_force(hq, hkv):
    rng = np.random.default_rng(hq * 10 + hkv)
    d, n, scale = 12, 7, 0.37
    q, k, v = rng.standard_normal((hq, d)), rng.standard_normal((n, hkv, d)), rng.standard_normal((n, hkv, d))
    got = NumpyBackend("float64").attend(q, k, v, scale)
    assert max_abs(ref_attend(q, k, v, scale), got).max() <= F64_CLOSE
    # The scale argument is applied (and not 1/sqrt(d) on top of it).
    assert max_abs(ref_attend(q, k, v, 1.0), got).max() > CLEARLY_DIFFERENT
    if 1 < hkv < hq:  # the interleaved mapping h % Hkv is a different model
        assert max_abs(ref_attend(q, k, v, scale, interleaved=True), got).max() > CLEARLY_DIFFERENT


def test_gelu_tanh_formula():
    xs = np.array([-6.0, -3.0, -1.0, -0.5, -1e-3, 0.0, 1e-3, 0.5, 1.0, 2.0, 3.0, 6.0])
    got = NumpyBackend("float64").gelu_tanh(xs)
    assert max_abs(np.array([ref_gelu(float(x)) for x in xs]), got) <= F64_CLOSE
    assert max_abs(np.array([0.8411919906082768]), got[[8]]) <= F64_CLOSE  # gelu_tanh(1), a published value
    erf_gelu = np.array([0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0))) for x in xs])
    assert max_abs(erf_gelu, got) > 1e-4  # the tanh approximation, not the erf form


def test_softcap_formula():
    xs = np.array([-1e4, -100.0, -30.0, -29.0, -1.0, 0.0, 0.5, 1.0, 29.0, 30.0, 100.0, 1e4])
    got = NumpyBackend("float64").softcap(xs, SOFTCAP)
    assert max_abs(np.array([SOFTCAP * math.tanh(x / SOFTCAP) for x in xs]), got) <= F64_CLOSE


# ============================================================================================ engine fixtures
@pytest.fixture(scope="module")
def mf_12b():
    return load_model(fixture_path("g4-12b-mini", "f32"))


@pytest.fixture(scope="module")
def mf_e2b():
    return load_model(fixture_path("g4-e2b-mini", "f32"))


def prompt(n: int, seed: int, vocab: int) -> list[int]:
    rng = np.random.default_rng(seed)
    return [2] + [int(t) for t in rng.integers(4, vocab, size=n - 1)]


def deq(mf, name: str) -> np.ndarray:
    return mf.dequantize(name).astype(np.float64)


def record_calls(obj, method: str, sink: list):
    """Wrap obj.method (an instance attribute shadows the class method) to append its arguments to `sink`."""
    original = getattr(obj, method)

    def wrapper(*args, **kwargs):
        sink.append(args)
        return original(*args, **kwargs)

    setattr(obj, method, wrapper)


# ============================================================================================ the V path
def _slots(kv):
    """(slot, position) of every filled cache slot, in position order."""
    return sorted(((s, int(p)) for s, p in enumerate(kv.pos) if p >= 0), key=lambda sp: sp[1])


def _expected_kv(mf, layer: int, h: np.ndarray, positions, *, k_eq_v: bool):
    """K and V of `layer` for residual inputs h [n, hidden], from the dequantized weights (spec §2.3 step 3)."""
    cfg = mf.config
    d, hkv = cfg.head_dim(layer), cfg.n_kv_heads[layer]
    p = f"blk.{layer}."
    a = ref_rms(h, deq(mf, p + "attn_norm.weight"), cfg.rms_eps)
    k_raw = (a @ deq(mf, p + "attn_k.weight").T).reshape(-1, hkv, d)
    v_raw = k_raw if k_eq_v else (a @ deq(mf, p + "attn_v.weight").T).reshape(-1, hkv, d)
    k_normed = ref_rms(k_raw, deq(mf, p + "attn_k_norm.weight"), cfg.rms_eps)
    if cfg.layer_is_sliding[layer]:
        omega = ref_omega(d, cfg.rope_base_sliding, d // 2)
    else:  # proportional: rope_freqs 1.0 on the first quarter of the pairs, 1e30 elsewhere (the fixture's 0.25)
        freqs = deq(mf, "rope_freqs.weight")
        omega = [w if f == 1.0 else 0.0 for w, f in zip(ref_omega(d, cfg.rope_base_full, d // 2), freqs)]
    k = np.stack([ref_rope(k_normed[r], pos, omega) for r, pos in enumerate(positions)])
    v = ref_rms(v_raw, None, cfg.rms_eps)
    return k, v, k_normed


def test_v_path_keqv_layer_is_rms_of_raw_k(mf_12b):
    """12B-like layer 5 (global, no attn_v): V = rms(raw K projection), weightless; K = RoPE(k_norm(raw K))."""
    cfg = mf_12b.config
    assert cfg.layer_k_eq_v[5] and not mf_12b.has("blk.5.attn_v.weight") and not cfg.layer_is_sliding[5]
    engine = GemmaEngine(mf_12b, "numpy64")
    seen = []
    record_calls(engine.model, "attention", seen)
    seq = engine.new_sequence()
    engine.prefill(seq, prompt(11, 0, engine.vocab_size))  # two chunks (8 + 3)
    h5 = np.concatenate([np.asarray(args[2]) for args in seen if args[0] == 5])
    pos5 = np.concatenate([np.asarray(args[4]) for args in seen if args[0] == 5])
    assert pos5.tolist() == list(range(11))

    k, v, k_normed = _expected_kv(mf_12b, 5, h5, pos5.tolist(), k_eq_v=True)
    kv = seq.layers[5]
    slots = [s for s, _ in _slots(kv)]
    assert [p for _, p in _slots(kv)] == list(range(11))
    assert max_abs(v, kv.v[slots]).max() <= F64_CLOSE, "cached V must be rms(raw K projection)"
    assert max_abs(k, kv.k[slots]).max() <= ROPE_ANGLE_CLOSE, "cached K must be RoPE(k_norm(raw K))"
    # ... and V is not the normed or the normed+rotated K.
    assert max_abs(k_normed, kv.v[slots]).max() > CLEARLY_DIFFERENT
    assert max_abs(kv.k[slots], kv.v[slots]).max() > CLEARLY_DIFFERENT


def test_v_path_sliding_layer0_from_the_embedding(mf_12b):
    """Layer 0 from scratch (its input is the scaled embedding, spec §2.1): V = rms(attn_v . a), K = RoPE(k_norm(K))."""
    cfg = mf_12b.config
    engine = GemmaEngine(mf_12b, "numpy64")
    seq = engine.new_sequence()
    tokens = prompt(10, 1, engine.vocab_size)
    engine.prefill(seq, tokens)
    x0 = deq(mf_12b, "token_embd.weight")[tokens] * float(np.float32(math.sqrt(cfg.hidden)))
    k, v, _ = _expected_kv(mf_12b, 0, x0, list(range(10)), k_eq_v=False)
    kv = seq.layers[0]
    slots = [s for s, _ in _slots(kv)]
    assert max_abs(v, kv.v[slots]).max() <= F64_CLOSE
    assert max_abs(k, kv.k[slots]).max() <= ROPE_ANGLE_CLOSE


@pytest.mark.parametrize("preset", ["g4-12b-mini", "g4-e2b-mini", "keqv-mixed"])
def test_v_has_unit_rms_per_head_in_every_owning_layer(preset):
    """Gemma 4's weightless v-norm applies in every KV-owning layer, with or without attn_v (spec §2.3, §5.4)."""
    engine = GemmaEngine(fixture_path(preset, "f32"), "numpy64")
    seq = engine.new_sequence()
    engine.prefill(seq, prompt(6, 2, engine.vocab_size))
    assert engine.config.v_norm
    for layer, kv in seq.layers.items():
        slots = [s for s, _ in _slots(kv)]
        ms = np.mean(kv.v[slots] ** 2, axis=-1)  # [n, Hkv]
        assert max_abs(np.ones_like(ms), ms).max() <= UNIT_RMS_TOL, f"layer {layer}: V is not unit-RMS per head"
        kms = np.mean(kv.k[slots] ** 2, axis=-1)  # K carries k_norm's weight (~0.3): not unit RMS
        assert max_abs(np.ones_like(kms), kms).max() > CLEARLY_DIFFERENT, f"layer {layer}"


def _as_gemma3(gguf: GGUFFile):
    """The metadata and tensor list of a Gemma 4 fixture relabelled as gemma3 (what config_from_gguf reads)."""
    md = {("gemma3." + k[len("gemma4."):] if k.startswith("gemma4.") else k): v for k, v in gguf.metadata.items()}
    md["general.architecture"] = "gemma3"
    return SimpleNamespace(path=gguf.path, metadata=md, tensors=dict(gguf.tensors))


def test_gemma3_config_has_no_v_norm_and_scales_q():
    gguf = GGUFFile(fixture_path("keqv-mixed", "f32"))
    g4 = config_from_gguf(gguf)
    g3 = config_from_gguf(_as_gemma3(gguf))
    assert g4.v_norm and g4.query_scale == 1.0
    assert g3.arch == "gemma3" and g3.v_norm is False
    assert g3.query_scale == 1.0 / math.sqrt(gguf.metadata["gemma4.attention.key_length"])  # spec §5.2
    assert not any(g3.layer_k_eq_v)


def test_v_norm_switch_off_stores_raw_v():
    """With v_norm off (the Gemma 3 switch), layer 0's cached V is the raw attn_v projection, not unit-RMS."""
    mf = load_model(fixture_path("keqv-mixed", "f32"))
    mf3 = dataclasses.replace(mf, config=mf.config.with_options(v_norm=False))
    engine = GemmaEngine(mf3, "numpy64")
    seq = engine.new_sequence()
    tokens = prompt(5, 3, engine.vocab_size)
    engine.prefill(seq, tokens)
    cfg = mf.config
    x0 = deq(mf, "token_embd.weight")[tokens] * float(np.float32(math.sqrt(cfg.hidden)))
    a = ref_rms(x0, deq(mf, "blk.0.attn_norm.weight"), cfg.rms_eps)
    v_raw = (a @ deq(mf, "blk.0.attn_v.weight").T).reshape(-1, cfg.n_kv_heads[0], cfg.head_dim(0))
    kv = seq.layers[0]
    slots = [s for s, _ in _slots(kv)]
    assert max_abs(v_raw, kv.v[slots]).max() <= F64_CLOSE
    ms = np.mean(kv.v[slots] ** 2, axis=-1)
    assert max_abs(np.ones_like(ms), ms).max() > CLEARLY_DIFFERENT


# ============================================================================================ sliding mask
def _positions_of(kv, keys: np.ndarray) -> list[int]:
    """Which cached positions the returned key rows are (keys are random vectors, so each row matches one slot)."""
    out = []
    for row in keys:
        hits = [int(kv.pos[s]) for s in range(kv.capacity) if kv.pos[s] >= 0 and np.array_equal(kv.k[s], row)]
        assert len(hits) == 1
        out.append(hits[0])
    return out


def test_sliding_window_holds_exactly_w_keys(mf_e2b):
    cfg = mf_e2b.config
    W = cfg.sliding_window
    assert W == 8 and cfg.layer_is_sliding[0] and not cfg.layer_is_sliding[4]
    engine = GemmaEngine(mf_e2b, "numpy64")
    seq = engine.new_sequence()
    engine.prefill(seq, prompt(30, 4, engine.vocab_size))
    sliding, glob = seq.layers[0], seq.layers[4]
    # After 30 tokens the ring of window + chunk - 1 slots still covers every query of the last chunk (22..29).
    for p in range(22, 30):
        keys, values = sliding.visible(p, W)
        assert keys.shape[0] == values.shape[0] == W
        assert _positions_of(sliding, keys) == list(range(p - W + 1, p + 1)), f"position {p}"
    for p in (0, 7, 8, 20, 29):
        keys, values = glob.visible(p, None)
        assert keys.shape[0] == values.shape[0] == p + 1
        assert _positions_of(glob, keys) == list(range(p + 1))


# ============================================================================================ KV sharing
def test_kv_shared_layers_own_no_cache_and_read_their_source(mf_e2b):
    cfg = mf_e2b.config
    F = cfg.n_layers - cfg.shared_kv_layers
    # HF's rule (spec §1): a shared layer reads the last layer < F of its own attention type.
    expected_src = [
        l if l < F else max(j for j in range(F) if cfg.layer_is_sliding[j] == cfg.layer_is_sliding[l])
        for l in range(cfg.n_layers)
    ]
    assert (F, expected_src) == (5, [0, 1, 2, 3, 4, 3, 3, 3, 3, 4])
    engine = GemmaEngine(mf_e2b, "numpy64")
    assert all(engine.model.w.layers[l].k is None and engine.model.w.layers[l].v is None for l in range(F, cfg.n_layers))
    seq = engine.new_sequence()
    engine.prefill(seq, prompt(12, 5, engine.vocab_size))
    assert sorted(seq.layers) == list(range(F))

    token = 77
    base = engine.decode([seq.clone()], [token])
    readers = {src: 1 + sum(1 for l in range(F, cfg.n_layers) if expected_src[l] == src) for src in (3, 4)}
    assert readers == {3: 5, 4: 2}
    for src in (3, 4):
        # Perturb only what the SHARED layers read: the source layer's own (first) read is left intact.
        st = seq.clone()
        kv, calls = st.layers[src], []
        original = kv.visible

        def perturbed(position, window, kv=kv, original=original, calls=calls):
            keys, values = original(position, window)
            calls.append(position)
            return (keys, values) if len(calls) == 1 else (keys, values + 0.5)

        kv.visible = perturbed
        out = engine.decode([st], [token])
        assert len(calls) == readers[src], f"source {src}: read {len(calls)} times, expected {readers[src]}"
        assert nmse(base, out).max() > 1e-6, f"shared layers reading layer {src}'s cache do not change the logits"
        # Perturbing the source cache itself (all its readers) changes the logits too.
        st2 = seq.clone()
        st2.layers[src].v[...] += 0.5
        assert nmse(base, engine.decode([st2], [token])).max() > 1e-6


# ============================================================================================ lm-head + softcap
def test_softcap_applied_after_tied_lm_head(mf_12b):
    cfg = mf_12b.config
    assert cfg.tied_output and cfg.final_softcap == SOFTCAP and not mf_12b.has("output.weight")
    engine = GemmaEngine(mf_12b, "numpy64")
    hidden_in = []
    record_calls(engine.model, "logits", hidden_in)
    seq = engine.new_sequence()
    rows = [engine.prefill(seq, prompt(8, 6, engine.vocab_size))]  # one chunk: one logits call
    for t in (5, 300, 41):
        rows.append(engine.decode([seq], [t])[0])
    logits = np.asarray(rows)
    h = np.concatenate([np.asarray(args[0]) for args in hidden_in])
    assert h.shape == (4, cfg.hidden)

    emb, onorm = deq(mf_12b, "token_embd.weight"), deq(mf_12b, "output_norm.weight")
    z = ref_rms(h, onorm, cfg.rms_eps) @ emb.T  # tied head, NOT multiplied by the embedding scale (spec §2.7)
    expected = np.array([[SOFTCAP * math.tanh(float(t) / SOFTCAP) for t in row] for row in z])
    assert max_abs(expected, logits).max() <= F64_CLOSE
    assert np.abs(logits).max() < SOFTCAP
    assert max_abs(z, logits).max() > 1.0  # the cap visibly bends the largest logits

    # GemmaModel.logits on a hand-made hidden state.
    x = np.random.default_rng(8).standard_normal((3, cfg.hidden)) * 5.0
    z = ref_rms(x, onorm, cfg.rms_eps) @ emb.T
    expected = np.array([[SOFTCAP * math.tanh(float(t) / SOFTCAP) for t in row] for row in z])
    assert max_abs(expected, engine.model.logits(x)).max() <= F64_CLOSE


# ============================================================================================ chunking / memo
CHUNK_PRESETS = ["g4-e2b-mini", "keqv-mixed"]  # e2b: window 8, PLE, KV sharing; 26 tokens wrap its rings


@pytest.mark.parametrize("preset", CHUNK_PRESETS)
def test_chunked_prefill_equals_token_by_token(preset):
    mf = load_model(fixture_path(preset, "f32"))
    tokens = prompt(26, 9, mf.config.vocab_size)
    forced = [11, 222, 333]

    ref_engine = GemmaEngine(mf, "numpy64")
    seq = ref_engine.new_sequence()
    ref = [ref_engine.prefill(seq, tokens[:1])]
    for t in tokens[1:] + forced:
        ref.append(ref_engine.decode([seq], [t])[0])
    ref = np.asarray(ref)  # logits at positions 0..28
    assert screen_nonfinite(ref, ref) is None

    for chunk in (1, 3, 8):
        engine = GemmaEngine(mf, "numpy64", prefill_chunk=chunk)
        seq = engine.new_sequence()
        got = [engine.prefill(seq, tokens)]
        for t in forced:
            got.append(engine.decode([seq], [t])[0])
        got = np.asarray(got)
        err = nmse(ref[len(tokens) - 1 :], got)
        assert err.max() <= CHUNK_NMSE_MAX, f"{preset} prefill_chunk={chunk}: NMSE {err.tolist()}"
        # A prefix prefilled in chunks ends at the token-by-token logits of its last position too.
        for n in (5, 17):
            s = engine.new_sequence()
            assert nmse(ref[n - 1], engine.prefill(s, tokens[:n])) <= CHUNK_NMSE_MAX, f"chunk {chunk}, prefix {n}"


def test_memo_prefill_is_bitwise_and_independent(mf_e2b):
    memo = GemmaEngine(mf_e2b, "numpy64", memo_prefill=True)
    plain = GemmaEngine(mf_e2b, "numpy64")
    tokens = prompt(19, 10, memo.vocab_size)

    s_real = plain.new_sequence()
    l_real = plain.prefill(s_real, tokens)
    s1 = memo.new_sequence()
    l1 = memo.prefill(s1, tokens)  # miss: computes and stores
    s2 = memo.new_sequence()
    l2 = memo.prefill(s2, tokens)  # hit
    assert np.array_equal(l_real, l1) and np.array_equal(l1, l2)
    l2[:] = 0.0  # the caller's copy, not the memo's
    s3 = memo.new_sequence()
    assert np.array_equal(memo.prefill(s3, tokens), l1)

    d_real = plain.decode([s_real], [123])
    d2 = memo.decode([s2], [123])  # decoding after a memo hit ...
    assert np.array_equal(d_real, d2)  # ... equals decoding after a real prefill, bitwise
    # s2's decode wrote only into s2: s1 (the miss) and a fresh hit still decode as from the prompt.
    assert np.array_equal(memo.decode([s1], [123]), d_real)
    s4 = memo.new_sequence()
    memo.prefill(s4, tokens)
    assert s4.length == len(tokens)
    assert np.array_equal(memo.decode([s4], [123]), d_real)
    assert all(s4.layers[i].k is not s2.layers[i].k for i in s4.layers)


# ============================================================================================ numpy32
def test_numpy32_stays_close_to_numpy64(mf_12b):
    e64, e32 = GemmaEngine(mf_12b, "numpy64"), GemmaEngine(mf_12b, "numpy32")
    tokens = prompt(12, 11, e64.vocab_size)
    forced = [9, 400, 17, 250]
    rows = {}
    for name, engine in (("numpy64", e64), ("numpy32", e32)):
        seq = engine.new_sequence()
        out = [engine.prefill(seq, tokens)]
        out += [engine.decode([seq], [t])[0] for t in forced]
        rows[name] = np.asarray(out)
    assert rows["numpy32"].dtype == np.float32
    err = nmse(rows["numpy64"], rows["numpy32"])
    print(f"numpy32 vs numpy64 on g4-12b-mini f32: NMSE per position {np.asarray(err).tolist()}")
    assert err.max() <= F32_VS_F64_NMSE_MAX, f"NMSE {err.tolist()}"
    for i in range(len(rows["numpy64"])):
        verdict = argmax_agreement(rows["numpy64"][i], rows["numpy32"][i])
        assert verdict.agree, f"position {i}: {verdict}"
