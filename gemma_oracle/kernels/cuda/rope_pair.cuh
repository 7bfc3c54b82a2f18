// The NEOX RoPE arithmetic of one rotated pair, shared by rope.cu (rope_neox_f32) and fused_norms.cu
// (rms_norm_rope_neox_f32), so that the fused kernel's bits equal the unfused one's by construction. Every rounding
// step is an explicit intrinsic, so no compiler context can contract it differently:
//   angle = (float)position * inv_freq[i]                  one float32 multiply
//   (c, s) = sincosf(angle)                                the accurate libdevice routine (no fast-math, no __sinf)
//   y1 = fma(x1, c, -(x2 * s))                             x1 * c - x2 * s with the product x2 * s rounded
//   y2 = fma(x1, s, x2 * c)                                x2 * c + x1 * s with the product x2 * c rounded
// (the forms nvcc 13.0 chose for the plain expressions x1 * c - x2 * s and x2 * c + x1 * s under FMA contraction,
// read from the sm_90 SASS of the previous rope.cu, so the explicit spelling kept its bits).
#pragma once
#include "common.cuh"

__device__ __forceinline__ void rope_cos_sin(float position, float inv_freq, float* c, float* s) {
    sincosf(__fmul_rn(position, inv_freq), s, c);
}

__device__ __forceinline__ void rope_rotate(float x1, float x2, float c, float s, float* y1, float* y2) {
    *y1 = __fmaf_rn(x1, c, -__fmul_rn(x2, s));
    *y2 = __fmaf_rn(x1, s, __fmul_rn(x2, c));
}
