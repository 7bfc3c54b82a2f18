"""The tensor inventory a config implies: every tensor's name, ne and kind (spec §3.2, §5.3).

This is the only place that knows GGUF tensor names; the loader validates files against it and the
synthetic-fixture builder writes exactly what it lists.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .config import GemmaConfig

MATRIX_TYPES = ("F32", "F16", "BF16", "Q4_0", "Q5_0", "Q8_0", "Q4_K", "Q5_K", "Q6_K")
VECTOR_TYPES = ("F32", "F16", "BF16")


@dataclass(frozen=True)
class ExpectedTensor:
    name: str
    ne: tuple[int, ...]  # GGUF order: ne[0] is the contiguous row length (in-features)
    kind: Literal["matrix", "vector"]
    required: bool = True
    layer: int | None = None

    @property
    def allowed_types(self) -> tuple[str, ...]:
        return MATRIX_TYPES if self.kind == "matrix" else VECTOR_TYPES


def expected_tensors(cfg: GemmaConfig, *, present: frozenset[str] | set[str] = frozenset()) -> list[ExpectedTensor]:
    """Every tensor of the model. `present` (names in a file) resolves the optional ones that change meaning."""
    H, V, L, P = cfg.hidden, cfg.vocab_size, cfg.n_layers, cfg.ple_width
    out = [
        ExpectedTensor("token_embd.weight", (H, V), "matrix"),
        ExpectedTensor("output_norm.weight", (H,), "vector"),
        ExpectedTensor("output.weight", (H, V), "matrix", required=not cfg.tied_output),
    ]
    if cfg.arch == "gemma4":
        out.append(ExpectedTensor("rope_freqs.weight", (cfg.rope_dims_full // 2,), "vector", required=cfg.has_rope_freqs))
    if P:
        out += [
            ExpectedTensor("per_layer_token_embd.weight", (L * P, V), "matrix"),
            ExpectedTensor("per_layer_model_proj.weight", (H, L * P), "matrix"),
            ExpectedTensor("per_layer_proj_norm.weight", (P,), "vector"),
        ]
    for i in range(L):
        d, q, kv, ff = cfg.head_dim(i), cfg.q_dim(i), cfg.kv_dim(i), cfg.n_ff[i]
        owns = cfg.owns_kv(i)
        # k_eq_v global layers have no attn_v; KV-shared layers may carry dead K/V weights.
        v_required = owns and not cfg.layer_k_eq_v[i]

        def t(name, ne, kind="matrix", required=True):
            return ExpectedTensor(f"blk.{i}.{name}.weight", ne, kind, required, i)

        out += [
            t("attn_norm", (H,), "vector"),
            t("attn_q", (H, q)),
            t("attn_k", (H, kv), required=owns),
            t("attn_v", (H, kv), required=v_required),
            t("attn_output", (q, H)),
            t("attn_q_norm", (d,), "vector"),
            t("attn_k_norm", (d,), "vector", required=owns),
            t("post_attention_norm", (H,), "vector"),
            t("ffn_norm", (H,), "vector"),
            t("ffn_gate", (H, ff)),
            t("ffn_up", (H, ff)),
            t("ffn_down", (ff, H)),
            t("post_ffw_norm", (H,), "vector"),
        ]
        if cfg.arch == "gemma4":
            out.append(t("layer_output_scale", (1,), "vector", required=cfg.layer_has_output_scale[i]))
        if P:
            out += [t("inp_gate", (H, P)), t("proj", (P, H)), t("post_norm", (H,), "vector")]
    return out
