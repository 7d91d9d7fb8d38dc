// Attention forward (SPEC §1, §2), FlashAttention-2 style: dense and block-sparse in one kernel,
// with the Re-ttention epilogue o <- rho * o + R (sparse only; lse is reported before it).
//
// Grid (nQB, Hq, B): a block owns query block qb (64 rows) of one (b, hq), reading kv head
// hq / (Hq / Hkv). It walks key blocks of 64 keys: with a null `counts` pointer (dense) every
// block holding a key some row of qb may see (0 .. ceil(visible_keys(last row) / 64)), else the
// layout's list counts[b, hq, qb] / indices[b, hq, qb, :]. Both paths run the same per-block code,
// so dense attention equals sparse attention on the full layout bit for bit. Inside a block the
// element mask (key < Lk, causal bottom-right `j <= i + Lk - Lq`) applies where the block may hold
// invisible keys. Online softmax in f32; a row that saw no key writes o = 0 and lse = -inf.
//
// f16 / bf16 (attention_fwd_mma): 4 warps × 16 query rows. Q (64 × D) is staged in shared memory
// once and kept as mma A fragments in registers; each key block's K and V tiles (64 × D, rows
// past Lk zero-filled) are staged by cp.async, one stage each, pipelined: the next K copy runs
// under this block's softmax and P·V, the next V copy under the next S. S (16 × 64 per warp)
// comes from mma.m16n8k16 with K fragments by ldmatrix; P = exp(S - m) is rounded to the element
// type in registers and multiplied by V (ldmatrix .trans) into the f32 O accumulator. Row max and
// sum combine over the quad of lanes holding a row (shuffles). Shared: 2 × 64 × (D + 8) halves.
//
// f32 (attention_fwd_f32, SIMT, no tf32: SPEC's 1e-4 excludes it): 4 threads per query row, each
// owning a quarter of q and o in registers as D / 16 chunks of 4 consecutive dims (fn_quarter_*,
// as the SIMT backward), so staged K and V rows are read 16 bytes at a time; K and V are staged 32
// keys at a time (2 chunks per key block); a score is a quad-shuffle sum of 4 partial dot products.
#include "common.cuh"

#define ATT_BLOCK 64
#define ATT_MMA_THREADS 128
#define ATT_F32_THREADS 256
#define ATT_F32_CHUNK 32

// Whether keys [key0, key0 + n) may hold a key invisible to some row >= row0 (mask needed).
__device__ __forceinline__ bool att_needs_mask(int key0, int n, int row0, int len_q, int len_k,
                                               int causal) {
    if (key0 + n > len_k) return true;
    return causal && (long long)key0 + n - 1 > (long long)row0 + len_k - len_q;
}

__device__ __forceinline__ bool att_visible(int row, int key, int len_q, int len_k, int causal) {
    return key < len_k && (!causal || (long long)key <= (long long)row + len_k - len_q);
}

// The key blocks of one (b, hq, qb): the layout's list, or 0 .. n-1 for dense attention.
struct att_blocks {
    const unsigned* list; // null: dense
    int n;
    __device__ __forceinline__ int at(int i) const { return list ? (int)list[i] : i; }
};

__device__ __forceinline__ att_blocks att_blocks_of(const unsigned* counts, const unsigned* indices,
                                                    int max_blocks, long long row, int qb, int len_q,
                                                    int len_k, int causal) {
    att_blocks r;
    if (counts) {
        r.list = indices + row * max_blocks;
        r.n = (int)counts[row];
    } else {
        r.list = 0;
        r.n = fn_visible_key_blocks(qb, len_q, len_k, causal);
    }
    return r;
}

// ================================ f16 / bf16: tensor cores ======================================

// Stage rows [row0, row0 + 64) of a [len, D] matrix into a 64 × (D + 8) shared tile with
// 16-byte cp.async copies; rows past `len` are zero-filled (plain stores).
template <int D>
__device__ __forceinline__ void att_stage_tile(unsigned short* tile, const unsigned short* g, int row0,
                                               int len) {
    constexpr int STRIDE = D + 8;
    constexpr int CHUNKS = D / 8;  // 16-byte chunks per row
    // Not unrolled: the copies' addresses would otherwise stay live across the pipelined loop
    // (at D = 64 on sm_90 that spilled past ptxas's 168-register target of 3 blocks per SM).
#pragma unroll 1
    for (int i = 0; i < ATT_BLOCK * CHUNKS / ATT_MMA_THREADS; ++i) {
        const int c = (int)threadIdx.x + i * ATT_MMA_THREADS;
        const int r = c / CHUNKS, col = (c % CHUNKS) * 8;
        unsigned short* dst = tile + r * STRIDE + col;
        if (row0 + r < len) {
            fn_cp_async_16(dst, g + (long long)(row0 + r) * D + col);
        } else {
            *reinterpret_cast<uint4*>(dst) = make_uint4(0u, 0u, 0u, 0u);
        }
    }
}

template <typename T, int D>
__device__ __forceinline__ void attention_fwd_mma(
    const unsigned short* __restrict__ q, const unsigned short* __restrict__ k,
    const unsigned short* __restrict__ v, unsigned short* __restrict__ o, float* __restrict__ lse,
    const unsigned* __restrict__ counts, const unsigned* __restrict__ indices, int max_blocks,
    const float* __restrict__ row_scale, const unsigned short* __restrict__ residual, int heads_q,
    int heads_kv, int len_q, int len_k, float scale, int causal) {
    constexpr int STRIDE = D + 8;   // halves; 16-byte aligned rows, conflict-free ldmatrix
    constexpr int KSTEPS = D / 16;  // k-steps of S = Q Kᵀ
    constexpr int DTILES = D / 8;   // 8-column tiles of O
    __shared__ __align__(16) unsigned short ks[ATT_BLOCK * STRIDE];  // Q first, then K tiles
    __shared__ __align__(16) unsigned short vs[ATT_BLOCK * STRIDE];

    const int qb = blockIdx.x, hq = blockIdx.y, b = blockIdx.z;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    const long long bh = (long long)b * heads_q + hq;
    const long long bhk = (long long)b * heads_kv + hq / (heads_q / heads_kv);
    const int q0 = qb * ATT_BLOCK;
    const unsigned short* kh = k + bhk * len_k * D;
    const unsigned short* vh = v + bhk * len_k * D;

    // Q fragments of this warp's 16 rows (rows past Lq are zeros and never stored).
    att_stage_tile<D>(ks, q + bh * len_q * D, q0, len_q);
    fn_cp_async_commit();
    fn_cp_async_wait<0>();
    __syncthreads();
    unsigned qf[KSTEPS][4];
#pragma unroll
    for (int kk = 0; kk < KSTEPS; ++kk) {
        const int r = warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
        fn_ldmatrix_x4(qf[kk], ks + r * STRIDE + kk * 16 + (lane >> 4) * 8);
    }

    float oacc[DTILES][4];
#pragma unroll
    for (int i = 0; i < DTILES; ++i) oacc[i][0] = oacc[i][1] = oacc[i][2] = oacc[i][3] = 0.0f;
    float m[2] = {-INFINITY, -INFINITY};  // rows g and g + 8 of the warp
    float l[2] = {0.0f, 0.0f};            // this lane's part of the row sums
    const int row_lo = q0 + warp * 16 + g;

    const att_blocks blocks =
        att_blocks_of(counts, indices, max_blocks, bh * ((len_q + ATT_BLOCK - 1) / ATT_BLOCK) + qb, qb,
                      len_q, len_k, causal);
    // Pipeline: K of the next key block is copied while this block's softmax and P·V run, V of
    // the next block while its S runs. Commit groups in issue order: K(0), V(0), then per
    // iteration K(it+1), V(it+1) (empty groups past the end), so "all but the newest group
    // landed" (wait<1>) means K(it) at the top of an iteration and V(it) before P·V.
    const float scale_log2 = scale * 1.4426950408889634f;  // exp(x) = exp2(x · log2 e)
    __syncthreads();  // every warp has its Q fragments: ks is free
    if (blocks.n > 0) {
        att_stage_tile<D>(ks, kh, blocks.at(0) * ATT_BLOCK, len_k);
        fn_cp_async_commit();
        att_stage_tile<D>(vs, vh, blocks.at(0) * ATT_BLOCK, len_k);
        fn_cp_async_commit();
    }
    for (int it = 0; it < blocks.n; ++it) {
        const int key0 = blocks.at(it) * ATT_BLOCK;
        const bool more = it + 1 < blocks.n;
        const int next0 = more ? blocks.at(it + 1) * ATT_BLOCK : 0;
        fn_cp_async_wait<1>();  // K(it) has landed (V(it) may be in flight)
        __syncthreads();        // ... for every thread's copies, and the zero-filled rows

        // S = Q Kᵀ: 8 tiles of 8 keys; s[j][0..1] row g, s[j][2..3] row g + 8, keys 8j + 2t + e.
        float s[8][4];
#pragma unroll
        for (int j = 0; j < 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < KSTEPS; ++kk) {
#pragma unroll
            for (int np = 0; np < 4; ++np) {
                const int r = np * 16 + (lane & 7) + (lane >> 4) * 8;
                unsigned kf[4];
                fn_ldmatrix_x4(kf, ks + r * STRIDE + kk * 16 + ((lane >> 3) & 1) * 8);
                const unsigned b0[2] = {kf[0], kf[1]};
                const unsigned b1[2] = {kf[2], kf[3]};
                fn_mma<T>::run(s[2 * np], qf[kk], b0);
                fn_mma<T>::run(s[2 * np + 1], qf[kk], b1);
            }
        }
        __syncthreads();  // every warp is done with K(it): stage K(it + 1)
        if (more) att_stage_tile<D>(ks, kh, next0, len_k);
        fn_cp_async_commit();

        // Scores in log2 units: s · scale · log2 e.
        const bool masked = att_needs_mask(key0, ATT_BLOCK, q0, len_q, len_k, causal);
#pragma unroll
        for (int j = 0; j < 8; ++j) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                s[j][e] *= scale_log2;
                if (masked && !att_visible(row_lo + (e >> 1) * 8, key0 + 8 * j + 2 * t + (e & 1), len_q,
                                           len_k, causal))
                    s[j][e] = -INFINITY;
            }
        }

        // Online softmax: new row max, rescale of O and l, P = exp(S - max).
        float alpha[2], m_use[2];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            float mx = -INFINITY;
#pragma unroll
            for (int j = 0; j < 8; ++j) mx = fmaxf(mx, fmaxf(s[j][2 * h], s[j][2 * h + 1]));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            const float m_new = fmaxf(m[h], mx);
            // A row with no visible key so far keeps m = -inf: exponentiate against 0 instead
            // (every p is exp(-inf) = 0), never exp(-inf - -inf).
            m_use[h] = m_new == -INFINITY ? 0.0f : m_new;
            alpha[h] = exp2f(m[h] - m_use[h]);
            m[h] = m_new;
        }
        float rowsum[2] = {0.0f, 0.0f};
#pragma unroll
        for (int j = 0; j < 8; ++j) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                s[j][e] = exp2f(s[j][e] - m_use[e >> 1]);
                rowsum[e >> 1] += s[j][e];
            }
        }
#pragma unroll
        for (int h = 0; h < 2; ++h) l[h] = l[h] * alpha[h] + rowsum[h];
#pragma unroll
        for (int i = 0; i < DTILES; ++i) {
            oacc[i][0] *= alpha[0];
            oacc[i][1] *= alpha[0];
            oacc[i][2] *= alpha[1];
            oacc[i][3] *= alpha[1];
        }

        fn_cp_async_wait<1>();  // V(it) has landed (K(it + 1) may be in flight)
        __syncthreads();
        // O += P V: P's accumulator layout is the A fragment layout of the next mma.
#pragma unroll
        for (int kstep = 0; kstep < 4; ++kstep) {
            unsigned pf[4];
            pf[0] = fn_pack2<T>(s[2 * kstep][0], s[2 * kstep][1]);
            pf[1] = fn_pack2<T>(s[2 * kstep][2], s[2 * kstep][3]);
            pf[2] = fn_pack2<T>(s[2 * kstep + 1][0], s[2 * kstep + 1][1]);
            pf[3] = fn_pack2<T>(s[2 * kstep + 1][2], s[2 * kstep + 1][3]);
#pragma unroll
            for (int dp = 0; dp < D / 16; ++dp) {
                const int r = kstep * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
                unsigned vf[4];
                fn_ldmatrix_x4_trans(vf, vs + r * STRIDE + dp * 16 + (lane >> 4) * 8);
                const unsigned b0[2] = {vf[0], vf[1]};
                const unsigned b1[2] = {vf[2], vf[3]};
                fn_mma<T>::run(oacc[2 * dp], pf, b0);
                fn_mma<T>::run(oacc[2 * dp + 1], pf, b1);
            }
        }
        __syncthreads();  // every warp is done with V(it): stage V(it + 1)
        if (more) att_stage_tile<D>(vs, vh, next0, len_k);
        fn_cp_async_commit();
    }
    fn_cp_async_wait<0>();  // nothing left in flight (only empty groups can remain)

    // Normalise, epilogue, store. Each quad holds a row: lane t has columns 8i + 2t, 8i + 2t + 1.
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        float sum = l[h];
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        const int row = row_lo + 8 * h;
        if (row >= len_q) continue;
        const long long orow = bh * len_q + row;
        const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
        // m is in log2 units: lse = (m + log2 l) · ln 2.
        if (t == 0) lse[orow] = sum > 0.0f ? (m[h] + log2f(sum)) * 0.6931471805599453f : -INFINITY;
        const float rho = row_scale ? row_scale[orow] : 1.0f;
#pragma unroll
        for (int i = 0; i < DTILES; ++i) {
            const long long at = orow * D + 8 * i + 2 * t;
            float o0 = oacc[i][2 * h] * inv, o1 = oacc[i][2 * h + 1] * inv;
            if (row_scale) {
                o0 *= rho;
                o1 *= rho;
            }
            if (residual) {
                const unsigned rw = *reinterpret_cast<const unsigned*>(residual + at);
                o0 += fn_half<T>::to_f32((unsigned short)(rw & 0xffffu));
                o1 += fn_half<T>::to_f32((unsigned short)(rw >> 16));
            }
            *reinterpret_cast<unsigned*>(o + at) = fn_pack2<T>(o0, o1);
        }
    }
}

// ================================ f32: SIMT ======================================================
template <int D>
__device__ __forceinline__ void att_stage_f32(float* tile, const float* g, int row0, int len) {
    constexpr int VECS = D / 4;  // float4 per row
#pragma unroll
    for (int i = 0; i < ATT_F32_CHUNK * VECS / ATT_F32_THREADS; ++i) {
        const int c = (int)threadIdx.x + i * ATT_F32_THREADS;
        const int r = c / VECS, col = (c % VECS) * 4;
        float4 val = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (row0 + r < len) val = *reinterpret_cast<const float4*>(g + (long long)(row0 + r) * D + col);
        *reinterpret_cast<float4*>(tile + r * D + col) = val;
    }
}

template <int D>
__device__ __forceinline__ void attention_fwd_f32(
    const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
    float* __restrict__ o, float* __restrict__ lse, const unsigned* __restrict__ counts,
    const unsigned* __restrict__ indices, int max_blocks, const float* __restrict__ row_scale,
    const float* __restrict__ residual, int heads_q, int heads_kv, int len_q, int len_k, float scale,
    int causal) {
    __shared__ __align__(16) float ks[ATT_F32_CHUNK * D];
    __shared__ __align__(16) float vs[ATT_F32_CHUNK * D];

    const int qb = blockIdx.x, hq = blockIdx.y, b = blockIdx.z;
    const int t = threadIdx.x & 3;
    const int row = qb * ATT_BLOCK + (int)(threadIdx.x >> 2);
    const long long bh = (long long)b * heads_q + hq;
    const long long bhk = (long long)b * heads_kv + hq / (heads_q / heads_kv);
    const int q0 = qb * ATT_BLOCK;
    const float* kh = k + bhk * len_k * D;
    const float* vh = v + bhk * len_k * D;
    const long long orow = bh * len_q + row;

    // The thread's quarter of its row's q and o (common.cuh's fn_quarter_*: 16-byte loads of
    // staged K and V rows, 4 multiply-adds each).
    float qv[D / 16][4], ov[D / 16][4];
    fn_quarter_load<float, D>(q, orow, row < len_q, t, qv);
#pragma unroll
    for (int c = 0; c < D / 16; ++c)
#pragma unroll
        for (int e = 0; e < 4; ++e) ov[c][e] = 0.0f;
    float m = -INFINITY, l = 0.0f;

    const att_blocks blocks =
        att_blocks_of(counts, indices, max_blocks, bh * ((len_q + ATT_BLOCK - 1) / ATT_BLOCK) + qb, qb,
                      len_q, len_k, causal);
    for (int it = 0; it < blocks.n; ++it) {
        const int kb = blocks.at(it);
        for (int half = 0; half < ATT_BLOCK / ATT_F32_CHUNK; ++half) {
            const int key0 = kb * ATT_BLOCK + half * ATT_F32_CHUNK;
            if (key0 >= len_k) break;  // nothing visible past Lk (uniform over the block)
            __syncthreads();
            att_stage_f32<D>(ks, kh, key0, len_k);
            att_stage_f32<D>(vs, vh, key0, len_k);
            __syncthreads();
            const bool masked = att_needs_mask(key0, ATT_F32_CHUNK, q0, len_q, len_k, causal);
            float s[ATT_F32_CHUNK];
            float mx = -INFINITY;
#pragma unroll
            for (int j = 0; j < ATT_F32_CHUNK; ++j) {
                float part = fn_quarter_dot<D>(qv, ks + j * D, t);
                part += __shfl_xor_sync(0xffffffffu, part, 1);
                part += __shfl_xor_sync(0xffffffffu, part, 2);
                s[j] = part * scale;
                if (masked && !att_visible(row, key0 + j, len_q, len_k, causal)) s[j] = -INFINITY;
                mx = fmaxf(mx, s[j]);
            }
            const float m_new = fmaxf(m, mx);
            const float m_use = m_new == -INFINITY ? 0.0f : m_new;  // never exp(-inf - -inf)
            const float alpha = expf(m - m_use);
            m = m_new;
            float rowsum = 0.0f;
#pragma unroll
            for (int j = 0; j < ATT_F32_CHUNK; ++j) {
                s[j] = expf(s[j] - m_use);
                rowsum += s[j];
            }
            l = l * alpha + rowsum;
            // o = alpha·o + Σ_j p_j v_j, one 4-dim chunk at a time (fewer registers live).
#pragma unroll
            for (int c = 0; c < D / 16; ++c) {
                float4 acc = make_float4(ov[c][0] * alpha, ov[c][1] * alpha, ov[c][2] * alpha,
                                         ov[c][3] * alpha);
#pragma unroll
                for (int j = 0; j < ATT_F32_CHUNK; ++j) {
                    const float4 u = *reinterpret_cast<const float4*>(vs + j * D + fn_quarter_col(t, c));
                    acc.x += s[j] * u.x;
                    acc.y += s[j] * u.y;
                    acc.z += s[j] * u.z;
                    acc.w += s[j] * u.w;
                }
                ov[c][0] = acc.x;
                ov[c][1] = acc.y;
                ov[c][2] = acc.z;
                ov[c][3] = acc.w;
            }
        }
    }

    if (row >= len_q) return;
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    if (t == 0) lse[orow] = l > 0.0f ? m + logf(l) : -INFINITY;
    const float rho = row_scale ? row_scale[orow] : 1.0f;
#pragma unroll
    for (int c = 0; c < D / 16; ++c) {
        const long long at = orow * D + fn_quarter_col(t, c);
        float res[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        if (residual) fn_vec<float, 4>::load(residual + at, res);
        float val[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            val[e] = ov[c][e] * inv;
            if (row_scale) val[e] *= rho;
            if (residual) val[e] += res[e];
        }
        fn_vec<float, 4>::store(o + at, val);
    }
}

// ================================ exported kernels ===============================================
// Args: q, k, v, o, lse, counts, indices, max_blocks, row_scale, residual, then the shape args
// batch, heads_q, heads_kv, len_q, len_k, scale, causal. counts = indices = 0: dense attention;
// row_scale / residual = 0: no such epilogue term. Grid (nQB, Hq, B).
#define ATT_FWD_PARAMS(S)                                                                          \
    const S* __restrict__ q, const S* __restrict__ k, const S* __restrict__ v, S* __restrict__ o,  \
        float* __restrict__ lse, const unsigned* __restrict__ counts,                              \
        const unsigned* __restrict__ indices, int max_blocks, const float* __restrict__ row_scale, \
        const S* __restrict__ residual, int batch, int heads_q, int heads_kv, int len_q, int len_k, \
        float scale, int causal
#define ATT_FWD_ARGS                                                                               \
    q, k, v, o, lse, counts, indices, max_blocks, row_scale, residual, heads_q, heads_kv, len_q,    \
        len_k, scale, causal

#define ATT_FWD_MMA(NAME, TAG, D)                                                                  \
    extern "C" __global__ void __launch_bounds__(ATT_MMA_THREADS) NAME(ATT_FWD_PARAMS(unsigned short)) { \
        (void)batch;                                                                               \
        attention_fwd_mma<TAG, D>(ATT_FWD_ARGS);                                                   \
    }
#define ATT_FWD_F32(NAME, D)                                                                       \
    extern "C" __global__ void __launch_bounds__(ATT_F32_THREADS) NAME(ATT_FWD_PARAMS(float)) {   \
        (void)batch;                                                                               \
        attention_fwd_f32<D>(ATT_FWD_ARGS);                                                        \
    }

ATT_FWD_F32(attention_forward_f32_d64, 64)
FLASHNECK_EXPORT(attention_forward_f32_d64)
ATT_FWD_F32(attention_forward_f32_d128, 128)
FLASHNECK_EXPORT(attention_forward_f32_d128)
ATT_FWD_MMA(attention_forward_f16_d64, fn_f16_t, 64)
FLASHNECK_EXPORT(attention_forward_f16_d64)
ATT_FWD_MMA(attention_forward_f16_d128, fn_f16_t, 128)
FLASHNECK_EXPORT(attention_forward_f16_d128)
ATT_FWD_MMA(attention_forward_bf16_d64, fn_bf16_t, 64)
FLASHNECK_EXPORT(attention_forward_bf16_d64)
ATT_FWD_MMA(attention_forward_bf16_d128, fn_bf16_t, 128)
FLASHNECK_EXPORT(attention_forward_bf16_d128)
