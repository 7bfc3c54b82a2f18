"""Array backends of the engine, chosen once at construction: the model code never asks which one runs.

`numpy64` is the float64 reference; `numpy32` the same arithmetic in float32 (for checking how far
single precision moves the logits). The CuPy GPU backend registers itself here when it exists.
"""
from __future__ import annotations

from .numpy_backend import NumpyBackend

BACKENDS = {
    "numpy64": lambda: NumpyBackend("float64"),
    "numpy32": lambda: NumpyBackend("float32"),
}


def make_backend(name: str):
    try:
        return BACKENDS[name]()
    except KeyError:
        raise ValueError(f"unknown backend {name!r}: expected one of {sorted(BACKENDS)}") from None
