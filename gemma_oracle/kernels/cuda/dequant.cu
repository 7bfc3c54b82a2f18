// Dequantize GGUF weight rows to float32, bitwise equal to kernels/reference/dequant.py (ggml's arithmetic).
//
// #defines: DQ_THREADS   threads per block (one thread decodes one 32-value unit; see quant_blocks.cuh)
//
// Entry points (<t> in f32 f16 bf16 q4_0 q5_0 q8_0 q4_k q5_k q6_k):
//   dequant_<t>(const u8* w, i64 row_bytes, i64 rows, int units, float* out)
//       w: [rows, row_bytes] GGUF rows, 16-byte aligned; out: [rows, 32 * units] float32, 16-byte aligned.
//       grid.x = ceil(rows * units / DQ_THREADS), block = DQ_THREADS.
//   dequant_rows_<t>_i32 / dequant_rows_<t>_i64(const u8* w, i64 row_bytes, i64 rows, int units,
//                                               const i32|i64* row_ids, i64 n_ids, float* out)
//       The quantized embedding lookup: out[i] = dequant(w[row_ids[i]]), out [n_ids, 32 * units]. An id outside
//       [0, rows) never reads memory; its output row is all NaN (the launcher can also check ids on the host).
//       grid.x = ceil(n_ids * units / DQ_THREADS).
// Stores are 8 float4 per thread (one unit = 128 contiguous bytes of out).
#include "quant_blocks.cuh"

#ifndef DQ_THREADS
#define DQ_THREADS 256
#endif

template <class Q>
__device__ __forceinline__ void dq_store_unit(const u8* __restrict__ wrow, int u, float* __restrict__ dst) {
    float v[32];
    Q::decode(wrow, u, v);
    float4* o = (float4*)dst;
#pragma unroll
    for (int k = 0; k < 8; ++k) o[k] = make_float4(v[4 * k], v[4 * k + 1], v[4 * k + 2], v[4 * k + 3]);
}

template <class Q>
__device__ __forceinline__ void dequant_kernel(const u8* __restrict__ w, i64 row_bytes, i64 rows, int units,
                                               float* __restrict__ out) {
    const i64 i = (i64)blockIdx.x * DQ_THREADS + threadIdx.x;
    if (i >= rows * units) return;
    const i64 r = i / units;
    const int u = (int)(i - r * units);
    dq_store_unit<Q>(w + r * row_bytes, u, out + i * QB_UNIT);
}

template <class Q, class IdxT>
__device__ __forceinline__ void dequant_rows_kernel(const u8* __restrict__ w, i64 row_bytes, i64 rows, int units,
                                                    const IdxT* __restrict__ row_ids, i64 n_ids,
                                                    float* __restrict__ out) {
    const i64 i = (i64)blockIdx.x * DQ_THREADS + threadIdx.x;
    if (i >= n_ids * units) return;
    const i64 k = i / units;
    const int u = (int)(i - k * units);
    const i64 r = (i64)row_ids[k];
    float* dst = out + i * QB_UNIT;
    if (r < 0 || r >= rows) {
        const float nan = __uint_as_float(0x7FC00000u);
        float4* o = (float4*)dst;
#pragma unroll
        for (int q = 0; q < 8; ++q) o[q] = make_float4(nan, nan, nan, nan);
        return;
    }
    dq_store_unit<Q>(w + r * row_bytes, u, dst);
}

#define DQ_ENTRIES(name, Q)                                                                                    \
    extern "C" __global__ void __launch_bounds__(DQ_THREADS)                                                   \
        dequant_##name(const u8* w, i64 row_bytes, i64 rows, int units, float* out) {                        \
        grid_dependency_enter();                                                                             \
        dequant_kernel<Q>(w, row_bytes, rows, units, out);                                                     \
    }                                                                                                          \
    extern "C" __global__ void __launch_bounds__(DQ_THREADS) dequant_rows_##name##_i32(                      \
        const u8* w, i64 row_bytes, i64 rows, int units, const i32* row_ids, i64 n_ids, float* out) {          \
        grid_dependency_enter();                                                                               \
        dequant_rows_kernel<Q, i32>(w, row_bytes, rows, units, row_ids, n_ids, out);                           \
    }                                                                                                          \
    extern "C" __global__ void __launch_bounds__(DQ_THREADS) dequant_rows_##name##_i64(                      \
        const u8* w, i64 row_bytes, i64 rows, int units, const i64* row_ids, i64 n_ids, float* out) {          \
        grid_dependency_enter();                                                                               \
        dequant_rows_kernel<Q, i64>(w, row_bytes, rows, units, row_ids, n_ids, out);                           \
    }

DQ_ENTRIES(f32, qt_f32)
DQ_ENTRIES(f16, qt_f16)
DQ_ENTRIES(bf16, qt_bf16)
DQ_ENTRIES(q4_0, qt_q4_0)
DQ_ENTRIES(q5_0, qt_q5_0)
DQ_ENTRIES(q8_0, qt_q8_0)
DQ_ENTRIES(q4_k, qt_q4_k)
DQ_ENTRIES(q5_k, qt_q5_k)
DQ_ENTRIES(q6_k, qt_q6_k)
