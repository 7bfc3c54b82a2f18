"""Numpy references for kernels/cuda/packed_mma.cu's operands, from two independent descriptions:

* `pack(raw, type_name, n_cols)`: the packed weight records (Q4_0, Q4_K, Q6_K) as the .cu header's layout states
  them (nibble i of word s of lane 4g + t holds value (row, column) of a table written from that text; Q6_K's high
  bits in slot i of the lane's high-plane word), bitwise what pack_<t> writes;
* `x_fragments(x)`: the fragment-ordered fp16 activation records and inv, bitwise what packed_x writes (the words
  `x_written` names: padding tokens' are left unwritten);
* `weights_from_registers(packed, ...)` and `activations_from_registers(xf, ...)`: the inverse, through what the
  kernel does with each loaded word (which nibbles make which A register, which scale word applies) and the PTX ISA's
  m16n8k16 fragment tables (which (row, k) each register half is). tests/test_kernels_packed_host.py checks that
  they give back dequant_f16 / f16_rows exactly: the layout and the kernel's register use agree with the mma.
"""
from __future__ import annotations

import numpy as np

from gemma_oracle.kernels.reference.f16_operands import f16_rows
from gemma_oracle.kernels.reference.dequant import block_codes

GROUP = 64
BIAS = {"Q4_0": 8, "Q4_K": 0, "Q6_K": 32}  # nibble (Q6_K: 6-bit value) = code + BIAS
RECORD_WORDS = {"Q4_0": 144, "Q4_K": 160, "Q6_K": 224}  # uint32 words of a (m16 tile, group) record
PADDED_Q4_0_WORDS = 160  # GEMMA_ORACLE_PACKED_Q4_0_PAD=1: Q4_0 records padded with zero words to 640 bytes


def record_words(type_name: str) -> int:
    import os

    return PADDED_Q4_0_WORDS if type_name == "Q4_0" and os.environ.get("GEMMA_ORACLE_PACKED_Q4_0_PAD", "0").strip() \
        == "1" else RECORD_WORDS[type_name]
HIGH_AT, Q6_SCALE_AT = 128, 192  # Q6_K: word offsets of the high-bit plane and the scales in a record

# The layout text: nibble i of a lane's step word is value (row offset, column offset) of the step's 16 x 16 piece,
# with the lane's g and t: rows g / g + 8, columns c = 2t, 2t + 1, 2t + 8, 2t + 9.
_NIBBLE_AT = ((0, 0), (8, 0), (0, 8), (8, 8), (0, 1), (8, 1), (0, 9), (8, 9))  # (row + g, column - 2t)

# PTX ISA, mma.m16n8k16 with .f16 A (row) and B (col): register -> (row, k) of its low and high halves, lane (g, t)
_PTX_A = {0: ((0, 0), (0, 1)), 1: ((8, 0), (8, 1)), 2: ((0, 8), (0, 9)), 3: ((8, 8), (8, 9))}  # (row - g, k - 2t)
_PTX_B = {0: (0, 1), 1: (8, 9)}  # register -> (k - 2t) of its low and high halves; column (token) g
# packed_mma.cu's pk_dequant_step: A register r takes these two nibbles (low half, high half) of the step word, and
# the scale word of row g (registers 0, 2) or g + 8 (1, 3)
_KERNEL_A_NIBBLES = {0: (0, 4), 1: (1, 5), 2: (2, 6), 3: (3, 7)}
_KERNEL_A_ROW8 = {0: False, 1: True, 2: False, 3: True}


def _codes_and_scales(raw: np.ndarray, type_name: str, n_cols: int):
    """(values uint32 [tiles * 16, n_cols] (code + BIAS), d16 and negm16 fp16 [tiles * 16, n_cols / S]) with rows past
    the matrix code 0 (value BIAS) and scale 0, as the kernel stages them; S = 32 values a scale (Q6_K: 16)."""
    raw = np.asarray(raw)
    rows = raw.shape[0]
    codes, d, m = block_codes(raw.reshape(-1), type_name)
    vals = (codes.reshape(rows, n_cols) + BIAS[type_name]).astype(np.int64)
    if vals.max(initial=0) >= (64 if type_name == "Q6_K" else 16) or vals.min(initial=0) < 0:
        raise ValueError(f"{type_name}: codes outside the packed range")
    vals = vals.astype(np.uint32)
    d16 = d.reshape(rows, -1).astype(np.float16)
    negm16 = (-m).reshape(rows, -1).astype(np.float16)
    pad = -rows % 16
    if pad:
        # the pack kernel stages code 0 past the matrix (mmq_stage_or_zero), and packs it as 0 + BIAS
        vals = np.concatenate([vals, np.full((pad, n_cols), BIAS[type_name], np.uint32)])
        d16 = np.concatenate([d16, np.zeros((pad, d16.shape[1]), np.float16)])
        # past the matrix the kernel stages d = 0, m = 0, so its scale word holds fp16(-0.0)
        negm16 = np.concatenate([negm16, np.full((pad, d16.shape[1]), -0.0, np.float16)])
    return vals, d16, negm16


def pack(raw: np.ndarray, type_name: str, n_cols: int) -> np.ndarray:
    """uint32 [tiles * groups * RECORD_WORDS]: the packed records of GGUF rows `raw` (uint8 [rows, row_bytes])."""
    if type_name not in BIAS or n_cols % GROUP:
        raise ValueError(f"pack: {type_name} rows of {n_cols} values: need Q4_0 / Q4_K / Q6_K and a multiple of {GROUP}")
    vals, d16, negm16 = _codes_and_scales(raw, type_name, n_cols)
    tiles, groups = vals.shape[0] // 16, n_cols // GROUP
    out = np.zeros((tiles, groups, record_words(type_name)), np.uint32)
    for lane in range(32):
        g, t = divmod(lane, 4)
        for s in range(4):
            word, high = np.zeros((tiles, groups), np.uint32), np.zeros((tiles, groups), np.uint32)
            for i, (dr, dc) in enumerate(_NIBBLE_AT):
                cols = np.arange(groups) * GROUP + 16 * s + 2 * t + dc
                v = vals[g + dr::16][:, cols]
                word |= (v & np.uint32(15)) << np.uint32(4 * i)
                high |= (v >> np.uint32(4)) << np.uint32(4 * i + 2 * (s & 1))  # slot i, bits 2 (s & 1) ..
            out[:, :, 4 * lane + s] = word
            if type_name == "Q6_K":
                out[:, :, HIGH_AT + 2 * lane + s // 2] |= high
    sc = d16.view(np.uint16).astype(np.uint32) | (negm16.view(np.uint16).astype(np.uint32) << np.uint32(16))
    for g in range(8):
        if type_name == "Q6_K":  # half2 {d(step 0), d(step 1)}, {d(2), d(3)} of row g, then of row g + 8
            d_bits = d16.view(np.uint16).astype(np.uint32)
            for k, (dr, p) in enumerate(((0, 0), (0, 1), (8, 0), (8, 1))):
                lo, hi = d_bits[g + dr::16][:, 2 * p::4], d_bits[g + dr::16][:, 2 * p + 1::4]
                out[:, :, Q6_SCALE_AT + 4 * g + k] = lo | (hi << np.uint32(16))
        elif type_name == "Q4_0":  # half2 {d(row g), d(row g + 8)} of block 0, then of block 1 (offset -0)
            d_bits = d16.view(np.uint16).astype(np.uint32)
            for b in range(2):
                out[:, :, 128 + 2 * g + b] = d_bits[g::16][:, b::2] | (d_bits[g + 8::16][:, b::2] << np.uint32(16))
        else:
            for k, (dr, b) in enumerate(((0, 0), (8, 0), (0, 1), (8, 1))):
                out[:, :, 128 + 4 * g + k] = sc[g + dr::16][:, b::2]
    return out.reshape(-1)


def x_fragments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(xf uint32 [ceil(N / 8) * K / 64 * 256], inv float32 [N]): f16_rows(x) in the activation record order."""
    x16, inv = f16_rows(x)
    n, k = x16.shape
    tiles = -(-n // 8)
    padded = np.zeros((8 * tiles, k), np.float16)
    padded[:n] = x16
    # [h, g, j, p, s', b, t, e] (k = 64 j + 16 (2 p + s') + 8 b + 2 t + e) -> [h, j, p, g, t, s', b, e]
    v = padded.reshape(tiles, 8, k // GROUP, 2, 2, 2, 4, 2).transpose(0, 2, 3, 1, 6, 4, 5, 7)
    return np.ascontiguousarray(v).reshape(-1).view(np.uint32), inv


def x_written(n: int, k: int) -> np.ndarray:
    """bool [ceil(N / 8) * K / 64 * 256]: the words of xf that hold one of the N tokens (packed_x writes those and
    leaves the last tile's padding tokens' words unwritten: packed MMA never reads them)."""
    tiles = -(-n // 8)
    live = np.zeros((8 * tiles, k // 2), bool)
    live[:n] = True
    # one flag a word: [h, g, j, p, s', b, t] -> [h, j, p, g, t, s', b], as x_fragments orders the words
    return np.ascontiguousarray(live.reshape(tiles, 8, k // GROUP, 2, 2, 2, 4).transpose(0, 2, 3, 1, 6, 4, 5)).reshape(-1)


def _half(word: np.ndarray, high: bool) -> np.ndarray:
    return ((word >> np.uint32(16 if high else 0)) & np.uint32(0xFFFF)).astype(np.uint16)


def weights_from_registers(packed: np.ndarray, type_name: str, rows: int, n_cols: int) -> np.ndarray:
    """fp16 [rows, n_cols]: the weight each A register half holds, placed by the PTX fragment table."""
    tiles, groups = -(-rows // 16), n_cols // GROUP
    rec = np.asarray(packed, np.uint32).reshape(tiles, groups, record_words(type_name))
    w = np.zeros((tiles * 16, n_cols), np.float64)
    for lane in range(32):
        g, t = divmod(lane, 4)
        for s in range(4):
            word = rec[:, :, 4 * lane + s]
            for r in range(4):
                row8 = 1 if _KERNEL_A_ROW8[r] else 0
                if type_name == "Q6_K":  # the step's own scale word half, offset -0
                    scale = rec[:, :, Q6_SCALE_AT + 4 * g + 2 * row8 + s // 2]
                    d = _half(scale, bool(s & 1)).view(np.float16).astype(np.float64)
                    negm = np.float64(-0.0)
                    high = (rec[:, :, HIGH_AT + 2 * lane + s // 2] >> np.uint32(2 * (s & 1))) & np.uint32(0x33333333)
                elif type_name == "Q4_0":  # the block's d word, the row's half; offset -0
                    scale = rec[:, :, 128 + 2 * g + (s >> 1)]
                    d = _half(scale, bool(row8)).view(np.float16).astype(np.float64)
                    negm = np.float64(-0.0)
                    high = np.zeros_like(word)
                else:
                    scale = rec[:, :, 128 + 4 * g + 2 * (s >> 1) + row8]
                    d = _half(scale, False).view(np.float16).astype(np.float64)
                    negm = _half(scale, True).view(np.float16).astype(np.float64)
                    high = np.zeros_like(word)
                for half, nib_index in enumerate(_KERNEL_A_NIBBLES[r]):
                    v = ((word >> np.uint32(4 * nib_index)) & np.uint32(15)) | (
                        ((high >> np.uint32(4 * nib_index)) & np.uint32(3)) << np.uint32(4))
                    code = v.astype(np.float64) - BIAS[type_name]
                    dr, dk = _PTX_A[r][half]
                    # one half2 fma: code * d + (-m) exact in float64, one rounding to fp16
                    value = (code * d + negm).astype(np.float16).astype(np.float64)
                    cols = np.arange(groups) * GROUP + 16 * s + 2 * t + dk
                    w[g + dr::16][:, cols] = value
    return w[:rows].astype(np.float16)


def activations_from_registers(xf: np.ndarray, n: int, n_cols: int) -> np.ndarray:
    """fp16 [n, n_cols]: the activation each B register half holds, placed by the PTX fragment table."""
    tiles, groups = -(-n // 8), n_cols // GROUP
    rec = np.asarray(xf, np.uint32).reshape(tiles, groups, 2, 32, 4)  # [h, j, half p (steps 2p, 2p + 1), lane, word]
    x = np.zeros((8 * tiles, n_cols), np.float16)
    for lane in range(32):
        g, t = divmod(lane, 4)
        for s in range(4):
            for r in range(2):
                word = rec[:, :, s >> 1, lane, 2 * (s & 1) + r]
                for half in range(2):
                    cols = np.arange(groups) * GROUP + 16 * s + 2 * t + _PTX_B[r][half]
                    x[g::8][:, cols] = _half(word, bool(half)).view(np.float16)
    return x[:n]
