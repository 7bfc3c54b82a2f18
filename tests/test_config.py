"""Config reading: the embedding-scale option and the real Gemma 3 270M (switch list of spec §5.4)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from gemma_oracle.engine.model_file import load_model


def test_embed_scale_fp32_is_llama_cpp_and_bf16_is_rounded(synthetic_gguf):
    path = synthetic_gguf("keqv-mixed", "f32")
    assert load_model(path).config.embed_scale == 16.0
    cfg = load_model(path).config
    # 12B: sqrt(3840) = 61.9677 in fp32, 62.0 in bf16 (spec §2.1)
    c12 = cfg.with_options(hidden=3840)
    assert c12.embed_scale == float(np.float32(math.sqrt(3840)))
    assert c12.with_options(embed_scale_mode="bf16").embed_scale == 62.0
    assert cfg.with_options(hidden=2560, embed_scale_mode="bf16").embed_scale == 50.5  # E4B
    assert cfg.with_options(hidden=1536, embed_scale_mode="bf16").embed_scale == 39.25  # E2B
    assert load_model(path, embed_scale_mode="bf16").config.embed_scale_mode == "bf16"


def test_unknown_embed_scale_mode_is_rejected(synthetic_gguf):
    with pytest.raises(ValueError, match="embed_scale_mode"):
        load_model(synthetic_gguf("keqv-mixed", "f32"), embed_scale_mode="fp16")


@pytest.mark.real
def test_real_gemma3_270m_config(gemma3_path):
    """The real 270M through the catalog (tests/conftest.py's gemma3_path: the package, or a copy named by
    GEMMA_ORACLE_MODEL_GEMMA3_270M on a machine without it, as on the GPU box)."""
    m = load_model(gemma3_path)
    c = m.config
    # Values from the reference doc's header dump of this file (offline-references.md §2, spec §5.1).
    assert (c.arch, c.n_layers, c.hidden, c.n_heads, c.vocab_size) == ("gemma3", 18, 640, 4, 262144)
    assert c.n_kv_heads == (1,) * 18 and c.head_dim(0) == 256 and c.n_ff == (2048,) * 18
    assert [i for i in range(18) if not c.layer_is_sliding[i]] == [5, 11, 17]
    assert (c.rope_base_full, c.rope_base_sliding, c.sliding_window) == (1e6, 1e4, 512)
    assert c.query_scale == 0.0625 and not c.v_norm and c.final_softcap is None and c.tied_output
    types = {}
    for t in m.tensors.values():
        types[t.type_name] = types.get(t.type_name, 0) + 1
    assert types == {"F32": 109, "Q5_0": 81, "Q4_K": 27, "Q8_0": 10, "Q6_K": 9}
