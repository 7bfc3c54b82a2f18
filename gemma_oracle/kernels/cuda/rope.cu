// NEOX ("rotate half") rotary embedding on float32 [rows, heads, d], one block per row.
//
// Entry points (extern "C"):
//   rope_neox_f32(x, positions, inv_freq, y, rows, heads, d, half)
//       pairs (i, i + half) for i < half, n_rot = 2 * half <= d; dims >= n_rot are copied unchanged.
//       angle_i = (float)positions[r] * inv_freq[i]           (one float32 multiply)
//       y_i        = x_i * cos(angle_i) - x_{i+half} * sin(angle_i)
//       y_{i+half} = x_{i+half} * cos(angle_i) + x_i * sin(angle_i)
//       The host passes inv_freq already divided by rope_freqs (Gemma 4 proportional RoPE on full layers).
//       sincosf is the accurate libdevice routine (no fast-math, no __sinf). The pair arithmetic (angle, sincosf,
//       the two rounded products and fmas) is in rope_pair.cuh, shared with fused_norms.cu's rms_norm_rope_neox_f32.
//   Dynamic shared memory: 2 * half floats (the row's cos/sin table, computed once and shared by all heads).
//
// Compile-time constants (#define):
//   ROPE_THREADS  threads per row block (256).
//
// Each output element is written by the thread that read its inputs, so y may alias x (in-place allowed).
#include "rope_pair.cuh"

#define ROPE_THREADS 256

extern "C" __global__ void __launch_bounds__(ROPE_THREADS)
rope_neox_f32(const float* x, const int* __restrict__ positions, const float* __restrict__ inv_freq, float* y,
              int rows, int heads, int d, int half) {
    grid_dependency_enter();
    extern __shared__ float cs[];  // cos[half], sin[half]
    const int r = blockIdx.x;
    if (r >= rows) return;
    const float pos = (float)positions[r];
    for (int i = threadIdx.x; i < half; i += ROPE_THREADS) {
        float c, s;
        rope_cos_sin(pos, inv_freq[i], &c, &s);
        cs[i] = c;
        cs[half + i] = s;
    }
    __syncthreads();
    const float* xr = x + (i64)r * heads * d;
    float* yr = y + (i64)r * heads * d;
    // Rotated pairs: one thread per (head, i).
    for (int t = threadIdx.x; t < heads * half; t += ROPE_THREADS) {
        const int h = t / half, i = t - h * half;
        const float c = cs[i], s = cs[half + i];
        float y1, y2;
        rope_rotate(xr[h * d + i], xr[h * d + half + i], c, s, &y1, &y2);
        yr[h * d + i] = y1;
        yr[h * d + half + i] = y2;
    }
    // Pass-through dims [2*half, d) of every head.
    const int rest = d - 2 * half;
    if (rest > 0 && x != y) {
        for (int t = threadIdx.x; t < heads * rest; t += ROPE_THREADS) {
            const int h = t / rest, i = 2 * half + (t - h * rest);
            yr[h * d + i] = xr[h * d + i];
        }
    }
}
