// fp16 tensor-core pieces shared by the dequant-MMA tiles (dq_mma.cu) and the packed-weight MMA (packed_mma.cu):
// half2 arithmetic in one rounding, the m16n8k16 f16 x f16 -> f32 mma, and the store of one warp's m16 x BN
// accumulators scaled by the token's power-of-two inv.
#pragma once
#include "common.cuh"

__device__ __forceinline__ u32 dq_half2_fma(u32 a, u32 b, u32 c) {
    u32 r;
    asm("fma.rn.f16x2 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(c));
    return r;
}
__device__ __forceinline__ u32 dq_half2_sub(u32 a, u32 b) {
    u32 r;
    asm("sub.rn.f16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
    return r;
}

// A half2 of one half of `v` twice ({lo, lo} / {hi, hi}). Spelled as PTX moves of the halves, which ptxas folds into
// the next half2 instruction's operand (.H0_H0 / .H1_H1), where a byte permute (__byte_perm 0x1010 / 0x3232) costs an
// instruction of its own (sm_90 SASS, nvcc 13.0).
__device__ __forceinline__ u32 half2_lo(u32 v) {
    u32 r;
    asm("{\n\t.reg .b16 l, h;\n\tmov.b32 {l, h}, %1;\n\tmov.b32 %0, {l, l};\n\t}" : "=r"(r) : "r"(v));
    return r;
}
__device__ __forceinline__ u32 half2_hi(u32 v) {
    u32 r;
    asm("{\n\t.reg .b16 l, h;\n\tmov.b32 {l, h}, %1;\n\tmov.b32 %0, {h, h};\n\t}" : "=r"(r) : "r"(v));
    return r;
}

// acc = +0 for every (m16 tile, token tile, element): a chain's start (dq_mma.cu, packed_mma.cu's chunks).
template <int MT, int NT>
__device__ __forceinline__ void dq_zero_acc(float (&acc)[MT][NT][4]) {
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
        for (int h = 0; h < NT; ++h)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[m][h][e] = 0.0f;
}

__device__ __forceinline__ void dq_mma16816(float (&c)[4], const u32 (&a)[4], u32 b0, u32 b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Store one warp's m16 x BN accumulators (c0, c1 = row r_lo, tokens 2t, 2t + 1 of each n8 tile; c2, c3 = row
// r_lo + 8) times the token's inv (exact: a power of two), skipping rows past `rows` and tokens past `n`.
template <int NT>
__device__ __forceinline__ void dq_store_m16(const float (&acc)[NT][4], float* __restrict__ dst, const float* inv,
                                             int r_lo, int tok0, int t, int rows, int n) {
#pragma unroll
    for (int h = 0; h < NT; ++h) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            const int j = tok0 + 8 * h + 2 * t + e;
            if (j < n) {
                const float s = __ldg(inv + j);
                if (r_lo < rows) dst[(size_t)j * rows + r_lo] = __fmul_rn(acc[h][e], s);
                if (r_lo + 8 < rows) dst[(size_t)j * rows + r_lo + 8] = __fmul_rn(acc[h][2 + e], s);
            }
        }
    }
}
