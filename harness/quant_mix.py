"""Which GGML type each tensor of a synthetic fixture is stored in, per quant variant.

`q4_k_m` follows llama-quantize's Q4_K_M rules (quant-formats-and-kernels.md §2.3, spec §3.5): Q4_K by
default; Q6_K for the tied token embedding, the PLE table, and attn_v / ffn_down on "more-bits" layers;
per_layer_model_proj never quantized; a K-quant whose row length is not a multiple of 256 falls back
(Q4_K -> Q5_0, Q6_K -> Q8_0). `q4_0` mimics Google's QAT files: Q4_0 linear weights with an F16
embedding (what Gemma 3 QAT shipped; unverified for Gemma 4, spec §7.3).
"""
from __future__ import annotations

from engine.inventory import ExpectedTensor

VARIANTS = ("f32", "q8_0", "q4_0", "q4_k_m")
_K_FALLBACK = {"Q4_K": "Q5_0", "Q5_K": "Q5_0", "Q6_K": "Q8_0"}


def _more_bits(i: int, n: int) -> bool:
    """llama-quantize's use_more_bits: first and last eighth, and every third tensor in between."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def base_name(t: ExpectedTensor) -> str:
    """'blk.3.attn_v.weight' -> 'attn_v'; 'token_embd.weight' -> 'token_embd'."""
    return t.name.split(".")[-2]


def tensor_type(variant: str, t: ExpectedTensor, rank: int, count: int) -> str:
    """GGML type name for `t` in `variant`; it is the `rank`-th of `count` tensors with its base name."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown quant variant {variant!r}: expected one of {VARIANTS}")
    if t.kind == "vector":
        return "F32"
    base = base_name(t)
    if variant == "f32":
        return "F32"
    if base == "per_layer_model_proj":
        return "BF16"  # never quantized by llama-quantize; real files keep it BF16
    if variant == "q8_0":
        return "Q8_0"
    if variant == "q4_0":
        return "F16" if base in ("token_embd", "per_layer_token_embd") else "Q4_0"
    # q4_k_m
    if base in ("token_embd", "per_layer_token_embd", "output"):
        qtype = "Q6_K"
    elif base in ("attn_v", "ffn_down") and _more_bits(rank, count):
        qtype = "Q6_K"
    else:
        qtype = "Q4_K"
    if t.ne[0] % 256:
        qtype = _K_FALLBACK[qtype]
    return qtype
