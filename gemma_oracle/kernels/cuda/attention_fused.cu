// Split-KV decode attention in one launch (kernels/attention.py fused=True, GEMMA_ORACLE_ATTN_FUSED=1): the partial
// blocks of attention.cu, then the merge of a (head group, row) in the block of it that finishes last, and with xf the
// row's packed-MMA records in the head-group block that merges last. The same arithmetic as the two launches
// (attention.cuh's bodies), so the same bits.
//   attn_fused_<t>_d<D>_h<H>(q, k_pool, v_pool, pos_table, row_seq, positions, ws_acc, ws_ml, out, xf, xinv,
//                            counters, rows, Hq, Hkv, n_seq_slots, capacity, window, ring, scale, n_ws_chunks)
//       grid and block as attn_partial_*; out as attn_merge_d<D>; xf / xinv null, or packed_mma.cu packed_x's
//       records of out viewed as [R, Hq * D] (Hq * D % 64 == 0); counters: zero, (gridDim.x + 1) * R of them, left
//       zero (split_k.cuh last_arrival).
#include "attention.cuh"
#include "packed_x_row.cuh"  // packed_x_row (the row's packed-MMA records)
#include "split_k.cuh"       // last_arrival

// The partials, then the merge of the block's heads in the block of its (head group, row) that finishes last
// (last_arrival over the gridDim.z chunk blocks, split_k.cuh): the merge entries' arithmetic on ATTN_THREADS threads,
// so out has their bits, without their launch.
// With xf: then, in the head-group block of the row that merges last (a second last_arrival over the gridDim.x
// head groups, at counters[rows * gridDim.x + r]), the row's packed-MMA records (packed_x_row, as packed_mma.cu's
// packed_x writes them for out viewed as [R, Hq * D]: attn_output's packed input without a launch of its own).
template <int D, int HPB>
__device__ __noinline__ void attn_merge_in_last_block(const float* ws_acc, const float* ws_ml, const int* row_seq,
                                                         const int* positions, float* out, uint4* xf, float* xinv,
                                                         int* counters, int rows, int Hq, int Hkv, int n_seq_slots,
                                                         int window, int n_ws_chunks) {
    static_assert(ATTN_THREADS == F16_ROWS_THREADS, "packed_x_row runs on the partial block");
    const int r = blockIdx.y;
    if (r >= rows || !last_arrival(counters, r * gridDim.x + blockIdx.x, gridDim.z)) return;
    const int G = Hq / Hkv, groups = G / HPB, kvh = blockIdx.x / groups;
    const int h0 = kvh * G + (blockIdx.x - kvh * groups) * HPB;
#pragma unroll 1
    for (int g = 0; g < HPB; ++g) {
        if (g) __syncthreads();  // the previous head's readers of the merge's shared arrays are done
        attn_merge_body<D, false, ATTN_THREADS, true>(ws_acc, ws_ml, row_seq, positions, out, nullptr, rows, Hq,
                                                      n_seq_slots, window, n_ws_chunks, r, h0 + g);
    }
    if (xf && last_arrival(counters, rows * gridDim.x + r, gridDim.x))
        packed_x_row<true>(out + (i64)r * Hq * D, Hq * D, r, xf, xinv);
}

#define ATTN_FUSED_ENTRY(TNAME, T, D, HPB)                                                                         \
    extern "C" __global__ void __launch_bounds__(ATTN_THREADS, ATTN_MIN_BLOCKS) attn_fused_##TNAME##_d##D##_h##HPB( \
        const float* q, const T* k_pool, const T* v_pool, const int* pos_table, const int* row_seq,               \
        const int* positions, float* ws_acc, float* ws_ml, float* out, uint4* xf, float* xinv, int* counters,     \
        int rows, int Hq, int Hkv, int n_seq_slots, int capacity, int window, int ring, float scale,               \
        int n_ws_chunks) {                                                                                         \
        grid_dependency_enter();                                                                                   \
        attn_partial_body<D, HPB, T>(q, k_pool, v_pool, pos_table, row_seq, positions, ws_acc, ws_ml, rows, Hq,   \
                                     Hkv, n_seq_slots, capacity, window, ring, scale, n_ws_chunks);               \
        attn_merge_in_last_block<D, HPB>(ws_acc, ws_ml, row_seq, positions, out, xf, xinv, counters, rows, Hq,    \
                                         Hkv, n_seq_slots, window, n_ws_chunks);                                   \
    }

#define ATTN_FUSED_ENTRIES(TNAME, T, D)                                                                            \
    ATTN_FUSED_ENTRY(TNAME, T, D, 1)                                                                               \
    ATTN_FUSED_ENTRY(TNAME, T, D, 2)                                                                               \
    ATTN_FUSED_ENTRY(TNAME, T, D, 4)                                                                               \
    ATTN_FUSED_ENTRY(TNAME, T, D, 8)

ATTN_FOR_EACH_POOL_AND_DIM(ATTN_FUSED_ENTRIES)
