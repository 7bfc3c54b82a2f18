// Quantize float32 activations to Q8_1 blocks, as llama.cpp's CUDA quantize_q8_1 does.
//
// Q8_1 block (36 B): fp16 d | fp16 s | int8 qs[32]. For the 32 values x of a block:
//   x    = 0 where |x| < FLT_MIN         (subnormals flushed, explicitly: see q8_1_block.cuh)
//   amax = max |x|                       (exact in any order)
//   d    = amax / 127                    IEEE float32 division (__fdiv_rn; no fast-math reciprocal)
//   q    = amax == 0 ? 0 : roundf(x / d) x / d again IEEE-rounded; roundf rounds half AWAY from zero
//   s    = sum of the UNQUANTIZED x      summation order: the xor butterfly (llama.cpp's warp_reduce_sum)
//   d and s are stored as fp16, rounded to nearest even; q is computed from the float32 d, not the fp16 one.
// Summation order of s, with lane l holding x[l]: for m = 16, 8, 4, 2, 1: v = __fadd_rn(v, shfl_xor(v, m)).
// Addition is commutative, so every lane ends with the same value, which equals folding the block in halves:
// s16[i] = x[i] + x[i+16] (i < 16), s8[i] = s16[i] + s16[i+8], ..., s = s2[0] + s2[1]. kernels/reference/q8_1.py
// states that order independently; the GPU test checks bitwise equality. The block arithmetic lives in
// q8_1_block.cuh (q8_1_block_from_warp), shared with the fused norm + Q8_1 kernels of fused_norms.cu.
//
// #defines: Q8_1_WARPS  warps per block (one warp per Q8_1 block; lane l quantizes value l)
//
// Entry point:
//   quantize_q8_1(const float* x, i64 n_blocks, u8* out)
//       x: float32, n_blocks * 32 values (a contiguous [N, K] with K % 32 == 0 flattens to N * K / 32 blocks
//       that never straddle a row); out: n_blocks * 36 bytes, 4-byte aligned.
//       grid.x = ceil(n_blocks / Q8_1_WARPS), block = 32 * Q8_1_WARPS.
#include "q8_1_block.cuh"

#ifndef Q8_1_WARPS
#define Q8_1_WARPS 8
#endif

extern "C" __global__ void __launch_bounds__(32 * Q8_1_WARPS)
    quantize_q8_1(const float* __restrict__ x, i64 n_blocks, u8* __restrict__ out) {
    grid_dependency_enter();
    const i64 blk = (i64)blockIdx.x * Q8_1_WARPS + (threadIdx.x >> 5);
    if (blk >= n_blocks) return;  // warp-uniform
    q8_1_block_from_warp(x[blk * 32 + (threadIdx.x & 31)], out + blk * Q8_1_BYTES);
}
