// Activations for the dequant-MMA tile (dq_mma.cu): float32 rows x [n, K] -> fp16 rows x16 [n, K] and, per row, the
// power of two inv[j] = 2^-e_j that undoes the row's scale: x16[j, k] = fp16_rn(x[j, k] * 2^e_j).
//
// e_j (f16_row.cuh) puts the row's largest magnitude a in [2^14, 2^15): e = 15 - ex with a in [2^(ex - 1), 2^ex) (ex read from a's
// biased exponent bits: ex = biased - 126), so
// no value overflows fp16 (max 65504 < 2^16) and a value that is a small fraction of a keeps fp16's 11 bits (it is
// subnormal only below a * 2^-29). Scaling by 2^e is exact in float32 (|e| <= 126 keeps 2^e and 2^-e normal), so
// the only rounding is fp16_rn: x16 * inv differs from x by at most 2^-11 of |x| (normal) or a * 2^-39 (subnormal).
// A row whose largest magnitude is 0 or a float32 subnormal gets e = 0 (the GPU's max flushes subnormals; the rule
// keeps the reference simple to state). Non-finite rows are the caller's to avoid (the engine's rows are finite).
// The row's scale depends on that row alone, so a token's fp16 row is the same in any batch.
//
//     f16_rows(const float* x, int k, u16* x16, float* inv)    grid (n), block F16_ROWS_THREADS
// Bitwise equal to kernels/reference/f16_rows.py.
#include "f16_row.cuh"  // f16_row_exponent, F16_ROWS_THREADS

extern "C" __global__ void __launch_bounds__(F16_ROWS_THREADS) f16_rows(const float* __restrict__ x, int k,
                                                                        u16* __restrict__ x16, float* __restrict__ inv) {
    grid_dependency_enter();
    const float* row = x + (size_t)blockIdx.x * k;
    u16* out = x16 + (size_t)blockIdx.x * k;
    const int e = f16_row_exponent(row, k);
    const float up = ldexpf(1.0f, e);
    for (int i = threadIdx.x; i < k; i += F16_ROWS_THREADS) out[i] = f32_to_f16(__fmul_rn(row[i], up));
    if (threadIdx.x == 0) inv[blockIdx.x] = ldexpf(1.0f, -e);
}
