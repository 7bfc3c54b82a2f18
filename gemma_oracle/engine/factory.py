"""Engines by backend name: the one place that maps `--backend` choices (CLI and pytest) to engine classes."""
from __future__ import annotations

import os


def _numpy(dtype_name):
    def make(path: os.PathLike | str, **options):
        from .engine import GemmaEngine

        return GemmaEngine(path, dtype_name, **options)

    return make


def _cupy(path: os.PathLike | str, *, memo_prefill: bool = False, **options):
    from .gpu_engine import CupyEngine

    return CupyEngine(path, **options)  # GPU prefill is cheap: no prompt memo


ENGINES = {"numpy64": _numpy("numpy64"), "numpy32": _numpy("numpy32"), "cupy": _cupy}

# Factories of the registry's built-in names (gemma_oracle.engine.registry): `--engine numpy`, `numpy32`, `cupy`.
numpy64_engine = _numpy("numpy64")
numpy32_engine = _numpy("numpy32")


def cupy_engine(path: os.PathLike | str, *, mode: str = "auto", kv: str = "float32", **options):
    return _cupy(path, route_mode=mode, kv_dtype=kv, **options)


def make_engine(backend: str, path: os.PathLike | str, **options):
    try:
        factory = ENGINES[backend]
    except KeyError:
        raise ValueError(f"unknown engine backend {backend!r}: expected one of {sorted(ENGINES)}") from None
    return factory(path, **options)


# --backend value of the CLI and the pytest plugin -> engine backend name (ENGINES)
BACKEND_CHOICES = ("numpy", "cupy", "auto")


def gpu_available() -> bool:
    try:
        import cupy

        return bool(cupy.cuda.is_available())
    except Exception:  # no cupy, or a cupy without a driver
        return False


def resolve_backend(choice: str) -> tuple[str | None, str | None]:
    """(engine backend name for make_engine, or None with the reason it cannot run here and the fix)."""
    if choice == "numpy":
        return "numpy64", None
    if choice == "cupy":
        if not gpu_available():
            return None, "--backend cupy needs an NVIDIA GPU: run on a GPU machine with pip install 'gemma-oracle[gpu]'"
        return "cupy", None
    return ("cupy", None) if gpu_available() else ("numpy64", None)
