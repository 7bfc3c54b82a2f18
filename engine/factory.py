"""Engines by backend name: the one place that maps `--backend` choices to engine classes."""
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


def make_engine(backend: str, path: os.PathLike | str, **options):
    try:
        factory = ENGINES[backend]
    except KeyError:
        raise ValueError(f"unknown engine backend {backend!r}: expected one of {sorted(ENGINES)}") from None
    return factory(path, **options)
