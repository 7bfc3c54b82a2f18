"""Launcher of kernels/cuda/l2_ahead.cu: the first bytes of the next matmuls' weights asked into L2 ahead of them.

A decode step places `l2_ahead` right after a matmul, naming the matrices that come next (engine/gpu_engine.py); the
small launches between (RoPE, attention, norms, activations) leave DRAM idle, and the weights asked for meanwhile are
L2 hits when their matmul runs. It reads and writes nothing: no result changes, with or without it. How many bytes
one place asks for is GEMMA_ORACLE_L2_AHEAD (MB; 0 or unset: no launch), and `plan_ahead` shares them out, on the
host, over the matrices in the order they are multiplied. Opt-in until a whole step on the device has been timed.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from gemma_oracle.kernels._compile import load_module

MODULE = "l2_ahead"
THREADS = 128  # AHEAD_THREADS
SEGMENT = 16 * 1024  # AHEAD_SEGMENT: bytes one thread asks for
MAX_RANGES = 3  # the kernel's (p_i, n_i) pairs
MAX_BLOCKS = 64
ALIGN = 16  # cp.async.bulk.prefetch: 16-byte aligned addresses, sizes a multiple of 16
ENV = "GEMMA_ORACLE_L2_AHEAD"
MB = 1 << 20


def ahead_bytes_from_env() -> int:
    """Bytes one place in a step asks into L2 (GEMMA_ORACLE_L2_AHEAD, in MB, 0 to 256; unset or 0: off)."""
    value = os.environ.get(ENV, "0").strip() or "0"
    if not value.isdigit() or int(value) > 256:
        raise ValueError(f"{ENV}={value!r}: expected whole MB of weights asked into L2 at each place, 0 (off) to 256")
    return int(value) * MB


def plan_ahead(groups: Sequence[Sequence[int]], budget: int) -> list[list[int]]:
    """Bytes to ask for of each matrix: `groups` are the sizes of the matrices the next launches read, a group for
    each launch in step order (members of one launch are read at once, so they share what is left evenly); the
    earlier launches are asked for first and whole, until `budget` bytes. Sizes are cut to multiples of ALIGN."""
    if budget < 0:
        raise ValueError(f"budget: expected >= 0 bytes, got {budget}")
    left, out = budget, []
    for sizes in groups:
        if any(s < 0 for s in sizes):
            raise ValueError(f"sizes: expected >= 0 bytes, got {list(sizes)}")
        want = [s // ALIGN * ALIGN for s in sizes]
        share = [0] * len(want)
        order = sorted(range(len(want)), key=lambda i: want[i])  # the smaller first: what they leave goes on
        for k, i in enumerate(order):
            share[i] = min(want[i], left // (len(order) - k) // ALIGN * ALIGN)
            left -= share[i]
        out.append(share)
    return out


def launch_geometry(nbytes: Sequence[int]) -> tuple[int, int, int]:
    """(grid, block, instructions): one bulk prefetch of SEGMENT bytes a thread, at most MAX_BLOCKS blocks."""
    segments = sum(-(-n // SEGMENT) for n in nbytes)
    blocks = max(1, min(MAX_BLOCKS, -(-segments // THREADS)))
    return blocks, THREADS, segments


def l2_ahead(arrays: Sequence, nbytes: Sequence[int]) -> None:
    """Ask the first nbytes[i] bytes of each device array arrays[i] (at most MAX_RANGES) into L2, in one launch on
    the current stream; nothing is launched when every count is 0."""
    if len(arrays) != len(nbytes) or len(arrays) > MAX_RANGES:
        raise ValueError(f"l2_ahead: expected up to {MAX_RANGES} arrays with a byte count each, got {len(arrays)} "
                         f"arrays and {len(nbytes)} counts")
    for i, (a, n) in enumerate(zip(arrays, nbytes)):
        if n < 0 or n % ALIGN or n > a.nbytes:
            raise ValueError(f"l2_ahead: count {i} is {n}; expected a multiple of {ALIGN} in [0, {a.nbytes}] (the "
                             "array's bytes)")
        if a.data.ptr % ALIGN:
            raise ValueError(f"l2_ahead: array {i} is not {ALIGN}-byte aligned")
    if not any(nbytes):
        return
    pairs = []
    for a, n in list(zip(arrays, nbytes)) + [(arrays[0], 0)] * (MAX_RANGES - len(arrays)):
        pairs += [a, np.int64(n)]
    grid, block, _ = launch_geometry(nbytes)
    load_module(MODULE).get_function("l2_ahead")((grid, 1, 1), (block, 1, 1), tuple(pairs))
