// Quantize float32 activations to Q8_1 blocks, as llama.cpp's CUDA quantize_q8_1 does.
//
// Q8_1 block (36 B): fp16 d | fp16 s | int8 qs[32]. For the 32 values x of a block:
//   x    = 0 where |x| < FLT_MIN         (subnormals flushed, explicitly: see the kernel body)
//   amax = max |x|                       (exact in any order)
//   d    = amax / 127                    IEEE float32 division (__fdiv_rn; no fast-math reciprocal)
//   q    = amax == 0 ? 0 : roundf(x / d) x / d again IEEE-rounded; roundf rounds half AWAY from zero
//   s    = sum of the UNQUANTIZED x      summation order: the xor butterfly below (llama.cpp's warp_reduce_sum)
//   d and s are stored as fp16, rounded to nearest even; q is computed from the float32 d, not the fp16 one.
// Summation order of s, with lane l holding x[l]: for m = 16, 8, 4, 2, 1: v = __fadd_rn(v, shfl_xor(v, m)).
// Addition is commutative, so every lane ends with the same value, which equals folding the block in halves:
// s16[i] = x[i] + x[i+16] (i < 16), s8[i] = s16[i] + s16[i+8], ..., s = s2[0] + s2[1]. kernels/reference/q8_1.py
// states that order independently; the GPU test checks bitwise equality.
//
// #defines: Q8_1_WARPS  warps per block (one warp per Q8_1 block; lane l quantizes value l)
//
// Entry point:
//   quantize_q8_1(const float* x, i64 n_blocks, u8* out)
//       x: float32, n_blocks * 32 values (a contiguous [N, K] with K % 32 == 0 flattens to N * K / 32 blocks
//       that never straddle a row); out: n_blocks * 36 bytes, 4-byte aligned.
//       grid.x = ceil(n_blocks / Q8_1_WARPS), block = 32 * Q8_1_WARPS.
#include "common.cuh"

#ifndef Q8_1_WARPS
#define Q8_1_WARPS 8
#endif
#define Q8_1_BYTES 36

extern "C" __global__ void __launch_bounds__(32 * Q8_1_WARPS)
    quantize_q8_1(const float* __restrict__ x, i64 n_blocks, u8* __restrict__ out) {
    const int lane = threadIdx.x & 31;
    const i64 blk = (i64)blockIdx.x * Q8_1_WARPS + (threadIdx.x >> 5);
    if (blk >= n_blocks) return;  // warp-uniform
    // Subnormal inputs count as zero. Measured on the H100 (CuPy 14.2 NVRTC, even with -ftz=false): fabsf/
    // fmaxf of a subnormal gave 0, so the flush is made explicit here and in kernels/reference/q8_1.py rather
    // than left to the compiler's mode (llama.cpp's CUDA build flushes too: it compiles with -use_fast_math).
    const float x_raw = x[blk * 32 + lane];
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
    u32* dst = (u32*)(out + blk * Q8_1_BYTES);
    if (lane < 8) dst[1 + lane] = word;
    if (lane == 8) dst[0] = (u32)f32_to_f16(d) | ((u32)f32_to_f16(sum) << 16);
}
