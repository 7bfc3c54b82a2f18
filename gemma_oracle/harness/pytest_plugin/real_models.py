"""pytest side of gemma_oracle.harness.real.models: the `--go-model` option, the `real_model` fixture, skips and
labels.

Loaded by gemma_oracle.harness.pytest_plugin (its `pytest_plugins`). Tests that take `real_model` run once per
`--go-model` (default real12b); their ids carry the label (`[shape12b-SYNTHETIC]`), so every report line says
when a result comes from a stand-in. A model that is not on this machine skips its tests at collection
with the command that provides it: that reason comes before the GPU one, since it is the one to act on.
"""
from __future__ import annotations

import pytest

from gemma_oracle.engine.errors import GemmaOracleError

from gemma_oracle.harness.real import models as real_models

OPTION = "--go-model"


def pytest_addoption(parser):
    parser.getgroup("gemma-oracle").addoption(
        OPTION, action="append", default=None, metavar="NAME|PATH",
        help="model of the real-model suite (pytest -m real12b): a catalog name (real12b, real12b-qat, e4b-q8, "
             "shape12b, shape12b-q4_0; see `gemma-oracle fixtures list`) or a GGUF path; repeat for several "
             f"(default {real_models.DEFAULT_MODEL})")


def model_specs(config) -> list[str]:
    return config.getoption(OPTION) or [real_models.DEFAULT_MODEL]


def pytest_configure(config):
    for spec in config.getoption(OPTION) or ():
        try:
            real_models.label(spec)
        except GemmaOracleError as exc:  # an unknown name or a broken catalog: a usage error, not N skips
            raise pytest.UsageError(str(exc)) from exc


def pytest_report_header(config):
    if config.getoption(OPTION):
        return [f"gemma-oracle {OPTION} " + real_models.describe(spec) for spec in model_specs(config)]
    return None


def pytest_generate_tests(metafunc):
    if "real_model" in metafunc.fixturenames:
        specs = model_specs(metafunc.config)
        metafunc.parametrize("real_model", specs, ids=[real_models.label(s) for s in specs], indirect=True,
                             scope="session")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    reasons: dict[str, str | None] = {}
    for item in items:
        spec = getattr(getattr(item, "callspec", None), "params", {}).get("real_model")
        if spec is None:
            continue
        if spec not in reasons:
            try:
                reasons[spec] = real_models.absent_reason(spec)
            except GemmaOracleError:  # an unreadable record, say: the fixture raises it as the test's error
                reasons[spec] = None
        if reasons[spec]:
            item.add_marker(pytest.mark.skip(reason=reasons[spec]))


def pytest_terminal_summary(terminalreporter, config):
    ran = any("-SYNTHETIC]" in getattr(rep, "nodeid", "") for reps in terminalreporter.stats.values() for rep in reps)
    if not ran:
        return
    terminalreporter.write_sep("=", "SYNTHETIC model results", yellow=True)
    for spec in model_specs(config):
        if real_models.label(spec).endswith("-SYNTHETIC"):
            terminalreporter.write_line(real_models.describe(spec))


@pytest.fixture(scope="session")
def real_model(request) -> real_models.ResolvedModel:
    """The resolved `--go-model` (parametrized by pytest_generate_tests); skips when it is not here."""
    reason = real_models.absent_reason(request.param)
    if reason:
        pytest.skip(reason)
    return real_models.resolve(request.param)
