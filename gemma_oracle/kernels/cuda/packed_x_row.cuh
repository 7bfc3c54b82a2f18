// One token row of packed_mma.cu's fragment-ordered activations (the layout in its header): f16_rows.cu's fp16
// values and inv of a float32 row, each pair of values (k, k + 1) one word of its lane's record. Shared by
// packed_mma.cu's packed_x and by the producers that write a packed-MMA input in their own launch (fused_norms.cu,
// ffn_act.cu), so every form of the row has the same bits.
#pragma once
#include "f16_row.cuh"  // f16_row_exponent, F16_ROWS_THREADS

#define PK_X_RECORD 64  // uint4 a (8-token tile, 64-value group) record: 2 halves x 32 lanes

// The words of the 64-value groups [j0, j1) of row `row` (token 8 h + g) of xf: src[kk] * up, up = 2^e, as fp16,
// a pair (kk, kk + 1) a word, by the whole block (F16_ROWS_THREADS threads). The one word formula of every form of
// the row: packed_x_row writes all k / 64 groups of a row, ffn_act.cu's cluster blocks each a range of them.
template <bool CG = false>
__device__ __forceinline__ void packed_x_words(const float* src, int k, int row, int j0, int j1, float up,
                                               uint4* __restrict__ xf) {
    const int h = row >> 3, g = row & 7, groups = k >> 6;
    u32* words = (u32*)xf;
    for (int c2 = 32 * j0 + threadIdx.x; c2 < 32 * j1; c2 += F16_ROWS_THREADS) {
        const int kk = 2 * c2, j = kk >> 6, c = kk & 63, s = c >> 4, b = (c >> 3) & 1, t = (c & 7) >> 1;
        words[(((size_t)h * groups + j) * 2 + (s >> 1)) * 128 + (4 * g + t) * 4 + 2 * (s & 1) + b] =
            (u32)f32_to_f16(__fmul_rn(row_word<CG>(src + kk), up)) |
            ((u32)f32_to_f16(__fmul_rn(row_word<CG>(src + kk + 1), up)) << 16);
    }
}

// Row `row` of xf / inv from src[k], k a multiple of 64, by the whole block (F16_ROWS_THREADS threads; every
// thread must call it: f16_row_exponent syncs the block). src is read with plain loads, so a producer may pass
// the row it wrote itself before a __syncthreads() (CG: a row other blocks of the launch wrote, read through L2). Rows
// past N are never written: packed MMA does not read their words (packed_mma.cu) nor their inv.
template <bool CG = false>
__device__ __forceinline__ void packed_x_row(const float* src, int k, int row, uint4* __restrict__ xf,
                                             float* __restrict__ inv) {
    const int e = f16_row_exponent<CG>(src, k);
    packed_x_words<CG>(src, k, row, 0, k >> 6, ldexpf(1.0f, e), xf);
    if (threadIdx.x == 0) inv[row] = ldexpf(1.0f, -e);
}
