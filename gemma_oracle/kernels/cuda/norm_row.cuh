// The RMS-norm arithmetic of one row, shared by norms.cu (rms_norm_f32, add_rms_norm_f32) and fused_norms.cu
// (the same norms fused with Q8_1 quantization or with RoPE), so that a fused kernel's bits equal the unfused
// kernels' by construction: both call these functions, and every rounding step is an explicit intrinsic
// (__fmaf_rn, __fmul_rn, __fadd_rn, __fdiv_rn, __fsqrt_rn, __frcp_rn), which nvcc/NVRTC never contract or
// reassociate, whatever the surrounding code.
//
// Block shape: one block of NORM_THREADS threads per row. NORM_THREADS is fixed: it sets the reduction order, so a
// row's result depends only on D, never on how many rows a launch has.
//
// Reduction order (fixed): thread t sums x[i]^2 (__fmaf_rn(x, x, s)) for i = t, t + NORM_THREADS, ... in
// increasing i; the 32 lanes of a warp combine with an xor butterfly (16, 8, 4, 2, 1; commutative, so every lane
// holds the same bits); then every thread adds the per-warp sums in warp order 0..7 itself (no broadcast needed).
// inv = 1 / sqrt(sum / D + eps): IEEE divide, add, sqrt and reciprocal (no rsqrtf approximation).
// Output element: o = (x * inv) [* w], two float32 multiplies; the residual form is (h + o) * scale.
//
// Register layout: rows of up to NORM_REG_MAX = NORM_THREADS * NORM_PER_THREAD elements are read ONCE into
// registers, thread t holding elements t + NORM_THREADS * k (k = 0 .. NORM_PER_THREAD-1). Warp w of the block then
// holds elements NORM_THREADS * k + 32 * w + lane: with D % 32 == 0 that is exactly the 32-value block
// (NORM_THREADS * k + 32 * w) / 32 with lane l = value l, the layout a Q8_1 quantizer wants (q8_1_block.cuh).
#pragma once
#include "common.cuh"

#define NORM_THREADS 256
#define NORM_WARPS (NORM_THREADS / 32)
#define NORM_PER_THREAD 16
#define NORM_REG_MAX (NORM_THREADS * NORM_PER_THREAD)

__device__ __forceinline__ float warp_sum_butterfly(float v) {
#pragma unroll
    for (int m = 16; m >= 1; m >>= 1) v = __fadd_rn(v, __shfl_xor_sync(0xffffffffu, v, m));
    return v;
}

// Sum of the per-warp butterfly sums in warp order 0..NORM_WARPS-1, identical bits in every thread of the block.
// The per-warp sums go through one shared array: a kernel that reduces twice must __syncthreads() between the two
// calls (every thread reads the array after the barrier inside; a second call's writes must wait for those reads).
__device__ __forceinline__ float block_sum_in_warp_order(float s) {
    __shared__ float warp_sums[NORM_WARPS];
    s = warp_sum_butterfly(s);
    if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = s;
    __syncthreads();
    float tot = 0.0f;
#pragma unroll
    for (int w = 0; w < NORM_WARPS; ++w) tot = __fadd_rn(tot, warp_sums[w]);
    return tot;
}

// 1 / sqrt(mean + eps) from the row's sum of squares
__device__ __forceinline__ float inv_rms_of(float sum_sq, int D, float eps) {
    return __frcp_rn(__fsqrt_rn(__fadd_rn(__fdiv_rn(sum_sq, (float)D), eps)));
}

// A normed element: (x * inv) [* w]
__device__ __forceinline__ float rms_scale(float x, float inv, float w, int has_w) {
    const float o = __fmul_rn(x, inv);
    return has_w ? __fmul_rn(o, w) : o;
}

// The residual form: (h + o) * scale (scale = 1 leaves the sum unchanged exactly)
__device__ __forceinline__ float residual_add(float h, float o, float scale) {
    return __fmul_rn(__fadd_rn(h, o), scale);
}

// The row index of this thread's register element k
__device__ __forceinline__ int reg_index(int k) { return threadIdx.x + k * NORM_THREADS; }

// 1 / rms of a row held in registers (v[k] = element reg_index(k); entries >= D are ignored)
__device__ __forceinline__ float inv_rms_regs(const float (&v)[NORM_PER_THREAD], int D, float eps) {
    float s = 0.0f;
#pragma unroll
    for (int k = 0; k < NORM_PER_THREAD; ++k)
        // the unsigned compare of the original rms_norm_f32 (which keeps its SASS unchanged)
        if (threadIdx.x + k * NORM_THREADS < D) s = __fmaf_rn(v[k], v[k], s);
    return inv_rms_of(block_sum_in_warp_order(s), D, eps);
}

// 1 / rms of a row of any length read from memory (the strided loop: same per-thread order as inv_rms_regs)
__device__ __forceinline__ float inv_rms_loop(const float* xr, int D, float eps) {
    float s = 0.0f;
    for (int i = threadIdx.x; i < D; i += NORM_THREADS) {
        const float v = xr[i];
        s = __fmaf_rn(v, v, s);
    }
    return inv_rms_of(block_sum_in_warp_order(s), D, eps);
}

// Load a row of <= NORM_REG_MAX into registers: r[i] where `present` and i < D, else `fill` (a weightless norm
// loads w as all ones; entries past D are never used)
__device__ __forceinline__ void load_row_regs(float (&v)[NORM_PER_THREAD], const float* r, int D, int present,
                                              float fill) {
#pragma unroll
    for (int k = 0; k < NORM_PER_THREAD; ++k) {
        const int i = reg_index(k);
        v[k] = (present && i < D) ? r[i] : fill;
    }
}
