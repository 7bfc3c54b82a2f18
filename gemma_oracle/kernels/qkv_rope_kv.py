"""Launcher of kernels/cuda/qkv_rope_kv.cu: a KV-owning layer's q/k/v post-processing in one launch.

`qkv_rope_kv(q_raw, k_raw, v_raw, q_weight, k_weight, eps, positions, inv_freq, pool, rows_slot, v_norm=...)`
returns q = rms_norm_rope_neox(q_raw, q_weight) and writes, into the layer's KV pools (gemma_oracle.kernels.kv_cache.LayerKVPool),
what `kv_write_layer(pool, rows_slot, k, v, positions)` writes for k = rms_norm_rope_neox(k_raw, k_weight) and
v = rms_norm(v_raw) (no weight) where `v_norm`, else v_raw; bit for bit (the .cu header says why). A k_eq_v layer
passes v_raw = k_raw (its V is the raw K projection). Rows whose sequence slot is out of range, whose position is
negative or (global caches) beyond the capacity write nothing to the pools, as kv_write on the device; rows_slot
and positions are device arrays here, so no value is checked on the host (a CUDA graph replays this launch).

q_raw [R, Hq, d], k_raw and v_raw [R, Hkv, d] float32; weights [d] float32 or None; positions, rows_slot [R] int32;
inv_freq [n_rot / 2] float32; pools [n_seq_slots, capacity, Hkv, d] float16 or float32, pos [n_seq_slots, capacity]
int32; all C-contiguous. `plan_qkv_rope_kv` validates from shapes, dtypes and addresses only, so it runs (and is
tested) on numpy arrays; a bad argument raises ValueError naming it. The only overlap allowed is `out=q_raw`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gemma_oracle.kernels._checks import check_no_overlap
from gemma_oracle.kernels._compile import load_module
from gemma_oracle.kernels.dequant import check_array, require_device_arrays
from gemma_oracle.kernels.fused_norms import REG_MAX, THREADS

MODULE = "qkv_rope_kv"
ENTRIES = {"float16": "qkv_rope_kv_f16", "float32": "qkv_rope_kv_f32"}  # pool dtype -> extern "C" name


@dataclass(frozen=True)
class QkvRopeKvLaunch:
    entry: str
    grid: tuple[int, int, int]  # one block per head row: rows * (hq + 2 * hkv)
    block: tuple[int, int, int]
    rows: int
    hq: int
    hkv: int
    d: int
    half: int
    n_seq_slots: int
    capacity: int
    shared_mem: int  # d floats: a head row after the norm, before RoPE


def plan_qkv_rope_kv(q_raw, k_raw, v_raw, q_weight, k_weight, positions, rows_slot, inv_freq, k_pool, v_pool,
                     pos_table, *, out=None) -> QkvRopeKvLaunch:
    check_array("q_raw", q_raw, dtype=np.float32, ndim=3, align=4)
    rows, hq, d = (int(v) for v in q_raw.shape)
    if hq < 1:
        raise ValueError(f"q_raw: needs at least one head, got shape {tuple(q_raw.shape)}")
    if not 0 < d <= REG_MAX:
        raise ValueError(f"q_raw: head dim must be in [1, {REG_MAX}] (one block holds a head row), got {d}")
    check_array("k_raw", k_raw, dtype=np.float32, ndim=3, align=4)
    hkv = int(k_raw.shape[1])
    if hkv < 1 or tuple(k_raw.shape) != (rows, hkv, d):
        raise ValueError(f"k_raw: expected [{rows}, Hkv >= 1, {d}] (q_raw's rows and head dim), "
                         f"got {tuple(k_raw.shape)}")
    check_array("v_raw", v_raw, dtype=np.float32, ndim=3, shape=(rows, hkv, d), align=4)
    for name, w in (("q_weight", q_weight), ("k_weight", k_weight)):
        if w is not None:
            check_array(name, w, dtype=np.float32, ndim=1, shape=(d,), align=4)
    check_array("positions", positions, dtype=np.int32, ndim=1, shape=(rows,), align=4)
    check_array("rows_slot", rows_slot, dtype=np.int32, ndim=1, shape=(rows,), align=4)
    check_array("inv_freq", inv_freq, dtype=np.float32, ndim=1, align=4)
    half = int(inv_freq.shape[0])
    if half == 0 or 2 * half > d:
        raise ValueError(f"inv_freq: n_rot = 2 * {half} must be in [2, head dim {d}]")
    pool_dtype = getattr(getattr(k_pool, "dtype", None), "name", None)  # None: check_array names a non-array
    if pool_dtype is not None and pool_dtype not in ENTRIES:
        raise ValueError(f"k_pool: expected dtype float16 or float32, got {pool_dtype}")
    pool_dtype = np.dtype(pool_dtype or np.float32)
    check_array("k_pool", k_pool, dtype=pool_dtype, ndim=4, align=pool_dtype.itemsize)
    n_seq, cap = (int(v) for v in k_pool.shape[:2])
    if tuple(k_pool.shape[2:]) != (hkv, d) or min(n_seq, cap) < 1 or max(n_seq, cap) >= 2**31:
        raise ValueError(f"k_pool: expected [n_seq_slots, capacity, {hkv}, {d}] (k_raw's heads and head dim, "
                         f"both leading sizes in [1, 2**31)), got {tuple(k_pool.shape)}")
    check_array("v_pool", v_pool, dtype=pool_dtype, ndim=4, shape=tuple(k_pool.shape), align=pool_dtype.itemsize)
    check_array("pos_table", pos_table, dtype=np.int32, ndim=2, shape=(n_seq, cap), align=4)
    if out is not None:
        check_array("out", out, dtype=np.float32, ndim=3, shape=(rows, hq, d), align=4)
    check_no_overlap({"out": out, "k_pool": k_pool, "v_pool": v_pool, "pos_table": pos_table},
                      {"q_raw": q_raw, "k_raw": k_raw, "v_raw": v_raw, "q_weight": q_weight, "k_weight": k_weight,
                       "positions": positions, "rows_slot": rows_slot, "inv_freq": inv_freq},
                      in_place=(("out", "q_raw"),))
    blocks = rows * (hq + 2 * hkv)
    if blocks >= 2**31:
        raise ValueError(f"q_raw: rows * (Hq + 2 * Hkv) = {blocks} head rows exceed one launch's grid")
    return QkvRopeKvLaunch(ENTRIES[pool_dtype.name], (blocks, 1, 1), (THREADS, 1, 1), rows, hq, hkv, d, half, n_seq,
                           cap, shared_mem=4 * d)


def qkv_rope_kv(q_raw, k_raw, v_raw, q_weight, k_weight, eps: float, positions, inv_freq, pool, rows_slot, *,
                v_norm: bool, out=None):
    """q [R, Hq, d] float32 (new, or `out`), with k and v written into `pool` (a LayerKVPool: k, v, pos, ring)."""
    import cupy as cp

    plan = plan_qkv_rope_kv(q_raw, k_raw, v_raw, q_weight, k_weight, positions, rows_slot, inv_freq, pool.k, pool.v,
                            pool.pos, out=out)
    require_device_arrays(q_raw=q_raw, k_raw=k_raw, v_raw=v_raw, q_weight=q_weight, k_weight=k_weight,
                          positions=positions, rows_slot=rows_slot, inv_freq=inv_freq, k_pool=pool.k, v_pool=pool.v,
                          pos_table=pool.pos, out=out)
    q = cp.empty_like(q_raw) if out is None else out
    if plan.rows:
        load_module(MODULE).get_function(plan.entry)(
            plan.grid, plan.block,
            (q_raw, k_raw, v_raw, q_raw if q_weight is None else q_weight, q_raw if k_weight is None else k_weight,
             positions, rows_slot, inv_freq, q, pool.k, pool.v, pool.pos, np.int32(plan.rows), np.int32(plan.hq),
             np.int32(plan.hkv), np.int32(plan.d), np.int32(plan.half), np.float32(eps),
             np.int32(q_weight is not None), np.int32(k_weight is not None), np.int32(bool(v_norm)),
             np.int32(plan.n_seq_slots), np.int32(plan.capacity), np.int32(bool(pool.ring))),
            shared_mem=plan.shared_mem)
    return q
