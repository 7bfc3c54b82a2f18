"""The golden oracle on every synthetic preset x quant variant x N and the input plans that reach every boundary
(gemma_oracle.harness.suites.synthetic.cases): batched decode == single-user decode."""
from __future__ import annotations

import pytest

from gemma_oracle.harness.suites.synthetic import cases, record_context, run_case

pytestmark = pytest.mark.synthetic

CASES = cases()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_batched_equals_single_user(case, oracle_backend, record_oracle):
    result = run_case(case, oracle_backend)
    record_oracle(result, **record_context(case, oracle_backend))
    assert result.n == case.n and len(result.comparisons) == case.n * (case.steps + 1)  # prefill + each decode step
    result.assert_passed()
