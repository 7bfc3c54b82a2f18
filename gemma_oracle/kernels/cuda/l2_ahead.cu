// The weights of the matmuls to come, asked into L2 while a decode step runs its small launches (RoPE and the KV
// write, attention, norms, gelu * up, packed_x), during which DRAM is nearly idle. At N = 1 on the 12B stand-ins those
// launches are a quarter of the step (harness/perf/step_split.py, reports/history/2026-12-07-s23.md), and each matmul
// could ask only its own first groups into L2, only once the launch before it had started (packed_mma.cu
// pk_prefetch_weights_l2). The engine places this launch right after a matmul, naming the next matmuls' weights
// (engine/gpu_engine.py, GEMMA_ORACLE_L2_AHEAD); it reads and writes nothing, so no result changes.
//
// Entry point (extern "C"):
//   l2_ahead(p0, n0, p1, n1, p2, n2)
//       asks bytes [0, n_i) of each p_i into L2 (cp.async.bulk.prefetch.L2, AHEAD_SEGMENT bytes an instruction,
//       one a thread, grid-strided); p_i 16-byte aligned, n_i a multiple of 16 (0: none). grid any, block
//       AHEAD_THREADS.
// Under PDL it lets the next grid launch first (grid_dependency_release), then asks, then waits for the grid before
// it: the next grid's wait covers this grid, and this grid ends only after the one before it, so stream order holds.
#include "common.cuh"

#define AHEAD_THREADS 128
#define AHEAD_SEGMENT (16 * 1024)

__device__ __forceinline__ void l2_ahead_range(const u8* p, i64 bytes) {
    const i64 stride = (i64)gridDim.x * AHEAD_THREADS * AHEAD_SEGMENT;
    for (i64 off = ((i64)blockIdx.x * AHEAD_THREADS + threadIdx.x) * AHEAD_SEGMENT; off < bytes; off += stride) {
        const u32 size = (u32)(bytes - off < AHEAD_SEGMENT ? bytes - off : AHEAD_SEGMENT);
        asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p + off), "r"(size) : "memory");
    }
}

__device__ __forceinline__ void l2_ahead_ranges(const u8* p0, i64 n0, const u8* p1, i64 n1, const u8* p2, i64 n2) {
    l2_ahead_range(p0, n0);
    l2_ahead_range(p1, n1);
    l2_ahead_range(p2, n2);
}

extern "C" __global__ void __launch_bounds__(AHEAD_THREADS)
l2_ahead(const u8* p0, i64 n0, const u8* p1, i64 n1, const u8* p2, i64 n2) {
    grid_dependency_release();
    l2_ahead_ranges(p0, n0, p1, n1, p2, n2);
    grid_dependency_enter();
}
