"""CPU tests of the kernel launchers' host side and of the numpy references the GPU tests rely on.

No GPU and no cupy needed: the `plan_*` functions validate and plan a launch from shapes, dtypes, flags and
addresses only, so numpy arrays stand in for device arrays here.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

from gemma_oracle.kernels import dequant as dq
from gemma_oracle.kernels import matvec as mv
from gemma_oracle.kernels import quantize_q8_1 as q81
from gemma_oracle.kernels._compile import CUDA_DIR, source_path
from gemma_oracle.kernels.reference.dequant import BLOCK_SIZES, dequantize, row_bytes
from gemma_oracle.kernels.reference.q8_1 import BLOCK_BYTES, dequantize_q8_1, quantize_q8_1
from tests.kernel_support import (
    MATVEC_NS,
    TYPE_NAMES,
    activations,
    matvec_cases,
    matvec_reference,
    n_cols_for,
    quantized_weights,
)


def _define(file_name: str, name: str) -> int:
    m = re.search(rf"#define {name} (\d+)", (CUDA_DIR / file_name).read_text())
    assert m, f"{file_name} defines no {name}"
    return int(m.group(1))


def _aligned_empty(shape, dtype, offset: int = 0) -> np.ndarray:
    """A C-contiguous host array starting `offset` bytes past a 64-byte boundary."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = np.zeros(nbytes + 128, dtype=np.uint8)
    start = (-raw.ctypes.data) % 64 + offset
    return raw[start: start + nbytes].view(dtype).reshape(shape)


# --- launcher constants agree with the .cu sources ---------------------------------------------------------------

def test_launch_constants_match_cuda_defines():
    assert mv.ROWS_PER_BLOCK == _define("matvec.cu", "MV_WARPS")
    assert dq.THREADS == _define("dequant.cu", "DQ_THREADS")
    assert q81.WARPS == _define("quantize_q8_1.cu", "Q8_1_WARPS")
    assert dq.UNIT == _define("quant_blocks.cuh", "QB_UNIT")


def test_every_type_has_its_entry_points():
    mv_types = re.findall(r"^MV_ENTRIES\((\w+), qt_(\w+)\)", source_path("matvec").read_text(), re.M)
    dq_types = re.findall(r"^DQ_ENTRIES\((\w+), qt_(\w+)\)", source_path("dequant").read_text(), re.M)
    want = sorted(t.lower() for t in TYPE_NAMES)
    assert sorted(a for a, b in mv_types) == want and all(a == b for a, b in mv_types)
    assert sorted(a for a, b in dq_types) == want and all(a == b for a, b in dq_types)
    assert mv.WS_CAPACITIES == tuple(int(c) for c in re.findall(r"MV_WS_ENTRY\(name, Q, (\d+)\)",
                                                                 source_path("matvec").read_text()))


# --- matvec planning -----------------------------------------------------------------------------------------------

def _weights(type_name="Q4_K", rows=77, k=2):
    n_cols = n_cols_for(type_name, k)
    w = _aligned_empty((rows, row_bytes(type_name, n_cols)), np.uint8)
    return w, n_cols


@pytest.mark.parametrize("n", MATVEC_NS)
def test_plan_matvec_auto_route(n):
    w, n_cols = _weights()
    plan = mv.plan_matvec(w, "Q4_K", n_cols, _aligned_empty((n, n_cols), np.float32))
    blocks = (77 + mv.ROWS_PER_BLOCK - 1) // mv.ROWS_PER_BLOCK
    if n <= mv.WS_MAX_N:
        cap = min(c for c in mv.WS_CAPACITIES if c >= n)
        assert (plan.route, plan.entry, plan.grid) == ("ws", f"ws_q4_k_n{cap}", (blocks, 1, 1))
    else:
        assert (plan.route, plan.entry, plan.grid) == ("gemm_n", "gemm_n_q4_k", (blocks, n, 1))
    assert plan.block == (mv.THREADS, 1, 1) and (plan.rows, plan.units, plan.n) == (77, n_cols // 32, n)


def test_plan_matvec_forced_routes_and_row_tails():
    for rows in (1, 4, 5, 130):
        w, n_cols = _weights("Q8_0", rows, 1)
        x = _aligned_empty((3, n_cols), np.float32)
        assert mv.plan_matvec(w, "Q8_0", n_cols, x, route="gemm_n").grid == (-(-rows // mv.ROWS_PER_BLOCK), 3, 1)
        assert mv.plan_matvec(w, "Q8_0", n_cols, x, route="ws").entry == "ws_q8_0_n4"


def test_case_table_covers_every_type_shape_and_n():
    cases = matvec_cases()
    assert {c.type_name for c in cases} == set(TYPE_NAMES)
    assert {c.n for c in cases} >= set(range(1, 10)) | {15, 16, 17, 32}
    assert str(cases[0]).count("-") == 3 and str(cases[0]).startswith(TYPE_NAMES[0].lower() + "-r")
    for c in cases:  # K-quants take whole 256-value rows; the 32-value types get a ragged 32-value tail
        assert c.n_cols % (256 if BLOCK_SIZES[c.type_name][0] == 256 else 32) == 0
        assert BLOCK_SIZES[c.type_name][0] == 256 or c.n_cols % 256 == 32


BAD_MATVEC_ARGS = {
    "unknown-type": (dict(type_name="Q4_1"), "type_name"),
    "cols-not-unit": (dict(n_cols=272), "n_cols"),
    "kquant-cols-not-256": (dict(n_cols=288), "Q4_K"),
    "w-row-bytes": (dict(w=lambda w: _aligned_empty((w.shape[0], w.shape[1] - 16), np.uint8)),
                    "w_raw: a Q4_K row of 512 values is 288 bytes"),
    "w-dtype": (dict(w=lambda w: w.view(np.int8)), "w_raw: expected dtype uint8"),
    "w-1d": (dict(w=lambda w: w.reshape(-1)), "w_raw: expected 2-D"),
    "w-misaligned": (dict(w=lambda w: _aligned_empty(w.shape, np.uint8, offset=2)), "w_raw: must start 16-byte"),
    "x-dtype": (dict(x=lambda x: x.astype(np.float64)), "x: expected dtype float32"),
    "x-cols": (dict(x=lambda x: x[:, :256].copy()), "x: expected 512 columns"),
    "x-noncontig": (dict(x=lambda x: np.asfortranarray(np.repeat(x, 2, axis=0))), "x: must be C-contiguous"),
    "x-misaligned": (dict(x=lambda x: _aligned_empty(x.shape, np.float32, offset=4)), "x: must start 16-byte"),
    "x-empty": (dict(x=lambda x: x[:0]), "x: need at least one token"),
    "route-name": (dict(route="mmq"), "route: expected one of"),
    "ws-too-many": (dict(route="ws", x=lambda x: np.zeros((17, x.shape[1]), np.float32)), "route='ws'"),
    "out-shape": (dict(out=np.zeros((3, 76), np.float32)), "out: expected shape"),
    "out-dtype": (dict(out=np.zeros((3, 77), np.float64)), "out: expected dtype float32"),
    "out-noncontig": (dict(out=np.zeros((77, 3), np.float32).T), "out: must be C-contiguous"),
}


@pytest.mark.parametrize("bad", list(BAD_MATVEC_ARGS), ids=str)
def test_plan_matvec_rejects(bad):
    change, message = BAD_MATVEC_ARGS[bad]
    w, n_cols = _weights()
    x = _aligned_empty((3, n_cols), np.float32)
    args = dict(w=w, type_name="Q4_K", n_cols=n_cols, x=x, route="auto", out=None)
    for key, value in change.items():
        args[key] = value(args[key]) if callable(value) else value
    with pytest.raises(ValueError, match=re.escape(message)):
        mv.plan_matvec(args["w"], args["type_name"], args["n_cols"], args["x"], route=args["route"], out=args["out"])


def test_ws_capacity():
    assert [mv.ws_capacity(n) for n in range(1, 17)] == [1, 2, 4, 4, 8, 8, 8, 8] + [16] * 8
    with pytest.raises(ValueError, match="gemm_n"):
        mv.ws_capacity(17)


# --- dequant and Q8_1 planning -------------------------------------------------------------------------------------

@pytest.mark.parametrize("type_name", TYPE_NAMES, ids=str.lower)
def test_plan_dequantize(type_name):
    n_cols = n_cols_for(type_name, 2)
    w = _aligned_empty((7, row_bytes(type_name, n_cols)), np.uint8)
    plan = dq.plan_dequantize(w, type_name, n_cols)
    units = 7 * n_cols // 32
    assert plan.entry == f"dequant_{type_name.lower()}" and plan.out_shape == (7, n_cols)
    assert plan.grid == (-(-units // dq.THREADS), 1, 1) and plan.block == (dq.THREADS, 1, 1)
    for dtype, suffix in ((np.int32, "i32"), (np.int64, "i64")):
        rows_plan = dq.plan_dequantize_rows(w, type_name, n_cols, np.zeros(5, dtype))
        assert rows_plan.entry == f"dequant_rows_{type_name.lower()}_{suffix}" and rows_plan.out_shape == (5, n_cols)


def test_plan_dequantize_rejects():
    n_cols = 512
    w = _aligned_empty((7, row_bytes("Q6_K", n_cols)), np.uint8)
    with pytest.raises(ValueError, match="row_ids: expected int32 or int64"):
        dq.plan_dequantize_rows(w, "Q6_K", n_cols, np.zeros(3, np.uint32))
    with pytest.raises(ValueError, match="row_ids: expected 1-D"):
        dq.plan_dequantize_rows(w, "Q6_K", n_cols, np.zeros((3, 1), np.int64))
    with pytest.raises(ValueError, match="out: must start 16-byte"):
        dq.plan_dequantize(w, "Q6_K", n_cols, out=_aligned_empty((7, n_cols), np.float32, offset=4))
    with pytest.raises(ValueError, match="w_raw"):
        dq.plan_dequantize(w, "Q6_K", 256)


def test_plan_quantize_q8_1():
    plan = q81.plan_quantize_q8_1(np.zeros((5, 288), np.float32))
    assert plan.out_shape == (5, 9 * BLOCK_BYTES) and plan.n_blocks == 45
    assert plan.grid == (-(-45 // q81.WARPS), 1, 1) and plan.block == (q81.THREADS, 1, 1)
    with pytest.raises(ValueError, match="multiple of 32"):
        q81.plan_quantize_q8_1(np.zeros((5, 40), np.float32))
    with pytest.raises(ValueError, match="out: expected shape"):
        q81.plan_quantize_q8_1(np.zeros((5, 288), np.float32), out=np.zeros((5, 9 * 40), np.uint8))


# --- numpy references ----------------------------------------------------------------------------------------------

def _butterfly_sum(block: np.ndarray) -> np.float32:
    """32 simulated lanes exchanging with xor partners 16, 8, 4, 2, 1 (float32 adds); lane 0's final value."""
    v = [np.float32(b) for b in block]
    for m in (16, 8, 4, 2, 1):
        v = [np.float32(v[lane] + v[lane ^ m]) for lane in range(32)]
    assert all(a.tobytes() == v[0].tobytes() for a in v), "butterfly lanes disagree"
    return v[0]


def test_q8_1_reference_rounding_and_layout():
    halves = np.array([127, 2.5, -2.5, 0.5, -0.5, 1.5, -126.5, np.float32(0.49999997), -3.0] + [0.0] * 23,
                      dtype=np.float32)
    out = quantize_q8_1(np.stack([halves, np.zeros(32, np.float32)]).reshape(1, 64))
    assert out.shape == (1, 2 * BLOCK_BYTES)
    blk, zero = out[0, :BLOCK_BYTES], out[0, BLOCK_BYTES:]
    assert blk[0:2].view(np.float16)[0] == np.float16(1.0)  # d = 127 / 127
    q = blk[4:].view(np.int8)
    assert q[:9].tolist() == [127, 3, -3, 1, -1, 2, -127, 0, -3]  # roundf: halves away from zero
    assert blk[2:4].view(np.float16)[0] == np.float16(halves.sum(dtype=np.float64))
    assert not zero.any()  # amax == 0: d = 0, s = 0, every code 0


def test_q8_1_reference_sum_order_is_the_butterfly():
    x = activations(4, 256, "q8_1-sum") * np.float32(100.0)
    out = quantize_q8_1(x).reshape(-1, BLOCK_BYTES)
    s = out[:, 2:4].copy().view(np.float16)[:, 0]
    want = [np.float16(_butterfly_sum(b)) for b in x.reshape(-1, 32)]
    assert s.tobytes() == np.array(want, np.float16).tobytes()


def test_q8_1_reference_round_trip():
    x = activations(3, 1056, "q8_1-rt")
    values, s = dequantize_q8_1(quantize_q8_1(x))
    d = np.abs(x.reshape(-1, 32)).max(axis=1) / 127
    # half a code, plus |q| <= 127 codes times the fp16 rounding of d (relative 2^-11): the codes use the float32 d
    bound = d * (0.5 + 127 * 2.0**-11) * (1 + 1e-6)
    assert (np.abs(values - x).reshape(-1, 32) <= bound[:, None]).all()
    assert np.allclose(s.ravel(), x.reshape(-1, 32).sum(axis=1), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("type_name", TYPE_NAMES, ids=str.lower)
def test_matvec_reference_is_x_times_w_transposed(type_name):
    rows, n_cols = 7, n_cols_for(type_name, 1)
    raw = quantized_weights(type_name, rows, n_cols)
    x = activations(3, n_cols, "ref")
    w = dequantize(raw, type_name, (n_cols, rows)).astype(np.float64)
    got = matvec_reference(raw, type_name, n_cols, x)
    assert got.dtype == np.float64 and got.shape == (3, rows)
    for j in range(3):
        for r in range(rows):
            assert abs(got[j, r] - float(np.dot(x[j].astype(np.float64), w[r]))) <= 1e-9 * (1 + abs(got[j, r]))
