"""Launcher of kernels/cuda/attention.cu and attention_fused.cu (their bodies: attention.cuh): batched decode
attention over per-sequence KV pools (split-KV).

Arrays (CuPy, C-contiguous):
    q          [R, Hq, d] float32, one query row per batch row (already normed and rotated)
    k_cache, v_cache, pos_table: one layer's pools (kernels/kv_cache.py layout); shared-KV layers pass their
               source layer's pools
    rows_slot  [R] int32 row -> sequence slot; positions [R] int32 the row's absolute position p
    out        [R, Hq, d] float32
    out_q      [R, Hq * d / 32 * 36] uint8 (quantize=True): the Q8_1 blocks of out viewed as [R, Hq * d], attn_output's
               decode-MMQ input, bit for bit quantize_q8_1's, written by the merge launch (kernels/q8_1_out.py)
Row r attends to the keys of its own sequence at positions j with max(0, p - window + 1) <= j <= p (window 0 =
global), in position order; head h reads KV head h // (Hq / Hkv); scores are (q . k) * scale (1.0 for Gemma 4,
1/sqrt(d) for Gemma 3). A row's result depends only on its own sequence's cache and position (attention.cuh
explains why), never on R, the other rows or the launch shape.
"""
from __future__ import annotations

import functools
import os

import cupy as cp
import numpy as np

from ._compile import load_module
from .kv_cache import LayerKVPool, check_pool, device_rows
from .mmq import COUNTER_SLOTS, prepare_counters

CHUNK = 64           # ATTN_CHUNK: positions per split-KV chunk, aligned to absolute positions
THREADS = 256        # ATTN_THREADS
HEADS_PER_BLOCK_CHOICES = (1, 2, 4, 8)  # the _h<H> instantiations of attn_partial (ATTN_MAX_HPB = 8)
MERGE_THREADS = 128  # MERGE_THREADS (the Q8_1 merge: MERGE_Q8_1_THREADS(D) = max(D, 128), one thread per dim)
# Partial blocks per SM below which heads_per_block serves fewer heads per block. A CUDA-graph step sizes the grid
# for the engine's whole context, so at short contexts most blocks are idle: 4 (not 2) keeps H small for the few
# rows of a decode step, where a block's time is load latency, and still reaches H = 8 at N = 32.
MIN_BLOCKS_PER_SM = 4
HEAD_DIMS = (64, 128, 256, 512)
# GEMMA_ORACLE_ATTN_FUSED=1: one launch a group of rows instead of two, the merge done by the last partial block of
# each (head group, row) (attention_fused.cu, a module of its own so the default build compiles none of it;
# split_k.cuh last_arrival; the same bits). Not with quantize=True
# (the Q8_1 merge keeps its launch). Opt-in until a whole step on the device has been timed.
ENV_FUSED = "GEMMA_ORACLE_ATTN_FUSED"


def fused_from_env() -> bool:
    value = os.environ.get(ENV_FUSED, "0").strip() or "0"
    if value not in ("0", "1"):
        raise ValueError(f"{ENV_FUSED}={value!r}: expected 1 (the merge in the last partial block) or 0 (its own "
                         "launch)")
    return value == "1"


def chunks_needed(max_position: int, window: int) -> int:
    """Split-KV chunks a row at position <= max_position can touch (the workspace's chunk axis)."""
    n = max_position // CHUNK + 1
    if window > 0:
        n = min(n, (window + CHUNK - 2) // CHUNK + 1)
    return n


def workspace_floats(rows: int, n_q_heads: int, head_dim: int, n_chunks: int) -> int:
    """float32 elements of the workspace: partial sums [R, Hq, n_chunks, d] then (max, sum) [R, Hq, n_chunks, 2]."""
    return rows * n_q_heads * n_chunks * (head_dim + 2)


# A launch's split-KV workspace at most, in bytes: more rows (a long prefill chunk at a long context) run as several
# launches of row groups, one after another over one workspace. Rows are independent (attention.cuh: a row's result
# depends on its own q, sequence and position only), so grouping changes no bit. Without it, 512 rows at context 2048
# on a d512 layer need 540 MB, and 2048 rows at context 32768 34 GB.
WORKSPACE_MAX_BYTES = 256 << 20


def rows_per_launch(rows: int, n_q_heads: int, head_dim: int, n_chunks: int,
                    max_bytes: int = WORKSPACE_MAX_BYTES) -> int:
    """Rows of one launch: all of them when their workspace fits in max_bytes, else as many as fit (at least 1)."""
    per_row = 4 * workspace_floats(1, n_q_heads, head_dim, n_chunks)
    return max(1, min(rows, max_bytes // per_row))


def heads_per_block(group: int, blocks_per_head: int, sm_count: int) -> int:
    """Query heads one partial block serves: a divisor of the GQA group size in HEADS_PER_BLOCK_CHOICES.

    The largest such divisor that still gives >= MIN_BLOCKS_PER_SM blocks per SM (blocks = blocks_per_head * group
    / H), else the smallest: small batches spread over more blocks, large ones share K/V loads among more heads. The choice never
    changes a result (attention.cuh: each (head, key) and (head, dim) chain is the same whoever computes it)."""
    divisors = [h for h in HEADS_PER_BLOCK_CHOICES if group % h == 0]
    for h in reversed(divisors):
        if blocks_per_head * (group // h) >= MIN_BLOCKS_PER_SM * sm_count:
            return h
    return divisors[0]


@functools.lru_cache(maxsize=None)
def _sm_count(device_id: int) -> int:
    return int(cp.cuda.Device(device_id).attributes["MultiProcessorCount"])


def launch_geometry(rows: int, n_q_heads: int, n_kv_heads: int, n_chunks: int, sm_count: int):
    """(partial grid, partial block, heads per block, merge grid, merge block). The partial grid is
    (head groups, rows, chunks): chunks last, so that the idle blocks of a grid sized for a longer context than
    the rows have are scheduled after the working ones."""
    hpb = heads_per_block(n_q_heads // n_kv_heads, n_chunks * rows * n_kv_heads, sm_count)
    return (n_q_heads // hpb, rows, n_chunks), (THREADS,), hpb, (rows, n_q_heads), (MERGE_THREADS,)


def decode_attention(q: cp.ndarray, k_cache: cp.ndarray, v_cache: cp.ndarray, pos_table: cp.ndarray, rows_slot,
                     positions, *, window: int, ring: bool, scale: float, max_position: int | None = None,
                     out: cp.ndarray | None = None, workspace: cp.ndarray | None = None,
                     heads_per_block_override: int | None = None, quantize: bool = False,
                     out_q: cp.ndarray | None = None, max_workspace_bytes: int = WORKSPACE_MAX_BYTES,
                     fused: bool | None = None, packed: bool = False):
    """Attention of R query rows over their own sequences' caches; returns out [R, Hq, d] float32, or with
    quantize=True (out, out_q): out_q the Q8_1 blocks of out.reshape(R, Hq * d) (uint8 [R, Hq * d / 32 * 36]).

    window: the sliding window (keys with p - j < window), 0 for a global layer. ring: the pool is a sliding ring
    (slot = position % capacity; then window <= capacity is required) rather than a global array (slot = position).
    max_position: an upper bound of positions, known on the host (it sizes the workspace and the grid, never a
    result; a row it underestimates so much that its chunks do not fit comes back NaN); None reads it from the
    arrays (a device sync when positions is a CuPy array).
    workspace: optional float32 CuPy array of at least workspace_floats(R, Hq, d, chunks_needed(max_position,
    window)) elements (e.g. for CUDA-graph capture); otherwise one is taken from CuPy's memory pool.
    heads_per_block_override: force the partial kernel's heads per block (1, 2, 4 or 8, dividing Hq / Hkv), for tests
    that show the choice never changes a bit; None lets launch_geometry choose.
    fused: the merge in the last partial block (one launch; ENV_FUSED when None); ignored with quantize=True.
    packed=True: returns (out, (xf, inv)), xf / inv out.reshape(R, Hq * d)'s packed-MMA records (attn_output's
    packed input, kernels/packed_mma.py packed_x, bit for bit): written by the fused launch where it serves all rows
    in one launch, else by a packed_x launch after. Not with quantize=True.
    Rows whose sequence slot is out of range, or that see no key, come back as NaN.
    """
    suffix, n_seq, cap, hkv, d = check_pool(k_cache, v_cache, pos_table)
    if not isinstance(q, cp.ndarray) or q.dtype != cp.float32 or q.ndim != 3 or not q.flags.c_contiguous:
        raise TypeError("q: expected a C-contiguous float32 cupy.ndarray [R, Hq, d]")
    if q.data.ptr % 16:
        raise ValueError("q: the kernel reads it as 16-byte vectors; expected a 16-byte aligned array")
    rows, hq, dq = (int(s) for s in q.shape)
    if dq != d:
        raise ValueError(f"q: head dim {dq} differs from the cache's {d}")
    if d not in HEAD_DIMS:
        raise ValueError(f"head dim {d} unsupported: expected one of {HEAD_DIMS}")
    if hq % hkv:
        raise ValueError(f"GQA: {hq} query heads are not a multiple of {hkv} KV heads")
    if window < 0:
        raise ValueError(f"window must be >= 0 (0 = global), got {window}")
    if ring and not 0 < window <= cap:
        raise ValueError(f"a ring cache needs 0 < window <= capacity, got window {window}, capacity {cap}")
    seq_d, seq_h = device_rows("rows_slot", rows_slot, rows)
    pos_d, pos_h = device_rows("positions", positions, rows)
    if pos_h is not None and pos_h.size and pos_h.min() < 0:
        raise ValueError("positions: must be >= 0")
    if not ring and pos_h is not None and pos_h.size and pos_h.max() >= cap:
        raise ValueError(f"positions: {int(pos_h.max())} is beyond the global cache capacity {cap}")
    if seq_h is not None and seq_h.size and (seq_h.min() < 0 or seq_h.max() >= n_seq):
        raise ValueError(f"rows_slot: values must be in [0, {n_seq})")
    if out is None:
        out = cp.empty((rows, hq, d), dtype=cp.float32)
    elif (not isinstance(out, cp.ndarray) or out.dtype != cp.float32 or tuple(out.shape) != (rows, hq, d)
          or not out.flags.c_contiguous):
        raise ValueError(f"out: expected a C-contiguous float32 cupy.ndarray of shape {(rows, hq, d)}")
    if quantize:
        from .dequant import require_device_arrays
        from .q8_1_out import q8_1_out_plan

        plan = q8_1_out_plan("q", rows, hq * d, out_q, out=out, q=q, workspace=workspace)
        require_device_arrays(out_q=out_q)
        out_q = cp.empty(plan.q_shape, dtype=cp.uint8) if out_q is None else out_q
    elif out_q is not None:
        raise ValueError("out_q: given with quantize=False")
    if packed and (quantize or (hq * d) % 64):
        raise ValueError(f"packed=True: needs quantize=False and Hq * d a multiple of 64, got quantize={quantize}, "
                         f"Hq * d = {hq * d}")
    if rows == 0:
        return (out, out_q) if quantize else (out, _packed_buffers(0, hq * d)) if packed else out
    if max_position is None:
        max_position = int(pos_h.max()) if pos_h is not None else int(pos_d.max())
    n_chunks = chunks_needed(max(int(max_position), 0), window)

    if workspace is None:  # rows in groups whose workspace fits max_workspace_bytes (rows_per_launch)
        group = rows_per_launch(rows, hq, d, n_chunks, max_workspace_bytes)
        workspace = cp.empty(workspace_floats(group, hq, d, n_chunks), dtype=cp.float32)
    else:  # the caller's workspace serves all rows in one launch
        group, need = rows, workspace_floats(rows, hq, d, n_chunks)
        if (not isinstance(workspace, cp.ndarray) or workspace.dtype != cp.float32 or workspace.ndim != 1
                or not workspace.flags.c_contiguous or workspace.size < need):
            raise ValueError(f"workspace: expected a contiguous float32 cupy.ndarray of >= {need} elements")
    if heads_per_block_override is not None:
        hpb = int(heads_per_block_override)
        if hpb not in HEADS_PER_BLOCK_CHOICES or (hq // hkv) % hpb:
            raise ValueError(f"heads_per_block_override {hpb}: must divide {hq // hkv} and be in "
                             f"{HEADS_PER_BLOCK_CHOICES}")
    fused = (fused_from_env() if fused is None else bool(fused)) and out_q is None
    module = load_module("attention")
    fused_module = load_module("attention_fused") if fused else None
    records = _packed_buffers(rows, hq * d) if packed and fused and group >= rows else None
    for r0 in range(0, rows, group):
        r1 = min(rows, r0 + group)
        wrote = _launch(module, fused_module, suffix, q[r0:r1], k_cache, v_cache, pos_table, seq_d[r0:r1], pos_d[r0:r1],
                        out[r0:r1], None if out_q is None else out_q[r0:r1], workspace, hq, hkv, d, n_seq, cap,
                        window, ring, scale, n_chunks, heads_per_block_override, records)
        records = records if wrote else None
    if packed and records is None:  # the records from a launch of their own (two launches, or row groups)
        from .packed_mma import packed_x

        records = packed_x(out.reshape(rows, hq * d))
    return (out, out_q) if quantize else (out, records) if packed else out


def _packed_buffers(rows: int, k: int):
    from .packed_mma import packed_x_buffers

    return packed_x_buffers(rows, k)


def _launch(module, fused_module, suffix: str, q, k_cache, v_cache, pos_table, seq_d, pos_d, out, out_q, workspace,
            hq: int, hkv: int, d: int, n_seq: int, cap: int, window: int, ring: bool, scale: float, n_chunks: int,
            hpb_override: int | None, records=None) -> bool:
    """The partial and merge launches of one group of rows (all arrays already sliced to the group); with
    fused_module (attention_fused.cu; out_q None, the counters enough): one launch, the merge in the last partial
    block, and with `records` (xf, inv) for all the rows, their packed-MMA records. True: the fused launch ran (and
    wrote the records given)."""
    rows = int(q.shape[0])
    need = workspace_floats(rows, hq, d, n_chunks)
    ws_acc = workspace[: rows * hq * n_chunks * d]
    ws_ml = workspace[rows * hq * n_chunks * d: need]
    grid, block, hpb, mgrid, mblock = launch_geometry(rows, hq, hkv, n_chunks, _sm_count(cp.cuda.Device().id))
    if hpb_override is not None:
        hpb = int(hpb_override)
        grid = (hq // hpb, grid[1], grid[2])
    # the fused launch counts at a counter a (head group, row) and one a row
    if fused_module is not None and out_q is None and (grid[0] + 1) * grid[1] <= COUNTER_SLOTS:
        xf, xinv = records if records is not None else (np.uint64(0), np.uint64(0))  # null pointers: no records
        fused_module.get_function(f"attn_fused_{suffix}_d{d}_h{hpb}")(
            grid, block, (q, k_cache, v_cache, pos_table, seq_d, pos_d, ws_acc, ws_ml, out, xf, xinv,
                          prepare_counters(),
                          cp.int32(rows), cp.int32(hq), cp.int32(hkv), cp.int32(n_seq), cp.int32(cap),
                          cp.int32(window), cp.int32(int(ring)), cp.float32(scale), cp.int32(n_chunks)))
        return True
    module.get_function(f"attn_partial_{suffix}_d{d}_h{hpb}")(
        grid, block, (q, k_cache, v_cache, pos_table, seq_d, pos_d, ws_acc, ws_ml, cp.int32(rows), cp.int32(hq),
                      cp.int32(hkv), cp.int32(n_seq), cp.int32(cap), cp.int32(window),
                      cp.int32(int(ring)), cp.float32(scale), cp.int32(n_chunks)))
    outs = (out,) if out_q is None else (out, out_q)
    merge, mblock = (f"attn_merge_q8_1_d{d}", (max(d, MERGE_THREADS),)) if out_q is not None else (f"attn_merge_d{d}",
                                                                                                   mblock)
    module.get_function(merge)(
        mgrid, mblock, (ws_acc, ws_ml, seq_d, pos_d, *outs, cp.int32(rows), cp.int32(hq), cp.int32(n_seq),
                        cp.int32(window), cp.int32(n_chunks)))
    return False


def decode_attention_layer(q: cp.ndarray, pool: LayerKVPool, rows_slot, positions, *, window: int, scale: float,
                           max_position: int | None = None, out: cp.ndarray | None = None,
                           workspace: cp.ndarray | None = None, quantize: bool = False,
                           out_q: cp.ndarray | None = None, max_workspace_bytes: int = WORKSPACE_MAX_BYTES,
                           fused: bool | None = None, packed: bool = False):
    """decode_attention over a LayerKVPool (its ring flag decides the slot rule)."""
    return decode_attention(q, pool.k, pool.v, pool.pos, rows_slot, positions, window=window, ring=pool.ring,
                            scale=scale, max_position=max_position, out=out, workspace=workspace, fused=fused,
                            packed=packed,
                            quantize=quantize, out_q=out_q, max_workspace_bytes=max_workspace_bytes)

