// Gumbel-Softmax (SPEC §4): Philox4x32-10 noise, max, sum and normalisation fused, one row per
// warp (small K) or per block (large K), and the fused backward.
//
// Work unit: the QUAD. Flat elements 4c .. 4c+3 share one Philox call (counter c), so each thread
// walks the quads that overlap its row, draws the four words once, and masks the lanes that
// belong to the neighbouring rows. A quad is also an aligned 16-byte (f32) or 8-byte (f16/bf16)
// vector of the logits, loaded whole unless it runs past the end of the tensor.
//
// A row that fits (ceil((K + 3) / 4) <= threads * Q quads) is held in registers: the logits
// are read once, the noise drawn once, and the outputs written once. A longer row falls back to
// an online softmax over chunks of the row (running max and rescaled sum), then a second pass
// that recomputes the noise and writes the outputs.
#include "common.cuh"

#define GUMBEL_WARP_Q 8       // quads per thread held in registers, warp per row (K <= 1021 fit; the host sends K <= 1020)
#define GUMBEL_BLOCK_Q 4      // quads per thread held in registers, block per row (K <= 4093)
#define GUMBEL_BLOCK 256      // threads of a block-per-row launch
#define GUMBEL_WARP_ROWS 4    // rows (warps) per block of a warp-per-row launch

// ---- Philox4x32-10 (Salmon et al.), exactly as flashneck_core::philox ------------------------
struct gumbel_words {
    unsigned w[4];
};
__device__ __forceinline__ gumbel_words gumbel_philox(unsigned long long c, unsigned long long seed,
                                                      unsigned long long offset) {
    unsigned c0 = (unsigned)c, c1 = (unsigned)(c >> 32);
    unsigned c2 = (unsigned)offset, c3 = (unsigned)(offset >> 32);
    unsigned k0 = (unsigned)seed, k1 = (unsigned)(seed >> 32);
#pragma unroll
    for (int round = 0; round < 10; ++round) {
        if (round > 0) {
            k0 += 0x9E3779B9u;
            k1 += 0xBB67AE85u;
        }
        unsigned hi0 = __umulhi(0xD2511F53u, c0), lo0 = 0xD2511F53u * c0;
        unsigned hi1 = __umulhi(0xCD9E8D57u, c2), lo1 = 0xCD9E8D57u * c2;
        unsigned n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
        c0 = n0;
        c1 = lo1;
        c2 = n2;
        c3 = lo0;
    }
    gumbel_words r = {{c0, c1, c2, c3}};
    return r;
}

// g = -ln(-ln u), u = ((x >> 9) + 0.5) 2^-23, with -ln u = -log1p(-t), t = 1 - u (both exact).
// The inner log1pf is the accurate one (SPEC); the outer log takes e in [6e-8, 17], where the
// fast __logf's absolute error (~2e-7) is far inside the f32 tolerance, and saves the
// instructions that keep this kernel from being compute-bound.
__device__ __forceinline__ float gumbel_from_word(unsigned x) {
    float u = ((float)(x >> 9) + 0.5f) * (1.0f / 8388608.0f);
    float t = 1.0f - u;
    float e = -log1pf(-t);
    return -__logf(e);
}

// Exponentials of z - max <= 0 use __expf (ex2.approx): relative error ~1e-6 over the range
// where the softmax weight is not negligible, inside the f32 tolerance.

// ---- quad access to storage type S: 4 elements, 16 bytes (f32) or 8 (f16/bf16) (common.cuh)
template <typename T> using gumbel_quad = fn_vec<T, 4>;

// Load the lanes of quad q that lie in [lo, hi) (others: `fill`); whole when [4q, 4q+4) is in
// [0, total).
template <typename T>
__device__ __forceinline__ void gumbel_load(const typename fn_elem<T>::storage* p,
                                            unsigned long long q, unsigned long long lo,
                                            unsigned long long hi, unsigned long long total,
                                            float fill, float* v) {
    const unsigned long long n0 = 4 * q;
    if (n0 + 4 <= total) {
        gumbel_quad<T>::load(p + n0, v);
#pragma unroll
        for (int l = 0; l < 4; ++l)
            if (n0 + l < lo || n0 + l >= hi) v[l] = fill;
    } else {
#pragma unroll
        for (int l = 0; l < 4; ++l)
            v[l] = (n0 + l >= lo && n0 + l < hi) ? fn_elem<T>::load(p, n0 + l) : fill;
    }
}

// Store the lanes of quad q that lie in [lo, hi); whole when the quad lies inside the row.
template <typename T>
__device__ __forceinline__ void gumbel_store(typename fn_elem<T>::storage* p, unsigned long long q,
                                             unsigned long long lo, unsigned long long hi,
                                             const float* v) {
    const unsigned long long n0 = 4 * q;
    if (n0 >= lo && n0 + 4 <= hi) {
        gumbel_quad<T>::store(p + n0, v);
    } else {
#pragma unroll
        for (int l = 0; l < 4; ++l)
            if (n0 + l >= lo && n0 + l < hi) fn_elem<T>::store(p, n0 + l, v[l]);
    }
}

// ---- row reductions over THREADS threads (a warp, or the whole block) -------------------------
// Every thread gets the result. Block reductions combine the warps' results in warp order and end
// with a barrier, so `scratch` can be reused at once.
struct gumbel_ms {
    float m, s; // running max and sum of exp(z - m)
};
__device__ __forceinline__ gumbel_ms gumbel_ms_combine(gumbel_ms a, gumbel_ms b) {
    float m = fmaxf(a.m, b.m);
    float sa = a.s == 0.0f ? 0.0f : a.s * expf(a.m - m);
    float sb = b.s == 0.0f ? 0.0f : b.s * expf(b.m - m);
    gumbel_ms r = {m, sa + sb};
    return r;
}
struct gumbel_arg {
    float v;
    int k; // index in the row; ties go to the lower index
};
__device__ __forceinline__ gumbel_arg gumbel_arg_combine(gumbel_arg a, gumbel_arg b) {
    if (b.v > a.v || (b.v == a.v && b.k < a.k)) return b;
    return a;
}

template <int THREADS> struct gumbel_reduce {
    __device__ __forceinline__ static float sum(float v, float* scratch) {
        return fn_block_sum<THREADS>(v, scratch);
    }
    __device__ __forceinline__ static float max(float v, float* scratch) {
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
        if (THREADS == 32) return v;
        if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = v;
        __syncthreads();
        float m = -INFINITY;
        for (int w = 0; w < THREADS / 32; ++w) m = fmaxf(m, scratch[w]);
        __syncthreads();
        return m;
    }
    __device__ __forceinline__ static gumbel_ms ms(gumbel_ms v, float* scratch) {
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            gumbel_ms w = {__shfl_xor_sync(0xffffffffu, v.m, o), __shfl_xor_sync(0xffffffffu, v.s, o)};
            v = gumbel_ms_combine(v, w);
        }
        if (THREADS == 32) return v;
        if ((threadIdx.x & 31) == 0) {
            scratch[2 * (threadIdx.x >> 5)] = v.m;
            scratch[2 * (threadIdx.x >> 5) + 1] = v.s;
        }
        __syncthreads();
        gumbel_ms r = {-INFINITY, 0.0f};
        for (int w = 0; w < THREADS / 32; ++w) {
            gumbel_ms x = {scratch[2 * w], scratch[2 * w + 1]};
            r = gumbel_ms_combine(r, x);
        }
        __syncthreads();
        return r;
    }
    __device__ __forceinline__ static gumbel_arg arg(gumbel_arg v, float* scratch) {
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            gumbel_arg w = {__shfl_xor_sync(0xffffffffu, v.v, o), __shfl_xor_sync(0xffffffffu, v.k, o)};
            v = gumbel_arg_combine(v, w);
        }
        if (THREADS == 32) return v;
        if ((threadIdx.x & 31) == 0) {
            scratch[2 * (threadIdx.x >> 5)] = v.v;
            scratch[2 * (threadIdx.x >> 5) + 1] = __int_as_float(v.k);
        }
        __syncthreads();
        gumbel_arg r = {-INFINITY, 0x7fffffff};
        for (int w = 0; w < THREADS / 32; ++w) {
            gumbel_arg x = {scratch[2 * w], __float_as_int(scratch[2 * w + 1])};
            r = gumbel_arg_combine(r, x);
        }
        __syncthreads();
        return r;
    }
};

// The row this thread works on, its flat range [lo, hi), and its first quad.
struct gumbel_row {
    long long r;
    unsigned long long lo, hi, q0, quads;
    int t; // thread index within the row
};
template <int THREADS>
__device__ __forceinline__ gumbel_row gumbel_row_of(int classes) {
    gumbel_row w;
    w.r = (long long)blockIdx.x * (blockDim.x / THREADS) + threadIdx.x / THREADS;
    w.t = threadIdx.x % THREADS;
    w.lo = (unsigned long long)w.r * (unsigned long long)classes;
    w.hi = w.lo + classes;
    w.q0 = w.lo / 4;
    w.quads = (w.hi + 3) / 4 - w.q0;
    return w;
}

// z = (logit + g) / tau (as a product with 1/tau) for the lanes of quad q inside the row; -inf elsewhere.
template <typename T>
__device__ __forceinline__ void gumbel_z(const typename fn_elem<T>::storage* logits,
                                         unsigned long long q, const gumbel_row& w,
                                         unsigned long long total, float inv_tau,
                                         unsigned long long seed, unsigned long long offset,
                                         float* z) {
    gumbel_load<T>(logits, q, w.lo, w.hi, total, 0.0f, z);
    gumbel_words g = gumbel_philox(q, seed, offset);
#pragma unroll
    for (int l = 0; l < 4; ++l) {
        unsigned long long n = 4 * q + l;
        z[l] = (n >= w.lo && n < w.hi) ? (z[l] + gumbel_from_word(g.w[l])) * inv_tau : -INFINITY;
    }
}

// Write quad q of the outputs from the soft values ys (lanes outside the row are skipped).
template <typename T>
__device__ __forceinline__ void gumbel_write(typename fn_elem<T>::storage* y, float* y_soft,
                                             unsigned long long q, const gumbel_row& w,
                                             const float* ys, int hard, unsigned long long hot) {
    if (y_soft) gumbel_store<float>(y_soft, q, w.lo, w.hi, ys);
    if (hard) {
        // One-hot of the argmax: `hot` is its flat index.
        float h[4];
#pragma unroll
        for (int l = 0; l < 4; ++l) h[l] = 4 * q + l == hot ? 1.0f : 0.0f;
        gumbel_store<T>(y, q, w.lo, w.hi, h);
    } else {
        gumbel_store<T>(y, q, w.lo, w.hi, ys);
    }
}

template <typename T, int THREADS, int Q>
__device__ __forceinline__ void gumbel_forward(const typename fn_elem<T>::storage* __restrict__ logits,
                                               typename fn_elem<T>::storage* __restrict__ y,
                                               float* __restrict__ y_soft, int rows, int classes,
                                               float tau, unsigned long long seed,
                                               unsigned long long offset, int hard) {
    __shared__ float scratch[2 * (THREADS / 32)];
    const gumbel_row w = gumbel_row_of<THREADS>(classes);
    if (w.r >= rows) return; // whole warps only (warp-per-row); block-per-row grids are exact
    const unsigned long long total = (unsigned long long)rows * (unsigned long long)classes;
    const float inv_tau = 1.0f / tau;

    if (w.quads <= (unsigned long long)THREADS * Q) {
        // The row is resident in registers: z, then e = exp(z - max), then the outputs.
        float z[Q][4];
        float m = -INFINITY;
#pragma unroll
        for (int i = 0; i < Q; ++i) {
            unsigned long long j = (unsigned long long)w.t + (unsigned long long)i * THREADS;
            if (j < w.quads) {
                gumbel_z<T>(logits, w.q0 + j, w, total, inv_tau, seed, offset, z[i]);
            } else {
#pragma unroll
                for (int l = 0; l < 4; ++l) z[i][l] = -INFINITY;
            }
#pragma unroll
            for (int l = 0; l < 4; ++l) m = fmaxf(m, z[i][l]);
        }
        m = gumbel_reduce<THREADS>::max(m, scratch);
        float s = 0.0f;
#pragma unroll
        for (int i = 0; i < Q; ++i)
#pragma unroll
            for (int l = 0; l < 4; ++l) {
                z[i][l] = __expf(z[i][l] - m); // exp(-inf) = 0 for lanes outside the row
                s += z[i][l];
            }
        s = gumbel_reduce<THREADS>::sum(s, scratch);
        const float inv = 1.0f / s;
        gumbel_arg best = {-INFINITY, 0x7fffffff};
#pragma unroll
        for (int i = 0; i < Q; ++i) {
            unsigned long long j = (unsigned long long)w.t + (unsigned long long)i * THREADS;
#pragma unroll
            for (int l = 0; l < 4; ++l) {
                z[i][l] *= inv;
                unsigned long long n = 4 * (w.q0 + j) + l;
                if (hard && j < w.quads && n >= w.lo && n < w.hi) {
                    gumbel_arg c = {z[i][l], (int)(n - w.lo)};
                    best = gumbel_arg_combine(best, c);
                }
            }
        }
        unsigned long long hot = 0;
        if (hard) hot = w.lo + (unsigned)gumbel_reduce<THREADS>::arg(best, scratch).k;
#pragma unroll
        for (int i = 0; i < Q; ++i) {
            unsigned long long j = (unsigned long long)w.t + (unsigned long long)i * THREADS;
            if (j < w.quads) gumbel_write<T>(y, y_soft, w.q0 + j, w, z[i], hard, hot);
        }
        return;
    }

    // A long row: online softmax over the row, then a second pass that recomputes z.
    gumbel_ms acc = {-INFINITY, 0.0f};
#pragma unroll 1
    for (unsigned long long j = w.t; j < w.quads; j += THREADS) {
        float z[4];
        gumbel_z<T>(logits, w.q0 + j, w, total, inv_tau, seed, offset, z);
        float qm = fmaxf(fmaxf(z[0], z[1]), fmaxf(z[2], z[3]));
        float qs = 0.0f;
#pragma unroll
        for (int l = 0; l < 4; ++l) qs += __expf(z[l] - qm);
        gumbel_ms part = {qm, qs};
        acc = gumbel_ms_combine(acc, part);
    }
    acc = gumbel_reduce<THREADS>::ms(acc, scratch);
    const float inv = 1.0f / acc.s;
    unsigned long long hot = 0;
    if (hard) {
        gumbel_arg best = {-INFINITY, 0x7fffffff};
    #pragma unroll 1
    for (unsigned long long j = w.t; j < w.quads; j += THREADS) {
            float z[4];
            gumbel_z<T>(logits, w.q0 + j, w, total, inv_tau, seed, offset, z);
#pragma unroll
            for (int l = 0; l < 4; ++l) {
                unsigned long long n = 4 * (w.q0 + j) + l;
                if (n >= w.lo && n < w.hi) {
                    gumbel_arg c = {__expf(z[l] - acc.m) * inv, (int)(n - w.lo)};
                    best = gumbel_arg_combine(best, c);
                }
            }
        }
        hot = w.lo + (unsigned)gumbel_reduce<THREADS>::arg(best, scratch).k;
    }
#pragma unroll 1
    for (unsigned long long j = w.t; j < w.quads; j += THREADS) {
        float z[4];
        gumbel_z<T>(logits, w.q0 + j, w, total, inv_tau, seed, offset, z);
#pragma unroll
        for (int l = 0; l < 4; ++l) z[l] = __expf(z[l] - acc.m) * inv;
        gumbel_write<T>(y, y_soft, w.q0 + j, w, z, hard, hot);
    }
}

// dlogits = (1/tau) ys (dy - Σ ys dy), the row resident in registers when it fits.
template <typename T, int THREADS, int Q>
__device__ __forceinline__ void gumbel_backward(const float* __restrict__ y_soft,
                                                const typename fn_elem<T>::storage* __restrict__ dy,
                                                typename fn_elem<T>::storage* __restrict__ dlogits,
                                                int rows, int classes, float tau) {
    __shared__ float scratch[2 * (THREADS / 32)];
    const gumbel_row w = gumbel_row_of<THREADS>(classes);
    if (w.r >= rows) return;
    const unsigned long long total = (unsigned long long)rows * (unsigned long long)classes;
    const float inv_tau = 1.0f / tau;

    if (w.quads <= (unsigned long long)THREADS * Q) {
        float ys[Q][4], g[Q][4];
        float dot = 0.0f;
#pragma unroll
        for (int i = 0; i < Q; ++i) {
            unsigned long long j = (unsigned long long)w.t + (unsigned long long)i * THREADS;
            if (j < w.quads) {
                gumbel_load<float>(y_soft, w.q0 + j, w.lo, w.hi, total, 0.0f, ys[i]);
                gumbel_load<T>(dy, w.q0 + j, w.lo, w.hi, total, 0.0f, g[i]);
            } else {
#pragma unroll
                for (int l = 0; l < 4; ++l) ys[i][l] = g[i][l] = 0.0f;
            }
#pragma unroll
            for (int l = 0; l < 4; ++l) dot = fmaf(ys[i][l], g[i][l], dot);
        }
        dot = gumbel_reduce<THREADS>::sum(dot, scratch);
#pragma unroll
        for (int i = 0; i < Q; ++i) {
            unsigned long long j = (unsigned long long)w.t + (unsigned long long)i * THREADS;
            if (j < w.quads) {
#pragma unroll
                for (int l = 0; l < 4; ++l) g[i][l] = inv_tau * ys[i][l] * (g[i][l] - dot);
                gumbel_store<T>(dlogits, w.q0 + j, w.lo, w.hi, g[i]);
            }
        }
        return;
    }

    float dot = 0.0f;
#pragma unroll 1
    for (unsigned long long j = w.t; j < w.quads; j += THREADS) {
        float ys[4], g[4];
        gumbel_load<float>(y_soft, w.q0 + j, w.lo, w.hi, total, 0.0f, ys);
        gumbel_load<T>(dy, w.q0 + j, w.lo, w.hi, total, 0.0f, g);
#pragma unroll
        for (int l = 0; l < 4; ++l) dot = fmaf(ys[l], g[l], dot);
    }
    dot = gumbel_reduce<THREADS>::sum(dot, scratch);
#pragma unroll 1
    for (unsigned long long j = w.t; j < w.quads; j += THREADS) {
        float ys[4], g[4];
        gumbel_load<float>(y_soft, w.q0 + j, w.lo, w.hi, total, 0.0f, ys);
        gumbel_load<T>(dy, w.q0 + j, w.lo, w.hi, total, 0.0f, g);
#pragma unroll
        for (int l = 0; l < 4; ++l) g[l] = inv_tau * ys[l] * (g[l] - dot);
        gumbel_store<T>(dlogits, w.q0 + j, w.lo, w.hi, g);
    }
}

// ---- the kernels ----------------------------------------------------------------------------
// Forward args: logits, y, y_soft (may be null), rows, classes, tau, seed, offset, hard (0/1).
// Backward args: y_soft, dy, dlogits, rows, classes, tau.
// *_warp: GUMBEL_WARP_ROWS * 32 threads, one row per warp, grid ceil(rows / GUMBEL_WARP_ROWS).
// *_block: GUMBEL_BLOCK threads, one row per block, grid rows.

#define GUMBEL_FWD_ARGS(S)                                                                        \
    const S* __restrict__ logits, S* __restrict__ y, float* __restrict__ y_soft, int rows,       \
        int classes, float tau, unsigned long long seed, unsigned long long offset, int hard
#define GUMBEL_FWD_PASS logits, y, y_soft, rows, classes, tau, seed, offset, hard
#define GUMBEL_BWD_ARGS(S)                                                                        \
    const float* __restrict__ y_soft, const S* __restrict__ dy, S* __restrict__ dlogits,          \
        int rows, int classes, float tau
#define GUMBEL_BWD_PASS y_soft, dy, dlogits, rows, classes, tau

// One typed kernel of a (direction, shape) family: BOUND threads per block, THREADS per row, Q
// quads per thread held in registers.
#define GUMBEL_FORWARD(SUFFIX, T, S, NAME, BOUND, THREADS, Q)                                     \
    extern "C" __global__ void __launch_bounds__(BOUND) NAME##SUFFIX(GUMBEL_FWD_ARGS(S)) {         \
        gumbel_forward<T, THREADS, Q>(GUMBEL_FWD_PASS);                                            \
    }
#define GUMBEL_BACKWARD(SUFFIX, T, S, NAME, BOUND, THREADS, Q)                                    \
    extern "C" __global__ void __launch_bounds__(BOUND) NAME##SUFFIX(GUMBEL_BWD_ARGS(S)) {         \
        gumbel_backward<T, THREADS, Q>(GUMBEL_BWD_PASS);                                           \
    }
#define GUMBEL_WARP GUMBEL_WARP_ROWS * 32, 32, GUMBEL_WARP_Q
#define GUMBEL_BLOCK_PER_ROW GUMBEL_BLOCK, GUMBEL_BLOCK, GUMBEL_BLOCK_Q

FN_EACH_ELEMENT(GUMBEL_FORWARD, gumbel_forward_warp, GUMBEL_WARP)
FLASHNECK_EXPORT(gumbel_forward_warp_f32)
FLASHNECK_EXPORT(gumbel_forward_warp_f16)
FLASHNECK_EXPORT(gumbel_forward_warp_bf16)

FN_EACH_ELEMENT(GUMBEL_FORWARD, gumbel_forward_block, GUMBEL_BLOCK_PER_ROW)
FLASHNECK_EXPORT(gumbel_forward_block_f32)
FLASHNECK_EXPORT(gumbel_forward_block_f16)
FLASHNECK_EXPORT(gumbel_forward_block_bf16)

FN_EACH_ELEMENT(GUMBEL_BACKWARD, gumbel_backward_warp, GUMBEL_WARP)
FLASHNECK_EXPORT(gumbel_backward_warp_f32)
FLASHNECK_EXPORT(gumbel_backward_warp_f16)
FLASHNECK_EXPORT(gumbel_backward_warp_bf16)

FN_EACH_ELEMENT(GUMBEL_BACKWARD, gumbel_backward_block, GUMBEL_BLOCK_PER_ROW)
FLASHNECK_EXPORT(gumbel_backward_block_f32)
FLASHNECK_EXPORT(gumbel_backward_block_f16)
FLASHNECK_EXPORT(gumbel_backward_block_bf16)

// The raw noise of flat elements 0 .. n: one quad per thread, grid-stride.
// Args: out, n, seed, offset. Any grid of GUMBEL_BLOCK threads.
extern "C" __global__ void __launch_bounds__(GUMBEL_BLOCK)
    gumbel_noise(float* __restrict__ out, unsigned long long n, unsigned long long seed,
                 unsigned long long offset) {
    const unsigned long long quads = (n + 3) / 4;
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long q = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         q < quads; q += stride) {
        gumbel_words g = gumbel_philox(q, seed, offset);
        float v[4];
#pragma unroll
        for (int l = 0; l < 4; ++l) v[l] = gumbel_from_word(g.w[l]);
        gumbel_store<float>(out, q, 0, n, v);
    }
}
FLASHNECK_EXPORT(gumbel_noise)
