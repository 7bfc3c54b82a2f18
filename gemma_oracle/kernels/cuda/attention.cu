// Split-KV decode attention in two launches: the partials of each (head group, row, chunk), then the merge of each
// (row, head), with or without the Q8_1 blocks of the output. The arithmetic, the layouts, the entry points' arguments
// and why a row's bits do not depend on the batch: attention.cuh. The same partials with the merge in the last
// partial block, one launch: attention_fused.cu.
#include "attention.cuh"

#define ATTN_PARTIAL_ENTRY(TNAME, T, D, HPB)                                                                       \
    extern "C" __global__ void __launch_bounds__(ATTN_THREADS, ATTN_MIN_BLOCKS) attn_partial_##TNAME##_d##D##_h##HPB( \
        const float* q, const T* k_pool, const T* v_pool, const int* pos_table, const int* row_seq,               \
        const int* positions, float* ws_acc, float* ws_ml, int rows, int Hq, int Hkv, int n_seq_slots,            \
        int capacity, int window, int ring, float scale, int n_ws_chunks) {                                        \
        grid_dependency_enter();                                                                                   \
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
        grid_dependency_enter();                                                                                   \
        attn_merge_body<D, false, MERGE_THREADS>(ws_acc, ws_ml, row_seq, positions, out, nullptr, rows, Hq,        \
                                                 n_seq_slots, window, n_ws_chunks, blockIdx.x, blockIdx.y);        \
    }                                                                                                              \
    extern "C" __global__ void __launch_bounds__(MERGE_Q8_1_THREADS(D)) attn_merge_q8_1_d##D(                      \
        const float* ws_acc, const float* ws_ml, const int* row_seq, const int* positions, float* out, u8* out_q,  \
        int rows, int Hq, int n_seq_slots, int window, int n_ws_chunks) {                                          \
        grid_dependency_enter();                                                                                   \
        attn_merge_body<D, true, MERGE_Q8_1_THREADS(D)>(ws_acc, ws_ml, row_seq, positions, out, out_q, rows, Hq,   \
                                                        n_seq_slots, window, n_ws_chunks, blockIdx.x, blockIdx.y); \
    }

ATTN_FOR_EACH_POOL_AND_DIM(ATTN_PARTIAL_ENTRIES)
ATTN_MERGE_ENTRY(64)
ATTN_MERGE_ENTRY(128)
ATTN_MERGE_ENTRY(256)
ATTN_MERGE_ENTRY(512)
