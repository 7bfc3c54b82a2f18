// Packed-weight MMA: y[n, r] = sum_k W[r, k] * x[n, k] on fp16 tensor cores with float32 accumulation, from a copy
// of the weights (Q4_0, Q4_K, Q6_K) repacked once (at load) into the order the m16n8k16 A fragments take them.
//
// Why (issue 23): decode-MMQ (mmq.cu) scales every int8 32-value dot in float32 per output, so its work per weight
// grows with N; dequant-MMA (dq_mma.cu) does the scaling once per weight, but decodes GGUF blocks whose bytes are
// not in fragment order and whose 6-bit scales must be unpacked for every block (ncu, 2026-12-06: ~36 of its ~88
// instructions per 512-weight step rebuilt scales; 96 registers, latency-bound). Here the repacked copy gives each
// lane its fragment's codes as one 16-byte load per 64 values of two rows, and its rows' fp16 scale and offset
// ready-made: a weight costs about 1.6 instructions whatever N, and no shared memory or barrier is needed.
//
// Packed layout (Q4_0 and Q4_K; Q6_K adds a plane of high bits: pk_q6_k below; pack_<t> writes it from the GGUF rows,
// on the GPU):
//   the matrix in m16 row tiles i (rows 16i .. 16i + 15; rows past `rows` are zero) and 64-value groups j (blocks
//   2j, 2j + 1 of K), each (i, j) a record (Q4_K 640 bytes, Q4_0 576, Q6_K 896), records in order i * groups + j:
//     bytes [16 l, 16 l + 16), lane l = 4g + t: four words, word s (k16 step s of the group) = eight nibbles
//         nibble 0 = (row g, c), 1 = (row g + 8, c), 2 = (g, c + 8), 3 = (g + 8, c + 8),
//                4 = (g, c + 1), 5 = (g + 8, c + 1), 6 = (g, c + 9), 7 = (g + 8, c + 9),   c = 16 s + 2t,
//         each nibble the code + BIAS (Q4_0: code + 8; Q4_K: the code itself), 0..15;
//     Q4_K: bytes [512 + 16 g, +16): four half2 words {fp16_rn(d), fp16_rn(-m)} of (row g, block 2j), (row g + 8,
//         block 2j), (row g, block 2j + 1), (row g + 8, block 2j + 1); d, m the block's float32 scale and offset
//         (mmq_blocks.cuh stage(): value = d * code - m) (640 bytes a record);
//     Q4_0 (m = 0: its offset is the code bias): bytes [512 + 8 g, +8): two half2 words {fp16_rn(d) of row g, of row
//         g + 8} of block 2j, then of block 2j + 1 (576 bytes a record: 4.5 bits a weight, as in GGUF).
//   So nibbles (0, 4), (1, 5), (2, 6), (3, 7) of word s are the A registers a0, a1, a2, a3 of step s (PTX ISA,
//   m16n8k16 .f16: a0 = row g, k 2t, 2t + 1; a1 = row g + 8, same k; a2 = row g, k 2t + 8, 2t + 9; a3 = row g + 8).
//   A weight is   w16 = fp16_rn(code * fp16_rn(d) + fp16_rn(-m))   (one half2 fma; code exact in fp16),
//   dq_mma.cu's weight bit for bit (Q4_0 and Q6_K: -m = -0, as dq_mma.cu's fp16_rn(-0.0f)). Q4_K 5 bits a weight
//   (4.5 in GGUF), Q4_0 4.5 (4.5), Q6_K 7 (6.5625).
// Activations (packed_x below): f16_rows.cu's fp16 rows and inv (bit for bit), in fragment order: per 8-token tile h
//   and group j a 1024-byte record of two halves, half p = steps 2p, 2p + 1: lane l's 16 bytes at [512 p + 16 l) =
//   words (s b0, s b1, s' b0, s' b1), s = 2p, s' = 2p + 1, with b0 = {x16[8h + g, 64j + 16s + 2t], x16[.., + 1]},
//   b1 = the same 8 values on (PTX B fragment: b0 = k 2t, 2t + 1 of column g; b1 = k 2t + 8, 2t + 9). So each of a
//   warp's two 16-byte loads of a record reads 512 contiguous bytes (ncu, 2026-12-07: a lane's 32 contiguous bytes
//   cost twice the L1 sectors). The words of tokens past n are not written, and not read.
//
// Reduction order (per output (r, n) and K chunk, the chunks decode-MMQ's shape-only split_k_bounds): acc = +0, then
// one mma per 16-value step k0 = chunk start, + 16, ... in increasing order, then y = acc * inv[n] (exact) and the
// chunks added in chunk order (split_k.cuh). A block walks chunks / slices consecutive chunks, each from acc = +0
// into a partial sum of its own, so the blocks along K (slices) are a speed choice with the bits of one a chunk: a
// batch-invariant mode keeps the shape's chunks at every N and walks them with fewer, longer blocks at large N,
// where the partial sums cost more than the blocks' parallelism gains (kernels/packed_mma.py packed_split). The A and B registers hold the values dq_mma.cu's shared-memory tiles
// load with ldmatrix (the standard fragment order), so an output is BITWISE equal to those tiles at the same slices
// (tests/test_kernels_packed_mma_gpu.py). Batch invariance as argued in dq_mma.cu: one mma's output element depends
// on its own A row, B column and C only, the chain does not depend on the tile or N, and a token's fp16 row and inv
// on its own row only.
//
// Tile <MT, NT, D, XR>: 4 warps, each owning MT consecutive m16 tiles (BM = 64 MT rows a block) and all 8 NT tokens
// of the block's token tile; a warp walks its slice's groups with the weight records of the next D - 1 groups in
// flight (a ring of D register slots; the loop is unrolled D times, so slots are registers), and with XR the
// activation words too (without, they are loaded in the iteration that uses them: an L2 round trip a group that no
// weight ring depth hides, ncu 2026-12-07: half the stalls at N = 1 wait on L1TEX; at NT = 4 the ring's registers cost
// more blocks an SM than the latency it hides, and a shared-memory ring copied once a block was no faster either:
// reports/history/2026-12-07-s17.md). Weights are read with ld.global.nc.L1::no_allocate (read once), activations
// through L1 (every warp of an SM reads the same ones). The loop keeps one pointer a stream, advanced by a record a
// group, and tests only j < j_hi: what does not change along the slice (rows past the matrix, padding tokens) is
// decided once, and their registers stay the zeros they start as (ncu 2026-12-07: ~200 instructions a warp and
// group at N = 32, most of them 64-bit record addresses rebuilt every group).

// Entry points (<t> in q4_0 q4_k q6_k; <tile> in kernels/packed_mma.py TILES):
//     packed_mma_<t>_<tile>(w0, w1, w2, rows0, rows1, rows2, tiles0, tiles01, y0, y1, y2, part0, part1, part2,
//                           int units, const uint4* xf, const float* inv, int n, int slices, int* counters,
//                           int cluster, int chunks)
//       a group of 1..3 matrices (PK_PARAMS below): member m's packed records w_m, its rows, y_m [n, rows_m]
//       float32 and partial sums part_m [chunks, n, rows_m]; tiles0 / tiles01 the grid.x bounds of members 0 / 0-1;
//       units = K / 32 (even), xf / inv from packed_x, counters as in mmq.cu; K in `chunks` chunks (a multiple of
//       slices), chunks / slices a block; grid (sum of ceil(rows_m / BM), ceil(n / (8 NT)), slices), block 128.
//       cluster = 1 (2 <= slices <= 8, chunks <= 8): launched in clusters (1, 1, slices) with MT * NT * 2 KB of
//       dynamic shared memory a chunk of the block, the chunks add up through it (pk_cluster_store / sums; part and
//       counters unused); 0: the counted split of mmq.cu over the chunks' planes.
//     pack_<t>(const u8* w, i64 row_bytes, int rows, int units, uint4* out)
//       one thread per (tile, group, lane): grid ceil(tiles * groups * 32 / 256), block 256.
//     packed_x(const float* x, int k, uint4* xf, float* inv)
//       grid (n) (one block a row; the padding rows of the last 8-token tile are not written: never read), block
//       F16_ROWS_THREADS; xf holds ceil(n / 8) tiles.
#include "mmq_blocks.cuh"  // stage() of each weight type
#include "f16_mma.cuh"     // dq_half2_fma / sub, dq_mma16816, dq_store_m16
#include "packed_x_row.cuh"  // packed_x_row (f16_rows' values in fragment order), PK_X_RECORD
#include "split_k.cuh"     // split_k_bounds, mmq_last_slice_sums

#define PK_WARPS 4

__device__ __forceinline__ u32 pk_lop3_and_or(u32 a, u32 mask, u32 c) {  // (a & mask) | c in one instruction
    u32 r;
    asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(r) : "r"(a), "r"(mask), "r"(c));
    return r;
}

__device__ __forceinline__ uint4 pk_ld_stream(const uint4* p) {  // read once: not kept in L1
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
}

__device__ __forceinline__ uint2 pk_ld_stream2(const uint2* p) {
    uint2 v;
    asm volatile("ld.global.nc.L1::no_allocate.v2.u32 {%0, %1}, [%2];" : "=r"(v.x), "=r"(v.y) : "l"(p));
    return v;
}

__device__ __forceinline__ u32 pk_word(const uint4& v, int i) { return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w; }

// A registers of one k16 step from the low nibbles of its code word q (PLUS: the codes' bits above the nibble, already
// in place: hi01 for a0 / a1, hi23 for a2 / a3; zero for the 4-bit types) and the half2 scales and offsets of rows g
// (dg, mg) and g + 8 (dg8, mg8): each value v = nibble (+ high bits) goes into an fp16 whose exponent field makes it
// 1024 + v (a low nibble of a half) or 1024 + 16 v (a high one); subtracting 1024 + BIAS, or a multiply-add by 1/16
// and -(64 + BIAS), gives the code v - BIAS exactly; then one half2 fma code * d + (-m) (dq_mma.cu's weight).
template <int BIAS>
__device__ __forceinline__ void pk_dequant_step(u32 q, u32 hi01, u32 hi23, u32 dg, u32 mg, u32 dg8, u32 mg8,
                                                u32 (&a)[4]) {
    constexpr u32 MAGIC = 0x64006400u;                  // 1024, 1024
    constexpr u32 LO_SUB = 0x64006400u + BIAS * 0x10001u;  // 1024 + BIAS (ulp 1 there: BIAS < 1024)
    constexpr u32 HI_MUL = 0x2C002C00u;                 // 1/16
    // -(64 + BIAS): 64 + BIAS in [64, 128) is 2^6 (1 + BIAS / 64), mantissa BIAS * 16
    constexpr u32 HI_ADD = (0xD400u + BIAS * 16u) * 0x10001u;
    const u32 q8 = q >> 8;
    a[0] = dq_half2_fma(dq_half2_sub(pk_lop3_and_or(q, 0x000F000Fu, MAGIC) | (hi01 & 0x00300030u), LO_SUB), dg, mg);
    a[1] = dq_half2_fma(dq_half2_fma(pk_lop3_and_or(q, 0x00F000F0u, MAGIC) | (hi01 & 0x03000300u), HI_MUL, HI_ADD),
                        dg8, mg8);
    a[2] = dq_half2_fma(dq_half2_sub(pk_lop3_and_or(q8, 0x000F000Fu, MAGIC) | (hi23 & 0x00300030u), LO_SUB), dg, mg);
    a[3] = dq_half2_fma(dq_half2_fma(pk_lop3_and_or(q8, 0x00F000F0u, MAGIC) | (hi23 & 0x03000300u), HI_MUL, HI_ADD),
                        dg8, mg8);
}

// Each packed type: its GGUF decoder (Block), the code bias (nibble or 6-bit value = code + BIAS), the record size
// in uint4 (RECORD), a lane's registers of one record (Regs, load) and the A registers of step s (dequant); D_ONLY:
// the scales hold d alone (offset -0).
// Q4_K: codes [0, 32) uint4, scales [32, 40): entry g = half2 {d, -m} of (row g, block 0), (row g + 8, block 0),
// (row g, block 1), (row g + 8, block 1).
struct pk_q4_k {
    using Block = mq_qk<false>;
    static constexpr int bias = 0, RECORD = 40, HI = 0, SCALE_AT = 32;
    static constexpr bool D_ONLY = false;
    struct Regs { uint4 q, s; };
    static __device__ __forceinline__ void load(Regs& r, const uint4* rec, int lane) {
        r.q = pk_ld_stream(rec + lane);
        r.s = pk_ld_stream(rec + SCALE_AT + (lane >> 2));
    }
    static __device__ __forceinline__ void dequant(const Regs& r, int s, u32 (&a)[4]) {
        const u32 sg = pk_word(r.s, 2 * (s >> 1)), sg8 = pk_word(r.s, 2 * (s >> 1) + 1);
        pk_dequant_step<0>(pk_word(r.q, s), 0u, 0u, half2_lo(sg), half2_hi(sg), half2_lo(sg8), half2_hi(sg8), a);
    }
};

// Q4_0: codes [0, 32) uint4 as Q4_K's, scales [32, 36): lane's uint2 at uint2 index g, word b = half2 {d(row g,
// block b), d(row g + 8, block b)}. Its -m half would always be -0 (the bias is the offset): 64 bytes a record fewer
// than Q4_K's layout, 10 % of what a step reads of a Q4_0 matrix.
// PK_Q4_0_RECORD (uint4s a record; kernels/_compile.py, GEMMA_ORACLE_PACKED_Q4_0_PAD=1: 40): a record padded to
// 640 bytes, so that every record's codes start on a 128-byte line (576-byte records put every other record's 512
// bytes of codes across 5 lines instead of 4). The padding is never read by the loop; the L2 prefetches read it.
#ifndef PK_Q4_0_RECORD
#define PK_Q4_0_RECORD 36
#endif
struct pk_q4_0 {
    using Block = mq_q4_0;
    static constexpr int bias = 8, RECORD = PK_Q4_0_RECORD, HI = 0, SCALE_AT = 32;
    static constexpr bool D_ONLY = true;
    struct Regs { uint4 q; uint2 s; };
    static __device__ __forceinline__ void load(Regs& r, const uint4* rec, int lane) {
        r.q = pk_ld_stream(rec + lane);
        r.s = pk_ld_stream2((const uint2*)(rec + SCALE_AT) + (lane >> 2));
    }
    static __device__ __forceinline__ void dequant(const Regs& r, int s, u32 (&a)[4]) {
        const u32 sb = s >> 1 ? r.s.y : r.s.x, neg0 = 0x80008000u;
        pk_dequant_step<8>(pk_word(r.q, s), 0u, 0u, half2_lo(sb), neg0, half2_hi(sb), neg0, a);
    }
};

// Q6_K: codes' low nibbles [0, 32) uint4 as above; their high 2 bits [32, 48): lane l's uint2 at uint2 index l, word
// p = steps 2p and 2p + 1, nibble slot i (bits 4i .. 4i + 3) = high bits of nibble i of step 2p (bits 0-1) and of
// step 2p + 1 (bits 2-3); scales [48, 56): entry g = half2 {d(row g, step 0), d(row g, step 1)}, {.. steps 2, 3},
// then row g + 8 alike (a step is one 16-value half with its own scale: d = d * sc; offset 0, stored as -0). 7 bits
// a weight (6.5625 in GGUF). A step's high bits: slot i's two bits moved up 4 (nibbles 0, 1, 4, 5: hi01) or down 4
// (nibbles 2, 3, 6, 7, which a2 / a3 take from q >> 8: hi23) land just above the nibble in its fp16.
struct pk_q6_k {
    using Block = mq_q6_k;
    static constexpr int bias = 32, RECORD = 56, HI = 32, SCALE_AT = 48;
    static constexpr bool D_ONLY = true;
    struct Regs { uint4 q, s; uint2 h; };
    static __device__ __forceinline__ void load(Regs& r, const uint4* rec, int lane) {
        r.q = pk_ld_stream(rec + lane);
        r.h = pk_ld_stream2((const uint2*)(rec + HI) + lane);
        r.s = pk_ld_stream(rec + SCALE_AT + (lane >> 2));
    }
    static __device__ __forceinline__ void dequant(const Regs& r, int s, u32 (&a)[4]) {
        const u32 hs = ((s >> 1 ? r.h.y : r.h.x) >> (2 * (s & 1))) & 0x33333333u;
        const u32 sg = pk_word(r.s, s >> 1), sg8 = pk_word(r.s, 2 + (s >> 1));
        const u32 neg0 = 0x80008000u;  // the step's d (half s & 1 of the word); offset -0 (m = 0)
        pk_dequant_step<32>(pk_word(r.q, s), hs << 4, hs >> 4, s & 1 ? half2_hi(sg) : half2_lo(sg), neg0,
                            s & 1 ? half2_hi(sg8) : half2_lo(sg8), neg0, a);
    }
};

// Split K through distributed shared memory (sm_90 thread block clusters; `cluster` set: the launch's cluster is
// (1, 1, slices), so the slice blocks of one (row tile, token tile) are one cluster and slice z is cluster rank z).
// Each block puts the partial sums acc * inv[n] (dq_store_m16's values) of each of its chunks in its own shared
// memory [chunk slot][element][thread]; after the cluster barrier, block z adds the elements i = z, z + slices, ...
// of every thread's tile, reading the chunks' values from their blocks' shared memory and adding them in chunk order
// 0, 1, ... (mmq_last_slice_sums's chain, so the same bits). Why: the counted split (mmq_last_slice_sums) writes every partial to global memory and
// leaves the adds to the one block that arrives last, reading them back from L2, a serial tail that grows with N
// (route tuning, 2026-12-07: 4096 x 3840 at N = 32 took 21.1 us with 8 slices against 16.3 us with 4). The second
// barrier keeps each block's shared memory alive until its siblings have read it.
__device__ __forceinline__ void pk_cluster_barrier() {
    asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}

__device__ __forceinline__ float pk_ld_cluster(u32 local, u32 rank) {  // a float of cluster block `rank`'s smem
    u32 remote;
    float v;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(local), "r"(rank));
    asm volatile("ld.shared::cluster.f32 %0, [%1];" : "=f"(v) : "r"(remote) : "memory");
    return v;
}

#define PK_CLUSTER_MAX 8  // the portable cluster size: kernels/packed_mma.py CLUSTER_MAX

// This block's partial sums of chunk slot `slot` (acc * inv[n], dq_store_m16's values) into its shared memory,
// [slot][MT * NT * 4][THREADS] (dynamic, sized by the launcher).
template <int MT, int NT, int THREADS>
__device__ __forceinline__ void pk_cluster_store(const float (&acc)[MT][NT][4], const float* __restrict__ inv, int n,
                                                 int xt0, int t, int slot) {
    extern __shared__ float pk_part[];
    constexpr int E = MT * NT * 4;
    float* part = pk_part + (size_t)slot * E * THREADS + threadIdx.x;
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
        for (int h = 0; h < NT; ++h)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int j = 8 * (xt0 + h) + 2 * t + (e & 1);
                part[((m * NT + h) * 4 + e) * THREADS] = j < n ? __fmul_rn(acc[m][h][e], __ldg(inv + j)) : 0.0f;
            }
}

// After every block of the cluster has stored its chunks (pk_cluster_store): block z adds the elements i = z, z +
// slices, ... of every thread's tile over the chunks 0, 1, ..., chunks - 1 in order, chunk c read from cluster rank
// c / per, slot c % per (per = chunks / slices chunks a block).
template <int MT, int NT, int THREADS>
__device__ __forceinline__ void pk_cluster_sums(float* __restrict__ y, int rows, int n, int tile0, int xt0,
                                                int slices, int chunks, int g, int t) {
    extern __shared__ float pk_part[];
    constexpr int E = MT * NT * 4;
    const int tid = threadIdx.x, per = chunks / slices;
    pk_cluster_barrier();
    const u32 base = (u32)__cvta_generic_to_shared(pk_part);
    for (int i = blockIdx.z; i < E; i += slices) {
        const int m = i / (NT * 4), h = (i >> 2) % NT, e = i & 3;
        const int r = 16 * (tile0 + m) + g + 8 * (e >> 1), j = 8 * (xt0 + h) + 2 * t + (e & 1);
        if (r < rows && j < n) {
            const u32 at = base + 4u * (u32)(i * THREADS + tid);
            float v[PK_CLUSTER_MAX];
            u32 rank = 0, slot = 0;  // of chunk c: c / per, c % per (counted, not divided: registers)
#pragma unroll
            for (int c = 0; c < PK_CLUSTER_MAX; ++c) {
                v[c] = c < chunks ? pk_ld_cluster(at + slot * (4u * E * THREADS), rank) : 0.0f;
                if (++slot == (u32)per) slot = 0, ++rank;
            }
            float sum = v[0];
#pragma unroll
            for (int c = 1; c < PK_CLUSTER_MAX; ++c)
                if (c < chunks) sum = __fadd_rn(sum, v[c]);
            y[(size_t)j * rows + r] = sum;
        }
    }
    pk_cluster_barrier();
}

// A rolling L2 prefetch ahead of the register ring (kernels/_compile.py defines PK_L2_AHEAD = A, a power of two, from
// GEMMA_ORACLE_PACKED_AHEAD; 0: none): when the ring loads a group j_next that is a multiple of A, each
// m16 tile asks groups j_next + A .. j_next + 2A - 1 into L2 (cp.async.bulk.prefetch.L2 of A contiguous records, lane
// m for tile m), so the DRAM requests run A to 2A groups past the ring, A records (A * 640 bytes of Q4_K) at a time.
// Why: the ring holds D - 1 groups in flight in registers, and registers bound D (deeper rings cost blocks an SM:
// reports/history/2026-12-07-s16.md); at N = 1 a block then waits a DRAM round trip every D - 1 groups, reading
// 640-byte records of many row tiles at once (ncu, 2026-12-07: the 15360 x 3840 Q4_K launch at 1.74 TB/s, 0.45
// issued warps a scheduler, L1TEX waits the first stall). Bytes asked into L2 cost no registers, and a longer run of
// one tile's records a request gives DRAM fewer, longer bursts. Never past the block's last group `j_end` (nor the
// matrix: a row tile's last group is the last of its chunks); the groups before the block's first multiple of A
// are the prologue's (pk_prefetch_weights_l2, under PDL). Measured slower, so off by default: A = 4 made the whole
// 12B step 0.91-0.92x at N = 1-2 on an H100 (reports/history/2026-12-07-s21.md).
// (A shared-memory ring of weight records filled by cp.async.bulk, S groups a warp ahead of a 2-slot register ring,
// was slower still: 0.78-0.89x the whole step with 6 stages, reports/history/2026-12-07-s22.md; removed, its code in
// commit fcb4b12.)
#ifndef PK_L2_AHEAD
#define PK_L2_AHEAD 0
#endif
static_assert((PK_L2_AHEAD & (PK_L2_AHEAD - 1)) == 0, "PK_L2_AHEAD: a power of two (or 0)");
template <class P, int MT>
__device__ __forceinline__ void pk_prefetch_ahead(const uint4* const (&w_next)[MT], const bool (&w_live)[MT],
                                                  int j_next, int j_end, int lane) {
    if constexpr (PK_L2_AHEAD > 0) {
        const int count = min(PK_L2_AHEAD, j_end - (j_next + PK_L2_AHEAD));
        if ((j_next & (PK_L2_AHEAD - 1)) != 0 || count <= 0) return;  // warp-uniform
#pragma unroll
        for (int m = 0; m < MT; ++m)
            if (lane == m && w_live[m])
                asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;"
                             ::"l"(w_next[m] + PK_L2_AHEAD * P::RECORD), "r"((u32)count * P::RECORD * 16u));
    }
}

// One group's four k16 steps into acc: the A registers from ring slot `r`, the B words `xw`. lo_in / hi_in: the
// group's first / second 32-value block is inside the chunk (a chunk bound inside the group: only the chunk's first
// or last one). The skip predicates the step's mma, not the step: a branch around each step cost a branch, a nop and
// two constants rebuilt a step (sm_90 SASS, nvcc 13.0: the N = 1 loops 9-24 % fewer instructions without it, with
// half2_lo / hi), and an mma not issued leaves acc as a skipped step does (the same bits). The two made the whole
// 12B step 1.06-1.09x on the Q4_K_M stand-in and left the Q4_0 one level (H100, reports/history/2026-12-07-s22.md).
template <class P, int MT, int NT>
__device__ __forceinline__ void pk_group_mma(const typename P::Regs (&r)[MT], const uint4 (&xw)[NT][2], bool lo_in,
                                             bool hi_in, float (&acc)[MT][NT][4]) {
#pragma unroll
    for (int s = 0; s < 4; ++s) {
        const bool in = s < 2 ? lo_in : hi_in;  // warp-uniform
        u32 a[MT][4];
#pragma unroll
        for (int m = 0; m < MT; ++m) P::dequant(r[m], s, a[m]);
#pragma unroll
        for (int h = 0; h < NT; ++h) {
            const u32 b0 = pk_word(xw[h][s >> 1], 2 * (s & 1)), b1 = pk_word(xw[h][s >> 1], 2 * (s & 1) + 1);
#pragma unroll
            for (int m = 0; m < MT; ++m)
                if (in) dq_mma16816(acc[m][h], a[m], b0, b1);
        }
    }
}

// Chunk c's partial sums: into y when K is one chunk, else into this block's shared memory (cluster, slot c - c0)
// or the chunk's plane of part.
template <int MT, int NT, int THREADS>
__device__ __forceinline__ void pk_store_chunk(const float (&acc)[MT][NT][4], int cluster, int chunks, int c, int c0,
                                               float* __restrict__ y, float* __restrict__ part,
                                               const float* __restrict__ inv, int rows, int n, int tile0, int xt0,
                                               int g, int t) {
    if (cluster) {
        pk_cluster_store<MT, NT, THREADS>(acc, inv, n, xt0, t, c - c0);
    } else {
        float* __restrict__ dst = chunks == 1 ? y : part + (size_t)c * n * rows;
#pragma unroll
        for (int m = 0; m < MT; ++m) dq_store_m16<NT>(acc[m], dst, inv, 16 * (tile0 + m) + g, 8 * xt0, t, rows, n);
    }
}

// bx: the block's row tile of its member's matrix (w, rows, y, part); blockIdx.x is its place in the whole grid.
// A block walks its chunks c0 .. c0 + per - 1 (per = chunks / slices; more than one in a batch-invariant launch from
// 16 tokens, kernels/packed_mma.py packed_split), each summed from +0 into a partial sum of its own. CARRY (the _w
// entries, PK_WALK_TILES: launched only where a block walks several chunks): the register ring runs on across the
// chunks' bounds, loading the next chunk's first groups while it finishes the last ones of this chunk, where without
// it the ring drains at each bound and refills (a DRAM round trip with nothing in flight), once a chunk; a bound
// inside a 64-value group reads that group twice, once for each chunk, as the loop per chunk does. The same
// products in the same chains: the same bits. Its own entries, so that the others keep the loop per chunk with the
// registers they were measured with: one kernel with both loops took ptxas (sm_90) to 139-168 registers on the
// tiles of 2+ token tiles, and Q4_0 m1_n4_d3 spilled. The _w entries alone: Q4_0 / Q4_K m1_n2_d3_x 109 / 115 -> 128,
// m1_n4_d3 113 / 108 -> 128 (4 blocks an SM either way); Q6_K has none (118 -> 148 and 112 -> 148: 4 blocks to 3).
// Whole 12B step, batch-invariant at N = 32 on an H100: 1.060x the loop per chunk on the Q4_0 stand-in, 1.014x on
// the Q4_K_M one (reports/history/2026-12-07-s23.md, call 1).
template <class P, int MT, int NT, int D, bool XR, bool CARRY>
__device__ __forceinline__ void packed_mma_kernel(const uint4* __restrict__ w, int rows, int bx, int units,
                                                  const uint4* __restrict__ xf, const float* __restrict__ inv, int n,
                                                  float* __restrict__ y, int slices, float* __restrict__ part,
                                                  int* __restrict__ counters, int cluster, int chunks) {
    constexpr int BM = 16 * MT * PK_WARPS, BN = 8 * NT, THREADS = 32 * PK_WARPS, XD = XR ? D : 1;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int groups = units >> 1, tiles = (rows + 15) >> 4;
    const int tile0 = (bx * PK_WARPS + warp) * MT;  // this warp's first m16 tile
    const int xt0 = blockIdx.y * NT;  // the block's first token tile
    const int per = chunks / slices, c0 = blockIdx.z * per, c_end = c0 + per;  // this block's chunks [c0, c_end)
    // the end of the block's last chunk: the rolling L2 prefetch (pk_prefetch_ahead) runs on across its chunk bounds
    // (a tile's records are contiguous along K) and stops there
    const int j_end = PK_L2_AHEAD > 0 ? (split_k_bounds_u32(units, chunks, c_end - 1).y + 1) >> 1 : 0;

    float acc[MT][NT][4];
#pragma unroll 1
    for (int c = c0; c < (CARRY ? c0 + 1 : c_end); ++c) {  // CARRY: one pass, the chunk moves inside the loop
        dq_zero_acc<MT, NT>(acc);  // each chunk from +0, as a block of its own would sum it
        int2 k_slice = split_k_bounds_u32(units, chunks, c);
        int u_lo = k_slice.x, u_hi = k_slice.y;
        int j = u_lo >> 1, j_hi = (u_hi + 1) >> 1;  // the group computed next; the end of the chunk's groups
        int cc = c;  // the chunk computed (CARRY: moves on at each bound)

        // The records of groups j .. j + D - 1, and the activation words (XR: of the same groups). A row tile past
        // the matrix and a padding token (lane (g, t) holds token 8 (xt0 + h) + g: at N = 1, 7 of the tile's 8;
        // never written) are never loaded: zero codes and scales add +0 products, zero B words make the padding
        // columns.
        typename P::Regs ring[D][MT] = {};
        uint4 xring[XD][NT][2] = {};
        bool w_live[MT], x_live[NT];
        const uint4* w_next[MT];  // record of group j_next of each m16 tile
        const uint4* x_next[NT];  // this lane's words of group j_next (XR) or j (else) of each token tile
#pragma unroll
        for (int m = 0; m < MT; ++m) {
            w_live[m] = tile0 + m < tiles;
            w_next[m] = w + ((size_t)(tile0 + m) * groups + j) * P::RECORD;
        }
#pragma unroll
        for (int h = 0; h < NT; ++h) {
            x_live[h] = 8 * (xt0 + h) + g < n;
            x_next[h] = xf + ((size_t)(xt0 + h) * groups + j) * PK_X_RECORD + lane;
        }
        int j_next = j, l_hi = j_hi, lc = c;  // the next group loaded, the end of its chunk's groups, that chunk
        auto load_x = [&](uint4 (&xw)[NT][2], bool any) {
#pragma unroll
            for (int h = 0; h < NT; ++h) {
                if (any && x_live[h]) {
                    xw[h][0] = __ldg(x_next[h]);
                    xw[h][1] = __ldg(x_next[h] + PK_X_RECORD / 2);
                }
                x_next[h] += PK_X_RECORD;
            }
        };
        auto load_next = [&](int slot) {  // group j_next into ring slot `slot`; past the last chunk nothing is read
            const bool any = j_next < l_hi;
            pk_prefetch_ahead<P, MT>(w_next, w_live, j_next, j_end, lane);
#pragma unroll
            for (int m = 0; m < MT; ++m) {
                if (any && w_live[m]) P::load(ring[slot][m], w_next[m], lane);
                w_next[m] += P::RECORD;
            }
            if constexpr (XR) load_x(xring[slot], any);
            ++j_next;
            if (CARRY && j_next == l_hi && lc + 1 < c_end) {  // on to the next chunk's first group (warp-uniform)
                const int2 b = split_k_bounds_u32(units, chunks, ++lc);
                const int back = j_next - (b.x >> 1);  // 1 when the bound is inside a group (read again), else 0
#pragma unroll
                for (int m = 0; m < MT; ++m) w_next[m] -= back * P::RECORD;
                if constexpr (XR) {
#pragma unroll
                    for (int h = 0; h < NT; ++h) x_next[h] -= back * PK_X_RECORD;
                }
                j_next -= back;
                l_hi = (b.y + 1) >> 1;
            }
        };
#pragma unroll
        for (int p = 0; p + 1 < D; ++p) load_next(p);

        if constexpr (!CARRY) {
            for (; j < j_hi; j += D) {
#pragma unroll
                for (int p = 0; p < D; ++p) {
                    const int jp = j + p;
                    if (jp >= j_hi) break;  // warp-uniform
                    load_next((p + D - 1) % D);
                    if constexpr (!XR) load_x(xring[0], true);
                    pk_group_mma<P, MT, NT>(ring[p], xring[XR ? p : 0], 2 * jp >= u_lo, 2 * jp + 1 < u_hi, acc);
                }
            }
            pk_store_chunk<MT, NT, THREADS>(acc, cluster, chunks, c, c0, y, part, inv, rows, n, tile0, xt0, g, t);
        } else {
            while (cc < c_end) {
#pragma unroll
                for (int p = 0; p < D; ++p) {
                    if (cc >= c_end) break;  // warp-uniform
                    load_next((p + D - 1) % D);
                    if constexpr (!XR) load_x(xring[0], true);
                    pk_group_mma<P, MT, NT>(ring[p], xring[XR ? p : 0], 2 * j >= u_lo, 2 * j + 1 < u_hi, acc);
                    if (++j == j_hi) {  // chunk cc done: its partial sums, then the next chunk from +0
                        pk_store_chunk<MT, NT, THREADS>(acc, cluster, chunks, cc, c0, y, part, inv, rows, n, tile0,
                                                        xt0, g, t);
                        dq_zero_acc<MT, NT>(acc);
                        if (++cc < c_end) {
                            k_slice = split_k_bounds_u32(units, chunks, cc);
                            if constexpr (!XR) {  // the activation words follow the computed group
#pragma unroll
                                for (int h = 0; h < NT; ++h) x_next[h] -= (j - (k_slice.x >> 1)) * PK_X_RECORD;
                            }
                            u_lo = k_slice.x, u_hi = k_slice.y;
                            j = u_lo >> 1, j_hi = (u_hi + 1) >> 1;
                        }
                    }
                }
            }
        }
    }

    if (cluster) {
        pk_cluster_sums<MT, NT, THREADS>(y, rows, n, tile0, xt0, slices, chunks, g, t);
        return;
    }
    if (chunks > 1)
        mmq_last_slice_sums<BM, BN, THREADS>(part, slices, rows, n, bx * BM, 8 * xt0, y, counters, chunks);
}

// Value 16 h + 2t + e + 8 hi (h, hi, e in {0, 1}) of a block's stage() codes (int8, value c in byte c & 3 of word
// c >> 2) plus BIAS, as a 6-bit value v (the 4-bit types: v < 16): word 4h + 2hi + t / 2, byte 2 (t & 1) + e. Only
// t is a run-time value, and it picks between two words named at compile time (an index that depends on the lane
// would put the codes in local memory).
template <int BIAS>
__device__ __forceinline__ u32 pk_value(const u32 (&q)[8], int h, int hi, int t, int e) {
    const u32 word = (t >> 1) ? q[4 * h + 2 * hi + 1] : q[4 * h + 2 * hi];
    return (((word >> (8 * (2 * (t & 1) + e))) & 0xFFu) + BIAS) & 0x3Fu;
}

// The eight values of step s (nibble order of the header) of rows g (r0) and g + 8 (r8): v(i) for nibble slot i.
template <int BIAS>
__device__ __forceinline__ void pk_step_values(const u32 (&r0)[8], const u32 (&r8)[8], int s, int t, u32 (&v)[8]) {
    const int h = s & 1;
    v[0] = pk_value<BIAS>(r0, h, 0, t, 0), v[1] = pk_value<BIAS>(r8, h, 0, t, 0);
    v[2] = pk_value<BIAS>(r0, h, 1, t, 0), v[3] = pk_value<BIAS>(r8, h, 1, t, 0);
    v[4] = pk_value<BIAS>(r0, h, 0, t, 1), v[5] = pk_value<BIAS>(r8, h, 0, t, 1);
    v[6] = pk_value<BIAS>(r0, h, 1, t, 1), v[7] = pk_value<BIAS>(r8, h, 1, t, 1);
}

__device__ __forceinline__ u32 pk_h2(float a, float b) { return (u32)f32_to_f16(a) | ((u32)f32_to_f16(b) << 16); }

// One (tile, group, lane) of the packed records from the GGUF rows (rows past `rows` packed as code 0, scale 0).
template <class P>
__device__ __forceinline__ void pack_records(const u8* __restrict__ w, i64 row_bytes, int rows, int units,
                                             uint4* __restrict__ out) {
    const int groups = units >> 1, tiles = (rows + 15) >> 4;
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)tiles * groups * 32) return;
    const int lane = (int)(idx & 31), g = lane >> 2, t = lane & 3;
    // i * groups + j in 32 bits (tiles * groups < 2^26 for any matrix the engine loads; a 64-bit division would be
    // a called subroutine)
    const u32 rec = (u32)(idx >> 5);
    const int j = (int)(rec % (u32)groups), i = (int)(rec / (u32)groups);
    u32 q[2][2][8];  // [row g / g + 8][block 2j / 2j + 1]
    float d[2][2][2], m[2][2];
#pragma unroll
    for (int rr = 0; rr < 2; ++rr)
#pragma unroll
        for (int b = 0; b < 2; ++b)
            mmq_stage_or_zero<typename P::Block>(w, row_bytes, 16 * i + g + 8 * rr, rows, 2 * j + b, units, q[rr][b],
                                                  d[rr][b], m[rr][b]);
    uint4* dst = out + (size_t)rec * P::RECORD;
    u32 lo[4], hi[2] = {0u, 0u};
#pragma unroll
    for (int s = 0; s < 4; ++s) {
        u32 v[8];
        pk_step_values<P::bias>(q[0][s >> 1], q[1][s >> 1], s, t, v);
        lo[s] = 0u;
#pragma unroll
        for (int k = 0; k < 8; ++k) {
            lo[s] |= (v[k] & 0xFu) << (4 * k);
            hi[s >> 1] |= (v[k] >> 4) << (4 * k + 2 * (s & 1));  // 0 for the 4-bit types
        }
    }
    dst[lane] = make_uint4(lo[0], lo[1], lo[2], lo[3]);
    if constexpr (P::HI > 0) ((uint2*)(dst + P::HI))[lane] = make_uint2(hi[0], hi[1]);
    if (t != 0) return;
    if constexpr (P::HI > 0)  // Q6_K: a scale per 16-value half (step), offset 0
        dst[P::SCALE_AT + g] = make_uint4(pk_h2(d[0][0][0], d[0][0][1]), pk_h2(d[0][1][0], d[0][1][1]),
                                          pk_h2(d[1][0][0], d[1][0][1]), pk_h2(d[1][1][0], d[1][1][1]));
    else if constexpr (P::D_ONLY)  // Q4_0: d of rows g, g + 8 for block 2j, then 2j + 1
        ((uint2*)(dst + P::SCALE_AT))[g] = make_uint2(pk_h2(d[0][0][0], d[1][0][0]), pk_h2(d[0][1][0], d[1][1][0]));
    else
        dst[P::SCALE_AT + g] = make_uint4(pk_h2(d[0][0][0], -m[0][0]), pk_h2(d[1][0][0], -m[1][0]),
                                          pk_h2(d[0][1][0], -m[0][1]), pk_h2(d[1][1][0], -m[1][1]));
}

// The fragment-ordered activations of x [n, k]: one block a token row (packed_x_row.cuh).
extern "C" __global__ void __launch_bounds__(F16_ROWS_THREADS) packed_x(const float* __restrict__ x, int k,
                                                                        uint4* __restrict__ xf, float* __restrict__ inv) {
    grid_dependency_enter();
    packed_x_row(x + (size_t)blockIdx.x * k, k, blockIdx.x, xf, inv);
}

// The first PK_L2_PREFETCH groups of each m16 tile of this warp's K slice, asked into L2 before the wait
// (cp.async.bulk.prefetch.L2, one a tile, lane m for tile m; a record is 16-byte aligned and contiguous along K).
// Why: under PDL (GRID_DEPENDENCY=1) a matmul's blocks launch while the short kernel before it runs (the fused
// norm, gelu * up, packed_x, the attention merge) and DRAM idles; they stream their first records into L2 then,
// so the ring's first loads wait on L2, not DRAM. Weights are never written while a step runs, so they may be
// touched before the wait (tests/test_kernels_launch_host.py lists this prologue). Opt-in until a device A/B has
// measured it: kernels/_compile.py defines PK_L2_PREFETCH from GEMMA_ORACLE_PACKED_PREFETCH (groups; 0 or unset:
// none), and without PDL the prologue is empty.
#ifndef PK_L2_PREFETCH
#define PK_L2_PREFETCH 0
#endif
template <class P, int MT>
__device__ __forceinline__ void pk_prefetch_weights_l2(const uint4* w, int rows, int bx, int units, int slices,
                                                       int chunks) {
    if (!(PK_L2_PREFETCH > 0 && GRID_DEPENDENCY)) return;
    const int lane = threadIdx.x & 31, tile = (bx * PK_WARPS + (int)(threadIdx.x >> 5)) * MT + lane;
    if (lane >= MT || tile >= (rows + 15) >> 4) return;
    // the block's first chunk
    const int2 k_slice = split_k_bounds_u32(units, chunks, (int)blockIdx.z * (chunks / slices));
    const u32 u_lo = k_slice.x, u_hi = k_slice.y;
    const u32 j_lo = u_lo >> 1, j_hi = min((u_hi + 1) >> 1, j_lo + (u32)PK_L2_PREFETCH);
    const uint4* a = w + ((size_t)tile * (u32)(units >> 1) + j_lo) * P::RECORD;
    if (j_hi > j_lo)
        asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(a), "r"((j_hi - j_lo) * P::RECORD * 16u)
                     : "memory");
}

// Every entry serves a GROUP of 1..PK_GROUP_MAX packed matrices of one type, K and K split that read the same
// activations (q/k/v, gate/up), as mmq.cu's entries do and for the same reason (a launch's fixed cost is a large
// part of a small matrix's time at small N): grid.x is the concatenation of the members' row tiles (member 0:
// [0, tiles0), 1: [tiles0, tiles01), 2: [tiles01, ...)) and a block runs the member its blockIdx.x falls in, with
// that member's arithmetic alone, so a grouped launch gives each output the bits of its own launch. The split-K
// counters are indexed by the block's place in the whole grid, so they stay distinct.
#define PK_GROUP_MAX 3
#define PK_PARAMS const uint4 *w0, const uint4 *w1, const uint4 *w2, int rows0, int rows1, int rows2, int tiles0,      \
                  int tiles01, float *y0, float *y1, float *y2, float *part0, float *part1, float *part2, int units, \
                  const uint4 *xf, const float *inv, int n, int slices, int *counters, int cluster, int chunks
// The member a block serves (its weights, rows, row tile bx), from the kernel parameters and blockIdx alone.
#define PK_MEMBER                                                                                                \
    const int m_ = blockIdx.x < tiles0 ? 0 : blockIdx.x < tiles01 ? 1 : 2;                                     \
    const int bx = (int)blockIdx.x - (m_ == 0 ? 0 : m_ == 1 ? tiles0 : tiles01);                               \
    const uint4* w_ = m_ == 0 ? w0 : m_ == 1 ? w1 : w2;                                                        \
    const int rows_ = m_ == 0 ? rows0 : m_ == 1 ? rows1 : rows2;
#define PK_ENTRY(name, P, MT, NT, D, XR, W, SUFFIX)                                                                 \
    extern "C" __global__ void __launch_bounds__(32 * PK_WARPS)                                                 \
        packed_mma_##name##_m##MT##_n##NT##_d##D##SUFFIX(PK_PARAMS) {                                           \
        PK_MEMBER                                                                                              \
        pk_prefetch_weights_l2<P, MT>(w_, rows_, bx, units, slices, chunks);                                   \
        grid_dependency_enter();                                                                               \
        packed_mma_kernel<P, MT, NT, D, XR, W>(w_, rows_, bx, units, xf, inv, n, m_ == 0 ? y0 : m_ == 1 ? y1 : y2, \
                                            slices, m_ == 0 ? part0 : m_ == 1 ? part1 : part2, counters,          \
                                            cluster, chunks);                                                     \
    }
// SUFFIX _x: the activation words in the ring (XR); _w: the register ring carried across the block's K chunks
// (CARRY, packed_mma_kernel), launched when a block walks several (kernels/packed_mma.py WALK_TILES, WALK_TYPES)
#define PK_TILES(name, P)                                                                                        \
    PK_ENTRY(name, P, 2, 1, 3, false, false, ) PK_ENTRY(name, P, 1, 1, 4, false, false, )                        \
    PK_ENTRY(name, P, 1, 2, 3, false, false, ) PK_ENTRY(name, P, 2, 2, 2, false, false, )                        \
    PK_ENTRY(name, P, 2, 4, 2, false, false, ) PK_ENTRY(name, P, 1, 4, 3, false, false, )                        \
    PK_ENTRY(name, P, 1, 2, 2, false, false, ) PK_ENTRY(name, P, 1, 4, 2, false, false, )                        \
    PK_ENTRY(name, P, 2, 1, 3, true, false, _x) PK_ENTRY(name, P, 2, 1, 2, true, false, _x)                      \
    PK_ENTRY(name, P, 1, 1, 4, true, false, _x) PK_ENTRY(name, P, 1, 2, 3, true, false, _x)                      \
    PK_ENTRY(name, P, 2, 2, 2, true, false, _x) PK_ENTRY(name, P, 1, 1, 3, true, false, _x)
#define PK_WALK_TILES(name, P)                                                                                   \
    PK_ENTRY(name, P, 1, 2, 3, true, true, _x_w) PK_ENTRY(name, P, 1, 4, 3, false, true, _w)
#define PK_PACK(name, P)                                                                                         \
    extern "C" __global__ void __launch_bounds__(256) pack_##name(const u8* w, i64 row_bytes, int rows, int units, \
                                                                  uint4* out) {                                 \
        grid_dependency_enter();                                                                               \
        pack_records<P>(w, row_bytes, rows, units, out);                                                          \
    }

PK_TILES(q4_0, pk_q4_0)
PK_TILES(q4_k, pk_q4_k)
PK_TILES(q6_k, pk_q6_k)
PK_WALK_TILES(q4_0, pk_q4_0)
PK_WALK_TILES(q4_k, pk_q4_k)
PK_PACK(q4_0, pk_q4_0)
PK_PACK(q4_k, pk_q4_k)
PK_PACK(q6_k, pk_q6_k)
