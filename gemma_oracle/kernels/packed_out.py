"""Host-side plan of the packed-MMA records that gelu_tanh_mul(..., packed=True) writes beside its float32 output.

The records (kernels/packed_mma.py packed_x) need each row's largest |y|, so ffn_act.cu has two kernels of the same
bits: one block a row, and, on devices with thread block clusters, a cluster of C blocks a row that exchange their
parts' maxima through distributed shared memory (the .cu header says why: at one token row the one-block kernel put
the 12B ffn's whole K = 15360 row on one SM). Which one runs, and its geometry, is a function of the shape and the
device's clusters alone, planned here without CuPy so the CPU tests check it; the launcher is
`gemma_oracle.kernels.ffn_act.gelu_tanh_mul`. The cluster kernel is the choice on sm_90; its bits were checked
against packed_x(gelu_tanh_mul) on an H100 (tests/test_kernels_packed_mma_gpu.py). Whether gelu * up writes the
records at all is the engine's (gpu_engine PACKED_PRODUCERS): with this kernel the whole 12B step was level with a
separate packed_x launch (0.98-1.02x, reports/history/2026-12-07-s20.md), so it does not by default.
"""
from __future__ import annotations

from dataclasses import dataclass

from .packed_mma import CLUSTER_MAX, GROUP, X_THREADS as THREADS  # the portable cluster size (the kernel: <= 32)

GRID_Y_MAX = 65535  # a cluster launch's rows are its grid's y
ENTRIES = ("gelu_tanh_mul_packed_f32", "gelu_tanh_mul_packed_cluster_f32")  # one block a row; a cluster a row


@dataclass(frozen=True)
class PackedOutLaunch:
    entry: str  # extern "C" name in ffn_act.cu
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    cluster: tuple[int, int, int] | None  # thread block cluster shape (kernels/launch.py Kernel); None: no cluster


def cluster_blocks(k: int) -> int:
    """C, the blocks of a row's cluster: as many as the portable cluster holds, never more than the row's groups
    (each block takes at least one group: groups c G / C .. (c + 1) G / C)."""
    return min(CLUSTER_MAX, k // GROUP)


def group_bounds(k: int, blocks: int) -> list[tuple[int, int]]:
    """The 64-value groups [j0, j1) each block of a row's cluster takes (the kernel's c * G / C split)."""
    groups = k // GROUP
    return [(c * groups // blocks, (c + 1) * groups // blocks) for c in range(blocks)]


def plan_gelu_tanh_mul_packed(rows: int, k: int, clusters: bool) -> PackedOutLaunch:
    """The launch of gelu_tanh_mul(..., packed=True) for gate / up [rows, k]: the cluster kernel when `clusters` (the
    device has them, and the caller did not ask for one block a row) and rows fit a grid's y, else one block a row.
    The same bits either way; a speed choice."""
    if rows < 1:
        raise ValueError(f"rows: expected >= 1, got {rows}")
    if k <= 0 or k % GROUP:
        raise ValueError(f"k: expected a positive multiple of {GROUP}, got {k}")
    if clusters and rows <= GRID_Y_MAX:
        c = cluster_blocks(k)
        return PackedOutLaunch(ENTRIES[1], (c, rows, 1), (THREADS, 1, 1), (c, 1, 1))
    return PackedOutLaunch(ENTRIES[0], (rows, 1, 1), (THREADS, 1, 1), None)
