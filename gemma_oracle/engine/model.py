"""The Gemma 4 / Gemma 3 forward pass over a batch of rows (spec §2; Gemma 3 deltas §5.4).

A row is one token of one sequence at its own position. Decode of N sequences is N rows of N different
sequences; a prefill chunk is several rows of one sequence. Every matmul runs once over all rows; only
attention is per row, over that row's own cache. No backend branches here: ops come from `self.ops`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .config import GemmaConfig
from .kv_cache import SequenceState
from .weights import LayerWeights, ModelWeights


@dataclass(frozen=True)
class Row:
    seq: SequenceState
    token: int
    position: int


def rope_inv_freq(cfg: GemmaConfig, layer: int, rope_freqs: np.ndarray | None) -> np.ndarray:
    """Angular frequency per rotated pair: base^(-2i/n_rot), divided on Gemma 4 full layers by
    rope_freqs (proportional RoPE: factor 1e30 leaves a pair effectively unrotated, spec §2.3)."""
    n_rot = cfg.rope_dims(layer)
    inv = cfg.rope_base(layer) ** (-np.arange(0, n_rot, 2, dtype=np.float64) / n_rot)
    if rope_freqs is not None and cfg.arch == "gemma4" and not cfg.layer_is_sliding[layer]:
        inv = inv / rope_freqs[: n_rot // 2]
    return inv


class GemmaModel:
    def __init__(self, cfg: GemmaConfig, weights: ModelWeights, ops):
        self.cfg, self.w, self.ops = cfg, weights, ops
        self.inv_freq = [ops.weight(rope_inv_freq(cfg, i, weights.rope_freqs)) for i in range(cfg.n_layers)]

    # --- blocks ------------------------------------------------------------------------------------
    def embed(self, tokens: np.ndarray):
        return self.w.token_embd[tokens] * self.cfg.embed_scale  # [R, H]

    def ple_inputs(self, tokens: np.ndarray, x0):
        """Per-layer inputs [R, L, P] (spec §2.2), fixed for the token."""
        cfg, o, P, L = self.cfg, self.ops, self.cfg.ple_width, self.cfg.n_layers
        e = self.w.ple_token_embd[tokens] * math.sqrt(P)
        c = o.matmul(x0, self.w.ple_model_proj) * cfg.hidden**-0.5
        c = o.rms_norm(c.reshape(-1, L, P), self.w.ple_proj_norm, cfg.rms_eps)
        return (c + e.reshape(-1, L, P)) * 2**-0.5

    def rope_positions(self, layer: int, positions: np.ndarray) -> np.ndarray:
        """The positions RoPE rotates each row's q and k by: its own. A hook, so a deliberately broken control
        (engine/adapters/broken.py) can change it without copying the attention."""
        return positions

    def attention(self, layer: int, lw: LayerWeights, h, rows: Sequence[Row], positions: np.ndarray):
        cfg, o = self.cfg, self.ops
        d, hq, hkv = cfg.head_dim(layer), cfg.n_heads, cfg.n_kv_heads[layer]
        positions = self.rope_positions(layer, positions)  # cache slots and windows use rows[r].position
        a = o.rms_norm(h, lw.attn_norm, cfg.rms_eps)
        q = o.matmul(a, lw.q).reshape(-1, hq, d)
        q = o.rope(o.rms_norm(q, lw.q_norm, cfg.rms_eps), positions, self.inv_freq[layer])
        if cfg.owns_kv(layer):
            k_raw = o.matmul(a, lw.k).reshape(-1, hkv, d)
            # k_eq_v: V is the raw K projection, before k_norm and RoPE (spec §2.3 step 3).
            v_raw = k_raw if lw.v is None else o.matmul(a, lw.v).reshape(-1, hkv, d)
            k = o.rope(o.rms_norm(k_raw, lw.k_norm, cfg.rms_eps), positions, self.inv_freq[layer])
            v = o.rms_norm(v_raw, None, cfg.rms_eps) if cfg.v_norm else v_raw
            for r, row in enumerate(rows):  # all rows write before any attends
                row.seq.layers[layer].write(row.position, k[r], v[r])
        window = cfg.sliding_window if cfg.layer_is_sliding[layer] else None
        src = cfg.kv_source[layer]
        out = o.zeros((len(rows), hq, d))
        for r, row in enumerate(rows):
            keys, values = row.seq.layers[src].visible(row.position, window)
            out[r] = o.attend(q[r], keys, values, cfg.query_scale)
        attn = o.matmul(out.reshape(len(rows), hq * d), lw.o)
        return h + o.rms_norm(attn, lw.post_attn_norm, cfg.rms_eps)

    def ffn(self, lw: LayerWeights, h):
        o, eps = self.ops, self.cfg.rms_eps
        u = o.rms_norm(h, lw.ffn_norm, eps)
        f = o.matmul(o.gelu_tanh(o.matmul(u, lw.gate)) * o.matmul(u, lw.up), lw.down)
        return h + o.rms_norm(f, lw.post_ffw_norm, eps)

    def ple_inject(self, lw: LayerWeights, h, pli_layer):
        o = self.ops
        g = o.gelu_tanh(o.matmul(h, lw.inp_gate)) * pli_layer
        return h + o.rms_norm(o.matmul(g, lw.proj), lw.post_norm, self.cfg.rms_eps)

    def logits(self, x):
        cfg, o = self.cfg, self.ops
        z = o.matmul(o.rms_norm(x, self.w.output_norm, cfg.rms_eps), self.w.output)
        return o.softcap(z, cfg.final_softcap) if cfg.final_softcap else z

    # --- the whole step -----------------------------------------------------------------------------
    def forward(self, rows: Sequence[Row], logits_for: Sequence[int], trace: list | None = None):
        """Run `rows` through every layer; return logits [len(logits_for), vocab] for those row indices.
        `trace`, when given, receives the residual stream [rows, hidden] after each layer (host arrays)."""
        tokens = np.array([r.token for r in rows], dtype=np.int64)
        positions = np.array([r.position for r in rows], dtype=np.int64)
        x = self.embed(tokens)
        pli = self.ple_inputs(tokens, x) if self.cfg.ple_width else None
        for layer, lw in enumerate(self.w.layers):
            x = self.attention(layer, lw, x, rows, positions)
            x = self.ffn(lw, x)
            if pli is not None:
                x = self.ple_inject(lw, x, pli[:, layer])
            x = x * lw.output_scale  # the whole residual stream (spec §2.6)
            if trace is not None:
                trace.append(self.ops.to_host(x).copy())
        return self.logits(x[np.asarray(logits_for, dtype=np.int64)])
