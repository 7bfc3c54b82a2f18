// Split K by shape for the tiles of mmq.cu and dq_mma.cu: the last slice block of a tile adds the partial sums.
#pragma once
#include "common.cuh"

// The 32-value blocks [x, y) of K slice z of `slices` over `units` blocks. Every tile and route of a shape takes
// these bounds (`slices` comes from the shape only: kernels/mmq.py split_k_slices), part of why an output's
// reduction order does not depend on N.
__device__ __forceinline__ int2 split_k_bounds(int units, int slices, unsigned z) {  // z: blockIdx.z
    return make_int2((int)((long long)z * units / slices), (int)((long long)(z + 1) * units / slices));
}

// split_k_bounds in 32-bit arithmetic, the same bounds while (z + 1) * units < 2^32 (units < 2^16 and slices <= 64
// for any K the engine takes): the 64-bit division is a called subroutine, and a call inside a loop (packed_mma.cu's
// chunk loop) makes ptxas save registers to the stack.
__device__ __forceinline__ int2 split_k_bounds_u32(int units, int slices, int z) {
    return make_int2((int)((u32)z * (u32)units / (u32)slices), (int)((u32)(z + 1) * (u32)units / (u32)slices));
}

// Whether this block is the last of `arrivals` blocks to count at counters[tile] (block-uniform); the last one sets
// the counter back to zero. The block's stores are made visible first; a true return is followed by a fence, so the
// caller reads the others' stores through L2 (__ldcg), as below.
__device__ __forceinline__ bool last_arrival(int* __restrict__ counters, int tile, int arrivals) {
    __shared__ int s_last;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        s_last = atomicAdd(counters + tile, 1) == arrivals - 1;
        if (s_last) counters[tile] = 0;  // every block of this launch has counted: ready for the next one
    }
    __syncthreads();
    if (!s_last) return false;
    __threadfence();
    return true;
}

// Split K without a second launch: the slice blocks of one (row tile, token tile) count themselves in
// counters[tile] (zero between launches); the block that arrives last adds the tile's partial sums in slice order
// z = 0, 1, ... (the same chain whichever block it is) into y and sets the counter back to zero, ready for the next
// launch in stream order. Each block makes its partial stores visible (__threadfence) before it counts, and the
// last block reads the partials from L2 (__ldcg), never from a stale L1 line.
// `planes`: the partial-sum planes to add when a block stores several (packed_mma.cu's K chunks); 0: one a slice.
template <int BM, int BN, int THREADS>
__device__ __forceinline__ void mmq_last_slice_sums(const float* part, int slices, int rows, int n, int row0,
                                                    int tok0, float* __restrict__ y, int* __restrict__ counters,
                                                    int planes = 0) {
    // last_arrival's count, spelled out here: through the helper ptxas spilled in two mmq.cu tiles (q6_k bm64_bn32,
    // q5_k bm64_bn16), with the counter reset at the end as below
    __shared__ int s_last;
    const int tid = threadIdx.x, tile = blockIdx.y * gridDim.x + blockIdx.x;
    __threadfence();
    __syncthreads();
    if (tid == 0) s_last = atomicAdd(counters + tile, 1) == slices - 1;
    __syncthreads();
    if (!s_last) return;
    __threadfence();
    const size_t plane = (size_t)n * rows;
    for (int e = tid; e < BM * BN; e += THREADS) {
        const int r = row0 + e % BM, j = tok0 + e / BM;
        if (r < rows && j < n) {
            const size_t i = (size_t)j * rows + r;
            float acc = __ldcg(part + i);
            for (int z = 1; z < (planes ? planes : slices); ++z) acc = __fadd_rn(acc, __ldcg(part + z * plane + i));
            y[i] = acc;
        }
    }
    if (tid == 0) counters[tile] = 0;
}
