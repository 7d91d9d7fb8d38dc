// Device helpers shared by every kernel in kernels/cuda/*.cu (see /work/notes/CUDA_INTERFACE.md).
//
// Each helper has two bodies: inline PTX for NVRTC (this file then includes no header: NVRTC 13.0
// ships none) and a plain C++ body for the CPU emulator (-DFLASHNECK_EMU, docs/cuda-emulator.md),
// which implements the same instruction bit for bit where the PTX ISA defines the result.
#pragma once

#if defined(FLASHNECK_EMU)
#include "emu/cuda_emu.h"
#include <vector>
#else
// Under NVRTC: exports are the kernels themselves; dynamic shared memory is one extern array of
// bytes (declared per kernel under one name so that kernels of different element types coexist).
#define FLASHNECK_EXPORT(name)
#define FN_DYNAMIC_SMEM(T, name)                                      \
    extern __shared__ __align__(16) unsigned char fn_dynamic_smem_raw[]; \
    T* name = reinterpret_cast<T*>(fn_dynamic_smem_raw)
// NVRTC ships no <math.h>: the constants the contract promises (the emulator gets them there).
#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif
#ifndef NAN
#define NAN __int_as_float(0x7fffffff)
#endif
#endif

// Template tags of the half types; their storage is `unsigned short`.
struct fn_f16_t {};
struct fn_bf16_t {};

// The typed extern "C" kernels of one family: KERNEL(suffix, tag, storage, rest...) once per
// element type, with (_f32, float, float), (_f16, fn_f16_t, unsigned short) and
// (_bf16, fn_bf16_t, unsigned short); KERNEL pastes NAME##suffix for the kernel's name.
// The .cu file still writes FLASHNECK_EXPORT(name) for each name on its own line after the
// expansion: crates/flashneck-cuda/build.rs finds the emulated kernels by those lines.
#define FN_EACH_ELEMENT(KERNEL, ...)                    \
    KERNEL(_f32, float, float, __VA_ARGS__)             \
    KERNEL(_f16, fn_f16_t, unsigned short, __VA_ARGS__) \
    KERNEL(_bf16, fn_bf16_t, unsigned short, __VA_ARGS__)

// ---- conversions (round to nearest even) ------------------------------------------------------
#if defined(FLASHNECK_EMU)

__device__ __forceinline__ unsigned fn_float_bits(float f) {
    unsigned u;
    memcpy(&u, &f, 4);
    return u;
}

__device__ __forceinline__ float fn_h2f(unsigned short h) {
    const unsigned sign = (unsigned)(h & 0x8000u) << 16;
    const unsigned exp = (h >> 10) & 0x1fu;
    unsigned mant = h & 0x3ffu;
    unsigned bits;
    if (exp == 0x1fu) {
        bits = sign | 0x7f800000u | (mant << 13);  // inf, NaN (payload kept)
    } else if (exp != 0) {
        bits = sign | ((exp + 112u) << 23) | (mant << 13);
    } else if (mant == 0) {
        bits = sign;
    } else {  // subnormal: mant * 2^-24, normalised
        unsigned e = 113;
        while ((mant & 0x400u) == 0) {
            mant <<= 1;
            --e;
        }
        bits = sign | (e << 23) | ((mant & 0x3ffu) << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

__device__ __forceinline__ unsigned short fn_f2h(float f) {
    const unsigned x = fn_float_bits(f);
    const unsigned sign = (x >> 16) & 0x8000u;
    const unsigned ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return 0x7fffu;                   // NaN -> canonical NaN (as cvt.rn.f16.f32)
    if (ax >= 0x477ff000u) return (unsigned short)(sign | 0x7c00u);  // >= 65520 rounds to inf
    if (ax < 0x38800000u) {                                 // below 2^-14: subnormal or zero
        if (ax <= 0x33000000u) return (unsigned short)sign;  // <= 2^-25 rounds to (even) zero
        const unsigned mant = (ax & 0x7fffffu) | 0x800000u;
        const unsigned shift = 126u - (ax >> 23);           // value / 2^-24 = mant >> shift
        unsigned r = mant >> shift;
        const unsigned rem = mant & ((1u << shift) - 1u), half = 1u << (shift - 1u);
        if (rem > half || (rem == half && (r & 1u))) ++r;
        return (unsigned short)(sign | r);
    }
    unsigned r = (ax - 0x38000000u) >> 13;  // rebias 127 -> 15, keep 10 mantissa bits
    const unsigned rem = ax & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) ++r;  // may carry into the exponent: correct
    return (unsigned short)(sign | r);
}

__device__ __forceinline__ float fn_bf2f(unsigned short b) {
    const unsigned bits = (unsigned)b << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

__device__ __forceinline__ unsigned short fn_f2bf(float f) {
    const unsigned x = fn_float_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return 0x7fffu;  // NaN -> canonical NaN (as cvt.rn.bf16.f32)
    return (unsigned short)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

#else  // NVRTC

__device__ __forceinline__ float fn_h2f(unsigned short h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ unsigned short fn_f2h(float f) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

__device__ __forceinline__ float fn_bf2f(unsigned short b) {
    float f;
    asm("mov.b32 %0, %1;" : "=f"(f) : "r"((unsigned)b << 16));
    return f;
}

__device__ __forceinline__ unsigned short fn_f2bf(float f) {
    unsigned short b;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(b) : "f"(f));
    return b;
}

#endif

// ---- element access by type tag ---------------------------------------------------------------
template <typename S>
struct fn_elem;

template <>
struct fn_elem<float> {
    using storage = float;
    static __device__ __forceinline__ float load(const storage* p, long long i) { return p[i]; }
    static __device__ __forceinline__ void store(storage* p, long long i, float v) { p[i] = v; }
};

template <>
struct fn_elem<fn_f16_t> {
    using storage = unsigned short;
    static __device__ __forceinline__ float load(const storage* p, long long i) { return fn_h2f(p[i]); }
    static __device__ __forceinline__ void store(storage* p, long long i, float v) { p[i] = fn_f2h(v); }
};

template <>
struct fn_elem<fn_bf16_t> {
    using storage = unsigned short;
    static __device__ __forceinline__ float load(const storage* p, long long i) { return fn_bf2f(p[i]); }
    static __device__ __forceinline__ void store(storage* p, long long i, float v) { p[i] = fn_f2bf(v); }
};

// The f32 conversions of a half type by tag (scalars only, so nothing lands in local memory).
template <typename Tag>
struct fn_half;

template <>
struct fn_half<fn_f16_t> {
    static __device__ __forceinline__ float to_f32(unsigned short h) { return fn_h2f(h); }
    static __device__ __forceinline__ unsigned short from_f32(float f) { return fn_f2h(f); }
};

template <>
struct fn_half<fn_bf16_t> {
    static __device__ __forceinline__ float to_f32(unsigned short h) { return fn_bf2f(h); }
    static __device__ __forceinline__ unsigned short from_f32(float f) { return fn_f2bf(f); }
};

// Two floats rounded to half type Tag in one word, the first in the low 16 bits (memory order,
// and the order of an mma fragment's pair).
template <typename Tag>
__device__ __forceinline__ unsigned fn_pack2(float lo, float hi) {
    return (unsigned)fn_half<Tag>::from_f32(lo) | ((unsigned)fn_half<Tag>::from_f32(hi) << 16);
}

// ---- vector access: N consecutive elements in one load or store -------------------------------
// fn_vec<S, N>::load(p, v) reads p[0..N) into float v[N] with one vector load, store writes them
// back converted to S; p must be aligned to the vector's size (N * sizeof(storage)). Provided:
// fn_vec<float, 4> (16 bytes), fn_vec<half, 4> (8 bytes) and fn_vec<half, 8> (16 bytes).
// fn_vec16<S> is the 16-byte one: 4 f32 or 8 halves.
template <typename S, int N>
struct fn_vec;

// W 32-bit words in one 8-byte (W = 2) or 16-byte (W = 4) access.
template <int W>
struct fn_words;

template <>
struct fn_words<2> {
    static __device__ __forceinline__ void load(const void* p, unsigned* w) {
        uint2 q = *reinterpret_cast<const uint2*>(p);
        w[0] = q.x;
        w[1] = q.y;
    }
    static __device__ __forceinline__ void store(void* p, const unsigned* w) {
        *reinterpret_cast<uint2*>(p) = make_uint2(w[0], w[1]);
    }
};

template <>
struct fn_words<4> {
    static __device__ __forceinline__ void load(const void* p, unsigned* w) {
        uint4 q = *reinterpret_cast<const uint4*>(p);
        w[0] = q.x;
        w[1] = q.y;
        w[2] = q.z;
        w[3] = q.w;
    }
    static __device__ __forceinline__ void store(void* p, const unsigned* w) {
        *reinterpret_cast<uint4*>(p) = make_uint4(w[0], w[1], w[2], w[3]);
    }
};

// Four floats as four words (bit casts only, so the access is the same 16-byte one).
template <>
struct fn_vec<float, 4> {
    static const int N = 4;
    static __device__ __forceinline__ void load(const float* p, float* v) {
        unsigned w[4];
        fn_words<4>::load(p, w);
#pragma unroll
        for (int i = 0; i < 4; ++i) v[i] = __uint_as_float(w[i]);
    }
    static __device__ __forceinline__ void store(float* p, const float* v) {
        unsigned w[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) w[i] = __float_as_uint(v[i]);
        fn_words<4>::store(p, w);
    }
};

// N halves as N / 2 words, the lower-addressed half in the low 16 bits of each word.
template <typename Tag, int VN>
struct fn_vec_half {
    static const int N = VN;
    static __device__ __forceinline__ void load(const unsigned short* p, float* v) {
        unsigned w[VN / 2];
        fn_words<VN / 2>::load(p, w);
#pragma unroll
        for (int i = 0; i < VN / 2; ++i) {
            v[2 * i] = fn_half<Tag>::to_f32((unsigned short)(w[i] & 0xffffu));
            v[2 * i + 1] = fn_half<Tag>::to_f32((unsigned short)(w[i] >> 16));
        }
    }
    static __device__ __forceinline__ void store(unsigned short* p, const float* v) {
        unsigned w[VN / 2];
#pragma unroll
        for (int i = 0; i < VN / 2; ++i) w[i] = fn_pack2<Tag>(v[2 * i], v[2 * i + 1]);
        fn_words<VN / 2>::store(p, w);
    }
};

template <int N>
struct fn_vec<fn_f16_t, N> : fn_vec_half<fn_f16_t, N> {};
template <int N>
struct fn_vec<fn_bf16_t, N> : fn_vec_half<fn_bf16_t, N> {};

template <typename S>
using fn_vec16 = fn_vec<S, 16 / (int)sizeof(typename fn_elem<S>::storage)>;

// Dense attention's key blocks for query block qb: the 64-key blocks up to the one holding the
// last key its last row sees (causal is bottom-right aligned; BlockLayout::causal). The forward
// and backward kernels both walk them.
__device__ __forceinline__ int fn_visible_key_blocks(int qb, int len_q, int len_k, int causal) {
    if (!causal) return (len_k + 63) / 64;
    const long long last_row = (long long)min(qb * 64 + 64, len_q) - 1;
    long long keys = last_row + (long long)len_k - (long long)len_q + 1;
    keys = keys < 0 ? 0 : (keys > len_k ? (long long)len_k : keys);
    return (int)((keys + 63) / 64);
}

// ---- a row's head dim over the 4 threads of a quad (the SIMT attention kernels) ----------------
// Thread `quarter` (0..3) of a row holds D / 16 chunks of 4 consecutive elements: chunk c covers
// elements 4·(quarter + 4c) .. +3, so the 4 threads of a row read 64 consecutive bytes of a row
// staged in shared memory with one 16-byte load each: one conflict-free broadcast per warp when
// its 8 rows read the same staged row (4 multiply-adds per load).
__device__ __forceinline__ int fn_quarter_col(int quarter, int c) { return 4 * (quarter + 4 * c); }

// The thread's quarter of row `row` of a [*, D] tensor as f32 (zeros unless ok).
template <typename T, int D>
__device__ __forceinline__ void fn_quarter_load(const typename fn_elem<T>::storage* __restrict__ p, long long row,
                                                bool ok, int quarter, float (&out)[D / 16][4]) {
#pragma unroll
    for (int c = 0; c < D / 16; ++c) {
        if (ok) {
            fn_vec<T, 4>::load(p + row * D + fn_quarter_col(quarter, c), out[c]);
        } else {
#pragma unroll
            for (int e = 0; e < 4; ++e) out[c][e] = 0.0f;
        }
    }
}

// This thread's part of the dot product of its quarter x with staged row s (the quad's 4 parts
// sum to the full dot product).
template <int D>
__device__ __forceinline__ float fn_quarter_dot(const float (&x)[D / 16][4], const float* s, int quarter) {
    float a = 0.0f;
#pragma unroll
    for (int c = 0; c < D / 16; ++c) {
        const float4 u = *reinterpret_cast<const float4*>(s + fn_quarter_col(quarter, c));
        a += x[c][0] * u.x + x[c][1] * u.y + x[c][2] * u.z + x[c][3] * u.w;
    }
    return a;
}

// acc += f · s (the thread's quarter of staged row s).
template <int D>
__device__ __forceinline__ void fn_quarter_axpy(float (&acc)[D / 16][4], float f, const float* s, int quarter) {
#pragma unroll
    for (int c = 0; c < D / 16; ++c) {
        const float4 u = *reinterpret_cast<const float4*>(s + fn_quarter_col(quarter, c));
        acc[c][0] += f * u.x;
        acc[c][1] += f * u.y;
        acc[c][2] += f * u.z;
        acc[c][3] += f * u.w;
    }
}

// ---- fixed-order reductions ---------------------------------------------------------------------
// Sum over a warp by an xor butterfly: every lane gets the same, order-fixed result.
__device__ __forceinline__ float fn_warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Sum over a block launched with exactly THREADS threads (a multiple of 32): warp sums, then the
// warps' sums added in warp order, so the result is bitwise reproducible; every thread gets it.
// `scratch` holds THREADS / 32 floats in shared memory; for THREADS > 32 the function ends with a
// barrier, so scratch can be reused at once, and every thread of the block must call it.
template <int THREADS>
__device__ __forceinline__ float fn_block_sum(float v, float* scratch) {
    v = fn_warp_sum(v);
    if (THREADS == 32) return v;
    if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = v;
    __syncthreads();
    float s = 0.0f;
    for (int w = 0; w < THREADS / 32; ++w) s += scratch[w];
    __syncthreads();
    return s;
}

// ---- tensor cores: mma.sync m16n8k16, f32 accumulate ------------------------------------------
// Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type"),
// g = lane >> 2, t = lane % 4, each 32-bit register holds two halves, low half first:
//   a[0] = A[g][2t, 2t+1]   a[1] = A[g+8][2t, 2t+1]   a[2] = A[g][2t+8, 2t+9]   a[3] = A[g+8][2t+8, 2t+9]
//   b[0] = B[2t, 2t+1][g]   b[1] = B[2t+8, 2t+9][g]
//   c[0], c[1] = C[g][2t, 2t+1]   c[2], c[3] = C[g+8][2t, 2t+1]   (d likewise)
// Every lane of the warp must call it (it is a warp collective).
#if defined(FLASHNECK_EMU)

__device__ __forceinline__ void fn_emu_mma(fn_emu::WarpOp op, float d[4], const unsigned a[4], const unsigned b[2],
                                           const float c[4]) {
    fn_emu::WarpPost post;
    memcpy(post.in, a, 16);
    memcpy(post.in + 16, b, 8);
    memcpy(post.in + 24, c, 16);
    fn_emu_warp_collective(op, 0xffffffffu, 0, 32, &post, __FILE__, __LINE__);
    memcpy(d, post.out, 16);
}

__device__ __forceinline__ void fn_mma_m16n8k16_f16(float d[4], const unsigned a[4], const unsigned b[2],
                                                    const float c[4]) {
    fn_emu_mma(fn_emu::WarpOp::Mma16816F16, d, a, b, c);
}

__device__ __forceinline__ void fn_mma_m16n8k16_bf16(float d[4], const unsigned a[4], const unsigned b[2],
                                                     const float c[4]) {
    fn_emu_mma(fn_emu::WarpOp::Mma16816Bf16, d, a, b, c);
}

#else  // NVRTC

__device__ __forceinline__ void fn_mma_m16n8k16_f16(float d[4], const unsigned a[4], const unsigned b[2],
                                                    const float c[4]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%10,%11,%12,%13};"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
}

__device__ __forceinline__ void fn_mma_m16n8k16_bf16(float d[4], const unsigned a[4], const unsigned b[2],
                                                     const float c[4]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%10,%11,%12,%13};"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
}

#endif

// acc += a · b (m16n8k16, f32 accumulators) for half type Tag: the f16 or bf16 instruction.
template <typename Tag>
struct fn_mma;
template <>
struct fn_mma<fn_f16_t> {
    static __device__ __forceinline__ void run(float* acc, const unsigned* a, const unsigned* b) {
        fn_mma_m16n8k16_f16(acc, a, b, acc);
    }
};
template <>
struct fn_mma<fn_bf16_t> {
    static __device__ __forceinline__ void run(float* acc, const unsigned* a, const unsigned* b) {
        fn_mma_m16n8k16_bf16(acc, a, b, acc);
    }
};

// ---- ldmatrix.sync.aligned.m8n8.x4.shared.b16 [.trans] ---------------------------------------
// Lanes 8i..8i+7 pass the (16-byte aligned) shared-memory addresses of the 8 rows of matrix i
// (8 b16 each). Lane l receives r[i] = M_i[l/4][2(l%4), 2(l%4)+1]; with .trans
// r[i] = M_i[2(l%4), 2(l%4)+1][l/4]. A warp collective.
#if defined(FLASHNECK_EMU)

__device__ __forceinline__ void fn_emu_ldmatrix(fn_emu::WarpOp op, unsigned r[4], const void* smem_row_ptr) {
    fn_emu::WarpPost post;
    memcpy(post.in, &smem_row_ptr, sizeof(smem_row_ptr));
    fn_emu_warp_collective(op, 0xffffffffu, 0, 32, &post, __FILE__, __LINE__);
    memcpy(r, post.out, 16);
}

__device__ __forceinline__ void fn_ldmatrix_x4(unsigned r[4], const void* smem_row_ptr) {
    fn_emu_ldmatrix(fn_emu::WarpOp::Ldmatrix4, r, smem_row_ptr);
}

__device__ __forceinline__ void fn_ldmatrix_x4_trans(unsigned r[4], const void* smem_row_ptr) {
    fn_emu_ldmatrix(fn_emu::WarpOp::Ldmatrix4Trans, r, smem_row_ptr);
}

#else  // NVRTC

__device__ __forceinline__ unsigned fn_smem_address(const void* p) {
    unsigned addr;
    asm("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(addr) : "l"(p));
    return addr;
}

__device__ __forceinline__ void fn_ldmatrix_x4(unsigned r[4], const void* smem_row_ptr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(fn_smem_address(smem_row_ptr)));
}

__device__ __forceinline__ void fn_ldmatrix_x4_trans(unsigned r[4], const void* smem_row_ptr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(fn_smem_address(smem_row_ptr)));
}

#endif

// ---- cp.async: 16-byte global -> shared copies in commit groups ------------------------------
// The emulator completes each copy as LATE as the PTX rules allow: at issue the destination is
// filled with 0xff bytes (NaN in every float type), and the data lands only at the first
// `fn_cp_async_wait<N>` whose group count covers it (its group is older than the N most recent
// ones). A missing or miscounted wait, or a refill of a buffer other threads still read, then
// reads NaN instead of passing unnoticed. It also checks the 16-byte alignment the instruction
// requires, and that no copy is still pending when its thread exits.
#if defined(FLASHNECK_EMU)

namespace fn_emu {
// The running thread's copies in flight (the runtime resets them when the thread starts and
// checks them when it exits).
inline CpAsync& cp_state() { return fn_emu_current->cp_async; }
}  // namespace fn_emu

__device__ __forceinline__ void fn_cp_async_16(void* smem_dst, const void* gmem_src) {
    if ((((unsigned long long)smem_dst | (unsigned long long)gmem_src) & 15u) != 0) {
        fn_emu_fault("cp.async.cg 16: source or destination is not 16-byte aligned");
    }
    fn_emu::CpAsync& me = fn_emu::cp_state();
    memset(smem_dst, 0xff, 16);  // poisoned until a wait covers the copy
    me.pending.push_back({smem_dst, gmem_src, me.committed});
}

__device__ __forceinline__ void fn_cp_async_commit() { fn_emu::cp_state().committed++; }

// Complete every copy of a group older than the N most recent committed groups (copies not yet
// committed belong to no group and stay in flight, as on the hardware).
template <int N>
__device__ __forceinline__ void fn_cp_async_wait() {
    fn_emu::CpAsync& me = fn_emu::cp_state();
    size_t kept = 0;
    for (size_t i = 0; i < me.pending.size(); ++i) {
        const fn_emu::CpPending c = me.pending[i];
        if (c.group + N < me.committed) {
            memcpy(c.dst, c.src, 16);
        } else {
            me.pending[kept++] = c;
        }
    }
    me.pending.resize(kept);
}

#else  // NVRTC

__device__ __forceinline__ void fn_cp_async_16(void* smem_dst, const void* gmem_src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(fn_smem_address(smem_dst)), "l"(gmem_src)
                 : "memory");
}

__device__ __forceinline__ void fn_cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }

template <int N>
__device__ __forceinline__ void fn_cp_async_wait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

#endif
