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
// Compile-time constants (#define, in norm_row.cuh):
//   NORM_THREADS  threads per row block (256). Fixed: it sets the reduction order, so a row's result
//                 depends only on D, never on how many rows a launch has.
//
// Reduction order (fixed; the arithmetic is in norm_row.cuh, shared with the fused kernels of fused_norms.cu):
// thread t sums x[i]^2 for i = t, t + NORM_THREADS, ... in increasing i; the 32 lanes of a warp combine with an
// xor butterfly (16, 8, 4, 2, 1; commutative, so every lane holds the same bits); then every thread adds the
// per-warp sums in warp order 0..7 itself (no broadcast needed).
// 1/sqrt is computed as 1.0f / sqrtf(ms + eps) (IEEE sqrt and divide; no rsqrtf approximation).
// Each element is read and written by the same thread, so y may alias x (or h): in-place is allowed.
#include "norm_row.cuh"

// Rows of up to NORM_REG_MAX elements (every Gemma hidden size and head dim) are read ONCE into registers, all loads
// issued before the first use: the row costs one memory latency, not one per strided step (a decode step runs ~340
// of these on single rows, where that latency is all there is). Longer rows take the strided loop. Both visit the
// elements of a thread in the same increasing order: the same bits.

// y[i] = (x[i] * inv [* w[i]]) for a row of <= NORM_REG_MAX held in registers; ADD: y[i] = (h[i] + that) * scale
template <bool ADD>
__device__ __forceinline__ void norm_row_regs(const float* xr, const float* hr, const float* __restrict__ w,
                                              float* yr, int D, float eps, float scale, int has_w) {
    // x, w and (ADD) h are all loaded before the reduction's barrier, so the row costs one memory latency
    float v[NORM_PER_THREAD], wv[NORM_PER_THREAD], hv[NORM_PER_THREAD];
#pragma unroll
    for (int k = 0; k < NORM_PER_THREAD; ++k) {
        const int i = reg_index(k);
        v[k] = i < D ? xr[i] : 0.0f;
        wv[k] = (has_w && i < D) ? w[i] : 1.0f;
        hv[k] = (ADD && i < D) ? hr[i] : 0.0f;
    }
    const float inv = inv_rms_regs(v, D, eps);
#pragma unroll
    for (int k = 0; k < NORM_PER_THREAD; ++k) {
        const int i = reg_index(k);
        if (i < D) {
            const float o = rms_scale(v[k], inv, wv[k], has_w);
            yr[i] = ADD ? residual_add(hv[k], o, scale) : o;
        }
    }
}

template <bool ADD>
__device__ __forceinline__ void norm_row_loop(const float* xr, const float* hr, const float* __restrict__ w,
                                              float* yr, int D, float eps, float scale, int has_w) {
    const float inv = inv_rms_loop(xr, D, eps);
    for (int i = threadIdx.x; i < D; i += NORM_THREADS) {
        const float o = rms_scale(xr[i], inv, has_w ? w[i] : 1.0f, has_w);
        yr[i] = ADD ? residual_add(hr[i], o, scale) : o;
    }
}

extern "C" __global__ void __launch_bounds__(NORM_THREADS)
rms_norm_f32(const float* x, const float* __restrict__ w, float* y, int rows, int D, float eps, int has_w) {
    grid_dependency_enter();
    const int r = blockIdx.x;
    if (r >= rows) return;
    const float* xr = x + (i64)r * D;
    float* yr = y + (i64)r * D;
    if (D <= NORM_REG_MAX) norm_row_regs<false>(xr, nullptr, w, yr, D, eps, 1.0f, has_w);
    else norm_row_loop<false>(xr, nullptr, w, yr, D, eps, 1.0f, has_w);
}

extern "C" __global__ void __launch_bounds__(NORM_THREADS)
add_rms_norm_f32(const float* h, const float* x, const float* __restrict__ w, float* y, int rows, int D, float eps,
                 float scale, int has_w) {
    grid_dependency_enter();
    const int r = blockIdx.x;
    if (r >= rows) return;
    const float* xr = x + (i64)r * D;
    const float* hr = h + (i64)r * D;
    float* yr = y + (i64)r * D;
    if (D <= NORM_REG_MAX) norm_row_regs<true>(xr, hr, w, yr, D, eps, scale, has_w);
    else norm_row_loop<true>(xr, hr, w, yr, D, eps, scale, has_w);
}

extern "C" __global__ void scale_f32(const float* x, float* y, i64 n, float scale) {
    grid_dependency_enter();
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
        y[i] = x[i] * scale;
}
