// Batched mat-vec y[n, r] = sum_k W[r, k] * x[n, k]: quantized GGUF weight rows W, float32 activations x.
// Two routes, BITWISE equal to each other and to the N = 1 path on the same inputs (the project's contract):
//   WS (weight-stationary)  one launch for n in 1..NCAP; each weight unit is loaded and decoded once per launch
//                           and applied to all n tokens, whose NCAP accumulators live in registers.
//   GEMM-N                  any n; the token is grid.y, and every (row, token) runs the NCAP = 1 reduction.
//
// #defines:  MV_WARPS   warps per block = rows per block (one warp per row); the launcher (kernels/matvec.py,
//                       ROWS_PER_BLOCK) must use the same value, which tests/test_kernels_host.py checks.
//
// Entry points (<t> in f32 f16 bf16 q4_0 q5_0 q8_0 q4_k q5_k q6_k), all with the same parameters
//     (const u8* w, i64 row_bytes, int rows, int units, const float* x, int n, float* y)
//   w [rows, row_bytes] GGUF rows (16-byte aligned); units = K / 32; x [n, K] float32 (16-byte aligned, rows
//   contiguous); y [n, rows] float32; block = 32 * MV_WARPS threads.
//   ws_<t>_n1, ws_<t>_n2, ws_<t>_n4, ws_<t>_n8, ws_<t>_n16   grid (ceil(rows / MV_WARPS), 1); n <= NCAP
//   gemm_n_<t>                                               grid (ceil(rows / MV_WARPS), n)
//
// Reduction order (identical for every token of every route; only the number of accumulators differs):
//   1. Lane L of the row's warp walks units u = L, L + 32, L + 64, ... < units in increasing order. For each
//      unit it decodes the 32 weights once (quant_blocks.cuh) and, per token, folds them into that token's
//      accumulator in element order: acc = __fmaf_rn(w[i], x[32u + i], acc) for i = 0..31, acc starting at +0.
//   2. Warp butterfly: for m = 16, 8, 4, 2, 1: acc = __fadd_rn(acc, __shfl_xor_sync(~0u, acc, m)). IEEE addition
//      is commutative, so both partners of each exchange compute the same sum and every lane ends with the
//      same value; lane j stores token j's result.
//   No shared memory, no atomics, no split of K across warps.
// Why it is bitwise: a token's result depends only on (its x row, W row, lane geometry), and step 1 is one
// device function (mv_row_dot) instantiated for NCAP in {1, 2, 4, 8, 16}: token j's accumulator sees exactly
// the same decoded weights (decode is a pure function of the bytes) and the same chain of explicitly rounded
// FMAs whatever NCAP is, and the compiler may not reorder or contract __fmaf_rn / __fadd_rn. GEMM-N calls the
// NCAP = 1 instantiation with x and y offset to its token, which is exactly the N = 1 WS launch.
// Register arrays (w[32], acc[NCAP]) are indexed only by fully unrolled loop counters; the `j >= n` early exits
// keep the unused capacity idle, so nothing is spilled (tests/test_kernels_compile.py fails on any spill).
#include "quant_blocks.cuh"

#ifndef MV_WARPS
#define MV_WARPS 4
#endif
#define MV_THREADS (32 * MV_WARPS)

template <class Q, int NCAP>
__device__ __forceinline__ void mv_row_dot(const u8* __restrict__ wrow, int units, const float* __restrict__ x,
                                           int ldx, int n, int lane, float (&acc)[NCAP]) {
#pragma unroll
    for (int j = 0; j < NCAP; ++j) acc[j] = 0.0f;
    for (int u = lane; u < units; u += 32) {
        float w[32];
        Q::decode(wrow, u, w);
#pragma unroll
        for (int j = 0; j < NCAP; ++j) {
            // Guard as an early exit, not an if-block per token: n is warp-uniform and tokens run in increasing
            // order, and the exit chain keeps ptxas from splitting live ranges across NCAP diamonds (the
            // if-block form spilled in ws_f32_n8).
            if (j >= n) break;
            const float4* xp = (const float4*)(x + (size_t)j * ldx + (size_t)u * QB_UNIT);
#pragma unroll
            for (int k = 0; k < 8; ++k) {
                const float4 xv = __ldg(xp + k);
                acc[j] = __fmaf_rn(w[4 * k + 0], xv.x, acc[j]);
                acc[j] = __fmaf_rn(w[4 * k + 1], xv.y, acc[j]);
                acc[j] = __fmaf_rn(w[4 * k + 2], xv.z, acc[j]);
                acc[j] = __fmaf_rn(w[4 * k + 3], xv.w, acc[j]);
            }
        }
    }
#pragma unroll
    for (int j = 0; j < NCAP; ++j) {
        if (j >= n) break;
#pragma unroll
        for (int m = 16; m >= 1; m >>= 1) acc[j] = __fadd_rn(acc[j], __shfl_xor_sync(0xFFFFFFFFu, acc[j], m));
    }
}

template <class Q, int NCAP>
__device__ __forceinline__ void mv_ws_kernel(const u8* __restrict__ w, i64 row_bytes, int rows, int units,
                                             const float* __restrict__ x, int n, float* __restrict__ y) {
    const int lane = threadIdx.x & 31;
    const int r = blockIdx.x * MV_WARPS + (threadIdx.x >> 5);
    if (r >= rows) return;  // warp-uniform: the whole warp leaves, so the butterfly below stays full-mask
    float acc[NCAP];
    mv_row_dot<Q, NCAP>(w + (size_t)r * row_bytes, units, x, units * QB_UNIT, n, lane, acc);
#pragma unroll
    for (int j = 0; j < NCAP; ++j) {
        if (j < n && lane == j) y[(size_t)j * rows + r] = acc[j];
    }
}

template <class Q>
__device__ __forceinline__ void mv_gemm_n_kernel(const u8* __restrict__ w, i64 row_bytes, int rows, int units,
                                                 const float* __restrict__ x, float* __restrict__ y) {
    const size_t t = blockIdx.y;  // this block's token
    mv_ws_kernel<Q, 1>(w, row_bytes, rows, units, x + t * units * QB_UNIT, 1, y + t * rows);
}

#define MV_PARAMS const u8 *w, i64 row_bytes, int rows, int units, const float *x, int n, float *y
#define MV_WS_ENTRY(name, Q, NCAP)                                                                             \
    extern "C" __global__ void __launch_bounds__(MV_THREADS) ws_##name##_n##NCAP(MV_PARAMS) {                 \
        grid_dependency_enter();                                                                              \
        mv_ws_kernel<Q, NCAP>(w, row_bytes, rows, units, x, n, y);                                             \
    }
#define MV_ENTRIES(name, Q)                                                                                    \
    MV_WS_ENTRY(name, Q, 1)                                                                                    \
    MV_WS_ENTRY(name, Q, 2)                                                                                    \
    MV_WS_ENTRY(name, Q, 4)                                                                                    \
    MV_WS_ENTRY(name, Q, 8)                                                                                    \
    MV_WS_ENTRY(name, Q, 16)                                                                                   \
    extern "C" __global__ void __launch_bounds__(MV_THREADS) gemm_n_##name(MV_PARAMS) {                       \
        grid_dependency_enter();                                                                              \
        (void)n;                                                                                               \
        mv_gemm_n_kernel<Q>(w, row_bytes, rows, units, x, y);                                                  \
    }

MV_ENTRIES(f32, qt_f32)
MV_ENTRIES(f16, qt_f16)
MV_ENTRIES(bf16, qt_bf16)
MV_ENTRIES(q4_0, qt_q4_0)
MV_ENTRIES(q5_0, qt_q5_0)
MV_ENTRIES(q8_0, qt_q8_0)
MV_ENTRIES(q4_k, qt_q4_k)
MV_ENTRIES(q5_k, qt_q5_k)
MV_ENTRIES(q6_k, qt_q6_k)
