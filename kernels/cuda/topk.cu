// block_topk (SPEC §2): pooled block scores and the sink / local / top-k selection, in three
// kernels (crates/flashneck-cuda/src/attention.rs launches them in order):
//
// topk_pool_<T>: one thread per (head, block, dim): the f32 mean of the block's existing rows
//   (summed in row order, then divided by their count, as the CPU reference does). Run once for Q
//   (per query head) and once for K (per kv head).
// topk_score: one thread per (b, hq, qb, kb): scale · q̄ · k̄ (dot in dim order).
// topk_select: one warp per (b, hq, qb). Block kb is chosen when it is one of the first `sink`
//   visible blocks, in the `local` window ending at the anchor block (the block of key
//   min(Lk − 1, (qb + 1)·64 − 1 + Lk − Lq)), or, among the other visible blocks ("rest"), fewer
//   than `keep` rest blocks rank before it (higher score first, NaN after every number, ties to
//   the lower index: a strict total order, so exactly min(keep, |rest|) are chosen). Visible:
//   under causal, blocks holding a key the query block's last row sees; else all. The lanes take
//   32 blocks at a time in ascending order and write the chosen ones compacted by a ballot, so the
//   list comes out sorted without a sort and without per-thread arrays.
#include "common.cuh"

#define TOPK_BLOCK 64

// Products and sums rounded separately (never fused into an FMA), as the CPU reference computes
// them, so that the scores, hence the layout, are the CPU's bit for bit on any input. (g++ for the
// emulator targets x86-64 without FMA, so plain operators do not fuse there.)
#if defined(FLASHNECK_EMU)
#define TOPK_MUL(a, b) ((a) * (b))
#define TOPK_ADD(a, b) ((a) + (b))
#else
#define TOPK_MUL(a, b) __fmul_rn(a, b)
#define TOPK_ADD(a, b) __fadd_rn(a, b)
#endif

template <typename T>
__device__ __forceinline__ void topk_pool(const typename fn_elem<T>::storage* __restrict__ x,
                                          float* __restrict__ means, int heads, int len, int dim) {
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const int nb = (len + TOPK_BLOCK - 1) / TOPK_BLOCK;
    if (idx >= (long long)heads * nb * dim) return;
    const int d = (int)(idx % dim);
    const long long hb = idx / dim;
    const int blk = (int)(hb % nb);
    const long long h = hb / nb;
    const int r0 = blk * TOPK_BLOCK, r1 = min(len, r0 + TOPK_BLOCK);
    float s = 0.0f;
    for (int r = r0; r < r1; ++r) s += fn_elem<T>::load(x, (h * len + r) * dim + d);
    means[idx] = s / (float)(r1 - r0);
}

#define TOPK_POOL(SUFFIX, T, S, NAME)                                                              \
    extern "C" __global__ void __launch_bounds__(128)                                              \
        NAME##SUFFIX(const S* __restrict__ x, float* __restrict__ means, int heads, int len, int dim) { \
        topk_pool<T>(x, means, heads, len, dim);                                                   \
    }
FN_EACH_ELEMENT(TOPK_POOL, topk_pool)
FLASHNECK_EXPORT(topk_pool_f32)
FLASHNECK_EXPORT(topk_pool_f16)
FLASHNECK_EXPORT(topk_pool_bf16)

// Args: q_means [B·Hq·nQB, D], k_means [B·Hkv·nKB, D], scores [B·Hq·nQB, nKB], D, then the
// attention shape args. One thread per score.
extern "C" __global__ void __launch_bounds__(128)
    topk_score(const float* __restrict__ q_means, const float* __restrict__ k_means,
               float* __restrict__ scores, int dim, int batch, int heads_q, int heads_kv, int len_q,
               int len_k, float scale, int causal) {
    (void)causal;
    const int nqb = (len_q + TOPK_BLOCK - 1) / TOPK_BLOCK, nkb = (len_k + TOPK_BLOCK - 1) / TOPK_BLOCK;
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long rows = (long long)batch * heads_q * nqb;
    if (idx >= rows * nkb) return;
    const long long row = idx / nkb;
    const int kb = (int)(idx % nkb);
    const long long bh = row / nqb;
    const long long bhk = bh / heads_q * heads_kv + bh % heads_q / (heads_q / heads_kv);
    const float* qm = q_means + row * dim;
    const float* km = k_means + (bhk * nkb + kb) * dim;
    float dot = 0.0f;
    for (int d = 0; d < dim; ++d) dot = TOPK_ADD(dot, TOPK_MUL(qm[d], km[d]));
    scores[idx] = TOPK_MUL(scale, dot);
}
FLASHNECK_EXPORT(topk_score)

// Whether block a ranks before block b among the rest: higher score, numbers before NaN, then
// the lower index.
__device__ __forceinline__ bool topk_before(float sa, int a, float sb, int b) {
    const bool na = isnan(sa), nb = isnan(sb);
    if (na != nb) return nb;
    if (!na && sa != sb) return sa > sb;
    return a < b;
}

// The selection rules of one query block (all block counts already clamped to nKB).
struct topk_rules {
    int visible;  // blocks 0 .. visible-1 hold a key the query block may see
    int sink;     // min(sink, visible)
    int anchor;   // local window: anchor - local + 1 .. anchor (and < visible); -1: none
    int local;
    __device__ __forceinline__ bool forced(int kb) const {
        return kb < sink || (anchor >= 0 && kb <= anchor && kb + local > anchor && kb < visible);
    }
    __device__ __forceinline__ bool rest(int kb) const { return kb < visible && !forced(kb); }
};

// Args: scores, counts [B·Hq·nQB], indices [B·Hq·nQB, max_blocks], max_blocks, keep, sink, local
// (each <= nKB), then the attention shape args. One warp per query block.
extern "C" __global__ void __launch_bounds__(128)
    topk_select(const float* __restrict__ scores, unsigned* __restrict__ counts,
                unsigned* __restrict__ indices, int max_blocks, int keep, int sink, int local, int batch,
                int heads_q, int heads_kv, int len_q, int len_k, float scale, int causal) {
    (void)heads_kv;
    (void)scale;
    const int nqb = (len_q + TOPK_BLOCK - 1) / TOPK_BLOCK, nkb = (len_k + TOPK_BLOCK - 1) / TOPK_BLOCK;
    const int lane = threadIdx.x & 31;
    const long long row = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= (long long)batch * heads_q * nqb) return;  // uniform over the warp
    const int qb = (int)(row % nqb);

    topk_rules r;
    if (causal) {
        const long long last_row = (long long)min(qb * TOPK_BLOCK + TOPK_BLOCK, len_q) - 1;
        long long keys = last_row + len_k - len_q + 1;
        keys = keys < 0 ? 0 : (keys > len_k ? (long long)len_k : keys);
        r.visible = (int)((keys + TOPK_BLOCK - 1) / TOPK_BLOCK);
    } else {
        r.visible = nkb;
    }
    r.sink = min(sink, r.visible);
    const long long key = min((long long)(qb + 1) * TOPK_BLOCK - 1 + len_k - len_q, (long long)len_k - 1);
    r.anchor = (len_k > 0 && key >= 0) ? (int)(key / TOPK_BLOCK) : -1;
    r.local = local;

    const float* sc = scores + row * nkb;
    unsigned* out = indices + row * max_blocks;
    int written = 0;
    for (int base = 0; base < nkb; base += 32) {
        const int kb = base + lane;
        bool chosen = false;
        if (kb < nkb) {
            if (r.forced(kb)) {
                chosen = true;
            } else if (r.rest(kb) && keep > 0) {
                const float s = sc[kb];
                int ahead = 0;
                for (int other = 0; other < r.visible && ahead < keep; ++other)
                    if (other != kb && r.rest(other) && topk_before(sc[other], other, s, kb)) ++ahead;
                chosen = ahead < keep;
            }
        }
        const unsigned mask = __ballot_sync(0xffffffffu, chosen);
        const int at = written + __popc(mask & ((1u << lane) - 1u));
        if (chosen && at < max_blocks) out[at] = (unsigned)kb;
        written += __popc(mask);
    }
    if (lane == 0) counts[row] = (unsigned)min(written, max_blocks);
}
FLASHNECK_EXPORT(topk_select)
