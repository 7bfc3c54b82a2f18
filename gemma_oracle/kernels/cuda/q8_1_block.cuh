// One Q8_1 block quantized by one warp, lane l holding value l: the arithmetic of quantize_q8_1.cu, shared with
// fused_norms.cu (norms whose output is quantized in registers), so both write the same bytes by construction.
// The rules and the summation order of s are stated in quantize_q8_1.cu's header.
#pragma once
#include "common.cuh"

#define Q8_1_BYTES 36

// NB blocks at once, block b's value of this lane in x_raw[b], its 36 bytes at dst0 + b * stride: the NB
// independent shuffle chains are interleaved (a warp quantizing one block after another waits out each chain's
// latency). All 32 lanes of the warp must call this together (full-mask shuffles). Every block gets exactly the
// arithmetic of the one-block form below, which is this function with NB = 1.
template <int NB>
__device__ __forceinline__ void q8_1_blocks_from_warp(const float (&x_raw)[NB], u8* dst0, i64 stride) {
    const int lane = threadIdx.x & 31;
    float xi[NB], amax[NB], sum[NB];
#pragma unroll
    for (int b = 0; b < NB; ++b) {
        // Subnormal inputs count as zero. Measured on the H100 (CuPy 14.2 NVRTC, even with -ftz=false): fabsf/
        // fmaxf of a subnormal gave 0, so the flush is made explicit here and in kernels/reference/q8_1.py rather
        // than left to the compiler's mode (llama.cpp's CUDA build flushes too: it compiles with -use_fast_math).
        xi[b] = fabsf(x_raw[b]) < 1.17549435e-38f ? 0.0f : x_raw[b];
        amax[b] = fabsf(xi[b]);
        sum[b] = xi[b];
    }
#pragma unroll
    for (int m = 16; m >= 1; m >>= 1) {
#pragma unroll
        for (int b = 0; b < NB; ++b) {
            amax[b] = fmaxf(amax[b], __shfl_xor_sync(0xFFFFFFFFu, amax[b], m));
            sum[b] = __fadd_rn(sum[b], __shfl_xor_sync(0xFFFFFFFFu, sum[b], m));
        }
    }
#pragma unroll
    for (int b = 0; b < NB; ++b) {
        const float d = __fdiv_rn(amax[b], 127.0f);
        const int q = amax[b] == 0.0f ? 0 : (int)roundf(__fdiv_rn(xi[b], d));
        // lanes 0..7 store the 32 codes as 8 little-endian words (word w = codes 4w .. 4w+3); lane 8 the header
        const u32 byte = (u32)q & 0xFFu;
        u32 word = 0;
#pragma unroll
        for (int t = 0; t < 4; ++t) word |= __shfl_sync(0xFFFFFFFFu, byte, (4 * lane + t) & 31) << (8 * t);
        u32* dst = (u32*)(dst0 + b * stride);
        if (lane < 8) dst[1 + lane] = word;
        if (lane == 8) dst[0] = (u32)f32_to_f16(d) | ((u32)f32_to_f16(sum[b]) << 16);
    }
}

// One block, lane l holding value l. dst: the block's 36 bytes, 4-byte aligned.
__device__ __forceinline__ void q8_1_block_from_warp(float x_raw, u8* dst_block) {
    const float x[1] = {x_raw};
    q8_1_blocks_from_warp<1>(x, dst_block, 0);
}
