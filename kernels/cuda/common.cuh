// Device helpers shared by every kernel in kernels/cuda/*.cu (see /work/notes/CUDA_INTERFACE.md).
//
// Each helper has two bodies: inline PTX for NVRTC (this file then includes no header: NVRTC 13.0
// ships none) and a plain C++ body for the CPU emulator (-DFLASHNECK_EMU, docs/cuda-emulator.md),
// which implements the same instruction bit for bit where the PTX ISA defines the result.
#pragma once

#if defined(FLASHNECK_EMU)
#include "emu/cuda_emu.h"
#else
// Under NVRTC: exports are the kernels themselves; dynamic shared memory is one extern array of
// bytes (declared per kernel under one name so that kernels of different element types coexist).
#define FLASHNECK_EXPORT(name)
#define FN_DYNAMIC_SMEM(T, name)                                      \
    extern __shared__ __align__(16) unsigned char fn_dynamic_smem_raw[]; \
    T* name = reinterpret_cast<T*>(fn_dynamic_smem_raw)
#endif

// Template tags of the half types; their storage is `unsigned short`.
struct fn_f16_t {};
struct fn_bf16_t {};

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
// The emulator copies at issue time (a legal schedule of the asynchronous copy; it cannot show a
// missing wait) and checks the 16-byte alignment the instruction requires.
#if defined(FLASHNECK_EMU)

__device__ __forceinline__ void fn_cp_async_16(void* smem_dst, const void* gmem_src) {
    if ((((unsigned long long)smem_dst | (unsigned long long)gmem_src) & 15u) != 0) {
        fn_emu_fault("cp.async.cg 16: source or destination is not 16-byte aligned");
    }
    memcpy(smem_dst, gmem_src, 16);
}

__device__ __forceinline__ void fn_cp_async_commit() {}

template <int N>
__device__ __forceinline__ void fn_cp_async_wait() {}

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
