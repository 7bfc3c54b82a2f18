"""Model weights in the backend's arrays: the only place that maps GGUF tensor names to model parts."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .model_file import ModelFile


@dataclass
class LayerWeights:
    attn_norm: Any
    q: Any
    k: Any | None  # None on KV-shared layers
    v: Any | None  # None on KV-shared and k_eq_v layers
    o: Any
    q_norm: Any
    k_norm: Any | None
    post_attn_norm: Any
    ffn_norm: Any
    gate: Any
    up: Any
    down: Any
    post_ffw_norm: Any
    output_scale: float  # layer_output_scale (1.0 where the file has none: Gemma 3)
    inp_gate: Any | None = None  # PLE
    proj: Any | None = None
    post_norm: Any | None = None


@dataclass
class ModelWeights:
    token_embd: Any  # [vocab, hidden]
    output: Any  # [vocab, hidden]; the same array as token_embd when tied
    output_norm: Any
    rope_freqs: np.ndarray | None  # host float64 frequency divisors for full layers (gemma4)
    layers: list[LayerWeights]
    ple_token_embd: Any | None = None  # [vocab, L*P]
    ple_model_proj: Any | None = None  # [L*P, hidden]
    ple_proj_norm: Any | None = None


def load_weights(model: ModelFile, backend) -> ModelWeights:
    cfg = model.config

    def w(name: str):
        return backend.weight(model.dequantize(name))

    def opt(name: str):
        return w(name) if model.has(name) else None

    layers = []
    for i in range(cfg.n_layers):
        p = f"blk.{i}."
        scale_name = p + "layer_output_scale.weight"
        scale = float(model.dequantize(scale_name)[0]) if model.has(scale_name) else 1.0
        layers.append(
            LayerWeights(
                attn_norm=w(p + "attn_norm.weight"), q=w(p + "attn_q.weight"), k=opt(p + "attn_k.weight"),
                v=opt(p + "attn_v.weight"), o=w(p + "attn_output.weight"), q_norm=w(p + "attn_q_norm.weight"),
                k_norm=opt(p + "attn_k_norm.weight"), post_attn_norm=w(p + "post_attention_norm.weight"),
                ffn_norm=w(p + "ffn_norm.weight"), gate=w(p + "ffn_gate.weight"), up=w(p + "ffn_up.weight"),
                down=w(p + "ffn_down.weight"), post_ffw_norm=w(p + "post_ffw_norm.weight"), output_scale=scale,
                inp_gate=opt(p + "inp_gate.weight"), proj=opt(p + "proj.weight"), post_norm=opt(p + "post_norm.weight"),
            )
        )
    token_embd = w("token_embd.weight")
    return ModelWeights(
        token_embd=token_embd,
        output=token_embd if cfg.tied_output else w("output.weight"),
        output_norm=w("output_norm.weight"),
        rope_freqs=model.dequantize("rope_freqs.weight").astype(np.float64) if model.has("rope_freqs.weight") else None,
        layers=layers,
        ple_token_embd=opt("per_layer_token_embd.weight"),
        ple_model_proj=opt("per_layer_model_proj.weight"),
        ple_proj_norm=opt("per_layer_proj_norm.weight"),
    )
