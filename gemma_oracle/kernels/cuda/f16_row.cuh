// The per-row power of two of the fp16 activation rows (f16_rows.cu; packed_mma.cu's fragment-ordered rows): e puts
// the row's largest magnitude a in [2^14, 2^15) (e = 15 - ex with a in [2^(ex - 1), 2^ex), ex read from a's biased
// exponent bits: ex = biased - 126), clamped to |e| <= 126 so that 2^e and 2^-e stay normal; e = 0 for a row whose
// largest magnitude is 0 or a float32 subnormal. f16_rows.cu's header gives the numerics.
#pragma once
#include "common.cuh"

#define F16_ROWS_THREADS 256

// e of a row whose largest magnitude is a (the rule above): the one definition, whether one block found a
// (f16_row_exponent) or the blocks of a cluster did, each over a part of the row (ffn_act.cu).
__device__ __forceinline__ int f16_exponent_of_max(float a) {
    const int biased = (int)((__float_as_uint(a) >> 23) & 0xFFu);  // 0: zero or subnormal
    return biased == 0 ? 0 : min(126, max(-126, 15 - (biased - 126)));
}

// The largest of the block's per-thread maxima a (F16_ROWS_THREADS threads; every thread calls it and gets it).
// fmaxf drops NaN and max is exact in any order, so any split of a row into parts gives the same max. Its
// __syncthreads also orders the block's earlier writes before the reads that follow it. Once a kernel: a second
// call could overwrite s_max while a slower warp still reads the first one's.
__device__ __forceinline__ float f16_block_max(float a) {
    __shared__ float s_max[F16_ROWS_THREADS / 32];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) a = fmaxf(a, __shfl_xor_sync(0xffffffffu, a, o));
    if ((threadIdx.x & 31) == 0) s_max[threadIdx.x >> 5] = a;
    __syncthreads();
    a = s_max[0];
#pragma unroll
    for (int w = 1; w < F16_ROWS_THREADS / 32; ++w) a = fmaxf(a, s_max[w]);
    return a;
}

// A float of a row: with CG through L2 (ld.global.cg), for a row other blocks of the same launch wrote (attention.cu's
// fused entries); the same value either way.
template <bool CG>
__device__ __forceinline__ float row_word(const float* p) { return CG ? __ldcg(p) : *p; }

// e of the float32 row [k], computed by the whole block (F16_ROWS_THREADS threads; every thread gets it). Plain
// loads (no __restrict__): packed_x_row.cuh passes rows its block has just written (CG: see row_word).
template <bool CG = false>
__device__ __forceinline__ int f16_row_exponent(const float* row, int k) {
    float a = 0.0f;  // max |x| is exact in any order
    for (int i = threadIdx.x; i < k; i += F16_ROWS_THREADS) a = fmaxf(a, fabsf(row_word<CG>(row + i)));
    return f16_exponent_of_max(f16_block_max(a));
}
