"""GPU KV-cache writes and split-KV decode attention against float64 references and the engine's cache semantics.

* kv_write: pool contents and position tables, after many launches that wrap sliding rings several times, equal a
  model made of gemma_oracle.engine.kv_cache.LayerKV per sequence (same slot rule; F16 pools hold np.float16-rounded values).
* decode_attention: each row against NumpyBackend("float64").attend over the row's visible keys taken in position
  order (pool values read back, so F16 pools give the f16-rounded reference), per-row NMSE <= NMSE_FP32; GQA
  16/8, 16/1, 8/1, 4/2 (and others), head dims 64..512, wrapped rings, windows that start mid-chunk, short
  contexts of a few 64-position chunks and global contexts of many, mixed lengths and prefill-chunk rows (several
  positions of one sequence) in one launch.
* The determinism contract: a row's output bits are the same launched alone (R = 1) and inside batches of
  R = 2, 9, 17, 32 with other sequences (and with a larger workspace / grid).
Outputs are poisoned with NaN and surrounded by 1024-float guards (llama.cpp's sentinels).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from gemma_oracle.engine.backends.numpy_backend import NumpyBackend
from gemma_oracle.engine.kv_cache import LayerKV

from .kernel_support import Guarded, assert_rows_close, first_bit_difference

try:  # collection must work without CuPy; the gpu marker makes the plugin skip these tests there
    import cupy as cp

    from gemma_oracle.kernels.attention import CHUNK, decode_attention, decode_attention_layer
    from gemma_oracle.kernels.kv_cache import alloc_layer_kv, kv_write, kv_write_layer
except ImportError:
    cp = None
    CHUNK = 64  # gemma_oracle.kernels.attention.CHUNK, only used to build case tables at collection

pytestmark = pytest.mark.gpu

BATCHES = (1, 2, 3, 5, 8, 9, 16, 17, 32)
DETERMINISM_BATCHES = (2, 9, 17, 32)
POOL_DTYPES = ("float16", "float32")
REF = NumpyBackend("float64")


# --- helpers --------------------------------------------------------------------------------------------------

def ids(table: dict) -> list:
    return [pytest.param(v, id=k) for k, v in table.items()]


@dataclass(frozen=True)
class AttnCase:
    hq: int
    hkv: int
    d: int
    window: int = 0      # 0: global layer
    chunk: int = 1       # prefill chunk: a sliding ring holds window + chunk - 1 slots (engine/kv_cache.py)
    context: int = 0     # global caches: capacity = the max context
    scale: float = 1.0   # Gemma 4: 1.0; Gemma 3: 1/sqrt(query_pre_attn_scalar)
    q_std: float = 0.0   # 0: 2/sqrt(d), scores of std ~2 (mass over many keys); else raw (peaked softmax)

    @property
    def ring(self) -> bool:
        return self.window > 0 and self.context == 0

    @property
    def capacity(self) -> int:
        return self.window + self.chunk - 1 if self.ring else self.context

    @property
    def query_std(self) -> float:
        return self.q_std or 2.0 / np.sqrt(self.d)


ATTN_CASES = {
    "g4-12b-full-hq16-hkv1-d512-global": AttnCase(16, 1, 512, context=1400),
    "g4-12b-sliding-hq16-hkv8-d256-w1024": AttnCase(16, 8, 256, window=1024),
    "g4-e4b-full-hq8-hkv2-d512-global-peaked": AttnCase(8, 2, 512, context=700, q_std=1.0),
    "hq4-hkv2-d128-global": AttnCase(4, 2, 128, context=1100),
    "hq32-hkv2-d128-global-group16": AttnCase(32, 2, 128, context=700),  # two partial blocks per KV head
    "g3-270m-hq4-hkv1-d256-w512-chunk4-scaled": AttnCase(4, 1, 256, window=512, chunk=4, scale=1 / 16),
    "hq4-hkv2-d64-w8-chunk3": AttnCase(4, 2, 64, window=8, chunk=3),
    "hq16-hkv8-d64-w300-chunk5": AttnCase(16, 8, 64, window=300, chunk=5),
    # the decode regime the split-KV chunking is shaped for: a few chunks per row, group 8 (several heads a block)
    "hq8-hkv1-d512-global-ctx320": AttnCase(8, 1, 512, context=320),
    # a window that is no multiple of the chunk: every row's first visible key sits mid-chunk
    "hq16-hkv8-d256-w100-chunk2": AttnCase(16, 8, 256, window=100, chunk=2),
}


def held_positions(last: int, cap: int, ring: bool) -> np.ndarray:
    """The position each slot holds after positions 0..last were written in order (-1: empty)."""
    slots = np.arange(cap)
    if last < 0:
        return np.full(cap, -1)
    if ring:
        held = last - ((last - slots) % cap)
        return np.where(held >= 0, held, -1)
    return np.where(slots <= last, slots, -1)


def build_pool(case: AttnCase, last: list[int], dtype: str, seed: int):
    """A LayerKVPool whose sequence s holds random K/V for positions 0..last[s] (rings wrapped as written)."""
    pool = alloc_layer_kv(len(last), case.capacity, case.hkv, case.d, ring=case.ring, dtype=dtype)
    rs = cp.random.RandomState(seed)
    pool.k[...] = rs.standard_normal(pool.k.shape, dtype=cp.float32).astype(dtype)
    pool.v[...] = rs.standard_normal(pool.v.shape, dtype=cp.float32).astype(dtype)
    pos = np.stack([held_positions(l, case.capacity, case.ring) for l in last]).astype(np.int32)
    pool.pos[...] = cp.asarray(pos)
    return pool


def interesting_positions(case: AttnCase) -> list[int]:
    """Chunk boundaries, windows straddling chunks, rings wrapped several times, the longest global context."""
    c = CHUNK
    if case.ring:
        cap, w = case.capacity, case.window
        pts = [0, 1, w - 1, w, w + 1, c - 1, c, c + w // 2, cap + 3, 2 * cap + 5, 3 * cap + 17, 4 * cap - 1,
               5 * cap + c // 3, 6 * cap + 2 * c - 1]
    else:
        n = case.context
        pts = [0, 1, c - 1, c, c + 1, 2 * c - 1, 2 * c, n - 1, n // 2, 3 * c + 7]
    return sorted({p for p in pts if p >= 0 and (case.ring or p < case.context)})


def plan_rows(case: AttnCase, rows: int, rng) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(rows_slot, positions, last written position per sequence slot) of one launch.

    Rows use scrambled sequence slots (two spare slots hold other sequences) and mixed lengths. A batch of >= 3
    rows ends with two earlier positions of its longest row's sequence (a prefill chunk: each of them must see
    only keys <= its own position)."""
    n_seq = rows + 2
    top = 6 * case.capacity + 2 * CHUNK if case.ring else case.context
    pts = interesting_positions(case)
    last = [int(rng.integers(0, top)) for _ in range(n_seq)]
    seq_of_row = rng.permutation(n_seq)[:rows].astype(np.int32)
    positions = np.empty(rows, dtype=np.int32)
    for r, s in enumerate(seq_of_row):
        if r < len(pts):
            last[s] = pts[r]
        positions[r] = last[s]
    back = case.chunk - 1 if case.ring else None  # how far back a ring still holds a prefill row's window
    if rows >= 3 and back != 0:
        anchor = int(np.argmax(positions[: rows - 2]))
        p0 = int(positions[anchor])
        back = back if back is not None else max(1, p0 // 3)
        for r, step in ((rows - 1, 1), (rows - 2, back)):
            seq_of_row[r] = seq_of_row[anchor]
            positions[r] = max(0, p0 - step)
    return seq_of_row, positions, last


def reference_attention(case: AttnCase, pool, q: np.ndarray, rows_slot, positions) -> np.ndarray:
    """float64 attention per row over its visible keys in position order, read back from the pool."""
    pos_table = cp.asnumpy(pool.pos)
    out = np.empty(q.shape, dtype=np.float64)
    for r, (s, p) in enumerate(zip(rows_slot.tolist(), positions.tolist())):
        lo = max(0, p - case.window + 1) if case.window else 0
        js = np.arange(lo, p + 1)
        slots = js % case.capacity if case.ring else js
        assert np.array_equal(pos_table[s, slots], js), f"fixture: row {r} lacks visible keys"
        sl = cp.asarray(slots)
        k = cp.asnumpy(pool.k[int(s)][sl]).astype(np.float64)
        v = cp.asnumpy(pool.v[int(s)][sl]).astype(np.float64)
        out[r] = REF.attend(q[r].astype(np.float64), k, v, case.scale)
    return out


# --- decode attention vs float64 ----------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", POOL_DTYPES)
@pytest.mark.parametrize("rows", BATCHES, ids=lambda r: f"r{r}")
@pytest.mark.parametrize("case", ids(ATTN_CASES))
def test_decode_attention(case, rows, dtype):
    rng = np.random.default_rng(rows * 1009 + case.d + case.window)
    rows_slot, positions, last = plan_rows(case, rows, rng)
    pool = build_pool(case, last, dtype, seed=rows)
    q = (rng.standard_normal((rows, case.hq, case.d)) * case.query_std).astype(np.float32)
    g = Guarded((rows, case.hq, case.d))
    got = decode_attention_layer(cp.asarray(q), pool, rows_slot, positions, window=case.window, scale=case.scale,
                                 out=g.view)
    assert got is g.view
    g.assert_guards_intact()
    ref = reference_attention(case, pool, q, rows_slot, positions)
    assert_rows_close(ref, cp.asnumpy(got), f"decode_attention {dtype}")


# --- determinism contract -------------------------------------------------------------------------------------------

DETERMINISM_CASES = {
    "hq16-hkv1-d512-global-f16": (AttnCase(16, 1, 512, context=1600), "float16"),
    "hq16-hkv8-d256-w1024-ring-f16": (AttnCase(16, 8, 256, window=1024, chunk=2), "float16"),
    "hq32-hkv2-d128-global-f32": (AttnCase(32, 2, 128, context=1100), "float32"),
    "hq4-hkv2-d64-w8-chunk3-ring-f32": (AttnCase(4, 2, 64, window=8, chunk=3), "float32"),
    "hq8-hkv1-d512-global-ctx320-f32": (AttnCase(8, 1, 512, context=320), "float32"),
    "hq16-hkv8-d256-w100-ring-f16": (AttnCase(16, 8, 256, window=100, chunk=2), "float16"),
}


@pytest.mark.parametrize("case_dtype", ids(DETERMINISM_CASES))
def test_row_bits_independent_of_batch(case_dtype):
    """A row's output bits depend only on its own sequence and position: alone (R = 1) == inside any batch."""
    case, dtype = case_dtype
    rng = np.random.default_rng(case.d * 7 + case.window)
    n_seq = 40
    top = 6 * case.capacity if case.ring else case.context
    last = [int(x) for x in rng.integers(0, top, size=n_seq)]
    last[0], last[1] = top - 1, 0
    pool = build_pool(case, last, dtype, seed=11)
    # candidate rows: every sequence at its last position, plus earlier ones still visible (prefill-chunk rows)
    cands = [(s, last[s]) for s in range(n_seq)]
    cands += [(s, last[s] - case.chunk + 1) for s in range(n_seq) if case.ring and last[s] >= case.chunk - 1]
    cands += [(s, last[s] // 2) for s in range(n_seq) if not case.ring]
    q_of = {c: (rng.standard_normal((case.hq, case.d)) * case.query_std).astype(np.float32) for c in cands}

    def run(batch, max_position=None, hpb=None):
        q = cp.asarray(np.stack([q_of[c] for c in batch]))
        slots = cp.asarray(np.array([c[0] for c in batch], dtype=np.int32))
        pos = cp.asarray(np.array([c[1] for c in batch], dtype=np.int32))
        mp = max(c[1] for c in batch) if max_position is None else max_position
        out = decode_attention(q, pool.k, pool.v, pool.pos, slots, pos, window=case.window, ring=case.ring,
                               scale=case.scale, max_position=mp, heads_per_block_override=hpb)
        return cp.asnumpy(out).view(np.uint32)

    targets = [cands[0], cands[1]] + [cands[i] for i in rng.choice(len(cands), 3, replace=False)]
    for t in targets:
        alone = run([t])[0]
        pool_of_others = [c for c in cands if c != t]
        for rows in DETERMINISM_BATCHES:
            others = [pool_of_others[i] for i in rng.choice(len(pool_of_others), rows - 1, replace=False)]
            at = int(rng.integers(rows))
            batch = others[:at] + [t] + others[at:]
            got = run(batch)
            assert np.array_equal(got[at], alone), f"row {t} differs alone vs at index {at} of a batch of {rows}"
        # a much larger workspace / grid (max_position bound far above the row's) changes nothing either
        big = 6 * case.capacity if case.ring else case.context - 1
        assert np.array_equal(run([t], max_position=big)[0], alone), f"row {t}: max_position changed the bits"
        # nor does the number of query heads a partial block serves (launch_geometry picks it from the batch)
        group = case.hq // case.hkv
        for hpb in [h for h in (1, 2, 4, 8) if group % h == 0]:
            assert np.array_equal(run([t], hpb=hpb)[0], alone), f"row {t}: heads per block {hpb} changed the bits"


@pytest.mark.parametrize("case_dtype", ids({k: DETERMINISM_CASES[k] for k in (
    "hq16-hkv1-d512-global-f16", "hq16-hkv8-d256-w1024-ring-f16", "hq4-hkv2-d64-w8-chunk3-ring-f32")}))
@pytest.mark.parametrize("quantize", [False, True], ids=["f32-out", "q8_1-out"])
def test_rows_in_workspace_groups_give_the_same_bits(case_dtype, quantize):
    """Rows whose workspace exceeds max_workspace_bytes run as launches of row groups over one workspace
    (kernels/attention.py rows_per_launch): every output (and its Q8_1 blocks) bitwise equal to one launch, for
    groups of 1, 5 and 16 of 37 rows."""
    from gemma_oracle.kernels.attention import chunks_needed, workspace_floats

    case, dtype = case_dtype
    rng = np.random.default_rng(case.d + 3 * case.window)
    rows_slot, positions, last = plan_rows(case, 37, rng)
    pool = build_pool(case, last, dtype, seed=5)
    q = cp.asarray((rng.standard_normal((37, case.hq, case.d)) * case.query_std).astype(np.float32))
    n_chunks = chunks_needed(int(positions.max()), case.window)

    def run(max_bytes):
        return decode_attention_layer(q, pool, rows_slot, positions, window=case.window, scale=case.scale,
                                      quantize=quantize, max_workspace_bytes=max_bytes)

    whole = run(1 << 40)
    for group in (1, 5, 16):
        got = run(4 * workspace_floats(group, case.hq, case.d, n_chunks))
        for a, b in zip((got,) if not quantize else got, (whole,) if not quantize else whole):
            assert not first_bit_difference(cp.asnumpy(a), cp.asnumpy(b)), f"groups of {group} rows"


@pytest.mark.parametrize("dtype", POOL_DTYPES)
@pytest.mark.parametrize("rows", (1, 5, 17, 32), ids=lambda r: f"r{r}")
@pytest.mark.parametrize("case", ids(ATTN_CASES))
def test_merge_in_the_last_partial_block_gives_the_same_bits(case, rows, dtype):
    """fused=True (attention_fused.cu: the merge done by the last partial block of each head group and row)
    against the partial and merge launches: every output bit equal, NaN rows included (a bad slot, a row with no
    key), at every heads-per-block choice, launched again (the counters it left at zero) and replayed from a CUDA
    graph. A launch over counters that never come to a block's last arrival (no merge runs) is the control: it must
    differ."""
    from gemma_oracle.kernels.attention import chunks_needed, workspace_floats
    from gemma_oracle.kernels.mmq import prepare_counters

    rng = np.random.default_rng(rows * 31 + case.d + case.window)
    rows_slot, positions, last = plan_rows(case, rows, rng)
    pool = build_pool(case, last, dtype, seed=rows + 1)
    if rows >= 5:  # a slot that holds nothing and one past the pool's slots: NaN rows
        rows_slot = rows_slot.copy()
        rows_slot[1], rows_slot[3] = len(last) - 1, len(last) + 4
        pool.pos[len(last) - 1] = -1
    q = cp.asarray((rng.standard_normal((rows, case.hq, case.d)) * case.query_std).astype(np.float32))
    mp = int(positions.max())

    def run(fused, hpb=None, out=None):
        got = decode_attention(q, pool.k, pool.v, pool.pos, cp.asarray(rows_slot), cp.asarray(positions),
                               window=case.window, ring=case.ring, scale=case.scale, max_position=mp, fused=fused,
                               heads_per_block_override=hpb, out=out)
        return cp.asnumpy(got).view(np.uint32)

    counters = prepare_counters()
    group = case.hq // case.hkv
    for hpb in [None] + [h for h in (1, 2, 4, 8) if group % h == 0]:
        two = run(False, hpb)
        for again in range(2):
            diff = first_bit_difference(run(True, hpb), two)
            assert not diff, f"heads per block {hpb}, fused launch {again}: {diff}"
        assert not cp.any(counters[: rows * case.hq]), "the fused launch left a counter non-zero"
    # packed=True: attn_output's packed-MMA records from the fused launch equal packed_x of its output, on the
    # words of real tokens (padding tokens' words are never written), and without fusing the same (packed_x after)
    from gemma_oracle.kernels.packed_mma import packed_x
    from gemma_oracle.kernels.reference import packed as packed_ref

    live = packed_ref.x_written(rows, case.hq * case.d)
    for fused in (True, False):
        out, (xf, inv) = decode_attention(q, pool.k, pool.v, pool.pos, cp.asarray(rows_slot), cp.asarray(positions),
                                          window=case.window, ring=case.ring, scale=case.scale, max_position=mp,
                                          fused=fused, packed=True)
        assert not first_bit_difference(cp.asnumpy(out).view(np.uint32), two)
        want_xf, want_inv = packed_x(out.reshape(rows, case.hq * case.d))
        assert not first_bit_difference(cp.asnumpy(xf)[live], cp.asnumpy(want_xf)[live]), f"records, fused={fused}"
        assert not first_bit_difference(cp.asnumpy(inv), cp.asnumpy(want_inv)), f"inv, fused={fused}"
    assert not cp.any(counters[: rows * case.hq + rows]), "the packed launch left a counter non-zero"
    # a graph of two fused launches, replayed twice
    out = cp.empty((rows, case.hq, case.d), dtype=cp.float32)
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        decode_attention(q, pool.k, pool.v, pool.pos, cp.asarray(rows_slot), cp.asarray(positions), window=case.window,
                         ring=case.ring, scale=case.scale, max_position=mp, fused=True, out=out)  # compile outside
        slots_d, pos_d = cp.asarray(rows_slot), cp.asarray(positions)
        ws = cp.empty(workspace_floats(rows, case.hq, case.d, chunks_needed(mp, case.window)), dtype=cp.float32)
        stream.begin_capture()
        try:
            for _ in range(2):
                decode_attention(q, pool.k, pool.v, pool.pos, slots_d, pos_d, window=case.window, ring=case.ring,
                                 scale=case.scale, max_position=mp, fused=True, out=out, workspace=ws)
        finally:
            graph = stream.end_capture()
        for _ in range(2):
            out.fill(0)
            graph.launch(stream)
            stream.synchronize()
            assert not first_bit_difference(cp.asnumpy(out).view(np.uint32), run(False)), "graph replay"
    # the control: counters far from zero, so no block is ever the last to arrive; the output must differ
    counters[: rows * case.hq] = 1 << 20
    try:
        broken = run(True, out=cp.zeros((rows, case.hq, case.d), dtype=cp.float32))
    finally:
        counters[: rows * case.hq] = 0
    assert first_bit_difference(broken, run(False)), "a launch whose merge never ran gave the right bits"


def test_rows_per_launch():
    """All rows in one launch while their workspace fits the limit, else as many as fit, never fewer than one (pure
    arithmetic, but gemma_oracle.kernels.attention imports CuPy, so it runs with the GPU tests)."""
    from gemma_oracle.kernels.attention import WORKSPACE_MAX_BYTES, rows_per_launch, workspace_floats

    per_row = 4 * workspace_floats(1, 16, 512, 32)  # a d512 row at context 2048: 16 heads x 32 chunks x 514 floats
    assert rows_per_launch(8, 16, 512, 32) == 8
    assert rows_per_launch(512, 16, 512, 32) == WORKSPACE_MAX_BYTES // per_row == 255  # 1,052,672 B a row
    assert rows_per_launch(512, 16, 512, 32, max_bytes=per_row * 5 + 1) == 5
    assert rows_per_launch(3, 16, 512, 32, max_bytes=1) == 1


# --- KV writes against gemma_oracle.engine.kv_cache.LayerKV, and attention over them -------------------------------------------

KVW_CASES = {
    "ring-w8-chunk3-hkv2-d64": AttnCase(4, 2, 64, window=8, chunk=3),
    "ring-w300-chunk5-hkv8-d64": AttnCase(16, 8, 64, window=300, chunk=5),
    "global-ctx64-hkv1-d128": AttnCase(4, 1, 128, context=64),
}
F16_EDGE_VALUES = np.array([1 + 2.0**-11, 1 + 3 * 2.0**-11, -(1 + 2.0**-11), 65504.0, 70000.0, 1e-6, 6e-8, -0.0])


def f16_round(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # 70000 -> inf on purpose (F16_EDGE_VALUES)
        return x.astype(np.float16).astype(np.float64)


def write_steps(case: AttnCase, dtype: str, *, n_seq: int = 5, seed: int = 0, edge_values: bool = False):
    """Drive kv_write and a per-sequence engine LayerKV model with the same rows, yielding after each launch.

    Each launch takes 1..chunk (rings) or 1..4 (global) new positions of a random subset of the sequences, a mix
    of decode and prefill rows; small rings wrap about five times, larger ones three times. edge_values plants
    f16 rounding ties, overflow and subnormals in K."""
    rng = np.random.default_rng(seed)
    cap = case.capacity
    pool = alloc_layer_kv(n_seq, cap, case.hkv, case.d, ring=case.ring, dtype=dtype)
    models = [LayerKV(REF, case.hkv, case.d, ring_capacity=cap if case.ring else None,
                      max_len=10**9 if case.ring else cap) for _ in range(n_seq)]
    nxt = [0] * n_seq
    end = ((5 if cap < 100 else 3) * cap + 3) if case.ring else cap - 4
    per_seq = case.chunk if case.ring else 4
    rounding = f16_round if dtype == "float16" else (lambda a: a.astype(np.float64))
    while min(nxt) < end:
        rows_slot, positions = [], []
        for s in rng.permutation(n_seq).tolist():
            if nxt[s] >= end or rng.random() < 0.3:
                continue
            stop = min(nxt[s] + int(rng.integers(1, per_seq + 1)), end)
            rows_slot += [s] * (stop - nxt[s])
            positions += list(range(nxt[s], stop))
            nxt[s] = stop
        if not rows_slot:
            continue
        rows = len(rows_slot)
        k = rng.standard_normal((rows, case.hkv, case.d)).astype(np.float32)
        v = rng.standard_normal((rows, case.hkv, case.d)).astype(np.float32)
        if edge_values:
            k.reshape(-1)[: F16_EDGE_VALUES.size] = F16_EDGE_VALUES
        rows_slot = np.array(rows_slot, dtype=np.int32)
        positions = np.array(positions, dtype=np.int32)
        kv_write_layer(pool, rows_slot, cp.asarray(k), cp.asarray(v), positions)
        for r, (s, p) in enumerate(zip(rows_slot.tolist(), positions.tolist())):
            models[s].write(p, rounding(k[r]), rounding(v[r]))
        yield pool, models, rows_slot, positions


@pytest.mark.parametrize("dtype", POOL_DTYPES)
@pytest.mark.parametrize("case", ids(KVW_CASES))
def test_kv_write_matches_engine_cache(case, dtype):
    """Slot contents and position tables equal gemma_oracle.engine.kv_cache.LayerKV after every launch (rings wrap ~5x)."""
    launches = 0
    for pool, models, _, _ in write_steps(case, dtype, edge_values=True):
        launches += 1
        pos = cp.asnumpy(pool.pos)
        k = cp.asnumpy(pool.k).astype(np.float64)
        v = cp.asnumpy(pool.v).astype(np.float64)
        for s, m in enumerate(models):
            assert m.capacity == pool.capacity
            assert np.array_equal(pos[s], m.pos), f"launch {launches}: seq {s} position table differs"
            assert np.array_equal(k[s], m.k), f"launch {launches}: seq {s} K slots differ"
            assert np.array_equal(v[s], m.v), f"launch {launches}: seq {s} V slots differ"
    assert launches > 5


@pytest.mark.parametrize("dtype", POOL_DTYPES)
@pytest.mark.parametrize("case", ids(KVW_CASES))
def test_attention_over_written_cache_matches_engine(case, dtype):
    """End to end: rows just written (decode and prefill-chunk rows) attend over kv_write's pools and match
    NumpyBackend.attend over engine LayerKV.visible(p, window)."""
    rng = np.random.default_rng(1)
    checked = 0
    for pool, models, rows_slot, positions in write_steps(case, dtype, seed=2):
        rows = rows_slot.size
        q = (rng.standard_normal((rows, case.hq, case.d)) * case.query_std).astype(np.float32)
        g = Guarded((rows, case.hq, case.d))
        got = decode_attention_layer(cp.asarray(q), pool, cp.asarray(rows_slot), cp.asarray(positions),
                                     window=case.window, scale=case.scale, max_position=int(positions.max()),
                                     out=g.view)
        g.assert_guards_intact()
        ref = np.stack([REF.attend(q[r].astype(np.float64), *models[s].visible(p, case.window or None), case.scale)
                        for r, (s, p) in enumerate(zip(rows_slot.tolist(), positions.tolist()))])
        assert_rows_close(ref, cp.asnumpy(got), f"attention after kv_write {dtype}")
        checked += rows
    assert checked > 20


def test_kv_write_invalid_rows():
    """Host arrays are validated (ValueError); device rows out of range write nothing."""
    pool = alloc_layer_kv(3, 16, 2, 64, ring=False, dtype="float16")
    k = cp.ones((2, 2, 64), dtype=cp.float32)
    with pytest.raises(ValueError):  # position beyond a global cache
        kv_write_layer(pool, np.array([0, 1], np.int32), k, k, np.array([3, 16], np.int32))
    with pytest.raises(ValueError):  # sequence slot out of range
        kv_write_layer(pool, np.array([0, 3], np.int32), k, k, np.array([3, 4], np.int32))
    with pytest.raises(ValueError):  # two rows on one (sequence, slot)
        kv_write_layer(pool, np.array([1, 1], np.int32), k, k, np.array([5, 5], np.int32))
    with pytest.raises(ValueError):  # shape mismatch
        kv_write(pool.k, pool.v, pool.pos, np.array([0], np.int32), k, k, np.array([0], np.int32), ring=False)
    kv_write_layer(pool, cp.asarray(np.array([3, 0], np.int32)), k, k, cp.asarray(np.array([2, 16], np.int32)))
    kv_write_layer(pool, cp.asarray(np.array([-1, 2], np.int32)), k, k, cp.asarray(np.array([2, -5], np.int32)))
    assert int(cp.count_nonzero(pool.k)) == 0 and int(cp.count_nonzero(pool.v)) == 0
    assert bool((pool.pos == -1).all()), "an invalid device row wrote its position"


def test_attention_invalid_rows_are_nan_and_isolated():
    """A row with a bad sequence slot or no visible key gives NaN; its neighbours keep their bits."""
    case = AttnCase(8, 2, 128, context=600)
    last = [599, -1, 300]
    pool = build_pool(case, last, "float16", seed=4)
    rng = np.random.default_rng(4)
    q = cp.asarray((rng.standard_normal((3, 8, 128)) * case.query_std).astype(np.float32))
    alone = cp.asnumpy(decode_attention_layer(q[:1], pool, np.array([0], np.int32), np.array([599], np.int32),
                                              window=0, scale=1.0))
    slots = cp.asarray(np.array([0, 1, 7], np.int32))  # slot 1 is empty, slot 7 does not exist
    pos = cp.asarray(np.array([599, 10, 20], np.int32))
    got = cp.asnumpy(decode_attention_layer(q, pool, slots, pos, window=0, scale=1.0, max_position=599))
    assert np.array_equal(got[0].view(np.uint32), alone[0].view(np.uint32))
    assert np.isnan(got[1]).all() and np.isnan(got[2]).all()


def test_attention_launcher_refuses_bad_inputs():
    pool = alloc_layer_kv(2, 16, 2, 64, ring=True, dtype="float16")
    q = cp.zeros((1, 4, 64), dtype=cp.float32)
    one = np.array([0], np.int32)
    with pytest.raises(ValueError):  # window longer than the ring
        decode_attention_layer(q, pool, one, one, window=17, scale=1.0)
    with pytest.raises(ValueError):  # GQA mismatch
        decode_attention_layer(cp.zeros((1, 3, 64), dtype=cp.float32), pool, one, one, window=8, scale=1.0)
    odd = alloc_layer_kv(2, 16, 2, 96, ring=False, dtype="float32")
    with pytest.raises(ValueError):  # head dim without a kernel
        decode_attention(cp.zeros((1, 4, 96), dtype=cp.float32), odd.k, odd.v, odd.pos, one, one, window=0,
                         ring=False, scale=1.0)
    with pytest.raises(TypeError):
        decode_attention_layer(q.astype(cp.float16), pool, one, one, window=8, scale=1.0)
