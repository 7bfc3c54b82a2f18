// Thread block clusters (sm_90): the cluster barrier and a float read from a sibling block's shared memory
// (distributed shared memory), for kernels whose blocks of one cluster share values (ffn_act.cu's packed rows;
// packed_mma.cu keeps its own pk_ copies). The arrive is .release and the wait .acquire, so shared memory written
// before a block's arrive is seen by every block of the cluster after its wait; every thread of every block must
// arrive (.aligned: a warp's threads at the same instruction). Arrive and wait are apart so that a block can work
// between saying it is done reading its siblings' shared memory and waiting for them to be done with its own.
#pragma once
#include "common.cuh"

__device__ __forceinline__ void cluster_arrive() {
    asm volatile("barrier.cluster.arrive.release.aligned;" ::: "memory");
}

__device__ __forceinline__ void cluster_wait() {
    asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory");
}

__device__ __forceinline__ void cluster_barrier() {
    cluster_arrive();
    cluster_wait();
}

// The float at shared address `local` (__cvta_generic_to_shared of a __shared__ variable) of cluster block `rank`
__device__ __forceinline__ float ld_cluster_f32(u32 local, u32 rank) {
    u32 remote;
    float v;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(local), "r"(rank));
    asm volatile("ld.shared::cluster.f32 %0, [%1];" : "=f"(v) : "r"(remote) : "memory");
    return v;
}
