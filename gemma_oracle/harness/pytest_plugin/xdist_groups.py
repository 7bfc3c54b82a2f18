"""Which tests share an xdist worker under `--dist loadgroup`: those that decode the same model, so that each
GPU loads a model once.

A test's group is the synthetic model named at the start of its parameter id (`preset-variant`, as
gemma_oracle.harness.suites.synthetic.SuiteCase.id and the suite's `preset,variant` ids write it): exactly the key of
oracle_suite.engine_for's engine cache, so a worker's consecutive tests of one group reuse one engine.
Tests with no model in their id (the kernel tests) stay ungrouped and are dealt out one by one, which
balances them over the GPUs. A test with an explicit `xdist_group` mark keeps xdist's own grouping.

The group is read from the test id in the controller rather than set as an `xdist_group` mark in the
workers: xdist (3.8) passes marks to the controller by appending `@group` to the legacy `_nodeid`, which
pytest >= 9.2 no longer reads, so marks silently stop grouping (pytest-dev/pytest-xdist#1386).
"""
from __future__ import annotations

import functools

from xdist.scheduler import LoadGroupScheduling

from gemma_oracle.harness.fixtures.presets import PRESETS
from gemma_oracle.harness.fixtures.quant_mix import VARIANTS


@functools.lru_cache(maxsize=1)
def model_names() -> tuple[str, ...]:
    """Every synthetic model's name, longest first so that a name is never taken for a longer one's prefix."""
    return tuple(sorted((f"{p}-{v}" for p in PRESETS for v in VARIANTS), key=len, reverse=True))


# Modules whose tests all decode 12B-sized models (7 GB of weights per engine, several engines per module): one
# worker runs the whole module, so a GPU holds one module's engines at a time, not one set per worker.
WHOLE_MODULE_GROUPS = ("tests/test_standin_gpu.py", "tests/test_real12b.py")


def model_group(nodeid: str, models: tuple[str, ...] | None = None) -> str | None:
    """The model a test decodes, from its id (`...::test[g4-12b-mini-q4_k_m-n5]` -> `g4-12b-mini-q4_k_m`)."""
    module = nodeid.partition("::")[0]
    if module in WHOLE_MODULE_GROUPS:
        return module
    name = nodeid.rpartition("::")[2]
    _, bracket, params = name.partition("[")
    if not bracket:
        return None
    params = params.removesuffix("]")
    for model in models if models is not None else model_names():
        if params == model or params.startswith(model + "-"):
            return model
    return None


class ModelGroupScheduling(LoadGroupScheduling):
    """xdist's loadgroup, with each test's model as its group where it has no explicit one."""

    def _split_scope(self, nodeid: str) -> str:
        scope = super()._split_scope(nodeid)
        if scope != nodeid:  # an explicit xdist_group (where xdist's suffix survives)
            return scope
        return model_group(nodeid) or nodeid
