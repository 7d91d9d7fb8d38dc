// Dense and block-sparse attention (SPEC §1, §2), FlashAttention-2 style.
//
// Every kernel works on tiles of 16 query rows by 16 keys with 64 threads: in the forward and
// dQ kernels thread t owns query row t / 4 of the tile, in the dK/dV kernel key t / 4; its
// lane t % 4 picks 4 of the tile's 16 columns of S, and the output columns l, l + 4, l + 8, ...
// (at most 64 per thread, since D, Dv <= 256). Head dims are streamed through workgroup memory
// in chunks of 64, so any D, Dv <= 256 fits in the same 10 KiB of workgroup memory.
//
// Passes: lavapipe (llvmpipe) silently stops a workgroup short once it has run about a
// thousand workgroup barriers in these loops (measured: ~970 fail, ~850 pass; docs/wgpu.md).
// So the host bounds the barriers per workgroup: each kernel's loop over tiles (key tiles for
// the forward and dQ, query tiles of the GQA group for dK/dV) is cut into passes of at most
// `tile_end - tile_begin` tiles, one dispatch each, in order. A pass restores the loop's state
// (the running max, sum and output accumulators; the dQ or dK/dV accumulators) from `state`,
// runs its tiles, and saves the state again; the last pass writes the outputs instead. The
// state is f32 and the tiles run in the same order as in a single pass, so the arithmetic is
// the single pass's: no extra rounding, no reassociation, no atomics (deterministic).
//
// Key tiles come from 64-key blocks: every block up to the last visible one (dense), or the
// blocks a BlockLayout selects (sparse). Element masking (keys >= Lk, causal bottom-right
// alignment) applies inside every tile. Masked scores are carried as a finite sentinel rather
// than -inf, which WGSL implementations may assume away.

// `Params`, `p`, BLOCK, visible_keys and kv_head come from attention_common.wgsl.

const T: u32 = 16u;        // tile edge (query rows, keys)
const CH: u32 = 64u;       // head-dim chunk staged in workgroup memory
const WG: u32 = 64u;       // threads per workgroup
const MASKED: f32 = -3.0e38;

@group(0) @binding(1) var<storage, read> q: array<elem>;
@group(0) @binding(2) var<storage, read> k: array<elem>;
@group(0) @binding(3) var<storage, read> v: array<elem>;
@group(0) @binding(4) var<storage, read_write> o_out: array<elem>;
@group(0) @binding(5) var<storage, read_write> lse_out: array<f32>;
@group(0) @binding(6) var<storage, read> counts: array<u32>;
@group(0) @binding(7) var<storage, read> indices: array<u32>;
@group(0) @binding(8) var<storage, read> rho: array<f32>;
@group(0) @binding(9) var<storage, read> residual: array<elem>;
@group(0) @binding(10) var<storage, read> o_in: array<elem>;
@group(0) @binding(11) var<storage, read> d_o: array<elem>;
@group(0) @binding(12) var<storage, read> lse_in: array<f32>;
@group(0) @binding(13) var<storage, read_write> delta: array<f32>;
@group(0) @binding(14) var<storage, read_write> dq: array<elem>;
@group(0) @binding(15) var<storage, read_write> dk: array<elem>;
@group(0) @binding(16) var<storage, read_write> dv: array<elem>;
@group(0) @binding(17) var<storage, read> counts_t: array<u32>;
@group(0) @binding(18) var<storage, read> indices_t: array<u32>;
// The loop state carried between passes, per row (forward: m, sum, acc[Dv]; dQ: acc[D]) or per
// key (dK/dV: acc_k[D], acc_v[Dv]).
@group(0) @binding(19) var<storage, read_write> state: array<f32>;

var<workgroup> tile_a: array<array<f32, CH>, T>;
var<workgroup> tile_b: array<array<f32, CH>, T>;
var<workgroup> tile_s: array<array<f32, T>, T>;
var<workgroup> tile_ds: array<array<f32, T>, T>;

// Sources `stage` can read.
const SRC_Q: u32 = 0u;
const SRC_K: u32 = 1u;
const SRC_V: u32 = 2u;
const SRC_DO: u32 = 3u;

fn load(src: u32, i: u32) -> f32 {
    switch src {
        case 0u: { return q_ld(i); }
        case 1u: { return k_ld(i); }
        case 2u: { return v_ld(i); }
        default: { return d_o_ld(i); }
    }
}

// Copy rows [row0, row0 + 16) and columns [c0, c0 + 64) of a [n_rows, dim] matrix starting at
// flat element `base` into tile_a (to_b = false) or tile_b; zeros outside the matrix.
fn stage(to_b: bool, src: u32, base: u32, row0: u32, n_rows: u32, dim: u32, c0: u32, t: u32) {
    for (var e = 0u; e < T * CH / WG; e++) {
        let idx = t + WG * e;
        let rr = idx / CH;
        let cc = idx % CH;
        var val = 0.0;
        if (row0 + rr < n_rows && c0 + cc < dim) {
            val = load(src, base + (row0 + rr) * dim + c0 + cc);
        }
        if (to_b) {
            tile_b[rr][cc] = val;
        } else {
            tile_a[rr][cc] = val;
        }
    }
}

fn dot_ab(ra: u32, rb: u32) -> f32 {
    var s = 0.0;
    for (var cc = 0u; cc < CH; cc++) {
        s += tile_a[ra][cc] * tile_b[rb][cc];
    }
    return s;
}

// Whether query row i sees key j (SPEC §1; causal is bottom-right aligned).
fn visible(i: u32, j: u32) -> bool {
    return i < p.len_q && j < p.len_k && (p.causal == 0u || j + p.len_q <= i + p.len_k);
}

// The first query row that sees key j (len_q when none does).
fn first_row_seeing(j: u32) -> u32 {
    if (p.causal == 0u || j + p.len_q <= p.len_k) {
        return 0u;
    }
    return min(j + p.len_q - p.len_k, p.len_q);
}

// Key blocks of query block qb of head bh: how many, and the n-th.
fn key_block_count(bh: u32, qb: u32, last_row: u32) -> u32 {
    if (p.sparse == 1u) {
        return counts[bh * p.q_blocks + qb];
    }
    return (visible_keys(last_row) + BLOCK - 1u) / BLOCK;
}

fn key_block(bh: u32, qb: u32, n: u32) -> u32 {
    if (p.sparse == 1u) {
        return indices[(bh * p.q_blocks + qb) * p.max_blocks + n];
    }
    return n;
}

// Query blocks that attend to key block kb for query head bh: how many, and the n-th.
fn query_block_count(bh: u32, kb: u32) -> u32 {
    if (p.sparse == 1u) {
        return counts_t[bh * p.k_blocks + kb];
    }
    return p.q_blocks - first_row_seeing(kb * BLOCK) / BLOCK;
}

fn query_block(bh: u32, kb: u32, n: u32) -> u32 {
    if (p.sparse == 1u) {
        return indices_t[(bh * p.k_blocks + kb) * p.max_blocks_t + n];
    }
    return first_row_seeing(kb * BLOCK) / BLOCK + n;
}

fn neg_inf() -> f32 {
    return bitcast<f32>(0xff800000u);
}

// acc[e] = alpha · acc[e] + Σ_r w[r] · M[row0 + r][4e + l] for thread t's lane l = t % 4, where
// M is the [n_rows, dim] matrix at flat element `base` of `src`, streamed through tile_a in
// chunks of 64 columns. Holds barriers: call in uniform control flow.
fn accumulate_rows(acc: ptr<function, array<f32, 64>>, alpha: f32, w: array<f32, T>, src: u32,
                   base: u32, row0: u32, n_rows: u32, dim: u32, t: u32) {
    let l = t % 4u;
    for (var c0 = 0u; c0 < dim; c0 += CH) {
        stage(false, src, base, row0, n_rows, dim, c0, t);
        workgroupBarrier();
        for (var e = 0u; e < CH / 4u; e++) {
            let col = 4u * e + l;
            var a = (*acc)[c0 / 4u + e] * alpha;
            for (var rr = 0u; rr < T; rr++) {
                a += w[rr] * tile_a[rr][col];
            }
            (*acc)[c0 / 4u + e] = a;
        }
        workgroupBarrier();
    }
}

// The 4 dot products A_i · B_j of thread t's row (tile row t / 4, keys 4 (t % 4) .. + 4) for
// query rows i0.. of A (a [len_q, dim] matrix at `base_a` of `src_a`) and key rows j0.. of B
// (a [len_k, dim] matrix at `base_b` of `src_b`); 0 past either matrix.
fn row_dots(src_a: u32, base_a: u32, src_b: u32, base_b: u32, i0: u32, j0: u32, dim: u32,
            t: u32) -> vec4<f32> {
    let r = t / 4u;
    let l = t % 4u;
    var s = vec4<f32>(0.0);
    for (var c0 = 0u; c0 < dim; c0 += CH) {
        stage(false, src_a, base_a, i0, p.len_q, dim, c0, t);
        stage(true, src_b, base_b, j0, p.len_k, dim, c0, t);
        workgroupBarrier();
        for (var c = 0u; c < 4u; c++) {
            s[c] += dot_ab(r, 4u * l + c);
        }
        workgroupBarrier();
    }
    return s;
}

// The 4 scores of thread t's row for query rows i0.. and keys j0.. of head (bh, bkv):
// scale · q_i · k_j, MASKED where invisible.
fn row_scores(bh: u32, bkv: u32, i0: u32, j0: u32, t: u32) -> vec4<f32> {
    var s = row_dots(SRC_Q, bh * p.len_q * p.head_dim, SRC_K, bkv * p.len_k * p.head_dim, i0, j0,
                     p.head_dim, t);
    let r = t / 4u;
    let l = t % 4u;
    for (var c = 0u; c < 4u; c++) {
        s[c] = select(MASKED, p.scale * s[c], visible(i0 + r, j0 + 4u * l + c));
    }
    return s;
}

// The 4 values dO_i · v_j of thread t's row (same layout as row_scores).
fn row_dp(bh: u32, bkv: u32, i0: u32, j0: u32, t: u32) -> vec4<f32> {
    return row_dots(SRC_DO, bh * p.len_q * p.head_dim_v, SRC_V, bkv * p.len_k * p.head_dim_v, i0,
                    j0, p.head_dim_v, t);
}

// The 16-row query tile a workgroup of the forward or dQ kernel owns: query head bh (reading kv
// head bkv), rows i0 .. i0 + 16 (the last existing one last_row) in layout block qb.
struct QueryTile {
    bh: u32,
    bkv: u32,
    i0: u32,
    qb: u32,
    last_row: u32,
}

// Whether tile `it` (counted in loop order) belongs to this pass.
fn in_pass(it: u32) -> bool {
    return it >= p.tile_begin && it < p.tile_end;
}

// Query tiles per head.
fn query_tiles() -> u32 {
    return (p.len_q + T - 1u) / T;
}

// Tile w of the grid, w < batch · heads_q · query_tiles().
fn query_tile(w: u32) -> QueryTile {
    let q_tiles = query_tiles();
    let bh = w / q_tiles;
    let i0 = (w % q_tiles) * T;
    return QueryTile(bh, kv_head(bh), i0, i0 / BLOCK, min(i0 + T, p.len_q) - 1u);
}

// ---------------------------------------------------------------- forward

@compute @workgroup_size(64)
fn attention_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) t: u32) {
    let w = flat_workgroup(wg, nwg);
    if (w >= p.batch * p.heads_q * query_tiles()) {
        return;
    }
    let tile = query_tile(w);
    let r = t / 4u;
    let l = t % 4u;
    let i = tile.i0 + r;

    let row = tile.bh * p.len_q + i;
    let st = row * (p.head_dim_v + 2u); // this row's state: m, sum, acc

    var m = MASKED;       // running max of the row's visible scores
    var sum = 0.0;        // running Σ exp(s − m)
    var acc: array<f32, 64>; // output columns l + 4e, e < 64
    for (var e = 0u; e < 64u; e++) {
        acc[e] = 0.0;
    }
    if (p.tile_begin > 0u && i < p.len_q) {
        m = state[st];
        sum = state[st + 1u];
        for (var col = l; col < p.head_dim_v; col += 4u) {
            acc[col / 4u] = state[st + 2u + col];
        }
    }
    let n_blocks = key_block_count(tile.bh, tile.qb, tile.last_row);
    let vis_end = visible_keys(tile.last_row);
    var it = 0u;
    for (var n = 0u; n < n_blocks; n++) {
        let kb = key_block(tile.bh, tile.qb, n);
        for (var j0 = kb * BLOCK; j0 < min(kb * BLOCK + BLOCK, vis_end); j0 += T) {
            it++;
            if (!in_pass(it - 1u)) {
                continue;
            }
            let s = row_scores(tile.bh, tile.bkv, tile.i0, j0, t);
            tile_s[r][4u * l] = s.x;
            tile_s[r][4u * l + 1u] = s.y;
            tile_s[r][4u * l + 2u] = s.z;
            tile_s[r][4u * l + 3u] = s.w;
            workgroupBarrier();
            // Online softmax: every thread of the row computes the same m, sum and p.
            var m_tile = MASKED;
            for (var jj = 0u; jj < T; jj++) {
                m_tile = max(m_tile, tile_s[r][jj]);
            }
            let m_new = max(m, m_tile);
            var pr: array<f32, T>;
            var alpha = 1.0;
            if (m_new > MASKED) {
                alpha = select(exp(m - m_new), 0.0, m == MASKED);
                var tile_sum = 0.0;
                for (var jj = 0u; jj < T; jj++) {
                    let sj = tile_s[r][jj];
                    pr[jj] = select(exp(sj - m_new), 0.0, sj == MASKED);
                    tile_sum += pr[jj];
                }
                sum = sum * alpha + tile_sum;
                m = m_new;
            } else {
                for (var jj = 0u; jj < T; jj++) {
                    pr[jj] = 0.0;
                }
            }
            // acc = alpha · acc + P V.
            accumulate_rows(&acc, alpha, pr, SRC_V, tile.bkv * p.len_k * p.head_dim_v, j0,
                            p.len_k, p.head_dim_v, t);
        }
    }
    if (i >= p.len_q) {
        return;
    }
    if (p.last_pass == 0u) {
        if (l == 0u) {
            state[st] = m;
            state[st + 1u] = sum;
        }
        for (var col = l; col < p.head_dim_v; col += 4u) {
            state[st + 2u + col] = acc[col / 4u];
        }
        return;
    }
    if (l == 0u) {
        lse_out[row] = select(m + log(sum), neg_inf(), sum == 0.0);
    }
    let inv = select(1.0 / sum, 0.0, sum == 0.0);
    var scale_row = 1.0;
    if (p.has_rho == 1u) {
        scale_row = rho[row];
    }
    for (var col = l; col < p.head_dim_v; col += 4u) {
        var out = acc[col / 4u] * inv * scale_row;
        if (p.has_residual == 1u) {
            out += residual_ld(row * p.head_dim_v + col);
        }
        o_out_st(row * p.head_dim_v + col, out);
    }
}

// ---------------------------------------------------------------- backward

// Δ_i = Σ_d dO_id · O_id, one thread per query row.
@compute @workgroup_size(64)
fn attention_backward_delta(@builtin(workgroup_id) wg: vec3<u32>,
                            @builtin(num_workgroups) nwg: vec3<u32>,
                            @builtin(local_invocation_index) t: u32) {
    let row = flat_workgroup(wg, nwg) * WG + t;
    if (row >= p.batch * p.heads_q * p.len_q) {
        return;
    }
    var s = 0.0;
    for (var c = 0u; c < p.head_dim_v; c++) {
        s += d_o_ld(row * p.head_dim_v + c) * o_in_ld(row * p.head_dim_v + c);
    }
    delta[row] = s;
}

// P (and dS = P (dP − Δ)) of thread t's row for query rows i0.., keys j0..; 0 where masked or
// where the row saw no key (lse = −inf).
fn row_p(bh: u32, bkv: u32, i0: u32, j0: u32, t: u32) -> vec4<f32> {
    let s = row_scores(bh, bkv, i0, j0, t);
    let i = i0 + t / 4u;
    var lse_i = MASKED;
    if (i < p.len_q) {
        lse_i = lse_in[bh * p.len_q + i];
    }
    var pr = vec4<f32>(0.0);
    if (lse_i > MASKED) {
        for (var c = 0u; c < 4u; c++) {
            pr[c] = select(exp(s[c] - lse_i), 0.0, s[c] == MASKED);
        }
    }
    return pr;
}

fn row_ds(bh: u32, bkv: u32, i0: u32, j0: u32, t: u32, pr: vec4<f32>) -> vec4<f32> {
    let dp = row_dp(bh, bkv, i0, j0, t);
    let i = i0 + t / 4u;
    var d = 0.0;
    if (i < p.len_q) {
        d = delta[bh * p.len_q + i];
    }
    return pr * (dp - vec4<f32>(d));
}

// dQ = scale · dS K: one workgroup per 16 query rows, streaming the row's key tiles.
@compute @workgroup_size(64)
fn attention_backward_dq(@builtin(workgroup_id) wg: vec3<u32>,
                         @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_index) t: u32) {
    let w = flat_workgroup(wg, nwg);
    if (w >= p.batch * p.heads_q * query_tiles()) {
        return;
    }
    let tile = query_tile(w);
    let r = t / 4u;
    let l = t % 4u;
    let i = tile.i0 + r;
    let row = tile.bh * p.len_q + i;
    var acc: array<f32, 64>;
    for (var e = 0u; e < 64u; e++) {
        acc[e] = 0.0;
    }
    if (p.tile_begin > 0u && i < p.len_q) {
        for (var col = l; col < p.head_dim; col += 4u) {
            acc[col / 4u] = state[row * p.head_dim + col];
        }
    }
    let n_blocks = key_block_count(tile.bh, tile.qb, tile.last_row);
    let vis_end = visible_keys(tile.last_row);
    var it = 0u;
    for (var n = 0u; n < n_blocks; n++) {
        let kb = key_block(tile.bh, tile.qb, n);
        for (var j0 = kb * BLOCK; j0 < min(kb * BLOCK + BLOCK, vis_end); j0 += T) {
            it++;
            if (!in_pass(it - 1u)) {
                continue;
            }
            let pr = row_p(tile.bh, tile.bkv, tile.i0, j0, t);
            let ds = row_ds(tile.bh, tile.bkv, tile.i0, j0, t, pr);
            for (var c = 0u; c < 4u; c++) {
                tile_ds[r][4u * l + c] = ds[c];
            }
            workgroupBarrier();
            // acc += dS K.
            accumulate_rows(&acc, 1.0, tile_ds[r], SRC_K, tile.bkv * p.len_k * p.head_dim, j0,
                            p.len_k, p.head_dim, t);
        }
    }
    if (i >= p.len_q) {
        return;
    }
    for (var col = l; col < p.head_dim; col += 4u) {
        if (p.last_pass == 0u) {
            state[row * p.head_dim + col] = acc[col / 4u];
        } else {
            dq_st(row * p.head_dim + col, p.scale * acc[col / 4u]);
        }
    }
}

// dK = scale · dSᵀ Q and dV = Pᵀ dO: one workgroup per 16 keys of one kv head, summing over
// the query heads of its GQA group and their query tiles, in a fixed order.
@compute @workgroup_size(64)
fn attention_backward_dkdv(@builtin(workgroup_id) wg: vec3<u32>,
                           @builtin(num_workgroups) nwg: vec3<u32>,
                           @builtin(local_invocation_index) t: u32) {
    let k_tiles = (p.len_k + T - 1u) / T;
    let w = flat_workgroup(wg, nwg);
    if (w >= p.batch * p.heads_kv * k_tiles) {
        return;
    }
    let bkv = w / k_tiles;
    let j0 = (w % k_tiles) * T;
    let kb = j0 / BLOCK;
    let b = bkv / p.heads_kv;
    let hkv = bkv % p.heads_kv;
    // Thread t owns key j0 + t / 4 and output columns t % 4 + 4e.
    let jr = t / 4u;
    let l = t % 4u;
    let j = j0 + jr;
    let key = bkv * p.len_k + j;
    let st = key * (p.head_dim + p.head_dim_v); // this key's state: acc_k, acc_v
    var acc_k: array<f32, 64>;
    var acc_v: array<f32, 64>;
    for (var e = 0u; e < 64u; e++) {
        acc_k[e] = 0.0;
        acc_v[e] = 0.0;
    }
    if (p.tile_begin > 0u && j < p.len_k) {
        for (var col = l; col < p.head_dim; col += 4u) {
            acc_k[col / 4u] = state[st + col];
        }
        for (var col = l; col < p.head_dim_v; col += 4u) {
            acc_v[col / 4u] = state[st + p.head_dim + col];
        }
    }
    var it = 0u;
    for (var g = 0u; g < p.group; g++) {
        let bh = b * p.heads_q + hkv * p.group + g;
        let n_blocks = query_block_count(bh, kb);
        for (var n = 0u; n < n_blocks; n++) {
            let qb = query_block(bh, kb, n);
            for (var i0 = qb * BLOCK; i0 < min(qb * BLOCK + BLOCK, p.len_q); i0 += T) {
                // Skip query tiles that see none of these keys (causal).
                if (visible_keys(min(i0 + T, p.len_q) - 1u) <= j0) {
                    continue;
                }
                it++;
                if (!in_pass(it - 1u)) {
                    continue;
                }
                // Rows = queries here: thread t computes query row t / 4, keys 4 (t % 4)...
                let pr = row_p(bh, bkv, i0, j0, t);
                let ds = row_ds(bh, bkv, i0, j0, t, pr);
                // Stored transposed (row = key), so that key jr's column is the row tile_s[jr].
                let r = t / 4u;
                for (var c = 0u; c < 4u; c++) {
                    tile_s[4u * l + c][r] = pr[c];
                    tile_ds[4u * l + c][r] = ds[c];
                }
                workgroupBarrier();
                // dV[j] += Σ_i P[i][j] dO[i].
                accumulate_rows(&acc_v, 1.0, tile_s[jr], SRC_DO, bh * p.len_q * p.head_dim_v, i0,
                                p.len_q, p.head_dim_v, t);
                // dK[j] += Σ_i dS[i][j] Q[i].
                accumulate_rows(&acc_k, 1.0, tile_ds[jr], SRC_Q, bh * p.len_q * p.head_dim, i0,
                                p.len_q, p.head_dim, t);
            }
        }
    }
    if (j >= p.len_k) {
        return;
    }
    if (p.last_pass == 0u) {
        for (var col = l; col < p.head_dim; col += 4u) {
            state[st + col] = acc_k[col / 4u];
        }
        for (var col = l; col < p.head_dim_v; col += 4u) {
            state[st + p.head_dim + col] = acc_v[col / 4u];
        }
        return;
    }
    for (var col = l; col < p.head_dim; col += 4u) {
        dk_st(key * p.head_dim + col, p.scale * acc_k[col / 4u]);
    }
    for (var col = l; col < p.head_dim_v; col += 4u) {
        dv_st(key * p.head_dim_v + col, acc_v[col / 4u]);
    }
}
