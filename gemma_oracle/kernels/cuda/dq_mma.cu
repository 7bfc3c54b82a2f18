// Dequant-MMA: y[n, r] = sum_k W[r, k] * x[n, k] for a batch of N tokens on fp16 tensor cores with float32
// accumulation (PTX mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32; plain sm_90).
//
// Why (issue 23; reports/history/2026-11-25-h100-step-kernels-s6-n32.md): decode-MMQ (mmq.cu) scales each int8
// 32-value dot in float32 per output, so its float work per weight grows with N (at N = 32 its tiles read 16-20 % of
// DRAM peak). Here each weight is dequantized ONCE per tile to fp16 (in shared memory, or in the "direct tiles" below
// straight into a lane's mma registers), and the tensor cores do every multiply-add: the per-weight work no longer
// depends on N.
//
// Weights: GGUF rows as they are (Q8_0, Q4_0, Q4_K, Q5_K, Q6_K), decoded by the same stage() as decode-MMQ
// (mmq_blocks.cuh: int8 codes, scale d, offset m per 32 values; Q6_K one d per 16-value half), then
//     w16 = fp16_rn(code * fp16_rn(d) + fp16_rn(-m))        (one half2 fma: the product and sum are not rounded
//                                                            on their own; code is exact in fp16)
// Activations: fp16 rows x16 with a per-row power of two inv (f16_rows.cu: x16 * inv = x to 2^-11).
// Per output (r, n) and K slice: acc = +0, then for each 16-value step k0 = slice start, +16, ... in increasing order
//     acc = mma(acc, w16[r, k0 .. k0 + 15], x16[n, k0 .. k0 + 15])       (the tensor core's own f32 dot-and-add)
// and y = acc * inv[n] (exact: a power of two), partial slices added in slice order as in mmq.cu (split_k.cuh).
//
// Why the bits of an output do not depend on N (the batch-invariant contract):
//   * the K slices (grid.z) come from the matrix shape only (kernels/dq_mma.py uses decode-MMQ's split_k_slices),
//     and within a slice every tile walks K in the same 16-value steps in increasing order, one mma per step,
//     whatever its BM, BN or stage depth KB: an output's chain of mma calls is the same sequence of inputs;
//   * one mma's output element (i, j) is a function of A row i, B column j and C (i, j) only: each element is its
//     own dot product. The tokens beside token n in its 8-token column group (other sequences, or zero padding
//     past N) enter other elements only. tests/test_kernels_dq_mma_gpu.py checks it: a token's row is bitwise the
//     same alone, at every slot of a batch, at every N and on every tile;
//   * a token's x16 and inv depend on its own row only (f16_rows.cu).
// The rounding inside the mma is the hardware's (not IEEE round-to-nearest per add), so the result is compared
// against float64 within an f32 accumulation bound, not bit for bit; it is NOT bitwise equal to WS or decode-MMQ.
//
// Tile <WM, MT, BN, KB, PF>: WM warps, each owning MT x 16 consecutive weight rows (BM = 16 * MT * WM) and all BN tokens
// (BN / 8 n8 tiles); K in stages of KB 32-value blocks. A stage: each thread decodes (row, block) tasks to fp16 in
// shared memory (row stride KC + 8 halves: rows 16 bytes apart mod 128, so ldmatrix is conflict-free) and copies the
// BN tokens' fp16 activations (16-byte loads); then each warp, per 16-value step, loads its A fragments (ldmatrix.x4
// per m16 tile) and B fragments (ldmatrix.x4 per two n8 tiles) and runs MT x BN / 8 mmas. PF > 0: each stage first
// asks L2 for its tasks' code bytes PF stages ahead (prefetch.global.L2), so the next stages' loads find them there.
// Rows past `rows`, tokens past `n` and blocks past the slice are staged as 0 and never stored; mma steps past the
// slice's last block are not run.
//
// Entry points (<t> in q8_0 q4_0 q4_k q5_k q6_k; <tile> in kernels/dq_mma.py TILES):
//     dq_mma_<t>_<tile>(const u8* w, i64 row_bytes, int rows, int units, const u16* x16, const float* inv, int n,
//                       float* y, int slices, float* part, int* counters)
//   w [rows, row_bytes] GGUF rows (16-byte aligned for Q4_K / Q5_K); units = K / 32; x16 [n, K] fp16 (16-byte
//   aligned rows: K % 8 == 0); inv [n]; y [n, rows] float32; part / counters as in mmq.cu (zero on entry, left zero).
//   grid (ceil(rows / BM), ceil(n / BN), slices), block 32 * WM.
#include "mmq_blocks.cuh"  // stage() of each weight type
#include "f16_mma.cuh"     // the half2 fma / sub, the m16n8k16 mma and its store
#include "split_k.cuh"     // mmq_last_slice_sums

__device__ __forceinline__ u32 dq_half2_splat(float f) {
    const u32 h = f32_to_f16(f);
    return h | (h << 16);
}

// Four int8 codes (one per byte of q, signed or unsigned) -> two half2 words (codes 0, 1 and 2, 3), exactly:
// each byte b goes into the low byte of an fp16 whose high byte is 0x64, the number 1024 + b (ulp 1 there), and
// 1024 (unsigned) or 1024 + 128 (signed codes, whose bytes were moved to b + 128 by the xor) is subtracted.
template <bool SIGNED>
__device__ __forceinline__ void dq_codes_to_half2(u32 q, u32& lo, u32& hi) {
    const u32 b = SIGNED ? q ^ 0x80808080u : q;
    const u32 bias = SIGNED ? 0x64806480u : 0x64006400u;  // 1152, 1152 or 1024, 1024
    lo = dq_half2_sub(__byte_perm(b, 0x64646464u, 0x4140), bias);
    hi = dq_half2_sub(__byte_perm(b, 0x64646464u, 0x4342), bias);
}

__device__ __forceinline__ u32 dq_smem_addr(const void* p) {  // a shared-memory pointer as a 32-bit .shared address
    u32 a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}

__device__ __forceinline__ void dq_ldmatrix_x4(u32 (&r)[4], const void* p) {
    const u32 a = dq_smem_addr(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}

__device__ __forceinline__ void dq_ldmatrix_x2(u32 (&r)[4], const void* p) {  // r[2], r[3] left as they are
    const u32 a = dq_smem_addr(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];" : "=r"(r[0]), "=r"(r[1]) : "r"(a));
}


__device__ __forceinline__ void dq_prefetch_l2(const void* p) { asm volatile("prefetch.global.L2 [%0];" ::"l"(p)); }


template <class Q, int WM, int MT, int BN, int KB, int PF>
__device__ __forceinline__ void dq_mma_kernel(const u8* __restrict__ w, i64 row_bytes, int rows, int units,
                                              const u16* __restrict__ x16, const float* __restrict__ inv, int n,
                                              float* __restrict__ y, int slices, float* __restrict__ part,
                                              int* __restrict__ counters) {
    constexpr int BM = 16 * MT * WM, THREADS = 32 * WM, NT = BN / 8, KC = 32 * KB, LD = KC + 8;  // LD in halves
    static_assert(NT % 2 == 0 || NT == 1, "B fragments are loaded two n8 tiles at a time");
    static_assert(BM * KB % THREADS == 0, "weight tasks must split evenly over the threads");
    __shared__ __align__(16) u16 s_w[BM * LD];
    __shared__ __align__(16) u16 s_x[BN * LD];

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int row0 = blockIdx.x * BM, tok0 = blockIdx.y * BN;
    const int2 k_slice = split_k_bounds(units, slices, blockIdx.z);
    const int u_lo = k_slice.x, u_hi = k_slice.y;
    const size_t k_all = (size_t)units * 32;

    float acc[MT][NT][4];
    dq_zero_acc<MT, NT>(acc);

    // ldmatrix row addresses of this lane: A (x4: rows 0-7 / 8-15 of the m16 tile, k 0-7 / 8-15), B (x4: tokens 0-7 /
    // 8-15 of two n8 tiles, k 0-7 / 8-15)
    const int mi = lane >> 3, r8 = lane & 7;
    const int a_row = warp * 16 * MT + (mi & 1) * 8 + r8, a_col = (mi >> 1) * 8;
    const int b_tok = (mi >> 1) * 8 + r8, b_col = (mi & 1) * 8;

    for (int b0 = u_lo; b0 < u_hi; b0 += KB) {
        // ---- PF > 0: the code bytes of this thread's tasks PF stages ahead, into L2 (no registers held) ----
        if (PF > 0) {
#pragma unroll
            for (int i = 0; i < BM * KB / THREADS; ++i) {
                const int task = tid + i * THREADS;
                const int r = task / KB, u = b0 + PF * KB + task % KB;
                if (row0 + r < rows && u < u_hi) dq_prefetch_l2(Q::codes_at(w + (size_t)(row0 + r) * row_bytes, u));
            }
        }
        // ---- weights: (row, block) tasks decoded to fp16 ----
#pragma unroll
        for (int i = 0; i < BM * KB / THREADS; ++i) {
            const int task = tid + i * THREADS;
            const int r = task / KB, kb = task % KB;
            u32 q[8];
            float d[2], m;
            mmq_stage_or_zero<Q>(w, row_bytes, row0 + r, rows, b0 + kb, u_hi, q, d, m);
            const u32 neg_m = dq_half2_splat(-m), d0 = dq_half2_splat(d[0]);
            const u32 d1 = Q::HALVES == 2 ? dq_half2_splat(d[1]) : d0;
            u32 h[16];
#pragma unroll
            for (int k = 0; k < 8; ++k) {
                u32 lo, hi;
                dq_codes_to_half2<Q::SIGNED>(q[k], lo, hi);
                const u32 dk = k < 4 ? d0 : d1;  // Q6_K: values 0..15 and 16..31 have their own scale
                h[2 * k] = dq_half2_fma(lo, dk, neg_m);
                h[2 * k + 1] = dq_half2_fma(hi, dk, neg_m);
            }
            uint4* dst = (uint4*)(s_w + r * LD + 32 * kb);  // 16-byte aligned: LD and 32 are multiples of 8 halves
#pragma unroll
            for (int k = 0; k < 4; ++k) dst[k] = make_uint4(h[4 * k], h[4 * k + 1], h[4 * k + 2], h[4 * k + 3]);
        }
        // ---- activations: BN tokens x KC halves in 16-byte pieces ----
        for (int task = tid; task < BN * KC / 8; task += THREADS) {
            const int j = task / (KC / 8), c = task % (KC / 8);
            const int u = b0 + c / 4;  // 32-value block of this piece
            uint4 v = make_uint4(0u, 0u, 0u, 0u);
            if (tok0 + j < n && u < u_hi) v = __ldg((const uint4*)(x16 + (size_t)(tok0 + j) * k_all + (size_t)b0 * 32) + c);
            *(uint4*)(s_x + j * LD + 8 * c) = v;
        }
        __syncthreads();

        // ---- mma: 16-value steps in increasing k, only over the slice's blocks ----
        const int steps = 2 * min(KB, u_hi - b0);
#pragma unroll
        for (int s = 0; s < 2 * KB; ++s) {
            if (s >= steps) break;  // block-uniform
            u32 a[MT][4];
#pragma unroll
            for (int i = 0; i < MT; ++i) dq_ldmatrix_x4(a[i], s_w + (a_row + 16 * i) * LD + 16 * s + a_col);
#pragma unroll
            for (int h = 0; h < NT; h += 2) {
                u32 b[4] = {0u, 0u, 0u, 0u};
                if (NT == 1) dq_ldmatrix_x2(b, s_x + b_tok * LD + 16 * s + b_col);  // lanes 0-15: tokens 0-7
                else dq_ldmatrix_x4(b, s_x + (8 * h + b_tok) * LD + 16 * s + b_col);
#pragma unroll
                for (int i = 0; i < MT; ++i) {
                    dq_mma16816(acc[i][h], a[i], b[0], b[1]);
                    if (h + 1 < NT) dq_mma16816(acc[i][h + 1], a[i], b[2], b[3]);
                }
            }
        }
        __syncthreads();
    }

    // ---- store (dq_store_m16) and, with split K, the slice sums ----
    float* __restrict__ dst = slices == 1 ? y : part + (size_t)blockIdx.z * n * rows;
#pragma unroll
    for (int i = 0; i < MT; ++i)
        dq_store_m16<NT>(acc[i], dst, inv, row0 + warp * 16 * MT + 16 * i + (lane >> 2), tok0, lane & 3, rows, n);
    if (slices > 1) mmq_last_slice_sums<BM, BN, THREADS>(part, slices, rows, n, row0, tok0, y, counters);
}

// ---- Direct tiles: A fragments decoded in registers from the GGUF bytes, no shared memory, no barriers ----------
// The shared-memory tile above is flat in N but staging-bound (H100, 2026-12-06: Q4_K 15360 x 3840 at 754 GB/s, N = 1
// to 16). Here each warp owns MT x 16 rows and all BN tokens, and every lane decodes its own part of each 32-value
// block straight into its m16n8k16 A registers: lane (g, t) holds 8 of the block's 32 values for rows g and g + 8 of
// each m16 tile. The mma's k slots need not hold the values in K order: any fixed assignment of a block's 32 values to
// the 32 slots of its two k16 steps gives the same dot product, provided B holds the activations in the same
// assignment. Lane t takes the 8 values whose bytes lie together in the GGUF block (dq_lane: values 8t .. 8t + 7, or
// for Q4_0 4t .. 4t + 3 and 16 + 4t .. 19 + 4t, the low and high nibbles of the same 4 bytes), so each lane reads 4 or
// 8 contiguous bytes a row; pairs (e0, e2), (e1, e3), (e4, e6), (e5, e7) of its 8 values fill slots (2t, 2t + 1),
// (2t + 8, 2t + 9) of the first and second k16 step, and B takes the activations of the same values (two prmt per 4
// values).
// Per output the order is fixed by the shape: blocks in increasing K order, each block's two k16 steps in order, so
// the batch-invariant argument of the header holds as it is; the bits differ from the shared-memory tiles (another
// assignment of values to slots inside each mma).

// Two half2 words from a word of 4 byte-codes b0..b3 (each code c = byte - bias): (b0, b2) and (b1, b3), each value
// fp16_rn(c * d + neg_m) as in dq_codes_to_half2.
__device__ __forceinline__ void dq_byte_pairs(u32 v, u32 bias, u32 d2, u32 negm2, u32& p02, u32& p13) {
    p02 = dq_half2_fma(dq_half2_sub((v & 0x00FF00FFu) | 0x64006400u, bias), d2, negm2);
    p13 = dq_half2_fma(dq_half2_sub(((v >> 8) & 0x00FF00FFu) | 0x64006400u, bias), d2, negm2);
}

// dq_lane<Q>::frag(row, u, t, h): lane t's 8 values of block u of a row as 4 half2 words h[0..3] = values (e0, e2),
// (e1, e3), (e4, e6), (e5, e7); X_SPLIT: whether e0..e3 and e4..e7 are 4t.. and 16 + 4t.. (else 8t .. 8t + 7).
template <class Q> struct dq_lane;

template <> struct dq_lane<mq_q8_0> {
    static constexpr bool X_SPLIT = false;
    static __device__ __forceinline__ void frag(const u8* __restrict__ row, int u, int t, u32 (&h)[4]) {
        const u8* p = row + (size_t)u * 34;
        const u32 d2 = dq_half2_splat(f16_to_f32((u16)mmq_ld16(p)));
        u32 q[2];
        mmq_ld_words<2>(p + 2 + 8 * t, q);
        dq_byte_pairs(q[0] ^ 0x80808080u, 0x64806480u, d2, 0u, h[0], h[1]);  // signed: byte + 128, minus 1152
        dq_byte_pairs(q[1] ^ 0x80808080u, 0x64806480u, d2, 0u, h[2], h[3]);
    }
};

template <> struct dq_lane<mq_q4_0> {
    static constexpr bool X_SPLIT = true;
    static __device__ __forceinline__ void frag(const u8* __restrict__ row, int u, int t, u32 (&h)[4]) {
        const u8* p = row + (size_t)u * 18;
        const u32 d2 = dq_half2_splat(f16_to_f32((u16)mmq_ld16(p)));
        u32 q[1];
        mmq_ld_words<1>(p + 2 + 4 * t, q);  // qs[4t .. 4t + 3]: values 4t.. (low nibbles), 16 + 4t.. (high)
        dq_byte_pairs(q[0] & 0x0F0F0F0Fu, 0x64086408u, d2, 0u, h[0], h[1]);  // nibble - 8: minus 1032
        dq_byte_pairs((q[0] >> 4) & 0x0F0F0F0Fu, 0x64086408u, d2, 0u, h[2], h[3]);
    }
};

template <bool FIVE_BIT> struct dq_lane<mq_qk<FIVE_BIT>> {
    static constexpr bool X_SPLIT = false;
    static __device__ __forceinline__ void frag(const u8* __restrict__ row, int u, int t, u32 (&h)[4]) {
        constexpr int BYTES = FIVE_BIT ? 176 : 144;
        const u8* b = row + (size_t)(u >> 3) * BYTES;
        const int s = u & 7;
        const uint4 head = qb_ld128(b);
        int sc, mn;
        qb_k_scale_min(head.y, head.z, head.w, s, sc, mn);
        const u32 d2 = dq_half2_splat(__fmul_rn(f16_to_f32((u16)(head.x & 0xFFFFu)), (float)sc));
        const u32 negm2 = dq_half2_splat(-__fmul_rn(f16_to_f32((u16)(head.x >> 16)), (float)mn));
        const uint2 q = __ldg((const uint2*)(b + (FIVE_BIT ? 48 : 16) + 32 * (s >> 1) + 8 * t));
        const int sh = 4 * (s & 1);
        u32 v0 = (q.x >> sh) & 0x0F0F0F0Fu, v1 = (q.y >> sh) & 0x0F0F0F0Fu;
        if (FIVE_BIT) {  // bit s of qh[i] (qh at byte 16) is the fifth bit of value i
            const uint2 qh = __ldg((const uint2*)(b + 16 + 8 * t));
            v0 |= ((qh.x >> s) & 0x01010101u) << 4;
            v1 |= ((qh.y >> s) & 0x01010101u) << 4;
        }
        dq_byte_pairs(v0, 0x64006400u, d2, negm2, h[0], h[1]);
        dq_byte_pairs(v1, 0x64006400u, d2, negm2, h[2], h[3]);
    }
};

template <> struct dq_lane<mq_q6_k> {
    static constexpr bool X_SPLIT = false;
    static __device__ __forceinline__ void frag(const u8* __restrict__ row, int u, int t, u32 (&h)[4]) {
        const u8* b = row + (size_t)(u >> 3) * 210;
        const int j = u & 7, hh = j >> 2, jj = j & 3;
        u32 lo[2], hi[2];
        mmq_ld_words<2>(b + 64 * hh + 32 * (jj & 1) + 8 * t, lo);
        mmq_ld_words<2>(b + 128 + 32 * hh + 8 * t, hi);
        const u32 sc2 = mmq_ld16(b + 192 + 8 * hh + 2 * jj);  // the block's two 16-value scales; lane t: t >= 2
        const float sc = (float)(signed char)((t >= 2 ? sc2 >> 8 : sc2) & 0xFFu);
        const u32 d2 = dq_half2_splat(__fmul_rn(f16_to_f32((u16)mmq_ld16(b + 208)), sc));
        const int sl = 4 * (jj >> 1), sh = 2 * jj;
        const u32 v0 = ((lo[0] >> sl) & 0x0F0F0F0Fu) | (((hi[0] >> sh) & 0x03030303u) << 4);
        const u32 v1 = ((lo[1] >> sl) & 0x0F0F0F0Fu) | (((hi[1] >> sh) & 0x03030303u) << 4);
        dq_byte_pairs(v0, 0x64206420u, d2, 0u, h[0], h[1]);  // q - 32: minus 1056
        dq_byte_pairs(v1, 0x64206420u, d2, 0u, h[2], h[3]);
    }
};

// B words of one token for block u, in dq_lane's assignment: b[0], b[1] for the first k16 step, b[2], b[3] the second
template <bool X_SPLIT>
__device__ __forceinline__ void dq_lane_x(const u16* __restrict__ xrow, int u, int t, u32 (&b)[4]) {
    const u16* p = xrow + (size_t)u * 32;
    uint2 lo, hi;
    if (X_SPLIT) {
        lo = __ldg((const uint2*)(p + 4 * t));
        hi = __ldg((const uint2*)(p + 16 + 4 * t));
    } else {
        const uint4 v = __ldg((const uint4*)(p + 8 * t));
        lo = make_uint2(v.x, v.y);
        hi = make_uint2(v.z, v.w);
    }
    b[0] = __byte_perm(lo.x, lo.y, 0x5410);  // values e0, e2
    b[1] = __byte_perm(lo.x, lo.y, 0x7632);  // e1, e3
    b[2] = __byte_perm(hi.x, hi.y, 0x5410);
    b[3] = __byte_perm(hi.x, hi.y, 0x7632);
}

// ---- Groups: the bytes a lane needs for several blocks, loaded once ----------------------------------------------
// dq_lane reads one block at a time; for the K-quants that re-reads the super-block's head (and for Q4_K / Q5_K each
// code byte, whose two nibbles belong to two blocks) once per block, and every read is a separate L1 transaction
// (H100, 2026-12-06: the per-block tile ran at ~950 GB/s, as its L1 transactions per byte predict). dq_group<Q>
// loads a lane's share of a whole group of BLOCKS blocks (a K-quant super-block: head, codes, high bits) into
// registers once, then frag(raw, j, t, h) decodes block j of the group from them: the same operations on the same
// bytes as dq_lane<Q>::frag, so the same fp16 values and the same bits.
template <class Q> struct dq_group {  // Q8_0, Q4_0: a group is 4 blocks, decoded when loaded (16 registers a row)
    static constexpr int BLOCKS = 4;
    using L = dq_lane<Q>;
    struct Raw { u32 h[4][4]; };
    // blocks past the row's last (units not a multiple of 4) read the last one: never used (the slice ends before)
    static __device__ __forceinline__ void load(const u8* __restrict__ row, int grp, int t, int units, Raw& r) {
#pragma unroll
        for (int i = 0; i < 4; ++i) L::frag(row, min(4 * grp + i, units - 1), t, r.h[i]);
    }
    static __device__ __forceinline__ void frag(const Raw& r, int j, int, u32 (&h)[4]) {
#pragma unroll
        for (int i = 0; i < 4; ++i) h[i] = r.h[j][i];
    }
};

template <bool FIVE_BIT> struct dq_group<mq_qk<FIVE_BIT>> {  // Q4_K, Q5_K: one super-block of 8 blocks
    static constexpr int BLOCKS = 8;
    struct Raw { uint4 head; uint2 q[4]; uint2 qh; };
    static __device__ __forceinline__ void load(const u8* __restrict__ row, int grp, int t, int, Raw& r) {
        const u8* b = row + (size_t)grp * (FIVE_BIT ? 176 : 144);
        r.head = qb_ld128(b);
#pragma unroll
        for (int i = 0; i < 4; ++i) r.q[i] = __ldg((const uint2*)(b + (FIVE_BIT ? 48 : 16) + 32 * i + 8 * t));
        r.qh = FIVE_BIT ? __ldg((const uint2*)(b + 16 + 8 * t)) : make_uint2(0u, 0u);
    }
    static __device__ __forceinline__ void frag(const Raw& r, int s, int, u32 (&h)[4]) {
        int sc, mn;
        qb_k_scale_min(r.head.y, r.head.z, r.head.w, s, sc, mn);
        const u32 d2 = dq_half2_splat(__fmul_rn(f16_to_f32((u16)(r.head.x & 0xFFFFu)), (float)sc));
        const u32 negm2 = dq_half2_splat(-__fmul_rn(f16_to_f32((u16)(r.head.x >> 16)), (float)mn));
        const uint2 q = r.q[s >> 1];
        const int sh = 4 * (s & 1);
        u32 v0 = (q.x >> sh) & 0x0F0F0F0Fu, v1 = (q.y >> sh) & 0x0F0F0F0Fu;
        if (FIVE_BIT) {
            v0 |= ((r.qh.x >> s) & 0x01010101u) << 4;
            v1 |= ((r.qh.y >> s) & 0x01010101u) << 4;
        }
        dq_byte_pairs(v0, 0x64006400u, d2, negm2, h[0], h[1]);
        dq_byte_pairs(v1, 0x64006400u, d2, negm2, h[2], h[3]);
    }
};

template <> struct dq_group<mq_q6_k> {  // one super-block of 8 blocks (its fields are only 2-byte aligned)
    static constexpr int BLOCKS = 8;
    struct Raw { u32 lo[4][2]; u32 hi[2][2]; u32 sc[4]; u32 d; };
    static __device__ __forceinline__ void load(const u8* __restrict__ row, int grp, int t, int, Raw& r) {
        const u8* b = row + (size_t)grp * 210;
#pragma unroll
        for (int i = 0; i < 4; ++i) mmq_ld_words<2>(b + 64 * (i >> 1) + 32 * (i & 1) + 8 * t, r.lo[i]);
#pragma unroll
        for (int i = 0; i < 2; ++i) mmq_ld_words<2>(b + 128 + 32 * i + 8 * t, r.hi[i]);
        mmq_ld_words<4>(b + 192, r.sc);
        r.d = mmq_ld16(b + 208);
    }
    static __device__ __forceinline__ void frag(const Raw& r, int j, int t, u32 (&h)[4]) {
        const int hh = j >> 2, jj = j & 3;
        const u32 sc2 = (r.sc[2 * hh + (jj >> 1)] >> (16 * (jj & 1))) & 0xFFFFu;  // scale bytes 8hh + 2jj, + 1
        const float sc = (float)(signed char)((t >= 2 ? sc2 >> 8 : sc2) & 0xFFu);
        const u32 d2 = dq_half2_splat(__fmul_rn(f16_to_f32((u16)r.d), sc));
        const u32* lo = r.lo[2 * hh + (jj & 1)];
        const u32* hi = r.hi[hh];
        const int sl = 4 * (jj >> 1), sh = 2 * jj;
        const u32 v0 = ((lo[0] >> sl) & 0x0F0F0F0Fu) | (((hi[0] >> sh) & 0x03030303u) << 4);
        const u32 v1 = ((lo[1] >> sl) & 0x0F0F0F0Fu) | (((hi[1] >> sh) & 0x03030303u) << 4);
        dq_byte_pairs(v0, 0x64206420u, d2, 0u, h[0], h[1]);
        dq_byte_pairs(v1, 0x64206420u, d2, 0u, h[2], h[3]);
    }
};

// Tile <WM, MT, BN, P>: WM warps, each owning MT m16 row tiles (16 * MT rows: the tokens' B fragments are loaded once
// for all of them) and all BN tokens. P = 1: a group's weight bytes are loaded, then used; a block's activations just
// before its mmas. P = 2 (software pipeline, H100 2026-12-06: the P = 1 tiles stalled on their loads, at 21-23 %
// occupancy): the next group's weight bytes are loaded before this group's mmas, and the next block's activations
// before this block's. Per output the mma chain is the blocks in increasing K, each block's two k16 steps in order,
// whatever the tile: all direct tiles give the same bits.
template <class Q, int MT>
__device__ __forceinline__ void dq_group_load(typename dq_group<Q>::Raw (&raw)[MT][2], const u8* const (&wr)[MT][2],
                                              int grp, int t, int units) {
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
        for (int e = 0; e < 2; ++e) dq_group<Q>::load(wr[m][e], grp, t, units, raw[m][e]);
}

template <class Q, int NT>
__device__ __forceinline__ void dq_x_load(u32 (&b)[NT][4], const u16* const (&xr)[NT], int u, int t) {
#pragma unroll
    for (int h = 0; h < NT; ++h) dq_lane_x<dq_lane<Q>::X_SPLIT>(xr[h], u, t, b[h]);
}

template <class Q, int MT, int NT>
__device__ __forceinline__ void dq_block_mmas(float (&acc)[MT][NT][4], const typename dq_group<Q>::Raw (&raw)[MT][2],
                                              const u32 (&b)[NT][4], int j, int t) {
#pragma unroll
    for (int m = 0; m < MT; ++m) {
        u32 a[4], a8[4];
        dq_group<Q>::frag(raw[m][0], j, t, a);
        dq_group<Q>::frag(raw[m][1], j, t, a8);
        const u32 f0[4] = {a[0], a8[0], a[1], a8[1]};
        const u32 f1[4] = {a[2], a8[2], a[3], a8[3]};
#pragma unroll
        for (int h = 0; h < NT; ++h) {
            dq_mma16816(acc[m][h], f0, b[h][0], b[h][1]);
            dq_mma16816(acc[m][h], f1, b[h][2], b[h][3]);
        }
    }
}

template <class Q, int WM, int MT, int BN, int P>
__device__ __forceinline__ void dq_direct_kernel(const u8* __restrict__ w, i64 row_bytes, int rows, int units,
                                                 const u16* __restrict__ x16, const float* __restrict__ inv, int n,
                                                 float* __restrict__ y, int slices, float* __restrict__ part,
                                                 int* __restrict__ counters) {
    using G = dq_group<Q>;
    constexpr int BM = 16 * MT * WM, THREADS = 32 * WM, NT = BN / 8, B = G::BLOCKS;
    static_assert(P == 1 || P == 2, "pipeline depth 1 or 2");
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int row0 = blockIdx.x * BM, tok0 = blockIdx.y * BN;
    const int2 k_slice = split_k_bounds(units, slices, blockIdx.z);
    const int u_lo = k_slice.x, u_hi = k_slice.y;
    const size_t k_all = (size_t)units * 32;
    // rows and tokens past the end read the last valid one (their outputs are never stored; an mma output element
    // depends on its own row and column only)
    const u8* wr[MT][2];
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int e = 0; e < 2; ++e)
            wr[i][e] = w + (size_t)min(row0 + 16 * (MT * warp + i) + 8 * e + g, rows - 1) * row_bytes;
    const u16* xr[NT];
#pragma unroll
    for (int h = 0; h < NT; ++h) xr[h] = x16 + (size_t)min(tok0 + 8 * h + g, n - 1) * k_all;

    float acc[MT][NT][4];
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int h = 0; h < NT; ++h)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][h][e] = 0.0f;

    const int g_lo = u_lo / B, g_hi = (u_hi - 1) / B + 1;
    typename G::Raw raw[MT][2];
    u32 bx[NT][4];
    if (P == 2) {
        dq_group_load<Q, MT>(raw, wr, g_lo, t, units);
        dq_x_load<Q, NT>(bx, xr, u_lo, t);
    }
    for (int grp = g_lo; grp < g_hi; ++grp) {
        typename G::Raw next[MT][2];
        if (P == 2) dq_group_load<Q, MT>(next, wr, min(grp + 1, g_hi - 1), t, units);  // in flight meanwhile
        else dq_group_load<Q, MT>(raw, wr, grp, t, units);
#pragma unroll
        for (int j = 0; j < B; ++j) {
            const int u = grp * B + j;
            if (u < u_lo || u >= u_hi) continue;  // block-uniform: a slice may start or end inside a group
            if (P == 2) {
                u32 bn[NT][4];
                dq_x_load<Q, NT>(bn, xr, min(u + 1, u_hi - 1), t);
                dq_block_mmas<Q, MT, NT>(acc, raw, bx, j, t);
#pragma unroll
                for (int h = 0; h < NT; ++h)
#pragma unroll
                    for (int e = 0; e < 4; ++e) bx[h][e] = bn[h][e];
            } else {
                dq_x_load<Q, NT>(bx, xr, u, t);
                dq_block_mmas<Q, MT, NT>(acc, raw, bx, j, t);
            }
        }
        if (P == 2)
#pragma unroll
            for (int m = 0; m < MT; ++m)
#pragma unroll
                for (int e = 0; e < 2; ++e) raw[m][e] = next[m][e];
    }

    float* __restrict__ dst = slices == 1 ? y : part + (size_t)blockIdx.z * n * rows;
#pragma unroll
    for (int m = 0; m < MT; ++m) dq_store_m16<NT>(acc[m], dst, inv, row0 + 16 * (MT * warp + m) + g, tok0, t, rows, n);
    if (slices > 1) mmq_last_slice_sums<BM, BN, THREADS>(part, slices, rows, n, row0, tok0, y, counters);
}

#define DQ_PARAMS const u8 *w, i64 row_bytes, int rows, int units, const u16 *x16, const float *inv, int n, float *y, \
                  int slices, float *part, int *counters
#define DQ_ENTRY(name, Q, WM, MT, BN, KB, PF, BLOCKS)                                                           \
    extern "C" __global__ void __launch_bounds__(32 * WM, BLOCKS)                                              \
        dq_mma_##name##_w##WM##_m##MT##_bn##BN##_kb##KB##_pf##PF(DQ_PARAMS) {                                  \
        grid_dependency_enter();                                                                               \
        dq_mma_kernel<Q, WM, MT, BN, KB, PF>(w, row_bytes, rows, units, x16, inv, n, y, slices, part, counters); \
    }
// kernels/dq_mma.py TILES mirrors this list: (warps, m16 tiles a warp, tokens, 32-value blocks a stage, L2 prefetch
// distance in stages (0: none), resident blocks an SM ptxas must allow)
#define DQ_TILES(name, Q)                                                                                       \
    DQ_ENTRY(name, Q, 4, 1, 8, 4, 0, 4) DQ_ENTRY(name, Q, 4, 1, 16, 4, 0, 4) DQ_ENTRY(name, Q, 4, 1, 32, 4, 0, 4) \
    DQ_ENTRY(name, Q, 4, 2, 16, 4, 0, 2) DQ_ENTRY(name, Q, 4, 2, 32, 4, 0, 2) DQ_ENTRY(name, Q, 4, 1, 16, 8, 0, 2) \
    DQ_ENTRY(name, Q, 8, 1, 32, 4, 0, 2) DQ_ENTRY(name, Q, 4, 1, 8, 4, 1, 4) DQ_ENTRY(name, Q, 4, 1, 16, 4, 1, 4) \
    DQ_ENTRY(name, Q, 4, 1, 32, 4, 1, 4) DQ_ENTRY(name, Q, 4, 1, 32, 4, 2, 4)

#define DQ_DIRECT_ENTRY(name, Q, WM, MT, BN, P, BLOCKS)                                                      \
    extern "C" __global__ void __launch_bounds__(32 * WM, BLOCKS)                                              \
        dq_mma_##name##_direct_w##WM##_m##MT##_bn##BN##_p##P(DQ_PARAMS) {                                      \
        grid_dependency_enter();                                                                               \
        dq_direct_kernel<Q, WM, MT, BN, P>(w, row_bytes, rows, units, x16, inv, n, y, slices, part, counters); \
    }
// kernels/dq_mma.py TILES mirrors this list too: (warps, m16 tiles a warp, tokens, pipeline depth, resident blocks an
// SM ptxas must allow)
#define DQ_DIRECT_TILES(name, Q)                                                                                  \
    DQ_DIRECT_ENTRY(name, Q, 4, 1, 8, 1, 4) DQ_DIRECT_ENTRY(name, Q, 4, 2, 8, 1, 4)                               \
    DQ_DIRECT_ENTRY(name, Q, 4, 2, 16, 1, 3) DQ_DIRECT_ENTRY(name, Q, 4, 1, 32, 1, 3)                             \
    DQ_DIRECT_ENTRY(name, Q, 4, 4, 32, 1, 2) DQ_DIRECT_ENTRY(name, Q, 4, 1, 8, 2, 4)                              \
    DQ_DIRECT_ENTRY(name, Q, 4, 2, 8, 2, 2) DQ_DIRECT_ENTRY(name, Q, 4, 1, 16, 2, 3)                              \
    DQ_DIRECT_ENTRY(name, Q, 4, 2, 16, 2, 2) DQ_DIRECT_ENTRY(name, Q, 4, 1, 32, 2, 2)

DQ_TILES(q8_0, mq_q8_0)
DQ_TILES(q4_0, mq_q4_0)
DQ_TILES(q4_k, mq_qk<false>)
DQ_TILES(q5_k, mq_qk<true>)
DQ_TILES(q6_k, mq_q6_k)
DQ_DIRECT_TILES(q8_0, mq_q8_0)
DQ_DIRECT_TILES(q4_0, mq_q4_0)
DQ_DIRECT_TILES(q4_k, mq_qk<false>)
DQ_DIRECT_TILES(q5_k, mq_qk<true>)
DQ_DIRECT_TILES(q6_k, mq_q6_k)
