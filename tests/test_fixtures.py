"""Synthetic fixtures: every preset x variant builds, reloads with the expected config, is byte-identical."""
from __future__ import annotations

import hashlib

import pytest

from gemma_oracle.engine.model_file import load_model
from gemma_oracle.harness.fixtures.synthetic import planned_types, write_fixture
from gemma_oracle.harness.fixtures.presets import PRESETS
from gemma_oracle.harness.fixtures.tokenizer_table import small_vocab

from .conftest import PRESET_NAMES, PRESET_VARIANTS

pytestmark = pytest.mark.synthetic


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("preset,variant", PRESET_VARIANTS, ids=[f"{p}-{v}" for p, v in PRESET_VARIANTS])
def test_reloads_with_expected_config_and_types(synthetic_gguf, preset, variant):
    model = load_model(synthetic_gguf(preset, variant))
    assert model.config == PRESETS[preset].config(len(small_vocab().tokens))
    written = planned_types(PRESETS[preset], variant)
    got = {name: info.type_name for name, info in model.gguf.tensors.items()}
    assert got == written


@pytest.mark.parametrize("preset,variant", PRESET_VARIANTS, ids=[f"{p}-{v}" for p, v in PRESET_VARIANTS])
def test_same_preset_and_seed_give_identical_bytes(tmp_path, preset, variant):
    a = write_fixture(tmp_path / "a.gguf", preset, variant, seed=3)
    b = write_fixture(tmp_path / "b.gguf", preset, variant, seed=3)
    assert _sha(a) == _sha(b)


def test_other_seed_gives_other_weights(tmp_path):
    a = write_fixture(tmp_path / "a.gguf", "keqv-mixed", "f32", seed=1)
    b = write_fixture(tmp_path / "b.gguf", "keqv-mixed", "f32", seed=2)
    assert a.stat().st_size == b.stat().st_size and _sha(a) != _sha(b)


# Shapes written out by hand from the preset descriptions (not derived by the code under test).
HAND_SHAPES = {
    "g4-12b-mini": {
        "blk.0.attn_q.weight": (256, 16 * 64),
        "blk.0.attn_k.weight": (256, 8 * 64),
        "blk.0.attn_v.weight": (256, 8 * 64),
        "blk.5.attn_q.weight": (256, 2048),  # global q: >= 2048 rows so decode-MMQ can engage
        "blk.5.attn_k.weight": (256, 1 * 128),
        "blk.5.attn_output.weight": (2048, 256),
        "blk.5.ffn_gate.weight": (256, 2048),
        "blk.5.ffn_up.weight": (256, 2048),
        "blk.5.ffn_down.weight": (2048, 256),
        "rope_freqs.weight": (64,),
        "blk.3.layer_output_scale.weight": (1,),
    },
    "g4-e2b-mini": {
        "blk.4.ffn_gate.weight": (256, 512),
        "blk.5.ffn_gate.weight": (256, 1024),  # double-wide FFN on the KV-shared tail
        "per_layer_token_embd.weight": (10 * 64, 512),
        "per_layer_model_proj.weight": (256, 10 * 64),
        "blk.7.inp_gate.weight": (256, 64),
        "blk.7.proj.weight": (64, 256),
    },
}


@pytest.mark.parametrize("preset", sorted(HAND_SHAPES))
def test_tensor_shapes_match_hand_written_table(synthetic_gguf, preset):
    model = load_model(synthetic_gguf(preset, "f32"))
    for name, ne in HAND_SHAPES[preset].items():
        assert model.tensors[name].ne == ne, name


def test_k_eq_v_layers_have_no_attn_v(synthetic_gguf):
    m12 = load_model(synthetic_gguf("g4-12b-mini", "f32"))
    assert m12.config.layer_k_eq_v == (False,) * 5 + (True,)
    assert "blk.5.attn_v.weight" not in m12.gguf.tensors and "blk.4.attn_v.weight" in m12.gguf.tensors
    mixed = load_model(synthetic_gguf("keqv-mixed", "f32"))
    assert mixed.config.layer_k_eq_v == (False, True, False)
    all_global = load_model(synthetic_gguf("keqv-all-global", "f32"))
    assert all_global.config.layer_k_eq_v == (False, True, True)


def test_shared_kv_sources_follow_last_layer_of_same_type(synthetic_gguf):
    e4b = load_model(synthetic_gguf("g4-e4b-mini", "f32")).config
    assert e4b.kv_source == (0, 1, 2, 3, 4, 5, 4, 4, 4, 4, 4, 5)
    e2b = load_model(synthetic_gguf("g4-e2b-mini", "f32")).config
    assert e2b.kv_source == (0, 1, 2, 3, 4, 3, 3, 3, 3, 4)
    assert e2b.n_ff == (512,) * 5 + (1024,) * 5


def test_shared_layers_dead_kv_weights_are_ignored(synthetic_gguf):
    m = load_model(synthetic_gguf("g4-e4b-mini", "f32"))
    assert "blk.8.attn_k.weight" in m.gguf.tensors  # real E4B files keep them (spec §3.4)
    assert "blk.8.attn_k.weight" not in m.tensors
    assert set(m.ignored) == {f"blk.{i}.{n}.weight" for i in range(6, 12) for n in ("attn_k", "attn_v", "attn_k_norm")}


def test_q4_k_m_mix_follows_llama_quantize_rules():
    types = planned_types(PRESETS["g4-12b-mini"], "q4_k_m")
    assert types["token_embd.weight"] == "Q6_K"
    assert types["blk.0.attn_q.weight"] == "Q4_K"
    # ffn_down: 6 tensors -> more bits at i < 0 or i >= 5 or (i - 0) % 3 == 2 -> layers 2 and 5
    assert [types[f"blk.{i}.ffn_down.weight"] for i in range(6)] == ["Q4_K", "Q4_K", "Q6_K", "Q4_K", "Q4_K", "Q6_K"]
    # attn_v exists on 5 layers (layer 5 is k_eq_v): n = 5, integer 7n/8 = 4 -> more bits at ranks 2 and 4
    assert [types[f"blk.{i}.attn_v.weight"] for i in range(5)] == ["Q4_K", "Q4_K", "Q6_K", "Q4_K", "Q6_K"]
    assert all(t in ("F32",) for n, t in types.items() if n.endswith("norm.weight"))
    e4b = planned_types(PRESETS["g4-e4b-mini"], "q4_k_m")
    assert e4b["per_layer_model_proj.weight"] == "BF16"  # never quantized
    assert e4b["per_layer_token_embd.weight"] == "Q6_K"
    assert e4b["blk.0.proj.weight"] == "Q5_0"  # ne[0] = 64 is not a multiple of 256: Q4_K falls back


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_every_dequantized_weight_is_finite(synthetic_gguf, preset):
    import numpy as np

    m = load_model(synthetic_gguf(preset, "q4_k_m"))
    for name in m.tensors:
        if name == "rope_freqs.weight":
            continue
        assert np.isfinite(m.dequantize(name)).all(), name
