// Shared helpers for gemma-oracle kernels. No CUDA headers are included (NVRTC compiles these
// without the toolkit's include path), so fixed-width types and fp16/bf16 conversions are spelled here.
#pragma once

typedef unsigned char u8;
typedef signed char i8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef int i32;
typedef long long i64;

// Programmatic dependent launch (sm_90; opt-in: GEMMA_ORACLE_PDL=1 compiles with GRID_DEPENDENCY=1, and
// kernels/launch.py then launches every kernel so that the next grid in the stream may launch before this one ends).
// Every kernel's first statement is this call: wait until the grid before it has completed and its writes are visible
// (griddepcontrol.wait), and only then let the next grid launch (launch_dependents). Nothing is read or written
// before the wait, so stream order holds exactly and the bits are those of plain launches; what overlaps is the
// next grid's launch and block start-up with this grid's tail. Without GRID_DEPENDENCY it is empty: the kernels
// are the plain ones, instruction for instruction.
#ifndef GRID_DEPENDENCY
#define GRID_DEPENDENCY 0
#endif
__device__ __forceinline__ void grid_dependency_enter() {
#if GRID_DEPENDENCY
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Let the next grid launch now, before this one waits (a no-op without GRID_DEPENDENCY). Only for a kernel that reads
// and writes nothing before its grid_dependency_enter() (l2_ahead.cu, which asks weights into L2): the next grid's own
// wait still waits for this grid to complete, and this grid completes only after its wait for the grid before it, so
// stream order holds; what it buys is that the next grid's blocks start as early as they did without this launch.
__device__ __forceinline__ void grid_dependency_release() {
#if GRID_DEPENDENCY
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// IEEE fp16 bits -> float (exact), via the hardware conversion instruction.
__device__ __forceinline__ float f16_to_f32(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

// float -> IEEE fp16 bits, round to nearest even (as numpy's astype(float16) and ggml do).
__device__ __forceinline__ u16 f32_to_f16(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

// bf16 bits -> float (exact).
__device__ __forceinline__ float bf16_to_f32(u16 b) { return __uint_as_float(((u32)b) << 16); }

// Little-endian unaligned reads from byte buffers (GGUF blocks are packed, not aligned).
__device__ __forceinline__ u16 load_u16(const u8* p) { return (u16)p[0] | ((u16)p[1] << 8); }
