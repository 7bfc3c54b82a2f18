// Device KV caches for a batch of sequences: the write side (attention.cu is the read side).
//
// Layout of one KV-owning layer (shared-KV layers own none and read their source layer's pools):
//   k_pool, v_pool  [n_seq_slots, capacity, Hkv, d]  float16 (stored as u16 bits) or float32
//   pos_table       [n_seq_slots, capacity] int32: the absolute position held by each slot, -1 = empty
//   Sliding (ring) caches: capacity = window + chunk - 1 and slot = position % capacity.
//   Global caches:         capacity = the max context and slot = position.
//
// Entry points (extern "C"):
//   kv_write_f16(k_pool, v_pool, pos_table, row_seq, k, v, positions, rows, n_seq_slots, capacity, hd, ring)
//   kv_write_f32(same arguments, float32 pools)
//     k, v [rows, Hkv, d] float32 (hd = Hkv * d); row_seq [rows] int32 (row -> sequence slot);
//     positions [rows] int32. Row r stores k[r], v[r] at slot(positions[r]) of sequence row_seq[r], and sets
//     pos_table[row_seq[r], slot] = positions[r]. F16 pools round to nearest even on store (f32_to_f16).
//     A row whose sequence slot is out of [0, n_seq_slots), whose position is negative, or (global caches)
//     whose position is >= capacity writes NOTHING (no out-of-bounds store); the host validates first.
//     Two rows of one launch must not write the same (sequence, slot).
//
// Compile-time constants (#define):
//   KVW_THREADS  threads per row block (256).
//
// The store and the cell rule are in kv_cell.cuh, shared with qkv_rope_kv.cu (which writes K/V in the launch that
// norms and ropes them, with these bits).
#include "kv_cell.cuh"

#define KVW_THREADS 256

template <typename T>
__device__ __forceinline__ void kv_write_row(T* k_pool, T* v_pool, int* pos_table, const int* row_seq,
                                             const float* k, const float* v, const int* positions, int rows,
                                             int n_seq_slots, int capacity, int hd, int ring) {
    const int r = blockIdx.x;
    if (r >= rows) return;
    const int seq = row_seq[r];
    const int pos = positions[r];
    i64 cell;
    if (!kv_cell(seq, pos, n_seq_slots, capacity, ring, &cell)) return;
    T* kd = k_pool + cell * hd;
    T* vd = v_pool + cell * hd;
    const float* ks = k + (i64)r * hd;
    const float* vs = v + (i64)r * hd;
    for (int i = threadIdx.x; i < hd; i += KVW_THREADS) {
        kv_store(kd + i, ks[i]);
        kv_store(vd + i, vs[i]);
    }
    if (threadIdx.x == 0) pos_table[cell] = pos;
}

extern "C" __global__ void __launch_bounds__(KVW_THREADS)
kv_write_f16(u16* k_pool, u16* v_pool, int* pos_table, const int* row_seq, const float* k, const float* v,
             const int* positions, int rows, int n_seq_slots, int capacity, int hd, int ring) {
    grid_dependency_enter();
    kv_write_row(k_pool, v_pool, pos_table, row_seq, k, v, positions, rows, n_seq_slots, capacity, hd, ring);
}

extern "C" __global__ void __launch_bounds__(KVW_THREADS)
kv_write_f32(float* k_pool, float* v_pool, int* pos_table, const int* row_seq, const float* k, const float* v,
             const int* positions, int rows, int n_seq_slots, int capacity, int hd, int ring) {
    grid_dependency_enter();
    kv_write_row(k_pool, v_pool, pos_table, row_seq, k, v, positions, rows, n_seq_slots, capacity, hd, ring);
}
