// block_topk (SPEC §2): pooled block scores and the sink / local / top-k selection.
//
// `topk_pool`: one thread per (block, dim) takes the mean of the block's existing rows, for
// Q per query head and K per kv head. `topk_select`: one thread per (batch, query head, query
// block) scores its visible key blocks, marks the sink and local blocks, picks the `keep` best
// others (ties to the lower index, NaN last) and writes the chosen blocks in ascending order.

// `Params`, `p`, BLOCK, visible_keys and kv_head come from attention_common.wgsl.

const WG: u32 = 64u;

@group(0) @binding(1) var<storage, read> q: array<elem>;
@group(0) @binding(2) var<storage, read> k: array<elem>;
// [B, Hq, nQB, D] and [B, Hkv, nKB, D] block means.
@group(0) @binding(3) var<storage, read_write> q_means: array<f32>;
@group(0) @binding(4) var<storage, read_write> k_means: array<f32>;
// [B, Hq, nQB, nKB] pooled scores of the visible blocks (NaN allowed: it ranks last).
@group(0) @binding(5) var<storage, read_write> scores: array<f32>;
@group(0) @binding(6) var<storage, read_write> counts: array<u32>;
@group(0) @binding(7) var<storage, read_write> indices: array<u32>;

// Mean of rows [blk·64, min(len, blk·64 + 64)) of column d of a head's [len, D] matrix.
@compute @workgroup_size(64)
fn topk_pool(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let idx = flat_workgroup(wg, nwg) * WG + lid;
    let d_len = p.head_dim;
    let q_items = p.batch * p.heads_q * p.q_blocks * d_len;
    let k_items = p.batch * p.heads_kv * p.k_blocks * d_len;
    if (idx < q_items) {
        let blk_row = idx / d_len;
        let d = idx % d_len;
        let head = blk_row / p.q_blocks;
        let blk = blk_row % p.q_blocks;
        let end = min(p.len_q, blk * BLOCK + BLOCK);
        var s = 0.0;
        for (var i = blk * BLOCK; i < end; i++) {
            s += q_ld((head * p.len_q + i) * d_len + d);
        }
        q_means[idx] = s / f32(end - blk * BLOCK);
    } else if (idx < q_items + k_items) {
        let kidx = idx - q_items;
        let blk_row = kidx / d_len;
        let d = kidx % d_len;
        let head = blk_row / p.k_blocks;
        let blk = blk_row % p.k_blocks;
        let end = min(p.len_k, blk * BLOCK + BLOCK);
        var s = 0.0;
        for (var j = blk * BLOCK; j < end; j++) {
            s += k_ld((head * p.len_k + j) * d_len + d);
        }
        k_means[kidx] = s / f32(end - blk * BLOCK);
    }
}

fn is_nan(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u;
}

// Chosen key blocks are a per-thread bitset of 64 words: nKB <= 2048 (host-checked).
const MAX_WORDS: u32 = 64u;

@compute @workgroup_size(64)
fn topk_select(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let row = flat_workgroup(wg, nwg) * WG + lid;
    if (row >= p.batch * p.heads_q * p.q_blocks) {
        return;
    }
    let nkb = p.k_blocks;
    let bh = row / p.q_blocks;
    let qb = row % p.q_blocks;
    let bkv = kv_head(bh);
    // Blocks holding at least one key this query block may see.
    let last_row = min(qb * BLOCK + BLOCK, p.len_q) - 1u;
    let visible = (visible_keys(last_row) + BLOCK - 1u) / BLOCK;

    var chosen: array<u32, MAX_WORDS>;
    for (var w = 0u; w < MAX_WORDS; w++) {
        chosen[w] = 0u;
    }
    for (var kb = 0u; kb < min(p.sink, visible); kb++) {
        chosen[kb / 32u] |= 1u << (kb % 32u);
    }
    // Local window: back from the block of key min(Lk − 1, (qb + 1)·64 − 1 + Lk − Lq).
    let reach = (qb + 1u) * BLOCK - 1u + p.len_k;
    if (p.len_k > 0u && reach >= p.len_q) {
        let anchor = min(reach - p.len_q, p.len_k - 1u) / BLOCK;
        for (var back = 0u; back < p.local && back <= anchor; back++) {
            if (anchor - back < visible) {
                chosen[(anchor - back) / 32u] |= 1u << ((anchor - back) % 32u);
            }
        }
    }
    // Pooled scores of the visible blocks.
    let qm = row * p.head_dim;
    for (var kb = 0u; kb < visible; kb++) {
        let km = (bkv * nkb + kb) * p.head_dim;
        var dot = 0.0;
        for (var d = 0u; d < p.head_dim; d++) {
            dot += q_means[qm + d] * k_means[km + d];
        }
        scores[row * nkb + kb] = p.scale * dot;
    }
    // The `keep` best other blocks: higher score first, NaN after every number, ties to the
    // lower index (the scan is ascending and only a strictly better block replaces the best).
    for (var n = 0u; n < p.keep; n++) {
        var best = 0xffffffffu;
        var best_s = 0.0;
        for (var kb = 0u; kb < visible; kb++) {
            if ((chosen[kb / 32u] & (1u << (kb % 32u))) != 0u) {
                continue;
            }
            let s = scores[row * nkb + kb];
            var better = best == 0xffffffffu;
            if (!better && !is_nan(s)) {
                better = is_nan(best_s) || s > best_s;
            }
            if (better) {
                best = kb;
                best_s = s;
            }
        }
        if (best == 0xffffffffu) {
            break;
        }
        chosen[best / 32u] |= 1u << (best % 32u);
    }
    var count = 0u;
    for (var kb = 0u; kb < nkb; kb++) {
        if ((chosen[kb / 32u] & (1u << (kb % 32u))) != 0u) {
            indices[row * p.max_blocks + count] = kb;
            count++;
        }
    }
    counts[row] = count;
}
