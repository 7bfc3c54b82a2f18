"""The model configuration: one frozen dataclass for Gemma 4 and Gemma 3, read from GGUF metadata and tensors.

Per-layer variation is data (tuples indexed by layer), derived once here so model code never re-derives
it. Spec: ../shared/reference/gemma4-architecture.md §1-§3 and §5 (the Gemma 3 switch list).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from .errors import MetadataError, UnsupportedModelError

ARCHITECTURES = ("gemma4", "gemma3")
# How the embedding row is scaled (x0 = row * sqrt(hidden)). FLAG in the spec §2.1: current llama.cpp uses
# fp32 sqrtf (the default here, so parity with llama.cpp holds); HF/JAX in bf16 and older llama.cpp round it to bf16.
EMBED_SCALE_MODES = ("fp32", "bf16")


def _bf16_round(x: float) -> float:
    """Round a float to the nearest bfloat16 (ties to even), as torch's float32 -> bf16 cast does."""
    bits = np.array([x], dtype=np.float32).view(np.uint32)[0]
    bits = (int(bits) + 0x7FFF + ((int(bits) >> 16) & 1)) & 0xFFFF0000
    return float(np.array([bits], dtype=np.uint32).view(np.float32)[0])


@dataclass(frozen=True)
class GemmaConfig:
    arch: Literal["gemma4", "gemma3"]
    n_layers: int
    hidden: int
    n_heads: int
    vocab_size: int
    context_length: int
    rms_eps: float
    layer_is_sliding: tuple[bool, ...]
    head_dim_full: int
    head_dim_sliding: int
    n_kv_heads: tuple[int, ...]
    n_ff: tuple[int, ...]
    sliding_window: int
    rope_base_full: float
    rope_base_sliding: float
    rope_dims_full: int
    rope_dims_sliding: int
    shared_kv_layers: int = 0
    ple_width: int = 0
    final_softcap: float | None = None
    query_scale: float = 1.0  # gemma4: 1.0; gemma3: key_length ** -0.5
    v_norm: bool = True  # gemma4's weightless RMSNorm on V (every KV-owning layer)
    # From the tensors, not the metadata:
    layer_k_eq_v: tuple[bool, ...] = ()  # global layer without attn_v: V is the raw K projection
    has_rope_freqs: bool = False  # proportional RoPE on full layers via rope_freqs.weight
    layer_has_output_scale: tuple[bool, ...] = ()
    tied_output: bool = True
    embed_scale_mode: Literal["fp32", "bf16"] = "fp32"
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    # Derived in __post_init__:
    kv_source: tuple[int, ...] = field(default=())

    def __post_init__(self):
        L = self.n_layers
        for name in ("layer_is_sliding", "n_kv_heads", "n_ff"):
            if len(getattr(self, name)) != L:
                raise ValueError(f"{name} has {len(getattr(self, name))} entries, expected n_layers={L}")
        if not self.layer_k_eq_v:
            object.__setattr__(self, "layer_k_eq_v", (False,) * L)
        if not self.layer_has_output_scale:
            object.__setattr__(self, "layer_has_output_scale", (False,) * L)
        if self.embed_scale_mode not in EMBED_SCALE_MODES:
            raise ValueError(f"embed_scale_mode {self.embed_scale_mode!r}: expected one of {EMBED_SCALE_MODES}")
        first_shared = L - self.shared_kv_layers
        sources = []
        for layer in range(L):
            if layer < first_shared:
                sources.append(layer)
                continue
            # HF's rule: the last KV-owning layer of the same attention type (spec §1, open point 5).
            same = [j for j in range(first_shared) if self.layer_is_sliding[j] == self.layer_is_sliding[layer]]
            if not same:
                raise ValueError(f"layer {layer} shares KV but no layer below {first_shared} has its attention type")
            sources.append(same[-1])
        object.__setattr__(self, "kv_source", tuple(sources))

    # --- per-layer views -------------------------------------------------------------------------
    def head_dim(self, layer: int) -> int:
        return self.head_dim_sliding if self.layer_is_sliding[layer] else self.head_dim_full

    def q_dim(self, layer: int) -> int:
        return self.n_heads * self.head_dim(layer)

    def kv_dim(self, layer: int) -> int:
        return self.n_kv_heads[layer] * self.head_dim(layer)

    def owns_kv(self, layer: int) -> bool:
        return self.kv_source[layer] == layer

    def rope_base(self, layer: int) -> float:
        return self.rope_base_sliding if self.layer_is_sliding[layer] else self.rope_base_full

    def rope_dims(self, layer: int) -> int:
        return self.rope_dims_sliding if self.layer_is_sliding[layer] else self.rope_dims_full

    @property
    def first_shared_layer(self) -> int:
        return self.n_layers - self.shared_kv_layers

    @property
    def embed_scale(self) -> float:
        s = float(np.float32(math.sqrt(self.hidden)))
        return _bf16_round(s) if self.embed_scale_mode == "bf16" else s

    def with_options(self, **changes: Any) -> "GemmaConfig":
        """A copy with option fields changed (e.g. embed_scale_mode); derived fields are recomputed."""
        from dataclasses import replace

        return replace(self, kv_source=(), **changes)


# --------------------------------------------------------------------------------------------------
# Reading the config from a GGUF file
# --------------------------------------------------------------------------------------------------
class _Keys:
    """Typed access to `{arch}.*` metadata with errors that name the key and what was expected."""

    def __init__(self, path: str, metadata: dict[str, Any], arch: str):
        self.path, self.md, self.arch = path, metadata, arch

    def _err(self, key: str, msg: str) -> MetadataError:
        return MetadataError(self.path, msg, subject=key)

    def number(self, name: str, *, kind: type = int, default: Any = ..., minimum: float | None = None):
        key = f"{self.arch}.{name}"
        if key not in self.md:
            if default is ...:
                raise self._err(key, f"missing required key (expected a {kind.__name__})")
            return default
        value = self.md[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
            raise self._err(key, f"expected a scalar {kind.__name__}, got {type(value).__name__} {value!r:.60}")
        if not math.isfinite(value):
            raise self._err(key, f"expected a finite number, got {value}")
        if minimum is not None and value < minimum:
            raise self._err(key, f"expected >= {minimum}, got {value}")
        return kind(value)

    def per_layer(self, name: str, n_layers: int, *, minimum: int = 1) -> tuple[int, ...]:
        """A key stored as a scalar u32 or as one integer per layer (head_count_kv, feed_forward_length)."""
        key = f"{self.arch}.{name}"
        if key not in self.md:
            raise self._err(key, "missing required key (expected an integer or a per-layer integer array)")
        value = self.md[key]
        if isinstance(value, list):
            if len(value) != n_layers or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                raise self._err(key, f"expected {n_layers} integers (one per layer), got {len(value)} entries")
            values = tuple(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            values = (value,) * n_layers
        else:
            raise self._err(key, f"expected an integer or integer array, got {type(value).__name__}")
        if any(v < minimum for v in values):
            raise self._err(key, f"expected every entry >= {minimum}, got {list(values)}")
        return values

    def bool_array(self, name: str, n_layers: int) -> tuple[bool, ...] | None:
        key = f"{self.arch}.{name}"
        if key not in self.md:
            return None
        value = self.md[key]
        if not isinstance(value, list) or len(value) != n_layers or not all(isinstance(v, bool) for v in value):
            n = len(value) if isinstance(value, list) else "a scalar"
            raise self._err(key, f"expected a bool array with one entry per layer ({n_layers}), got {n}")
        return tuple(value)


def config_from_gguf(gguf, *, embed_scale_mode: str = "fp32") -> GemmaConfig:
    """Build the config of a GGUFFile (gemma_oracle.engine.gguf_file) from its metadata and the presence of tensors."""
    if embed_scale_mode not in EMBED_SCALE_MODES:
        raise ValueError(f"embed_scale_mode {embed_scale_mode!r}: expected one of {EMBED_SCALE_MODES}")
    path, md, tensors = str(gguf.path), gguf.metadata, gguf.tensors
    arch = md.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise UnsupportedModelError(
            path, f"architecture {arch!r} is not supported: expected one of {ARCHITECTURES}", subject="general.architecture"
        )
    k = _Keys(path, md, arch)
    if k.number("expert_count", default=0) > 0:
        raise UnsupportedModelError(path, "mixture-of-experts Gemma 4 (26B-A4B) is not implemented", subject=f"{arch}.expert_count")

    L = k.number("block_count", minimum=1)
    # Bound block_count by the tensors before anything loops or allocates per layer: a corrupt count
    # (say 2**30) would otherwise build billion-entry tuples and never return.
    n_blk = len({name.split(".")[1] for name in tensors if name.startswith("blk.") and name.count(".") >= 2})
    if L > n_blk:
        raise MetadataError(path, f"block_count {L} but the file has blk.* tensors for only {n_blk} layers: expected <= {n_blk}",
                            subject=f"{arch}.block_count")
    hidden = k.number("embedding_length", minimum=1)
    n_heads = k.number("attention.head_count", minimum=1)
    n_kv = k.per_layer("attention.head_count_kv", L)
    n_ff = k.per_layer("feed_forward_length", L)
    eps = k.number("attention.layer_norm_rms_epsilon", kind=float)
    if not eps > 0:
        raise MetadataError(path, f"expected > 0, got {eps}", subject=f"{arch}.attention.layer_norm_rms_epsilon")
    key_len = k.number("attention.key_length", minimum=2)
    val_len = k.number("attention.value_length", default=key_len)
    if val_len != key_len:
        raise MetadataError(path, f"value_length {val_len} != key_length {key_len}: only equal K/V head dims are supported",
                            subject=f"{arch}.attention.value_length")
    window = k.number("attention.sliding_window", default=0, minimum=0)
    rope_base = k.number("rope.freq_base", kind=float, default=10000.0)
    rope_base_swa = k.number("rope.freq_base_swa", kind=float, default=10000.0)
    softcap = k.number("final_logit_softcapping", kind=float, default=None)
    if softcap is not None and softcap <= 0:
        softcap = None  # llama.cpp treats 0 as "no softcap"
    ctx = k.number("context_length", default=0, minimum=0)

    if arch == "gemma4":
        key_len_swa = k.number("attention.key_length_swa", minimum=2)
        val_len_swa = k.number("attention.value_length_swa", default=key_len_swa)
        if val_len_swa != key_len_swa:
            raise MetadataError(path, f"value_length_swa {val_len_swa} != key_length_swa {key_len_swa}",
                                subject=f"{arch}.attention.value_length_swa")
        sliding = k.bool_array("attention.sliding_window_pattern", L)
        if sliding is None:
            raise MetadataError(path, f"missing required key (expected a bool array of {L} entries; llama.cpp requires it for gemma4)",
                                subject="gemma4.attention.sliding_window_pattern")
        rope_dims = k.number("rope.dimension_count", default=key_len, minimum=2)
        rope_dims_swa = k.number("rope.dimension_count_swa", default=key_len_swa, minimum=2)
        shared = k.number("attention.shared_kv_layers", default=0, minimum=0)
        ple = k.number("embedding_length_per_layer_input", default=0, minimum=0)
        query_scale, v_norm = 1.0, True
    else:
        key_len_swa = key_len
        sliding = k.bool_array("attention.sliding_window_pattern", L)
        if sliding is None:  # llama.cpp's default for gemma3 files without the key: period 6
            sliding = tuple(il % 6 < 5 for il in range(L))
        rope_dims = rope_dims_swa = k.number("rope.dimension_count", default=key_len, minimum=2)
        shared, ple = 0, 0
        query_scale, v_norm = 1.0 / math.sqrt(key_len), False
        if k.number("rope.scaling.factor", kind=float, default=1.0) != 1.0:
            raise UnsupportedModelError(path, "linear RoPE scaling (Gemma 3 >= 4B) is not implemented", subject="gemma3.rope.scaling.factor")

    # Cross-key consistency.
    for layer in range(L):
        if n_heads % n_kv[layer]:
            raise MetadataError(path, f"layer {layer}: head_count {n_heads} is not a multiple of head_count_kv {n_kv[layer]}",
                                subject=f"{arch}.attention.head_count_kv")
    if shared >= L:
        raise MetadataError(path, f"shared_kv_layers {shared} must be < block_count {L}", subject=f"{arch}.attention.shared_kv_layers")
    if any(sliding) and window < 1:
        raise MetadataError(path, "sliding layers need sliding_window >= 1", subject=f"{arch}.attention.sliding_window")
    for name, dims, head in (("rope.dimension_count", rope_dims, key_len), ("rope.dimension_count_swa", rope_dims_swa, key_len_swa)):
        if dims > head or dims % 2:
            raise MetadataError(path, f"{dims} must be even and <= the head dim {head}", subject=f"{arch}.{name}")
    if key_len % 2 or key_len_swa % 2:
        raise MetadataError(path, f"head dims must be even (NEOX RoPE), got {key_len}/{key_len_swa}", subject=f"{arch}.attention.key_length")

    if "token_embd.weight" not in tensors:
        from .errors import MissingTensorError

        raise MissingTensorError(path, "missing: the token embedding defines the vocabulary", subject="token_embd.weight")
    emb_ne = tensors["token_embd.weight"].ne
    vocab = emb_ne[1] if len(emb_ne) == 2 else 0
    tokens = md.get("tokenizer.ggml.tokens")
    if isinstance(tokens, list) and len(tokens) > vocab:
        raise MetadataError(path, f"{len(tokens)} tokenizer tokens but token_embd has only {vocab} rows",
                            subject="tokenizer.ggml.tokens")

    first_shared = L - shared
    k_eq_v = tuple(
        arch == "gemma4" and not sliding[i] and i < first_shared and f"blk.{i}.attn_v.weight" not in tensors
        for i in range(L)
    )
    out_scale = tuple(f"blk.{i}.layer_output_scale.weight" in tensors for i in range(L)) if arch == "gemma4" else (False,) * L

    def _token_id(key):
        v = md.get(key)
        return v if isinstance(v, int) and not isinstance(v, bool) else None

    try:
        return GemmaConfig(
            arch=arch, n_layers=L, hidden=hidden, n_heads=n_heads, vocab_size=vocab, context_length=ctx, rms_eps=eps,
            layer_is_sliding=sliding, head_dim_full=key_len, head_dim_sliding=key_len_swa, n_kv_heads=n_kv, n_ff=n_ff,
            sliding_window=window, rope_base_full=rope_base, rope_base_sliding=rope_base_swa, rope_dims_full=rope_dims,
            rope_dims_sliding=rope_dims_swa, shared_kv_layers=shared, ple_width=ple, final_softcap=softcap,
            query_scale=query_scale, v_norm=v_norm, layer_k_eq_v=k_eq_v, has_rope_freqs="rope_freqs.weight" in tensors,
            layer_has_output_scale=out_scale, tied_output="output.weight" not in tensors, embed_scale_mode=embed_scale_mode,
            bos_token_id=_token_id("tokenizer.ggml.bos_token_id"), eos_token_id=_token_id("tokenizer.ggml.eos_token_id"),
        )
    except ValueError as exc:  # e.g. a shared layer with no source of its type
        raise MetadataError(path, str(exc), subject=f"{arch}.attention.shared_kv_layers") from None
