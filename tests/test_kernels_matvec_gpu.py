"""GPU tests of kernels/matvec.py (WS and GEMM-N batched mat-vec over every weight type).

Per case (type x shape x N, ids like q4_k-r77-c768-n5):
  * accuracy: NMSE against the float64 reference (dequantize with kernels/reference/dequant.py, x @ W.T) is at
    most MATVEC_FP32_NMSE_MAX, after the non-finite screen;
  * the output (poisoned with NaN) is fully written and 1024-float guards before and after it are intact;
  * the contract: every route's row for token j is BITWISE equal to the N = 1 path on x[j] alone (WS for N in
    1..16; GEMM-N at every N of the sweep, which covers N in {17, 32} where auto picks it).
"""
from __future__ import annotations

import numpy as np
import pytest

from gemma_oracle.kernels.matvec import WS_MAX_N, matvec, plan_matvec
from gemma_oracle.oracles.metrics import nmse, screen_nonfinite
from tests.kernel_support import (
    MATVEC_FP32_NMSE_MAX,
    GuardedOutput,
    activations,
    first_bit_difference,
    matvec_cases,
    matvec_reference,
    quantized_weights,
)

try:  # collection must work without cupy; the gpu marker makes the plugin skip these items with its reason
    import cupy as cp
except ImportError:  # pragma: no cover - exercised only on machines without cupy
    cp = None

pytestmark = pytest.mark.gpu

CASES = matvec_cases()


def _single_token_rows(raw, type_name: str, n_cols: int, x) -> np.ndarray:
    """The N = 1 path (auto route, i.e. ws_<t>_n1) run on each token alone, stacked: float32 [N, rows]."""
    rows = [cp.asnumpy(matvec(raw, type_name, n_cols, x[j:j + 1]))[0] for j in range(x.shape[0])]
    return np.stack(rows)


def _routes(n: int) -> tuple[str, ...]:
    """auto (WS up to 16, GEMM-N above) and, where WS took auto, GEMM-N forced as well."""
    return ("auto", "gemm_n") if n <= WS_MAX_N else ("auto",)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_matvec_accuracy_and_bitwise_contract(case):
    raw_host = quantized_weights(case.type_name, case.rows, case.n_cols)
    x_host = activations(case.n, case.n_cols, case.type_name, case.rows)
    ref = matvec_reference(raw_host, case.type_name, case.n_cols, x_host)
    raw, x = cp.asarray(raw_host), cp.asarray(x_host)
    single = _single_token_rows(raw, case.type_name, case.n_cols, x)

    for route in _routes(case.n):
        plan = plan_matvec(raw, case.type_name, case.n_cols, x, route=route)
        out = GuardedOutput(cp, (case.n, case.rows), np.float32)
        y_dev = matvec(raw, case.type_name, case.n_cols, x, route=route, out=out.view)
        assert y_dev is out.view
        cp.cuda.get_current_stream().synchronize()
        y = cp.asnumpy(out.view)
        where = f"{case} route={route} ({plan.entry})"

        before, after = out.guards_intact()
        assert before and after, f"{where}: guard region overwritten (before intact: {before}, after: {after})"
        unwritten = np.isnan(y)
        assert not unwritten.any(), (f"{where}: {int(unwritten.sum())} output(s) left unwritten (NaN poison), "
                                     f"first at {tuple(int(i) for i in np.argwhere(unwritten)[0])}")
        bad = screen_nonfinite(ref, y)
        assert bad is None, f"{where}: {bad}"
        err = nmse(ref.ravel(), y.ravel())
        assert err <= MATVEC_FP32_NMSE_MAX, f"{where}: NMSE {err:.3e} > {MATVEC_FP32_NMSE_MAX:.0e}"

        for j in range(case.n):
            diff = first_bit_difference(y[j], single[j])
            assert not diff, f"{where}: token {j} differs from its N = 1 run: {diff}"
