// One Q8_1 block quantized by one warp, lane l holding value l: the arithmetic of quantize_q8_1.cu, shared with
// fused_norms.cu (norms whose output is quantized in registers), so both write the same bytes by construction.
// The rules and the summation order of s are stated in quantize_q8_1.cu's header.
#pragma once
#include "common.cuh"

#define Q8_1_BYTES 36

// All 32 lanes of the warp must call this together (full-mask shuffles). dst: the block's 36 bytes, 4-byte aligned.
__device__ __forceinline__ void q8_1_block_from_warp(float x_raw, u8* dst_block) {
    const int lane = threadIdx.x & 31;
    // Subnormal inputs count as zero. Measured on the H100 (CuPy 14.2 NVRTC, even with -ftz=false): fabsf/
    // fmaxf of a subnormal gave 0, so the flush is made explicit here and in kernels/reference/q8_1.py rather
    // than left to the compiler's mode (llama.cpp's CUDA build flushes too: it compiles with -use_fast_math).
    const float xi = fabsf(x_raw) < 1.17549435e-38f ? 0.0f : x_raw;
    float amax = fabsf(xi), sum = xi;
#pragma unroll
    for (int m = 16; m >= 1; m >>= 1) {
        amax = fmaxf(amax, __shfl_xor_sync(0xFFFFFFFFu, amax, m));
        sum = __fadd_rn(sum, __shfl_xor_sync(0xFFFFFFFFu, sum, m));
    }
    const float d = __fdiv_rn(amax, 127.0f);
    const int q = amax == 0.0f ? 0 : (int)roundf(__fdiv_rn(xi, d));
    // lanes 0..7 store the 32 codes as 8 little-endian words (word w = codes 4w .. 4w+3); lane 8 the header
    const u32 byte = (u32)q & 0xFFu;
    u32 word = 0;
#pragma unroll
    for (int t = 0; t < 4; ++t) word |= __shfl_sync(0xFFFFFFFFu, byte, (4 * lane + t) & 31) << (8 * t);
    u32* dst = (u32*)dst_block;
    if (lane < 8) dst[1 + lane] = word;
    if (lane == 8) dst[0] = (u32)f32_to_f16(d) | ((u32)f32_to_f16(sum) << 16);
}
