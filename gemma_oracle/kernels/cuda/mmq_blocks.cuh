// Weight-block decoders shared by the decode-MMQ kernels (mmq.cu) and the dequant-MMA tile (dq_mma.cu): each GGUF
// type as a struct whose stage() turns one 32-value block of a row into int8 codes and float32 scale(s) / offset.
// SIGNED: whether the codes are signed int8 (Q8_0, Q4_0 - 8, Q6_K - 32) or unsigned (Q4_K 0..15, Q5_K 0..31).
#pragma once
#include "quant_blocks.cuh"  // common.cuh, qb_k_scale_min, qb_ld128

#define Q8_1_BYTES 36

__device__ __forceinline__ u32 mmq_ld16(const u8* p) { return (u32)__ldg((const unsigned short*)p); }

// K little-endian words at a 2-byte aligned p (Q8_0, Q4_0 and Q6_K blocks are 34, 18 and 210 bytes: their fields
// are only 2-byte aligned): K aligned 32-bit loads (and one 16-bit load when p is 2 mod 4), each word funnel-shifted
// out of two neighbours (shift 0 or 16), instead of 2K 16-bit loads. Nothing past p + 4K is read, and before p only
// the 2 bytes of the row's preceding field when p is 2 mod 4. The data's last 2 bytes are read as 16 bits: a row can
// end 2 bytes into an aligned word at the end of its allocation (compute-sanitizer flagged the 32-bit read of that
// word on an exactly sized allocation: scripts/gpu-run memcheck).
template <int K>
__device__ __forceinline__ void mmq_ld_words(const u8* p, u32 (&out)[K]) {
    const size_t a = (size_t)p;
    const u32* w = (const u32*)(a & ~(size_t)3);
    const u32 shift = (u32)(a & 3) * 8;
    u32 prev = __ldg(w);
#pragma unroll
    for (int k = 0; k < K; ++k) {
        const u32 next = k + 1 < K ? __ldg(w + k + 1) : shift ? mmq_ld16((const u8*)(w + k + 1)) : 0u;
        out[k] = __funnelshift_r(prev, next, shift);
        prev = next;
    }
}

// Four Q4_0 nibbles b (one per byte, 0..15) -> four int8 codes b - 8, byte-wise with no carries between bytes:
// b + 0x78 stays within its byte (0x78..0x87), and flipping bit 7 then subtracts 0x80 (an add and an xor).
__device__ __forceinline__ u32 mmq_q4_bias(u32 nibbles) { return (nibbles + 0x78787878u) ^ 0x80808080u; }

// Each weight type: HAS_MIN (whether the block has an offset term), HALVES (1: one scale per 32 values; 2: one per
// 16-value half) and
//     stage(row, u, q, d, m): 32-value block u of a row -> eight words of int8 codes (element 4k + i in byte i of
//     q[k]), the float32 scale(s) d[0..HALVES-1] (value = d * code) and, for HAS_MIN types, the float32 offset m
//     (value = d * code - m).
struct mq_no_pair {};  // types without a paired dp4a entry

struct mq_q8_0 {
    static constexpr bool HAS_MIN = false;
    static constexpr bool SIGNED = true;
    static constexpr int HALVES = 1;
    static constexpr bool PAIR = false;  // no Pair (see mmq_dp4a_kernel)
    static constexpr bool TILE_PAIR = false;
    using Pair = mq_no_pair;
    // where block u's code bytes start (a prefetch target)
    static __device__ __forceinline__ const u8* codes_at(const u8* row, int u) { return row + (size_t)u * 34 + 2; }
    static __device__ __forceinline__ void stage(const u8* __restrict__ row, int u, u32 (&q)[8], float (&d)[2],
                                                 float& m) {
        const u8* p = row + (size_t)u * 34;
        d[0] = f16_to_f32((u16)mmq_ld16(p));
        m = 0.0f;
        mmq_ld_words<8>(p + 2, q);  // qs[0..31]
    }
};

// Q4_0 (18 B): byte j of qs holds element j (low nibble) and element j + 16 (high nibble).
struct mq_q4_0 {
    static constexpr bool HAS_MIN = false;
    static constexpr bool SIGNED = true;
    static constexpr int HALVES = 1;
    static constexpr bool PAIR = true;
    // The mma tiles stage Q4_0 one block a thread: paired staging made them 2-23 % slower per matmul (H100 A/B,
    // reports/history/2026-12-07-h100-s13.md), against 1 % faster for Q4_K.
    static constexpr bool TILE_PAIR = false;
    // where block u's code bytes start (a prefetch target)
    static __device__ __forceinline__ const u8* codes_at(const u8* row, int u) { return row + (size_t)u * 18 + 2; }
    static __device__ __forceinline__ void stage(const u8* __restrict__ row, int u, u32 (&q)[8], float (&d)[2],
                                                 float& m) {
        const u8* p = row + (size_t)u * 18;
        d[0] = f16_to_f32((u16)mmq_ld16(p));
        m = 0.0f;
        u32 qs[4];
        mmq_ld_words<4>(p + 2, qs);
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            const u32 bytes = qs[k];  // qs[4k .. 4k + 3]
            q[k] = mmq_q4_bias(bytes & 0x0F0F0F0Fu);            // elements 4k .. 4k + 3
            q[k + 4] = mmq_q4_bias((bytes >> 4) & 0x0F0F0F0Fu); // elements 16 + 4k .. 16 + 4k + 3
        }
    }
    // Blocks u and u + 1 (u even) for the paired dp4a kernel: their 36 contiguous bytes as 9 words (stage reads the
    // same bytes per block as a 16-bit d and 5 words), kept raw until each code word is used (registers: the paired
    // kernel must stay at 64 for 8 resident blocks an SM). code(b, k) is stage's q[k] of block u + b.
    struct Pair {
        u32 w[9];  // d0 | qs0 (bytes 2..17) | d1 (18..19) | qs1 (20..35)
        float d[2], m[2];
        __device__ __forceinline__ void load(const u8* __restrict__ row, int u) {
            mmq_ld_words<9>(row + (size_t)u * 18, w);
            d[0] = f16_to_f32((u16)(w[0] & 0xFFFFu));
            d[1] = f16_to_f32((u16)(w[4] >> 16));
            m[0] = m[1] = 0.0f;
        }
        __device__ __forceinline__ u32 code(int b, int k) const {
            const u32 bytes = b == 0 ? __funnelshift_r(w[k & 3], w[(k & 3) + 1], 16) : w[5 + (k & 3)];
            return mmq_q4_bias((bytes >> (k < 4 ? 0 : 4)) & 0x0F0F0F0Fu);
        }
    };
};

// Q4_K (144 B) and Q5_K (176 B), 16-byte aligned rows: block u is sub-block s = u % 8 of super-block u / 8;
// codes are the raw nibbles 0..15 (Q5_K: plus 16 * bit s of qh[i], 0..31; no bias), d = d * sc_s and
// m = dmin * m_s, both exact products (11 + 6 bits), as in ggml.
template <bool FIVE_BIT>
struct mq_qk {
    static constexpr bool HAS_MIN = true;
    static constexpr bool SIGNED = false;
    static constexpr int HALVES = 1;
    static constexpr bool PAIR = !FIVE_BIT;  // Q5_K's qh words in a Pair spill even at 80 registers
    static constexpr bool TILE_PAIR = PAIR;  // the mma tiles stage sub-block pairs (mmq.cu)
    static constexpr int BYTES = FIVE_BIT ? 176 : 144;
    // where block u's code bytes start (a prefetch target)
    static __device__ __forceinline__ const u8* codes_at(const u8* row, int u) {
        return row + (size_t)(u >> 3) * BYTES + (FIVE_BIT ? 48 : 16) + 32 * ((u & 7) >> 1);
    }
    static __device__ __forceinline__ void stage(const u8* __restrict__ row, int u, u32 (&q)[8], float (&d)[2],
                                                 float& m) {
        const u8* b = row + (size_t)(u >> 3) * BYTES;
        const int s = u & 7;
        const uint4 head = qb_ld128(b);
        int sc, mn;
        qb_k_scale_min(head.y, head.z, head.w, s, sc, mn);
        d[0] = __fmul_rn(f16_to_f32((u16)(head.x & 0xFFFFu)), (float)sc);
        m = __fmul_rn(f16_to_f32((u16)(head.x >> 16)), (float)mn);
        const int shift = 4 * (s & 1);
        const u8* qs = b + (FIVE_BIT ? 48 : 16) + 32 * (s >> 1);
        const uint4 q0 = qb_ld128(qs), q1 = qb_ld128(qs + 16);
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            q[k] = (qb_word(q0, k) >> shift) & 0x0F0F0F0Fu;
            q[k + 4] = (qb_word(q1, k) >> shift) & 0x0F0F0F0Fu;
        }
        if (FIVE_BIT) {  // qh[32] at byte 16: bit s of qh[i] is the fifth bit of element i of sub-block s
            const uint4 h0 = qb_ld128(b + 16), h1 = qb_ld128(b + 32);
#pragma unroll
            for (int k = 0; k < 4; ++k) {
                q[k] |= ((qb_word(h0, k) >> s) & 0x01010101u) << 4;
                q[k + 4] |= ((qb_word(h1, k) >> s) & 0x01010101u) << 4;
            }
        }
    }
    // Q4_K sub-blocks u and u + 1 (u even) for the paired dp4a kernel: they share the super-block's head and their
    // 32 qs bytes (low and high nibbles), which stage reads once per sub-block. The bytes stay raw until each code
    // word is used (registers, as for Q4_0). code(b, k) is stage's q[k] of sub-block u + b.
    struct Pair {
        uint4 v0, v1;  // qs[32 (s / 2) .. + 31]
        float d[2], m[2];
        __device__ __forceinline__ void load(const u8* __restrict__ row, int u) {
            static_assert(!FIVE_BIT, "no Q5_K pair");
            const u8* b = row + (size_t)(u >> 3) * BYTES;
            const int s = u & 7;  // even
            const uint4 head = qb_ld128(b);
            int sc0, mn0, sc1, mn1;
            qb_k_scale_min(head.y, head.z, head.w, s, sc0, mn0);
            qb_k_scale_min(head.y, head.z, head.w, s + 1, sc1, mn1);
            const float dd = f16_to_f32((u16)(head.x & 0xFFFFu)), dm = f16_to_f32((u16)(head.x >> 16));
            d[0] = __fmul_rn(dd, (float)sc0);
            m[0] = __fmul_rn(dm, (float)mn0);
            d[1] = __fmul_rn(dd, (float)sc1);
            m[1] = __fmul_rn(dm, (float)mn1);
            const u8* qs = b + 16 + 32 * (s >> 1);
            v0 = qb_ld128(qs);
            v1 = qb_ld128(qs + 16);
        }
        __device__ __forceinline__ u32 code(int b, int k) const {
            return (qb_word(k < 4 ? v0 : v1, k & 3) >> (4 * b)) & 0x0F0F0F0Fu;
        }
    };
};

// Q6_K (210 B, rows 2-byte aligned): ql[128] qh[64] scales[16] (int8) d (fp16). Block u is j = u % 8 of
// super-block u / 8: half h = j / 4 of 128 values, quarter jj = j % 4; element i (0..31) has
// q = ((ql[64h + 32 (jj & 1) + i] >> 4 (jj >> 1)) & 15) | (((qh[32h + i] >> 2 jj) & 3) << 4), code q - 32, and
// scale sc[8h + 2jj + i / 16]: two 16-value halves, two scales (ggml dequantize_row_q6_K).
struct mq_q6_k {
    static constexpr bool HAS_MIN = false;
    static constexpr bool SIGNED = true;
    static constexpr int HALVES = 2;
    static constexpr bool PAIR = false;
    static constexpr bool TILE_PAIR = false;
    using Pair = mq_no_pair;
    // where block u's code bytes start (a prefetch target)
    static __device__ __forceinline__ const u8* codes_at(const u8* row, int u) {
        return row + (size_t)(u >> 3) * 210 + 64 * ((u & 7) >> 2) + 32 * (u & 1);
    }
    static __device__ __forceinline__ void stage(const u8* __restrict__ row, int u, u32 (&q)[8], float (&d)[2],
                                                 float& m) {
        const u8* b = row + (size_t)(u >> 3) * 210;
        const int j = u & 7, h = j >> 2, jj = j & 3;
        const u8* ql = b + 64 * h + 32 * (jj & 1);
        const u8* qh = b + 128 + 32 * h;
        const int sl = 4 * (jj >> 1), sh = 2 * jj;
        u32 lo[8], hi[8];
        mmq_ld_words<8>(ql, lo);
        mmq_ld_words<8>(qh, hi);
#pragma unroll
        for (int k = 0; k < 8; ++k) {
            const u32 v = ((lo[k] >> sl) & 0x0F0F0F0Fu) | (((hi[k] >> sh) & 0x03030303u) << 4);  // 0..63 per byte
            // per byte q - 32 as int8: q + 0x60 stays within its byte (<= 0x9F), and flipping bit 7 subtracts 0x80
            // (one add and one xor; __vsub4 is emulated on sm_90)
            q[k] = (v + 0x60606060u) ^ 0x80808080u;
        }
        const u32 sc = mmq_ld16(b + 192 + 8 * h + 2 * jj);  // sc[8h + 2jj] (low byte), sc[8h + 2jj + 1]
        const float dd = f16_to_f32((u16)mmq_ld16(b + 208));
        d[0] = __fmul_rn(dd, (float)(signed char)(sc & 0xFFu));
        d[1] = __fmul_rn(dd, (float)(signed char)(sc >> 8));
        m = 0.0f;
    }
};

// One (row, block) task of a weight tile's staging (mmq.cu's one-block path, dq_mma.cu): block u of `row` decoded
// by Q::stage, or zero codes, scales and offset where the row or the block lies outside the matrix (row >= rows,
// u >= u_hi), which add nothing to the tile's sums.
template <class Q>
__device__ __forceinline__ void mmq_stage_or_zero(const u8* __restrict__ w, i64 row_bytes, int row, int rows, int u,
                                                  int u_hi, u32 (&q)[8], float (&d)[2], float& m) {
#pragma unroll
    for (int k = 0; k < 8; ++k) q[k] = 0u;
    d[0] = d[1] = m = 0.0f;
    if (row < rows && u < u_hi) Q::stage(w + (size_t)row * row_bytes, u, q, d, m);
}

// Sum of the four signed bytes of a and the int c (dp4a with b = 1,1,1,1).
__device__ __forceinline__ int mmq_byte_sum(u32 a, int c) {
    int r;
    asm("dp4a.s32.s32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(0x01010101), "r"(c));
    return r;
}
