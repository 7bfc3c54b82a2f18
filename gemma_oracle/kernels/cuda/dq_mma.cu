// Dequant-MMA: y[n, r] = sum_k W[r, k] * x[n, k] for a batch of N tokens on fp16 tensor cores with float32
// accumulation (PTX mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32; plain sm_90).
//
// Why (issue 23; reports/history/2026-11-25-h100-step-kernels-s6-n32.md): decode-MMQ (mmq.cu) scales each int8
// 32-value dot in float32 per output, so its float work per weight grows with N (at N = 32 its tiles read 16-20 % of
// DRAM peak). Here each weight is dequantized ONCE per thread block to fp16 in shared memory, and the tensor cores
// do every multiply-add: the per-weight work no longer depends on N.
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
#include "split_k.cuh"     // mmq_last_slice_sums

__device__ __forceinline__ u32 dq_half2_fma(u32 a, u32 b, u32 c) {
    u32 r;
    asm("fma.rn.f16x2 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(c));
    return r;
}
__device__ __forceinline__ u32 dq_half2_sub(u32 a, u32 b) {
    u32 r;
    asm("sub.rn.f16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
    return r;
}
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

__device__ __forceinline__ void dq_mma16816(float (&c)[4], const u32 (&a)[4], u32 b0, u32 b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
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
    const int u_lo = (int)((long long)blockIdx.z * units / slices);
    const int u_hi = (int)((long long)(blockIdx.z + 1) * units / slices);
    const size_t k_all = (size_t)units * 32;

    float acc[MT][NT][4];
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int h = 0; h < NT; ++h)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][h][e] = 0.0f;

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
            float d[2] = {0.0f, 0.0f}, m = 0.0f;
#pragma unroll
            for (int k = 0; k < 8; ++k) q[k] = 0u;
            if (row0 + r < rows && b0 + kb < u_hi) Q::stage(w + (size_t)(row0 + r) * row_bytes, b0 + kb, q, d, m);
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

    // ---- store: c0, c1 = row g, tokens 2t, 2t + 1; c2, c3 = row g + 8; times the token's inv (exact) ----
    float* __restrict__ dst = slices == 1 ? y : part + (size_t)blockIdx.z * n * rows;
    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int i = 0; i < MT; ++i) {
        const int r_lo = row0 + warp * 16 * MT + 16 * i + g, r_hi = r_lo + 8;
#pragma unroll
        for (int h = 0; h < NT; ++h) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int j = tok0 + 8 * h + 2 * t + e;
                if (j < n) {
                    const float s = __ldg(inv + j);
                    if (r_lo < rows) dst[(size_t)j * rows + r_lo] = __fmul_rn(acc[i][h][e], s);
                    if (r_hi < rows) dst[(size_t)j * rows + r_hi] = __fmul_rn(acc[i][h][2 + e], s);
                }
            }
        }
    }
    if (slices > 1) mmq_last_slice_sums<BM, BN, THREADS>(part, slices, rows, n, row0, tok0, y, counters);
}

#define DQ_PARAMS const u8 *w, i64 row_bytes, int rows, int units, const u16 *x16, const float *inv, int n, float *y, \
                  int slices, float *part, int *counters
#define DQ_ENTRY(name, Q, WM, MT, BN, KB, PF, BLOCKS)                                                           \
    extern "C" __global__ void __launch_bounds__(32 * WM, BLOCKS)                                              \
        dq_mma_##name##_w##WM##_m##MT##_bn##BN##_kb##KB##_pf##PF(DQ_PARAMS) {                                  \
        dq_mma_kernel<Q, WM, MT, BN, KB, PF>(w, row_bytes, rows, units, x16, inv, n, y, slices, part, counters); \
    }
// kernels/dq_mma.py TILES mirrors this list: (warps, m16 tiles a warp, tokens, 32-value blocks a stage, L2 prefetch
// distance in stages (0: none), resident blocks an SM ptxas must allow)
#define DQ_TILES(name, Q)                                                                                       \
    DQ_ENTRY(name, Q, 4, 1, 8, 4, 0, 4) DQ_ENTRY(name, Q, 4, 1, 16, 4, 0, 4) DQ_ENTRY(name, Q, 4, 1, 32, 4, 0, 4) \
    DQ_ENTRY(name, Q, 4, 2, 16, 4, 0, 2) DQ_ENTRY(name, Q, 4, 2, 32, 4, 0, 2) DQ_ENTRY(name, Q, 4, 1, 16, 8, 0, 2) \
    DQ_ENTRY(name, Q, 8, 1, 32, 4, 0, 2) DQ_ENTRY(name, Q, 4, 1, 8, 4, 1, 4) DQ_ENTRY(name, Q, 4, 1, 16, 4, 1, 4) \
    DQ_ENTRY(name, Q, 4, 1, 32, 4, 1, 4) DQ_ENTRY(name, Q, 4, 1, 32, 4, 2, 4)

DQ_TILES(q8_0, mq_q8_0)
DQ_TILES(q4_0, mq_q4_0)
DQ_TILES(q4_k, mq_qk<false>)
DQ_TILES(q5_k, mq_qk<true>)
DQ_TILES(q6_k, mq_q6_k)
