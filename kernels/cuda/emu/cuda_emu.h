// CPU emulation of the CUDA execution model for plain C++17 (g++), used when the kernels in
// kernels/cuda/*.cu are compiled with -DFLASHNECK_EMU. Included by common.cuh only; kernels never
// include it directly. See docs/cuda-emulator.md for the design.
//
// Every CUDA thread of a block is a cooperative fiber (ucontext) on one OS thread; the fibers
// switch only at __syncthreads and at warp collectives, so barrier and shuffle semantics are exact.
// Blocks run one after another on each OS thread of a small pool.
#pragma once

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

// ---- qualifiers -------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// Static shared memory: one copy per OS thread. All fibers of a block run on one OS thread and
// the blocks an OS thread runs follow one another, so each running block owns its copy (like the
// shared memory of an SM, the next block on the same thread sees the previous one's leftovers).
// Under AddressSanitizer: plain statics, which ASan surrounds with redzones (it does not check
// thread_local data); the runtime then runs one block at a time in the whole process.
#if defined(__SANITIZE_ADDRESS__)
#define __shared__ static
#else
#define __shared__ static thread_local
#endif

// ---- vector types -----------------------------------------------------------------------------
struct dim3 {
    unsigned x, y, z;
};
using uint3 = dim3;
struct __align__(8) float2 { float x, y; };
struct __align__(16) float4 { float x, y, z, w; };
struct __align__(8) uint2 { unsigned x, y; };
struct __align__(16) uint4 { unsigned x, y, z, w; };
struct __align__(8) int2 { int x, y; };
struct __align__(16) int4 { int x, y, z, w; };
inline float2 make_float2(float x, float y) { return float2{x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return uint2{x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }
inline int2 make_int2(int x, int y) { return int2{x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return int4{x, y, z, w}; }

// ---- math -------------------------------------------------------------------------------------
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
// As the hardware (CUDA math API): for 2^126 < |b| < 2^128 (every finite |b| above 2^126) the
// result is 0 (NaN for infinite a), so that the emulator shows a kernel relying on __fdividef
// beyond its range.
inline float __fdividef(float a, float b) {
    const float ab = fabsf(b);
    return ab > 0x1p126f && !isinf(ab) ? a * 0.0f : a / b;
}
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
inline float __int_as_float(int x) { float f; memcpy(&f, &x, 4); return f; }
inline int __float_as_int(float f) { int x; memcpy(&x, &f, 4); return x; }
inline float __uint_as_float(unsigned x) { float f; memcpy(&f, &x, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned x; memcpy(&x, &f, 4); return x; }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a * b) >> 32); }
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
    return (unsigned long long)(((unsigned __int128)a * b) >> 64);
}

// ---- atomics and fences: blocks run in parallel on OS threads, so these are real atomics ----------
template <typename T>
inline T atomicAdd(T* p, T v) {
    if constexpr (std::is_floating_point<T>::value) {
        T old, sum;
        __atomic_load(p, &old, __ATOMIC_RELAXED);
        do {
            sum = old + v;
        } while (!__atomic_compare_exchange(p, &old, &sum, true, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED));
        return old;
    } else {
        return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
    }
}
template <typename T>
inline T atomicSub(T* p, T v) { return __atomic_fetch_sub(p, v, __ATOMIC_SEQ_CST); }
template <typename T>
inline T atomicExch(T* p, T v) { return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST); }
template <typename T>
inline T atomicCAS(T* p, T expected, T desired) {
    __atomic_compare_exchange_n(p, &expected, desired, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return expected;
}
template <typename T>
inline T atomicMax(T* p, T v) {
    T old = __atomic_load_n(p, __ATOMIC_RELAXED);
    while (old < v && !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) {
    }
    return old;
}
template <typename T>
inline T atomicMin(T* p, T v) {
    T old = __atomic_load_n(p, __ATOMIC_RELAXED);
    while (v < old && !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) {
    }
    return old;
}
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
template <typename T>
inline T __ldg(const T* p) { return *p; }

// ---- the runtime (kernels/cuda/emu/runtime.cpp) ----------------------------------------------
struct flashneck_emu_launch_config {
    unsigned grid[3];
    unsigned block[3];
    unsigned shared_bytes;
};

namespace fn_emu {

// One cp.async copy in flight: common.cuh's emulation lands it at the wait covering `group`.
struct CpPending {
    void* dst;
    const void* src;
    unsigned long long group;
};

// A thread's cp.async copies in flight and the number of groups it has committed. The runtime
// empties it when the thread starts, and faults when the thread exits with a copy in flight.
struct CpAsync {
    std::vector<CpPending> pending;
    unsigned long long committed = 0;
};

// What a kernel thread sees of itself; the runtime's fiber record starts with it.
struct ThreadView {
    dim3 thread_idx, block_idx, block_dim, grid_dim;
    void* dynamic_smem;
    CpAsync cp_async;
};

// Kinds of warp collective; the runtime resolves all lanes of one at once.
enum class WarpOp : int {
    Sync,
    ShflIdx,
    ShflUp,
    ShflDown,
    ShflXor,
    Ballot,
    Any,
    All,
    Mma16816F16,
    Mma16816Bf16,
    Ldmatrix4,
    Ldmatrix4Trans,
};

// The data one lane brings to a warp collective and receives from it.
struct WarpPost {
    unsigned char in[48];
    unsigned char out[16];
};

}  // namespace fn_emu

// The fiber running on this OS thread (set by the scheduler at every switch). `__thread` rather
// than `thread_local`: constant-initialised, so kernels read it without a TLS wrapper call.
extern __thread fn_emu::ThreadView* fn_emu_current;

extern "C" {
void fn_emu_syncthreads(const char* file, int line);
// Posts this lane's `post.in`, waits until every lane of `mask` has posted the same collective,
// and returns with `post.out` filled.
void fn_emu_warp_collective(fn_emu::WarpOp op, unsigned mask, int param, int width, fn_emu::WarpPost* post,
                            const char* file, int line);
// Runs the grid: `thread_fn(closure)` is the body of one CUDA thread.
int fn_emu_run_grid(const flashneck_emu_launch_config* cfg, void (*thread_fn)(void*), void* closure, char* err,
                    unsigned long err_len);
// Reports a fault found by a helper (e.g. a misaligned ldmatrix row) and ends the block.
void fn_emu_fault(const char* message);
}

#define threadIdx (fn_emu_current->thread_idx)
#define blockIdx (fn_emu_current->block_idx)
#define blockDim (fn_emu_current->block_dim)
#define gridDim (fn_emu_current->grid_dim)
#define warpSize 32

#define FN_DYNAMIC_SMEM(T, name) T* name = static_cast<T*>(fn_emu_current->dynamic_smem)

#define __syncthreads() fn_emu_syncthreads(__FILE__, __LINE__)
// `__syncwarp()` and `__syncwarp(mask)`: an object called with an optional mask.
#define __syncwarp fn_emu::SyncwarpSite{__FILE__, __LINE__}
#define __shfl_sync(mask, var, ...) \
    fn_emu::shfl_at(fn_emu::WarpOp::ShflIdx, __FILE__, __LINE__, mask, var, __VA_ARGS__)
#define __shfl_up_sync(mask, var, ...) \
    fn_emu::shfl_at(fn_emu::WarpOp::ShflUp, __FILE__, __LINE__, mask, var, __VA_ARGS__)
#define __shfl_down_sync(mask, var, ...) \
    fn_emu::shfl_at(fn_emu::WarpOp::ShflDown, __FILE__, __LINE__, mask, var, __VA_ARGS__)
#define __shfl_xor_sync(mask, var, ...) \
    fn_emu::shfl_at(fn_emu::WarpOp::ShflXor, __FILE__, __LINE__, mask, var, __VA_ARGS__)
#define __ballot_sync(mask, pred) fn_emu::vote_at(fn_emu::WarpOp::Ballot, __FILE__, __LINE__, mask, pred)
#define __any_sync(mask, pred) ((int)fn_emu::vote_at(fn_emu::WarpOp::Any, __FILE__, __LINE__, mask, pred))
#define __all_sync(mask, pred) ((int)fn_emu::vote_at(fn_emu::WarpOp::All, __FILE__, __LINE__, mask, pred))

namespace fn_emu {

struct SyncwarpSite {
    const char* file;
    int line;
    void operator()(unsigned mask = 0xffffffffu) const {
        WarpPost post;
        fn_emu_warp_collective(WarpOp::Sync, mask, 0, 32, &post, file, line);
    }
};

template <typename T>
inline T shfl_at(WarpOp op, const char* file, int line, unsigned mask, T var, int param, int width = 32) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of a value wider than 8 bytes");
    WarpPost post;
    memset(post.in, 0, 8);
    memcpy(post.in, &var, sizeof(T));
    fn_emu_warp_collective(op, mask, param, width, &post, file, line);
    T out;
    memcpy(&out, post.out, sizeof(T));
    return out;
}

inline unsigned vote_at(WarpOp op, const char* file, int line, unsigned mask, int pred) {
    WarpPost post;
    const unsigned p = pred != 0;
    memcpy(post.in, &p, 4);
    fn_emu_warp_collective(op, mask, 0, 32, &post, file, line);
    unsigned out;
    memcpy(&out, post.out, 4);
    return out;
}

// Launch glue behind FLASHNECK_EXPORT: unpacks cuLaunchKernel-style `args` (args[i] points at the
// i-th argument's value) once, then every emulated thread calls the kernel with those values.
template <typename... A>
struct KernelCall {
    void (*kernel)(A...);
    std::tuple<std::decay_t<A>...> values;

    static void run(void* self) {
        auto* call = static_cast<KernelCall*>(self);
        std::apply(call->kernel, call->values);
    }
};

template <typename... A, size_t... I>
inline int launch_with(void (*kernel)(A...), std::index_sequence<I...>, const flashneck_emu_launch_config* cfg,
                       void** args, char* err, unsigned long err_len) {
    KernelCall<A...> call{kernel, std::tuple<std::decay_t<A>...>(*static_cast<std::decay_t<A>*>(args[I])...)};
    return fn_emu_run_grid(cfg, &KernelCall<A...>::run, &call, err, err_len);
}

template <typename... A>
inline int launch(void (*kernel)(A...), const flashneck_emu_launch_config* cfg, void** args, char* err,
                  unsigned long err_len) {
    return launch_with(kernel, std::index_sequence_for<A...>{}, cfg, args, err, err_len);
}

template <typename... A>
constexpr int arity(void (*)(A...)) {
    return (int)sizeof...(A);
}

}  // namespace fn_emu

#define FLASHNECK_EXPORT(name)                                                                              \
    extern "C" int flashneck_emu_launch_##name(const flashneck_emu_launch_config* cfg, void** args, char* err, \
                                               unsigned long err_len) {                                     \
        return fn_emu::launch(&name, cfg, args, err, err_len);                                              \
    }                                                                                                       \
    extern "C" int flashneck_emu_arity_##name() { return fn_emu::arity(&name); }
