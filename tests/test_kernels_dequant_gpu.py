"""GPU tests of kernels/dequant.py (dequantize, dequantize_rows) and kernels/quantize_q8_1.py.

Both are checked BITWISE against their numpy references (kernels/reference/dequant.py, kernels/reference/q8_1.py),
with 1024-element guard regions around the output and (for float outputs) a NaN poison that must be overwritten.
"""
from __future__ import annotations

import numpy as np
import pytest

from gemma_oracle.kernels.dequant import dequantize, dequantize_rows
from gemma_oracle.kernels.quantize_q8_1 import quantize_q8_1
from gemma_oracle.kernels.reference import dequant as ref_dequant
from gemma_oracle.kernels.reference.q8_1 import quantize_q8_1 as quantize_q8_1_reference
from tests.kernel_support import (
    DEQUANT_SHAPES,
    Q8_1_SHAPES,
    TYPE_NAMES,
    GuardedOutput,
    activations,
    first_bit_difference,
    n_cols_for,
    quantized_weights,
)

try:  # collection must work without cupy; the gpu marker makes the plugin skip these items with its reason
    import cupy as cp
except ImportError:  # pragma: no cover - exercised only on machines without cupy
    cp = None

pytestmark = pytest.mark.gpu

DEQUANT_CASES = [(t, rows, n_cols_for(t, k)) for t in TYPE_NAMES for rows, k in DEQUANT_SHAPES]
ID_DTYPES = (np.int32, np.int64)


def _ids(t, rows, n_cols) -> str:
    return f"{t.lower()}-r{rows}-c{n_cols}"


def _reference(raw_host: np.ndarray, type_name: str, n_cols: int) -> np.ndarray:
    return ref_dequant.dequantize(raw_host, type_name, (n_cols, raw_host.shape[0]))


def _check_guarded(out: GuardedOutput, where: str) -> np.ndarray:
    before, after = out.guards_intact()
    assert before and after, f"{where}: guard region overwritten (before intact: {before}, after: {after})"
    return cp.asnumpy(out.view)


@pytest.mark.parametrize("type_name,rows,n_cols", DEQUANT_CASES, ids=[_ids(*c) for c in DEQUANT_CASES])
def test_dequantize_bitwise(type_name, rows, n_cols):
    raw_host = quantized_weights(type_name, rows, n_cols)
    out = GuardedOutput(cp, (rows, n_cols), np.float32)
    dequantize(cp.asarray(raw_host), type_name, n_cols, out=out.view)
    got = _check_guarded(out, type_name)
    diff = first_bit_difference(got, _reference(raw_host, type_name, n_cols))
    assert not diff, f"{_ids(type_name, rows, n_cols)}: {diff}"


@pytest.mark.parametrize("id_dtype", ID_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("type_name", TYPE_NAMES, ids=str.lower)
def test_dequantize_rows_bitwise(type_name, id_dtype):
    rows, n_cols = 130, n_cols_for(type_name, 2)
    raw_host = quantized_weights(type_name, rows, n_cols)
    ids = np.array([0, rows - 1, 5, 5, 77, 3, rows - 1, 64, 0], dtype=id_dtype)  # ends, repeats, any order
    out = GuardedOutput(cp, (ids.size, n_cols), np.float32)
    dequantize_rows(cp.asarray(raw_host), type_name, n_cols, cp.asarray(ids), out=out.view, check_ids=True)
    got = _check_guarded(out, type_name)
    diff = first_bit_difference(got, _reference(raw_host, type_name, n_cols)[ids])
    assert not diff, f"{type_name} ids {ids.tolist()}: {diff}"


@pytest.mark.parametrize("id_dtype", ID_DTYPES, ids=lambda d: np.dtype(d).name)
def test_dequantize_rows_out_of_range_ids(id_dtype):
    type_name, rows = "Q4_K", 7
    n_cols = n_cols_for(type_name, 1)
    raw_host = quantized_weights(type_name, rows, n_cols)
    raw, ids = cp.asarray(raw_host), cp.asarray(np.array([2, -1, rows, 6], dtype=id_dtype))
    with pytest.raises(ValueError, match="row_ids"):
        dequantize_rows(raw, type_name, n_cols, ids, check_ids=True)
    got = cp.asnumpy(dequantize_rows(raw, type_name, n_cols, ids))
    ref = _reference(raw_host, type_name, n_cols)
    assert np.isnan(got[1]).all() and np.isnan(got[2]).all(), "an out-of-range id must give a NaN row"
    assert not first_bit_difference(got[[0, 3]], ref[[2, 6]])


def _q8_1_special_blocks() -> np.ndarray:
    """Blocks that pin the arithmetic: all zero; exact halves (amax 127 makes d exactly 1); just below one half;
    subnormal values (flushed to zero on both sides); a sum that overflows fp16 (s = inf in both)."""
    zero = np.zeros(32, np.float32)
    halves = np.array([127, 2.5, -2.5, 0.5, -0.5, 1.5, -1.5, 126.5, -126.5, np.float32(0.49999997)] + [0.0] * 22,
                      dtype=np.float32)
    tiny = np.linspace(-1e-39, 3e-39, 32, dtype=np.float32)
    big = np.full(32, 6.0e4, np.float32)
    return np.stack([zero, halves, tiny, big]).reshape(1, -1)


@pytest.mark.parametrize("n,k", Q8_1_SHAPES + ((1, 128),), ids=lambda v: str(v))
def test_quantize_q8_1_bitwise(n, k):
    x_host = _q8_1_special_blocks() if (n, k) == (1, 128) else activations(n, k, "q8_1") * np.float32(3.0)
    out = GuardedOutput(cp, (n, k // 32 * 36), np.uint8)
    quantize_q8_1(cp.asarray(x_host), out=out.view)
    got = _check_guarded(out, f"q8_1 n={n} k={k}")
    want = quantize_q8_1_reference(x_host)
    mismatch = np.argwhere(got != want)
    assert mismatch.size == 0, (f"q8_1 n={n} k={k}: {len(mismatch)} byte(s) differ, first at "
                                f"{tuple(int(i) for i in mismatch[0])} (block byte {int(mismatch[0][1]) % 36})")
