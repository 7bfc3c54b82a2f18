// RMS norms over the last axis of a [rows, D] float32 matrix, one block per row.
//
// Entry points (extern "C", float32 in and out, all arrays C-contiguous):
//   rms_norm_f32(x, w, y, rows, D, eps, has_w)
//       y[r, :] = x[r, :] * (1 / sqrtf(mean(x[r, :]^2) + eps)) [* w]
//       The per-head variant (q/k norms, the weightless V norm) is this kernel on x viewed as [R*H, d].
//   add_rms_norm_f32(h, x, w, y, rows, D, eps, scale, has_w)
//       y[r, :] = (h[r, :] + rms_norm(x[r, :]) [* w]) * scale
//       (post-attention / post-FFN residual; scale = layer_output_scale on the last add of a layer, else 1)
//   scale_f32(x, y, n, scale)
//       y[i] = x[i] * scale (layer_output_scale on its own, e.g. after the PLE add)
//
// Compile-time constants (#define):
//   NORM_THREADS  threads per row block (256). Fixed: it sets the reduction order, so a row's result
//                 depends only on D, never on how many rows a launch has.
//
// Reduction order (fixed): thread t sums x[i]^2 for i = t, t + NORM_THREADS, ... in increasing i; the 32
// lanes of a warp combine with an xor butterfly (16, 8, 4, 2, 1; commutative, so every lane holds the same
// bits); then every thread adds the per-warp sums in warp order 0..7 itself (no broadcast needed).
// 1/sqrt is computed as 1.0f / sqrtf(ms + eps) (IEEE sqrt and divide; no rsqrtf approximation).
// Each element is read and written by the same thread, so y may alias x (or h): in-place is allowed.
#include "common.cuh"

#define NORM_THREADS 256
#define NORM_WARPS (NORM_THREADS / 32)

__device__ __forceinline__ float warp_sum_butterfly(float v) {
#pragma unroll
    for (int m = 16; m >= 1; m >>= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
    return v;
}

// 1 / sqrt(mean(x^2) + eps) of one row, identical bits in every thread of the block.
__device__ __forceinline__ float row_inv_rms(const float* __restrict__ xr, int D, float eps) {
    __shared__ float warp_sums[NORM_WARPS];
    float s = 0.0f;
    for (int i = threadIdx.x; i < D; i += NORM_THREADS) {
        float v = xr[i];
        s = __fmaf_rn(v, v, s);
    }
    s = warp_sum_butterfly(s);
    if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = s;
    __syncthreads();
    float tot = 0.0f;
#pragma unroll
    for (int w = 0; w < NORM_WARPS; ++w) tot += warp_sums[w];
    return 1.0f / sqrtf(tot / (float)D + eps);
}

extern "C" __global__ void __launch_bounds__(NORM_THREADS)
rms_norm_f32(const float* x, const float* __restrict__ w, float* y, int rows, int D, float eps, int has_w) {
    const int r = blockIdx.x;
    if (r >= rows) return;
    const float* xr = x + (i64)r * D;
    float* yr = y + (i64)r * D;
    const float inv = row_inv_rms(xr, D, eps);
    for (int i = threadIdx.x; i < D; i += NORM_THREADS) {
        float v = xr[i] * inv;
        yr[i] = has_w ? v * w[i] : v;
    }
}

extern "C" __global__ void __launch_bounds__(NORM_THREADS)
add_rms_norm_f32(const float* h, const float* x, const float* __restrict__ w, float* y, int rows, int D, float eps,
                 float scale, int has_w) {
    const int r = blockIdx.x;
    if (r >= rows) return;
    const float* xr = x + (i64)r * D;
    const float* hr = h + (i64)r * D;
    float* yr = y + (i64)r * D;
    const float inv = row_inv_rms(xr, D, eps);
    for (int i = threadIdx.x; i < D; i += NORM_THREADS) {
        float v = xr[i] * inv;
        if (has_w) v = v * w[i];
        yr[i] = __fmul_rn(__fadd_rn(hr[i], v), scale);
    }
}

extern "C" __global__ void scale_f32(const float* x, float* y, i64 n, float scale) {
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
        y[i] = x[i] * scale;
}
