// RMS norms fused with what follows them in a decode step: Q8_1 quantization of the normed row (the input of
// decode-MMQ matmuls) or its packed-MMA fp16 records, the next norm after a residual add, or NEOX RoPE (q/k). One launch instead of two or three,
// with the bits of the unfused sequence: every output equals, bit for bit, what norms.cu, quantize_q8_1.cu and
// rope.cu write for the same inputs, because the arithmetic is the same device functions (norm_row.cuh,
// q8_1_block.cuh, rope_pair.cuh, all spelled with explicit rounding intrinsics) in the same order.
//
// Entry points (extern "C", float32 rows C-contiguous; one block of NORM_THREADS threads per row):
//   rms_norm_q8_1_f32(x, w, y, yq, rows, D, eps, has_w)
//       y = rms_norm(x) [* w] (rms_norm_f32), yq = Q8_1 blocks of y (quantize_q8_1). D % 32 == 0.
//   add_rms_norm_rms_norm_f32(h, x, w_add, w_next, h_out, y, yq, rows, D, eps, scale, has_w_add, has_w_next, has_q)
//       h_out = (h + rms_norm(x) [* w_add]) * scale          (add_rms_norm_f32: the residual after a sub-block)
//       y     = rms_norm(h_out) [* w_next]                   (rms_norm_f32: the next sub-block's input norm)
//       yq    = Q8_1 blocks of y, where has_q (yq is not touched otherwise; has_q needs D % 32 == 0)
//   add_rms_norm_rms_norm_packed_f32(h, x, w_add, w_next, h_out, y, xf, xinv, rows, D, eps, scale, has_w_add,
//                                    has_w_next)
//       h_out and y as above, and y's packed-MMA activation records xf / xinv (packed_mma.cu's packed_x of y,
//       bit for bit; D % 64 == 0)
//   rms_norm_rope_neox_f32(x, w, positions, inv_freq, y, rows, heads, d, half, eps, has_w)
//       x, y [rows, heads, d]: each head row normed (rms_norm_f32 on [rows * heads, d]) then rotated
//       (rope_neox_f32 on [rows, heads, d]: pairs (i, i + half), dims >= 2 * half copied). One block per
//       (row, head); d <= NORM_REG_MAX. Dynamic shared memory: d floats (the normed head row).
//
// Q8_1 in registers: with thread t holding elements t + NORM_THREADS * k (norm_row.cuh), warp w holds the
// 32-value block (NORM_THREADS * k + 32 * w) / 32 with lane l = value l, which is how quantize_q8_1 assigns
// lanes; with D % 32 == 0 a block lies wholly inside or wholly outside the row, so the guard is warp-uniform
// and the full-mask shuffles of q8_1_block_from_warp are legal. Rows longer than NORM_REG_MAX take the strided
// loop of norms.cu, where the same holds for every step.
//
// Aliasing: each element is read and written by one thread, and a row is read in full before the first barrier,
// so h_out may be h (in place); rms_norm_rope_neox_f32's y may be x. The launcher refuses other overlaps.
#include "norm_row.cuh"
#include "packed_x_row.cuh"
#include "q8_1_block.cuh"
#include "rope_pair.cuh"

static_assert(NORM_THREADS == F16_ROWS_THREADS, "packed_x_row runs on the norm's block");

__device__ __forceinline__ u8* q8_1_row(u8* yq, int r, int D) { return yq + (i64)r * (D / 32) * Q8_1_BYTES; }

// The Q8_1 blocks of a row held in registers (o[k] = element reg_index(k)): warp w's register k is block
// (NORM_THREADS * k + 32 * w) / 32, so consecutive k are blocks NORM_WARPS apart. Quantized QB blocks at a time
// (their shuffle chains interleaved); the guards are warp-uniform since D % 32 == 0. A warp of a 3840-wide row has
// 15 blocks: 3 groups of 4, then 2 and 1, instead of 15 chains one after another (8.5 us a call at N = 1 before).
#define NORM_QB 4
__device__ __forceinline__ void norm_quantize_regs(const float (&o)[NORM_PER_THREAD], u8* qr, int D) {
    static_assert(NORM_PER_THREAD % NORM_QB == 0, "register groups");
    constexpr i64 STRIDE = (i64)NORM_WARPS * Q8_1_BYTES;  // bytes between the blocks of k and k + 1
    u8* q0 = qr + (threadIdx.x >> 5) * Q8_1_BYTES;        // this warp's block of k = 0
#pragma unroll
    for (int k = 0; k < NORM_PER_THREAD; k += NORM_QB) {
        if (reg_index(k + NORM_QB - 1) < D) {
            const float g[NORM_QB] = {o[k], o[k + 1], o[k + 2], o[k + 3]};
            q8_1_blocks_from_warp<NORM_QB>(g, q0 + k * STRIDE, STRIDE);
        } else if (reg_index(k + 1) < D) {  // 2 or 3 of the group's blocks are in the row
            const float g[2] = {o[k], o[k + 1]};
            q8_1_blocks_from_warp<2>(g, q0 + k * STRIDE, STRIDE);
            if (reg_index(k + 2) < D) q8_1_block_from_warp(o[k + 2], q0 + (k + 2) * STRIDE);
        } else if (reg_index(k) < D) {
            q8_1_block_from_warp(o[k], q0 + k * STRIDE);
        }
    }
}

// y = rms_norm(v) [* w] for a row held in registers; QUANT: also its Q8_1 blocks at qr
template <bool QUANT>
__device__ __forceinline__ void norm_out_regs(const float (&v)[NORM_PER_THREAD], const float (&wv)[NORM_PER_THREAD],
                                              float* yr, u8* qr, int D, float eps, int has_w) {
    const float inv = inv_rms_regs(v, D, eps);
    float o[NORM_PER_THREAD];
#pragma unroll
    for (int k = 0; k < NORM_PER_THREAD; ++k) {
        const int i = reg_index(k);
        o[k] = rms_scale(v[k], inv, wv[k], has_w);  // past D: never stored
        if (i < D) yr[i] = o[k];
    }
    if (QUANT) norm_quantize_regs(o, qr, D);
}

// The same for a row of any length, read from memory (xr may be yr)
template <bool QUANT>
__device__ __forceinline__ void norm_out_loop(const float* xr, const float* __restrict__ w, float* yr, u8* qr, int D,
                                              float eps, int has_w) {
    const float inv = inv_rms_loop(xr, D, eps);
    for (int i = threadIdx.x; i < D; i += NORM_THREADS) {
        const float o = rms_scale(xr[i], inv, has_w ? w[i] : 1.0f, has_w);
        yr[i] = o;
        if (QUANT) q8_1_block_from_warp(o, qr + (i >> 5) * Q8_1_BYTES);
    }
}

extern "C" __global__ void __launch_bounds__(NORM_THREADS)
rms_norm_q8_1_f32(const float* x, const float* __restrict__ w, float* y, u8* yq, int rows, int D, float eps,
                  int has_w) {
    grid_dependency_enter();
    const int r = blockIdx.x;
    if (r >= rows) return;
    const float* xr = x + (i64)r * D;
    float* yr = y + (i64)r * D;
    u8* qr = q8_1_row(yq, r, D);
    if (D <= NORM_REG_MAX) {
        float v[NORM_PER_THREAD], wv[NORM_PER_THREAD];
        load_row_regs(v, xr, D, 1, 0.0f);
        load_row_regs(wv, w, D, has_w, 1.0f);
        norm_out_regs<true>(v, wv, yr, qr, D, eps, has_w);
    } else {
        norm_out_loop<true>(xr, w, yr, qr, D, eps, has_w);
    }
}

template <bool QUANT>
__device__ __forceinline__ void add_norm_norm_row(const float* hr, const float* xr, const float* __restrict__ w_add,
                                                  const float* __restrict__ w_next, float* hor, float* yr, u8* qr,
                                                  int D, float eps, float scale, int has_w_add, int has_w_next) {
    if (D <= NORM_REG_MAX) {
        // h, x and both weights are loaded before the first barrier: the row costs one memory latency
        float hv[NORM_PER_THREAD], xv[NORM_PER_THREAD], wa[NORM_PER_THREAD], wn[NORM_PER_THREAD];
        load_row_regs(hv, hr, D, 1, 0.0f);
        load_row_regs(xv, xr, D, 1, 0.0f);
        load_row_regs(wa, w_add, D, has_w_add, 1.0f);
        load_row_regs(wn, w_next, D, has_w_next, 1.0f);
        const float inv = inv_rms_regs(xv, D, eps);
#pragma unroll
        for (int k = 0; k < NORM_PER_THREAD; ++k) {
            const int i = reg_index(k);
            hv[k] = residual_add(hv[k], rms_scale(xv[k], inv, wa[k], has_w_add), scale);  // past D: never used
            if (i < D) hor[i] = hv[k];
        }
        __syncthreads();  // the second reduction reuses block_sum_in_warp_order's shared array
        norm_out_regs<QUANT>(hv, wn, yr, qr, D, eps, has_w_next);
    } else {
        const float inv = inv_rms_loop(xr, D, eps);
        for (int i = threadIdx.x; i < D; i += NORM_THREADS)
            hor[i] = residual_add(hr[i], rms_scale(xr[i], inv, has_w_add ? w_add[i] : 1.0f, has_w_add), scale);
        __syncthreads();  // as above; each thread then reads back only the elements it wrote
        norm_out_loop<QUANT>(hor, w_next, yr, qr, D, eps, has_w_next);
    }
}

extern "C" __global__ void __launch_bounds__(NORM_THREADS)
add_rms_norm_rms_norm_f32(const float* h, const float* x, const float* __restrict__ w_add,
                          const float* __restrict__ w_next, float* h_out, float* y, u8* yq, int rows, int D, float eps,
                          float scale, int has_w_add, int has_w_next, int has_q) {
    grid_dependency_enter();
    const int r = blockIdx.x;
    if (r >= rows) return;
    const i64 off = (i64)r * D;
    if (has_q)
        add_norm_norm_row<true>(h + off, x + off, w_add, w_next, h_out + off, y + off, q8_1_row(yq, r, D), D, eps,
                                scale, has_w_add, has_w_next);
    else
        add_norm_norm_row<false>(h + off, x + off, w_add, w_next, h_out + off, y + off, nullptr, D, eps, scale,
                                 has_w_add, has_w_next);
}

// The same residual add and norm with y also written as packed MMA's fragment-ordered fp16 rows (packed_x_row.cuh:
// xf and xinv as packed_mma.cu's packed_x writes them for y): one launch instead of the norm's and packed_x's.
extern "C" __global__ void __launch_bounds__(NORM_THREADS)
add_rms_norm_rms_norm_packed_f32(const float* h, const float* x, const float* __restrict__ w_add,
                                 const float* __restrict__ w_next, float* h_out, float* y, uint4* xf, float* xinv,
                                 int rows, int D, float eps, float scale, int has_w_add, int has_w_next) {
    grid_dependency_enter();
    const int r = blockIdx.x;
    if (r >= rows) return;
    const i64 off = (i64)r * D;
    add_norm_norm_row<false>(h + off, x + off, w_add, w_next, h_out + off, y + off, nullptr, D, eps, scale,
                             has_w_add, has_w_next);
    __syncthreads();  // the row's y, written by every thread of the block, is read back whole
    packed_x_row(y + off, D, r, xf, xinv);
}

extern "C" __global__ void __launch_bounds__(NORM_THREADS)
rms_norm_rope_neox_f32(const float* x, const float* __restrict__ w, const int* __restrict__ positions,
                       const float* __restrict__ inv_freq, float* y, int rows, int heads, int d, int half, float eps,
                       int has_w) {
    grid_dependency_enter();
    extern __shared__ float normed[];  // the block's head row after the norm, d floats
    const int b = blockIdx.x;          // head row b = (row b / heads, head b % heads)
    if (b >= rows * heads) return;
    const float* xr = x + (i64)b * d;
    float* yr = y + (i64)b * d;
    float v[NORM_PER_THREAD], wv[NORM_PER_THREAD];
    load_row_regs(v, xr, d, 1, 0.0f);
    load_row_regs(wv, w, d, has_w, 1.0f);
    const float pos = (float)positions[b / heads];
    const float inv = inv_rms_regs(v, d, eps);
#pragma unroll
    for (int k = 0; k < NORM_PER_THREAD; ++k) {
        const int i = reg_index(k);
        if (i < d) normed[i] = rms_scale(v[k], inv, wv[k], has_w);
    }
    __syncthreads();
    for (int i = threadIdx.x; i < half; i += NORM_THREADS) {
        float c, s, y1, y2;
        rope_cos_sin(pos, inv_freq[i], &c, &s);
        rope_rotate(normed[i], normed[half + i], c, s, &y1, &y2);
        yr[i] = y1;
        yr[half + i] = y2;
    }
    for (int i = 2 * half + threadIdx.x; i < d; i += NORM_THREADS) yr[i] = normed[i];  // dims >= n_rot
}
