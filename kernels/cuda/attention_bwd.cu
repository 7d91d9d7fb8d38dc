// Attention backward (SPEC §1, §2), FlashAttention-2 style, deterministic (no atomics).
//
// Three kernels per call, each owning what it writes:
//   1. attn_bwd_delta_*: Δ_i = Σ_d dO_id·O_id per query row (f32 scratch), a warp per row.
//   2. attn_bwd_dkdv_*:  one block per (key block of 64 keys, kv head, batch). It walks the query
//      heads of its GQA group and, for each, the query blocks that see the key block (dense: the
//      causally visible ones; sparse: the transposed layout's list), recomputes P = exp(S − LSE)
//      and accumulates dV = Pᵀ dO and dK = scale · dSᵀ Q in f32 registers, written once.
//   3. attn_bwd_dq_*:    one block per (query block, query head, batch) over its visible or
//      selected key blocks: dQ = scale · dS K, written once.
// Every sum runs in a fixed order, so two runs give the same bits.
//
// Two implementations of 2. and 3.:
//   - SIMT (`_simt_`, exported for f32; the templates take any element type): 4 threads per row
//     of the block, each holding a quarter of the row's head dim in registers; dot products by
//     2 xor shuffles.
//   - Tensor cores (`_mma_`, f16/bf16): 4 warps each owning 16 rows of the block; mma.m16n8k16
//     with f32 accumulation, P and dS rounded to the element type as mma operands.
// Masking everywhere: keys >= Lk and queries >= Lq take no part, causal is bottom-right aligned
// (j <= i + Lk − Lq), rows with LSE = −inf (no visible key) get P = 0. Tiles of the streamed side
// are staged in dynamic shared memory (the host passes its size, <= 48 KiB).
#include "common.cuh"

#define ATTN_BWD_BLOCK 64     // rows of a query block and keys of a key block (SPEC §2)
#define ATTN_BWD_THREADS 256  // SIMT kernels: 64 rows × 4 threads
#define ATTN_BWD_MMA_THREADS 128  // tensor-core kernels: 4 warps × 16 rows
#define ATTN_BWD_DELTA_ROWS 8     // delta kernel: rows (warps) per block

// An empty row's LSE (−inf) as +inf, so that exp(s − lse) = 0 there instead of NaN.
__device__ __forceinline__ float attn_bwd_lse(float l) { return l == -INFINITY ? INFINITY : l; }

// Whether query row i sees key j (j < Lk is the caller's business).
__device__ __forceinline__ bool attn_bwd_visible(int causal, long long i, long long j, int len_q, int len_k) {
    return !causal || j <= i + len_k - len_q;
}

// A list of blocks to visit: a row of a layout, or (idx = null) the range first..first+count.
struct attn_bwd_list {
    const unsigned* idx;
    int first;
    int count;
    __device__ __forceinline__ int at(int n) const { return idx ? (int)idx[n] : first + n; }
};

// Row `row` of a layout (counts [rows], indices [rows, max_blocks]): its blocks in order.
__device__ __forceinline__ attn_bwd_list attn_bwd_layout_row(const unsigned* counts, const unsigned* indices,
                                                             int max_blocks, long long row) {
    attn_bwd_list l;
    l.idx = indices + row * max_blocks;
    l.first = 0;
    l.count = (int)counts[row];
    return l;
}

// The query blocks that take part in key block kb for (batch, query head) row `bh`: the row
// (bh, kb) of the transposed layout, or, dense, every query block holding a row that sees a key
// of the block (all of them without causal).
__device__ __forceinline__ attn_bwd_list attn_bwd_query_blocks(const unsigned* counts_t, const unsigned* indices_t,
                                                               int max_blocks_t, long long bh, int kb, int len_q,
                                                               int len_k, int causal) {
    const int n_kb = (len_k + ATTN_BWD_BLOCK - 1) / ATTN_BWD_BLOCK;
    if (counts_t) return attn_bwd_layout_row(counts_t, indices_t, max_blocks_t, bh * n_kb + kb);
    attn_bwd_list l;
    l.idx = nullptr;
    // The first row that sees key kb·64: i >= kb·64 − Lk + Lq.
    long long first_row = causal ? (long long)kb * ATTN_BWD_BLOCK - len_k + len_q : 0;
    if (first_row < 0) first_row = 0;
    if (first_row >= len_q) {
        l.first = 0;
        l.count = 0;
    } else {
        l.first = (int)(first_row / ATTN_BWD_BLOCK);
        l.count = (len_q + ATTN_BWD_BLOCK - 1) / ATTN_BWD_BLOCK - l.first;
    }
    return l;
}

// The key blocks query block qb of row `bh` attends to: its layout row, or, dense, the blocks
// holding a key its last row sees (BlockLayout::causal).
__device__ __forceinline__ attn_bwd_list attn_bwd_key_blocks(const unsigned* counts, const unsigned* indices,
                                                             int max_blocks, long long bh, int qb, int len_q,
                                                             int len_k, int causal) {
    const int n_qb = (len_q + ATTN_BWD_BLOCK - 1) / ATTN_BWD_BLOCK;
    if (counts) return attn_bwd_layout_row(counts, indices, max_blocks, bh * n_qb + qb);
    attn_bwd_list l;
    l.idx = nullptr;
    l.first = 0;
    l.count = fn_visible_key_blocks(qb, len_q, len_k, causal);
    return l;
}

// ---- 1. Δ = rowsum(dO ⊙ O) ----------------------------------------------------------------------
// A warp per row, lanes strided over the head dim, then a fixed xor butterfly.
template <typename T>
__device__ __forceinline__ void attn_bwd_delta(const typename fn_elem<T>::storage* __restrict__ o,
                                               const typename fn_elem<T>::storage* __restrict__ d_o,
                                               float* __restrict__ delta, int rows, int dv) {
    const int row = blockIdx.x * ATTN_BWD_DELTA_ROWS + (threadIdx.x >> 5);
    if (row >= rows) return;  // the whole warp leaves together
    const int lane = threadIdx.x & 31;
    const long long base = (long long)row * dv;
    float acc = 0.0f;
    for (int d = lane; d < dv; d += 32) acc += fn_elem<T>::load(o, base + d) * fn_elem<T>::load(d_o, base + d);
    acc = fn_warp_sum(acc);
    if (lane == 0) delta[row] = acc;
}

#define ATTN_BWD_DELTA(SUFFIX, T, S, NAME)                                                              \
    extern "C" __global__ void __launch_bounds__(32 * ATTN_BWD_DELTA_ROWS)                              \
        NAME##SUFFIX(const S* __restrict__ o, const S* __restrict__ d_o, float* __restrict__ delta,    \
                     int rows, int dv) {                                                                \
        attn_bwd_delta<T>(o, d_o, delta, rows, dv);                                                     \
    }
FN_EACH_ELEMENT(ATTN_BWD_DELTA, attn_bwd_delta)
FLASHNECK_EXPORT(attn_bwd_delta_f32)
FLASHNECK_EXPORT(attn_bwd_delta_f16)
FLASHNECK_EXPORT(attn_bwd_delta_bf16)

// ---- 2./3. SIMT ---------------------------------------------------------------------------------
// Thread t owns row t / 4 of the block and the quarter t % 4 of its head dim (common.cuh's
// fn_quarter_*: D / 16 chunks of 4 consecutive elements, one conflict-free broadcast per warp).
// Streamed tiles: 4096 / D rows of two operands as f32 (32 KiB).

// Stage `rows` rows (from row `first` of a [*, D] tensor) of a and b as f32 in shared memory.
template <typename T, int D>
__device__ __forceinline__ void attn_bwd_simt_stage(const typename fn_elem<T>::storage* __restrict__ a,
                                                    const typename fn_elem<T>::storage* __restrict__ b,
                                                    long long first, int rows, float* sa, float* sb) {
    for (int x = threadIdx.x; x < rows * (D / 4); x += ATTN_BWD_THREADS) {
        const int r = x / (D / 4), c = (x % (D / 4)) * 4;
        float va[4], vb[4];
        fn_vec<T, 4>::load(a + (first + r) * D + c, va);
        fn_vec<T, 4>::load(b + (first + r) * D + c, vb);
        *reinterpret_cast<float4*>(sa + r * D + c) = make_float4(va[0], va[1], va[2], va[3]);
        *reinterpret_cast<float4*>(sb + r * D + c) = make_float4(vb[0], vb[1], vb[2], vb[3]);
    }
}

// The two dot products of a row pair, x·sx and y·sy, over the full head dim: each thread's
// quarter, then the 4 threads of the row summed by a fixed xor butterfly (same bits in each).
template <int D>
__device__ __forceinline__ void attn_bwd_simt_dots(const float (&x)[D / 16][4], const float (&y)[D / 16][4],
                                                   const float* sx, const float* sy, int quarter, float& dx,
                                                   float& dy) {
    float a = fn_quarter_dot<D>(x, sx, quarter);
    float b = fn_quarter_dot<D>(y, sy, quarter);
    a += __shfl_xor_sync(0xffffffffu, a, 1);
    b += __shfl_xor_sync(0xffffffffu, b, 1);
    a += __shfl_xor_sync(0xffffffffu, a, 2);
    b += __shfl_xor_sync(0xffffffffu, b, 2);
    dx = a;
    dy = b;
}

template <typename T, int D>
__device__ __forceinline__ void attn_bwd_simt_store_row(typename fn_elem<T>::storage* __restrict__ p, long long row,
                                                        int quarter, const float (&acc)[D / 16][4], float mul) {
#pragma unroll
    for (int c = 0; c < D / 16; ++c) {
        float v[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) v[e] = mul * acc[c][e];
        fn_vec<T, 4>::store(p + row * D + fn_quarter_col(quarter, c), v);
    }
}

// dK, dV of key block blockIdx.x of kv head blockIdx.y, batch blockIdx.z.
template <typename T, int D>
__device__ __forceinline__ void attn_bwd_dkdv_simt(
    const typename fn_elem<T>::storage* __restrict__ q, const typename fn_elem<T>::storage* __restrict__ k,
    const typename fn_elem<T>::storage* __restrict__ v, const typename fn_elem<T>::storage* __restrict__ d_o,
    const float* __restrict__ lse, const float* __restrict__ delta, typename fn_elem<T>::storage* __restrict__ dk,
    typename fn_elem<T>::storage* __restrict__ dv, const unsigned* __restrict__ counts_t,
    const unsigned* __restrict__ indices_t, int max_blocks_t, int heads_q, int heads_kv, int len_q, int len_k,
    float scale, int causal) {
    constexpr int BQ = 4096 / D;  // staged query rows
    FN_DYNAMIC_SMEM(float, smem);
    float* sq = smem;
    float* sdo = smem + BQ * D;
    float* slse = sdo + BQ * D;
    float* sdelta = slse + BQ;

    const int kb = blockIdx.x, hk = blockIdx.y, b = blockIdx.z;
    const int quarter = threadIdx.x & 3;
    const int j = kb * ATTN_BWD_BLOCK + (threadIdx.x >> 2);
    const bool key_ok = j < len_k;
    const long long key_row = (long long)(b * heads_kv + hk) * len_k + j;

    float kr[D / 16][4], vr[D / 16][4], dka[D / 16][4], dva[D / 16][4];
    fn_quarter_load<T, D>(k, key_row, key_ok, quarter, kr);
    fn_quarter_load<T, D>(v, key_row, key_ok, quarter, vr);
#pragma unroll
    for (int c = 0; c < D / 16; ++c)
#pragma unroll
        for (int e = 0; e < 4; ++e) dka[c][e] = dva[c][e] = 0.0f;

    const int group = heads_q / heads_kv;
    for (int g = 0; g < group; ++g) {
        const long long bh = (long long)b * heads_q + hk * group + g;
        const attn_bwd_list list =
            attn_bwd_query_blocks(counts_t, indices_t, max_blocks_t, bh, kb, len_q, len_k, causal);
        for (int n = 0; n < list.count; ++n) {
            const int q0 = list.at(n) * ATTN_BWD_BLOCK;
            const int m = min(ATTN_BWD_BLOCK, len_q - q0);
            for (int t0 = 0; t0 < m; t0 += BQ) {
                const int rows = min(BQ, m - t0);
                const long long first = bh * len_q + q0 + t0;
                __syncthreads();  // the previous tile is consumed
                attn_bwd_simt_stage<T, D>(q, d_o, first, rows, sq, sdo);
                for (int x = threadIdx.x; x < rows; x += ATTN_BWD_THREADS) {
                    slse[x] = attn_bwd_lse(lse[first + x]);
                    sdelta[x] = delta[first + x];
                }
                __syncthreads();
                for (int i = 0; i < rows; ++i) {
                    float s, dp;
                    attn_bwd_simt_dots<D>(kr, vr, sq + i * D, sdo + i * D, quarter, s, dp);
                    const bool vis = key_ok && attn_bwd_visible(causal, q0 + t0 + i, j, len_q, len_k);
                    const float p = vis ? expf(s * scale - slse[i]) : 0.0f;
                    if (p != 0.0f) {
                        fn_quarter_axpy<D>(dva, p, sdo + i * D, quarter);
                        fn_quarter_axpy<D>(dka, p * (dp - sdelta[i]), sq + i * D, quarter);
                    }
                }
            }
        }
    }
    if (key_ok) {
        attn_bwd_simt_store_row<T, D>(dk, key_row, quarter, dka, scale);
        attn_bwd_simt_store_row<T, D>(dv, key_row, quarter, dva, 1.0f);
    }
}

// dQ of query block blockIdx.x of query head blockIdx.y, batch blockIdx.z.
template <typename T, int D>
__device__ __forceinline__ void attn_bwd_dq_simt(
    const typename fn_elem<T>::storage* __restrict__ q, const typename fn_elem<T>::storage* __restrict__ k,
    const typename fn_elem<T>::storage* __restrict__ v, const typename fn_elem<T>::storage* __restrict__ d_o,
    const float* __restrict__ lse, const float* __restrict__ delta, typename fn_elem<T>::storage* __restrict__ dq,
    const unsigned* __restrict__ counts, const unsigned* __restrict__ indices, int max_blocks, int heads_q,
    int heads_kv, int len_q, int len_k, float scale, int causal) {
    constexpr int BK = 4096 / D;  // staged keys
    FN_DYNAMIC_SMEM(float, smem);
    float* sk = smem;
    float* sv = smem + BK * D;

    const int qb = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    const int quarter = threadIdx.x & 3;
    const int i = qb * ATTN_BWD_BLOCK + (threadIdx.x >> 2);
    const bool row_ok = i < len_q;
    const long long bh = (long long)b * heads_q + h;
    const long long bhk = (long long)b * heads_kv + h / (heads_q / heads_kv);
    const long long q_row = bh * len_q + i;

    float qr[D / 16][4], dor[D / 16][4], dqa[D / 16][4];
    fn_quarter_load<T, D>(q, q_row, row_ok, quarter, qr);
    fn_quarter_load<T, D>(d_o, q_row, row_ok, quarter, dor);
#pragma unroll
    for (int c = 0; c < D / 16; ++c)
#pragma unroll
        for (int e = 0; e < 4; ++e) dqa[c][e] = 0.0f;
    const float l = row_ok ? attn_bwd_lse(lse[q_row]) : INFINITY;
    const float dl = row_ok ? delta[q_row] : 0.0f;

    const attn_bwd_list list = attn_bwd_key_blocks(counts, indices, max_blocks, bh, qb, len_q, len_k, causal);
    for (int n = 0; n < list.count; ++n) {
        const int k0 = list.at(n) * ATTN_BWD_BLOCK;
        const int m = min(ATTN_BWD_BLOCK, len_k - k0);
        for (int t0 = 0; t0 < m; t0 += BK) {
            const int rows = min(BK, m - t0);
            __syncthreads();  // the previous tile is consumed
            attn_bwd_simt_stage<T, D>(k, v, bhk * len_k + k0 + t0, rows, sk, sv);
            __syncthreads();
            for (int jj = 0; jj < rows; ++jj) {
                float s, dp;
                attn_bwd_simt_dots<D>(qr, dor, sk + jj * D, sv + jj * D, quarter, s, dp);
                const bool vis = row_ok && attn_bwd_visible(causal, i, k0 + t0 + jj, len_q, len_k);
                const float p = vis ? expf(s * scale - l) : 0.0f;
                if (p != 0.0f) fn_quarter_axpy<D>(dqa, p * (dp - dl), sk + jj * D, quarter);
            }
        }
    }
    if (row_ok) attn_bwd_simt_store_row<T, D>(dq, q_row, quarter, dqa, scale);
}

// The typed kernels: NAME_<dtype>_d<D>.
#define ATTN_BWD_DKDV_SIMT(SUFFIX, T, S, NAME, D)                                                        \
    extern "C" __global__ void __launch_bounds__(ATTN_BWD_THREADS) NAME##SUFFIX##_d##D(                  \
        const S* __restrict__ q, const S* __restrict__ k, const S* __restrict__ v, const S* __restrict__ d_o, \
        const float* __restrict__ lse, const float* __restrict__ delta, S* __restrict__ dk,               \
        S* __restrict__ dv, const unsigned* __restrict__ counts_t, const unsigned* __restrict__ indices_t, \
        int max_blocks_t, int batch, int heads_q, int heads_kv, int len_q, int len_k, float scale,         \
        int causal) {                                                                                     \
        attn_bwd_dkdv_simt<T, D>(q, k, v, d_o, lse, delta, dk, dv, counts_t, indices_t, max_blocks_t,     \
                                 heads_q, heads_kv, len_q, len_k, scale, causal);                         \
    }
#define ATTN_BWD_DQ_SIMT(SUFFIX, T, S, NAME, D)                                                          \
    extern "C" __global__ void __launch_bounds__(ATTN_BWD_THREADS) NAME##SUFFIX##_d##D(                  \
        const S* __restrict__ q, const S* __restrict__ k, const S* __restrict__ v, const S* __restrict__ d_o, \
        const float* __restrict__ lse, const float* __restrict__ delta, S* __restrict__ dq,               \
        const unsigned* __restrict__ counts, const unsigned* __restrict__ indices, int max_blocks,        \
        int batch, int heads_q, int heads_kv, int len_q, int len_k, float scale, int causal) {            \
        attn_bwd_dq_simt<T, D>(q, k, v, d_o, lse, delta, dq, counts, indices, max_blocks, heads_q,        \
                               heads_kv, len_q, len_k, scale, causal);                                    \
    }

// f32 only: f16 and bf16 run the tensor-core kernels below.
ATTN_BWD_DKDV_SIMT(_f32, float, float, attn_bwd_dkdv_simt, 64)
ATTN_BWD_DKDV_SIMT(_f32, float, float, attn_bwd_dkdv_simt, 128)
ATTN_BWD_DQ_SIMT(_f32, float, float, attn_bwd_dq_simt, 64)
ATTN_BWD_DQ_SIMT(_f32, float, float, attn_bwd_dq_simt, 128)
FLASHNECK_EXPORT(attn_bwd_dkdv_simt_f32_d64)
FLASHNECK_EXPORT(attn_bwd_dkdv_simt_f32_d128)
FLASHNECK_EXPORT(attn_bwd_dq_simt_f32_d64)
FLASHNECK_EXPORT(attn_bwd_dq_simt_f32_d128)

// ---- 2./3. tensor cores (f16, bf16) -------------------------------------------------------------
// 4 warps; warp w owns rows 16w .. 16w+15 of the block's 64 own rows (keys for dK/dV, queries for
// dQ), staged once in shared memory. The other side streams through shared memory in tiles of
// TR rows (32 for D = 64, 16 for D = 128, so that 2·64 + 2·TR padded rows fit in 48 KiB and the
// accumulators fit the register file). Staged rows are D + 8 elements apart: ldmatrix reads of
// 8 rows then hit 8 distinct 16-byte bank groups.
// The mma operands (fragment layouts in common.cuh), with R the warp's 16 own rows:
//   scores   S(R × TR)   = own · streamedᵀ : A = own rows (ldmatrix), B = streamed rows (ldmatrix)
//   products X(R × D)  += F(R × TR) · streamed : A = F from the score accumulators, rounded to
//            the element type (the accumulator layout of two n-tiles is the A layout of one
//            k-step), B = streamed rows (ldmatrix.trans).

template <int D>
struct attn_bwd_mma_dims {
    static const int TR = D == 64 ? 32 : 16;  // streamed rows per tile
    static const int RS = D + 8;              // staged row stride, in elements
};

// Stage rows first .. first+n of a [*, D] tensor as rows 0..R of a padded tile; rows n..R are
// zero. 16-byte loads and stores.
template <int D, int R>
__device__ __forceinline__ void attn_bwd_mma_stage(const unsigned short* __restrict__ src, long long first, int n,
                                                   unsigned short* dst) {
    constexpr int CH = D / 8;
    for (int x = threadIdx.x; x < R * CH; x += ATTN_BWD_MMA_THREADS) {
        const int r = x / CH, c = (x % CH) * 8;
        uint4 val = make_uint4(0u, 0u, 0u, 0u);
        if (r < n) val = *reinterpret_cast<const uint4*>(src + (first + r) * D + c);
        *reinterpret_cast<uint4*>(dst + r * attn_bwd_mma_dims<D>::RS + c) = val;
    }
}

// A fragment (16 × 16) at rows row0.., columns 16·kk.. of a staged tile.
template <int D>
__device__ __forceinline__ void attn_bwd_ld_a(unsigned (&a)[4], const unsigned short* s, int row0, int kk) {
    const int lane = threadIdx.x & 31;
    fn_ldmatrix_x4(a, s + (row0 + (lane & 15)) * attn_bwd_mma_dims<D>::RS + kk * 16 + (lane >> 4) * 8);
}

// B fragments of n-tiles nt, nt+1 at k-step kk with B[k][n] = s[n][k] (rows of s are n):
// b[0..1] for nt, b[2..3] for nt+1.
template <int D>
__device__ __forceinline__ void attn_bwd_ld_b_rows(unsigned (&b)[4], const unsigned short* s, int nt, int kk) {
    const int lane = threadIdx.x & 31, m = lane >> 3;
    fn_ldmatrix_x4(b, s + ((nt + (m >> 1)) * 8 + (lane & 7)) * attn_bwd_mma_dims<D>::RS + kk * 16 + (m & 1) * 8);
}

// B fragments of n-tiles nt, nt+1 at k-step kq with B[k][n] = s[k][n] (rows of s are k).
template <int D>
__device__ __forceinline__ void attn_bwd_ld_b_cols(unsigned (&b)[4], const unsigned short* s, int kq, int nt) {
    const int lane = threadIdx.x & 31, m = lane >> 3;
    fn_ldmatrix_x4_trans(b, s + (kq * 16 + (m & 1) * 8 + (lane & 7)) * attn_bwd_mma_dims<D>::RS + (nt + (m >> 1)) * 8);
}

// sa += own(R) · aᵀ and pa += own2(R) · bᵀ over the head dim, for the TR streamed rows.
template <typename Tag, int D>
__device__ __forceinline__ void attn_bwd_mma_scores(const unsigned short* own, const unsigned short* own2,
                                                    const unsigned short* st, const unsigned short* st2, int row0,
                                                    float (&sa)[attn_bwd_mma_dims<D>::TR / 8][4],
                                                    float (&pa)[attn_bwd_mma_dims<D>::TR / 8][4]) {
    constexpr int TR = attn_bwd_mma_dims<D>::TR;
#pragma unroll
    for (int nt = 0; nt < TR / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) sa[nt][e] = pa[nt][e] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
        unsigned a[4], a2[4];
        attn_bwd_ld_a<D>(a, own, row0, kk);
        attn_bwd_ld_a<D>(a2, own2, row0, kk);
#pragma unroll
        for (int np = 0; np < TR / 16; ++np) {
            unsigned b[4], b2[4];
            attn_bwd_ld_b_rows<D>(b, st, 2 * np, kk);
            attn_bwd_ld_b_rows<D>(b2, st2, 2 * np, kk);
            fn_mma<Tag>::run(sa[2 * np], a, b);
            fn_mma<Tag>::run(sa[2 * np + 1], a, b + 2);
            fn_mma<Tag>::run(pa[2 * np], a2, b2);
            fn_mma<Tag>::run(pa[2 * np + 1], a2, b2 + 2);
        }
    }
}

// The A fragment of k-step kq of a score-shaped accumulator, rounded to the element type.
template <typename Tag, int NT>
__device__ __forceinline__ void attn_bwd_mma_a_from(unsigned (&a)[4], const float (&x)[NT][4], int kq) {
    a[0] = fn_pack2<Tag>(x[2 * kq][0], x[2 * kq][1]);
    a[1] = fn_pack2<Tag>(x[2 * kq][2], x[2 * kq][3]);
    a[2] = fn_pack2<Tag>(x[2 * kq + 1][0], x[2 * kq + 1][1]);
    a[3] = fn_pack2<Tag>(x[2 * kq + 1][2], x[2 * kq + 1][3]);
}

// Rows row_lo and row_lo + 8 of a warp's (16 × D) accumulator, times mul, to out[row][0..D).
template <typename Tag, int D>
__device__ __forceinline__ void attn_bwd_mma_store(unsigned short* __restrict__ out, long long row_lo, bool ok_lo,
                                                   bool ok_hi, const float (&acc)[D / 8][4], float mul) {
    const int t = threadIdx.x & 3;
#pragma unroll
    for (int nt = 0; nt < D / 8; ++nt) {
        const int col = nt * 8 + 2 * t;
        if (ok_lo)
            *reinterpret_cast<unsigned*>(out + row_lo * D + col) =
                fn_pack2<Tag>(mul * acc[nt][0], mul * acc[nt][1]);
        if (ok_hi)
            *reinterpret_cast<unsigned*>(out + (row_lo + 8) * D + col) =
                fn_pack2<Tag>(mul * acc[nt][2], mul * acc[nt][3]);
    }
}

template <int D>
__device__ __forceinline__ void attn_bwd_mma_zero(float (&acc)[D / 8][4]) {
#pragma unroll
    for (int nt = 0; nt < D / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[nt][e] = 0.0f;
}

// dK, dV of key block blockIdx.x of kv head blockIdx.y, batch blockIdx.z; warp w owns keys
// 16w.. of the block, streams query tiles: Sᵀ = K Qᵀ, dPᵀ = V dOᵀ, dV += Pᵀ dO, dK += dSᵀ Q.
template <typename Tag, int D>
__device__ __forceinline__ void attn_bwd_dkdv_mma(
    const unsigned short* __restrict__ q, const unsigned short* __restrict__ k, const unsigned short* __restrict__ v,
    const unsigned short* __restrict__ d_o, const float* __restrict__ lse, const float* __restrict__ delta,
    unsigned short* __restrict__ dk, unsigned short* __restrict__ dv, const unsigned* __restrict__ counts_t,
    const unsigned* __restrict__ indices_t, int max_blocks_t, int heads_q, int heads_kv, int len_q, int len_k,
    float scale, int causal) {
    constexpr int TR = attn_bwd_mma_dims<D>::TR, RS = attn_bwd_mma_dims<D>::RS;
    FN_DYNAMIC_SMEM(unsigned short, smem);
    unsigned short* sk = smem;
    unsigned short* sv = sk + ATTN_BWD_BLOCK * RS;
    unsigned short* sq = sv + ATTN_BWD_BLOCK * RS;
    unsigned short* sdo = sq + TR * RS;
    float* slse = reinterpret_cast<float*>(sdo + TR * RS);
    float* sdelta = slse + TR;

    const int kb = blockIdx.x, hk = blockIdx.y, b = blockIdx.z;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int k0 = kb * ATTN_BWD_BLOCK;
    const long long key_first = (long long)(b * heads_kv + hk) * len_k + k0;
    attn_bwd_mma_stage<D, ATTN_BWD_BLOCK>(k, key_first, min(ATTN_BWD_BLOCK, len_k - k0), sk);
    attn_bwd_mma_stage<D, ATTN_BWD_BLOCK>(v, key_first, min(ATTN_BWD_BLOCK, len_k - k0), sv);
    const int j_lo = k0 + warp * 16 + g;  // this thread's keys: j_lo and j_lo + 8

    float dka[D / 8][4], dva[D / 8][4];
    attn_bwd_mma_zero<D>(dka);
    attn_bwd_mma_zero<D>(dva);
    const int group = heads_q / heads_kv;
    for (int gi = 0; gi < group; ++gi) {
        const long long bh = (long long)b * heads_q + hk * group + gi;
        const attn_bwd_list list =
            attn_bwd_query_blocks(counts_t, indices_t, max_blocks_t, bh, kb, len_q, len_k, causal);
        for (int n = 0; n < list.count; ++n) {
            const int q0 = list.at(n) * ATTN_BWD_BLOCK;
            const int m = min(ATTN_BWD_BLOCK, len_q - q0);
            for (int t0 = 0; t0 < m; t0 += TR) {
                const int rows = min(TR, m - t0);
                const long long first = bh * len_q + q0 + t0;
                __syncthreads();  // the previous tile is consumed (and K, V are staged)
                attn_bwd_mma_stage<D, TR>(q, first, rows, sq);
                attn_bwd_mma_stage<D, TR>(d_o, first, rows, sdo);
                for (int x = threadIdx.x; x < TR; x += ATTN_BWD_MMA_THREADS) {
                    slse[x] = x < rows ? attn_bwd_lse(lse[first + x]) : INFINITY;
                    sdelta[x] = x < rows ? delta[first + x] : 0.0f;
                }
                __syncthreads();
                float sa[TR / 8][4], pa[TR / 8][4];  // Sᵀ then P; dPᵀ then dSᵀ
                attn_bwd_mma_scores<Tag, D>(sk, sv, sq, sdo, warp * 16, sa, pa);
#pragma unroll
                for (int nt = 0; nt < TR / 8; ++nt)
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const int j = j_lo + (e >> 1) * 8, col = nt * 8 + 2 * t + (e & 1);
                        const bool vis = j < len_k && attn_bwd_visible(causal, q0 + t0 + col, j, len_q, len_k);
                        const float p = vis ? expf(sa[nt][e] * scale - slse[col]) : 0.0f;
                        pa[nt][e] = p * (pa[nt][e] - sdelta[col]);
                        sa[nt][e] = p;
                    }
#pragma unroll
                for (int kq = 0; kq < TR / 16; ++kq) {
                    unsigned ap[4], ad[4];
                    attn_bwd_mma_a_from<Tag, TR / 8>(ap, sa, kq);
                    attn_bwd_mma_a_from<Tag, TR / 8>(ad, pa, kq);
#pragma unroll
                    for (int np = 0; np < D / 16; ++np) {
                        unsigned bo[4], bq[4];
                        attn_bwd_ld_b_cols<D>(bo, sdo, kq, 2 * np);
                        attn_bwd_ld_b_cols<D>(bq, sq, kq, 2 * np);
                        fn_mma<Tag>::run(dva[2 * np], ap, bo);
                        fn_mma<Tag>::run(dva[2 * np + 1], ap, bo + 2);
                        fn_mma<Tag>::run(dka[2 * np], ad, bq);
                        fn_mma<Tag>::run(dka[2 * np + 1], ad, bq + 2);
                    }
                }
            }
        }
    }
    const long long row_lo = key_first + warp * 16 + g;
    attn_bwd_mma_store<Tag, D>(dk, row_lo, j_lo < len_k, j_lo + 8 < len_k, dka, scale);
    attn_bwd_mma_store<Tag, D>(dv, row_lo, j_lo < len_k, j_lo + 8 < len_k, dva, 1.0f);
}

// dQ of query block blockIdx.x of query head blockIdx.y, batch blockIdx.z; warp w owns queries
// 16w.. of the block, streams key tiles: S = Q Kᵀ, dP = dO Vᵀ, dQ += dS K.
template <typename Tag, int D>
__device__ __forceinline__ void attn_bwd_dq_mma(
    const unsigned short* __restrict__ q, const unsigned short* __restrict__ k, const unsigned short* __restrict__ v,
    const unsigned short* __restrict__ d_o, const float* __restrict__ lse, const float* __restrict__ delta,
    unsigned short* __restrict__ dq, const unsigned* __restrict__ counts, const unsigned* __restrict__ indices,
    int max_blocks, int heads_q, int heads_kv, int len_q, int len_k, float scale, int causal) {
    constexpr int TR = attn_bwd_mma_dims<D>::TR, RS = attn_bwd_mma_dims<D>::RS;
    FN_DYNAMIC_SMEM(unsigned short, smem);
    unsigned short* sq = smem;
    unsigned short* sdo = sq + ATTN_BWD_BLOCK * RS;
    unsigned short* sk = sdo + ATTN_BWD_BLOCK * RS;
    unsigned short* sv = sk + TR * RS;

    const int qb = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int q0 = qb * ATTN_BWD_BLOCK;
    const long long bh = (long long)b * heads_q + h;
    const long long bhk = (long long)b * heads_kv + h / (heads_q / heads_kv);
    attn_bwd_mma_stage<D, ATTN_BWD_BLOCK>(q, bh * len_q + q0, min(ATTN_BWD_BLOCK, len_q - q0), sq);
    attn_bwd_mma_stage<D, ATTN_BWD_BLOCK>(d_o, bh * len_q + q0, min(ATTN_BWD_BLOCK, len_q - q0), sdo);
    const int i_lo = q0 + warp * 16 + g;  // this thread's rows: i_lo and i_lo + 8
    const bool ok_lo = i_lo < len_q, ok_hi = i_lo + 8 < len_q;
    const float l_lo = ok_lo ? attn_bwd_lse(lse[bh * len_q + i_lo]) : INFINITY;
    const float l_hi = ok_hi ? attn_bwd_lse(lse[bh * len_q + i_lo + 8]) : INFINITY;
    const float d_lo = ok_lo ? delta[bh * len_q + i_lo] : 0.0f;
    const float d_hi = ok_hi ? delta[bh * len_q + i_lo + 8] : 0.0f;

    float dqa[D / 8][4];
    attn_bwd_mma_zero<D>(dqa);
    const attn_bwd_list list = attn_bwd_key_blocks(counts, indices, max_blocks, bh, qb, len_q, len_k, causal);
    for (int n = 0; n < list.count; ++n) {
        const int k0 = list.at(n) * ATTN_BWD_BLOCK;
        const int m = min(ATTN_BWD_BLOCK, len_k - k0);
        for (int t0 = 0; t0 < m; t0 += TR) {
            const int rows = min(TR, m - t0);
            __syncthreads();  // the previous tile is consumed (and Q, dO are staged)
            attn_bwd_mma_stage<D, TR>(k, bhk * len_k + k0 + t0, rows, sk);
            attn_bwd_mma_stage<D, TR>(v, bhk * len_k + k0 + t0, rows, sv);
            __syncthreads();
            float sa[TR / 8][4], pa[TR / 8][4];  // S then P; dP then dS
            attn_bwd_mma_scores<Tag, D>(sq, sdo, sk, sv, warp * 16, sa, pa);
#pragma unroll
            for (int nt = 0; nt < TR / 8; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int col = nt * 8 + 2 * t + (e & 1), j = k0 + t0 + col;
                    const bool hi = e >= 2;
                    const bool vis = col < rows && attn_bwd_visible(causal, i_lo + (hi ? 8 : 0), j, len_q, len_k);
                    const float p = vis ? expf(sa[nt][e] * scale - (hi ? l_hi : l_lo)) : 0.0f;
                    pa[nt][e] = p * (pa[nt][e] - (hi ? d_hi : d_lo));
                }
#pragma unroll
            for (int kq = 0; kq < TR / 16; ++kq) {
                unsigned ad[4];
                attn_bwd_mma_a_from<Tag, TR / 8>(ad, pa, kq);
#pragma unroll
                for (int np = 0; np < D / 16; ++np) {
                    unsigned bk[4];
                    attn_bwd_ld_b_cols<D>(bk, sk, kq, 2 * np);
                    fn_mma<Tag>::run(dqa[2 * np], ad, bk);
                    fn_mma<Tag>::run(dqa[2 * np + 1], ad, bk + 2);
                }
            }
        }
    }
    attn_bwd_mma_store<Tag, D>(dq, bh * len_q + i_lo, ok_lo, ok_hi, dqa, scale);
}

// The typed kernels (f16, bf16): NAME_<dtype>_d<D>.
#define ATTN_BWD_DKDV_MMA(SUFFIX, T, NAME, D)                                                            \
    extern "C" __global__ void __launch_bounds__(ATTN_BWD_MMA_THREADS, 1) NAME##SUFFIX##_d##D(              \
        const unsigned short* __restrict__ q, const unsigned short* __restrict__ k,                      \
        const unsigned short* __restrict__ v, const unsigned short* __restrict__ d_o,                    \
        const float* __restrict__ lse, const float* __restrict__ delta, unsigned short* __restrict__ dk,  \
        unsigned short* __restrict__ dv, const unsigned* __restrict__ counts_t,                           \
        const unsigned* __restrict__ indices_t, int max_blocks_t, int batch, int heads_q, int heads_kv,   \
        int len_q, int len_k, float scale, int causal) {                                                  \
        attn_bwd_dkdv_mma<T, D>(q, k, v, d_o, lse, delta, dk, dv, counts_t, indices_t, max_blocks_t,      \
                                heads_q, heads_kv, len_q, len_k, scale, causal);                          \
    }
#define ATTN_BWD_DQ_MMA(SUFFIX, T, NAME, D)                                                              \
    extern "C" __global__ void __launch_bounds__(ATTN_BWD_MMA_THREADS, 1) NAME##SUFFIX##_d##D(              \
        const unsigned short* __restrict__ q, const unsigned short* __restrict__ k,                      \
        const unsigned short* __restrict__ v, const unsigned short* __restrict__ d_o,                    \
        const float* __restrict__ lse, const float* __restrict__ delta, unsigned short* __restrict__ dq,  \
        const unsigned* __restrict__ counts, const unsigned* __restrict__ indices, int max_blocks,        \
        int batch, int heads_q, int heads_kv, int len_q, int len_k, float scale, int causal) {            \
        attn_bwd_dq_mma<T, D>(q, k, v, d_o, lse, delta, dq, counts, indices, max_blocks, heads_q,         \
                              heads_kv, len_q, len_k, scale, causal);                                     \
    }

ATTN_BWD_DKDV_MMA(_f16, fn_f16_t, attn_bwd_dkdv_mma, 64)
ATTN_BWD_DKDV_MMA(_bf16, fn_bf16_t, attn_bwd_dkdv_mma, 64)
ATTN_BWD_DKDV_MMA(_f16, fn_f16_t, attn_bwd_dkdv_mma, 128)
ATTN_BWD_DKDV_MMA(_bf16, fn_bf16_t, attn_bwd_dkdv_mma, 128)
ATTN_BWD_DQ_MMA(_f16, fn_f16_t, attn_bwd_dq_mma, 64)
ATTN_BWD_DQ_MMA(_bf16, fn_bf16_t, attn_bwd_dq_mma, 64)
ATTN_BWD_DQ_MMA(_f16, fn_f16_t, attn_bwd_dq_mma, 128)
ATTN_BWD_DQ_MMA(_bf16, fn_bf16_t, attn_bwd_dq_mma, 128)
FLASHNECK_EXPORT(attn_bwd_dkdv_mma_f16_d64)
FLASHNECK_EXPORT(attn_bwd_dkdv_mma_bf16_d64)
FLASHNECK_EXPORT(attn_bwd_dkdv_mma_f16_d128)
FLASHNECK_EXPORT(attn_bwd_dkdv_mma_bf16_d128)
FLASHNECK_EXPORT(attn_bwd_dq_mma_f16_d64)
FLASHNECK_EXPORT(attn_bwd_dq_mma_bf16_d64)
FLASHNECK_EXPORT(attn_bwd_dq_mma_f16_d128)
FLASHNECK_EXPORT(attn_bwd_dq_mma_bf16_d128)
