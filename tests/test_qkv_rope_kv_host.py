"""CPU tests of the fused q/k/v post-processing's host side (kernels/qkv_rope_kv.py) and its engine interface.

No GPU and no cupy needed: `plan_qkv_rope_kv` validates and plans from shapes, dtypes and addresses only, so numpy
arrays stand in for device arrays.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

from gemma_oracle.engine.gpu_engine import NORM_STEPS
from gemma_oracle.kernels import qkv_rope_kv as qk
from gemma_oracle.kernels._compile import CUDA_DIR, source_path


def f32(*shape) -> np.ndarray:
    return np.zeros(shape, dtype=np.float32)


def i32(*shape) -> np.ndarray:
    return np.zeros(shape, dtype=np.int32)


def args(rows=3, hq=16, hkv=8, d=256, half=128, n_seq=4, cap=40, dtype=np.float16, **over) -> dict:
    """A valid argument set for plan_qkv_rope_kv, with `over` replacing any of it."""
    a = dict(q_raw=f32(rows, hq, d), k_raw=f32(rows, hkv, d), v_raw=f32(rows, hkv, d), q_weight=f32(d),
             k_weight=f32(d), positions=i32(rows), rows_slot=i32(rows), inv_freq=f32(half),
             k_pool=np.zeros((n_seq, cap, hkv, d), dtype=dtype), v_pool=np.zeros((n_seq, cap, hkv, d), dtype=dtype),
             pos_table=i32(n_seq, cap))
    a.update(over)
    return a


def plan(a: dict, out=None):
    return qk.plan_qkv_rope_kv(**a, out=out)


def test_constants_and_entries_match_the_cuda_source():
    src = source_path("qkv_rope_kv").read_text()
    assert qk.THREADS == int(re.search(r"#define NORM_THREADS (\d+)", (CUDA_DIR / "norm_row.cuh").read_text())[1])
    found = re.findall(r'extern "C" __global__ void __launch_bounds__\(NORM_THREADS\)\s*(\w+)\(', src)
    assert sorted(found) == sorted(qk.ENTRIES.values())
    assert '#include "kv_cell.cuh"' in source_path("kv_cache").read_text()  # one store + cell rule for both


@pytest.mark.parametrize("rows,hq,hkv,d,half,dtype,entry", [
    (1, 16, 8, 256, 128, np.float16, "qkv_rope_kv_f16"),
    (3, 16, 1, 512, 256, np.float32, "qkv_rope_kv_f32"),
    (32, 8, 2, 64, 16, np.float16, "qkv_rope_kv_f16"),   # partial rotation
    (0, 16, 8, 256, 128, np.float32, "qkv_rope_kv_f32"),  # no rows: a plan, no launch
])
def test_plan_geometry(rows, hq, hkv, d, half, dtype, entry):
    p = plan(args(rows, hq, hkv, d, half, dtype=dtype))
    assert (p.entry, p.grid, p.block, p.shared_mem) == (entry, (rows * (hq + 2 * hkv), 1, 1), (256, 1, 1), 4 * d)
    assert (p.rows, p.hq, p.hkv, p.d, p.half, p.n_seq_slots, p.capacity) == (rows, hq, hkv, d, half, 4, 40)


def test_allowed_aliases():
    a = args()
    plan({**a, "v_raw": a["k_raw"]})  # k_eq_v: V is the raw K
    plan(a, out=a["q_raw"])  # q in place
    plan({**a, "q_weight": None, "k_weight": None})


def test_outputs_must_not_overlap():
    a = args()
    flat = np.zeros(3 * 16 * 256, np.float32)
    with pytest.raises(ValueError, match="out: overlaps k_raw"):
        plan({**a, "k_raw": flat[: 3 * 8 * 256].reshape(3, 8, 256)}, out=flat.reshape(3, 16, 256))
    buf = np.zeros(2 * 4 * 40 * 8 * 256, dtype=np.float16)
    with pytest.raises(ValueError, match="k_pool: overlaps v_pool"):
        plan({**a, "k_pool": buf[: buf.size // 2].reshape(4, 40, 8, 256),
              "v_pool": buf[256: 256 + buf.size // 2].reshape(4, 40, 8, 256)})
    raw = np.zeros(4 * 40 * 8 * 256 * 2, dtype=np.uint8)
    with pytest.raises(ValueError, match="k_pool: overlaps q_raw"):
        plan({**a, "k_pool": raw.view(np.float16).reshape(4, 40, 8, 256),
              "q_raw": raw[: 3 * 16 * 256 * 4].view(np.float32).reshape(3, 16, 256)})
    table = i32(4 * 40 + 16)
    with pytest.raises(ValueError, match="pos_table: overlaps positions"):
        plan({**a, "pos_table": table[:160].reshape(4, 40), "positions": table[157:160]})
    q = f32(4, 16, 256)
    with pytest.raises(ValueError, match=r"out: overlaps q_raw \(only exactly q_raw itself"):
        plan({**a, "q_raw": q[:3]}, out=q[1:])


@pytest.mark.parametrize("over,match", [
    ({"q_raw": np.zeros((3, 16, 256), np.float64)}, "q_raw: expected dtype float32"),
    ({"q_raw": [[0.0]]}, "q_raw: expected an array"),
    ({"q_raw": f32(3, 0, 256)}, "q_raw: needs at least one head"),
    ({"q_raw": f32(3, 16, 4352), "k_raw": f32(3, 8, 4352)}, "head dim"),
    ({"q_raw": f32(3, 16, 512)[:, :, ::2]}, "q_raw: must be C-contiguous"),
    ({"k_raw": f32(3, 8, 128)}, "k_raw: expected"),
    ({"k_raw": f32(2, 8, 256)}, "k_raw: expected"),
    ({"k_raw": f32(3, 0, 256)}, "k_raw: expected"),
    ({"v_raw": f32(3, 4, 256)}, "v_raw: expected shape"),
    ({"q_weight": f32(255)}, "q_weight"),
    ({"k_weight": f32(256).astype(np.float16)}, "k_weight: expected dtype float32"),
    ({"positions": i32(2)}, "positions: expected shape"),
    ({"positions": np.zeros(3, np.int64)}, "positions: expected dtype int32"),
    ({"rows_slot": np.zeros(3, np.uint32)}, "rows_slot: expected dtype int32"),
    ({"inv_freq": f32(129)}, "inv_freq"),
    ({"inv_freq": f32(0)}, "inv_freq"),
    ({"k_pool": np.zeros((4, 40, 8, 256), np.float64)}, "k_pool: expected dtype float16 or float32"),
    ({"k_pool": [0.0]}, "k_pool: expected an array"),
    ({"k_pool": np.zeros((4, 40, 4, 256), np.float16)}, "k_pool: expected"),
    ({"k_pool": np.zeros((4, 40, 8, 128), np.float16)}, "k_pool: expected"),
    ({"k_pool": np.zeros((0, 40, 8, 256), np.float16), "v_pool": np.zeros((0, 40, 8, 256), np.float16),
      "pos_table": i32(0, 40)}, "k_pool: expected"),
    ({"v_pool": np.zeros((4, 40, 8, 256), np.float32)}, "v_pool: expected dtype float16"),
    ({"v_pool": np.zeros((4, 41, 8, 256), np.float16)}, "v_pool: expected shape"),
    ({"pos_table": i32(4, 41)}, "pos_table: expected shape"),
    ({"pos_table": np.zeros((4, 40), np.int64)}, "pos_table: expected dtype int32"),
], ids=["q-dtype", "q-not-array", "q-no-heads", "d>reg-max", "q-strided", "k-d", "k-rows", "k-no-heads", "v-shape",
        "q_weight-len", "k_weight-dtype", "positions-len", "positions-dtype", "rows_slot-dtype", "n_rot>d", "n_rot-0",
        "pool-dtype", "pool-not-array", "pool-heads", "pool-d", "pool-empty", "v_pool-dtype", "v_pool-shape",
        "pos_table-shape", "pos_table-dtype"])
def test_plan_refuses_bad_inputs(over, match):
    with pytest.raises(ValueError, match=match):
        plan(args(**over))


def test_plan_refuses_a_bad_out():
    with pytest.raises(ValueError, match="out: expected shape"):
        plan(args(), out=f32(3, 16, 128))
    with pytest.raises(ValueError, match="out: expected dtype float32"):
        plan(args(), out=np.zeros((3, 16, 256), np.float16))


def test_fused_and_separate_steps_have_one_interface():
    fused, separate = NORM_STEPS[True].qkv_rope_kv, NORM_STEPS[False].qkv_rope_kv
    names = [f.__code__.co_varnames[:f.__code__.co_argcount] for f in (fused, separate)]
    assert names[0] == names[1]
