"""Shared pieces of the kernel tests: case tables, seeded inputs, the float64 mat-vec reference, guarded outputs.

Everything here runs without a GPU except `GuardedOutput`, which takes the cupy module as an argument (the GPU
test modules import cupy behind a guard so that collection works on a machine without one).
"""
from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass

import numpy as np

from gemma_oracle.oracles.metrics import nmse, screen_nonfinite

from gemma_oracle.kernels.reference.dequant import BLOCK_SIZES, QK_K, dequantize
from gemma_oracle.kernels.reference.quantize import quantize

# --- tolerances -------------------------------------------------------------------------------------------------
# fp32 activations x dequantized fp32 weights, fp32 FMA accumulation, against the float64 product of the same
# dequantized weights: quant-formats-and-kernels.md section 5.4 puts this class of kernel at "about 1e-6 or
# less" (llama.cpp's MUL_MAT allows 5e-4 only because it also quantizes activations to Q8_1). Rounding alone
# gives ~K * eps^2 ~ 1e-11 for these shapes, so 1e-6 flags any real indexing/decoding error (those give ~1).
MATVEC_FP32_NMSE_MAX = 1e-6

# --- case tables --------------------------------------------------------------------------------------------------
TYPE_NAMES = tuple(BLOCK_SIZES)  # every type the loader accepts: F32 F16 BF16 Q4_0 Q5_0 Q8_0 Q4_K Q5_K Q6_K

# (rows, k): rows include tails that are not a multiple of the launcher's 4 rows per block; the row length is
# 256 * k for the K-quants and 256 * k + 32 for 32-value types (so the last 256-value chunk is ragged). k = 10
# gives 80 / 81 units per row: each lane walks 3 units, the last round with a partial warp.
MATVEC_SHAPES = ((1, 1), (7, 2), (77, 3), (130, 1), (33, 10))
# every N up to 9 (llama.cpp's MMVQ/MMQ switch sits at 8/9), both sides of WS capacities 8 and 16, the
# WS -> GEMM-N switch (16/17) and a larger GEMM-N batch
MATVEC_NS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 15, 16, 17, 32)
GEMM_N_NS = (17, 32)  # N above the WS capacity: auto routes these to GEMM-N

DEQUANT_SHAPES = ((1, 1), (7, 2), (130, 10))
Q8_1_SHAPES = ((1, 32), (5, 288), (3, 1056), (17, 2560))  # (N, K)

GUARD_ELEMENTS = 1024  # llama.cpp test-backend-ops sentinel size


def n_cols_for(type_name: str, k: int) -> int:
    """Row length for a case: 256 * k for K-quants, 256 * k + 32 for types with 32-value (or 1-value) blocks."""
    return QK_K * k + (0 if BLOCK_SIZES[type_name][0] == QK_K else 32)


@dataclass(frozen=True)
class MatvecCase:
    type_name: str
    rows: int
    n_cols: int
    n: int

    def __str__(self) -> str:
        return f"{self.type_name.lower()}-r{self.rows}-c{self.n_cols}-n{self.n}"


def matvec_cases() -> list[MatvecCase]:
    return [MatvecCase(t, rows, n_cols_for(t, k), n) for t in TYPE_NAMES for rows, k in MATVEC_SHAPES
            for n in MATVEC_NS]


# --- seeded inputs --------------------------------------------------------------------------------------------------

def _rng(*key) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


@functools.lru_cache(maxsize=64)
def quantized_weights(type_name: str, rows: int, n_cols: int) -> np.ndarray:
    """Uniform [-1, 1) weights quantized with gemma_oracle.kernels.reference.quantize: uint8 [rows, row_bytes] (read-only)."""
    values = _rng("w", type_name, rows, n_cols).uniform(-1.0, 1.0, size=(rows, n_cols)).astype(np.float32)
    raw = np.ascontiguousarray(quantize(values, type_name))
    raw.setflags(write=False)
    return raw


def activations(n: int, n_cols: int, *key) -> np.ndarray:
    """Uniform [-1, 1) float32 activations [n, n_cols]."""
    return _rng("x", n, n_cols, *key).uniform(-1.0, 1.0, size=(n, n_cols)).astype(np.float32)


# --- references -------------------------------------------------------------------------------------------------------

def matvec_reference(w_raw: np.ndarray, type_name: str, n_cols: int, x_host: np.ndarray) -> np.ndarray:
    """float64 [N, rows] = x @ W.T with W dequantized by kernels/reference/dequant.py (then widened to float64)."""
    w_raw = np.asarray(w_raw)
    w = dequantize(w_raw, type_name, (n_cols, w_raw.shape[0])).astype(np.float64)
    return np.asarray(x_host, dtype=np.float64) @ w.T


def guard_pattern(n_bytes: int) -> np.ndarray:
    """A position-dependent byte pattern (not one repeated value, so a shifted or partial overwrite shows)."""
    return ((np.arange(n_bytes, dtype=np.int64) * 37 + 11) % 251).astype(np.uint8)


class GuardedOutput:
    """An output array with GUARD_ELEMENTS-element guard regions of a known byte pattern before and after it.

    `view` is the middle (C-contiguous, aligned as the allocation is at a 4 * 1024-byte offset for float32), to
    be handed to a launcher as `out=`; float outputs are poisoned with NaN so an element the kernel never wrote
    shows up. `guards_intact()` says whether both guards still hold their pattern.
    """

    def __init__(self, cp, shape: tuple[int, ...], dtype) -> None:
        dtype = np.dtype(dtype)
        self.cp = cp
        self.guard_bytes = GUARD_ELEMENTS * dtype.itemsize
        self.body_bytes = int(np.prod(shape)) * dtype.itemsize
        self.buffer = cp.empty(2 * self.guard_bytes + self.body_bytes, dtype=cp.uint8)
        pattern = cp.asarray(guard_pattern(self.guard_bytes))
        self.buffer[: self.guard_bytes] = pattern
        self.buffer[self.guard_bytes + self.body_bytes:] = pattern
        body = self.buffer[self.guard_bytes: self.guard_bytes + self.body_bytes]
        self.view = body.view(dtype).reshape(shape)
        if dtype.kind == "f":
            self.view.fill(np.nan)
        else:
            body.fill(0xCD)

    def guards_intact(self) -> tuple[bool, bool]:
        pattern = guard_pattern(self.guard_bytes)
        before = self.cp.asnumpy(self.buffer[: self.guard_bytes])
        after = self.cp.asnumpy(self.buffer[self.guard_bytes + self.body_bytes:])
        return bool(np.array_equal(before, pattern)), bool(np.array_equal(after, pattern))


def first_bit_difference(a: np.ndarray, b: np.ndarray) -> str:
    """'' when a and b are bit-for-bit equal (same shape, same float32 bits), else where and how they differ."""
    if a.shape != b.shape:
        return f"shape {a.shape} vs {b.shape}"
    ab, bb = np.ascontiguousarray(a).view(np.uint32), np.ascontiguousarray(b).view(np.uint32)
    if np.array_equal(ab, bb):
        return ""
    idx = tuple(int(i) for i in np.argwhere(ab != bb)[0])
    return (f"{int((ab != bb).sum())} element(s) differ, first at {idx}: {a[idx]!r} ({int(ab[idx]):#010x}) vs "
            f"{b[idx]!r} ({int(bb[idx]):#010x})")


def _host(a) -> np.ndarray:
    return a.get() if hasattr(a, "get") else np.asarray(a)  # a CuPy array (copied to the host) or a numpy one


def assert_bits_equal(got, want, what: str) -> None:
    """got and want (device or host arrays) are bit-for-bit equal; else names the first difference."""
    diff = first_bit_difference(_host(got), _host(want))
    assert not diff, f"{what}: {diff}"


def assert_q8_1_equal(got, want, what: str) -> None:
    """Two uint8 arrays of Q8_1 blocks [rows, blocks * 36] are byte-for-byte equal; else counts the differing blocks
    and names the first differing byte."""
    from gemma_oracle.kernels.reference.q8_1 import BLOCK_BYTES

    got, want = _host(got), _host(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} vs {want.shape}"
    bad = np.argwhere(got.reshape(got.shape[0], -1, BLOCK_BYTES) != want.reshape(want.shape[0], -1, BLOCK_BYTES))
    assert bad.size == 0, (f"{what}: {len({(r, b) for r, b, _ in bad})} Q8_1 block(s) differ, first row {bad[0][0]} "
                           f"block {bad[0][1]} byte {bad[0][2]}")


# --- guarded outputs and row-wise NMSE for the fp32 element-wise and attention kernels -----------------------
# fp32 kernels vs the float64 reference: plain float32 rounding gives per-row NMSE around 1e-14..1e-10; 1e-6 is
# the fp32 bound of gemma4-architecture.md §8 (per-layer NMSE <~ 1e-6), so only a wiring or formula bug fails it.
NMSE_FP32 = 1e-6


class Guarded(GuardedOutput):
    """GuardedOutput with an explicit poison value and an asserting check (the element-wise/attention tests)."""

    def __init__(self, shape, dtype=np.float32, poison=np.nan):
        import cupy as cp

        super().__init__(cp, tuple(shape), dtype)
        self.view[...] = poison

    def assert_guards_intact(self) -> None:
        before, after = self.guards_intact()
        assert before and after, f"guard overwritten: before intact {before}, after intact {after}"


def assert_rows_close(ref: np.ndarray, got: np.ndarray, what: str, tol: float = NMSE_FP32) -> None:
    """NaN/inf screen first, then the per-row NMSE (rows = the leading axis) against tol."""
    ref2 = np.asarray(ref, dtype=np.float64).reshape(ref.shape[0], -1)
    got2 = np.asarray(got, dtype=np.float64).reshape(got.shape[0], -1)
    msg = screen_nonfinite(ref2, got2)
    assert msg is None, f"{what}: {msg}"
    err = np.atleast_1d(nmse(ref2, got2))
    worst = int(np.argmax(err))
    assert err[worst] <= tol, f"{what}: row {worst} NMSE {err[worst]:.3e} > {tol:.0e}"


def inv_freq_f32(base: float, n_rot: int, freq_factors=None) -> np.ndarray:
    """RoPE inverse frequencies base^(-2i / n_rot) for i < n_rot / 2, divided by the model's rope_freqs factors when
    given (Gemma 4 proportional RoPE), rounded once to float32 as the engine passes them."""
    inv = base ** (-np.arange(0, n_rot, 2, dtype=np.float64) / n_rot)
    if freq_factors is not None:
        inv = inv / freq_factors
    return inv.astype(np.float32)


def fma_f32(a, b, c) -> np.ndarray:
    """float32 a * b + c rounded ONCE to nearest even (CUDA __fmaf_rn), elementwise with broadcasting.

    a * b is exact in float64 (24 + 24 significand bits) and TwoSum gives the exact error e of the float64 sum
    r = a * b + c. Rounding r to float32 is then the correct rounding of r + e, except when r lies exactly halfway
    between two float32 values and e != 0 (a float32 midpoint is a float64 value, so nothing else can lie between
    r and r + e): then the result is the neighbour on e's side."""
    a64, b64, c64 = (np.asarray(v, dtype=np.float32).astype(np.float64) for v in (a, b, c))
    p = a64 * b64
    r = p + c64
    bb = r - p
    e = (p - (r - bb)) + (c64 - bb)
    out = r.astype(np.float32)
    back = out.astype(np.float64)
    other = np.nextafter(out, np.where(r > back, np.float32(np.inf), np.float32(-np.inf)))
    tie = (r != back) & ((back + other.astype(np.float64)) * 0.5 == r) & (e != 0)
    return np.where(tie, np.where(e > 0, np.maximum(out, other), np.minimum(out, other)), out).astype(np.float32)
