// Batched decode attention over per-sequence KV pools (kv_cache.cu's layout), split-KV: the partial and merge bodies
// that attention.cu (two launches) and attention_fused.cu (one) make their entries of.
//
// Layout (see kv_cache.cu):
//   q          [R, Hq, D] float32            out     [R, Hq, D] float32
//   k_pool/v_pool [S, capacity, Hkv, D] float16 (u16 bits) or float32;  pos_table [S, capacity] int32 (-1 empty)
//   row_seq    [R] int32 (row -> sequence slot);  positions [R] int32 (the query's absolute position p)
//   ws_acc     [R, Hq, n_ws_chunks, D] float32;   ws_ml [R, Hq, n_ws_chunks, 2] float32 (chunk max, chunk sum)
//
// Keys visible to row r (query position p, sequence s): positions j with lo <= j <= p, lo = max(0, p - window + 1)
// when window > 0 (sliding: p - j < window), else 0; a key is present iff pos_table[s, slot(j)] == j, with
// slot(j) = j % capacity for ring caches and j for global ones (absent keys are skipped). Scores are
// (q_h . k_j) * scale; head h reads KV head h / (Hq / Hkv).
//
// Entry points (extern "C"; <t> = f16 | f32 is the pool dtype, <D> = 64 | 128 | 256 | 512 the head dim,
// <H> = 1 | 2 | 4 | 8 the query heads one partial block serves, a divisor of Hq / Hkv):
//   attn_partial_<t>_d<D>_h<H>(q, k_pool, v_pool, pos_table, row_seq, positions, ws_acc, ws_ml,
//                              rows, Hq, Hkv, n_seq_slots, capacity, window, ring, scale, n_ws_chunks)
//       grid (Hq / H, R, any z >= 1), block ATTN_THREADS. Block (x, r, z) computes, for query heads
//       x * H .. x * H + H - 1 (KV head x * H / (Hq / Hkv)), the partials of chunks c_local = z, z + gridDim.z, ...
//       below n_chunks(r). (Chunks are the slowest grid axis: a grid sized for a longer context than the rows
//       have puts its idle blocks last.)
//   attn_merge_d<D>(ws_acc, ws_ml, row_seq, positions, out, rows, Hq, n_seq_slots, window, n_ws_chunks)
//       grid (R, Hq), block MERGE_THREADS.
//   attn_merge_q8_1_d<D>(ws_acc, ws_ml, row_seq, positions, out, out_q, rows, Hq, n_seq_slots, window, n_ws_chunks)
//       grid (R, Hq), block MERGE_Q8_1_THREADS(D) = max(D, 128): the same out, and out_q = its Q8_1 blocks as
//       quantize_q8_1 writes them for out viewed as [R, Hq * D] (uint8 [R, Hq * D / 32 * 36], 4-byte aligned):
//       attn_output's decode-MMQ input, made without a launch of its own. Same bits: out is the same merge body (its
//       thread count changes only who runs each chain: the max is exact in any order, f_c is one expf per chunk,
//       and L and each A[dim] are one chain each, in chunk order), and each value goes, right after it is stored,
//       to the shared q8_1_block_from_warp with quantize_q8_1's lane layout: with NT threads, thread t holds dims
//       t + NT * a, so warp w holds dims NT * a + 32 w + lane: one whole 32-value block of the head row, lane l =
//       value l, and with D % 32 == 0 the guard dim < D is warp-uniform (full-mask shuffles are legal). One thread
//       per dim gives each warp one block (chains in parallel, not one after another) and the chunk loop as many
//       loads in flight. The head row's blocks are blocks (r * Hq + h) * D / 32 + dim / 32 of the flat [R, Hq * D]
//       view. NaN rows quantize their NaNs.
//
// Chunking: chunk c holds the absolute positions [c * ATTN_CHUNK, (c + 1) * ATTN_CHUNK). Row r uses the chunks
// c_first = lo / ATTN_CHUNK .. c_last = p / ATTN_CHUNK, so n_chunks(r) depends only on p and window. A row's K
// and V rows are cut into segments of ATTN_SEG consecutive dims (segment t = dims 8t .. 8t + 7). Per chunk, with
// jj = j - c * ATTN_CHUNK the key's index in it:
//   phase 1  score(h, j): ATTN_LPK = 8 lane partials P_l (l = 0..7), P_l = one __fmaf_rn chain from 0 over the
//            dims of segments l, l + 8, l + 16, ... (segment ascending, dims ascending within it); then an xor
//            tree over l: P_l + P_{l^4}, then + the l^2 partner, then + the l^1 partner, i.e. for every l
//            ((P0 + P4) + (P2 + P6)) + ((P1 + P5) + (P3 + P7)) (float + commutes, so each lane gets these bits);
//            then * scale. Absent keys get -inf.
//   phase 2  one warp per head: chunk max m (exact, order-free); e_j = expf(s_j - m) (0 for absent keys);
//            chunk sum l = lane sums over jj = lane + 32 i (i ascending), then an xor butterfly (16, 8, 4, 2, 1).
//   phase 3  the chunk's keys form NSL(D) = ATTN_THREADS * ATTN_SEG / D slices of KS = ATTN_CHUNK / NSL
//            consecutive keys (D = 64: 32 slices of 2; 128: 16 of 4; 256: 8 of 8; 512: 4 of 16). Slice sum
//            A_s[h][dim] = one __fmaf_rn chain from 0, acc = fma(e_j, v_j[dim], acc), over the slice's present keys
//            ascending; the chunk's acc[h][dim] = ((A_0 + A_1) + A_2) + ... + A_{NSL-1} (slice order).
// Merge: M = max_c m_c; f_c = expf(m_c - M); L = sum_c f_c l_c and A[dim] = sum_c f_c acc_c[dim], both in chunk
// order c = 0, 1, ... (fma chains; f_c = expf(m_c - M) evaluated once per chunk); out = A / L.
//
// Batch independence: every number above is a function of the row's own q, sequence cache, position and window
// and of D, in an order fixed by absolute positions. The block -> work mapping (grid z, H, which thread or lane
// holds which partial, how many loads are in flight) changes only WHO performs each fixed chain of operations,
// never the chain, and nothing is combined across rows or through atomics. So a row's output is bitwise
// independent of R, of the other rows and of the launch shape.
//
// Why this shape: a decode step at short context has few rows, so a chunk is short (many blocks per row) and a
// block issues its chunk's K and V loads at once, before the position table is read (the slot of a key is known
// from its position; an absent key's K and V are read but never used); the dependent chains are short (phase 1:
// D / 8 fmas then 3 shuffles; phase 3: KS fmas then NSL - 1 adds).
//
// A row whose sequence slot or position is invalid, that has more chunks than n_ws_chunks, or that sees no key
// at all gets NaN in every output element (loud, never silently wrong).
//
// Compile-time constants (#define):
//   ATTN_CHUNK       positions per split-KV chunk (64), aligned to absolute positions
//   ATTN_THREADS     threads per partial block (256 = 8 warps)
//   ATTN_MAX_HPB     query heads per partial block at most (8 = one warp per head in phase 2)
//   ATTN_SEG         dims per segment (8: one 16-byte load of f16, two of f32)
//   ATTN_LPK         lanes that score one key in phase 1 (8)
//   ATTN_LOAD_BYTES  register budget of the loads a thread keeps in flight (256: 64 registers); never a result
//   ATTN_MIN_BLOCKS  __launch_bounds__ minimum resident partial blocks per SM (2)
//   MERGE_THREADS    threads per merge block (128); MERGE_Q8_1_THREADS(D) = max(D, 128) for the Q8_1 entry
#pragma once
#include "common.cuh"
#include "q8_1_block.cuh"

#define ATTN_CHUNK 64
#define ATTN_THREADS 256
#define ATTN_WARPS (ATTN_THREADS / 32)
#define ATTN_MAX_HPB 8
#define ATTN_SEG 8
#define ATTN_LPK 8
#define ATTN_LOAD_BYTES 256
#define MERGE_THREADS 128
// The Q8_1 merge: one thread per dim (at least MERGE_THREADS), so that each warp quantizes one block
#define MERGE_Q8_1_THREADS(D) ((D) > MERGE_THREADS ? (D) : MERGE_THREADS)
// Resident partial blocks per SM that ptxas must allow (register budget 65536 / (256 * 2) = 128). Without a
// minimum, ptxas capped d64 at 32 registers and spilled.
#define ATTN_MIN_BLOCKS 2

#define NEG_INF (-__int_as_float(0x7f800000))
#define QNAN (__int_as_float(0x7fffffff))

// One ATTN_SEG-element segment of a K or V row (16 bytes of f16, 32 of f32), loaded raw so that many can be in
// flight per thread, widened to float32 at use.
template <typename T> struct Seg;
template <> struct Seg<u16> {
    struct Raw { uint4 w; };
    static __device__ __forceinline__ Raw load(const u16* p) { return {*reinterpret_cast<const uint4*>(p)}; }
    static __device__ __forceinline__ Raw zero() { return {make_uint4(0u, 0u, 0u, 0u)}; }
    static __device__ __forceinline__ void widen(const Raw& r, float* o) {
        const u32 ws[4] = {r.w.x, r.w.y, r.w.z, r.w.w};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            o[2 * i] = f16_to_f32((u16)(ws[i] & 0xffffu));
            o[2 * i + 1] = f16_to_f32((u16)(ws[i] >> 16));
        }
    }
};
template <> struct Seg<float> {
    struct Raw { float4 a, b; };
    static __device__ __forceinline__ Raw load(const float* p) {
        const float4* p4 = reinterpret_cast<const float4*>(p);
        return {p4[0], p4[1]};
    }
    static __device__ __forceinline__ Raw zero() { return {make_float4(0, 0, 0, 0), make_float4(0, 0, 0, 0)}; }
    static __device__ __forceinline__ void widen(const Raw& r, float* o) {
        o[0] = r.a.x; o[1] = r.a.y; o[2] = r.a.z; o[3] = r.a.w;
        o[4] = r.b.x; o[5] = r.b.y; o[6] = r.b.z; o[7] = r.b.w;
    }
};

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int m = 16; m >= 1; m >>= 1) v = __fadd_rn(v, __shfl_xor_sync(0xffffffffu, v, m));
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int m = 16; m >= 1; m >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, m));
    return v;
}

// First visible position of a query at p (the sliding rule p - j < window; window 0 = global).
__device__ __forceinline__ int first_visible(int p, int window) { return window > 0 ? max(0, p - window + 1) : 0; }

template <int D, int HPB, typename T>
__device__ __forceinline__ void attn_partial_body(const float* __restrict__ q, const T* __restrict__ k_pool,
                                                  const T* __restrict__ v_pool, const int* __restrict__ pos_table,
                                                  const int* __restrict__ row_seq, const int* __restrict__ positions,
                                                  float* __restrict__ ws_acc, float* __restrict__ ws_ml, int rows,
                                                  int Hq, int Hkv, int n_seq_slots, int capacity, int window,
                                                  int ring, float scale, int n_ws_chunks) {
    using S = Seg<T>;
    constexpr int SEGS = D / ATTN_SEG;                          // segments per K/V row
    constexpr int SPL = SEGS / ATTN_LPK;                        // phase 1: segments per lane of a key
    constexpr int KGROUPS = ATTN_THREADS / ATTN_LPK;            // phase 1: keys scored at once by the block
    constexpr int KPT = ATTN_CHUNK / KGROUPS;                   // phase 1: keys per thread
    constexpr int NSL = ATTN_THREADS / SEGS;                    // phase 3: key slices
    constexpr int KS = ATTN_CHUNK / NSL;                        // phase 3: keys per slice
    constexpr int SEGB = ATTN_SEG * (int)sizeof(T);             // bytes of one segment
    // Loads a thread keeps in flight, in registers: K in rounds of KB segments per key and V in batches of VB keys,
    // each of at most LB bytes (half at H > 1: q reads and accumulators of more heads take registers too; half
    // again for f32 pools). The first K round is issued before the first barrier, with the first V batch when
    // both fit in ATTN_LOAD_BYTES. Larger budgets made ptxas spill (d512).
    constexpr int T2 = (int)sizeof(T) / 2;
    constexpr int LB = ATTN_LOAD_BYTES / (HPB < 2 ? HPB : 2) / T2;
    constexpr int KB = SPL * KPT * SEGB <= LB ? SPL : (LB / (KPT * SEGB) > 0 ? LB / (KPT * SEGB) : 1);
    constexpr int VB = KS * SEGB <= LB ? KS : (LB / SEGB > 0 ? LB / SEGB : 1);
    constexpr bool V_EARLY = (KB * KPT + VB) * SEGB <= ATTN_LOAD_BYTES / T2;
    static_assert(ATTN_SEG == 8, "Seg<T> holds 8 elements");
    static_assert(D % (ATTN_SEG * ATTN_LPK) == 0 && D >= 64 && ATTN_THREADS % SEGS == 0, "head dim");
    static_assert(ATTN_CHUNK % KGROUPS == 0 && ATTN_CHUNK % NSL == 0, "chunk");
    static_assert(ATTN_CHUNK % 32 == 0 && (ATTN_LPK & (ATTN_LPK - 1)) == 0 && ATTN_LPK <= 32, "lanes");
    static_assert(SPL % KB == 0 && KS % VB == 0, "load rounds");
    static_assert(HPB >= 1 && HPB <= ATTN_WARPS, "phase 2 gives each head one warp");

    __shared__ __align__(16) float q_s[HPB][D];
    __shared__ float e_s[HPB][ATTN_CHUNK];         // scores, then exp(score - chunk max)
    __shared__ int present_s[ATTN_CHUNK];          // the slot holds the key's position
    __shared__ __align__(16) float red_s[2][NSL * D];  // phase 3's slice sums of one head (double-buffered)

    const int r = blockIdx.y;
    if (r >= rows) return;
    const int seq = row_seq[r];
    const int p = positions[r];
    if (seq < 0 || seq >= n_seq_slots || p < 0) return;
    const int lo = first_visible(p, window);
    const int c_first = lo / ATTN_CHUNK;
    const int n_chunks = p / ATTN_CHUNK - c_first + 1;
    if (n_chunks > n_ws_chunks || (int)blockIdx.z >= n_chunks) return;

    const int G = Hq / Hkv;
    const int groups = G / HPB;
    const int kvh = blockIdx.x / groups;
    const int h0 = kvh * G + (blockIdx.x - kvh * groups) * HPB;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int kgrp = tid / ATTN_LPK, klane = tid % ATTN_LPK;  // phase 1: key group, lane in it
    const int vsl = tid / SEGS, vseg = tid % SEGS;            // phase 3: key slice, segment

    const i64 seq_cell0 = (i64)seq * capacity;
    const i64 slot_stride = (i64)Hkv * D;
    const T* kbase = k_pool + seq_cell0 * slot_stride + (i64)kvh * D + klane * ATTN_SEG;
    const T* vbase = v_pool + seq_cell0 * slot_stride + (i64)kvh * D + vseg * ATTN_SEG;
    for (int c_local = blockIdx.z; c_local < n_chunks; c_local += gridDim.z) {
        const int base = (c_first + c_local) * ATTN_CHUNK;
        const int j0 = max(lo, base), j1 = min(p, base + ATTN_CHUNK - 1);  // inclusive visible range
        // The slot that may hold key base + jj (-1 outside [j0, j1] or the pool). Visible keys span <= window <=
        // capacity positions, so the ring slot is one wrap of j0's.
        const int s_j0 = ring ? j0 % capacity : j0;
        auto slot_of = [&](int jj) {
            const int j = base + jj;
            if (j < j0 || j > j1) return -1;
            int sl = s_j0 + (j - j0);
            if (ring && sl >= capacity) sl -= capacity;
            return sl < capacity ? sl : -1;
        };

        // Every load of the chunk that registers allow is issued here, before the position table says which keys
        // are present (and before the barrier, which would wait for q_s): K and V of an absent key are read but
        // never used (its score is -inf, its V term absent).
        int ksl[KPT];
#pragma unroll
        for (int i = 0; i < KPT; ++i) ksl[i] = slot_of(kgrp + KGROUPS * i);
        typename S::Raw kr[KPT][KB];
        auto load_k = [&](int s0) {
#pragma unroll
            for (int i = 0; i < KPT; ++i)
#pragma unroll
                for (int b = 0; b < KB; ++b)
                    kr[i][b] = ksl[i] >= 0 ? S::load(kbase + ksl[i] * slot_stride + (s0 + b) * ATTN_LPK * ATTN_SEG)
                                           : S::zero();
        };
        typename S::Raw vr[VB];
        auto load_v = [&](int k0) {
#pragma unroll
            for (int k = 0; k < VB; ++k) {
                const int sl = slot_of(vsl * KS + k0 + k);
                vr[k] = sl >= 0 ? S::load(vbase + sl * slot_stride) : S::zero();
            }
        };
        load_k(0);
        if (V_EARLY) load_v(0);
        bool present = false;  // thread tid < ATTN_CHUNK: key base + tid
        if (tid < ATTN_CHUNK) {
            const int sl = slot_of(tid);
            present = sl >= 0 && pos_table[seq_cell0 + sl] == base + tid;
        }
        if (c_local == (int)blockIdx.z) {  // q_s, once; after the loads above (a warp waits at its first store)
            const float4* q4 = reinterpret_cast<const float4*>(q + ((i64)r * Hq + h0) * D);
            float4* qs4 = reinterpret_cast<float4*>(&q_s[0][0]);
#pragma unroll
            for (int i0 = 0; i0 < HPB * D / 4; i0 += ATTN_THREADS)
                if (HPB * D / 4 % ATTN_THREADS == 0 || i0 + tid < HPB * D / 4) qs4[i0 + tid] = q4[i0 + tid];
        }
        __syncthreads();  // q_s written; the previous chunk's readers of e_s / present_s / red_s are done
        if (tid < ATTN_CHUNK) present_s[tid] = present;
        __syncthreads();

        // Phase 1: key jj = kgrp + KGROUPS * i is scored by the ATTN_LPK lanes of group kgrp; lane l holds the fma
        // chain over its segments l, l + ATTN_LPK, ... in order, then the lanes' partials meet in an xor tree.
        {
            float dot[KPT][HPB];
#pragma unroll
            for (int i = 0; i < KPT; ++i)
#pragma unroll
                for (int g = 0; g < HPB; ++g) dot[i][g] = 0.0f;
            auto score = [&](int s0) {
#pragma unroll
                for (int b = 0; b < KB; ++b) {
                    const int d0 = ((s0 + b) * ATTN_LPK + klane) * ATTN_SEG;
                    float kf[KPT][ATTN_SEG];
#pragma unroll
                    for (int i = 0; i < KPT; ++i) S::widen(kr[i][b], kf[i]);
#pragma unroll
                    for (int g = 0; g < HPB; ++g) {
                        const float4 qa = *reinterpret_cast<const float4*>(&q_s[g][d0]);
                        const float4 qb = *reinterpret_cast<const float4*>(&q_s[g][d0 + 4]);
                        const float qv[ATTN_SEG] = {qa.x, qa.y, qa.z, qa.w, qb.x, qb.y, qb.z, qb.w};
#pragma unroll
                        for (int i = 0; i < KPT; ++i)
#pragma unroll
                            for (int e = 0; e < ATTN_SEG; ++e) dot[i][g] = __fmaf_rn(qv[e], kf[i][e], dot[i][g]);
                    }
                }
            };
            score(0);
            // later rounds are not unrolled: hoisted, their loads and q reads would outgrow the register budget
#pragma unroll 1
            for (int s0 = KB; s0 < SPL; s0 += KB) {
                load_k(s0);
                score(s0);
            }
#pragma unroll
            for (int m = ATTN_LPK / 2; m >= 1; m >>= 1)
#pragma unroll
                for (int i = 0; i < KPT; ++i)
#pragma unroll
                    for (int g = 0; g < HPB; ++g)
                        dot[i][g] = __fadd_rn(dot[i][g], __shfl_xor_sync(0xffffffffu, dot[i][g], m));
            if (klane == 0) {
#pragma unroll
                for (int i = 0; i < KPT; ++i) {
                    const int jj = kgrp + KGROUPS * i;
                    const bool present = present_s[jj];
#pragma unroll
                    for (int g = 0; g < HPB; ++g) e_s[g][jj] = present ? __fmul_rn(dot[i][g], scale) : NEG_INF;
                }
            }
        }
        __syncthreads();

        // Phase 2: chunk max and exp-sum, one warp per head.
        if (warp < HPB) {
            const int g = warp;
            float m = NEG_INF;
#pragma unroll
            for (int i = 0; i < ATTN_CHUNK / 32; ++i) m = fmaxf(m, e_s[g][lane + 32 * i]);
            m = warp_max(m);
            float l = 0.0f;
#pragma unroll
            for (int i = 0; i < ATTN_CHUNK / 32; ++i) {
                const float s = e_s[g][lane + 32 * i];
                const float e = (s == NEG_INF) ? 0.0f : expf(s - m);
                e_s[g][lane + 32 * i] = e;
                l = __fadd_rn(l, e);
            }
            l = warp_sum(l);
            if (lane == 0) {
                float* ml = ws_ml + (((i64)r * Hq + h0 + g) * n_ws_chunks + c_local) * 2;
                ml[0] = m;
                ml[1] = l;
            }
        }
        __syncthreads();

        // Phase 3: slice vsl's sum over its keys vsl * KS + k (k ascending), one fma chain per (head, dim) of the
        // thread's segment; then the slice sums of each head are added in slice order.
        float acc[HPB][ATTN_SEG];
#pragma unroll
        for (int g = 0; g < HPB; ++g)
#pragma unroll
            for (int e = 0; e < ATTN_SEG; ++e) acc[g][e] = 0.0f;
        auto accumulate = [&](int k0) {
#pragma unroll
            for (int k = 0; k < VB; ++k) {
                const int jj = vsl * KS + k0 + k;
                if (!present_s[jj]) continue;  // no term at all (a 0 * garbage product could be NaN)
                float vf[ATTN_SEG];
                S::widen(vr[k], vf);
#pragma unroll
                for (int g = 0; g < HPB; ++g) {
                    const float e = e_s[g][jj];
#pragma unroll
                    for (int t = 0; t < ATTN_SEG; ++t) acc[g][t] = __fmaf_rn(e, vf[t], acc[g][t]);
                }
            }
        };
        if (V_EARLY) accumulate(0);
#pragma unroll 1
        for (int k0 = V_EARLY ? VB : 0; k0 < KS; k0 += VB) {
            load_v(k0);
            accumulate(k0);
        }
#pragma unroll
        for (int g = 0; g < HPB; ++g) {
            float* rb = red_s[g & 1];  // last read for head g - 2, before head g - 1's barrier
            float4* dst4 = reinterpret_cast<float4*>(rb + vsl * D + vseg * ATTN_SEG);
            dst4[0] = make_float4(acc[g][0], acc[g][1], acc[g][2], acc[g][3]);
            dst4[1] = make_float4(acc[g][4], acc[g][5], acc[g][6], acc[g][7]);
            __syncthreads();
            float* out = ws_acc + (((i64)r * Hq + h0 + g) * n_ws_chunks + c_local) * D;
#pragma unroll
            for (int d = tid; d < D; d += ATTN_THREADS) {
                float a = rb[d];
#pragma unroll
                for (int s = 1; s < NSL; ++s) a = __fadd_rn(a, rb[s * D + d]);
                out[d] = a;
            }
        }
    }
}

// The Q8_1 block of head row (blockIdx.x, blockIdx.y) that holds dim i, made where it is stored, from blockIdx: a
// pointer made up front stayed live through the chunk loop, whose loads then overlapped less (H100, 128 threads,
// d512 at 64 chunks: 15.7 us instead of 10.8; the plain merge 8.7, with one thread per dim the Q8_1 merge 6.8).
template <int D>
__device__ __forceinline__ u8* merge_q8_1_block(u8* out_q, int Hq, int r, int h, int i) {
    return out_q + (((i64)r * Hq + h) * (D / 32) + (i >> 5)) * Q8_1_BYTES;
}

// A workspace word: from L2 (ld.global.cg) where another block of the same launch wrote it (the fused entries' merge
// in the last partial block), so no stale L1 line is read; the same value either way.
template <bool CG>
__device__ __forceinline__ float ws_word(const float* p) { return CG ? __ldcg(p) : *p; }

// Head h of row r on NT threads (MERGE_THREADS, MERGE_Q8_1_THREADS(D) for the Q8_1 entry, ATTN_THREADS in the fused
// entries); QUANT: also out's Q8_1 blocks at out_q (see attn_merge_q8_1_d<D> in the header); CG: workspace read
// through L2 (ws_word)
template <int D, bool QUANT, int NT, bool CG = false>
__device__ __forceinline__ void attn_merge_body(const float* __restrict__ ws_acc, const float* __restrict__ ws_ml,
                                                const int* __restrict__ row_seq, const int* __restrict__ positions,
                                                float* __restrict__ out, u8* __restrict__ out_q, int rows, int Hq,
                                                int n_seq_slots, int window, int n_ws_chunks, int r, int h) {
    constexpr int DPT = (D + NT - 1) / NT;
    static_assert(D % 32 == 0 && NT % 32 == 0, "a warp's dims are one whole Q8_1 block");
    __shared__ float f_s[NT], l_s[NT], red[NT / 32];
    const int tid = threadIdx.x;
    if (r >= rows) return;
    float* o = out + ((i64)r * Hq + h) * D;
    const int seq = row_seq[r];
    const int p = positions[r];
    bool ok = seq >= 0 && seq < n_seq_slots && p >= 0;
    int n_chunks = 0;
    if (ok) {
        const int c_first = first_visible(p, window) / ATTN_CHUNK;
        n_chunks = p / ATTN_CHUNK - c_first + 1;
        ok = n_chunks <= n_ws_chunks;
    }
    if (!ok) {
        for (int i = tid; i < D; i += NT) {
            o[i] = QNAN;
            if (QUANT) q8_1_block_from_warp(QNAN, merge_q8_1_block<D>(out_q, Hq, r, h, i));
        }
        return;
    }
    const float* ml = ws_ml + ((i64)r * Hq + h) * n_ws_chunks * 2;
    const float* acc = ws_acc + ((i64)r * Hq + h) * n_ws_chunks * D;
    // M = max over chunks (exact whatever the order)
    float m = NEG_INF;
    for (int c = tid; c < n_chunks; c += NT) m = fmaxf(m, ws_word<CG>(ml + 2 * c));
    m = warp_max(m);
    if ((tid & 31) == 0) red[tid >> 5] = m;
    __syncthreads();
    float M = red[0];
#pragma unroll
    for (int w = 1; w < NT / 32; ++w) M = fmaxf(M, red[w]);
    // L = sum_c f_c l_c and A = sum_c f_c acc_c, fma chains in chunk order; f_c = expf(m_c - M) computed once per
    // chunk (by thread c % NT) into shared memory, NT chunks at a time.
    float L = 0.0f;
    float A[DPT];
#pragma unroll
    for (int a = 0; a < DPT; ++a) A[a] = 0.0f;
    for (int c0 = 0; c0 < n_chunks; c0 += NT) {
        __syncthreads();  // the previous tile's readers are done
        if (c0 + tid < n_chunks) {
            f_s[tid] = expf(ws_word<CG>(ml + 2 * (c0 + tid)) - M);  // M = -inf (no key at all) gives NaN: loud
            l_s[tid] = ws_word<CG>(ml + 2 * (c0 + tid) + 1);
        }
        __syncthreads();
        const int n = min(NT, n_chunks - c0);
#pragma unroll 8  // loads of 8 chunks in flight
        for (int k = 0; k < n; ++k) {
            const float f = f_s[k];
            L = __fmaf_rn(f, l_s[k], L);
            const float* ac = acc + (i64)(c0 + k) * D;
#pragma unroll
            for (int a = 0; a < DPT; ++a) {
                const int i = tid + NT * a;
                if (i < D) A[a] = __fmaf_rn(f, ws_word<CG>(ac + i), A[a]);
            }
        }
    }
#pragma unroll
    for (int a = 0; a < DPT; ++a) {
        const int i = tid + NT * a;
        if (i < D) {  // warp-uniform
            const float v = __fdiv_rn(A[a], L);
            o[i] = v;
            if (QUANT) q8_1_block_from_warp(v, merge_q8_1_block<D>(out_q, Hq, r, h, i));
        }
    }
}

// The (pool type, head dim) pairs every entry family is made for (attention.cu, attention_fused.cu): M(TNAME, T, D)
#define ATTN_FOR_EACH_POOL_AND_DIM(M) \
    M(f16, u16, 64) M(f16, u16, 128) M(f16, u16, 256) M(f16, u16, 512) \
    M(f32, float, 64) M(f32, float, 128) M(f32, float, 256) M(f32, float, 512)
