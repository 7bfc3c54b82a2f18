// Element-wise FFN activation, the final-logit softcap and a row argmax, float32.
//
// Entry points (extern "C", C-contiguous arrays):
//   gelu_tanh_mul_f32(gate, up, y, n)
//       y[i] = gelu_tanh(gate[i]) * up[i],
//       gelu_tanh(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))   (accurate tanhf, no fast-math)
//   gelu_tanh_mul_q8_1_f32(gate, up, y, yq, n)
//       the same y, and yq = its Q8_1 blocks (uint8 [n / 32 * 36], 4-byte aligned): the input of a decode-MMQ
//       matmul (ffn_down, the PLE proj) made here instead of by a quantize_q8_1 launch. n % 32 == 0 (a row
//       length K % 32 == 0 makes a flat block of 32 values lie inside one row, so flat block b is row b / (K / 32),
//       block b % (K / 32): the [N, K / 32 * 36] layout of quantize_q8_1). Same bits as gelu_tanh_mul_f32 then
//       quantize_q8_1: y is the same inline function (gelu_tanh_mul_1), and yq the shared q8_1_block_from_warp
//       with the lane layout quantize_q8_1 uses. With a block size and grid-stride that are multiples of 32, the
//       lanes of a warp hold 32 consecutive elements starting at a multiple of 32 in every round: one Q8_1 block,
//       lane l = value l, and the guard i < n is warp-uniform (full-mask shuffles are legal).
//   gelu_tanh_mul_packed_f32(gate, up, y, xf, xinv, K)
//       the same y for gate / up [rows, K] (one block of F16_ROWS_THREADS a row, grid (rows)), and y's packed-MMA
//       activation records xf / xinv (packed_x_row.cuh: packed_mma.cu's packed_x of y, bit for bit; K % 64 == 0):
//       the input of a packed-MMA ffn_down made here instead of by a packed_x launch. y may alias an input. The
//       kernel of devices without thread block clusters (and of more than 65535 rows).
//   gelu_tanh_mul_packed_cluster_f32(gate, up, y, xf, xinv, K)
//       the same y, xf and xinv (bit for bit) from C blocks a row: grid (C, rows), thread block clusters of
//       (C, 1, 1), 1 <= C <= min(8, K / 64) (8: the portable cluster size). Why: the record's exponent needs the
//       max |y| of the whole row, so the one-block kernel puts a whole row on one SM; at one token row and
//       K = 15360 (the 12B ffn) that made the decode step 12 % slower on an H100 than a gelu launch and a packed_x
//       launch. Block c takes the 64-value groups [c G / C, (c + 1) G / C) of the row (G = K / 64): it writes their
//       y, puts its max |y| in its shared memory, and after a cluster barrier reads every block's max through
//       distributed shared memory (cluster.cuh). Max is exact in any order, so e is f16_row_exponent's (the same
//       f16_exponent_of_max), and the words are packed_x_words' formula. The second barrier keeps each block's
//       shared memory alive until its siblings have read it. y may alias an input (each block reads and writes its
//       own groups only). sm_90: kernels/packed_out.py plans which of the two runs.
//   softcap_f32(x, y, n, cap)
//       y[i] = cap * tanh(x[i] / cap)
//   argmax_rows_f32(x, out, rows, V)
//       out[r] = index of the largest x[r, :] (int32). Ties go to the LOWER index. NaN is treated as larger
//       than every number, so a row holding a NaN returns the index of its FIRST NaN, which is exactly what
//       np.argmax does. -0.0 and +0.0 are equal (lower index wins). The result is the unique maximum of a
//       total order on (value, index), so it does not depend on the reduction order or the launch shape.
//
// Compile-time constants (#define):
//   ARGMAX_THREADS  threads per row block of argmax_rows_f32 (1024).
//
// gelu_tanh_mul_f32, gelu_tanh_mul_q8_1_f32 and softcap_f32 are grid-stride loops: y may alias an input (in-place
// allowed: each element is read, then written, by one thread). yq overlaps nothing.
#include "cluster.cuh"
#include "common.cuh"
#include "packed_x_row.cuh"
#include "q8_1_block.cuh"

#define ARGMAX_THREADS 1024
#define ARGMAX_WARPS (ARGMAX_THREADS / 32)

// One element of either entry point: one definition, so both compile the same float arithmetic
__device__ __forceinline__ float gelu_tanh_mul_1(float x, float u) {
    const float k0 = 0.7978845608028654f;  // sqrt(2 / pi)
    const float k1 = 0.044715f;
    const float g = 0.5f * x * (1.0f + tanhf(k0 * (x + k1 * x * x * x)));
    return g * u;
}

extern "C" __global__ void gelu_tanh_mul_f32(const float* gate, const float* up, float* y, i64 n) {
    grid_dependency_enter();
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
        y[i] = gelu_tanh_mul_1(gate[i], up[i]);
}

// blockDim.x % 32 == 0 and n % 32 == 0 (the launcher's geometry and checks)
extern "C" __global__ void gelu_tanh_mul_q8_1_f32(const float* gate, const float* up, float* y, u8* __restrict__ yq,
                                                  i64 n) {
    grid_dependency_enter();
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        const float v = gelu_tanh_mul_1(gate[i], up[i]);
        y[i] = v;
        q8_1_block_from_warp(v, yq + (i >> 5) * Q8_1_BYTES);
    }
}

extern "C" __global__ void __launch_bounds__(F16_ROWS_THREADS)
gelu_tanh_mul_packed_f32(const float* gate, const float* up, float* y, uint4* xf, float* xinv, int K) {
    grid_dependency_enter();
    const i64 off = (i64)blockIdx.x * K;
    for (int i = threadIdx.x; i < K; i += F16_ROWS_THREADS) y[off + i] = gelu_tanh_mul_1(gate[off + i], up[off + i]);
    __syncthreads();  // the row's y, written by every thread of the block, is read back whole
    packed_x_row(y + off, K, blockIdx.x, xf, xinv);
}

// The cluster is (gridDim.x, 1, 1) and the grid (gridDim.x, rows), so a block's cluster rank is blockIdx.x, and
// gridDim.x <= 32 lets each warp read the cluster's maxima a lane each (no further block sync).
extern "C" __global__ void __launch_bounds__(F16_ROWS_THREADS)
gelu_tanh_mul_packed_cluster_f32(const float* gate, const float* up, float* y, uint4* xf, float* xinv, int K) {
    grid_dependency_enter();
    __shared__ float s_row_max;  // this block's max |y|, read by every block of the cluster
    const int rank = blockIdx.x, blocks = gridDim.x, row = blockIdx.y, groups = K >> 6;
    const int j0 = rank * groups / blocks, j1 = (rank + 1) * groups / blocks;
    const i64 off = (i64)row * K;
    float a = 0.0f;
    for (int i = 64 * j0 + threadIdx.x; i < 64 * j1; i += F16_ROWS_THREADS) {
        const float v = gelu_tanh_mul_1(gate[off + i], up[off + i]);
        y[off + i] = v;
        a = fmaxf(a, fabsf(v));
    }
    a = f16_block_max(a);  // its __syncthreads: the groups' y, written by every thread, are read back below
    if (threadIdx.x == 0) s_row_max = a;
    cluster_barrier();
    const int lane = threadIdx.x & 31;
    a = lane < blocks ? ld_cluster_f32((u32)__cvta_generic_to_shared(&s_row_max), (u32)lane) : 0.0f;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) a = fmaxf(a, __shfl_xor_sync(0xffffffffu, a, o));
    cluster_arrive();  // the siblings' shared memory is read (a holds it): they may exit once all have arrived
    const int e = f16_exponent_of_max(a);
    packed_x_words(y + off, K, row, j0, j1, ldexpf(1.0f, e), xf);
    if (rank == 0 && threadIdx.x == 0) xinv[row] = ldexpf(1.0f, -e);
    cluster_wait();
}

extern "C" __global__ void softcap_f32(const float* x, float* y, i64 n, float cap) {
    grid_dependency_enter();
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
        y[i] = cap * tanhf(x[i] / cap);
}

// (va, ia) beats (vb, ib): NaN above every number; among equal values (or two NaNs) the lower index.
__device__ __forceinline__ bool argmax_better(float va, int ia, float vb, int ib) {
    const bool na = va != va, nb = vb != vb;
    if (na || nb) return na && (!nb || ia < ib);
    return va > vb || (va == vb && ia < ib);
}

extern "C" __global__ void __launch_bounds__(ARGMAX_THREADS)
argmax_rows_f32(const float* __restrict__ x, int* __restrict__ out, int rows, int V) {
    grid_dependency_enter();
    __shared__ float sv[ARGMAX_WARPS];
    __shared__ int si[ARGMAX_WARPS];
    const int r = blockIdx.x;
    if (r >= rows) return;
    const float* xr = x + (i64)r * V;
    // Sentinel (-inf, INT_MAX): any real element, even -inf, beats it (equal value, lower index).
    float bv = -__int_as_float(0x7f800000);
    int bi = 0x7fffffff;
    for (int i = threadIdx.x; i < V; i += ARGMAX_THREADS) {
        const float v = xr[i];
        if (argmax_better(v, i, bv, bi)) { bv = v; bi = i; }
    }
#pragma unroll
    for (int m = 16; m >= 1; m >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, bv, m);
        const int oi = __shfl_xor_sync(0xffffffffu, bi, m);
        if (argmax_better(ov, oi, bv, bi)) { bv = ov; bi = oi; }
    }
    if ((threadIdx.x & 31) == 0) { sv[threadIdx.x >> 5] = bv; si[threadIdx.x >> 5] = bi; }
    __syncthreads();
    if (threadIdx.x == 0) {
        bv = sv[0]; bi = si[0];
        for (int w = 1; w < ARGMAX_WARPS; ++w)
            if (argmax_better(sv[w], si[w], bv, bi)) { bv = sv[w]; bi = si[w]; }
        out[r] = bi;
    }
}
