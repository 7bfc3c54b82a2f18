"""Numpy dequantizers for the GGML types a Gemma 4 GGUF can hold, keyed by GGML type name.

Each dequantizer takes whole blocks as bytes (uint8, any leading shape, last axis in bytes) and returns float32
with the last axis in elements. The arithmetic repeats ggml's float32 order of operations (the same order
gguf-py 0.19 uses), so the results are bitwise equal to `gguf.quants.dequantize`: that makes gguf-py a usable
oracle for this module and lets kernels be checked against it without a tolerance.

In every type here the products (fp16 scale x small integer sub-scale x code) fit in float32's 24-bit
significand, so they are exact whatever their order; only the K-quants' final "- dmin*m" rounds. A kernel that
fuses that step (FMA) therefore still agrees bitwise.

Layouts are described in /work/shared/reference/quant-formats-and-kernels.md section 1; only the facts that
decide the arithmetic are repeated here.
"""
from __future__ import annotations

from math import prod
from typing import Callable

import numpy as np

QK_K = 256  # values per K-quant super-block

# (values per block, bytes per block); ggml-common.h. Plain float types are "blocks" of one value.
BLOCK_SIZES: dict[str, tuple[int, int]] = {
    "F32": (1, 4),
    "F16": (1, 2),
    "BF16": (1, 2),
    "Q4_0": (32, 18),
    "Q5_0": (32, 22),
    "Q8_0": (32, 34),
    "Q4_K": (QK_K, 144),
    "Q5_K": (QK_K, 176),
    "Q6_K": (QK_K, 210),
}

# The dtype GGUFReader hands out for a type when it is not raw bytes (F32 and F16 only; BF16 comes as uint8).
NATIVE_DTYPES: dict[str, np.dtype] = {"F32": np.dtype(np.float32), "F16": np.dtype(np.float16)}


def _block_size(type_name: str) -> tuple[int, int]:
    try:
        return BLOCK_SIZES[type_name]
    except KeyError:
        raise ValueError(f"unknown or unsupported GGML type {type_name!r}; known: {sorted(BLOCK_SIZES)}") from None


def row_bytes(type_name: str, n: int) -> int:
    """Bytes taken by a row of `n` values of `type_name`; `n` must be a whole number of blocks."""
    block, size = _block_size(type_name)
    if n % block:
        raise ValueError(f"{type_name}: a row of {n} values is not a whole number of {block}-value blocks")
    return n // block * size


def _as_blocks(data: np.ndarray, type_name: str) -> tuple[np.ndarray, tuple[int, ...]]:
    """(n_blocks, bytes per block) uint8 view of `data`, and the output shape in elements."""
    block, size = BLOCK_SIZES[type_name]
    data = np.asarray(data)
    native = NATIVE_DTYPES.get(type_name)
    if native is not None and data.dtype == native:
        # a native-dtype view already counts its last axis in values; turn it into bytes
        data = np.ascontiguousarray(data).view(np.uint8)
    elif data.dtype != np.uint8:
        raise ValueError(f"{type_name}: expected uint8 bytes" + (f" or {native}" if native is not None else "")
                         + f", got dtype {data.dtype}")
    if data.ndim == 0 or data.shape[-1] % size:
        raise ValueError(f"{type_name}: last axis of {data.shape[-1] if data.ndim else 0} bytes is not a whole "
                         f"number of {size}-byte blocks")
    out_shape = (*data.shape[:-1], data.shape[-1] // size * block)
    return np.ascontiguousarray(data).reshape(-1, size), out_shape


def _f16(raw: np.ndarray) -> np.ndarray:
    """fp16 field bytes (..., 2) -> float32 (..., 1); exact."""
    return np.ascontiguousarray(raw).view(np.float16).astype(np.float32)


def _low_high_nibbles(qs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return qs & np.uint8(0x0F), qs >> np.uint8(4)


def _k_scale_min(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unpack the 12-byte 6-bit (scale, min) field of Q4_K/Q5_K into two (n, 8) uint8 arrays (get_scale_min_k4).

    Bytes 0-3 hold sc0..3 and bytes 4-7 hold m0..3 in their low 6 bits; their top 2 bits are the high bits of
    sc4..7 and m4..7, whose low nibbles sit in bytes 8-11 (sc in the low half, m in the high half).
    """
    lo_sc, lo_m, mix = scales[:, 0:4], scales[:, 4:8], scales[:, 8:12]
    sc = np.concatenate([lo_sc & 0x3F, (mix & 0x0F) | ((lo_sc >> 6) << 4)], axis=1)
    m = np.concatenate([lo_m & 0x3F, (mix >> 4) | ((lo_m >> 6) << 4)], axis=1)
    return sc, m


def _dequant_f32(blocks: np.ndarray) -> np.ndarray:
    return blocks.view(np.float32).copy()


def _dequant_f16(blocks: np.ndarray) -> np.ndarray:
    return blocks.view(np.float16).astype(np.float32)


def _dequant_bf16(blocks: np.ndarray) -> np.ndarray:
    # bf16 is the top half of a float32; widening is a shift, NaN payloads included
    return (blocks.view(np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)


def _dequant_q4_0(blocks: np.ndarray) -> np.ndarray:
    d = _f16(blocks[:, 0:2])
    low, high = _low_high_nibbles(blocks[:, 2:18])  # not interleaved: byte j holds elements j and j+16
    q = np.concatenate([low, high], axis=1).astype(np.float32) - np.float32(8)
    return d * q


def _dequant_q5_0(blocks: np.ndarray) -> np.ndarray:
    d = _f16(blocks[:, 0:2])
    qh = np.unpackbits(blocks[:, 2:6], axis=1, bitorder="little")  # bit j of the LE uint32 is element j's 5th bit
    low, high = _low_high_nibbles(blocks[:, 6:22])
    q = np.concatenate([low, high], axis=1) | (qh << np.uint8(4))
    return d * (q.astype(np.float32) - np.float32(16))


def _dequant_q8_0(blocks: np.ndarray) -> np.ndarray:
    return _f16(blocks[:, 0:2]) * blocks[:, 2:34].view(np.int8).astype(np.float32)


def _k_sub_scales(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-sub-block (d*sc, dmin*m) of Q4_K/Q5_K as float32 (n, 8, 1), each product rounded once as in ggml."""
    d, dmin = _f16(blocks[:, 0:2]), _f16(blocks[:, 2:4])
    sc, m = _k_scale_min(blocks[:, 4:16])
    return (d * sc.astype(np.float32))[:, :, None], (dmin * m.astype(np.float32))[:, :, None]


def _k_nibbles(qs: np.ndarray) -> np.ndarray:
    """(n, 128) packed nibbles -> (n, 8, 32): chunk c's 32 bytes give sub-block 2c (low) and 2c+1 (high)."""
    low, high = _low_high_nibbles(qs.reshape(-1, 4, 1, 32))
    return np.concatenate([low, high], axis=2).reshape(-1, 8, 32)


def _dequant_q4_k(blocks: np.ndarray) -> np.ndarray:
    scale, offset = _k_sub_scales(blocks)
    q = _k_nibbles(blocks[:, 16:144]).astype(np.float32)
    return (scale * q - offset).reshape(-1, QK_K)


def _dequant_q5_k(blocks: np.ndarray) -> np.ndarray:
    scale, offset = _k_sub_scales(blocks)
    high = np.unpackbits(blocks[:, 16:48, None], axis=2, bitorder="little")  # (n, 32, 8): bit s of qh[l]
    q = _k_nibbles(blocks[:, 48:176]) | (high.transpose(0, 2, 1) << np.uint8(4))
    return (scale * q.astype(np.float32) - offset).reshape(-1, QK_K)


def _dequant_q6_k(blocks: np.ndarray) -> np.ndarray:
    ql = blocks[:, 0:128].reshape(-1, 2, 2, 32)  # [half, first/second 32 bytes, l]
    qh = blocks[:, 128:192].reshape(-1, 2, 1, 32)  # [half, -, l]
    # Within a half, quarter k (elements 32k..32k+31) takes its low bits from the low (k < 2) or high (k >= 2)
    # nibble of ql[32*(k % 2) + l] and its high bits from bits 2k..2k+1 of qh[l].
    low = np.concatenate(_low_high_nibbles(ql), axis=2)  # (n, 2, 4, 32), quarters in order
    high = (qh >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)) & np.uint8(3)
    q = (low | (high << np.uint8(4))).reshape(-1, 16, 16).astype(np.float32) - np.float32(32)
    # d may be negative (the reference quantizer makes it so) and the int8 scales carry the other sign
    scale = (_f16(blocks[:, 208:210]) * blocks[:, 192:208].view(np.int8).astype(np.float32))[:, :, None]
    return (scale * q).reshape(-1, QK_K)


def block_codes(data: np.ndarray, type_name: str):
    """ggml's dequantization of Q8_0, Q4_0, Q4_K, Q5_K and Q6_K bytes as its parts: (codes [nb, G, S] float64 (exact
    small integers), d [nb, G, 1] float32, m [nb, G, 1] float32) per block, with value = d * code - m over G groups
    of S values (S = 32; Q6_K 16). d and m are ggml's float32 products (d * sc, dmin * m), rounded once."""
    blocks, _ = _as_blocks(data, type_name)
    zero = np.zeros((blocks.shape[0], 1, 1), np.float32)
    if type_name == "Q8_0":
        return blocks[:, 2:34].view(np.int8).astype(np.float64)[:, None], _f16(blocks[:, 0:2])[:, :, None], zero
    if type_name == "Q4_0":
        low, high = _low_high_nibbles(blocks[:, 2:18])
        codes = np.concatenate([low, high], axis=1).astype(np.float64) - 8
        return codes[:, None], _f16(blocks[:, 0:2])[:, :, None], zero
    if type_name in ("Q4_K", "Q5_K"):
        scale, offset = _k_sub_scales(blocks)
        if type_name == "Q4_K":
            q = _k_nibbles(blocks[:, 16:144])
        else:
            high = np.unpackbits(blocks[:, 16:48, None], axis=2, bitorder="little")
            q = _k_nibbles(blocks[:, 48:176]) | (high.transpose(0, 2, 1) << np.uint8(4))
        return q.astype(np.float64), scale, offset
    if type_name == "Q6_K":
        ql = blocks[:, 0:128].reshape(-1, 2, 2, 32)
        qh = blocks[:, 128:192].reshape(-1, 2, 1, 32)
        low = np.concatenate(_low_high_nibbles(ql), axis=2)
        high = (qh >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)) & np.uint8(3)
        q = (low | (high << np.uint8(4))).reshape(-1, 16, 16).astype(np.float64) - 32
        scale = (_f16(blocks[:, 208:210]) * blocks[:, 192:208].view(np.int8).astype(np.float32))[:, :, None]
        return q, scale, np.zeros_like(scale)
    raise ValueError(f"type_name: block_codes supports Q8_0, Q4_0, Q4_K, Q5_K and Q6_K, got {type_name!r}")



_BLOCK_DEQUANTIZERS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "F32": _dequant_f32,
    "F16": _dequant_f16,
    "BF16": _dequant_bf16,
    "Q4_0": _dequant_q4_0,
    "Q5_0": _dequant_q5_0,
    "Q8_0": _dequant_q8_0,
    "Q4_K": _dequant_q4_k,
    "Q5_K": _dequant_q5_k,
    "Q6_K": _dequant_q6_k,
}


def _make_dequantizer(type_name: str) -> Callable[[np.ndarray], np.ndarray]:
    on_blocks = _BLOCK_DEQUANTIZERS[type_name]

    def dequantizer(data: np.ndarray) -> np.ndarray:
        blocks, out_shape = _as_blocks(data, type_name)
        return on_blocks(blocks).reshape(out_shape)

    dequantizer.__name__ = f"dequant_{type_name.lower()}"
    dequantizer.__doc__ = f"{type_name} blocks (uint8, last axis in bytes) -> float32, last axis in values."
    return dequantizer


DEQUANTIZERS: dict[str, Callable[[np.ndarray], np.ndarray]] = {name: _make_dequantizer(name) for name in BLOCK_SIZES}


def dequantize(data: np.ndarray, type_name: str, ne: tuple[int, ...]) -> np.ndarray:
    """Decode one GGUF tensor to float32 of numpy shape reversed(ne) (ne[0] is the contiguous row length).

    `data` is what GGUFReader gives: uint8 bytes for quantized and BF16 tensors, float32/float16 for F32/F16.
    Only its size is trusted, not its shape, so a flat byte buffer works too.
    """
    ne = tuple(int(n) for n in ne)
    if not ne or any(n <= 0 for n in ne):
        raise ValueError(f"{type_name}: bad tensor dims ne={ne}")
    expected = row_bytes(type_name, ne[0]) * prod(ne[1:])
    data = np.asarray(data)
    if data.dtype != np.uint8 and data.dtype != NATIVE_DTYPES.get(type_name):
        raise ValueError(f"{type_name}: expected uint8 bytes"
                         + (f" or {NATIVE_DTYPES[type_name]}" if type_name in NATIVE_DTYPES else "")
                         + f", got dtype {data.dtype}")
    if data.nbytes != expected:
        raise ValueError(f"{type_name}: tensor with ne={ne} needs {expected} bytes, got {data.nbytes} "
                         f"(dtype {data.dtype}, shape {data.shape})")
    if data.dtype == np.uint8:
        rows = data.reshape(-1, row_bytes(type_name, ne[0]))
    else:
        rows = data.reshape(-1, ne[0])  # native F32/F16 view, last axis already in values
    return DEQUANTIZERS[type_name](rows).reshape(ne[::-1])
