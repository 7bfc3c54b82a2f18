// Decode-MMQ: y[n, r] = sum_k W[r, k] * x[n, k] for a batch of N tokens, with the activations quantized to Q8_1
// (kernels/cuda/quantize_q8_1.cu) and the 32-value integer dot products done on int8 tensor cores
// (PTX mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32; plain sm_90, no sm_90a feature).
//
// Weight types: Q8_0 (codes used as they are) and Q4_0 (nibble - 8, so the codes are signed int8 in [-8, 7] and
// the Q8_1 block sums are not needed): 32-value blocks whose value is d_w * code exactly. Q6_K: each 32-value
// block has two 16-value halves with their own int8 scale (d_w = d * sc_half, code = q - 32 in [-32, 31]); the
// halves are two m16n8k16 products, each scaled on its own. Q4_K and Q5_K: each 32-value
// sub-block is a "block" with value d_w * code - m_w (d_w = d * sc, m_w = dmin * m, code = 0..15 / 0..31);
// its offset term needs the sum of the activations, taken as d_x * xs with xs the EXACT integer sum of the 32
// Q8_1 codes (dp4a at staging time), not the Q8_1 block's stored fp16 s (llama.cpp uses s, the sum of the
// unquantized values): so the result is the product with the Q8_1-dequantized activations up to float32
// rounding, for Q4_K as for the others.
//
// Tile variants (template <WM, BN, KB>): BM = 16 * WM weight rows x BN tokens per thread block, WM warps; warp w
// owns rows 16w .. 16w + 15 of the tile and all BN tokens (BN / 8 m16n8k32 tiles). Entries are compiled for
// WM in {2, 4} (BM 32 / 64), BN in {8, 16, 32} (bn 8: half the per-block float work of bn 16 when N <= 8) and
// KB in {4, 8, 16}; kernels/mmq.py picks one per launch (TILE_RULES). K is walked in
// stages of MMQ_KB blocks (4: 128 values): the stage's weight codes (int8, unpacked from the GGUF block), the
// activation codes (Q8_1 qs) and both sets of scales (fp16 -> float32) are staged in shared memory, then each
// warp runs, per 32-value block, one A fragment against BN / 8 B fragments. Rows past `rows`, tokens past `n` and
// blocks past `units` are staged as code 0 / scale 0 and never stored; blocks past `units` are not even visited.
//
// Split K (grid.z = slices, chosen by kernels/mmq.py from the matrix SHAPE only, never from N or the tile): slice z
// walks blocks [floor(z * units / slices), floor((z + 1) * units / slices)) as below and, when slices > 1, stores its
// acc_z into part[z]; the last slice block of each tile to finish then adds y = ((acc_0 + acc_1) + acc_2) + ... in
// slice order (__fadd_rn; mmq_last_slice_sums).
// More thread blocks for matrices with few rows or long rows (3840 x 15360: 120 row tiles on 132 SMs), whose walk
// over K is otherwise one latency-bound stage after another.
//
// Reduction order (per output (r, n) and slice; it depends on nothing but the bytes of W row r, Q8_1 row n and the
// shape, through the slice bounds):
//   acc = +0
//   for b = slice start, ..., slice end - 1 (increasing):
//       isum  = sum_{i<32} wq[r, 32b + i] * xq[n, 32b + i]        int32 from the mma, EXACT (|isum| <= 32*127*127)
//       scale = __fmul_rn(d_w[r, b], d_x[n, b])                   float32, one rounding
//       term  = __fmul_rn((float)isum, scale)                     (float)isum is exact (< 2^24)
//       (Q4_K, Q5_K:  term = __fmaf_rn(-m_w[r, b], sx[n, b], term), sx = xs * d_x[n, b] EXACT (a 12-bit integer
//                     times an fp16): the offset product is not rounded on its own)
//       (Q6_K: isum_lo, isum_hi over the block's two 16-value halves;
//              term = __fmaf_rn((float)isum_lo, __fmul_rn(d_lo[r, b], d_x[n, b]),
//                               __fmul_rn((float)isum_hi, __fmul_rn(d_hi[r, b], d_x[n, b]))) )
//       acc   = __fadd_rn(acc, term)
//   y[n, r] = acc (one slice), else part[z][n, r] = acc and y[n, r] = the slice-ordered sum above
// d_w is the block's fp16 d, d_x the Q8_1 block's fp16 d (both widened exactly). Each fused multiply-add is spelled
// __fmaf_rn (one rounding) and every other operation is an _rn intrinsic (no contraction), no atomics, K split only by
// shape: the result is deterministic, independent of N, of
// the tile geometry and of the token's position in the batch, and tests/test_kernels_mmq_gpu.py reproduces it
// BITWISE with numpy float32 arithmetic (and an exactly rounded fma).
// The fused forms (since 2026-11-25, sixth session; before: separately rounded offset products and a subtraction,
// and the Q6_K halves added to acc one after the other) take 4 instead of 7 float instructions per output and
// 32-value block for Q4_K / Q5_K and 7 instead of 8 for Q6_K in the mma tiles, and give the dp4a kernel one term per
// block for every type. It is NOT bitwise equal to the WS mat-vec (kernels/cuda/matvec.cu),
// which sums float32 products of dequantized weights and unquantized activations in another order; decode-MMQ is
// argmax-stable, not bitwise, with respect to WS (its error is the Q8_1 quantization of x, NMSE ~1e-5).
//
// mma m16n8k32 .s8 fragments (PTX ISA "Matrix Fragments for mma.m16n8k32"), g = lane >> 2, t = lane & 3:
//   A (16 x 32, row): a0 = row g,     k 4t..4t+3     a1 = row g + 8, k 4t..4t+3
//                     a2 = row g,     k 16+4t..+3    a3 = row g + 8, k 16+4t..+3      (4 int8 per register)
//   B (32 x 8, col):  b0 = token g,   k 4t..4t+3     b1 = token g,   k 16+4t..+3
//   C (16 x 8):       c0, c1 = row g, tokens 2t, 2t+1;  c2, c3 = row g + 8, tokens 2t, 2t+1
// so every fragment register is one aligned 32-bit word of a staged code row. Code rows are MMQ_LDS = 36 words
// (32 data + 4 pad) apart: a fragment load touches word 36 * row + 8b + t, i.e. bank (4 * row + 8b + t) mod 32,
// distinct for the 8 rows x 4 t of a warp: conflict-free.
//
// d_w of Q6_K is d * sc (11 + 8 bits: exact), like Q4_K's d * sc. The tile geometry never enters the arithmetic,
// so every tile variant gives the same bits.
//
// Entry points (<t> in q8_0 q4_0 q4_k q5_k q6_k; tile bm32_bn16, bm32_bn32, bm64_bn16, bm64_bn32, bm64_bn8 with
// 4-block stages, bm32_bn16_kb16, bm64_bn16_kb8 and bm32_bn8_kb16 with deeper ones), all with
//     mmq_<t>_<tile>(const u8* w, i64 row_bytes, int rows, int units, const u8* xq, int n, float* y,
//                    int slices, float* part, int* counters)
//   w [rows, row_bytes] GGUF rows, 16-byte aligned (Q4_K / Q5_K are read with 16-byte loads; Q8_0 / Q4_0 / Q6_K
//   in u16 pieces); units = K / 32;
//   xq [n, units * 36] Q8_1 blocks (4-byte aligned, rows contiguous); y [n, rows] float32.
//   part [slices, n, rows] float32 scratch and counters [grid.x * grid.y] int32, ZERO on entry and left zero
//   (unused when slices == 1; launches sharing counters must be stream-ordered);
//   grid (ceil(rows / BM), ceil(n / BN), slices), block 32 * WM; kernels/mmq.py mirrors the tile list (TILES).
#include "mmq_blocks.cuh"  // the weight-block decoders (stage), mmq_ld16, mmq_byte_sum, Q8_1_BYTES
#include "split_k.cuh"     // mmq_last_slice_sums

// KB (template): 32-value blocks per shared-memory stage (4 in the first tiles; 8 and 16 in the deeper ones, which
// walk K in a quarter / half the stages: fewer barriers and more loads in flight per thread). Staged code rows
// are LDS = 8 * KB + 4 words (32 * KB int8 codes + 16 bytes of padding); LDS mod 32 = 4 for every KB, which keeps
// the fragment loads below conflict-free.

__device__ __forceinline__ void mmq_mma32(const u32 (&a)[4], u32 b0, u32 b1, int (&c)[4]) {
    asm("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%10, %10, %10, %10};"
        : "=r"(c[0]), "=r"(c[1]), "=r"(c[2]), "=r"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "r"(0));
}

// m16n8k16 .s8: A a0 = row g, k 4t..4t+3; a1 = row g + 8, same k; B b0 = token g, k 4t..4t+3; C as m16n8k32.
// Its fragments are the first (k 0..15) or second (k 16..31) halves of the m16n8k32 ones.
__device__ __forceinline__ void mmq_mma16(u32 a0, u32 a1, u32 b0, int (&c)[4]) {
    asm("mma.sync.aligned.m16n8k16.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5}, {%6}, {%7, %7, %7, %7};"
        : "=r"(c[0]), "=r"(c[1]), "=r"(c[2]), "=r"(c[3])
        : "r"(a0), "r"(a1), "r"(b0), "r"(0));
}

// A block's float term (the header's reduction order; the caller adds it to its sum with __fadd_rn). (float)isum is
// exact (|isum| < 2^24).
//   mmq_term:        isum * (d_w * d_x), two roundings
__device__ __forceinline__ float mmq_term(int isum, float dw, float dx) {
    return __fmul_rn((float)isum, __fmul_rn(dw, dx));
}
//   mmq_term_min:    fma(-m_w, sx, isum * (d_w * d_x)): the offset product m_w * sx is not rounded on its own
//                    (sx = xs * d_x is exact), three roundings in all
__device__ __forceinline__ float mmq_term_min(int isum, float dw, float dx, float mw, float sx) {
    return __fmaf_rn(-mw, sx, mmq_term(isum, dw, dx));
}
//   mmq_term_halves: fma(lo, d_lo * d_x, hi * (d_hi * d_x)) over a Q6_K block's two 16-value halves
__device__ __forceinline__ float mmq_term_halves(int lo, int hi, float dlo, float dhi, float dx) {
    return __fmaf_rn((float)lo, __fmul_rn(dlo, dx), mmq_term(hi, dhi, dx));
}


template <class Q, int WM, int BN, int KB>
__device__ __forceinline__ void mmq_kernel(const u8* __restrict__ w, i64 row_bytes, int rows, int units,
                                           const u8* __restrict__ xq, int n, float* __restrict__ y, int slices,
                                           float* __restrict__ part, int* __restrict__ counters, int bx) {
    constexpr int BM = 16 * WM, THREADS = 32 * WM, NT = BN / 8;  // NT: n8 tiles per warp
    constexpr int MMQ_KB = KB, MMQ_LDS = 8 * KB + 4;
    __shared__ u32 s_wq[BM * MMQ_LDS];
    __shared__ float s_wd[Q::HALVES * MMQ_KB * BM];
    __shared__ u32 s_xq[BN * MMQ_LDS];
    __shared__ __align__(8) float s_xd[MMQ_KB * BN];  // read as float2 pairs (tokens 2t, 2t + 1)
    __shared__ float s_wm[Q::HAS_MIN ? MMQ_KB * BM : 1];  // offsets m (HAS_MIN types only)
    __shared__ __align__(8) float s_sx[Q::HAS_MIN ? MMQ_KB * BN : 1];  // sx = xs * d_x, exact (HAS_MIN types only)

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int row0 = bx * BM, tok0 = blockIdx.y * BN;
    const size_t xrow_bytes = (size_t)units * Q8_1_BYTES;
    // K slice of this block (grid.z): blocks [u_lo, u_hi), the same bounds for every tile and every N
    const int2 k_slice = split_k_bounds(units, slices, blockIdx.z);
    const int u_lo = k_slice.x, u_hi = k_slice.y;

    float acc[NT][4];
#pragma unroll
    for (int h = 0; h < NT; ++h)
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[h][i] = 0.0f;

    for (int b0 = u_lo; b0 < u_hi; b0 += MMQ_KB) {
        // ---- stage MMQ_KB blocks of the BM weight rows ----
        // A block's codes, scale(s) and offset into the stage (rows past `rows`, blocks past the slice: zeros).
        auto put = [&](int r, int kb, const u32 (&q)[8], const float (&d)[2], float m) {
            uint4* dst = (uint4*)(s_wq + r * MMQ_LDS + 8 * kb);  // 16-byte aligned: MMQ_LDS and 8 are x4 words
            dst[0] = make_uint4(q[0], q[1], q[2], q[3]);
            dst[1] = make_uint4(q[4], q[5], q[6], q[7]);
#pragma unroll
            for (int hf = 0; hf < Q::HALVES; ++hf) s_wd[(hf * MMQ_KB + kb) * BM + r] = d[hf];
            if (Q::HAS_MIN) s_wm[kb * BM + r] = m;
        };
        bool paired = false;
        if constexpr (Q::TILE_PAIR) paired = ((b0 | units) & 1) == 0;  // block-uniform: b0 even, and u + 1 inside the row
        if (paired) {
            // thread -> (row, blocks kb, kb + 1), Q4_K only (TILE_PAIR): the Pair reads the bytes the two
            // sub-blocks share once (the super-block head and the 32 qs bytes whose low and high nibbles are the two
            // blocks), where stage() reads them once a block. The same codes, scales and offsets land in the same
            // places: the same bits. Measured (H100 A/B, 2026-12-07): Q4_K mma tiles 1 % faster per matmul (the
            // whole step 1-3 % at N = 4-32); Q4_0 pairs were 2-23 % slower, so Q4_0 keeps stage().
            if constexpr (Q::TILE_PAIR) {
#pragma unroll
                for (int i = 0; i < BM * MMQ_KB / 2 / THREADS; ++i) {
                    const int task = tid + i * THREADS;
                    const int r = task / (MMQ_KB / 2), kb = 2 * (task % (MMQ_KB / 2));
                    typename Q::Pair pr{};
                    const bool in = row0 + r < rows && b0 + kb < u_hi;
                    if (in) pr.load(w + (size_t)(row0 + r) * row_bytes, b0 + kb);
#pragma unroll
                    for (int b = 0; b < 2; ++b) {
                        const bool live = in && b0 + kb + b < u_hi;  // u_hi may be odd: then the last pair's second is out
                        u32 q[8];
#pragma unroll
                        for (int k = 0; k < 8; ++k) q[k] = live ? pr.code(b, k) : 0u;
                        const float d[2] = {live ? pr.d[b] : 0.0f, 0.0f};
                        put(r, kb + b, q, d, live ? pr.m[b] : 0.0f);
                    }
                }
            }
        } else {
            // thread -> (row, block), neighbours read one row
#pragma unroll
            for (int i = 0; i < BM * MMQ_KB / THREADS; ++i) {
                const int task = tid + i * THREADS;
                const int r = task / MMQ_KB, kb = task % MMQ_KB;
                u32 q[8];
                float d[2], m;
                mmq_stage_or_zero<Q>(w, row_bytes, row0 + r, rows, b0 + kb, u_hi, q, d, m);
                put(r, kb, q, d, m);
            }
        }
        // ---- stage MMQ_KB Q8_1 blocks of the BN tokens ----
        for (int task = tid; task < BN * MMQ_KB; task += THREADS) {
            const int j = task / MMQ_KB, kb = task % MMQ_KB;
            uint4 lo = make_uint4(0u, 0u, 0u, 0u), hi = lo;
            float d = 0.0f;
            if (tok0 + j < n && b0 + kb < u_hi) {
                const u32* p = (const u32*)(xq + (size_t)(tok0 + j) * xrow_bytes + (size_t)(b0 + kb) * Q8_1_BYTES);
                d = f16_to_f32((u16)(__ldg(p) & 0xFFFFu));
                lo = make_uint4(__ldg(p + 1), __ldg(p + 2), __ldg(p + 3), __ldg(p + 4));
                hi = make_uint4(__ldg(p + 5), __ldg(p + 6), __ldg(p + 7), __ldg(p + 8));
            }
            uint4* dst = (uint4*)(s_xq + j * MMQ_LDS + 8 * kb);
            dst[0] = lo;
            dst[1] = hi;
            s_xd[kb * BN + j] = d;
            if (Q::HAS_MIN) {
                int xs = 0;  // exact: |xs| <= 32 * 127
                xs = mmq_byte_sum(lo.x, xs); xs = mmq_byte_sum(lo.y, xs); xs = mmq_byte_sum(lo.z, xs);
                xs = mmq_byte_sum(lo.w, xs); xs = mmq_byte_sum(hi.x, xs); xs = mmq_byte_sum(hi.y, xs);
                xs = mmq_byte_sum(hi.z, xs); xs = mmq_byte_sum(hi.w, xs);
                s_sx[kb * BN + j] = __fmul_rn((float)xs, d);  // exact: 12-bit integer x 11-bit fp16
            }
        }
        __syncthreads();

        // ---- per block: one A fragment x NT B fragments, then the float32 scale-and-add ----
        const int kbs = min(MMQ_KB, u_hi - b0);
        const int ra = warp * 16 + g;  // this lane's rows in the tile: ra and ra + 8
#pragma unroll
        for (int kb = 0; kb < MMQ_KB; ++kb) {
            if (kb >= kbs) break;  // block-uniform
            const u32 a[4] = {s_wq[ra * MMQ_LDS + 8 * kb + t], s_wq[(ra + 8) * MMQ_LDS + 8 * kb + t],
                              s_wq[ra * MMQ_LDS + 8 * kb + 4 + t], s_wq[(ra + 8) * MMQ_LDS + 8 * kb + 4 + t]};
            const float dw0 = s_wd[kb * BM + ra], dw1 = s_wd[kb * BM + ra + 8];
            const float dh0 = Q::HALVES == 2 ? s_wd[(MMQ_KB + kb) * BM + ra] : 0.0f;
            const float dh1 = Q::HALVES == 2 ? s_wd[(MMQ_KB + kb) * BM + ra + 8] : 0.0f;
            const float wm0 = Q::HAS_MIN ? s_wm[kb * BM + ra] : 0.0f, wm1 = Q::HAS_MIN ? s_wm[kb * BM + ra + 8] : 0.0f;
#pragma unroll
            for (int h = 0; h < NT; ++h) {
                const int jb = 8 * h + g;  // B fragment token of this lane
                const u32 b0w = s_xq[jb * MMQ_LDS + 8 * kb + t], b1w = s_xq[jb * MMQ_LDS + 8 * kb + 4 + t];
                // tokens 2t, 2t + 1 of this n8 tile: adjacent floats, 8-byte aligned (BN and 8h + 2t are even)
                const float2 dx = *(const float2*)&s_xd[kb * BN + 8 * h + 2 * t];
                if (Q::HALVES == 2) {
                    int c[4], e[4];
                    mmq_mma16(a[0], a[1], b0w, c);  // k 0..15
                    mmq_mma16(a[2], a[3], b1w, e);  // k 16..31
                    acc[h][0] = __fadd_rn(acc[h][0], mmq_term_halves(c[0], e[0], dw0, dh0, dx.x));
                    acc[h][1] = __fadd_rn(acc[h][1], mmq_term_halves(c[1], e[1], dw0, dh0, dx.y));
                    acc[h][2] = __fadd_rn(acc[h][2], mmq_term_halves(c[2], e[2], dw1, dh1, dx.x));
                    acc[h][3] = __fadd_rn(acc[h][3], mmq_term_halves(c[3], e[3], dw1, dh1, dx.y));
                } else if (!Q::HAS_MIN) {
                    int c[4];
                    mmq_mma32(a, b0w, b1w, c);
                    acc[h][0] = __fadd_rn(acc[h][0], mmq_term(c[0], dw0, dx.x));
                    acc[h][1] = __fadd_rn(acc[h][1], mmq_term(c[1], dw0, dx.y));
                    acc[h][2] = __fadd_rn(acc[h][2], mmq_term(c[2], dw1, dx.x));
                    acc[h][3] = __fadd_rn(acc[h][3], mmq_term(c[3], dw1, dx.y));
                } else {
                    int c[4];
                    mmq_mma32(a, b0w, b1w, c);
                    const float2 sx = *(const float2*)&s_sx[kb * BN + 8 * h + 2 * t];
                    acc[h][0] = __fadd_rn(acc[h][0], mmq_term_min(c[0], dw0, dx.x, wm0, sx.x));
                    acc[h][1] = __fadd_rn(acc[h][1], mmq_term_min(c[1], dw0, dx.y, wm0, sx.y));
                    acc[h][2] = __fadd_rn(acc[h][2], mmq_term_min(c[2], dw1, dx.x, wm1, sx.x));
                    acc[h][3] = __fadd_rn(acc[h][3], mmq_term_min(c[3], dw1, dx.y, wm1, sx.y));
                }
            }
        }
        __syncthreads();
    }

    // ---- store: c layout -> y[token, row] (split K: this slice's partial sums, added below) ----
    float* __restrict__ dst = slices == 1 ? y : part + (size_t)blockIdx.z * n * rows;
    const int r_lo = row0 + warp * 16 + g, r_hi = r_lo + 8;
#pragma unroll
    for (int h = 0; h < NT; ++h) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            const int j = tok0 + 8 * h + 2 * t + e;
            if (j < n) {
                if (r_lo < rows) dst[(size_t)j * rows + r_lo] = acc[h][e];
                if (r_hi < rows) dst[(size_t)j * rows + r_hi] = acc[h][2 + e];
            }
        }
    }
    if (slices > 1) mmq_last_slice_sums<BM, BN, THREADS>(part, slices, rows, n, row0, tok0, y, counters);
}

// ---- Small-N decode-MMQ on dp4a: the same outputs as the mma tiles, bit for bit -------------------------------
// At N <= 4 the mma tiles spend ~7 warp-instructions per 32-value block and row (ncu, Q4_K 15360x3840, N = 1): the
// shared-memory staging, the fragment loads and a float scale-and-add for 8 token columns of which N are real. This
// kernel does the same per-output arithmetic with the integer dots on dp4a and no staging:
//   * term phase: a lane takes one 32-value block u of one row (lane = (rsub, uc): CW consecutive blocks of
//     32 / CW rows at a time, so a warp's weight loads are contiguous runs of each row) and computes, for each of
//     the BN tokens, the block's float term exactly as the mma tiles do (isum by dp4a is the same exact int32;
//     then the same _rn products and fused multiply-add), into shared memory;
//   * sum phase: lane L < RW * BN owns output (row L / BN, token L % BN) of the warp's RW rows and adds its terms in
//     block order with __fadd_rn, chunk after chunk: the chain
//     acc = ((0 + t_lo) + t_lo+1) + ... over the slice, as in the header.
// The activations of a chunk (8 code words, d_x and, for HAS_MIN types, sx = d_x * the exact code sum) are loaded into
// registers once per chunk and reused for every row of the warp. K slices, partial sums and the last-slice sums are
// those of the mma tiles (same bounds from the shape, same mmq_last_slice_sums), so a dp4a launch and an mma
// launch give the same bits at every N: the router may mix them per N without breaking batch invariance.
// UR: rows of a lane whose weight loads are issued together: 2. Measured on the H100 (route tuning, 12B shapes, N = 1..8):
// UR 4 (80..95 registers) was 0.95..1.4x slower, and a full unroll let ptxas hoist every row's loads (128..168
// registers, Q6_K spills).
// BN: tokens per thread block (1, 2, 4); CW: blocks per chunk (8 or 32: kernels/mmq.py picks the one that wastes
// fewer lanes on the shape's slice length).
// P: blocks per lane, 1 or 2 (the _p2 entries, BN = 1, types with a Pair: Q4_0, Q4_K). With P = 2 a lane
// takes blocks u, u + 1 of a row and reads their bytes once (Q4_K: the two sub-blocks share the head and the 32 qs
// bytes; Q4_0: 36 contiguous bytes), so a row needs CW / 2 lanes and each load group covers twice the rows:
// half the dependent memory round trips per warp. kernels/mmq.py uses it only where every K-slice bound is even
// (u stays even) and the chunk is 32 blocks. Each term is computed as with P = 1 and lands in the same place: the same bits. The pair's bytes
// stay raw in registers until each code word is used, which keeps the paired entries at 64 registers.
// 4 warps of RW = MMQ_DP4A_ROWS(BN) rows each: BM = 4 * RW rows per thread block.
#define MMQ_DP4A_WARPS 4
// Rows per warp: 16 (8 for BN 4). Fewer rows than the 32 / BN accumulators a warp could hold, so that a launch has
// more warps to spread its loads over (measured, Q4_K 15360 x 3840 at N = 1: 32 rows a warp 24.3 us, 16 rows 19.4).
#define MMQ_DP4A_ROWS(BN) ((BN) >= 4 ? 8 : 16)
// Resident blocks per SM ptxas must allow: 8 (64 registers a thread, 32 warps an SM to keep loads in flight); 5 for
// BN 4, whose K-quant entries spill at 64 registers (Q5_K still at 80).
#define MMQ_DP4A_MIN_BLOCKS(BN) ((BN) >= 4 ? 5 : 8)

__device__ __forceinline__ int mmq_dp4a(u32 a, u32 b, int c) {
    int r;
    asm("dp4a.s32.s32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(c));
    return r;
}

template <class Q, int BN, int CW, int P>
__device__ __forceinline__ void mmq_dp4a_kernel(const u8* __restrict__ w, i64 row_bytes, int rows, int units,
                                                const u8* __restrict__ xq, int n, float* __restrict__ y, int slices,
                                                float* __restrict__ part, int* __restrict__ counters, int bx) {
    constexpr int H = Q::HALVES;
    constexpr int RW = MMQ_DP4A_ROWS(BN);        // rows per warp: RW * BN accumulators, one per lane
    constexpr int LPR = CW / P;                  // lanes per row in the term phase
    constexpr int RPI = 32 / LPR;                // rows per term iteration
    constexpr int ITERS = RW / RPI;              // term iterations per chunk (= RW * LPR / 32 >= 2)
    constexpr int UR = 2;                        // rows of a lane whose weight loads are issued together
    constexpr int S = CW + 1;                    // floats per accumulator's term row (odd: conflict-free sums)
    constexpr int BM = MMQ_DP4A_WARPS * RW, THREADS = 32 * MMQ_DP4A_WARPS;
    static_assert(ITERS % UR == 0, "term iterations must be a multiple of the load group");
    static_assert(P == 1 || (P == 2 && Q::PAIR), "P = 2 needs the type's Pair");
    __shared__ float s_term[MMQ_DP4A_WARPS][RW * BN * S];

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int uc = lane % LPR, rsub = lane / LPR;
    const int row0 = bx * BM, wrow0 = row0 + warp * RW, tok0 = blockIdx.y * BN;
    const size_t xrow_bytes = (size_t)units * Q8_1_BYTES;
    const int2 k_slice = split_k_bounds(units, slices, blockIdx.z);
    const int u_lo = k_slice.x, u_hi = k_slice.y;
    float* terms = s_term[warp];

    float acc = 0.0f;
    for (int c0 = u_lo; c0 < u_hi; c0 += CW) {
        // this lane's blocks u .. u + P - 1; P = 2 only when every slice bound is even (kernels/mmq.py), so u is
        // even and u + 1 < u_hi whenever u < u_hi
        const int u = c0 + P * uc;
        const bool live = u < u_hi;
        // ---- this lane's activation blocks of the BN tokens (zero past n and past the slice) ----
        u32 xw[BN][P][8];
        float dx[BN][P];
        float sx[BN][P];  // HAS_MIN: xs * d_x, xs the exact sum of the block's codes (the product is exact)
#pragma unroll
        for (int j = 0; j < BN; ++j) {
#pragma unroll
            for (int b = 0; b < P; ++b) {
                dx[j][b] = 0.0f;
                sx[j][b] = 0.0f;
#pragma unroll
                for (int k = 0; k < 8; ++k) xw[j][b][k] = 0u;
                if (live && tok0 + j < n) {
                    const u32* p = (const u32*)(xq + (size_t)(tok0 + j) * xrow_bytes + (size_t)(u + b) * Q8_1_BYTES);
                    dx[j][b] = f16_to_f32((u16)(__ldg(p) & 0xFFFFu));
#pragma unroll
                    for (int k = 0; k < 8; ++k) xw[j][b][k] = __ldg(p + 1 + k);
                    if (Q::HAS_MIN) {
                        int s = 0;  // exact: |s| <= 32 * 127
#pragma unroll
                        for (int k = 0; k < 8; ++k) s = mmq_byte_sum(xw[j][b][k], s);
                        sx[j][b] = __fmul_rn((float)s, dx[j][b]);
                    }
                }
            }
        }
        // ---- term phase: rows rsub, rsub + RPI, ... of the warp, blocks u..; UR rows' loads in flight at a time ----
#pragma unroll 1
        for (int it0 = 0; it0 < ITERS; it0 += UR) {
            u32 q[UR][8];                // P = 1: the row's codes (stage)
            float d[UR][2], m[UR];
            typename Q::Pair pr[UR];     // P = 2: the row's two blocks, raw (Q::Pair)
#pragma unroll
            for (int i = 0; i < UR; ++i) {
                const int r = wrow0 + (it0 + i) * RPI + rsub;
                const bool in = live && r < rows;
                if constexpr (P == 2) {
                    if (in) pr[i].load(w + (size_t)r * row_bytes, u);  // else never summed nor stored
                } else {
                    d[i][0] = d[i][1] = m[i] = 0.0f;
#pragma unroll
                    for (int k = 0; k < 8; ++k) q[i][k] = 0u;
                    if (in) Q::stage(w + (size_t)r * row_bytes, u, q[i], d[i], m[i]);
                }
            }
#pragma unroll
            for (int i = 0; i < UR; ++i) {
#pragma unroll
                for (int b = 0; b < P; ++b) {
                    float* dst = terms + ((it0 + i) * RPI + rsub) * BN * S + P * uc + b;
                    float dw0, dw1, mw;
                    if constexpr (P == 2) {
                        dw0 = pr[i].d[b], dw1 = 0.0f, mw = pr[i].m[b];
                    } else {
                        dw0 = d[i][0], dw1 = d[i][1], mw = m[i];
                    }
#pragma unroll
                    for (int j = 0; j < BN; ++j) {
                        if (BN > 1 && tok0 + j >= n) break;  // block-uniform
                        if (H == 2) {
                            int lo = 0, hi = 0;
#pragma unroll
                            for (int k = 0; k < 4; ++k) {
                                lo = mmq_dp4a(q[i][k], xw[j][b][k], lo);
                                hi = mmq_dp4a(q[i][k + 4], xw[j][b][k + 4], hi);
                            }
                            dst[j * S] = mmq_term_halves(lo, hi, dw0, dw1, dx[j][b]);
                        } else {
                            int isum = 0;
#pragma unroll
                            for (int k = 0; k < 8; ++k) {
                                u32 code;
                                if constexpr (P == 2) code = pr[i].code(b, k);
                                else code = q[i][k];
                                isum = mmq_dp4a(code, xw[j][b][k], isum);
                            }
                            dst[j * S] = Q::HAS_MIN ? mmq_term_min(isum, dw0, dx[j][b], mw, sx[j][b])
                                                    : mmq_term(isum, dw0, dx[j][b]);
                        }
                    }
                }
            }
        }
        __syncwarp();
        // ---- sum phase: this lane's (row, token) adds its terms in block order ----
        if (lane < RW * BN) {
            const int cnt = min(CW, u_hi - c0);
            const float* mine = terms + lane * S;
            for (int k = 0; k < cnt; ++k) acc = __fadd_rn(acc, mine[k]);
        }
        __syncwarp();
    }

    // ---- store (split K: this slice's partial sums, added below as for the mma tiles) ----
    float* __restrict__ dst = slices == 1 ? y : part + (size_t)blockIdx.z * n * rows;
    const int r = wrow0 + lane / BN, j = tok0 + lane % BN;
    if (lane < RW * BN && r < rows && j < n) dst[(size_t)j * rows + r] = acc;
    if (slices > 1) mmq_last_slice_sums<BM, BN, THREADS>(part, slices, rows, n, row0, tok0, y, counters);
}

// Every entry serves a GROUP of 1..MMQ_GROUP_MAX weight matrices that read the same activations (q/k/v, gate/up):
// one launch instead of one per matrix, since at small N a launch's fixed cost (its first memory round trips and
// the last-slice sums) is a large part of a small matrix's time. The members share the type, K, the token tiles and
// the K split; grid.x is the concatenation of their row tiles (member 0: [0, tiles0), 1: [tiles0, tiles01), 2:
// [tiles01, ...)), and a block runs the member its blockIdx.x falls in, on its own row tile bx. Each output's
// arithmetic is the single-matrix launch's: a grouped launch gives the same bits. The split-K counters are indexed
// by the block's place in the whole grid, so they stay distinct.
#define MMQ_GROUP_MAX 3
#define MMQ_PARAMS const u8 *w0, const u8 *w1, const u8 *w2, i64 rb0, i64 rb1, i64 rb2, int rows0, int rows1,       \
                   int rows2, int tiles0, int tiles01, float *y0, float *y1, float *y2, float *part0, float *part1,  \
                   float *part2, int units, const u8 *xq, int n, int slices, int *counters
// the member of this block: its weights, row bytes, rows, output, partial sums and row tile (kernel parameters and
// block indices only: it may come before grid_dependency_enter())
#define MMQ_MEMBER                                                                                             \
    const int m_ = blockIdx.x < tiles0 ? 0 : blockIdx.x < tiles01 ? 1 : 2;                                     \
    const u8* w = m_ == 0 ? w0 : m_ == 1 ? w1 : w2;                                                            \
    const i64 row_bytes = m_ == 0 ? rb0 : m_ == 1 ? rb1 : rb2;                                                 \
    const int rows = m_ == 0 ? rows0 : m_ == 1 ? rows1 : rows2;                                                \
    float* y = m_ == 0 ? y0 : m_ == 1 ? y1 : y2;                                                               \
    float* part = m_ == 0 ? part0 : m_ == 1 ? part1 : part2;                                                   \
    const int bx = (int)blockIdx.x - (m_ == 0 ? 0 : m_ == 1 ? tiles0 : tiles01);
// Resident blocks an SM that ptxas must allow an mma tile: 8 for the 4-warp (bm64) tiles of 16 and 32 tokens, so at
// most 64 registers. Without the bound the run-time compiler (NVRTC, on the H100) gave Q4_0 bm64_bn32 79 registers
// and bm64_bn16 70 (ncu; the local nvcc build reports 56 and 48), i.e. 6 and 7 blocks an SM, and these tiles wait on
// shared-memory loads with too few warps to cover them. Measured (route tuning, N = 17..32, sixth session):
// bm64_bn32 10..20 % faster on every type (the Q6_K lm-head at N = 32 1017 -> 856 us), bm64_bn16 5..10 % on Q4_0.
// Not for Q6_K's bn 16 tiles: at 64 registers they spill (12 and 100 bytes) and were 3..10 % slower.
template <class Q, int WM, int BN>
struct mmq_min_blocks {
    static constexpr int value = WM == 4 && (BN == 32 || (BN == 16 && Q::HALVES == 1)) ? 8 : 0;  // 0: no bound (as a plain __launch_bounds__(32 * WM))
};
// The weight bytes this block will read, asked into L2 before grid_dependency_enter(): rows [row0, row0 + BM) of
// the member (those < rows), the K slice's blocks [u_lo, u_hi) of each, one cp.async.bulk.prefetch.L2 a row (row r
// by thread r; 16-byte aligned, whole 16-byte units inside the slice's bytes). Weights are never written while
// a step runs, so they may be touched before the wait; the block then waits (kernels/launch.py). Why: launched
// early (PDL), the blocks of a matmul sit through the short kernel before it (a norm of one block a token, the
// attention merge, the FFN activation), while DRAM idles; this streams the matrix into L2 during that time.
// Opt-in until a device A/B has measured it: kernels/_compile.py defines MMQ_L2_PREFETCH=1 only with
// GEMMA_ORACLE_MMQ_PREFETCH=1; without it the prologue is empty. (Useful only with PDL, GRID_DEPENDENCY=1.)
#ifndef MMQ_L2_PREFETCH
#define MMQ_L2_PREFETCH 0
#endif
template <int BM>
__device__ __forceinline__ void mmq_prefetch_weights_l2(const u8* w, i64 row_bytes, int rows, int units, int bx,
                                                        int slices) {
    if (!MMQ_L2_PREFETCH) return;
    const int r = bx * BM + (int)threadIdx.x;
    if (threadIdx.x >= BM || r >= rows) return;
    // split_k_bounds' slice and the slice's bytes of the row, by proportion (exact at block or super-block bounds;
    // a hint either way), in 32-bit arithmetic: split_k_bounds' 64-bit division is a called subroutine, and with it
    // here the 64-register tiles spilled (ptxas). Every product is far below 2^32: slices <= 64, units (blocks a
    // row) and row bytes below 2^16 for any K the engine takes.
    if ((unsigned long long)units * (unsigned long long)row_bytes >> 32) return;  // (no K the engine takes)
    const u32 cz = blockIdx.z;
    const u32 u_lo = cz * (u32)units / (u32)slices, u_hi = (cz + 1) * (u32)units / (u32)slices;
    const size_t row_start = (size_t)w + (size_t)r * row_bytes;
    const size_t lo = row_start + u_lo * (u32)row_bytes / (u32)units;
    const size_t hi = row_start + u_hi * (u32)row_bytes / (u32)units;
    const size_t a = (lo + 15) & ~(size_t)15, e = hi & ~(size_t)15;
    if (e > a) asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(a), "r"((u32)(e - a)) : "memory");
}
#define MMQ_ENTRY(name, Q, WM, BM, BN, KB, SUFFIX)                                                             \
    extern "C" __global__ void __launch_bounds__(32 * WM, (mmq_min_blocks<Q, WM, BN>::value))                \
        mmq_##name##_bm##BM##_bn##BN##SUFFIX(MMQ_PARAMS) {                                                   \
        MMQ_MEMBER                                                                                             \
        mmq_prefetch_weights_l2<BM>(w, row_bytes, rows, units, bx, slices);                                   \
        grid_dependency_enter();                                                                             \
        mmq_kernel<Q, WM, BN, KB>(w, row_bytes, rows, units, xq, n, y, slices, part, counters, bx);            \
    }
#define MMQ_TILES(name, Q)                                                                                     \
    MMQ_ENTRY(name, Q, 2, 32, 16, 4, ) MMQ_ENTRY(name, Q, 2, 32, 32, 4, ) MMQ_ENTRY(name, Q, 4, 64, 16, 4, )   \
    MMQ_ENTRY(name, Q, 4, 64, 32, 4, ) MMQ_ENTRY(name, Q, 2, 32, 16, 16, _kb16) MMQ_ENTRY(name, Q, 4, 64, 16, 8, _kb8) \
    MMQ_ENTRY(name, Q, 4, 64, 8, 4, ) MMQ_ENTRY(name, Q, 2, 32, 8, 16, _kb16)
// dp4a entries mmq_<t>_dp4a_bn<BN>_cw<CW>: kernels/mmq.py's dp4a tiles and DP4A_CHUNKS mirror BN and CW.
#define MMQ_DP4A_ENTRY(name, Q, BN, CW, P, SUFFIX)                                                             \
    extern "C" __global__ void __launch_bounds__(32 * MMQ_DP4A_WARPS, MMQ_DP4A_MIN_BLOCKS(BN))               \
        mmq_##name##_dp4a_bn##BN##_cw##CW##SUFFIX(MMQ_PARAMS) {                                              \
        MMQ_MEMBER                                                                                             \
        mmq_prefetch_weights_l2<MMQ_DP4A_WARPS * MMQ_DP4A_ROWS(BN)>(w, row_bytes, rows, units, bx, slices);    \
        grid_dependency_enter();                                                                             \
        mmq_dp4a_kernel<Q, BN, CW, P>(w, row_bytes, rows, units, xq, n, y, slices, part, counters, bx);        \
    }
#define MMQ_DP4A_TILES(name, Q)                                                                                \
    MMQ_DP4A_ENTRY(name, Q, 1, 8, 1, ) MMQ_DP4A_ENTRY(name, Q, 1, 32, 1, ) MMQ_DP4A_ENTRY(name, Q, 2, 8, 1, )   \
    MMQ_DP4A_ENTRY(name, Q, 2, 32, 1, ) MMQ_DP4A_ENTRY(name, Q, 4, 8, 1, ) MMQ_DP4A_ENTRY(name, Q, 4, 32, 1, )
// paired entries mmq_<t>_dp4a_bn1_cw32_p2 (types with a Pair; at CW = 8 pairing was slower: kernels/mmq.py): a lane takes two consecutive blocks of a row
#define MMQ_DP4A_PAIR_TILES(name, Q) MMQ_DP4A_ENTRY(name, Q, 1, 32, 2, _p2)

MMQ_TILES(q8_0, mq_q8_0)
MMQ_TILES(q4_0, mq_q4_0)
MMQ_TILES(q4_k, mq_qk<false>)
MMQ_TILES(q5_k, mq_qk<true>)
MMQ_TILES(q6_k, mq_q6_k)
MMQ_DP4A_TILES(q8_0, mq_q8_0)
MMQ_DP4A_TILES(q4_0, mq_q4_0)
MMQ_DP4A_TILES(q4_k, mq_qk<false>)
MMQ_DP4A_TILES(q5_k, mq_qk<true>)
MMQ_DP4A_TILES(q6_k, mq_q6_k)
MMQ_DP4A_PAIR_TILES(q4_0, mq_q4_0)
MMQ_DP4A_PAIR_TILES(q4_k, mq_qk<false>)
