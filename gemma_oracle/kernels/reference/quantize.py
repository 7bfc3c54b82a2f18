"""Quantizers that write GGML blocks from float values, keyed by GGML type name.

gguf-py 0.19 has no K-quant quantizer, so Q4_K, Q5_K and Q6_K are numpy ports of ggml's reference
(non-imatrix) path in ggml-quants.c: `make_qkx2_quants` for Q4_K/Q5_K and `make_qx_quants` for Q6_K, vectorized
over every sub-block at once. They follow ggml's float32 arithmetic and round-half-to-even `nearest_int`, quirks
included (make_qkx2_quants builds each grid from the best min so far), but they are not meant to be
byte-identical to llama-quantize: numpy's pairwise sums differ from ggml's sequential ones in the last bits, which
can flip a near-tie between search candidates (a scalar sequential port agreed byte for byte on 118 of 120 mixed
test blocks; both others trace back to candidates whose errors tie at float32 resolution, and the grid-from-best-min
quirk then carries the split forward). Every block they write is valid, which is all the
synthetic models need (gguf-py's dequantizer is the oracle). The other types delegate to `gguf.quants.quantize`.

Every quantizer takes float values (any leading shape, rows along the last axis) and returns uint8 with the last
axis in bytes, the same layout `gemma_oracle.kernels.reference.dequant` reads.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from gguf import GGMLQuantizationType, quants

from gemma_oracle.kernels.reference.dequant import BLOCK_SIZES, QK_K, row_bytes

F32 = np.float32
GROUP_MAX_EPS = F32(1e-15)  # ggml-quants.c: a group whose largest |value| (or |scale|) is below this is all zero
SUPER_BLOCKS_PER_CHUNK = 1024  # 256K values at a time: temporaries of 1 MB stay in cache (fastest measured)


def _nearest_int(v: np.ndarray) -> np.ndarray:
    # ggml's nearest_int (the 1.5*2^23 trick) rounds half to even, which is what rint does; kept in float
    return np.rint(v)


def _row_sum(a: np.ndarray) -> np.ndarray:
    # einsum reduces short rows several times faster than ndarray.sum, which matters in the search loops
    return np.einsum("ij->i", a)


def _row_dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """sum(a * b) per row, the products rounded as ggml rounds them; only the summation order differs."""
    return np.einsum("ij,ij->i", a, b)


def _safe(den: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """`den` where `usable`, 1 elsewhere: lets a masked-out lane divide without a warning."""
    return np.where(usable, den, F32(1))


# --- ggml's scale searches, vectorized over rows (one row = one sub-block) ----------------------------------------

def _make_qkx2_quants(x: np.ndarray, w: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted (scale, min) search of make_qkx2_quants (use_mad=false) on rows x (B, n) with weights w.

    Returns scale (B,), the positive min to subtract (B,), and the codes (B, n) of the winning candidate.
    """
    lo = np.minimum(x.min(axis=1), F32(0))  # the fitted min is never positive, so the grid always covers 0
    hi = x.max(axis=1)
    flat = hi == lo
    sum_w = _row_sum(w)
    sum_x = _row_dot(w, x)

    def codes(iscale, grid_min):
        return np.clip(_nearest_int(iscale[:, None] * (x - grid_min[:, None])), F32(0), F32(nmax))

    def error(scale, mn, l):
        diff = scale[:, None] * l + mn[:, None] - x
        return _row_dot(w, diff * diff)

    # candidate 0: the plain min/max grid
    mn = lo.copy()
    iscale = F32(nmax) / _safe(hi - lo, ~flat)
    scale = F32(1) / iscale
    best_error = error(scale, mn, codes(iscale, mn))
    # the winner's codes are rebuilt at the end from its grid (iscale, grid min): cheaper than carrying them
    best_iscale, best_grid_min = iscale, mn
    # then nstep+1 stretched grids, each refitted by weighted least squares for (scale, min)
    for step in range(nstep + 1):
        # ggml builds each grid from the min of the best fit so far, not from the data min: kept for fidelity
        span = hi - mn
        usable = span > 0
        iscale = (F32(rmin) + F32(rdelta) * F32(step) + F32(nmax)) / _safe(span, usable)
        l = codes(iscale, mn)
        wl = w * l
        sum_l = _row_sum(wl)
        sum_l2 = _row_dot(wl, l)
        sum_xl = _row_dot(wl, x)
        det = sum_w * sum_l2 - sum_l * sum_l
        solvable = usable & (det > 0)
        det = _safe(det, solvable)
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / det
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det
        # a positive min cannot be stored (mins are subtracted): refit the scale alone with min = 0
        clamp = this_min > 0
        this_min = np.where(clamp, F32(0), this_min)
        this_scale = np.where(clamp, sum_xl / _safe(sum_l2, sum_l2 > 0), this_scale)
        this_error = error(this_scale, this_min, l)
        better = solvable & (this_error < best_error)
        best_error = np.where(better, this_error, best_error)
        best_iscale = np.where(better, iscale, best_iscale)
        best_grid_min = np.where(better, mn, best_grid_min)
        scale = np.where(better, this_scale, scale)
        mn = np.where(better, this_min, mn)

    L = codes(best_iscale, best_grid_min)
    # a flat row is stored as min only (codes 0, scale 0)
    L[flat] = 0
    scale = np.where(flat, F32(0), scale)
    mn = np.where(flat, lo, mn)
    return scale, -mn, L


def _make_qx_quants(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Signed scale search of make_qx_quants with rmse_type 1 (weights x^2) on rows x (B, n).

    Returns scale (B,) and codes (B, n) in 0..2*nmax-1 (signed code + nmax) of the winning candidate.
    """
    pick = np.abs(x).argmax(axis=1)[:, None]  # first largest |x|, as ggml's strict '>' scan
    peak = np.take_along_axis(x, pick, axis=1)[:, 0]
    zero = np.abs(peak) < GROUP_MAX_EPS
    peak = _safe(peak, ~zero)
    w = x * x
    wx = w * x

    def codes(iscale):
        return np.clip(_nearest_int(iscale[:, None] * x), F32(-nmax), F32(nmax - 1))

    def sums(l):
        return _row_dot(wx, l), _row_dot(w * l, l)

    best_iscale = F32(-nmax) / peak
    sum_lx, sum_l2 = sums(codes(best_iscale))
    scale = np.where(sum_l2 != 0, sum_lx / _safe(sum_l2, sum_l2 != 0), F32(0))
    best = scale * sum_lx
    for step in (*range(-9, 0), *range(1, 10)):
        iscale = -(F32(nmax) + F32(0.1) * F32(step)) / peak
        sum_lx, sum_l2 = sums(codes(iscale))
        # the fit maximizing sum_lx^2/sum_l2 minimizes the weighted squared error. The two products are taken
        # in float64: with weights x^2, sum_lx^2 grows as x^8 and overflows float32 from |x| ~ 3e5 on (ggml then
        # compares inf with inf and keeps its first grid); elsewhere this only moves exact ties.
        better = (sum_l2 > 0) & (np.square(sum_lx, dtype=np.float64) > best.astype(np.float64) * sum_l2)
        scale = np.where(better, sum_lx / _safe(sum_l2, better), scale)
        best = np.where(better, scale * sum_lx, best)
        best_iscale = np.where(better, iscale, best_iscale)

    L = codes(best_iscale) + F32(nmax)
    L[zero] = 0
    return np.where(zero, F32(0), scale), L


# --- K-quant block writers: (nb, 256) float32 -> (nb, bytes per block) uint8 ------------------------------------

def _fp16_scale(v: np.ndarray, type_name: str) -> np.ndarray:
    with np.errstate(over="ignore"):  # reported just below, with the type's name
        half = v.astype(np.float16)
    if not np.isfinite(half).all():
        raise ValueError(f"{type_name}: values too large for the fp16 super-block scale (max |scale| {v.max():.3g})")
    return half


def _pack_k_scale_min(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Eight 6-bit scales and mins (nb, 8) -> the 12-byte field read by get_scale_min_k4."""
    lo_sc = sc[:, :4] | ((sc[:, 4:] >> 4) << 6)
    lo_m = m[:, :4] | ((m[:, 4:] >> 4) << 6)
    mix = (sc[:, 4:] & 0x0F) | ((m[:, 4:] & 0x0F) << 4)
    return np.concatenate([lo_sc, lo_m, mix], axis=1)


def _pack_nibbles(q: np.ndarray) -> np.ndarray:
    """Codes (nb, 8, 32) -> 128 bytes: sub-block 2c in the low nibbles of chunk c, 2c+1 in the high ones."""
    q = q.reshape(-1, 4, 2, 32)
    return (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(-1, 128)


def _quantize_scale_min(x: np.ndarray, type_name: str, nmax: int, rmin: float, rdelta: float, nstep: int):
    """Shared body of Q4_K/Q5_K: fp16 d/dmin, the 12 packed scale bytes, and codes (nb, 8, 32) uint8."""
    nb = x.shape[0]
    xs = x.reshape(nb, 8, 32)
    # ggml's weights: the sub-block's RMS plus |x|, so large values count more but small ones are not ignored
    rms = np.sqrt(_row_dot(xs.reshape(-1, 32), xs.reshape(-1, 32)).reshape(nb, 8) / F32(32))
    w = rms[:, :, None] + np.abs(xs)
    scale, mins, search_codes = _make_qkx2_quants(xs.reshape(-1, 32), w.reshape(-1, 32), nmax, rmin, rdelta, nstep)
    scale, mins = scale.reshape(nb, 8), mins.reshape(nb, 8)

    max_scale = np.maximum(scale.max(axis=1), F32(0))
    max_min = np.maximum(mins.max(axis=1), F32(0))
    inv_scale = np.where(max_scale > 0, F32(63) / _safe(max_scale, max_scale > 0), F32(0))
    inv_min = np.where(max_min > 0, F32(63) / _safe(max_min, max_min > 0), F32(0))
    sc = np.clip(_nearest_int(inv_scale[:, None] * scale), 0, 63).astype(np.uint8)
    m = np.clip(_nearest_int(inv_min[:, None] * mins), 0, 63).astype(np.uint8)
    d = _fp16_scale(max_scale / F32(63), type_name)
    dmin = _fp16_scale(max_min / F32(63), type_name)

    # Re-derive every code from the values actually stored, so the rounding of d, dmin, sc and m to their
    # stored precision cannot push a value more than half a step away from its decode.
    step = (d.astype(F32)[:, None] * sc.astype(F32))[:, :, None]
    offset = (dmin.astype(F32)[:, None] * m.astype(F32))[:, :, None]
    stored = step != 0
    q = np.clip(_nearest_int((xs + offset) / _safe(step, stored)), F32(0), F32(nmax))
    # where the stored step is 0 the codes do not matter for the decode; ggml keeps the search's
    q = np.where(stored, q, search_codes.reshape(nb, 8, 32)).astype(np.uint8)
    return d, dmin, _pack_k_scale_min(sc, m), q


def _quantize_q4_k_blocks(x: np.ndarray) -> np.ndarray:
    d, dmin, scales, q = _quantize_scale_min(x, "Q4_K", nmax=15, rmin=-1.0, rdelta=0.1, nstep=20)
    return np.concatenate([d.view(np.uint8).reshape(-1, 2), dmin.view(np.uint8).reshape(-1, 2),
                           scales, _pack_nibbles(q)], axis=1)


def _quantize_q5_k_blocks(x: np.ndarray) -> np.ndarray:
    d, dmin, scales, q = _quantize_scale_min(x, "Q5_K", nmax=31, rmin=-0.5, rdelta=0.1, nstep=15)
    # bit 4 of element l of sub-block s goes to bit s of qh[l]
    qh = np.packbits((q >> 4).transpose(0, 2, 1), axis=2, bitorder="little").reshape(-1, 32)
    return np.concatenate([d.view(np.uint8).reshape(-1, 2), dmin.view(np.uint8).reshape(-1, 2),
                           scales, qh, _pack_nibbles(q & 0x0F)], axis=1)


def _pack_q6_k_codes(q: np.ndarray) -> np.ndarray:
    """Codes (nb, 256) in 0..63 -> ql (128 bytes) then qh (64 bytes), per the half/quarter layout of Q6_K."""
    q = q.reshape(-1, 2, 4, 32)  # [half, quarter, l]
    low, high = q & 0x0F, q >> 4
    ql = np.concatenate([low[:, :, 0] | (low[:, :, 2] << 4), low[:, :, 1] | (low[:, :, 3] << 4)], axis=2)
    qh = high[:, :, 0] | (high[:, :, 1] << 2) | (high[:, :, 2] << 4) | (high[:, :, 3] << 6)
    return np.concatenate([ql.reshape(-1, 128), qh.reshape(-1, 64)], axis=1)


def _quantize_q6_k_blocks(x: np.ndarray) -> np.ndarray:
    nb = x.shape[0]
    xs = x.reshape(nb, 16, 16)
    scale, search_codes = _make_qx_quants(xs.reshape(-1, 16), nmax=32)
    scale = scale.reshape(nb, 16)

    # the super-scale follows the sub-scale of largest magnitude, keeping its sign: d often comes out negative
    peak = np.take_along_axis(scale, np.abs(scale).argmax(axis=1)[:, None], axis=1)[:, 0]
    empty = np.abs(peak) < GROUP_MAX_EPS
    iscale = F32(-128) / _safe(peak, ~empty)
    d = _fp16_scale(np.where(empty, F32(0), F32(1) / iscale), "Q6_K")
    sc = np.clip(_nearest_int(iscale[:, None] * scale), -128, 127).astype(np.int8)
    sc[empty] = 0

    # codes re-derived from the stored fp16 d and int8 scales (see _quantize_scale_min)
    step = (d.astype(F32)[:, None] * sc.astype(F32))[:, :, None]
    stored = step != 0
    q = np.clip(_nearest_int(xs / _safe(step, stored)), F32(-32), F32(31)) + F32(32)
    q = np.where(stored, q, search_codes.reshape(nb, 16, 16)).astype(np.uint8)
    q[empty] = 0  # ggml writes an empty super-block as all-zero bytes
    return np.concatenate([_pack_q6_k_codes(q), sc.view(np.uint8), d.view(np.uint8).reshape(-1, 2)], axis=1)


_K_QUANT_BLOCK_WRITERS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "Q4_K": _quantize_q4_k_blocks,
    "Q5_K": _quantize_q5_k_blocks,
    "Q6_K": _quantize_q6_k_blocks,
}


# --- public quantizers ----------------------------------------------------------------------------------------

def _check_rows(values: np.ndarray, type_name: str) -> np.ndarray:
    values = np.asarray(values)
    if values.ndim == 0:
        raise ValueError(f"{type_name}: need at least one axis of values")
    row_bytes(type_name, values.shape[-1])  # raises on a row that is not a whole number of blocks
    if type_name not in ("F32", "F16", "BF16") and not np.isfinite(values).all():
        raise ValueError(f"{type_name}: cannot quantize non-finite values (NaN or inf) into scaled blocks")
    return values


def _make_k_quantizer(type_name: str) -> Callable[[np.ndarray], np.ndarray]:
    write_blocks = _K_QUANT_BLOCK_WRITERS[type_name]

    def quantizer(values: np.ndarray) -> np.ndarray:
        values = _check_rows(values, type_name)
        blocks = np.ascontiguousarray(values, dtype=F32).reshape(-1, QK_K)
        out = np.empty((blocks.shape[0], BLOCK_SIZES[type_name][1]), dtype=np.uint8)
        # blocks are independent, so chunking changes nothing in the bytes, only the memory and cache footprint
        for start in range(0, blocks.shape[0], SUPER_BLOCKS_PER_CHUNK):
            stop = start + SUPER_BLOCKS_PER_CHUNK
            out[start:stop] = write_blocks(blocks[start:stop])
        return out.reshape(*values.shape[:-1], row_bytes(type_name, values.shape[-1]))

    quantizer.__name__ = f"quantize_{type_name.lower()}"
    quantizer.__doc__ = f"float values (rows along the last axis) -> {type_name} blocks, ggml reference search."
    return quantizer


def _make_gguf_quantizer(type_name: str) -> Callable[[np.ndarray], np.ndarray]:
    qtype = GGMLQuantizationType[type_name]

    def quantizer(values: np.ndarray) -> np.ndarray:
        values = _check_rows(values, type_name)
        # gguf-py returns F32/F16 in their own dtype; the contract here is bytes
        out = np.ascontiguousarray(quants.quantize(values, qtype)).view(np.uint8)
        return out.reshape(*values.shape[:-1], row_bytes(type_name, values.shape[-1]))

    quantizer.__name__ = f"quantize_{type_name.lower()}"
    quantizer.__doc__ = f"float values (rows along the last axis) -> {type_name} blocks, via gguf.quants.quantize."
    return quantizer


QUANTIZERS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    **{name: _make_gguf_quantizer(name) for name in ("F32", "F16", "BF16", "Q4_0", "Q5_0", "Q8_0")},
    **{name: _make_k_quantizer(name) for name in _K_QUANT_BLOCK_WRITERS},
}


def quantize(values: np.ndarray, type_name: str) -> np.ndarray:
    """Quantize `values` (rows along the last axis) to `type_name`; uint8 with the last axis in bytes."""
    try:
        quantizer = QUANTIZERS[type_name]
    except KeyError:
        raise ValueError(f"no quantizer for GGML type {type_name!r}; known: {sorted(QUANTIZERS)}") from None
    return quantizer(values)
