"""CPU tests of the fused norm kernels' host side (kernels/fused_norms.py) and of the engine logic around them.

No GPU and no cupy needed: the `plan_*` functions validate and plan a launch from shapes, dtypes, flags and
addresses only, so numpy arrays stand in for device arrays; the engine's choice of which norm makes Q8_1 blocks,
and the names it reads, are pure functions of the config and the routes.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

from gemma_oracle.engine import routing
from gemma_oracle.engine.gpu_engine import NORM_STEPS, CupyEngine, attention_matrices, next_input_norm, output_matrix
from gemma_oracle.engine.inventory import expected_tensors
from gemma_oracle.harness.fixtures.presets import PRESETS
from gemma_oracle.kernels import fused_norms as fn
from gemma_oracle.kernels._compile import CUDA_DIR, source_path
from gemma_oracle.kernels.reference.q8_1 import BLOCK_BYTES


def _define(file_name: str, name: str) -> int:
    m = re.search(rf"#define {name} (\d+)", (CUDA_DIR / file_name).read_text())
    assert m, f"{file_name} defines no {name}"
    return int(m.group(1))


def f32(*shape) -> np.ndarray:
    return np.zeros(shape, dtype=np.float32)


# --- launcher constants and entries agree with the .cu sources ------------------------------------------------------

def test_launch_constants_match_cuda_defines():
    threads = _define("norm_row.cuh", "NORM_THREADS")
    assert fn.THREADS == threads
    assert fn.REG_MAX == threads * _define("norm_row.cuh", "NORM_PER_THREAD")


def test_entries_are_the_kernels_extern_c_functions():
    src = source_path("fused_norms").read_text()
    found = re.findall(r'extern "C" __global__ void __launch_bounds__\(NORM_THREADS\)\s*(\w+)\(', src)
    assert sorted(found) == sorted(fn.ENTRIES)


# --- plans -----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rows,d", [(1, 256), (3, 640), (129, 3840), (2, 5376), (0, 256)])
def test_plan_rms_norm_q8_1(rows, d):
    plan = fn.plan_rms_norm_q8_1(f32(rows, d), f32(d))
    assert (plan.entry, plan.grid, plan.block, plan.rows, plan.d) == ("rms_norm_q8_1_f32", (rows, 1, 1),
                                                                      (256, 1, 1), rows, d)
    assert plan.q_shape == (rows, d // 32 * BLOCK_BYTES)


def test_plan_add_rms_norm_rms_norm_q8_1_only_when_asked():
    h, x, w = f32(3, 640), f32(3, 640), f32(640)
    assert fn.plan_add_rms_norm_rms_norm(h, x, w, w, quantize=True).q_shape == (3, 20 * BLOCK_BYTES)
    assert fn.plan_add_rms_norm_rms_norm(h, x, w, None, quantize=False).q_shape is None
    # without Q8_1 any row length works; with it, a multiple of 32
    assert fn.plan_add_rms_norm_rms_norm(f32(2, 100), f32(2, 100), None, None, quantize=False).d == 100
    with pytest.raises(ValueError, match="multiple of 32"):
        fn.plan_add_rms_norm_rms_norm(f32(2, 100), f32(2, 100), None, None, quantize=True)
    with pytest.raises(ValueError, match="out_q"):
        fn.plan_add_rms_norm_rms_norm(h, x, w, w, quantize=False, out_q=np.zeros((3, 720), dtype=np.uint8))


def test_plan_rms_norm_rope_neox():
    plan = fn.plan_rms_norm_rope_neox(f32(3, 16, 512), f32(512), np.zeros(3, dtype=np.int32), f32(256))
    assert (plan.entry, plan.grid, plan.block, plan.shared_mem) == ("rms_norm_rope_neox_f32", (48, 1, 1),
                                                                    (256, 1, 1), 512 * 4)


def test_in_place_only_where_allowed():
    h, x, w = f32(4, 256), f32(4, 256), f32(256)
    fn.plan_add_rms_norm_rms_norm(h, x, w, w, quantize=True, out_h=h)  # the residual in place
    fn.plan_rms_norm_q8_1(x, w, out=x)
    q = f32(2, 4, 64)
    fn.plan_rms_norm_rope_neox(q, None, np.zeros(2, dtype=np.int32), f32(32), out=q)
    with pytest.raises(ValueError, match="out: overlaps h"):
        fn.plan_add_rms_norm_rms_norm(h, x, w, w, quantize=False, out=h)
    with pytest.raises(ValueError, match="out_h: overlaps x"):
        fn.plan_add_rms_norm_rms_norm(h, x, w, w, quantize=False, out_h=x)
    buf = f32(5, 256)
    with pytest.raises(ValueError, match=r"out_h: overlaps h \(only exactly h itself"):
        fn.plan_add_rms_norm_rms_norm(buf[:4], x, w, w, quantize=False, out_h=buf[1:])
    qbuf = np.zeros((4, 8 * BLOCK_BYTES + 36), dtype=np.uint8)
    y = f32(4, 256)
    with pytest.raises(ValueError, match="out_q"):  # not C-contiguous (a column slice)
        fn.plan_rms_norm_q8_1(x, w, out=y, out_q=qbuf[:, :8 * BLOCK_BYTES])
    raw = np.zeros(4 * 256 * 4 + 4 * 8 * BLOCK_BYTES, dtype=np.uint8)
    y_view = raw[: 4 * 256 * 4].view(np.float32).reshape(4, 256)
    q_view = raw[4 * 256 * 4 - BLOCK_BYTES:][: 4 * 8 * BLOCK_BYTES].reshape(4, 8 * BLOCK_BYTES)
    with pytest.raises(ValueError, match=r"out: overlaps out_q$"):
        fn.plan_rms_norm_q8_1(x, w, out=y_view, out_q=q_view)


@pytest.mark.parametrize("call,exc,match", [
    (lambda: fn.plan_rms_norm_q8_1(f32(4, 256).astype(np.float64), None), ValueError, "x: expected dtype float32"),
    (lambda: fn.plan_rms_norm_q8_1([[0.0] * 256], None), ValueError, "x: expected an array"),
    (lambda: fn.plan_rms_norm_q8_1(f32(4, 250), None), ValueError, "multiple of 32"),
    (lambda: fn.plan_rms_norm_q8_1(f32(4, 256), f32(255)), ValueError, "weight"),
    (lambda: fn.plan_rms_norm_q8_1(f32(4, 256, 1), None), ValueError, "x: expected 2-D"),
    (lambda: fn.plan_rms_norm_q8_1(f32(4, 512)[:, ::2], None), ValueError, "C-contiguous"),
    (lambda: fn.plan_rms_norm_q8_1(f32(4, 256), None, out_q=np.zeros((4, 288), dtype=np.int8)), ValueError,
     "out_q: expected dtype uint8"),
    (lambda: fn.plan_add_rms_norm_rms_norm(f32(4, 256), f32(3, 256), None, None, quantize=False), ValueError, "x"),
    (lambda: fn.plan_add_rms_norm_rms_norm(f32(4, 256), f32(4, 256), None, f32(128), quantize=False), ValueError,
     "w_next"),
    (lambda: fn.plan_rms_norm_rope_neox(f32(2, 4, 64), None, np.zeros(3, dtype=np.int32), f32(32)), ValueError,
     "positions"),
    (lambda: fn.plan_rms_norm_rope_neox(f32(2, 4, 64), None, np.zeros(2, dtype=np.int64), f32(32)), ValueError,
     "positions: expected dtype int32"),
    (lambda: fn.plan_rms_norm_rope_neox(f32(2, 4, 64), None, np.zeros(2, dtype=np.int32), f32(33)), ValueError,
     "inv_freq"),
    (lambda: fn.plan_rms_norm_rope_neox(f32(2, 4, 64), None, np.zeros(2, dtype=np.int32), f32(0)), ValueError,
     "inv_freq"),
    (lambda: fn.plan_rms_norm_rope_neox(f32(1, 1, 4352), None, np.zeros(1, dtype=np.int32), f32(32)), ValueError,
     "head dim"),
    (lambda: fn.plan_rms_norm_rope_neox(f32(2, 256), None, np.zeros(2, dtype=np.int32), f32(32)), ValueError,
     "x: expected 3-D"),
], ids=["dtype", "not-array", "d-not-32", "weight-len", "rank", "strided", "out_q-dtype", "x-shape", "w_next-len",
        "positions-len", "positions-dtype", "n_rot>d", "n_rot-0", "d>reg-max", "rope-rank"])
def test_plans_refuse_bad_inputs(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# --- the engine: which norm feeds which matrices, and when it makes Q8_1 blocks ---------------------------------------

@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_norm_consumers_are_the_models_tensors(preset):
    """The names the engine's fused norms read (the norm weight, the matrices whose routes decide the Q8_1 blocks)
    are tensors of the model: a misspelt one would never route to decode-MMQ, and the Q8_1 blocks would silently be
    made by a separate launch again."""
    cfg = PRESETS[preset].config(vocab_size=512)
    tensors = {t.name: t for t in expected_tensors(cfg)}
    for i in range(cfg.n_layers):
        names = attention_matrices(cfg, i)
        assert names[0] == f"blk.{i}.attn_q.weight"
        assert len(names) == 1 + cfg.owns_kv(i) + (cfg.owns_kv(i) and not cfg.layer_k_eq_v[i])
        assert all(tensors[n].kind == "matrix" and tensors[n].required for n in names), names
        norm, consumers = next_input_norm(cfg, i)
        assert tensors[norm].kind == "vector" and all(tensors[n].kind == "matrix" for n in consumers)
        if i + 1 < cfg.n_layers:
            assert (norm, consumers) == (f"blk.{i + 1}.attn_norm.weight", attention_matrices(cfg, i + 1))
        else:
            assert (norm, consumers) == ("output_norm.weight", [output_matrix(cfg)])
    assert output_matrix(cfg) == ("token_embd.weight" if cfg.tied_output else "output.weight")


class _Routes:
    """A stand-in for CupyEngine with a fixed route per matrix name (CupyEngine._quantizes reads only self.route)."""

    def __init__(self, routes: dict[str, str]):
        self.routes = routes

    def route(self, name: str, rows: int) -> str:
        return self.routes[name]


@pytest.mark.parametrize("routes,want", [
    ({"q": routing.WS, "k": routing.WS, "v": routing.WS}, False),
    ({"q": routing.WS, "k": routing.DECODE_MMQ, "v": routing.WS}, True),
    ({"q": routing.GEMM_N, "k": routing.GEMM_N}, False),
    ({"q": routing.DECODE_MMQ}, True),
], ids=["all-ws", "one-mmq", "gemm-n", "only-mmq"])
def test_a_norm_makes_q8_1_blocks_only_for_decode_mmq(routes, want):
    assert CupyEngine._quantizes(_Routes(routes), list(routes), 1) is want


def test_fused_and_separate_norm_steps_have_one_interface():
    fused, separate = NORM_STEPS[True], NORM_STEPS[False]
    for step in ("norm", "add_norm", "norm_rope"):
        assert (getattr(fused, step).__code__.co_varnames[:getattr(fused, step).__code__.co_argcount]
                == getattr(separate, step).__code__.co_varnames[:getattr(separate, step).__code__.co_argcount])


class _Weights:
    """A stand-in for CupyEngine with matrices of given shapes (its launch grouping reads self.w and op_spans)."""
    _launch_groups, _mmq_key, _packed_key = CupyEngine._launch_groups, CupyEngine._mmq_key, CupyEngine._packed_key

    def __init__(self, shapes: dict[str, tuple[str, int, int]], profiling: bool = False,
                 route_mode: str = "packed-invariant"):
        from types import SimpleNamespace

        self.w = {name: SimpleNamespace(type_name=t, rows=rows, n_cols=cols) for name, (t, rows, cols) in shapes.items()}
        self.op_spans = (lambda name: None) if profiling else None
        self.route_mode = route_mode
        self._decoding = True


# the 12B's q/k/v (Q4_K 4096 / 2048 / 2048 rows x 3840) and gate/up (15360 x 3840), a Q6_K attn_v as in Q4_K_M mixes
_QKV = {"q": ("Q4_K", 4096, 3840), "k": ("Q4_K", 2048, 3840), "v": ("Q4_K", 2048, 3840)}


@pytest.mark.parametrize("shapes, n, want", [
    (_QKV, 1, [["q", "k", "v"]]),                                   # dp4a_bn1, 16 K slices each: one launch
    (_QKV, 3, [["q"], ["k", "v"]]),                                 # bm64_bn8 on 4096 rows, dp4a_bn2 on 2048
    ({**_QKV, "v": ("Q6_K", 2048, 3840)}, 1, [["q", "k"], ["v"]]),  # another type: its own launch
    ({"gate": ("Q4_K", 15360, 3840), "up": ("Q4_K", 15360, 3840)}, 8, [["gate", "up"]]),
    ({f"m{i}": ("Q4_0", 2048, 3840) for i in range(4)}, 1, [["m0", "m1", "m2"], ["m3"]]),  # GROUP_MAX a launch
])
def test_mmq_groups_share_a_launch_only_when_they_can(shapes, n, want):
    w = _Weights(shapes)
    assert w._launch_groups(list(shapes), lambda name: w._mmq_key(name, n)) == want


@pytest.mark.parametrize("shapes, want", [
    (_QKV, [["q", "k", "v"]]),                                    # 8 K slices each (4096 and 2048 x 3840)
    ({**_QKV, "v": ("Q6_K", 2048, 3840)}, [["q", "k"], ["v"]]),   # another type: its own launch
    ({"gate": ("Q4_K", 15360, 3840), "up": ("Q4_K", 15360, 3840)}, [["gate", "up"]]),  # 4 slices each
    ({"gate": ("Q4_K", 15360, 3840), "o": ("Q4_K", 4096, 3840)}, [["gate"], ["o"]]),  # 4 slices against 8
    ({f"m{i}": ("Q4_0", 2048, 3840) for i in range(4)}, [["m0", "m1", "m2"], ["m3"]]),  # GROUP_MAX a launch
])
def test_packed_groups_share_a_launch_only_when_they_can(shapes, want):
    """Packed MMA's tile follows N and the shape's class (rows >= TALL cols or not), and in a batch-invariant mode the
    K split the shape alone, so there its groups are the same at every N."""
    w = _Weights(shapes)
    for n in (1, 8, 32):
        assert w._launch_groups(list(shapes), lambda name: w._packed_key(name, n)) == want


def test_packed_groups_follow_the_capped_split_where_numbers_may_vary():
    """In auto mode the K split is capped further from SLICE_CAP_MIN_N tokens (kernels.packed_mma.packed_split), so
    an 8-slice and a 4-slice matrix of one type and K share a launch there and only there; a pinned decode step
    (auto@K) takes the split of K rows whatever its own count, and prefill in it its own rows'."""
    shapes = {"o": ("Q4_K", 4096, 3840), "p": ("Q4_K", 12288, 3840)}  # 8 (16 capped) and 4 K slices; neither tall
    fast, invariant = _Weights(shapes, route_mode="auto"), _Weights(shapes, route_mode="batch-invariant")
    assert fast._launch_groups(list(shapes), lambda name: fast._packed_key(name, 1)) == [["o"], ["p"]]
    assert fast._launch_groups(list(shapes), lambda name: fast._packed_key(name, 32)) == [["o", "p"]]
    assert fast._packed_key("o", 32)[2] == (4, 4) and fast._packed_key("o", 15)[2] == (8, 8)
    # batch-invariant: the shape's 8 chunks at every N, walked by 4 blocks from SLICE_CAP_MIN_N tokens
    assert invariant._packed_key("o", 32)[2] == (8, 4) and invariant._packed_key("o", 15)[2] == (8, 8)
    for n in (1, 15, 32):
        assert invariant._launch_groups(list(shapes), lambda name: invariant._packed_key(name, n)) == [["o"], ["p"]]
    pinned = _Weights(shapes, route_mode="auto@32")
    assert pinned._packed_key("o", 1)[2] == (4, 4)  # a single-user step on the 32-row split
    pinned._decoding = False
    assert pinned._packed_key("o", 1)[2] == (8, 8)  # prefill keeps its own


def test_profiled_pass_launches_each_matrix_alone():
    """op_spans times each matmul, so a profiled pass does not group (the bits are the same either way)."""
    w = _Weights(_QKV, profiling=True)
    assert w._launch_groups(list(_QKV), lambda name: w._mmq_key(name, 1)) == [["q"], ["k"], ["v"]]
    assert w._launch_groups(list(_QKV), lambda name: w._packed_key(name, 1)) == [["q"], ["k"], ["v"]]


@pytest.mark.parametrize("routes,want", [
    ({"q": routing.PACKED_MMA, "k": routing.PACKED_MMA, "v": routing.WS}, True),
    ({"q": routing.PACKED_MMA, "k": routing.DECODE_MMQ}, False),  # the norm makes Q8_1; _matvecs packs for q
    ({"q": routing.WS, "k": routing.GEMM_N}, False),
    ({"q": routing.DECODE_MMQ}, False),
], ids=["packed-and-ws", "packed-and-mmq", "float", "only-mmq"])
def test_a_producer_writes_packed_records_only_for_packed_mma_without_decode_mmq(routes, want):
    engine = _Routes(routes)
    engine.packed_producers = frozenset({"norm", "gelu"})
    assert CupyEngine._packs(engine, "norm", list(routes), 1) is want
    assert CupyEngine._packs(engine, "gelu", list(routes), 1) is want
    engine.packed_producers = frozenset({"norm"})  # one producer alone: the other leaves it to _matvecs
    assert CupyEngine._packs(engine, "norm", list(routes), 1) is want
    assert CupyEngine._packs(engine, "gelu", list(routes), 1) is False
    engine.packed_producers = frozenset()  # ENV_PACKED_PRODUCERS=0: packed_x launches in _matvecs
    assert CupyEngine._packs(engine, "norm", list(routes), 1) is False


@pytest.mark.parametrize("value, want", [(None, {"norm"}), ("0", set()), ("1", {"norm", "gelu"}), ("norm", {"norm"}),
                                         (" gelu ", {"gelu"}), ("norm+attention", {"norm", "attention"}),
                                         ("attention + gelu", {"gelu", "attention"})])
def test_packed_producers_switch(monkeypatch, value, want):
    from gemma_oracle.engine.gpu_engine import ENV_PACKED_PRODUCERS, packed_producers_from_env

    if value is None:
        monkeypatch.delenv(ENV_PACKED_PRODUCERS, raising=False)
    else:
        monkeypatch.setenv(ENV_PACKED_PRODUCERS, value)
    assert packed_producers_from_env() == want


def test_packed_producers_switch_names_a_bad_value(monkeypatch):
    from gemma_oracle.engine.gpu_engine import ENV_PACKED_PRODUCERS, packed_producers_from_env

    for bad in ("yes", "norm+", "norm,gelu"):
        monkeypatch.setenv(ENV_PACKED_PRODUCERS, bad)
        with pytest.raises(ValueError, match=re.escape(f"PACKED_PRODUCERS={bad!r}: expected 0") + ".* norm or gelu"):
            packed_producers_from_env()


def test_plan_add_rms_norm_rms_norm_packed():
    h, x, w = f32(3, 640), f32(3, 640), f32(640)
    assert fn.plan_add_rms_norm_rms_norm(h, x, w, w, quantize=False, packed=True).entry == \
        "add_rms_norm_rms_norm_packed_f32"
    assert fn.plan_add_rms_norm_rms_norm(h, x, w, w, quantize=False).entry == "add_rms_norm_rms_norm_f32"
    with pytest.raises(ValueError, match="one of quantize"):
        fn.plan_add_rms_norm_rms_norm(h, x, w, w, quantize=True, packed=True)
    with pytest.raises(ValueError, match="multiple of 64"):
        fn.plan_add_rms_norm_rms_norm(f32(2, 96), f32(2, 96), None, None, quantize=False, packed=True)
