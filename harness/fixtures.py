"""Synthetic Gemma 4 GGUF fixtures: written with gguf-py from a preset, a quant variant and a seed.

The same (preset, variant, seed) always gives a byte-identical file. Files are cached on disk under a
file lock, written to a temporary name and renamed into place, so parallel test workers share one copy
and nothing half-written is ever at the final path.
"""
from __future__ import annotations

import hashlib
import os
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
from filelock import FileLock

from engine.inventory import ExpectedTensor, expected_tensors
from .presets import PRESETS, Preset
from .quant_mix import VARIANTS, base_name, tensor_type
from .tokenizer_table import TokenizerTable, small_vocab

# Bump when the bytes a preset produces change, so stale cached files are never reused.
FIXTURE_FORMAT_VERSION = 1


def cache_dir() -> Path:
    """$GEMMA_ORACLE_CACHE/fixtures, else $XDG_CACHE_HOME/gemma-oracle/fixtures, else ~/.cache/..."""
    root = os.environ.get("GEMMA_ORACLE_CACHE")
    if root:
        return Path(root) / "fixtures"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "gemma-oracle" / "fixtures"


def _rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _values(preset: Preset, t: ExpectedTensor, seed: int) -> np.ndarray:
    """float32 values in numpy order (reversed ne) for one tensor: scaled so the model is well conditioned."""
    rng = _rng(seed, t.name)
    shape = tuple(reversed(t.ne))
    base = base_name(t)
    if base == "rope_freqs":
        # Proportional RoPE: the first `factor` of the pairs rotate, the rest get 1e30 (spec §2.3).
        n_rot = int(round(t.ne[0] * preset.rope_partial_factor))
        return np.array([1.0] * n_rot + [1e30] * (t.ne[0] - n_rot), dtype=np.float32)
    if base == "layer_output_scale":
        return rng.uniform(0.8, 1.25, size=shape).astype(np.float32)
    if base in ("attn_q_norm", "attn_k_norm"):
        # Small q/k norms keep attention logits O(1); near 1.0 random weights give logits ~64 and chaos.
        return (preset.qk_norm_center + 0.05 * rng.standard_normal(shape)).astype(np.float32)
    if base == "output_norm":
        return (preset.output_norm_center * (1.0 + 0.1 * rng.standard_normal(shape))).astype(np.float32)
    if t.kind == "vector":
        return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    if base == "token_embd":
        return (preset.embed_std * rng.standard_normal(shape)).astype(np.float32)
    if base == "per_layer_token_embd":
        # scaled by sqrt(P) in the forward pass, so unit variance after scaling
        return (rng.standard_normal(shape) / np.sqrt(preset.ple_width)).astype(np.float32)
    fan_in = t.ne[0]
    return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)


def _encode(values: np.ndarray, type_name: str):
    """(array, raw_dtype) for GGUFWriter.add_tensor."""
    from gguf import GGMLQuantizationType

    if type_name == "F32":
        return values.astype(np.float32), None
    if type_name == "F16":
        return values.astype(np.float16), None
    from kernels.reference.quantize import quantize

    return quantize(values, type_name), GGMLQuantizationType[type_name]


def _write_metadata(w, preset: Preset, cfg, tok: TokenizerTable, variant: str) -> None:
    a = "gemma4"
    w.add_string("general.name", f"gemma-oracle synthetic {preset.name} {variant}")
    w.add_uint32("general.quantization_version", 2)
    w.add_uint32(f"{a}.context_length", preset.context_length)
    w.add_uint32(f"{a}.embedding_length", cfg.hidden)
    w.add_uint32(f"{a}.block_count", cfg.n_layers)
    if len(set(cfg.n_ff)) == 1:
        w.add_uint32(f"{a}.feed_forward_length", cfg.n_ff[0])
    else:
        w.add_array(f"{a}.feed_forward_length", list(cfg.n_ff))
    w.add_uint32(f"{a}.attention.head_count", cfg.n_heads)
    if len(set(cfg.n_kv_heads)) == 1:
        w.add_uint32(f"{a}.attention.head_count_kv", cfg.n_kv_heads[0])
    else:
        w.add_array(f"{a}.attention.head_count_kv", list(cfg.n_kv_heads))
    w.add_float32(f"{a}.attention.layer_norm_rms_epsilon", cfg.rms_eps)
    w.add_uint32(f"{a}.attention.key_length", cfg.head_dim_full)
    w.add_uint32(f"{a}.attention.value_length", cfg.head_dim_full)
    w.add_uint32(f"{a}.attention.key_length_swa", cfg.head_dim_sliding)
    w.add_uint32(f"{a}.attention.value_length_swa", cfg.head_dim_sliding)
    w.add_uint32(f"{a}.attention.sliding_window", cfg.sliding_window)
    w.add_array(f"{a}.attention.sliding_window_pattern", list(cfg.layer_is_sliding))
    w.add_uint32(f"{a}.attention.shared_kv_layers", cfg.shared_kv_layers)
    w.add_uint32(f"{a}.embedding_length_per_layer_input", cfg.ple_width)
    w.add_float32(f"{a}.rope.freq_base", cfg.rope_base_full)
    w.add_float32(f"{a}.rope.freq_base_swa", cfg.rope_base_sliding)
    w.add_uint32(f"{a}.rope.dimension_count", cfg.rope_dims_full)
    w.add_uint32(f"{a}.rope.dimension_count_swa", cfg.rope_dims_sliding)
    w.add_float32(f"{a}.final_logit_softcapping", cfg.final_softcap)
    w.add_uint32(f"{a}.vocab_size", cfg.vocab_size)
    w.add_string("tokenizer.ggml.model", "llama")
    w.add_string("tokenizer.ggml.pre", "default")
    w.add_array("tokenizer.ggml.tokens", list(tok.tokens))
    w.add_array("tokenizer.ggml.scores", [float(s) for s in tok.scores])
    w.add_array("tokenizer.ggml.token_type", list(tok.types))
    w.add_uint32("tokenizer.ggml.bos_token_id", tok.bos)
    w.add_uint32("tokenizer.ggml.eos_token_id", tok.eos)
    w.add_uint32("tokenizer.ggml.unknown_token_id", tok.unk)
    w.add_uint32("tokenizer.ggml.padding_token_id", tok.pad)
    w.add_bool("tokenizer.ggml.add_bos_token", True)
    w.add_bool("tokenizer.ggml.add_space_prefix", False)


_DEAD_KV = ("attn_k", "attn_v", "attn_k_norm")


def written_tensors(cfg) -> list[ExpectedTensor]:
    """What a fixture file holds: every required tensor, plus the dead K/V weights that real E2B/E4B
    files keep on their KV-shared layers (spec §3.4), so the loader's "ignore them" path is exercised."""
    return [
        t
        for t in expected_tensors(cfg)
        if t.required or (t.layer is not None and not cfg.owns_kv(t.layer) and base_name(t) in _DEAD_KV)
    ]


def planned_types(preset: Preset, variant: str) -> dict[str, str]:
    """tensor name -> GGML type the builder will write (also what the loader must report)."""
    cfg = preset.config(len(small_vocab().tokens))
    tensors = written_tensors(cfg)
    counts = Counter(base_name(t) for t in tensors)
    ranks: Counter = Counter()
    out = {}
    for t in tensors:
        b = base_name(t)
        out[t.name] = tensor_type(variant, t, ranks[b], counts[b])
        ranks[b] += 1
    return out


def write_fixture(path: os.PathLike | str, preset_name: str, variant: str, seed: int = 0) -> Path:
    """Write the fixture to exactly `path` (no caching). Deterministic in (preset, variant, seed)."""
    from gguf import GGUFWriter

    if preset_name not in PRESETS:
        raise KeyError(f"unknown preset {preset_name!r}: expected one of {sorted(PRESETS)}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown quant variant {variant!r}: expected one of {VARIANTS}")
    preset = PRESETS[preset_name]
    tok = small_vocab()
    cfg = preset.config(len(tok.tokens))
    types = planned_types(preset, variant)
    w = GGUFWriter(str(path), "gemma4")
    _write_metadata(w, preset, cfg, tok, variant)
    w.add_uint32("general.file_type", {"f32": 0, "q8_0": 7, "q4_0": 2, "q4_k_m": 15}[variant])
    for t in written_tensors(cfg):
        data, raw = _encode(_values(preset, t, seed), types[t.name])
        w.add_tensor(t.name, data, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(path)


def _builder_sources_digest() -> str:
    """Hash of the code that decides a fixture's bytes, so an edited builder never reuses a stale cache."""
    from importlib import import_module

    h = hashlib.sha256()
    for mod in ("harness.fixtures", "harness.presets", "harness.quant_mix", "harness.tokenizer_table",
                "kernels.reference.quantize", "engine.inventory", "harness.standin", "harness.fast_blocks"):
        h.update(Path(import_module(mod).__file__).read_bytes())
    return h.hexdigest()


def _digest(preset, variant: str, seed: int) -> str:
    text = f"{FIXTURE_FORMAT_VERSION}|{_builder_sources_digest()}|{preset!r}|{variant}|{seed}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def fixture_names() -> list[str]:
    """Every name fixture_path builds: the mini presets, then the 12B-shaped stand-ins."""
    from .standin import STANDINS

    return sorted(PRESETS) + sorted(STANDINS)


def fixture_variants(name: str) -> tuple[str, ...]:
    """The quant variants a fixture name is built in (a stand-in has exactly one)."""
    from .standin import STANDINS

    return (STANDINS[name].variant,) if name in STANDINS else VARIANTS


def fixture_path(preset_name: str, variant: str | None = None, seed: int = 0, *,
                 directory: os.PathLike | str | None = None) -> Path:
    """Path of the cached fixture, building it first if needed (under a lock; atomic rename).

    preset_name: a mini preset (harness.presets, variant default "f32") or a 12B-shaped stand-in
    (harness.standin, built in its own variant only: "shape12b" q4_k_m, "shape12b-q4_0" q4_0)."""
    from .standin import STANDINS, write_standin

    if preset_name in STANDINS:
        standin = STANDINS[preset_name]
        variant = variant or standin.variant
        if variant != standin.variant:
            raise ValueError(f"stand-in {preset_name!r} is built in variant {standin.variant!r} only, not {variant!r}")
        digest, write = _digest(standin, variant, seed), write_standin
    elif preset_name in PRESETS:
        variant = variant or "f32"
        digest, write = _digest(PRESETS[preset_name], variant, seed), write_fixture
    else:
        raise KeyError(f"unknown preset {preset_name!r}: expected one of {fixture_names()}")
    d = Path(directory) if directory is not None else cache_dir()
    d.mkdir(parents=True, exist_ok=True)
    final = d / f"{preset_name}-{variant}-s{seed}-{digest}.gguf"
    if final.exists():
        return final
    with FileLock(str(final) + ".lock"):
        if final.exists():  # another worker built it while we waited
            return final
        tmp = final.with_name(final.name + f".tmp{os.getpid()}")
        try:
            if write is write_standin:
                write_standin(tmp, preset_name, seed)
            else:
                write_fixture(tmp, preset_name, variant, seed)
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                tmp.unlink()
    return final
