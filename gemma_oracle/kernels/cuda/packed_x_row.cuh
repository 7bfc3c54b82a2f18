// One token row of packed_mma.cu's fragment-ordered activations (the layout in its header): f16_rows.cu's fp16
// values and inv of a float32 row, each pair of values (k, k + 1) one word of its lane's record. Shared by
// packed_mma.cu's packed_x and by the producers that write a packed-MMA input in their own launch (fused_norms.cu,
// ffn_act.cu), so every form of the row has the same bits.
#pragma once
#include "f16_row.cuh"  // f16_row_exponent, F16_ROWS_THREADS

#define PK_X_RECORD 64  // uint4 a (8-token tile, 64-value group) record: 2 halves x 32 lanes

// Row `row` (token 8 h + g) of xf / inv from src[k], k a multiple of 64, by the whole block (F16_ROWS_THREADS
// threads; every thread must call it: f16_row_exponent syncs the block). src is read with plain loads, so a
// producer may pass the row it wrote itself before a __syncthreads(). Rows past N are never written: packed MMA
// does not read their words (packed_mma.cu) nor their inv.
__device__ __forceinline__ void packed_x_row(const float* src, int k, int row, uint4* __restrict__ xf,
                                             float* __restrict__ inv) {
    const int h = row >> 3, g = row & 7, groups = k >> 6;
    const int e = f16_row_exponent(src, k);
    const float up = ldexpf(1.0f, e);
    u32* words = (u32*)xf;
    for (int c2 = threadIdx.x; c2 < k / 2; c2 += F16_ROWS_THREADS) {
        const int kk = 2 * c2, j = kk >> 6, c = kk & 63, s = c >> 4, b = (c >> 3) & 1, t = (c & 7) >> 1;
        words[(((size_t)h * groups + j) * 2 + (s >> 1)) * 128 + (4 * g + t) * 4 + 2 * (s & 1) + b] =
            (u32)f32_to_f16(__fmul_rn(src[kk], up)) | ((u32)f32_to_f16(__fmul_rn(src[kk + 1], up)) << 16);
    }
    if (threadIdx.x == 0) inv[row] = ldexpf(1.0f, -e);
}
