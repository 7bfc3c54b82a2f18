"""llama.cpp itself accepts every synthetic preset (F32 variant): the fixtures are real Gemma 4 GGUFs."""
from __future__ import annotations

import pytest

from gemma_oracle.engine.adapters import llamacpp

from .conftest import PRESET_NAMES

pytestmark = [
    pytest.mark.synthetic,
    pytest.mark.parity,
    pytest.mark.skipif(not llamacpp.available(), reason=f"needs llama.cpp on the CPU: {llamacpp.INSTALL_HINT}"),
]


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_llama_cpp_loads_f32_fixture(synthetic_gguf, preset):
    llamacpp.check_loads(synthetic_gguf(preset, "f32"))


def test_llama_cpp_refusal_is_a_typed_error(tmp_path):
    bad = tmp_path / "not-a-model.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(llamacpp.LlamaCppError, match="not-a-model.gguf"):
        llamacpp.check_loads(bad)
