"""12B-shaped stand-ins: GGUFs with the exact Gemma 4 12B text-decoder shapes and quant mix, random but valid.

The seed's question (does decode-MMQ beat WS on a 12B, and does batched decode through it keep single-user
answers) needs 12B shapes, not toys; the real file cannot be fetched everywhere. A stand-in has the real layout
(../shared/reference/perf-anchor.md): 48 layers, hidden 3840, 16 heads, KV heads 8 (sliding) / 1 (global),
head dims 256 / 512, global layers 5, 11, ..., 47 with k_eq_v (no attn_v), FFN 15360, window 1024, vocab
262144, tied embedding, and either llama-quantize's Q4_K_M mix (284 Q4_K, 45 Q6_K, 338 F32) or the QAT-like
Q4_0 mix (every linear weight Q4_0, token_embd Q6_K). Its scales follow the mini presets' conditioning
(harness/presets.py), so its logits are judged by the same checks.

Quantizing 12 G random floats in numpy takes hours, so matrices are written as valid random quant blocks with
the intended standard deviation (harness/fast_blocks.py), chunk-seeded and filled in parallel straight into the
file. Same (stand-in, seed) -> same bytes, whatever the number of processes. Reports label results on these
files synthetic (`STANDINS[name].synthetic`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.inventory import ExpectedTensor

from .fast_blocks import random_tensors_parallel, row_bytes
from .presets import Preset
from .quant_mix import base_name, tensor_type
from .tokenizer_table import large_vocab

GEMMA4_12B = Preset(
    "shape12b",
    "Gemma 4 12B text-decoder shapes (48 layers, hidden 3840, 16 heads, KV 8/1, head dims 256/512, FFN 15360, "
    "window 1024, vocab 262144), random valid quant blocks",
    n_layers=48, full_layers=tuple(range(5, 48, 6)), hidden=3840, n_heads=16, head_dim_sliding=256,
    head_dim_full=512, kv_heads_sliding=8, kv_heads_full=1, n_ff=15360, sliding_window=1024,
    k_eq_v_layers=tuple(range(5, 48, 6)), context_length=131072,
)
VOCAB_SIZE = 262144


@dataclass(frozen=True)
class StandIn:
    name: str
    variant: str  # "q4_k_m" or "q4_0": the only variant this stand-in is built in
    description: str
    preset: Preset = GEMMA4_12B
    vocab_size: int = VOCAB_SIZE
    synthetic: bool = True
    # Conditioning of a 262144-token vocabulary. With every embedding row alike the logits are ~iid Gaussian and,
    # under the softcap at 30, the median top1-top2 margin of 262144 of them is ~0.42 (numpy simulation over 12
    # embedding draws: 10th..90th percentile 0.38..0.52): below the fixtures' MEDIAN_MARGIN_MIN of 0.5, so the
    # golden oracle would judge mostly near-ties. Real vocabularies have a frequent head; here the first
    # `head_tokens` ordinary tokens get rows scaled to logit std `head_logit_std`, the rest `tail_logit_std`
    # (simulated median margin 1.01, 1st percentile of a 40-position median 0.57).
    head_tokens: int = 512
    head_logit_std: float = 10.0
    tail_logit_std: float = 4.5

    def config(self):
        return self.preset.config(self.vocab_size)

    def embedding_row_scales(self) -> np.ndarray:
        """float64 [vocab]: each token_embd row's scale relative to the preset's embed_std (1 for the specials and
        byte tokens, which no prompt of the suite uses)."""
        scales = np.full(self.vocab_size, self.tail_logit_std / self.preset.logit_std)
        first = 260  # after the 4 specials and 256 byte tokens (harness/tokenizer_table.py)
        scales[:first] = 1.0
        scales[first:first + self.head_tokens] = self.head_logit_std / self.preset.logit_std
        return scales


STANDINS: dict[str, StandIn] = {s.name: s for s in (
    StandIn("shape12b", "q4_k_m", "Gemma 4 12B shapes in the Q4_K_M mix (tied Q6_K lm-head): the bench's default 12B"),
    StandIn("shape12b-q4_0", "q4_0", "Gemma 4 12B shapes with Q4_0 linear weights (the QAT case), token_embd Q6_K"),
)}


def planned_types(standin: StandIn) -> dict[str, str]:
    """tensor name -> GGML type, for every tensor the stand-in holds."""
    from .fixtures import written_tensors

    tensors = written_tensors(standin.config())
    counts: dict[str, int] = {}
    for t in tensors:
        counts[base_name(t)] = counts.get(base_name(t), 0) + 1
    ranks: dict[str, int] = {}
    out = {}
    for t in tensors:
        b = base_name(t)
        if t.kind == "vector":
            out[t.name] = "F32"
        elif standin.variant == "q4_0":
            out[t.name] = "Q6_K" if b == "token_embd" else "Q4_0"  # perf-anchor.md's Q4_0 variant
        else:
            out[t.name] = tensor_type("q4_k_m", t, ranks.get(b, 0), counts[b])
        ranks[b] = ranks.get(b, 0) + 1
    return out


def _matrix_std(preset: Preset, t: ExpectedTensor) -> float:
    """The standard deviation harness.fixtures gives the same tensor of a mini preset."""
    return preset.embed_std if base_name(t) == "token_embd" else 1.0 / np.sqrt(t.ne[0])


_SCALE_FIELDS = {"Q6_K": (210, 208), "Q4_0": (18, 0), "Q8_0": (34, 0)}  # block bytes, offset of its fp16 d


def _scale_rows(path, offset: int, type_name: str, rows: int, cols: int, scales: np.ndarray) -> None:
    """Multiply every value of row r of a quantized matrix in the file by scales[r], through its blocks' fp16 d
    (rounded once to fp16, the codes untouched)."""
    if type_name not in _SCALE_FIELDS:
        raise ValueError(f"row scaling is written for {sorted(_SCALE_FIELDS)}, not {type_name}")
    block, at = _SCALE_FIELDS[type_name]
    rb = row_bytes(type_name, cols)
    mm = np.memmap(path, dtype=np.uint8, mode="r+", offset=offset, shape=(rows, rb // block, block))
    for r0 in range(0, rows, 16384):  # bounded temporaries
        d = mm[r0:r0 + 16384, :, at:at + 2].copy().view("<f2")[..., 0].astype(np.float32)
        d *= scales[r0:r0 + 16384, None].astype(np.float32)
        mm[r0:r0 + 16384, :, at:at + 2] = d.astype("<f2")[..., None].view(np.uint8)
    mm.flush()
    del mm


def write_standin(path: os.PathLike | str, standin: str | StandIn, seed: int = 0,
                  processes: int | None = None) -> Path:
    """Write a stand-in (a name from STANDINS, or a StandIn, e.g. a small one for tests) to exactly `path`
    (no caching; fixtures.fixture_path adds the cache, the lock and the atomic rename)."""
    from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter

    from .fixtures import _values, _write_metadata, written_tensors

    if isinstance(standin, str):
        if standin not in STANDINS:
            raise KeyError(f"unknown stand-in {standin!r}: expected one of {sorted(STANDINS)}")
        standin = STANDINS[standin]
    preset, cfg, tok = standin.preset, standin.config(), large_vocab(standin.vocab_size)
    types = planned_types(standin)
    tensors = written_tensors(cfg)

    w = GGUFWriter(str(path), "gemma4")
    _write_metadata(w, preset, cfg, tok, standin.variant)
    w.add_uint32("general.file_type", {"q4_0": 2, "q4_k_m": 15}[standin.variant])
    w.add_bool("general.synthetic", True)
    sizes = {}
    for t in tensors:
        type_name = types[t.name]
        if type_name == "F32":
            sizes[t.name] = 4 * int(np.prod(t.ne))
            w.add_tensor_info(t.name, tuple(reversed(t.ne)), np.dtype(np.float32), sizes[t.name])
        else:
            rows, rb = t.ne[1], row_bytes(type_name, t.ne[0])
            sizes[t.name] = rows * rb
            w.add_tensor_info(t.name, (rows, rb), np.dtype(np.uint8), sizes[t.name],
                              raw_dtype=GGMLQuantizationType[type_name])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    fout = w.fout[0]
    w.write_padding(fout, fout.tell())
    data_start = fout.tell()
    w.close()

    offsets, offset = {}, data_start
    for t in tensors:  # the writer's layout: tensors back to back, each padded to the data alignment
        offsets[t.name] = offset
        offset += w.ggml_pad(sizes[t.name], w.data_alignment)
    os.truncate(path, offset)

    with open(path, "r+b") as f:  # vectors: small, from the same value generator as the mini presets
        for t in tensors:
            if types[t.name] == "F32":
                f.seek(offsets[t.name])
                f.write(_values(preset, t, seed).astype("<f4").tobytes())
    random_tensors_parallel(path, [(offsets[t.name], types[t.name], t.ne[1], t.ne[0], _matrix_std(preset, t), t.name)
                                   for t in tensors if types[t.name] != "F32"], seed, processes=processes)
    _scale_rows(path, offsets["token_embd.weight"], types["token_embd.weight"], standin.vocab_size, cfg.hidden,
                standin.embedding_row_scales())

    # The data offsets are the writer's, recomputed here: check them against what a reader finds.
    reader = GGUFReader(str(path))
    found = {tensor.name: int(tensor.data_offset) for tensor in reader.tensors}
    wrong = [n for n in offsets if found.get(n) != offsets[n]]
    if wrong or len(found) != len(offsets):
        raise RuntimeError(f"{path}: tensor data offsets disagree with the GGUF reader for {wrong[:3]} "
                           f"({len(found)} tensors read, {len(offsets)} written)")
    return Path(path)
