// Group-Rational KAN (SPEC §3): y = P(x) / Q(x) per channel group, and its fused backward.
//
// Tiling (forward and backward alike): the grid is flattened over (row tile, group). A block
// owns rows [tile * rows_per_tile, +rows_per_tile) of ONE group's channels, so it needs that
// group's coefficients only: every thread loads them once into registers, zero-padded to the
// maximum degrees (a[0..7], |b|[1..7]) so that every loop has a compile-time trip count and the
// arrays stay in registers. Inside the tile the threads walk the row segments with 16-byte
// vectors (4 f32 or 8 f16/bf16) when the host says the segments are 16-byte aligned, else
// element by element.
//
// Backward (FlashKAT): each thread accumulates its elements' da/db terms in registers, the block
// reduces them (warp shuffles, then shared memory across warps, always in the same order) and
// writes ONE partial per block: partials[tile][group][16]. grkan_reduce then sums the partials of
// each (group, coefficient) over the tiles in ascending order. No atomics: bitwise reproducible.
#include "common.cuh"

#define GRKAN_THREADS 256
#define GRKAN_MAX_A 8   // M + 1 <= 8
#define GRKAN_MAX_B 7   // N <= 7
#define GRKAN_PARTIAL 16 // floats per (tile, group) partial: da[0..8), db[0..7), one pad

// 16-byte vectors: 4 f32 or 8 f16/bf16 (common.cuh).
template <typename T> using grkan_vec = fn_vec16<T>;

// One group's coefficients for compile-time degrees (MA = M + 1 numerator and NB = N denominator
// coefficients, NB >= 1), zero-padded when the call's degrees are lower: a[i] for i <= M,
// babs[j] = |b_{j+1}| for j < N, and bsgn[j] = sgn(b_{j+1}) with sgn(±0) = +1 (SPEC §3). KAT's
// (M, N) = (5, 4) gets exact loops; any other call runs padded to (7, 7).
template <int MA, int NB>
struct grkan_coefs {
    float a[MA];
    float babs[NB];
    float bsgn[NB];
};

template <int MA, int NB>
__device__ __forceinline__ void grkan_load_coefs(grkan_coefs<MA, NB>& c, const float* __restrict__ a,
                                                 const float* __restrict__ b, int g, int m, int n) {
#pragma unroll
    for (int i = 0; i < MA; ++i) c.a[i] = i <= m ? a[g * (m + 1) + i] : 0.0f;
#pragma unroll
    for (int j = 0; j < NB; ++j) {
        float v = j < n ? b[g * n + j] : 0.0f;
        c.babs[j] = fabsf(v);
        c.bsgn[j] = v < 0.0f ? -1.0f : 1.0f;
    }
}

// y = P(x) / Q(x), Horner in x and |x| over the padded coefficients.
template <int MA, int NB>
__device__ __forceinline__ float grkan_value(const grkan_coefs<MA, NB>& c, float x) {
    float p = c.a[MA - 1];
#pragma unroll
    for (int i = MA - 2; i >= 0; --i) p = fmaf(p, x, c.a[i]);
    float ax = fabsf(x);
    float s = c.babs[NB - 1];
#pragma unroll
    for (int j = NB - 2; j >= 0; --j) s = fmaf(s, ax, c.babs[j]);
    float q = fmaf(s, ax, 1.0f);
    return p / q; // IEEE division: correct for every q (the kernel is memory-bound)
}

// The backward of one element: returns dx, adds this element's terms to da[], db[].
template <int MA, int NB>
__device__ __forceinline__ float grkan_grad(const grkan_coefs<MA, NB>& c, float x, float dy,
                                            float* da, float* db) {
    float ax = fabsf(x);
    // P and P' by Horner.
    float p = c.a[MA - 1];
    float dp = 0.0f;
#pragma unroll
    for (int i = MA - 2; i >= 0; --i) {
        dp = fmaf(dp, x, p);
        p = fmaf(p, x, c.a[i]);
    }
    // S = Σ |b_j| |x|^j / |x| and S' = Σ j |b_j| |x|^(j-1), by Horner in |x|.
    float s = c.babs[NB - 1];
    float ds = 0.0f;
#pragma unroll
    for (int j = NB - 2; j >= 0; --j) {
        ds = fmaf(ds, ax, s);
        s = fmaf(s, ax, c.babs[j]);
    }
    // Q = 1 + |x| S; Q' = sgn(x) (S + |x| dS/d|x|).
    float q = fmaf(s, ax, 1.0f);
    float dq_abs = fmaf(ds, ax, s);
    float dq = x < 0.0f ? -dq_abs : dq_abs;
    float inv_q = 1.0f / q; // IEEE division, as the forward
    float y_over_q = p * inv_q * inv_q; // P / Q²
    float dx = dy * (dp * inv_q - y_over_q * dq);
    // da_i += dy x^i / Q; db_j += -dy (P/Q²) sgn(b_j) |x|^j.
    float t = dy * inv_q;
#pragma unroll
    for (int i = 0; i < MA; ++i) {
        da[i] += t;
        t *= x;
    }
    float u = -dy * y_over_q;
#pragma unroll
    for (int j = 0; j < NB; ++j) {
        u *= ax;
        db[j] = fmaf(u, c.bsgn[j], db[j]);
    }
    return dx;
}

// The tile of block `bid`: its group and its first and last row.
struct grkan_tile {
    int g;
    long long row0, rows;
};
__device__ __forceinline__ grkan_tile grkan_tile_of(int groups, int n_rows, int rows_per_tile) {
    grkan_tile t;
    long long bid = blockIdx.x;
    long long tile = bid / groups;
    t.g = (int)(bid - tile * groups);
    t.row0 = tile * rows_per_tile;
    long long left = n_rows - t.row0;
    t.rows = left < rows_per_tile ? left : rows_per_tile;
    return t;
}

template <typename T, int MA, int NB>
__device__ __forceinline__ void grkan_forward_body(const typename fn_elem<T>::storage* __restrict__ x,
                                              const float* __restrict__ a,
                                              const float* __restrict__ b,
                                              typename fn_elem<T>::storage* __restrict__ y,
                                              long long n_rows, int channels, int groups, int m,
                                              int n, int rows_per_tile, int vectorized) {
    grkan_tile tile = grkan_tile_of(groups, n_rows, rows_per_tile);
    grkan_coefs<MA, NB> c;
    grkan_load_coefs(c, a, b, tile.g, m, n);
    const int width = channels / groups;
    const long long base = tile.row0 * channels + (long long)tile.g * width;
    if (vectorized) {
        const int V = grkan_vec<T>::N;
        const int vecs_per_row = width / V;
        const int total = (int)tile.rows * vecs_per_row;
        for (int e = threadIdx.x; e < total; e += blockDim.x) {
            const int r = e / vecs_per_row;
            const long long off = base + (long long)r * channels + (e - r * vecs_per_row) * V;
            float v[grkan_vec<T>::N];
            grkan_vec<T>::load(x + off, v);
#pragma unroll
            for (int i = 0; i < grkan_vec<T>::N; ++i) v[i] = grkan_value(c, v[i]);
            grkan_vec<T>::store(y + off, v);
        }
    } else {
        const int total = (int)tile.rows * width;
        for (int e = threadIdx.x; e < total; e += blockDim.x) {
            const int r = e / width;
            const long long off = base + (long long)r * channels + (e - r * width);
            fn_elem<T>::store(y, off, grkan_value(c, fn_elem<T>::load(x, off)));
        }
    }
}

template <typename T, int MA, int NB>
__device__ __forceinline__ void grkan_backward_body(const typename fn_elem<T>::storage* __restrict__ x,
                                               const float* __restrict__ a,
                                               const float* __restrict__ b,
                                               const typename fn_elem<T>::storage* __restrict__ dy,
                                               typename fn_elem<T>::storage* __restrict__ dx,
                                               float* __restrict__ partials, int n_rows,
                                               int channels, int groups, int m, int n,
                                               int rows_per_tile, int vectorized) {
    __shared__ float scratch[GRKAN_THREADS / 32];
    grkan_tile tile = grkan_tile_of(groups, n_rows, rows_per_tile);
    grkan_coefs<MA, NB> c;
    grkan_load_coefs(c, a, b, tile.g, m, n);
    float da[MA], db[NB];
#pragma unroll
    for (int i = 0; i < MA; ++i) da[i] = 0.0f;
#pragma unroll
    for (int j = 0; j < NB; ++j) db[j] = 0.0f;

    const int width = channels / groups;
    const long long base = tile.row0 * channels + (long long)tile.g * width;
    if (vectorized) {
        const int V = grkan_vec<T>::N;
        const int vecs_per_row = width / V;
        const int total = (int)tile.rows * vecs_per_row;
        for (int e = threadIdx.x; e < total; e += blockDim.x) {
            const int r = e / vecs_per_row;
            const long long off = base + (long long)r * channels + (e - r * vecs_per_row) * V;
            float xv[grkan_vec<T>::N], gv[grkan_vec<T>::N];
            grkan_vec<T>::load(x + off, xv);
            grkan_vec<T>::load(dy + off, gv);
#pragma unroll
            for (int i = 0; i < grkan_vec<T>::N; ++i) xv[i] = grkan_grad(c, xv[i], gv[i], da, db);
            grkan_vec<T>::store(dx + off, xv);
        }
    } else {
        const int total = (int)tile.rows * width;
        for (int e = threadIdx.x; e < total; e += blockDim.x) {
            const int r = e / width;
            const long long off = base + (long long)r * channels + (e - r * width);
            float g = grkan_grad(c, fn_elem<T>::load(x, off), fn_elem<T>::load(dy, off), da, db);
            fn_elem<T>::store(dx, off, g);
        }
    }

    // One partial per block: partials[(tile * groups + g) * 16 + k], k < M+1 for da, 8 + j for db.
    float* out = partials + (long long)blockIdx.x * GRKAN_PARTIAL;
#pragma unroll
    for (int i = 0; i < MA; ++i) {
        if (i > m) break; // uniform across the block: every thread leaves together
        float s = fn_block_sum<GRKAN_THREADS>(da[i], scratch);
        if (threadIdx.x == 0) out[i] = s;
    }
#pragma unroll
    for (int j = 0; j < NB; ++j) {
        if (j >= n) break;
        float s = fn_block_sum<GRKAN_THREADS>(db[j], scratch);
        if (threadIdx.x == 0) out[GRKAN_MAX_A + j] = s;
    }
}

// KAT's degrees (5, 4) with exact loops, anything else padded to (7, 7).
template <typename T>
__device__ __forceinline__ void grkan_forward(const typename fn_elem<T>::storage* __restrict__ x,
                                              const float* __restrict__ a,
                                              const float* __restrict__ b,
                                              typename fn_elem<T>::storage* __restrict__ y,
                                              int n_rows, int channels, int groups, int m, int n,
                                              int rows_per_tile, int vectorized) {
    if (m == 5 && n == 4)
        grkan_forward_body<T, 6, 4>(x, a, b, y, n_rows, channels, groups, m, n, rows_per_tile,
                                    vectorized);
    else
        grkan_forward_body<T, GRKAN_MAX_A, GRKAN_MAX_B>(x, a, b, y, n_rows, channels, groups, m,
                                                        n, rows_per_tile, vectorized);
}

template <typename T>
__device__ __forceinline__ void grkan_backward(const typename fn_elem<T>::storage* __restrict__ x,
                                               const float* __restrict__ a,
                                               const float* __restrict__ b,
                                               const typename fn_elem<T>::storage* __restrict__ dy,
                                               typename fn_elem<T>::storage* __restrict__ dx,
                                               float* __restrict__ partials, int n_rows,
                                               int channels, int groups, int m, int n,
                                               int rows_per_tile, int vectorized) {
    if (m == 5 && n == 4)
        grkan_backward_body<T, 6, 4>(x, a, b, dy, dx, partials, n_rows, channels, groups, m, n,
                                     rows_per_tile, vectorized);
    else
        grkan_backward_body<T, GRKAN_MAX_A, GRKAN_MAX_B>(x, a, b, dy, dx, partials, n_rows,
                                                         channels, groups, m, n, rows_per_tile,
                                                         vectorized);
}

// Sum the per-block partials of each (group, coefficient) over the tiles in a fixed order: one
// block per output; thread t adds tiles t, t + blockDim, ... in order, then the block sums the
// threads' values in a fixed order (fn_block_sum). Same shape, same order: bitwise reproducible.
// da[g, i] = Σ_t partials[t][g][i], db[g, j] = Σ_t partials[t][g][8 + j].
__device__ __forceinline__ void grkan_reduce_impl(const float* __restrict__ partials,
                                                  float* __restrict__ da, float* __restrict__ db,
                                                  int tiles, int groups, int m, int n) {
    __shared__ float scratch[GRKAN_THREADS / 32];
    const int per_group = m + 1 + n;
    const int k = blockIdx.x; // the grid has exactly groups * per_group blocks
    const int g = k / per_group, i = k - g * per_group;
    const int slot = i <= m ? i : GRKAN_MAX_A + (i - m - 1);
    float s = 0.0f;
    for (int t = threadIdx.x; t < tiles; t += blockDim.x)
        s += partials[((long long)t * groups + g) * GRKAN_PARTIAL + slot];
    s = fn_block_sum<GRKAN_THREADS>(s, scratch);
    if (threadIdx.x != 0) return;
    if (i <= m)
        da[g * (m + 1) + i] = s;
    else
        db[g * n + (i - m - 1)] = s;
}

// ---- the kernels, one per element type ----------------------------------------------------------
// Forward args: x, a, b, y, rows, channels, groups, M, N, rows_per_tile, vectorized (0/1).
// Backward args: x, a, b, dy, dx, partials [tiles * groups * 16], then as the forward.
// Grid: tiles * groups blocks of GRKAN_THREADS threads, tiles = ceil(rows / rows_per_tile).

#define GRKAN_FORWARD(SUFFIX, T, S, NAME)                                                         \
    extern "C" __global__ void __launch_bounds__(GRKAN_THREADS)                                    \
        NAME##SUFFIX(const S* __restrict__ x, const float* __restrict__ a,                         \
                     const float* __restrict__ b, S* __restrict__ y, int n_rows, int channels,     \
                     int groups, int m, int n, int rows_per_tile, int vectorized) {                \
        grkan_forward<T>(x, a, b, y, n_rows, channels, groups, m, n, rows_per_tile, vectorized);   \
    }
#define GRKAN_BACKWARD(SUFFIX, T, S, NAME)                                                        \
    extern "C" __global__ void __launch_bounds__(GRKAN_THREADS)                                    \
        NAME##SUFFIX(const S* __restrict__ x, const float* __restrict__ a,                         \
                     const float* __restrict__ b, const S* __restrict__ dy, S* __restrict__ dx,    \
                     float* __restrict__ partials, int n_rows, int channels, int groups, int m,    \
                     int n, int rows_per_tile, int vectorized) {                                   \
        grkan_backward<T>(x, a, b, dy, dx, partials, n_rows, channels, groups, m, n,               \
                          rows_per_tile, vectorized);                                              \
    }

FN_EACH_ELEMENT(GRKAN_FORWARD, grkan_forward)
FLASHNECK_EXPORT(grkan_forward_f32)
FLASHNECK_EXPORT(grkan_forward_f16)
FLASHNECK_EXPORT(grkan_forward_bf16)

FN_EACH_ELEMENT(GRKAN_BACKWARD, grkan_backward)
FLASHNECK_EXPORT(grkan_backward_f32)
FLASHNECK_EXPORT(grkan_backward_f16)
FLASHNECK_EXPORT(grkan_backward_bf16)

// Args: partials, da, db, tiles, groups, M, N. Grid: groups * (M + 1 + N) blocks of 256.
extern "C" __global__ void __launch_bounds__(GRKAN_THREADS)
    grkan_reduce(const float* __restrict__ partials, float* __restrict__ da, float* __restrict__ db,
                 int tiles, int groups, int m, int n) {
    grkan_reduce_impl(partials, da, db, tiles, groups, m, n);
}
FLASHNECK_EXPORT(grkan_reduce)
