// A KV-owning layer's q/k/v post-processing in a decode step, one launch instead of four: the q norm + RoPE, the
// k norm + RoPE, the weightless V norm and the KV-cache write. Every output equals, bit for bit, what the separate
// sequence writes:
//   q = rms_norm_rope_neox_f32(q_raw, q_w)  (or rms_norm_f32 then rope_neox_f32; fused_norms.cu)
//   k = the same on k_raw with k_w
//   v = rms_norm_f32(v_raw) without weight where v_norm, else v_raw                               (norms.cu)
//   kv_write_f16 / kv_write_f32(k, v): k, v at slot(pos) of the row's sequence, pos_table set     (kv_cache.cu)
// because the arithmetic is the same device functions in the same order: norm_row.cuh (the norm and its fixed
// reduction order: one block of NORM_THREADS per head row, d <= NORM_REG_MAX held in registers), rope_pair.cuh
// (angle, sincosf, the rotation) and kv_cell.cuh (the pool store, f16 by f32_to_f16, and the cell rule). The float32
// k and v of the separate sequence are exact in memory, so converting them in registers instead changes nothing.
//
// Entry points (extern "C"; T = u16 (float16 bits) or float):
//   qkv_rope_kv_f16(q_raw, k_raw, v_raw, q_w, k_w, positions, row_seq, inv_freq, q_out, k_pool, v_pool, pos_table,
//                   rows, hq, hkv, d, half, eps, has_qw, has_kw, v_norm, n_seq_slots, capacity, ring)
//   qkv_rope_kv_f32(same arguments, float32 pools)
//     q_raw, q_out [rows, hq, d]; k_raw, v_raw [rows, hkv, d] float32 C-contiguous (v_raw may be k_raw: a k_eq_v
//     layer's V is the raw K projection, before k's norm); q_w, k_w [d]; positions, row_seq [rows] int32;
//     inv_freq [half] (pairs (i, i + half), dims >= 2 * half pass through after the norm);
//     k_pool, v_pool [n_seq_slots, capacity, hkv, d] T; pos_table [n_seq_slots, capacity] int32 (kv_cache.cu).
//     Row r's K/V follow kv_cache.cu's rule: a row whose sequence slot is out of range, whose position is
//     negative or (global caches) >= capacity writes nothing to the pools; its q is written regardless.
//
// Geometry: one block of NORM_THREADS per head row, rows * (hq + 2 * hkv) blocks; block b is row r = b / (hq + 2 hkv),
// then within the row q heads 0..hq-1, k heads, v heads. Every branch is block-uniform (the norm's barriers).
// The block of k head 0 sets pos_table. Dynamic shared memory: d floats (the normed head row before RoPE).
//
// Aliasing: a block reads only its own head row, in full before its first barrier, so q_out may be q_raw; no
// other overlap of an output with anything (the launcher refuses them).
#include "kv_cell.cuh"
#include "norm_row.cuh"
#include "rope_pair.cuh"

// rope(rms_norm(x) [* w]) of one head row, stored to yq (q: float32) or, where yq is null, to yk (k: the pool's T).
// q and k share this one inlined copy (a second one, with sincosf's slow path, costs registers and spills).
template <typename T>
__device__ __forceinline__ void norm_rope_head(const float* xr, const float* __restrict__ w, int has_w, float* yq,
                                               T* yk, float pos, const float* __restrict__ inv_freq, int d, int half,
                                               float eps, float* normed) {
    float v[NORM_PER_THREAD], wv[NORM_PER_THREAD];
    load_row_regs(v, xr, d, 1, 0.0f);
    load_row_regs(wv, w, d, has_w, 1.0f);
    const float inv = inv_rms_regs(v, d, eps);
#pragma unroll
    for (int k = 0; k < NORM_PER_THREAD; ++k) {
        const int i = reg_index(k);
        if (i < d) normed[i] = rms_scale(v[k], inv, wv[k], has_w);
    }
    __syncthreads();  // the rotation pairs elements held by different threads
    for (int i = threadIdx.x; i < half; i += NORM_THREADS) {
        float c, s, y1, y2;
        rope_cos_sin(pos, inv_freq[i], &c, &s);
        rope_rotate(normed[i], normed[half + i], c, s, &y1, &y2);
        if (yq) {
            yq[i] = y1;
            yq[half + i] = y2;
        } else {
            kv_store(yk + i, y1);
            kv_store(yk + half + i, y2);
        }
    }
    for (int i = 2 * half + threadIdx.x; i < d; i += NORM_THREADS) {  // dims >= n_rot
        if (yq) yq[i] = normed[i];
        else kv_store(yk + i, normed[i]);
    }
}

// y = rms_norm(x) (no weight: the V norm) of one head row, stored as T
template <typename T>
__device__ __forceinline__ void norm_head(const float* xr, T* yr, int d, float eps) {
    float v[NORM_PER_THREAD];
    load_row_regs(v, xr, d, 1, 0.0f);
    const float inv = inv_rms_regs(v, d, eps);
#pragma unroll
    for (int k = 0; k < NORM_PER_THREAD; ++k) {
        const int i = reg_index(k);
        if (i < d) kv_store(yr + i, rms_scale(v[k], inv, 1.0f, 0));
    }
}

template <typename T>
__device__ __forceinline__ void qkv_rope_kv_block(
    const float* q_raw, const float* k_raw, const float* v_raw, const float* __restrict__ q_w,
    const float* __restrict__ k_w, const int* __restrict__ positions, const int* __restrict__ row_seq,
    const float* __restrict__ inv_freq, float* q_out, T* k_pool, T* v_pool, int* pos_table, int rows, int hq, int hkv,
    int d, int half, float eps, int has_qw, int has_kw, int v_norm, int n_seq_slots, int capacity, int ring) {
    extern __shared__ float normed[];
    const int per_row = hq + 2 * hkv;
    const int b = blockIdx.x;
    if (b >= rows * per_row) return;
    const int r = b / per_row, j = b - r * per_row;
    const int pos = positions[r];
    const bool is_q = j < hq;
    i64 cell = 0;
    if (!is_q && !kv_cell(row_seq[r], pos, n_seq_slots, capacity, ring, &cell)) return;  // kv_cache.cu's rule
    if (j < hq + hkv) {  // a q head, or a k head into the pool
        const int h = is_q ? j : j - hq;
        const float* xr = is_q ? q_raw + ((i64)r * hq + h) * d : k_raw + ((i64)r * hkv + h) * d;
        float* yq = is_q ? q_out + ((i64)r * hq + h) * d : nullptr;
        T* yk = is_q ? nullptr : k_pool + (cell * hkv + h) * d;  // kv_cache.cu's cell * (hkv * d) + h * d
        if (!is_q && h == 0 && threadIdx.x == 0) pos_table[cell] = pos;
        norm_rope_head(xr, is_q ? q_w : k_w, is_q ? has_qw : has_kw, yq, yk, (float)pos, inv_freq, d, half, eps,
                       normed);
        return;
    }
    const int h = j - hq - hkv;
    const float* xr = v_raw + ((i64)r * hkv + h) * d;
    T* yv = v_pool + (cell * hkv + h) * d;
    if (v_norm) {
        norm_head(xr, yv, d, eps);
    } else {
        for (int i = threadIdx.x; i < d; i += NORM_THREADS) kv_store(yv + i, xr[i]);
    }
}

extern "C" __global__ void __launch_bounds__(NORM_THREADS)
qkv_rope_kv_f16(const float* q_raw, const float* k_raw, const float* v_raw, const float* __restrict__ q_w,
                const float* __restrict__ k_w, const int* __restrict__ positions, const int* __restrict__ row_seq,
                const float* __restrict__ inv_freq, float* q_out, u16* k_pool, u16* v_pool, int* pos_table, int rows,
                int hq, int hkv, int d, int half, float eps, int has_qw, int has_kw, int v_norm, int n_seq_slots,
                int capacity, int ring) {
    grid_dependency_enter();
    qkv_rope_kv_block(q_raw, k_raw, v_raw, q_w, k_w, positions, row_seq, inv_freq, q_out, k_pool, v_pool, pos_table,
                      rows, hq, hkv, d, half, eps, has_qw, has_kw, v_norm, n_seq_slots, capacity, ring);
}

extern "C" __global__ void __launch_bounds__(NORM_THREADS)
qkv_rope_kv_f32(const float* q_raw, const float* k_raw, const float* v_raw, const float* __restrict__ q_w,
                const float* __restrict__ k_w, const int* __restrict__ positions, const int* __restrict__ row_seq,
                const float* __restrict__ inv_freq, float* q_out, float* k_pool, float* v_pool, int* pos_table,
                int rows, int hq, int hkv, int d, int half, float eps, int has_qw, int has_kw, int v_norm,
                int n_seq_slots, int capacity, int ring) {
    grid_dependency_enter();
    qkv_rope_kv_block(q_raw, k_raw, v_raw, q_w, k_w, positions, row_seq, inv_freq, q_out, k_pool, v_pool, pos_table,
                      rows, hq, hkv, d, half, eps, has_qw, has_kw, v_norm, n_seq_slots, capacity, ring);
}
