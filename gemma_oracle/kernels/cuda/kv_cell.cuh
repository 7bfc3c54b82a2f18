// The KV pools' write rule, shared by kv_cache.cu (kv_write_*) and qkv_rope_kv.cu (the fused q/k/v post-processing),
// so that both store the same bits at the same cell and skip the same rows (layouts: kv_cache.cu's header).
#pragma once
#include "common.cuh"

// A value as the pool stores it: float32 as is, float16 rounded to nearest even (f32_to_f16)
__device__ __forceinline__ void kv_store(float* p, float v) { *p = v; }
__device__ __forceinline__ void kv_store(u16* p, float v) { *p = f32_to_f16(v); }

// Whether a row writes, and where: the cell (sequence seq, slot of pos) = seq * capacity + slot. A row writes NOTHING
// when its sequence slot is out of [0, n_seq_slots), its position is negative, or (global caches) its position is
// >= capacity. Ring (sliding) caches: slot = pos % capacity; global caches: slot = pos.
__device__ __forceinline__ bool kv_cell(int seq, int pos, int n_seq_slots, int capacity, int ring, i64* cell) {
    if (seq < 0 || seq >= n_seq_slots || pos < 0 || (!ring && pos >= capacity)) return false;
    const int slot = ring ? pos % capacity : pos;
    *cell = (i64)seq * capacity + slot;
    return true;
}
