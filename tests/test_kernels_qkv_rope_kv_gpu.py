"""GPU tests of kernels/qkv_rope_kv.py: the one-launch q/k/v post-processing BITWISE equal to the separate sequence

    q = rope_neox(rms_norm(q_raw, q_w));  k = rope_neox(rms_norm(k_raw, k_w));  v = rms_norm(v_raw) or v_raw
    kv_write_layer(pool, rows_slot, k, v, positions)

run on copies of the same pools: q, the K pool, the V pool and pos_table compared bit for bit (pools start with
arbitrary bits, so a stray or missing write shows). Rows 1, 3, 32; head dims 256, 512 (proportional RoPE), 64 and
128 with partial rotation; Hq/Hkv 16/8, 16/1, 8/2; float16 and float32 pools; ring (capacity 40: positions wrap,
pass 4096 and sincosf's slow path) and global pools (capacity 4608: positions past 4096, and past the capacity,
which write nothing); own V with and without the V norm, and k_eq_v (V = the raw K) with and without it. Rows with
an invalid sequence slot or a negative position write nothing. The fused outputs sit between guard regions over
poisoned bodies. Plus in place q, absent weights, zero rows, the engine's two step classes, and bad inputs.
"""
from __future__ import annotations

import numpy as np
import pytest

from tests.kernel_support import Guarded, first_bit_difference, inv_freq_f32

try:  # collection must work without CuPy; the gpu marker makes the plugin skip these tests there
    import cupy as cp

    from gemma_oracle.kernels.kv_cache import LayerKVPool, kv_write_layer
    from gemma_oracle.kernels.norms import rms_norm
    from gemma_oracle.kernels.qkv_rope_kv import qkv_rope_kv
    from gemma_oracle.kernels.rope import rope_neox
except ImportError:
    cp = None

pytestmark = pytest.mark.gpu

EPS = 1e-6
N_SEQ = 4  # sequence slots; rows use slots 0..2, slot 3 is never written
CAPACITY = {"ring": 40, "global": 4608}
BASES = {"ring": (5, 4090, 131060), "global": (0, 4090, 4600)}  # first position of slots 0, 1, 2
PROP = np.r_[np.ones(64), np.full(192, 1e30)]  # Gemma 4 global layers' rope_freqs (proportional RoPE)
CASES = {  # (Hq, Hkv, d, inv_freq)
    "h16-8-d256": (16, 8, 256, lambda: inv_freq_f32(1e4, 256)),
    "h16-1-d512-prop": (16, 1, 512, lambda: inv_freq_f32(1e6, 512, PROP)),
    "h8-2-d64": (8, 2, 64, lambda: inv_freq_f32(1e4, 64)),
    "h8-2-d128-rot64": (8, 2, 128, lambda: inv_freq_f32(1e4, 64)),  # dims >= n_rot pass through after the norm
}
V_MODES = {"v-norm": (False, True), "v-raw": (False, False), "keqv-norm": (True, True), "keqv-raw": (True, False)}
UINT = {2: np.uint16, 4: np.uint32}


def ids(table: dict) -> list:
    return [pytest.param(v, id=k) for k, v in table.items()]


def head_rows(rng, rows: int, heads: int, d: int) -> np.ndarray:
    """[rows, heads, d] of magnitudes 1e-3..1e3 per head row, a few values 1e-40 times smaller (subnormal after
    the norm), one all-zero head row, and one value past float16's range (inf when stored raw in an f16 pool)."""
    mag = 10.0 ** rng.uniform(-3, 3, size=(rows, heads, 1))
    x = (rng.standard_normal((rows, heads, d)) * mag).astype(np.float32)
    x[..., 3:6] = (x[..., 3:6].astype(np.float64) * 1e-40).astype(np.float32)
    x[-1, -1] = 0.0
    x[0, 0, 7] = 7e4
    return x


def layout(rows: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(rows_slot, positions): row r in slot r % 3 at BASES[slot] + r // 3 (no two valid rows share a cell); with
    3 rows or more, row 1 has a negative position and the last row the out-of-range slot N_SEQ; with 32, row 4 has
    slot -1 (and in global pools slot 2's rows past 4607 are beyond the capacity)."""
    seq = (np.arange(rows) % 3).astype(np.int32)
    pos = np.array([BASES[kind][s] + r // 3 for r, s in enumerate(seq)], dtype=np.int32)
    if rows >= 3:
        pos[1], seq[-1] = -3, N_SEQ
    if rows >= 32:
        seq[4] = -1
    return seq, pos


def valid_cells(seq: np.ndarray, pos: np.ndarray, kind: str) -> dict[tuple[int, int], int]:
    """(slot, cell) -> position for the rows that write, by kv_cache.cu's rule (an independent spelling)."""
    cap = CAPACITY[kind]
    return {(int(s), int(p % cap if kind == "ring" else p)): int(p) for s, p in zip(seq, pos)
            if 0 <= s < N_SEQ and p >= 0 and (kind == "ring" or p < cap)}


def pool_init(hkv: int, d: int, kind: str, dtype: str, salt: int):
    """Arbitrary pool bits (a multiplicative hash of the index; NaN and inf patterns included) and a pos_table of
    -1 and stale positions, made on the device."""
    shape = (N_SEQ, CAPACITY[kind], hkv, d)
    n = int(np.prod(shape))
    u = UINT[np.dtype(dtype).itemsize]
    bits = ((cp.arange(n, dtype=cp.uint64) + salt) * 2654435761 >> 7).astype(u)
    pos = np.random.default_rng(salt).integers(-1, 9000, size=shape[:2]).astype(np.int32)
    return bits.view(dtype).reshape(shape), bits[::-1].copy().view(dtype).reshape(shape), cp.asarray(pos)


def copy_pool(k, v, pos, ring: bool) -> "LayerKVPool":
    return LayerKVPool(k=k.copy(), v=v.copy(), pos=pos.copy(), ring=ring)


def guarded_pool(k, v, pos, ring: bool):
    """The pools inside guard regions, holding the same bits as k, v, pos; (LayerKVPool, guards)."""
    guards = [Guarded(a.shape, dtype=a.dtype, poison=0) for a in (k, v, pos)]
    for g, a in zip(guards, (k, v, pos)):
        g.view[...] = a
    return LayerKVPool(k=guards[0].view, v=guards[1].view, pos=guards[2].view, ring=ring), guards


def assert_bits_equal(got, want, what: str) -> None:
    """Bitwise equality on the device (pools are large); names the first differing element."""
    assert (got.shape, got.dtype) == (want.shape, want.dtype), f"{what}: {got.dtype} {got.shape} vs {want.dtype}"
    u = UINT[got.dtype.itemsize]
    ne = got.view(u) != want.view(u)
    n = int(ne.sum())
    if n:
        idx = np.unravel_index(int(cp.argmax(ne)), got.shape)
        raise AssertionError(f"{what}: {n} element(s) differ, first at {tuple(int(i) for i in idx)}: "
                             f"{got[idx]} ({int(got.view(u)[idx]):#x}) vs {want[idx]} ({int(want.view(u)[idx]):#x})")


def separate(q_raw, k_raw, v_raw, q_w, k_w, pos, inv, pool, seq, v_norm: bool):
    """The four launches the fused kernel replaces."""
    q = rope_neox(rms_norm(q_raw, q_w, EPS), pos, inv)
    k = rope_neox(rms_norm(k_raw, k_w, EPS), pos, inv)
    kv_write_layer(pool, seq, k, rms_norm(v_raw, None, EPS) if v_norm else v_raw, pos)
    return q


def inputs(rows: int, hq: int, hkv: int, d: int, k_eq_v: bool, seed: int):
    rng = np.random.default_rng(seed)
    q_raw = cp.asarray(head_rows(rng, rows, hq, d))
    k_raw = cp.asarray(head_rows(rng, rows, hkv, d))
    v_raw = k_raw if k_eq_v else cp.asarray(head_rows(rng, rows, hkv, d))
    q_w, k_w = (cp.asarray(rng.uniform(0.5, 1.5, d).astype(np.float32)) for _ in range(2))
    return q_raw, k_raw, v_raw, q_w, k_w


@pytest.mark.parametrize("rows", (1, 3, 32), ids=lambda r: f"r{r}")
@pytest.mark.parametrize("case", ids(CASES))
@pytest.mark.parametrize("dtype", ("float16", "float32"))
@pytest.mark.parametrize("kind", ("ring", "global"))
@pytest.mark.parametrize("v_mode", ids(V_MODES))
def test_fused_equals_separate(rows, case, dtype, kind, v_mode):
    (hq, hkv, d, make_inv), (k_eq_v, v_norm) = case, v_mode
    inv = cp.asarray(make_inv())
    salt = rows * 1009 + hq * 31 + hkv * 7 + d + len(dtype) + len(kind) + 2 * k_eq_v + v_norm
    q_raw, k_raw, v_raw, q_w, k_w = inputs(rows, hq, hkv, d, k_eq_v, salt)
    seq_h, pos_h = layout(rows, kind)
    seq, pos = cp.asarray(seq_h), cp.asarray(pos_h)
    k0, v0, p0 = pool_init(hkv, d, kind, dtype, salt)
    ring = kind == "ring"

    want_pool = copy_pool(k0, v0, p0, ring)
    want_q = separate(q_raw, k_raw, v_raw, q_w, k_w, pos, inv, want_pool, seq, v_norm)
    pool, guards = guarded_pool(k0, v0, p0, ring)
    gq = Guarded((rows, hq, d))
    got_q = qkv_rope_kv(q_raw, k_raw, v_raw, q_w, k_w, EPS, pos, inv, pool, seq, v_norm=v_norm, out=gq.view)

    assert got_q is gq.view
    for g in (gq, *guards):
        g.assert_guards_intact()
    diff = first_bit_difference(cp.asnumpy(got_q), cp.asnumpy(want_q))
    assert not diff, f"q: fused vs separate: {diff}"
    assert_bits_equal(pool.k, want_pool.k, "k pool")
    assert_bits_equal(pool.v, want_pool.v, "v pool")
    diff = first_bit_difference(cp.asnumpy(pool.pos), cp.asnumpy(want_pool.pos))
    assert not diff, f"pos_table: fused vs separate: {diff}"
    # independently of the separate sequence: pos_table changed exactly at the valid rows' cells
    cells = valid_cells(seq_h, pos_h, kind)
    got_pos, old_pos = cp.asnumpy(pool.pos), cp.asnumpy(p0)
    for (s, c), p in cells.items():
        assert got_pos[s, c] == p, f"pos_table[{s}, {c}] = {got_pos[s, c]}, want {p}"
    changed = {(int(s), int(c)) for s, c in np.argwhere(got_pos != old_pos)}
    assert changed <= set(cells), f"pos_table written outside the valid rows' cells: {sorted(changed - set(cells))}"


@pytest.mark.parametrize("dtype", ("float16", "float32"))
@pytest.mark.parametrize("kind", ("ring", "global"))
def test_invalid_rows_write_nothing(dtype, kind):
    hq, hkv, d, make_inv = CASES["h16-8-d256"]
    inv = cp.asarray(make_inv())
    q_raw, k_raw, v_raw, q_w, k_w = inputs(4, hq, hkv, d, False, 5)
    seq = cp.asarray(np.array([-1, N_SEQ, 0, 1], dtype=np.int32))
    pos = cp.asarray(np.array([3, 3, -1, CAPACITY[kind] if kind == "global" else -2**31], dtype=np.int32))
    k0, v0, p0 = pool_init(hkv, d, kind, dtype, 77)
    pool = copy_pool(k0, v0, p0, kind == "ring")
    q = qkv_rope_kv(q_raw, k_raw, v_raw, q_w, k_w, EPS, pos, inv, pool, seq, v_norm=True)
    assert_bits_equal(pool.k, k0, "k pool")
    assert_bits_equal(pool.v, v0, "v pool")
    assert_bits_equal(pool.pos, p0, "pos_table")
    want_q = rope_neox(rms_norm(q_raw, q_w, EPS), pos, inv)  # q is written for every row
    assert not first_bit_difference(cp.asnumpy(q), cp.asnumpy(want_q))


def test_in_place_q_and_absent_weights():
    hq, hkv, d, make_inv = CASES["h16-1-d512-prop"]
    inv = cp.asarray(make_inv())
    q_raw, k_raw, v_raw, _, _ = inputs(3, hq, hkv, d, True, 9)
    seq_h, pos_h = layout(3, "global")
    seq, pos = cp.asarray(seq_h), cp.asarray(pos_h)
    k0, v0, p0 = pool_init(hkv, d, "global", "float16", 9)
    want_pool = copy_pool(k0, v0, p0, False)
    want_q = separate(q_raw, k_raw, v_raw, None, None, pos, inv, want_pool, seq, True)
    pool = copy_pool(k0, v0, p0, False)
    q = qkv_rope_kv(q_raw, k_raw, v_raw, None, None, EPS, pos, inv, pool, seq, v_norm=True, out=q_raw)
    assert q is q_raw
    assert not first_bit_difference(cp.asnumpy(q), cp.asnumpy(want_q)), "in-place q"
    for name in ("k", "v", "pos"):
        assert_bits_equal(getattr(pool, name), getattr(want_pool, name), name)


def test_zero_rows():
    hq, hkv, d, make_inv = CASES["h8-2-d64"]
    k0, v0, p0 = pool_init(hkv, d, "ring", "float32", 3)
    pool = copy_pool(k0, v0, p0, True)
    empty = cp.zeros(0, dtype=cp.int32)
    q = qkv_rope_kv(cp.zeros((0, hq, d), cp.float32), cp.zeros((0, hkv, d), cp.float32),
                    cp.zeros((0, hkv, d), cp.float32), None, None, EPS, empty, cp.asarray(make_inv()), pool, empty,
                    v_norm=True)
    assert q.shape == (0, hq, d)
    assert_bits_equal(pool.pos, p0, "pos_table")


@pytest.mark.parametrize("k_eq_v", [False, True], ids=["own-v", "k_eq_v"])
def test_engine_step_classes_agree(k_eq_v):
    """gemma_oracle.engine.gpu_engine's SeparateNorms and FusedNorms.qkv_rope_kv (CupyEngine(fused_norms=False / True))."""
    from gemma_oracle.engine.gpu_engine import FusedNorms, SeparateNorms

    hq, hkv, d, make_inv = CASES["h16-8-d256"]
    inv = cp.asarray(make_inv())
    q_raw, k_raw, v_raw, q_w, k_w = inputs(32, hq, hkv, d, k_eq_v, 13)
    seq_h, pos_h = layout(32, "ring")
    seq, pos = cp.asarray(seq_h), cp.asarray(pos_h)
    k0, v0, p0 = pool_init(hkv, d, "ring", "float16", 13)
    pools = [copy_pool(k0, v0, p0, True) for _ in range(2)]
    qs = [steps.qkv_rope_kv(q_raw, k_raw, v_raw, q_w, k_w, EPS, pos, inv, p, seq, True)
          for steps, p in zip((SeparateNorms, FusedNorms), pools)]
    assert not first_bit_difference(cp.asnumpy(qs[0]), cp.asnumpy(qs[1])), "q"
    for name in ("k", "v", "pos"):
        assert_bits_equal(getattr(pools[1], name), getattr(pools[0], name), name)


def test_launcher_refuses_bad_inputs():
    hq, hkv, d, make_inv = CASES["h8-2-d64"]
    inv = cp.asarray(make_inv())
    q_raw, k_raw, v_raw, q_w, k_w = inputs(3, hq, hkv, d, False, 1)
    seq, pos = (cp.asarray(a) for a in layout(3, "ring"))
    pool = copy_pool(*pool_init(hkv, d, "ring", "float16", 1), True)

    def call(**over):
        a = dict(q_raw=q_raw, k_raw=k_raw, v_raw=v_raw, q_weight=q_w, k_weight=k_w, eps=EPS, positions=pos,
                 inv_freq=inv, pool=pool, rows_slot=seq)
        a.update(over)
        return qkv_rope_kv(**a, v_norm=True)

    with pytest.raises(ValueError, match="positions: expected a cupy.ndarray"):
        call(positions=cp.asnumpy(pos))
    with pytest.raises(ValueError, match="q_raw: expected dtype float32"):
        call(q_raw=q_raw.astype(cp.float64))
    with pytest.raises(ValueError, match="k_raw: expected"):
        call(k_raw=cp.zeros((3, hkv, 2 * d), cp.float32))
    with pytest.raises(ValueError, match="rows_slot: expected shape"):
        call(rows_slot=seq[:2])
    with pytest.raises(ValueError, match="k_pool: expected dtype float16 or float32"):
        call(pool=LayerKVPool(k=pool.k.astype(cp.float64), v=pool.v.astype(cp.float64), pos=pool.pos, ring=True))
    with pytest.raises(ValueError, match="k_pool: expected"):
        call(pool=LayerKVPool(k=cp.zeros((N_SEQ, 40, hkv + 1, d), cp.float16),
                              v=cp.zeros((N_SEQ, 40, hkv + 1, d), cp.float16), pos=pool.pos, ring=True))
    buf = cp.zeros(3 * hq * d, cp.float32)
    with pytest.raises(ValueError, match="out: overlaps k_raw"):
        call(k_raw=buf[: 3 * hkv * d].reshape(3, hkv, d), out=buf.reshape(3, hq, d))
