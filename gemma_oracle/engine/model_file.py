"""Load a Gemma GGUF: open (gemma_oracle.engine.gguf_file), read the config (gemma_oracle.engine.config), validate the inventory.

`load_model(path)` is the one entry point the engines, the fixtures' tests and the CLI use.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import GemmaConfig, config_from_gguf
from .errors import MissingTensorError, TensorShapeError, UnsupportedQuantTypeError
from .gguf_file import GGUFFile, TensorInfo
from .inventory import ExpectedTensor, expected_tensors


@dataclass
class ModelFile:
    path: Path
    config: GemmaConfig
    gguf: GGUFFile
    tensors: dict[str, TensorInfo]  # the tensors the model uses (dead or unknown ones dropped)
    ignored: tuple[str, ...]  # tensors in the file the model does not read (e.g. vision towers)

    def has(self, name: str) -> bool:
        return name in self.tensors

    def type_of(self, name: str) -> str:
        return self.tensors[name].type_name

    def dequantize(self, name: str) -> np.ndarray:
        """float32 values in numpy order (reversed ne), bitwise what ggml's f32 dequantization gives."""
        from gemma_oracle.kernels.reference.dequant import dequantize

        t = self.tensors[name]
        return dequantize(np.asarray(t.data), t.type_name, t.ne)


def validate_inventory(path: str, cfg: GemmaConfig, tensors: dict[str, TensorInfo]) -> list[ExpectedTensor]:
    """Raise a typed error on the first missing, misshapen or wrongly typed tensor; return the expected list."""
    expected = expected_tensors(cfg, present=set(tensors))
    for exp in expected:
        info = tensors.get(exp.name)
        if info is None:
            if exp.required:
                raise MissingTensorError(path, f"missing: expected a {exp.kind} with ne={list(exp.ne)}", subject=exp.name)
            continue
        if info.ne != exp.ne:
            raise TensorShapeError(path, f"ne={list(info.ne)}, expected ne={list(exp.ne)} from the metadata", subject=exp.name)
        if info.type_name not in exp.allowed_types:
            raise UnsupportedQuantTypeError(
                path, f"type {info.type_name} not allowed for a {exp.kind}: expected one of {exp.allowed_types}", subject=exp.name
            )
    return expected


def load_model(path: os.PathLike | str, *, embed_scale_mode: str = "fp32") -> ModelFile:
    gguf = GGUFFile(path)
    cfg = config_from_gguf(gguf, embed_scale_mode=embed_scale_mode)
    expected = validate_inventory(str(gguf.path), cfg, gguf.tensors)
    used = {e.name for e in expected if e.name in gguf.tensors}
    # Dead K/V weights of KV-shared layers are listed as optional so their shapes are checked; the model never reads them.
    dead = {
        f"blk.{i}.{n}.weight" for i in range(cfg.n_layers) if not cfg.owns_kv(i) for n in ("attn_k", "attn_v", "attn_k_norm")
    }
    tensors = {n: gguf.tensors[n] for n in sorted(used - dead)}
    ignored = tuple(sorted(set(gguf.tensors) - set(tensors)))
    return ModelFile(Path(gguf.path), cfg, gguf, tensors, ignored)
