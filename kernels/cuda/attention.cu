// Batched decode attention over per-sequence KV pools (kv_cache.cu's layout), split-KV in two kernels.
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
//       grid (any x >= 1, R, Hq / H), block ATTN_THREADS. Block (x, r, z) computes, for query heads
//       z * H .. z * H + H - 1 (KV head z * H / (Hq / Hkv)), the partials of chunks c_local = x, x + gridDim.x, ...
//       below n_chunks(r).
//   attn_merge_d<D>(ws_acc, ws_ml, row_seq, positions, out, rows, Hq, n_seq_slots, window, n_ws_chunks)
//       grid (R, Hq), block MERGE_THREADS.
//
// Chunking: chunk c holds the absolute positions [c * ATTN_CHUNK, (c + 1) * ATTN_CHUNK). Row r uses the chunks
// c_first = lo / ATTN_CHUNK .. c_last = p / ATTN_CHUNK, so n_chunks(r) depends only on p and window. Per chunk:
//   phase 1  thread jj (one per key of the chunk) computes, for each head, one __fmaf_rn chain over dims
//            0..D-1 in order (K read as 16-byte vectors, q from shared memory), then * scale.
//   phase 2  one warp per head: chunk max m (exact, order-free); e_j = expf(s_j - m) (0 for absent keys);
//            chunk sum l = lane sums over jj = lane + 32 i (i ascending), then an xor butterfly (16, 8, 4, 2, 1).
//   phase 3  each (head, dim) accumulator acc = fma(e_j, v_j[dim], acc) for present keys j ascending within the
//            chunk (a thread owns dims 2u, 2u + 1; V loads of 32 keys (f16; 16 for f32) are issued before their
//            fmas).
// Merge: M = max_c m_c; f_c = expf(m_c - M); L = sum_c f_c l_c and A[dim] = sum_c f_c acc_c[dim], both in chunk
// order c = 0, 1, ... (fma chains; f_c = expf(m_c - M) evaluated once per chunk); out = A / L.
//
// Batch independence: every number above is a function of the row's own q, sequence cache, position and window
// and of D, in an order fixed by absolute positions. The block -> work mapping (grid x, H, which thread
// holds which accumulator) changes only WHO performs each fixed chain of operations, never the chain, and
// nothing is combined across rows or through atomics. So a row's output is bitwise independent of R, of the
// other rows and of the launch shape.
//
// A row whose sequence slot or position is invalid, that has more chunks than n_ws_chunks, or that sees no key
// at all gets NaN in every output element (loud, never silently wrong).
//
// Compile-time constants (#define):
//   ATTN_CHUNK     positions per split-KV chunk (256), aligned to absolute positions
//   ATTN_THREADS   threads per partial block (256 = 8 warps)
//   ATTN_MAX_HPB   query heads per partial block at most (8 = one warp per head in phase 2)
//   ATTN_MIN_BLOCKS  __launch_bounds__ minimum resident partial blocks per SM (2)
//   MERGE_THREADS  threads per merge block (128)
#include "common.cuh"

#define ATTN_CHUNK 256
#define ATTN_THREADS 256  // = ATTN_CHUNK: one key per thread in phase 1
#define ATTN_WARPS (ATTN_THREADS / 32)
#define ATTN_MAX_HPB 8
#define MERGE_THREADS 128
// Resident partial blocks per SM that ptxas must allow (register budget 65536 / (256 * 2) = 128). Without a
// minimum, ptxas capped d64 at 32 registers and spilled.
#define ATTN_MIN_BLOCKS 2

#define NEG_INF (-__int_as_float(0x7f800000))
#define QNAN (__int_as_float(0x7fffffff))

// Pool element loads, converted to float32. KVVec<T>::N consecutive elements are one 16-byte load (scores);
// load_pair reads 2 consecutive elements (the V accumulation) raw, widen converts them.
template <typename T> struct KVVec;
template <> struct KVVec<u16> {
    static constexpr int N = 8;
    static __device__ __forceinline__ void load(const u16* p, float* o) {
        const uint4 w = *reinterpret_cast<const uint4*>(p);
        const u32 ws[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            o[2 * i] = f16_to_f32((u16)(ws[i] & 0xffffu));
            o[2 * i + 1] = f16_to_f32((u16)(ws[i] >> 16));
        }
    }
    // Phase 3's V pairs: loaded raw (one register per key, so many keys' loads can be in flight), widened at use.
    using Pair = u32;
    static constexpr int PU = 32;  // keys whose V loads are in flight together (phase 3)
    static __device__ __forceinline__ Pair load_pair(const u16* p) { return *reinterpret_cast<const u32*>(p); }
    static __device__ __forceinline__ Pair zero_pair() { return 0u; }
    static __device__ __forceinline__ void widen(Pair w, float& a, float& b) {
        a = f16_to_f32((u16)(w & 0xffffu));
        b = f16_to_f32((u16)(w >> 16));
    }
};
template <> struct KVVec<float> {
    static constexpr int N = 4;
    static __device__ __forceinline__ void load(const float* p, float* o) {
        const float4 w = *reinterpret_cast<const float4*>(p);
        o[0] = w.x; o[1] = w.y; o[2] = w.z; o[3] = w.w;
    }
    using Pair = float2;
    static constexpr int PU = 16;
    static __device__ __forceinline__ Pair load_pair(const float* p) { return *reinterpret_cast<const float2*>(p); }
    static __device__ __forceinline__ Pair zero_pair() { return make_float2(0.0f, 0.0f); }
    static __device__ __forceinline__ void widen(Pair w, float& a, float& b) { a = w.x; b = w.y; }
};

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int m = 16; m >= 1; m >>= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
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
    static_assert(D % 64 == 0 && D >= 64 && D <= 2 * ATTN_THREADS, "head dim");
    static_assert(HPB >= 1 && HPB <= ATTN_WARPS, "phase 2 gives each head one warp");
    static_assert(ATTN_THREADS == ATTN_CHUNK, "phase 1 gives each thread one key of the chunk");
    constexpr int VN = KVVec<T>::N;                 // elements per 16-byte key load (phase 1)
    constexpr int PAIRS = D / 2;                    // phase 3: a thread owns dims (2u, 2u + 1)
    constexpr int HSTEP = ATTN_THREADS / PAIRS;     // head stride between a thread's heads (phase 3)
    constexpr int NB = (HPB + HSTEP - 1) / HSTEP;   // heads per thread at most (phase 3)
    // keys whose V loads are in flight together (phase 3): 32 (f16) rather than 8 makes a 256-key chunk 8 rounds
    // of memory latency instead of 32. Measured with the phase-1 unroll below (ncu, shape12b step, N = 1): 27.4 ->
    // 25.2 us a d256 layer, so load latency is a part of this kernel's time, not the bulk
    constexpr int PU = KVVec<T>::PU;

    __shared__ __align__(16) float q_s[HPB][D];
    __shared__ float e_s[HPB][ATTN_CHUNK];  // scores, then exp(score - chunk max)
    __shared__ int slot_s[ATTN_CHUNK];               // slot of each present key, -1 if absent

    const int r = blockIdx.y;
    if (r >= rows) return;
    const int seq = row_seq[r];
    const int p = positions[r];
    if (seq < 0 || seq >= n_seq_slots || p < 0) return;
    const int lo = first_visible(p, window);
    const int c_first = lo / ATTN_CHUNK;
    const int n_chunks = p / ATTN_CHUNK - c_first + 1;
    if (n_chunks > n_ws_chunks) return;

    const int G = Hq / Hkv;
    const int groups = G / HPB;
    const int kvh = blockIdx.z / groups;
    const int h0 = kvh * G + (blockIdx.z - kvh * groups) * HPB;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

    for (int i = tid; i < HPB * D; i += ATTN_THREADS) q_s[i / D][i % D] = q[((i64)r * Hq + h0) * D + i];
    // (q_s is read after the first __syncthreads of the chunk loop)

    const i64 seq_cell0 = (i64)seq * capacity;
    const i64 slot_stride = (i64)Hkv * D;
    for (int c_local = blockIdx.x; c_local < n_chunks; c_local += gridDim.x) {
        const int base = (c_first + c_local) * ATTN_CHUNK;
        const int j0 = max(lo, base), j1 = min(p, base + ATTN_CHUNK - 1);  // inclusive visible range
        __syncthreads();  // q_s written; the previous chunk's readers of e_s/slot_s are done

        // Phase 1: thread jj scores key base + jj against each head: one fma chain over dims 0..D-1.
        {
            const int jj = tid, j = base + jj;
            int slot = -1;
            if (j >= j0 && j <= j1) {
                const int sl = ring ? j % capacity : j;
                if (sl < capacity && pos_table[seq_cell0 + sl] == j) slot = sl;
            }
            slot_s[jj] = slot;
            float dot[HPB];
#pragma unroll
            for (int g = 0; g < HPB; ++g) dot[g] = 0.0f;
            if (slot >= 0) {
                const T* kp = k_pool + (seq_cell0 + slot) * slot_stride + (i64)kvh * D;
#pragma unroll 8  // 8 key loads in flight per thread (was 4)
                for (int i0 = 0; i0 < D; i0 += VN) {
                    float kv[VN];
                    KVVec<T>::load(kp + i0, kv);
#pragma unroll
                    for (int g = 0; g < HPB; ++g) {
#pragma unroll
                        for (int e = 0; e < VN; e += 4) {
                            const float4 qv = *reinterpret_cast<const float4*>(&q_s[g][i0 + e]);
                            dot[g] = __fmaf_rn(qv.x, kv[e], dot[g]);
                            dot[g] = __fmaf_rn(qv.y, kv[e + 1], dot[g]);
                            dot[g] = __fmaf_rn(qv.z, kv[e + 2], dot[g]);
                            dot[g] = __fmaf_rn(qv.w, kv[e + 3], dot[g]);
                        }
                    }
                }
            }
#pragma unroll
            for (int g = 0; g < HPB; ++g) e_s[g][jj] = slot >= 0 ? __fmul_rn(dot[g], scale) : NEG_INF;
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

        // Phase 3: acc[head][dim] = sum_j e_j * v_j[dim], one fma chain per (head, dim), j ascending. A thread owns
        // dims (2u, 2u + 1) of heads gsub, gsub + HSTEP, ...; V loads of PU keys are issued before their fmas.
        const int u = tid % PAIRS, gsub = tid / PAIRS;
        float acc0[NB], acc1[NB];
#pragma unroll
        for (int b = 0; b < NB; ++b) acc0[b] = acc1[b] = 0.0f;
        const T* vbase = v_pool + seq_cell0 * slot_stride + (i64)kvh * D + 2 * u;
        const int jb = j0 - base, je = j1 - base;
        for (int jj = jb; jj <= je; jj += PU) {
            typename KVVec<T>::Pair vr[PU];
#pragma unroll
            for (int k = 0; k < PU; ++k) {
                const int sl = (jj + k <= je) ? slot_s[jj + k] : -1;
                vr[k] = sl >= 0 ? KVVec<T>::load_pair(vbase + (i64)sl * slot_stride) : KVVec<T>::zero_pair();
            }
#pragma unroll
            for (int k = 0; k < PU; ++k) {
                // absent key: no term at all (a 0 * garbage product could be NaN)
                if (jj + k > je || slot_s[jj + k] < 0) continue;
                float va, vb;
                KVVec<T>::widen(vr[k], va, vb);
#pragma unroll
                for (int b = 0; b < NB; ++b) {
                    const int g = gsub + HSTEP * b;
                    if (g < HPB) {
                        const float e = e_s[g][jj + k];
                        acc0[b] = __fmaf_rn(e, va, acc0[b]);
                        acc1[b] = __fmaf_rn(e, vb, acc1[b]);
                    }
                }
            }
        }
#pragma unroll
        for (int b = 0; b < NB; ++b) {
            const int g = gsub + HSTEP * b;
            if (g < HPB) {
                float* dst = ws_acc + (((i64)r * Hq + h0 + g) * n_ws_chunks + c_local) * D + 2 * u;
                dst[0] = acc0[b];
                dst[1] = acc1[b];
            }
        }
    }
}

template <int D>
__device__ __forceinline__ void attn_merge_body(const float* __restrict__ ws_acc, const float* __restrict__ ws_ml,
                                                const int* __restrict__ row_seq, const int* __restrict__ positions,
                                                float* __restrict__ out, int rows, int Hq, int n_seq_slots,
                                                int window, int n_ws_chunks) {
    constexpr int DPT = (D + MERGE_THREADS - 1) / MERGE_THREADS;
    __shared__ float f_s[MERGE_THREADS], l_s[MERGE_THREADS], red[MERGE_THREADS / 32];
    const int r = blockIdx.x, h = blockIdx.y, tid = threadIdx.x;
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
        for (int i = tid; i < D; i += MERGE_THREADS) o[i] = QNAN;
        return;
    }
    const float* ml = ws_ml + ((i64)r * Hq + h) * n_ws_chunks * 2;
    const float* acc = ws_acc + ((i64)r * Hq + h) * n_ws_chunks * D;
    // M = max over chunks (exact whatever the order)
    float m = NEG_INF;
    for (int c = tid; c < n_chunks; c += MERGE_THREADS) m = fmaxf(m, ml[2 * c]);
    m = warp_max(m);
    if ((tid & 31) == 0) red[tid >> 5] = m;
    __syncthreads();
    float M = red[0];
#pragma unroll
    for (int w = 1; w < MERGE_THREADS / 32; ++w) M = fmaxf(M, red[w]);
    // L = sum_c f_c l_c and A = sum_c f_c acc_c, fma chains in chunk order; f_c = expf(m_c - M) computed once per
    // chunk (by thread c % MERGE_THREADS) into shared memory, MERGE_THREADS chunks at a time.
    float L = 0.0f;
    float A[DPT];
#pragma unroll
    for (int a = 0; a < DPT; ++a) A[a] = 0.0f;
    for (int c0 = 0; c0 < n_chunks; c0 += MERGE_THREADS) {
        __syncthreads();  // the previous tile's readers are done
        if (c0 + tid < n_chunks) {
            f_s[tid] = expf(ml[2 * (c0 + tid)] - M);  // M = -inf (no key at all) gives NaN: loud
            l_s[tid] = ml[2 * (c0 + tid) + 1];
        }
        __syncthreads();
        const int n = min(MERGE_THREADS, n_chunks - c0);
#pragma unroll 4
        for (int k = 0; k < n; ++k) {
            const float f = f_s[k];
            L = __fmaf_rn(f, l_s[k], L);
            const float* ac = acc + (i64)(c0 + k) * D;
#pragma unroll
            for (int a = 0; a < DPT; ++a) {
                const int i = tid + MERGE_THREADS * a;
                if (i < D) A[a] = __fmaf_rn(f, ac[i], A[a]);
            }
        }
    }
#pragma unroll
    for (int a = 0; a < DPT; ++a) {
        const int i = tid + MERGE_THREADS * a;
        if (i < D) o[i] = __fdiv_rn(A[a], L);
    }
}

#define ATTN_PARTIAL_ENTRY(TNAME, T, D, HPB)                                                                       \
    extern "C" __global__ void __launch_bounds__(ATTN_THREADS, ATTN_MIN_BLOCKS) attn_partial_##TNAME##_d##D##_h##HPB( \
        const float* q, const T* k_pool, const T* v_pool, const int* pos_table, const int* row_seq,               \
        const int* positions, float* ws_acc, float* ws_ml, int rows, int Hq, int Hkv, int n_seq_slots,            \
        int capacity, int window, int ring, float scale, int n_ws_chunks) {                                        \
        attn_partial_body<D, HPB, T>(q, k_pool, v_pool, pos_table, row_seq, positions, ws_acc, ws_ml, rows, Hq,   \
                                     Hkv, n_seq_slots, capacity, window, ring, scale, n_ws_chunks);               \
    }

#define ATTN_PARTIAL_ENTRIES(TNAME, T, D)                                                                          \
    ATTN_PARTIAL_ENTRY(TNAME, T, D, 1)                                                                             \
    ATTN_PARTIAL_ENTRY(TNAME, T, D, 2)                                                                             \
    ATTN_PARTIAL_ENTRY(TNAME, T, D, 4)                                                                             \
    ATTN_PARTIAL_ENTRY(TNAME, T, D, 8)

#define ATTN_MERGE_ENTRY(D)                                                                                        \
    extern "C" __global__ void __launch_bounds__(MERGE_THREADS) attn_merge_d##D(                                   \
        const float* ws_acc, const float* ws_ml, const int* row_seq, const int* positions, float* out, int rows,  \
        int Hq, int n_seq_slots, int window, int n_ws_chunks) {                                                    \
        attn_merge_body<D>(ws_acc, ws_ml, row_seq, positions, out, rows, Hq, n_seq_slots, window, n_ws_chunks);  \
    }

ATTN_PARTIAL_ENTRIES(f16, u16, 64)
ATTN_PARTIAL_ENTRIES(f16, u16, 128)
ATTN_PARTIAL_ENTRIES(f16, u16, 256)
ATTN_PARTIAL_ENTRIES(f16, u16, 512)
ATTN_PARTIAL_ENTRIES(f32, float, 64)
ATTN_PARTIAL_ENTRIES(f32, float, 128)
ATTN_PARTIAL_ENTRIES(f32, float, 256)
ATTN_PARTIAL_ENTRIES(f32, float, 512)
ATTN_MERGE_ENTRY(64)
ATTN_MERGE_ENTRY(128)
ATTN_MERGE_ENTRY(256)
ATTN_MERGE_ENTRY(512)
