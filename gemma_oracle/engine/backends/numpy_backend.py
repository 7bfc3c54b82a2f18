"""The numpy backend: the engine's ops surface in plain numpy at one float dtype.

Every op works on a leading batch of rows; attention is per sequence (its own cache).
"""
from __future__ import annotations

import math

import numpy as np


class NumpyBackend:
    name: str

    def __init__(self, dtype: str = "float64"):
        self.dtype = np.dtype(dtype)
        self.name = f"numpy{self.dtype.itemsize * 8}"
        self.xp = np

    # --- data movement ---------------------------------------------------------------------------
    def weight(self, values: np.ndarray) -> np.ndarray:
        """Upload a dequantized (float32-exact) weight in the compute dtype, C-contiguous."""
        return np.ascontiguousarray(values, dtype=self.dtype)

    def to_host(self, x) -> np.ndarray:
        return np.asarray(x)

    def zeros(self, shape) -> np.ndarray:
        return np.zeros(shape, dtype=self.dtype)

    # --- ops -------------------------------------------------------------------------------------
    def matmul(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        """x [rows, in] @ w[out, in]^T -> [rows, out]: one matmul over all rows (the batch)."""
        return x @ w.T

    def rms_norm(self, x: np.ndarray, weight: np.ndarray | None, eps: float) -> np.ndarray:
        """x / sqrt(mean(x^2) + eps) over the last axis, times weight as stored (no +1, spec §4)."""
        y = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)
        return y if weight is None else y * weight

    def gelu_tanh(self, x: np.ndarray) -> np.ndarray:
        c = math.sqrt(2.0 / math.pi)
        return 0.5 * x * (1.0 + np.tanh(c * (x + 0.044715 * x * x * x)))

    def rope(self, x: np.ndarray, positions: np.ndarray, inv_freq: np.ndarray) -> np.ndarray:
        """NEOX RoPE: x [rows, heads, d]; pair (i, i + n_rot/2) for i < n_rot/2, n_rot = 2*len(inv_freq);
        dims >= n_rot pass through. positions [rows]."""
        half = inv_freq.shape[0]
        ang = positions.astype(self.dtype)[:, None] * inv_freq[None, :]  # [rows, half]
        cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        x1, x2 = x[..., :half], x[..., half : 2 * half]
        out = x.copy()
        out[..., :half] = x1 * cos - x2 * sin
        out[..., half : 2 * half] = x2 * cos + x1 * sin
        return out

    def attend(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float) -> np.ndarray:
        """One query row of one sequence: q [Hq, d], k/v [n, Hkv, d] (the visible keys) -> [Hq, d].
        GQA: head h reads KV head h // (Hq / Hkv)."""
        hq, d = q.shape
        hkv = k.shape[1]
        qg = q.reshape(hkv, hq // hkv, d)
        scores = np.einsum("gqd,ngd->gqn", qg, k) * scale
        scores -= scores.max(axis=-1, keepdims=True)
        p = np.exp(scores)
        p /= p.sum(axis=-1, keepdims=True)
        return np.einsum("gqn,ngd->gqd", p, v).reshape(hq, d)

    def softcap(self, x: np.ndarray, cap: float) -> np.ndarray:
        return cap * np.tanh(x / cap)
