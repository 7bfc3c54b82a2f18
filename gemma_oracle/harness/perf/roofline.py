"""Bytes one decode step reads, and the memory-only ceiling on tokens/s they imply.

Decode is bandwidth-bound: a step of N sequences reads every matrix once (W bytes) and each sequence's
visible KV once (KV_i bytes), so at a streaming-read bandwidth BW no engine beats
N * BW / (W + sum_i KV_i) tokens/s. The bench reports measured t/s as a percentage of that ceiling.
"""
from __future__ import annotations

from gemma_oracle.engine.config import GemmaConfig


def kv_read_bytes(cfg: GemmaConfig, position: int, itemsize: int) -> int:
    """KV bytes a decode row at 0-based ``position`` reads: every layer (KV-shared ones included, they
    re-read their source's cache) attends over the keys and values its window lets it see."""
    total = 0
    for layer in range(cfg.n_layers):
        src = cfg.kv_source[layer]
        visible = position + 1
        if cfg.layer_is_sliding[layer]:
            visible = min(visible, cfg.sliding_window)
        total += visible * cfg.n_kv_heads[src] * cfg.head_dim(src) * 2 * itemsize
    return total


def mean_kv_read_bytes(cfg: GemmaConfig, start_positions: list[int], steps: int, itemsize: int) -> float:
    """KV bytes per step of a batch whose sequence i decodes positions start_i, start_i + 1, ... for
    ``steps`` steps, averaged over those steps."""
    total = sum(kv_read_bytes(cfg, p + j, itemsize) for p in start_positions for j in range(steps))
    return total / steps


def roofline_tokens_per_s(n: int, read_gb_s: float, weight_bytes: float, kv_bytes: float) -> float:
    """N * BW / (W + KV): ``kv_bytes`` is the whole batch's KV read per step."""
    return n * read_gb_s * 1e9 / (weight_bytes + kv_bytes)
