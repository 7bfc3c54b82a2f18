"""Device KV caches for a batch of sequences: pool allocation and the launcher of kernels/cuda/kv_cache.cu.

One KV-owning layer holds (shared-KV layers own none and pass their source layer's pool to attention):
    k, v  [n_seq_slots, capacity, Hkv, d]  float16 (speed default; rounded to nearest even on store) or float32
    pos   [n_seq_slots, capacity] int32: the absolute position held by each slot, -1 = empty
Sliding layers use a ring: capacity = window + chunk - 1 and slot = position % capacity (engine/kv_cache.py).
Global layers: capacity = the max context and slot = position. A row of a batch is mapped to its sequence slot
by an int32 array `rows_slot` [R]; several rows may belong to one sequence (a prefill chunk) as long as no two
rows of one launch write the same (sequence, slot).
"""
from __future__ import annotations

from dataclasses import dataclass

import cupy as cp
import numpy as np

from ._checks import check_device_array
from ._compile import load_module

THREADS = 256  # KVW_THREADS in kv_cache.cu
POOL_DTYPES = {"float16": "f16", "float32": "f32"}  # pool dtype -> entry-point suffix


@dataclass
class LayerKVPool:
    """The K/V pools and position table of one KV-owning layer."""

    k: cp.ndarray    # [n_seq_slots, capacity, Hkv, d]
    v: cp.ndarray    # [n_seq_slots, capacity, Hkv, d]
    pos: cp.ndarray  # [n_seq_slots, capacity] int32, -1 empty
    ring: bool       # True: sliding ring (slot = position % capacity); False: global (slot = position)

    @property
    def n_seq_slots(self) -> int:
        return int(self.k.shape[0])

    @property
    def capacity(self) -> int:
        return int(self.k.shape[1])

    @property
    def n_kv_heads(self) -> int:
        return int(self.k.shape[2])

    @property
    def head_dim(self) -> int:
        return int(self.k.shape[3])

    def reset(self, seq_slot: int) -> None:
        """Empty one sequence slot (its pos entries become -1; K/V contents are left: attention may load them but
        never uses a slot whose pos entry is not the key's position)."""
        self.pos[seq_slot] = -1


def alloc_layer_kv(n_seq_slots: int, capacity: int, n_kv_heads: int, head_dim: int, *, ring: bool,
                   dtype: str = "float16") -> LayerKVPool:
    """Zeroed pools and an all-empty (-1) position table."""
    if dtype not in POOL_DTYPES:
        raise ValueError(f"dtype {dtype!r}: expected one of {sorted(POOL_DTYPES)}")
    if min(n_seq_slots, capacity, n_kv_heads, head_dim) < 1:
        raise ValueError("n_seq_slots, capacity, n_kv_heads and head_dim must all be >= 1")
    shape = (n_seq_slots, capacity, n_kv_heads, head_dim)
    return LayerKVPool(k=cp.zeros(shape, dtype=dtype), v=cp.zeros(shape, dtype=dtype),
                       pos=cp.full((n_seq_slots, capacity), -1, dtype=cp.int32), ring=ring)




def check_pool(k_cache, v_cache, pos_table) -> tuple[str, int, int, int, int]:
    """Validate a (k, v, pos) triple; returns (entry suffix, n_seq_slots, capacity, Hkv, d)."""
    suffix = POOL_DTYPES.get(getattr(getattr(k_cache, "dtype", None), "name", None))
    if suffix is None:
        raise TypeError(f"k_cache: expected one of {sorted(POOL_DTYPES)}, got {getattr(k_cache, 'dtype', None)}")
    check_device_array("k_cache", k_cache, k_cache.dtype, 4)
    check_device_array("v_cache", v_cache, k_cache.dtype, 4)
    check_device_array("pos_table", pos_table, cp.int32, 2)
    if v_cache.shape != k_cache.shape:
        raise ValueError(f"v_cache: shape {tuple(v_cache.shape)} differs from k_cache {tuple(k_cache.shape)}")
    s, cap, hkv, d = (int(x) for x in k_cache.shape)
    if tuple(pos_table.shape) != (s, cap):
        raise ValueError(f"pos_table: expected shape {(s, cap)}, got {tuple(pos_table.shape)}")
    return suffix, s, cap, hkv, d


def device_rows(name: str, a, rows: int):
    """An int32 [rows] CuPy array from a CuPy or numpy array (numpy is uploaded). Returns (device, host or None)."""
    if isinstance(a, np.ndarray):
        if a.shape != (rows,) or not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"{name}: expected an integer array of shape ({rows},), got {a.dtype} {a.shape}")
        if a.size and (a.min() < np.iinfo(np.int32).min or a.max() > np.iinfo(np.int32).max):
            raise ValueError(f"{name}: values do not fit int32")
        return cp.asarray(a.astype(np.int32)), a
    check_device_array(name, a, cp.int32, 1)
    if a.shape[0] != rows:
        raise ValueError(f"{name}: expected {rows} entries, got {a.shape[0]}")
    return a, None


def launch_geometry(rows: int) -> tuple[tuple[int], tuple[int]]:
    """One block per row."""
    return (rows,), (THREADS,)


def kv_write(k_cache: cp.ndarray, v_cache: cp.ndarray, pos_table: cp.ndarray, rows_slot, k: cp.ndarray,
             v: cp.ndarray, positions, *, ring: bool) -> None:
    """Store k[r], v[r] ([R, Hkv, d] float32) at position positions[r] of sequence rows_slot[r].

    rows_slot and positions are int32 [R], on the device (CuPy) or the host (numpy: their values are validated
    here, then uploaded). On the device, a row with an out-of-range sequence slot, a negative position or (global
    caches) a position >= capacity writes nothing.
    """
    suffix, n_seq, cap, hkv, d = check_pool(k_cache, v_cache, pos_table)
    check_device_array("k", k, cp.float32, 3)
    check_device_array("v", v, cp.float32, 3)
    rows = int(k.shape[0])
    if tuple(k.shape[1:]) != (hkv, d) or v.shape != k.shape:
        raise ValueError(f"k, v: expected [R, {hkv}, {d}], got {tuple(k.shape)} and {tuple(v.shape)}")
    seq_d, seq_h = device_rows("rows_slot", rows_slot, rows)
    pos_d, pos_h = device_rows("positions", positions, rows)
    if seq_h is not None and seq_h.size and (seq_h.min() < 0 or seq_h.max() >= n_seq):
        raise ValueError(f"rows_slot: values must be in [0, {n_seq})")
    if pos_h is not None and pos_h.size:
        if pos_h.min() < 0:
            raise ValueError("positions: must be >= 0")
        if not ring and pos_h.max() >= cap:
            raise ValueError(f"positions: {int(pos_h.max())} is beyond the global cache capacity {cap}")
        if seq_h is not None:
            cells = seq_h.astype(np.int64) * cap + (pos_h % cap if ring else pos_h)
            if np.unique(cells).size != rows:
                raise ValueError("two rows write the same (sequence, slot) in one launch")
    if rows == 0:
        return
    grid, block = launch_geometry(rows)
    load_module("kv_cache").get_function(f"kv_write_{suffix}")(
        grid, block, (k_cache, v_cache, pos_table, seq_d, k, v, pos_d, cp.int32(rows), cp.int32(n_seq),
                      cp.int32(cap), cp.int32(hkv * d), cp.int32(int(ring))))


def kv_write_layer(pool: LayerKVPool, rows_slot, k: cp.ndarray, v: cp.ndarray, positions) -> None:
    """kv_write into a LayerKVPool (its ring flag decides the slot rule)."""
    kv_write(pool.k, pool.v, pool.pos, rows_slot, k, v, positions, ring=pool.ring)
