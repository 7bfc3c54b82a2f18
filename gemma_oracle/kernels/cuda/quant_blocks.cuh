// Decoders of one "unit" (32 consecutive values of a weight row) for every GGML type the loader accepts.
//
// A row is the GGUF byte layout of `ne[0]` values (blocks back to back, no padding); unit u holds values
// 32u .. 32u+31 of the row. Each type is a struct with
//     static constexpr int VALUES_PER_BLOCK, BYTES_PER_BLOCK;   // ggml-common.h
//     static __device__ void decode(const u8* row, int u, float (&v)[32]);
// `decode` is force-inlined and every loop in it is fully unrolled, so v[] lives in registers (callers must
// index it with compile-time constants only; see the register-spill check in tests/test_kernels_compile.py).
//
// Arithmetic: EXACTLY the float32 operations of ggml's dequantize_row_* (and so of kernels/reference/dequant.py),
// each spelled with a round-to-nearest intrinsic (__fmul_rn, __fsub_rn) so that nvcc/NVRTC can never contract
// them into an FMA or reassociate them:
//   F32 / F16 / BF16   exact widening (no rounding at all)
//   Q4_0               d * (q - 8)              q - 8 exact; the product has <= 11 + 4 significant bits: exact
//   Q5_0               d * (q - 16)             likewise (11 + 5 bits): exact
//   Q8_0               d * q                    11 + 8 bits: exact
//   Q4_K / Q5_K        (d*sc) * q - (dmin*m)    d*sc and dmin*m: 11 + 6 bits, exact; (d*sc)*q: 17 + 5 bits, exact;
//                                               only the final subtraction rounds (once, as in ggml)
//   Q6_K               (d*sc) * (q - 32)        d*sc: 11 + 8 bits, exact; the second product can round (25 bits),
//                                               so it is one __fmul_rn of the same two float operands ggml uses.
//                                               d may be negative (ggml's quantizer makes it so; the int8 scales
//                                               carry the other sign): nothing here assumes a sign.
// A product of floats whose exact result fits in 24 bits is the same whatever the grouping, which is why the
// exact steps above need no particular order; the steps that round are done once, in ggml's order.
//
// Alignment: the launchers require the row buffer to start 16-byte aligned. Then
//   F32 (128 B units), F16/BF16 (64 B units) and the 16 B-multiple K-quant blocks Q4_K (144 B) and Q5_K (176 B)
//   are read with 16-byte vector loads; Q4_0 (18 B), Q5_0 (22 B), Q8_0 (34 B) and Q6_K (210 B) blocks are only
//   2-byte aligned, so they are read in u16 pieces.
#pragma once

#include "common.cuh"

#define QB_UNIT 32  // values per unit: the granularity of every decoder and of the matvec lane traversal

__device__ __forceinline__ u32 qb_ld16(const u8* p) { return (u32)__ldg((const unsigned short*)p); }
__device__ __forceinline__ uint4 qb_ld128(const u8* p) { return __ldg((const uint4*)p); }
__device__ __forceinline__ u32 qb_word(const uint4& q, int k) {  // k is a compile-time constant after unrolling
    return k == 0 ? q.x : k == 1 ? q.y : k == 2 ? q.z : q.w;
}

// ---- plain float types --------------------------------------------------------------------------------------

struct qt_f32 {
    static constexpr int VALUES_PER_BLOCK = 1, BYTES_PER_BLOCK = 4;
    static __device__ __forceinline__ void decode(const u8* __restrict__ row, int u, float (&v)[32]) {
        const float4* p = (const float4*)(row + (size_t)u * 128);
#pragma unroll
        for (int k = 0; k < 8; ++k) {
            const float4 q = __ldg(p + k);
            v[4 * k + 0] = q.x;
            v[4 * k + 1] = q.y;
            v[4 * k + 2] = q.z;
            v[4 * k + 3] = q.w;
        }
    }
};

struct qt_f16 {
    static constexpr int VALUES_PER_BLOCK = 1, BYTES_PER_BLOCK = 2;
    static __device__ __forceinline__ void decode(const u8* __restrict__ row, int u, float (&v)[32]) {
        const u8* p = row + (size_t)u * 64;
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            const uint4 q = qb_ld128(p + 16 * k);
#pragma unroll
            for (int w = 0; w < 4; ++w) {
                const u32 word = qb_word(q, w);  // little-endian: the even element is the low half
                v[8 * k + 2 * w + 0] = f16_to_f32((u16)(word & 0xFFFFu));
                v[8 * k + 2 * w + 1] = f16_to_f32((u16)(word >> 16));
            }
        }
    }
};

struct qt_bf16 {
    static constexpr int VALUES_PER_BLOCK = 1, BYTES_PER_BLOCK = 2;
    static __device__ __forceinline__ void decode(const u8* __restrict__ row, int u, float (&v)[32]) {
        const u8* p = row + (size_t)u * 64;
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            const uint4 q = qb_ld128(p + 16 * k);
#pragma unroll
            for (int w = 0; w < 4; ++w) {
                const u32 word = qb_word(q, w);
                v[8 * k + 2 * w + 0] = __uint_as_float(word << 16);          // bf16 = top half of a float32
                v[8 * k + 2 * w + 1] = __uint_as_float(word & 0xFFFF0000u);
            }
        }
    }
};

// ---- 32-value block types (one block = one unit) -------------------------------------------------------------

// Q4_0 (18 B): fp16 d | qs[16]; byte j holds element j (low nibble) and element j + 16 (high nibble).
struct qt_q4_0 {
    static constexpr int VALUES_PER_BLOCK = 32, BYTES_PER_BLOCK = 18;
    static __device__ __forceinline__ void decode(const u8* __restrict__ row, int u, float (&v)[32]) {
        const u8* b = row + (size_t)u * BYTES_PER_BLOCK;
        const float d = f16_to_f32((u16)qb_ld16(b));
#pragma unroll
        for (int k = 0; k < 8; ++k) {
            const u32 pair = qb_ld16(b + 2 + 2 * k);  // bytes 2k, 2k+1
#pragma unroll
            for (int t = 0; t < 2; ++t) {
                const u32 byte = (pair >> (8 * t)) & 0xFFu;
                v[2 * k + t] = __fmul_rn(d, (float)((int)(byte & 0xFu) - 8));
                v[2 * k + t + 16] = __fmul_rn(d, (float)((int)(byte >> 4) - 8));
            }
        }
    }
};

// Q5_0 (22 B): fp16 d | qh (u32 LE: bit j is element j's 5th bit) | qs[16] as in Q4_0.
struct qt_q5_0 {
    static constexpr int VALUES_PER_BLOCK = 32, BYTES_PER_BLOCK = 22;
    static __device__ __forceinline__ void decode(const u8* __restrict__ row, int u, float (&v)[32]) {
        const u8* b = row + (size_t)u * BYTES_PER_BLOCK;
        const float d = f16_to_f32((u16)qb_ld16(b));
        const u32 qh = qb_ld16(b + 2) | (qb_ld16(b + 4) << 16);
#pragma unroll
        for (int k = 0; k < 8; ++k) {
            const u32 pair = qb_ld16(b + 6 + 2 * k);
#pragma unroll
            for (int t = 0; t < 2; ++t) {
                const int j = 2 * k + t;
                const u32 byte = (pair >> (8 * t)) & 0xFFu;
                const int lo = (int)((byte & 0xFu) | (((qh >> j) & 1u) << 4));
                const int hi = (int)((byte >> 4) | (((qh >> (j + 16)) & 1u) << 4));
                v[j] = __fmul_rn(d, (float)(lo - 16));
                v[j + 16] = __fmul_rn(d, (float)(hi - 16));
            }
        }
    }
};

// Q8_0 (34 B): fp16 d | int8 qs[32].
struct qt_q8_0 {
    static constexpr int VALUES_PER_BLOCK = 32, BYTES_PER_BLOCK = 34;
    static __device__ __forceinline__ void decode(const u8* __restrict__ row, int u, float (&v)[32]) {
        const u8* b = row + (size_t)u * BYTES_PER_BLOCK;
        const float d = f16_to_f32((u16)qb_ld16(b));
#pragma unroll
        for (int k = 0; k < 16; ++k) {
            const u32 pair = qb_ld16(b + 2 + 2 * k);
            v[2 * k + 0] = __fmul_rn(d, (float)(int)(i8)(pair & 0xFFu));
            v[2 * k + 1] = __fmul_rn(d, (float)(int)(i8)(pair >> 8));
        }
    }
};

// ---- K-quants (256-value super-blocks; a unit is one 32-value sub-block, or a quarter-half of Q6_K) -----------

// get_scale_min_k4 on the 12 scale bytes held as three LE words s0 (bytes 0-3), s1 (4-7), s2 (8-11):
// j < 4: sc = low 6 bits of byte j, m = low 6 bits of byte j+4;
// j >= 4: sc = low nibble of byte j+4 | (top 2 bits of byte j-4) << 4, m = high nibble of byte j+4 | (top 2
// bits of byte j) << 4. `j` is a run-time value; everything is shifts and selects (no local array).
__device__ __forceinline__ void qb_k_scale_min(u32 s0, u32 s1, u32 s2, int j, int& sc, int& m) {
    const int sh = 8 * (j & 3);
    const u32 b0 = (s0 >> sh) & 0xFFu, b1 = (s1 >> sh) & 0xFFu, b2 = (s2 >> sh) & 0xFFu;
    if (j < 4) {
        sc = (int)(b0 & 63u);
        m = (int)(b1 & 63u);
    } else {
        sc = (int)((b2 & 0xFu) | ((b0 >> 6) << 4));
        m = (int)((b2 >> 4) | ((b1 >> 6) << 4));
    }
}

// Q4_K (144 B): fp16 d | fp16 dmin | scales[12] | qs[128]. Sub-block s uses qs[32*(s/2) .. +31], low nibbles for
// even s and high nibbles for odd s.
struct qt_q4_k {
    static constexpr int VALUES_PER_BLOCK = 256, BYTES_PER_BLOCK = 144;
    static __device__ __forceinline__ void decode(const u8* __restrict__ row, int u, float (&v)[32]) {
        const u8* b = row + (size_t)(u >> 3) * BYTES_PER_BLOCK;
        const int s = u & 7;
        const uint4 head = qb_ld128(b);  // d | dmin, then the 12 scale bytes
        int sc, m;
        qb_k_scale_min(head.y, head.z, head.w, s, sc, m);
        const float dsc = __fmul_rn(f16_to_f32((u16)(head.x & 0xFFFFu)), (float)sc);  // exact
        const float dm = __fmul_rn(f16_to_f32((u16)(head.x >> 16)), (float)m);        // exact
        const int shift = 4 * (s & 1);
        const u8* qs = b + 16 + 32 * (s >> 1);
#pragma unroll
        for (int k = 0; k < 2; ++k) {
            const uint4 q = qb_ld128(qs + 16 * k);
#pragma unroll
            for (int w = 0; w < 4; ++w) {
                const u32 word = qb_word(q, w);
#pragma unroll
                for (int t = 0; t < 4; ++t) {
                    const int code = (int)((word >> (8 * t + shift)) & 0xFu);
                    v[16 * k + 4 * w + t] = __fsub_rn(__fmul_rn(dsc, (float)code), dm);
                }
            }
        }
    }
};

// Q5_K (176 B): fp16 d | fp16 dmin | scales[12] | qh[32] | qs[128]. Low nibble as in Q4_K; the 5th bit of element
// l of sub-block s is bit s of qh[l].
struct qt_q5_k {
    static constexpr int VALUES_PER_BLOCK = 256, BYTES_PER_BLOCK = 176;
    static __device__ __forceinline__ void decode(const u8* __restrict__ row, int u, float (&v)[32]) {
        const u8* b = row + (size_t)(u >> 3) * BYTES_PER_BLOCK;
        const int s = u & 7;
        const uint4 head = qb_ld128(b);
        int sc, m;
        qb_k_scale_min(head.y, head.z, head.w, s, sc, m);
        const float dsc = __fmul_rn(f16_to_f32((u16)(head.x & 0xFFFFu)), (float)sc);  // exact
        const float dm = __fmul_rn(f16_to_f32((u16)(head.x >> 16)), (float)m);        // exact
        const int shift = 4 * (s & 1);
        const u8* qs = b + 48 + 32 * (s >> 1);
#pragma unroll
        for (int k = 0; k < 2; ++k) {
            const uint4 q = qb_ld128(qs + 16 * k);
            const uint4 h = qb_ld128(b + 16 + 16 * k);
#pragma unroll
            for (int w = 0; w < 4; ++w) {
                const u32 word = qb_word(q, w), hword = qb_word(h, w);
#pragma unroll
                for (int t = 0; t < 4; ++t) {
                    const int code = (int)(((word >> (8 * t + shift)) & 0xFu) | (((hword >> (8 * t + s)) & 1u) << 4));
                    v[16 * k + 4 * w + t] = __fsub_rn(__fmul_rn(dsc, (float)code), dm);
                }
            }
        }
    }
};

// Q6_K (210 B): ql[128] | qh[64] | int8 scales[16] | fp16 d (at the END). Unit t = u % 8 of a block is half
// h = t / 4, quarter k = t % 4: element l (0..31) takes its low 4 bits from nibble k / 2 of ql[64h + 32(k%2) + l],
// its high 2 bits from bits 2k..2k+1 of qh[32h + l], and its scale from scales[8h + 2k + l/16].
struct qt_q6_k {
    static constexpr int VALUES_PER_BLOCK = 256, BYTES_PER_BLOCK = 210;
    static __device__ __forceinline__ void decode(const u8* __restrict__ row, int u, float (&v)[32]) {
        const u8* b = row + (size_t)(u >> 3) * BYTES_PER_BLOCK;
        const int t = u & 7, h = t >> 2, k = t & 3;
        const float d = f16_to_f32((u16)qb_ld16(b + 208));
        const u32 scw = qb_ld16(b + 192 + 8 * h + 2 * k);                      // the unit's two int8 scales
        const float dsc0 = __fmul_rn(d, (float)(int)(i8)(scw & 0xFFu));       // exact
        const float dsc1 = __fmul_rn(d, (float)(int)(i8)(scw >> 8));          // exact
        const u8* ql = b + 64 * h + 32 * (k & 1);
        const u8* qh = b + 128 + 32 * h;
        const int lshift = 4 * (k >> 1), hshift = 2 * k;
#pragma unroll
        for (int p = 0; p < 16; ++p) {
            const u32 lo = qb_ld16(ql + 2 * p), hi = qb_ld16(qh + 2 * p);
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int l = 2 * p + e;
                const int code = (int)(((lo >> (8 * e + lshift)) & 0xFu) | (((hi >> (8 * e + hshift)) & 3u) << 4));
                v[l] = __fmul_rn(l < 16 ? dsc0 : dsc1, (float)(code - 32));  // the one rounding product
            }
        }
    }
};
