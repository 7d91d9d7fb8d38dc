// Dense and block-sparse attention (SPEC §1, §2), FlashAttention-2 style.
//
// The forward is register-tiled: 32 query rows by 64-key blocks, 128 threads, each holding a
// 4 × 4 block of scores and 4 rows of output columns (see its section below). The backward
// kernels work on tiles of 16 query rows by 16 keys with 64 threads: in the dQ kernel thread t
// owns query row t / 4 of the tile, in the dK/dV kernel key t / 4; its lane t % 4 picks 4 of
// the tile's 16 columns of S, and the output columns l, l + 4, l + 8, ... (at most 64 per
// thread, since D, Dv <= 256). Head dims are streamed through workgroup memory in chunks (16
// dims for the forward's S, 64 elsewhere), so any D, Dv <= 256 fits in the same workgroup
// memory: 16 KiB for the forward, 10 KiB for the backward.
//
// Passes: lavapipe (llvmpipe) silently stops a workgroup short once it has run about a
// thousand workgroup barriers in these loops (measured: ~970 fail, ~850 pass; docs/wgpu.md).
// So the host bounds the barriers per workgroup: each kernel's loop over tiles (key blocks for
// the forward, key tiles for dQ, query tiles of the GQA group for dK/dV) is cut into passes of
// at most `tile_end - tile_begin` tiles, one dispatch each, in order. A pass restores the
// loop's state (the running max, the partial sums and output accumulators; the dQ or dK/dV
// accumulators) from `state`, runs its tiles, and saves the state again; the last pass writes the outputs instead. The
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
//
// The forward is register-tiled (the backward kernels below keep the 16 × 16 layout): a
// workgroup of 128 threads owns FQ = 32 query rows of one head and walks its key blocks 64 keys
// at a time. Thread t = 16 ty + tx holds, in registers, the 4 × 4 scores of rows 4 ty .. + 4 and
// keys 4 tx .. + 4 of the current block, and the output accumulators of the same 4 rows at
// columns 64 c + 4 tx .. + 4 of each 64-column chunk c of Dv (`acc0` .. `acc3`, one variable per
// chunk so that every index is a constant; DV_CHUNKS = ceil(Dv / 64) is a pipeline constant).
// Every product reads two vec4 from workgroup memory per 16 multiply-adds:
//   S = Q Kᵀ   Q and K staged transposed, 16 head dims at a time (q_t[k][row quad],
//              k_t[k][key quad]);
//   max        each thread's 4 partial row maxima through `red`, so all 16 threads of a row
//              share the row's running max m;
//   P V        P stored transposed (p_t[key][row quad]); V staged 32 keys × 64 columns at a time.
// Each thread keeps its own partial row sum (its 4 keys of every block, rescaled with the row's
// max); the 16 partial sums of a row are added in a fixed order once, at the end, so passes and
// single runs give the same bits. All of it fits in 16 KiB of workgroup memory (`fwd_smem`,
// regions below; the regions staged for S and the max reuse the memory V is staged in).

const FQ: u32 = 32u;   // query rows per workgroup
const FWG: u32 = 128u; // threads per workgroup: 8 row quads × 16 key (or column) quads
const DK: u32 = 16u;   // head dims of Q and K staged per step of S

// Number of 64-column chunks of Dv (1 ..= 4), fixed per pipeline by the host.
override DV_CHUNKS: u32 = 1u;

// Workgroup memory of the forward, in vec4: [0, 512) holds either q_t (128) + k_t (256) + red
// (128), or v_s (32 keys × 16 column quads); [512, 1024) holds p_t (64 keys × 8 row quads).
var<workgroup> fwd_smem: array<vec4<f32>, 1024>;
const Q_T: u32 = 0u;
const K_T: u32 = 128u;
const RED: u32 = 384u;
const V_S: u32 = 0u;
const P_T: u32 = 512u;

// q_t[k][rq] = Q[i0 + 4 rq + a][d0 + k], a < 4 (0 past Lq or D): one vec4 per thread.
fn fwd_stage_q(base: u32, i0: u32, d0: u32, t: u32) {
    let k = t % DK;
    let rq = t / DK;
    var quad = vec4<f32>(0.0);
    if (d0 + k < p.head_dim) {
        for (var a = 0u; a < 4u; a++) {
            let i = i0 + 4u * rq + a;
            if (i < p.len_q) {
                quad[a] = q_ld(base + i * p.head_dim + d0 + k);
            }
        }
    }
    fwd_smem[Q_T + k * 8u + rq] = quad;
}

// k_t[k][kq] = K[j0 + 4 kq + c][d0 + k], c < 4 (0 past Lk or D): two vec4 per thread.
fn fwd_stage_k(base: u32, j0: u32, d0: u32, t: u32) {
    for (var n = 0u; n < 2u; n++) {
        let idx = t + FWG * n;
        let k = idx % DK;
        let kq = idx / DK;
        var quad = vec4<f32>(0.0);
        if (d0 + k < p.head_dim) {
            for (var c = 0u; c < 4u; c++) {
                let j = j0 + 4u * kq + c;
                if (j < p.len_k) {
                    quad[c] = k_ld(base + j * p.head_dim + d0 + k);
                }
            }
        }
        fwd_smem[K_T + k * 16u + kq] = quad;
    }
}

// v_s[j][cq] = V[j0 + j][c0 + 4 cq + e], e < 4, for 32 keys j (0 past Lk or Dv): four vec4 per
// thread, consecutive threads reading consecutive columns.
fn fwd_stage_v(base: u32, j0: u32, c0: u32, t: u32) {
    for (var n = 0u; n < 4u; n++) {
        let idx = t + FWG * n;
        let cq = idx % 16u;
        let j = j0 + idx / 16u;
        var quad = vec4<f32>(0.0);
        if (j < p.len_k) {
            for (var e = 0u; e < 4u; e++) {
                let col = c0 + 4u * cq + e;
                if (col < p.head_dim_v) {
                    quad[e] = v_ld(base + j * p.head_dim_v + col);
                }
            }
        }
        fwd_smem[V_S + idx] = quad;
    }
}

// acc[a] += Σ_j P[4 ty + a][j] · V[j0 + j][64 c + 4 tx ..] over the block's 64 keys, for one
// 64-column chunk c: V staged 32 keys at a time. Holds barriers: call in uniform control flow,
// after p_t is written and a barrier.
fn fwd_pv_chunk(acc: ptr<function, array<vec4<f32>, 4>>, c: u32, base: u32, j0: u32, t: u32) {
    let ty = t / 16u;
    let tx = t % 16u;
    for (var h = 0u; h < 2u; h++) {
        fwd_stage_v(base, j0 + 32u * h, 64u * c, t);
        workgroupBarrier();
        for (var j = 0u; j < 32u; j++) {
            let pj = fwd_smem[P_T + (32u * h + j) * 8u + ty];
            let vj = fwd_smem[V_S + j * 16u + tx];
            (*acc)[0] = fma(vec4<f32>(pj.x), vj, (*acc)[0]);
            (*acc)[1] = fma(vec4<f32>(pj.y), vj, (*acc)[1]);
            (*acc)[2] = fma(vec4<f32>(pj.z), vj, (*acc)[2]);
            (*acc)[3] = fma(vec4<f32>(pj.w), vj, (*acc)[3]);
        }
        workgroupBarrier();
    }
}

fn fwd_rescale(acc: ptr<function, array<vec4<f32>, 4>>, alpha: vec4<f32>) {
    (*acc)[0] *= alpha.x;
    (*acc)[1] *= alpha.y;
    (*acc)[2] *= alpha.z;
    (*acc)[3] *= alpha.w;
}

// The state a pass carries per query row i of head bh: m, the 16 partial sums, acc[Dv].
fn fwd_state(bh: u32, i: u32) -> u32 {
    return (bh * p.len_q + i) * (p.head_dim_v + 17u);
}

// Save (save = true) or restore chunk c of the accumulators of rows i0 + 4 ty + a.
fn fwd_carry(acc: ptr<function, array<vec4<f32>, 4>>, c: u32, save: bool, bh: u32, i0: u32,
             t: u32) {
    let ty = t / 16u;
    let tx = t % 16u;
    for (var a = 0u; a < 4u; a++) {
        let i = i0 + 4u * ty + a;
        if (i >= p.len_q) {
            continue;
        }
        let st = fwd_state(bh, i) + 17u;
        for (var e = 0u; e < 4u; e++) {
            let col = 64u * c + 4u * tx + e;
            if (col < p.head_dim_v) {
                if (save) {
                    state[st + col] = (*acc)[a][e];
                } else {
                    (*acc)[a][e] = state[st + col];
                }
            }
        }
    }
}

// Write O for chunk c of rows i0 + 4 ty + a: acc · inv · rho (+ residual), pairing the
// thread's consecutive elements into the words it owns (packed bf16 stores whole words where
// it can).
fn fwd_store(acc: ptr<function, array<vec4<f32>, 4>>, c: u32, bh: u32, i0: u32, inv: vec4<f32>,
             t: u32) {
    let ty = t / 16u;
    let tx = t % 16u;
    let col = 64u * c + 4u * tx;
    if (col >= p.head_dim_v) {
        return;
    }
    for (var a = 0u; a < 4u; a++) {
        let i = i0 + 4u * ty + a;
        if (i >= p.len_q) {
            continue;
        }
        let row = bh * p.len_q + i;
        var f = inv[a];
        if (p.has_rho == 1u) {
            f *= rho[row];
        }
        let lo = row * p.head_dim_v + col;
        let hi = lo + min(4u, p.head_dim_v - col);
        var vals = (*acc)[a] * f;
        if (p.has_residual == 1u) {
            for (var e = 0u; e < hi - lo; e++) {
                vals[e] += residual_ld(lo + e);
            }
        }
        // Words w (even) overlapping [lo, hi): the thread owns element w when w >= lo, w + 1
        // when w + 1 < hi.
        for (var w = lo & ~1u; w < hi; w += 2u) {
            let first = w >= lo;
            let second = w + 1u < hi;
            let v0 = select(0.0, vals[min(w - lo, 3u)], first);
            let v1 = select(0.0, vals[min(w + 1u - lo, 3u)], second);
            o_out_stp(w, first, second, v0, v1);
        }
    }
}

@compute @workgroup_size(128)
fn attention_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) t: u32) {
    let q_tiles = (p.len_q + FQ - 1u) / FQ;
    let w = flat_workgroup(wg, nwg);
    if (w >= p.batch * p.heads_q * q_tiles) {
        return;
    }
    let bh = w / q_tiles;
    let bkv = kv_head(bh);
    let i0 = (w % q_tiles) * FQ;
    let last_row = min(i0 + FQ, p.len_q) - 1u;
    let ty = t / 16u;
    let tx = t % 16u;
    let q_base = bh * p.len_q * p.head_dim;
    let k_base = bkv * p.len_k * p.head_dim;
    let v_base = bkv * p.len_k * p.head_dim_v;

    // Per row a of the thread's 4: the running max of the row's visible scores (shared by the
    // row's 16 threads) and this thread's partial Σ exp(s − m).
    var m = vec4<f32>(MASKED);
    var psum = vec4<f32>(0.0);
    var acc0: array<vec4<f32>, 4>;
    var acc1: array<vec4<f32>, 4>;
    var acc2: array<vec4<f32>, 4>;
    var acc3: array<vec4<f32>, 4>;
    if (p.tile_begin > 0u) {
        for (var a = 0u; a < 4u; a++) {
            let i = i0 + 4u * ty + a;
            if (i < p.len_q) {
                m[a] = state[fwd_state(bh, i)];
                psum[a] = state[fwd_state(bh, i) + 1u + tx];
            }
        }
        fwd_carry(&acc0, 0u, false, bh, i0, t);
        if (DV_CHUNKS > 1u) { fwd_carry(&acc1, 1u, false, bh, i0, t); }
        if (DV_CHUNKS > 2u) { fwd_carry(&acc2, 2u, false, bh, i0, t); }
        if (DV_CHUNKS > 3u) { fwd_carry(&acc3, 3u, false, bh, i0, t); }
    }

    let n_blocks = key_block_count(bh, i0 / BLOCK, last_row);
    for (var n = 0u; n < n_blocks; n++) {
        if (!in_pass(n)) {
            continue;
        }
        let j0 = key_block(bh, i0 / BLOCK, n) * BLOCK;

        // s[a][c] = q_{4 ty + a} · k_{4 tx + c}.
        var s: array<vec4<f32>, 4>;
        for (var d0 = 0u; d0 < p.head_dim; d0 += DK) {
            fwd_stage_q(q_base, i0, d0, t);
            fwd_stage_k(k_base, j0, d0, t);
            workgroupBarrier();
            for (var k = 0u; k < DK; k++) {
                let qk = fwd_smem[Q_T + k * 8u + ty];
                let kk = fwd_smem[K_T + k * 16u + tx];
                s[0] = fma(vec4<f32>(qk.x), kk, s[0]);
                s[1] = fma(vec4<f32>(qk.y), kk, s[1]);
                s[2] = fma(vec4<f32>(qk.z), kk, s[2]);
                s[3] = fma(vec4<f32>(qk.w), kk, s[3]);
            }
            workgroupBarrier();
        }

        // Scale and mask; the rows' maxima over the block through `red`.
        var part = vec4<f32>(MASKED);
        for (var a = 0u; a < 4u; a++) {
            for (var c = 0u; c < 4u; c++) {
                let sc = select(MASKED, p.scale * s[a][c],
                                visible(i0 + 4u * ty + a, j0 + 4u * tx + c));
                s[a][c] = sc;
                part[a] = max(part[a], sc);
            }
        }
        fwd_smem[RED + tx * 8u + ty] = part;
        workgroupBarrier();
        var m_new = m;
        for (var x = 0u; x < 16u; x++) {
            m_new = max(m_new, fwd_smem[RED + x * 8u + ty]);
        }

        // Online softmax: rows whose max is still MASKED see nothing yet (p = 0, alpha = 1).
        var alpha = vec4<f32>(1.0);
        var pr: array<vec4<f32>, 4>; // pr[c][a]: key 4 tx + c, row 4 ty + a
        for (var a = 0u; a < 4u; a++) {
            if (m_new[a] > MASKED) {
                alpha[a] = select(exp(m[a] - m_new[a]), 0.0, m[a] == MASKED);
                var block_sum = 0.0;
                for (var c = 0u; c < 4u; c++) {
                    let sc = s[a][c];
                    let e = select(exp(sc - m_new[a]), 0.0, sc == MASKED);
                    pr[c][a] = e;
                    block_sum += e;
                }
                psum[a] = psum[a] * alpha[a] + block_sum;
                m[a] = m_new[a];
            }
        }
        for (var c = 0u; c < 4u; c++) {
            fwd_smem[P_T + (4u * tx + c) * 8u + ty] = pr[c];
        }
        // p_t complete, and every thread done reading `red` before V overwrites it.
        workgroupBarrier();

        // acc = alpha · acc + P V, chunk by chunk of Dv.
        fwd_rescale(&acc0, alpha);
        fwd_pv_chunk(&acc0, 0u, v_base, j0, t);
        if (DV_CHUNKS > 1u) {
            fwd_rescale(&acc1, alpha);
            fwd_pv_chunk(&acc1, 1u, v_base, j0, t);
        }
        if (DV_CHUNKS > 2u) {
            fwd_rescale(&acc2, alpha);
            fwd_pv_chunk(&acc2, 2u, v_base, j0, t);
        }
        if (DV_CHUNKS > 3u) {
            fwd_rescale(&acc3, alpha);
            fwd_pv_chunk(&acc3, 3u, v_base, j0, t);
        }
    }

    if (p.last_pass == 0u) {
        for (var a = 0u; a < 4u; a++) {
            let i = i0 + 4u * ty + a;
            if (i < p.len_q) {
                if (tx == 0u) {
                    state[fwd_state(bh, i)] = m[a];
                }
                state[fwd_state(bh, i) + 1u + tx] = psum[a];
            }
        }
        fwd_carry(&acc0, 0u, true, bh, i0, t);
        if (DV_CHUNKS > 1u) { fwd_carry(&acc1, 1u, true, bh, i0, t); }
        if (DV_CHUNKS > 2u) { fwd_carry(&acc2, 2u, true, bh, i0, t); }
        if (DV_CHUNKS > 3u) { fwd_carry(&acc3, 3u, true, bh, i0, t); }
        return;
    }

    // The rows' sums: their 16 partial sums in a fixed order (the last P V chunk ended with a
    // barrier, so `red` is free).
    fwd_smem[RED + tx * 8u + ty] = psum;
    workgroupBarrier();
    var sum = vec4<f32>(0.0);
    for (var x = 0u; x < 16u; x++) {
        sum += fwd_smem[RED + x * 8u + ty];
    }
    var inv = vec4<f32>(0.0);
    for (var a = 0u; a < 4u; a++) {
        let i = i0 + 4u * ty + a;
        if (i < p.len_q && tx == 0u) {
            lse_out[bh * p.len_q + i] = select(m[a] + log(sum[a]), neg_inf(), sum[a] == 0.0);
        }
        inv[a] = select(1.0 / sum[a], 0.0, sum[a] == 0.0);
    }
    fwd_store(&acc0, 0u, bh, i0, inv, t);
    if (DV_CHUNKS > 1u) { fwd_store(&acc1, 1u, bh, i0, inv, t); }
    if (DV_CHUNKS > 2u) { fwd_store(&acc2, 2u, bh, i0, inv, t); }
    if (DV_CHUNKS > 3u) { fwd_store(&acc3, 3u, bh, i0, inv, t); }
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
