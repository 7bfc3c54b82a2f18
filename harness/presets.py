"""Synthetic Gemma 4 presets: each is a miniature of a real layout, small enough for a float64 CPU oracle.

Sizes are data (gpt-fast's named configs). Every preset keeps the *structure* that makes its real
counterpart easy to get wrong: per-layer head dims and KV heads, k_eq_v global layers, proportional
RoPE, KV-shared tails, PLE, double-wide FFN, layer_output_scale != 1, softcap 30. Hidden sizes are
256 so every K-quant row (ne[0]) is a multiple of 256 and the Q4_K_M mix needs no fallback except
where the real model would fall back too (PLE `proj`, ne[0] = PLE width).
Where llama.cpp hard-codes "KV source = F-1 (full) / F-2 (sliding)" for shared layers, the layouts
below make that rule agree with HF's "last layer of the same type" (spec §1), so parity is possible.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from engine.config import GemmaConfig


def _pattern(n_layers: int, full_layers: tuple[int, ...]) -> tuple[bool, ...]:
    return tuple(i not in full_layers for i in range(n_layers))


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    n_layers: int
    full_layers: tuple[int, ...]  # indices of global (full-attention) layers; the rest slide
    hidden: int = 256
    n_heads: int = 4
    head_dim_sliding: int = 64
    head_dim_full: int = 128
    kv_heads_sliding: int = 2
    kv_heads_full: int = 2
    n_ff: int | tuple[int, ...] = 512
    sliding_window: int = 8
    k_eq_v_layers: tuple[int, ...] = ()  # global layers written without attn_v
    shared_kv_layers: int = 0
    ple_width: int = 0
    # rope_freqs on full layers: 0.25 = Gemma 4's proportional RoPE (spec §2.3); 1.0 = every pair rotates
    # (llama.cpp requires rope_freqs on every gemma4 file, so plain RoPE is written as all-ones factors).
    rope_partial_factor: float = 0.25
    softcap: float = 30.0
    context_length: int = 512
    rope_base_full: float = 1e6
    rope_base_sliding: float = 1e4
    # Conditioning (spec-free choices, tuned so attention is not saturated and logits are not pinned):
    qk_norm_center: float = 0.3
    # With tied embeddings the logit of the input token gets a boost ~ |x0| / |final h|; a unit-RMS x0
    # made every fixture predict its own last token. x0 RMS 0.1 (layers add unit-RMS outputs) removes
    # that, and output_norm ~ logit_std / x0_rms gives logits of std ~ logit_std.
    x0_rms: float = 0.1
    logit_std: float = 6.0

    @property
    def embed_std(self) -> float:
        return self.x0_rms / self.hidden**0.5

    @property
    def output_norm_center(self) -> float:
        return self.logit_std / self.x0_rms
    tags: tuple[str, ...] = field(default=())

    @property
    def layer_is_sliding(self) -> tuple[bool, ...]:
        return _pattern(self.n_layers, self.full_layers)

    def config(self, vocab_size: int) -> GemmaConfig:
        """The GemmaConfig this preset's file must load as (used by the builder and by its tests)."""
        sliding = self.layer_is_sliding
        n_ff = self.n_ff if isinstance(self.n_ff, tuple) else (self.n_ff,) * self.n_layers
        first_shared = self.n_layers - self.shared_kv_layers
        return GemmaConfig(
            arch="gemma4",
            n_layers=self.n_layers,
            hidden=self.hidden,
            n_heads=self.n_heads,
            vocab_size=vocab_size,
            context_length=self.context_length,
            rms_eps=float(np.float32(1e-6)),  # stored as f32 in GGUF
            layer_is_sliding=sliding,
            head_dim_full=self.head_dim_full,
            head_dim_sliding=self.head_dim_sliding,
            n_kv_heads=tuple(self.kv_heads_sliding if s else self.kv_heads_full for s in sliding),
            n_ff=n_ff,
            sliding_window=self.sliding_window,
            rope_base_full=self.rope_base_full,
            rope_base_sliding=self.rope_base_sliding,
            rope_dims_full=self.head_dim_full,
            rope_dims_sliding=self.head_dim_sliding,
            shared_kv_layers=self.shared_kv_layers,
            ple_width=self.ple_width,
            final_softcap=self.softcap,
            query_scale=1.0,
            v_norm=True,
            layer_k_eq_v=tuple(i in self.k_eq_v_layers and i < first_shared for i in range(self.n_layers)),
            has_rope_freqs=True,
            layer_has_output_scale=(True,) * self.n_layers,
            tied_output=True,
            bos_token_id=2,
            eos_token_id=1,
        )


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "keqv-all-global",
            "the seed's #276 model: every global layer without attn_v (V = raw K projection). llama.cpp's gemma4 "
            "loader asserts at least one sliding layer, so layer 0 slides with a window as long as the context "
            "(it still attends to every position); layers 1-2 are global k_eq_v",
            n_layers=3, full_layers=(1, 2), head_dim_full=64, head_dim_sliding=64, kv_heads_full=2,
            k_eq_v_layers=(1, 2), rope_partial_factor=1.0, context_length=256, sliding_window=256,
        ),
        Preset(
            "keqv-mixed",
            "two global layers, the first without attn_v (k_eq_v), the second with it, so a broken per-layer V "
            "predicate shows; layer 0 slides with a context-long window (llama.cpp needs one sliding layer)",
            n_layers=3, full_layers=(1, 2), head_dim_full=64, head_dim_sliding=64, kv_heads_full=2,
            k_eq_v_layers=(1,), rope_partial_factor=1.0, context_length=256, sliding_window=256,
        ),
        Preset(
            "g4-12b-mini",
            "the 12B structure scaled down: 5 sliding : 1 global, 8/1 KV heads, head dims 64/128 (1:2), k_eq_v global, "
            "proportional RoPE, layer_output_scale != 1; global q and gate/up have 2048 rows (decode-MMQ eligible)",
            n_layers=6, full_layers=(5,), n_heads=16, kv_heads_sliding=8, kv_heads_full=1, n_ff=2048,
            k_eq_v_layers=(5,), sliding_window=16,
        ),
        Preset(
            "g4-e4b-mini",
            "the E4B structure scaled down: 5:1 pattern, 2 KV heads, PLE (width 64), KV-shared tail of 6 layers "
            "(sources: sliding -> 4, full -> 5)",
            n_layers=12, full_layers=(5, 11), kv_heads_sliding=2, kv_heads_full=2, shared_kv_layers=6, ple_width=64,
            sliding_window=12,
        ),
        Preset(
            "g4-e2b-mini",
            "the E2B structure scaled down: 4:1 pattern, 1 KV head, PLE (width 64), KV-shared tail of 5 layers, "
            "double-wide FFN on the shared layers (per-layer feed_forward_length array)",
            n_layers=10, full_layers=(4, 9), kv_heads_sliding=1, kv_heads_full=1, shared_kv_layers=5, ple_width=64,
            n_ff=(512,) * 5 + (1024,) * 5, sliding_window=8,
        ),
    )
}
