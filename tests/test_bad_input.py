"""Bad input: every way a GGUF can be wrong raises one typed error that names the file, the tensor or key, and
what was expected.

Each case builds its bad file on purpose from a good synthetic fixture (keqv-mixed, Q8_0): either by patching bytes
at offsets taken from the good file's layout, or by rewriting it with gguf-py's GGUFWriter with one thing changed
(a key dropped or altered, a tensor dropped or reshaped). The random counterpart is tests/test_mutation.py.
"""
from __future__ import annotations

import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from gemma_oracle.engine.errors import (
    GemmaOracleError,
    GGUFFormatError,
    MetadataError,
    MissingTensorError,
    TensorDataOverlapError,
    TensorShapeError,
    UnsupportedModelError,
    UnsupportedQuantTypeError,
)
from gemma_oracle.engine.model_file import load_model
from gemma_oracle.harness.fixtures.cache import fixture_path

pytestmark = pytest.mark.synthetic

PRESET, VARIANT = "keqv-mixed", "q8_0"


# ----------------------------------------------------------------------------------------------- layout
@dataclass
class Layout:
    """Where things are in the good file (absolute byte offsets), read once with GGUFReader."""

    path: Path
    data: bytes
    kv_start: dict[str, int]  # key -> offset of the entry (its key-length u64)
    kv_value: dict[str, int]  # key -> offset of the value (for arrays: the element-type u32)
    t_start: dict[str, int]  # tensor -> offset of its info (name-length u64)
    t_ndims: dict[str, int]  # tensor -> offset of n_dims u32
    t_ne: dict[str, int]  # tensor -> offset of ne[0] u64
    t_type: dict[str, int]  # tensor -> offset of the ggml type u32
    t_offset: dict[str, int]  # tensor -> offset of the data-offset u64
    t_data: dict[str, tuple[int, int]]  # tensor -> (absolute data start, n_bytes)
    tensor_order: list[str] = field(default_factory=list)
    data_start: int = 0


def _layout(path: Path) -> Layout:
    from gguf import GGUFReader

    r = GGUFReader(str(path))
    lay = Layout(path, path.read_bytes(), {}, {}, {}, {}, {}, {}, {}, {})
    for key, f in r.fields.items():
        if key.startswith("GGUF."):
            continue
        lay.kv_start[key] = f.offset
        lay.kv_value[key] = f.offset + 8 + len(key.encode()) + 4
    for t in r.tensors:
        at = t.field.offset
        n = len(t.name.encode())
        nd = len(t.shape)
        lay.t_start[t.name] = at
        lay.t_ndims[t.name] = at + 8 + n
        lay.t_ne[t.name] = at + 8 + n + 4
        lay.t_type[t.name] = at + 8 + n + 4 + 8 * nd
        lay.t_offset[t.name] = at + 8 + n + 4 + 8 * nd + 4
        lay.t_data[t.name] = (int(t.data_offset), int(t.n_bytes))
        lay.tensor_order.append(t.name)
    lay.data_start = int(r.data_offset)
    return lay


@pytest.fixture(scope="session")
def good(tmp_path_factory) -> Layout:
    path = fixture_path(PRESET, VARIANT, directory=tmp_path_factory.mktemp("bad-input-fixtures"))
    load_model(path)  # the base file itself must be fine
    return _layout(path)


# ----------------------------------------------------------------------------------------------- builders
def patched(*edits: tuple[str, Callable[[Layout], int], bytes]):
    """Copy the good file and overwrite bytes: each edit is (struct-free label, offset function, new bytes)."""

    def build(lay: Layout, dst: Path) -> None:
        buf = bytearray(lay.data)
        for _, where, new in edits:
            at = where(lay)
            buf[at : at + len(new)] = new
        dst.write_bytes(bytes(buf))

    return build


def u32(v: int) -> bytes:
    return struct.pack("<I", v)


def u64(v: int) -> bytes:
    return struct.pack("<Q", v)


def truncated(length: Callable[[Layout], int]):
    def build(lay: Layout, dst: Path) -> None:
        dst.write_bytes(lay.data[: length(lay)])

    return build


def raw(content: bytes):
    def build(lay: Layout, dst: Path) -> None:
        dst.write_bytes(content)

    return build


def rewritten(
    *,
    arch: str = "gemma4",
    set_kv: dict[str, tuple[Any, Any, Any]] | None = None,
    drop_kv: tuple[str, ...] = (),
    drop_tensors: tuple[str, ...] = (),
    replace_tensors: dict[str, Callable[[np.ndarray], tuple[np.ndarray, Any]]] | None = None,
    copy_tensors: dict[str, str] | None = None,
):
    """Rewrite the good file with GGUFWriter: every key and tensor copied, except the changes named.

    set_kv: key -> (value, GGUFValueType name, array element type name or None); keys under gemma4.* move to
    `arch`.*; replace_tensors: name -> f(float32 values in numpy order) -> (array, raw ggml type or None);
    copy_tensors: new name -> existing name whose data it gets.
    """

    def build(lay: Layout, dst: Path) -> None:
        from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
        from gguf.quants import dequantize

        r = GGUFReader(str(lay.path))
        w = GGUFWriter(str(dst), arch)
        changes = dict(set_kv or {})
        for key, f in r.fields.items():
            if key.startswith("GGUF.") or key == "general.architecture" or key in drop_kv or key in changes:
                continue
            out_key = arch + key[len("gemma4") :] if key.startswith("gemma4.") else key
            vtype = f.types[0]
            sub = f.types[-1] if vtype == GGUFValueType.ARRAY else None
            w.add_key_value(out_key, f.contents(), vtype, sub)
        for key, (value, vtype, sub) in changes.items():
            w.add_key_value(key, value, GGUFValueType[vtype], GGUFValueType[sub] if sub else None)
        for t in r.tensors:
            if t.name in drop_tensors:
                continue
            if replace_tensors and t.name in replace_tensors:
                values = dequantize(np.asarray(t.data), t.tensor_type).astype(np.float32)
                data, rtype = replace_tensors[t.name](values)
                w.add_tensor(t.name, data, raw_dtype=rtype)
            elif t.tensor_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
                w.add_tensor(t.name, np.array(t.data))
            else:
                w.add_tensor(t.name, np.array(t.data), raw_dtype=t.tensor_type)
        by_name = {t.name: t for t in r.tensors}
        for new, old in (copy_tensors or {}).items():
            t = by_name[old]
            plain = t.tensor_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16)
            w.add_tensor(new, np.array(t.data), raw_dtype=None if plain else t.tensor_type)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()

    return build


def _q8_0(values: np.ndarray):
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    return quantize(values, GGMLQuantizationType.Q8_0), GGMLQuantizationType.Q8_0


# ----------------------------------------------------------------------------------------------- cases
@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[Layout, Path], None]
    error: type[GemmaOracleError]
    subject: str | None  # expected err.subject (and a substring of the message)
    phrases: tuple[str, ...]  # what was expected / what was found, as the message words it


G = "gemma4."
Q = "blk.0.attn_q.weight"
GATE = "blk.0.ffn_gate.weight"
LAST = "blk.2.layer_output_scale.weight"  # the last tensor in the file

# Gemma 3 has no k_eq_v layers: relabelling the fixture as gemma3 needs an attn_v on layer 1 (a copy of attn_k).
GEMMA3_V = {"blk.1.attn_v.weight": "blk.1.attn_k.weight"}

CASES = [
    # --- the container: empty, not GGUF, truncated ---------------------------------------------------------
    Case("empty-file", raw(b""), GGUFFormatError, None, ("empty file", "expected a GGUF header")),
    Case("text-file", raw(b"this is not a model\n" * 10), GGUFFormatError, None, ("wrong magic", "expected b'GGUF'")),
    Case("wrong-magic-GGML", patched(("magic", lambda l: 0, b"GGML")), GGUFFormatError, None,
         ("wrong magic b'GGML'", "expected b'GGUF'")),
    Case("wrong-magic-zeros", patched(("magic", lambda l: 0, b"\0\0\0\0")), GGUFFormatError, None,
         ("wrong magic", "not a GGUF file")),
    Case("truncated-in-magic", truncated(lambda l: 3), GGUFFormatError, None, ("truncated header", "magic needs 4 bytes")),
    Case("truncated-in-counts", truncated(lambda l: 12), GGUFFormatError, None,
         ("truncated header", "tensor count needs 8 bytes at offset 8", "file has 12")),
    # (cut early, the file is too short for the header's counts: that check fires first)
    Case("truncated-early-counts-implausible", truncated(lambda l: l.kv_start[G + "block_count"] + 12), GGUFFormatError,
         None, ("header claims 36 metadata entries and 44 tensors", "the file is only")),
    Case("truncated-in-key", truncated(lambda l: l.kv_start["tokenizer.ggml.bos_token_id"] + 12), GGUFFormatError, None,
         ("truncated header", "key of metadata entry 29 needs 27 bytes")),
    Case("truncated-in-scalar-value", truncated(lambda l: l.kv_value["tokenizer.ggml.bos_token_id"] + 2), GGUFFormatError,
         None, ("truncated header", "value of tokenizer.ggml.bos_token_id needs 4 bytes")),
    Case("truncated-in-token-array", truncated(lambda l: l.kv_start["tokenizer.ggml.scores"] - 3), GGUFFormatError, None,
         ("truncated header", "string value of tokenizer.ggml.tokens needs")),
    Case("truncated-token-array-cannot-fit", truncated(lambda l: l.kv_value["tokenizer.ggml.tokens"] + 500), GGUFFormatError,
         "tokenizer.ggml.tokens", ("array of 512 elements cannot fit in the 488 bytes left",)),
    Case("truncated-in-tensor-info", truncated(lambda l: l.t_type[Q] + 2), GGUFFormatError, None,
         ("truncated header", f"type of {Q} needs 4 bytes")),
    Case("truncated-at-data-start", truncated(lambda l: l.data_start), GGUFFormatError, "token_embd.weight",
         ("data out of section", "tensor needs bytes", "expected the tensor's data inside it", "the file is truncated")),
    Case("truncated-in-tensor-data", truncated(lambda l: l.t_data[GATE][0] + 1000), GGUFFormatError, GATE,
         ("data out of section", "tensor needs bytes")),
    Case("truncated-last-data-byte", truncated(lambda l: sum(l.t_data[LAST]) - 1), GGUFFormatError, LAST,
         ("data out of section", "the data section is bytes 14816..2014371")),
    # --- header fields -------------------------------------------------------------------------------------
    Case("version-1", patched(("version", lambda l: 4, u32(1))), GGUFFormatError, None,
         ("GGUF version 1", "expected one of (2, 3)")),
    Case("version-4", patched(("version", lambda l: 4, u32(4))), GGUFFormatError, None,
         ("GGUF version 4", "expected one of (2, 3)")),
    Case("version-big-endian", patched(("version", lambda l: 4, struct.pack(">I", 3))), GGUFFormatError, None,
         ("big-endian", "expected one of (2, 3)")),
    Case("huge-tensor-count", patched(("n_tensors", lambda l: 8, u64(1 << 62))), GGUFFormatError, None,
         ("header claims", "tensors", "the file is only")),
    Case("huge-kv-count", patched(("n_kv", lambda l: 16, u64(1 << 40))), GGUFFormatError, None,
         ("header claims", "metadata entries")),
    Case("huge-key-length", patched(("key len", lambda l: l.kv_start[G + "block_count"], u64(1 << 63))), GGUFFormatError, None,
         ("truncated header", "key of metadata entry", f"needs {1 << 63} bytes")),
    Case("huge-string-value-length", patched(("len", lambda l: l.kv_value["general.name"], u64(1 << 50))),
         GGUFFormatError, None, ("truncated header", "string value of general.name", f"needs {1 << 50} bytes")),
    Case("huge-array-count", patched(("count", lambda l: l.kv_value["tokenizer.ggml.tokens"] + 4, u64(1 << 60))),
         GGUFFormatError, "tokenizer.ggml.tokens", (f"array of {1 << 60} elements cannot fit",)),
    Case("unknown-value-type", patched(("vtype", lambda l: l.kv_value[G + "block_count"] - 4, u32(13))),
         GGUFFormatError, G + "block_count", ("unknown metadata value type 13",)),
    Case("unknown-array-element-type", patched(("etype", lambda l: l.kv_value["tokenizer.ggml.scores"], u32(77))),
         GGUFFormatError, "tokenizer.ggml.scores", ("unknown array element type 77",)),
    Case("duplicate-key", patched(("rename", lambda l: l.kv_start["tokenizer.ggml.eos_token_id"] + 8 + 15, b"b")),
         GGUFFormatError, "tokenizer.ggml.bos_token_id", ("duplicate metadata key",)),
    Case("alignment-not-power-of-two",
         rewritten(set_kv={"general.alignment": (48, "UINT32", None)}), GGUFFormatError, "general.alignment",
         ("expected a u32 power of two", "value 48")),
    Case("key-not-utf8", patched(("key", lambda l: l.kv_start["general.name"] + 8, b"\xff\xfe")), GGUFFormatError, None,
         ("key of metadata entry", "not valid UTF-8")),
    Case("n-dims-5", patched(("n_dims", lambda l: l.t_ndims[Q], u32(5))), GGUFFormatError, Q, ("n_dims 5", "expected 1..4")),
    Case("n-dims-0", patched(("n_dims", lambda l: l.t_ndims[Q], u32(0))), GGUFFormatError, Q, ("n_dims 0", "expected 1..4")),
    Case("ne-zero", patched(("ne0", lambda l: l.t_ne[Q], u64(0))), GGUFFormatError, Q, ("implausible shape ne=[0, 256]",)),
    Case("ne-not-block-multiple", patched(("ne0", lambda l: l.t_ne[Q], u64(250))), GGUFFormatError, Q,
         ("ne[0]=250 is not a multiple of the Q8_0 block size 32",)),
    Case("ne-huge", patched(("ne1", lambda l: l.t_ne[Q] + 8, u64(1 << 50))), GGUFFormatError, Q, ("implausible shape",)),
    Case("data-offset-misaligned", patched(("off", lambda l: l.t_offset[Q], u64(33))), GGUFFormatError, Q,
         ("data offset 33 is not aligned to 32",)),
    Case("data-offset-past-end", patched(("off", lambda l: l.t_offset[Q], u64(1 << 40))), GGUFFormatError, Q,
         ("data out of section", f"data offset {1 << 40}", "the data section is bytes 14816..2014400",
          "the data offset is wrong")),
    Case("data-offset-crosses-end", patched(("off", lambda l: l.t_offset[Q], u64(2014400 - 14816 - 32))),
         GGUFFormatError, Q, ("data out of section", f"tensor needs bytes {2014400 - 32}..{2014400 - 32 + 69632}",
                              "the data section is bytes 14816..2014400")),
    # (data offsets are relative to the data section at 14816; attn_q holds bytes 141440..211072 of it, attn_k
    # 211072..245888; an overlap names the later-starting tensor as the subject, the other in the message)
    Case("data-offset-same-as-other", patched(("off", lambda l: l.t_offset[Q], u64(211072))), TensorDataOverlapError,
         "blk.0.attn_k.weight", (f"data bytes {14816 + 211072}..{14816 + 245888} overlap the data of tensor {Q} "
                                 f"(bytes {14816 + 211072}..{14816 + 280704}) by 34816 bytes",
                                 "expected every tensor's data disjoint")),
    Case("data-offset-inside-other", patched(("off", lambda l: l.t_offset["blk.0.attn_k.weight"], u64(141440 + 64))),
         TensorDataOverlapError, "blk.0.attn_k.weight", (f"overlap the data of tensor {Q}", "by 34816 bytes")),
    Case("data-offset-onto-token_embd", patched(("off", lambda l: l.t_offset[Q], u64(0))), TensorDataOverlapError, Q,
         ("overlap the data of tensor token_embd.weight (bytes 14816..154080)", "by 69632 bytes")),
    Case("duplicate-tensor-name", patched(("name", lambda l: l.t_start["blk.0.attn_q.weight"] + 8 + 11, b"k")),
         GGUFFormatError, "blk.0.attn_k.weight", ("duplicate tensor name",)),
    # --- tensor types ---------------------------------------------------------------------------------------
    Case("unknown-type-id-99", patched(("type", lambda l: l.t_type[Q], u32(99))), UnsupportedQuantTypeError, Q,
         ("ggml type id 99 is not supported", "expected one of", "Q8_0 (8)")),
    Case("unknown-type-id-huge", patched(("type", lambda l: l.t_type[Q], u32(0xFFFFFFFF))), UnsupportedQuantTypeError, Q,
         (f"ggml type id {0xFFFFFFFF} is not supported", "expected one of")),
    Case("gguf-type-Q4_1", patched(("type", lambda l: l.t_type[Q], u32(3))), UnsupportedQuantTypeError, Q,
         ("ggml type id 3 is not supported", "expected one of")),
    Case("gguf-type-Q2_K", patched(("type", lambda l: l.t_type[Q], u32(10))), UnsupportedQuantTypeError, Q,
         ("ggml type id 10 is not supported", "expected one of", "Q4_K (12)")),
    Case("gguf-type-I8", patched(("type", lambda l: l.t_type["output_norm.weight"], u32(24))), UnsupportedQuantTypeError,
         "output_norm.weight", ("ggml type id 24 is not supported",)),
    Case("vector-stored-as-Q8_0", rewritten(replace_tensors={"output_norm.weight": _q8_0}), UnsupportedQuantTypeError,
         "output_norm.weight", ("type Q8_0 not allowed for a vector", "expected one of ('F32', 'F16', 'BF16')")),
    # --- tensor inventory -----------------------------------------------------------------------------------
    Case("missing-attn_q", rewritten(drop_tensors=("blk.1.attn_q.weight",)), MissingTensorError, "blk.1.attn_q.weight",
         ("missing", "expected a matrix with ne=[256, 256]")),
    Case("missing-norm", rewritten(drop_tensors=("blk.2.ffn_norm.weight",)), MissingTensorError, "blk.2.ffn_norm.weight",
         ("missing", "expected a vector with ne=[256]")),
    Case("missing-token_embd", rewritten(drop_tensors=("token_embd.weight",)), MissingTensorError, "token_embd.weight",
         ("missing", "defines the vocabulary")),
    Case("missing-attn_k", rewritten(drop_tensors=("blk.1.attn_k.weight",)), MissingTensorError, "blk.1.attn_k.weight",
         ("missing", "expected a matrix with ne=[256, 128]")),
    Case("shape-transposed", rewritten(replace_tensors={GATE: lambda v: (np.ascontiguousarray(v.T), None)}),
         TensorShapeError, GATE, ("ne=[512, 256]", "expected ne=[256, 512]")),
    Case("shape-short-vector", rewritten(replace_tensors={"output_norm.weight": lambda v: (v[:128].copy(), None)}),
         TensorShapeError, "output_norm.weight", ("ne=[128]", "expected ne=[256]")),
    Case("shape-patched-ne", patched(("ne0", lambda l: l.t_ne["blk.0.attn_norm.weight"], u64(128))), TensorShapeError,
         "blk.0.attn_norm.weight", ("ne=[128]", "expected ne=[256]")),
    Case("shape-extra-dim", rewritten(replace_tensors={"output_norm.weight": lambda v: (v.reshape(1, 256), None)}),
         TensorShapeError, "output_norm.weight", ("ne=[256, 1]", "expected ne=[256]")),
    # --- metadata: missing, mistyped, inconsistent ----------------------------------------------------------
    Case("missing-embedding_length", rewritten(drop_kv=(G + "embedding_length",)), MetadataError, G + "embedding_length",
         ("missing required key", "expected a int")),
    Case("missing-block_count", rewritten(drop_kv=(G + "block_count",)), MetadataError, G + "block_count",
         ("missing required key",)),
    Case("missing-head_count_kv", rewritten(drop_kv=(G + "attention.head_count_kv",)), MetadataError,
         G + "attention.head_count_kv", ("missing required key", "expected an integer or a per-layer integer array")),
    Case("missing-sliding_window_pattern", rewritten(drop_kv=(G + "attention.sliding_window_pattern",)), MetadataError,
         G + "attention.sliding_window_pattern", ("missing required key", "expected a bool array of 3 entries")),
    Case("missing-rms_eps", rewritten(drop_kv=(G + "attention.layer_norm_rms_epsilon",)), MetadataError,
         G + "attention.layer_norm_rms_epsilon", ("missing required key", "expected a float")),
    Case("block_count-as-string", rewritten(set_kv={G + "block_count": ("3", "STRING", None)}), MetadataError,
         G + "block_count", ("expected a scalar int", "got str")),
    Case("rms_eps-negative", rewritten(set_kv={G + "attention.layer_norm_rms_epsilon": (-1e-6, "FLOAT32", None)}),
         MetadataError, G + "attention.layer_norm_rms_epsilon", ("expected > 0",)),
    Case("head_count-not-multiple-of-kv", rewritten(set_kv={G + "attention.head_count_kv": (3, "UINT32", None)}),
         MetadataError, G + "attention.head_count_kv", ("head_count 4 is not a multiple of head_count_kv 3",)),
    Case("head_count_kv-array-wrong-length",
         rewritten(set_kv={G + "attention.head_count_kv": ([2, 2], "ARRAY", "UINT32")}), MetadataError,
         G + "attention.head_count_kv", ("expected 3 integers (one per layer), got 2 entries",)),
    Case("sliding_window_pattern-too-short",
         rewritten(set_kv={G + "attention.sliding_window_pattern": ([True, False], "ARRAY", "BOOL")}), MetadataError,
         G + "attention.sliding_window_pattern", ("expected a bool array with one entry per layer (3), got 2",)),
    Case("sliding_window_pattern-not-bool",
         rewritten(set_kv={G + "attention.sliding_window_pattern": ([1, 0, 0], "ARRAY", "UINT8")}), MetadataError,
         G + "attention.sliding_window_pattern", ("expected a bool array",)),
    Case("block_count-beyond-tensors",
         rewritten(set_kv={G + "block_count": (4, "UINT32", None),
                           G + "attention.sliding_window_pattern": ([True, False, False, True], "ARRAY", "BOOL")}),
         MetadataError, G + "block_count", ("block_count 4", "tensors for only 3 layers", "expected <= 3")),
    Case("block_count-huge", patched(("block_count", lambda l: l.kv_value[G + "block_count"], u32(1 << 30))),
         MetadataError, G + "block_count", (f"block_count {1 << 30}", "expected <= 3")),
    Case("value_length-ne-key_length", rewritten(set_kv={G + "attention.value_length": (32, "UINT32", None)}),
         MetadataError, G + "attention.value_length", ("value_length 32 != key_length 64",)),
    Case("shared_kv_layers-ge-block_count", rewritten(set_kv={G + "attention.shared_kv_layers": (3, "UINT32", None)}),
         MetadataError, G + "attention.shared_kv_layers", ("shared_kv_layers 3 must be < block_count 3",)),
    Case("rope-dims-odd", rewritten(set_kv={G + "rope.dimension_count": (63, "UINT32", None)}), MetadataError,
         G + "rope.dimension_count", ("63 must be even and <= the head dim 64",)),
    Case("sliding_window-zero", rewritten(set_kv={G + "attention.sliding_window": (0, "UINT32", None)}), MetadataError,
         G + "attention.sliding_window", ("sliding layers need sliding_window >= 1",)),
    Case("more-tokens-than-embedding-rows",
         rewritten(set_kv={"tokenizer.ggml.tokens": ([f"t{i}" for i in range(513)], "ARRAY", "STRING")}), MetadataError,
         "tokenizer.ggml.tokens", ("513 tokenizer tokens but token_embd has only 512 rows",)),
    Case("embedding_length-vs-tensors", rewritten(set_kv={G + "embedding_length": (320, "UINT32", None)}),
         TensorShapeError, "token_embd.weight", ("ne=[256, 512]", "expected ne=[320, 512] from the metadata")),
    Case("key_length-vs-tensors",
         rewritten(set_kv={G + "attention.key_length": (32, "UINT32", None), G + "attention.value_length": (32, "UINT32", None),
                           G + "rope.dimension_count": (32, "UINT32", None)}),
         TensorShapeError, "rope_freqs.weight", ("ne=[32]", "expected ne=[16]")),
    # --- models we do not run -------------------------------------------------------------------------------
    Case("architecture-llama", rewritten(arch="llama"), UnsupportedModelError, "general.architecture",
         ("architecture 'llama' is not supported", "expected one of ('gemma4', 'gemma3')")),
    Case("architecture-patched-gemma5", patched(("arch", lambda l: l.kv_value["general.architecture"] + 8 + 5, b"5")),
         UnsupportedModelError, "general.architecture", ("architecture 'gemma5' is not supported", "expected one of")),
    Case("architecture-not-a-string", rewritten(set_kv={"general.architecture": (7, "UINT32", None)}),
         UnsupportedModelError, "general.architecture", ("architecture 7 is not supported",)),
    Case("architecture-key-missing", patched(("key", lambda l: l.kv_start["general.architecture"] + 8 + 19, b"X")),
         UnsupportedModelError, "general.architecture", ("architecture None is not supported", "expected one of")),
    Case("mixture-of-experts", rewritten(set_kv={G + "expert_count": (8, "UINT32", None)}), UnsupportedModelError,
         G + "expert_count", ("mixture-of-experts",)),
    Case("gemma3-rope-scaling", rewritten(arch="gemma3", set_kv={"gemma3.rope.scaling.factor": (8.0, "FLOAT32", None)}, copy_tensors=GEMMA3_V),
         UnsupportedModelError, "gemma3.rope.scaling.factor", ("linear RoPE scaling", "not implemented")),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_file_raises_typed_error(case: Case, good: Layout, tmp_path: Path):
    bad = tmp_path / f"{case.id}.gguf"
    case.build(good, bad)
    with pytest.raises(GemmaOracleError) as info:
        load_model(bad)
    err = info.value
    text = str(err)
    assert type(err) is case.error, f"expected {case.error.__name__}, got {type(err).__name__}: {text}"
    assert err.path == str(bad)
    assert str(bad) in text
    assert err.subject == case.subject, text
    if case.subject:
        assert case.subject in text
    for phrase in case.phrases:
        assert phrase in text, f"{phrase!r} not in {text!r}"


def test_case_ids_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))


def test_missing_path(tmp_path: Path):
    missing = tmp_path / "no-such-dir" / "model.gguf"
    with pytest.raises(GGUFFormatError) as info:
        load_model(missing)
    assert str(missing) in str(info.value)
    assert "cannot read file" in str(info.value)
    assert "No such file" in str(info.value)


def test_directory_path(tmp_path: Path):
    with pytest.raises(GGUFFormatError) as info:
        load_model(tmp_path)
    assert str(tmp_path) in str(info.value)
    assert "cannot read file" in str(info.value)


def test_unreadable_file(tmp_path: Path, good: Layout):
    import os

    bad = tmp_path / "unreadable.gguf"
    shutil.copyfile(good.path, bad)
    bad.chmod(0)
    try:
        if os.access(bad, os.R_OK):  # root reads anything
            pytest.skip("running as a user who can read mode-000 files")
        with pytest.raises(GGUFFormatError) as info:
            load_model(bad)
        assert str(bad) in str(info.value) and "Permission denied" in str(info.value)
    finally:
        bad.chmod(0o644)


def test_untouched_rewrite_loads(good: Layout, tmp_path: Path):
    """The rewriting builder itself is faithful: with no change the copy loads like the original."""
    copy = tmp_path / "copy.gguf"
    rewritten()(good, copy)
    a, b = load_model(good.path), load_model(copy)
    assert a.config == b.config
    assert {n: (t.type_name, t.ne) for n, t in a.tensors.items()} == {n: (t.type_name, t.ne) for n, t in b.tensors.items()}


def test_gemma3_rewrite_loads(good: Layout, tmp_path: Path):
    """The gemma3 relabelling used by the rope-scaling case is otherwise a loadable file, so that case tests one thing."""
    copy = tmp_path / "gemma3.gguf"
    rewritten(arch="gemma3", copy_tensors=GEMMA3_V)(good, copy)
    m = load_model(copy)
    assert m.config.arch == "gemma3"


def test_data_ranges_adjacent_and_zero_size_are_not_overlaps():
    """The range check on its own: touching ranges and zero-size tensors pass; one shared byte is an overlap that
    names both tensors, whichever order the file lists them in."""
    from gemma_oracle.engine.gguf_file import check_data_ranges

    check_data_ranges("f.gguf", 64, 264, [("a", 0, 100), ("b", 100, 100), ("empty", 32, 0), ("empty2", 200, 0)])
    for listed in ([("a", 0, 100), ("b", 96, 32)], [("b", 96, 32), ("a", 0, 100)]):
        with pytest.raises(TensorDataOverlapError) as info:
            check_data_ranges("f.gguf", 64, 264, listed)
        err = info.value
        assert (err.subject, err.other) == ("b", "a") and err.ranges == {"a": (64, 164), "b": (160, 192)}
        assert "f.gguf [b]: data bytes 160..192 overlap the data of tensor a (bytes 64..164) by 4 bytes" in str(err)
    with pytest.raises(GGUFFormatError, match=r"f.gguf \[b\]: data out of section: tensor needs bytes 224..288 .*"
                                              r"the data section is bytes 64..264"):
        check_data_ranges("f.gguf", 64, 264, [("a", 0, 100), ("b", 160, 64)])
