// Dense and block-sparse attention (SPEC §1, §2), FlashAttention-2 style, register-tiled.
//
// Every kernel but Δ works on tiles of 32 rows by 64 columns with 128 threads: thread
// t = 16 ty + tx holds, in registers, the 4 × 4 products of rows 4 ty .. + 4 and columns
// 4 tx .. + 4 (`tile_products`), and output accumulators for the same 4 rows at columns
// 64 c + 4 tx .. + 4 of each 64-column chunk c of the output's head dim (`Acc`: one member per
// chunk, so every index is a constant and the driver keeps them in registers; the number of
// chunks is a pipeline constant). Rows and columns are:
//   forward   32 query rows × the 64 keys of a key block      O   += P V
//   dQ        32 query rows × the 64 keys of a key block      dQ  += dS K
//   dK/dV     32 keys × the 64 query rows of a query block     dV  += Pᵀ dO, dK += dSᵀ Q
// The columns are whole 64-blocks of the BlockLayout (SPEC §2), so a sparse kernel walks its
// layout row (or the transposed layout's row) one entry at a time; dense walks every block up
// to the last visible one. Both products read two vec4 of workgroup memory per 16
// multiply-adds: the operands of a product of rows are staged transposed, 16 head dims at a
// time; the weights of an accumulation (P, dS, or their transposes) are stored transposed and
// the value rows staged 32 rows × 64 columns at a time. Everything fits in 16 KiB of workgroup
// memory (`smem`), for any D, Dv <= 256.
//
// Passes: lavapipe (llvmpipe) silently stops a workgroup short once it has run about a
// thousand workgroup barriers in these loops (measured: ~970 fail, ~850 pass; docs/wgpu.md).
// So the host bounds the barriers per workgroup: each kernel's loop over blocks (key blocks for
// the forward and dQ, the query blocks of the GQA group for dK/dV) is cut into passes of at
// most `tile_end - tile_begin` blocks, one dispatch each, in order. A pass restores the loop's
// state (the forward's running max, partial sums and accumulators; the dQ or dK/dV
// accumulators) from `state`, runs its blocks, and saves the state again; the last pass writes
// the outputs instead. The state is f32 and the blocks run in the same order as in a single
// pass, so the arithmetic is the single pass's: no extra rounding, no reassociation, no atomics
// (deterministic).
//
// Element masking (keys >= Lk, causal bottom-right alignment) applies inside every block.
// Masked scores are carried as a finite sentinel rather than -inf, which WGSL implementations
// may assume away.

// `Params`, `p`, BLOCK, visible_keys and kv_head come from attention_common.wgsl.

const WG: u32 = 64u;       // threads per workgroup of Δ
const TR: u32 = 32u;       // rows per tile
const TWG: u32 = 128u;     // threads per tile: 8 row quads × 16 column quads
const DK: u32 = 16u;       // head dims staged per step of a product of rows
const MASKED: f32 = -3.0e38;

// Number of 64-column chunks of D and of Dv (1 ..= 4), fixed per pipeline by the host.
override D_CHUNKS: u32 = 1u;
override DV_CHUNKS: u32 = 1u;

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
// (LSE, Δ) of each query row: written by attention_backward_delta, which copies LSE from lse_in
// beside Δ, and read by dQ and dK/dV, which so bind one buffer fewer (and load both at once).
@group(0) @binding(13) var<storage, read_write> stats: array<vec2<f32>>;
@group(0) @binding(14) var<storage, read_write> dq: array<elem>;
@group(0) @binding(15) var<storage, read_write> dk: array<elem>;
@group(0) @binding(16) var<storage, read_write> dv: array<elem>;
@group(0) @binding(17) var<storage, read> counts_t: array<u32>;
@group(0) @binding(18) var<storage, read> indices_t: array<u32>;
// The loop state carried between passes: per query row for the forward (m, the row's 16
// partial sums, acc[Dv]) and dQ (acc[D]), per key for dK/dV (acc_k[D], acc_v[Dv]).
@group(0) @binding(19) var<storage, read_write> state: array<f32>;

// Workgroup memory, in vec4. [0, 512) holds the operands of a product of rows, A_T (16 dims ×
// 8 row quads) and B_T (16 dims × 16 column quads), or then the forward's exchange RED (16 × 8),
// or the 32 value rows V_S (32 × 16 column quads) of an accumulation; [512, 1024) holds its
// weights W_T (64 columns × 8 row quads). A_T, B_T and RED pad each row by one vec4, so that
// the 8 threads of a quarter warp storing consecutive rows hit different banks.
var<workgroup> smem: array<vec4<f32>, 1024>;
const A_T: u32 = 0u;    // 16 × (8 + 1)
const B_T: u32 = 144u;  // 16 × (16 + 1), up to 416
const RED: u32 = 0u;    // 16 × (8 + 1), over A_T: used between products only
const V_S: u32 = 0u;
const W_T: u32 = 512u;

// Tensors `load` can read.
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

// Rows row0 .. of the [n_rows, dim] matrix at flat element `base` of tensor `src` (rows past
// n_rows read as 0).
struct Rows {
    src: u32,
    base: u32,
    row0: u32,
    n_rows: u32,
    dim: u32,
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

// Whether block `it` (counted in loop order) belongs to this pass.
fn in_pass(it: u32) -> bool {
    return it >= p.tile_begin && it < p.tile_end;
}

// ---------------------------------------------------------------- the two products

// Stage dims d0 .. d0 + 16 of rows m.row0 + 4 q + a (q < quads, a < 4) transposed:
// smem[at + kk * (quads + 1) + q][a] = M[m.row0 + 4 q + a][d0 + kk] (0 past the matrix).
fn stage_transposed(at: u32, quads: u32, m: Rows, d0: u32, t: u32) {
    for (var idx = t; idx < DK * quads; idx += TWG) {
        let kk = idx % DK;
        let qd = idx / DK;
        var quad = vec4<f32>(0.0);
        if (d0 + kk < m.dim) {
            for (var a = 0u; a < 4u; a++) {
                let r = m.row0 + 4u * qd + a;
                if (r < m.n_rows) {
                    quad[a] = load(m.src, m.base + r * m.dim + d0 + kk);
                }
            }
        }
        smem[at + kk * (quads + 1u) + qd] = quad;
    }
}

// acc + a ⊗ b: acc[r][c] + a[r] · b[c], 16 multiply-adds.
fn outer_fma(acc: array<vec4<f32>, 4>, a: vec4<f32>, b: vec4<f32>) -> array<vec4<f32>, 4> {
    return array<vec4<f32>, 4>(fma(vec4<f32>(a.x), b, acc[0]), fma(vec4<f32>(a.y), b, acc[1]),
                               fma(vec4<f32>(a.z), b, acc[2]), fma(vec4<f32>(a.w), b, acc[3]));
}

// out[a][c] = A[a_rows.row0 + 4 ty + a] · B[b_rows.row0 + 4 tx + c] over the head dim the two
// share (a_rows.dim). Holds barriers: call in uniform control flow.
fn tile_products(a_rows: Rows, b_rows: Rows, t: u32) -> array<vec4<f32>, 4> {
    let ty = t / 16u;
    let tx = t % 16u;
    var out: array<vec4<f32>, 4>;
    for (var d0 = 0u; d0 < a_rows.dim; d0 += DK) {
        stage_transposed(A_T, 8u, a_rows, d0, t);
        stage_transposed(B_T, 16u, b_rows, d0, t);
        workgroupBarrier();
        for (var kk = 0u; kk < DK; kk++) {
            out = outer_fma(out, smem[A_T + kk * 9u + ty], smem[B_T + kk * 17u + tx]);
        }
        workgroupBarrier();
    }
    return out;
}

// Where W_T keeps the weights of column col, row quad rq. The row quads of a column are
// permuted (XOR by col / 4), so that the 8 threads of a quarter warp storing the same c of
// consecutive tx hit different banks.
fn w_index(col: u32, rq: u32) -> u32 {
    return W_T + col * 8u + (rq ^ ((col / 4u) & 7u));
}

// Store the thread's weights w[a][c] (row 4 ty + a, column 4 tx + c) transposed in W_T, for
// `accumulate`. Follow with a barrier.
fn store_weights(w: array<vec4<f32>, 4>, t: u32) {
    let ty = t / 16u;
    let tx = t % 16u;
    for (var c = 0u; c < 4u; c++) {
        smem[w_index(4u * tx + c, ty)] = vec4<f32>(w[0][c], w[1][c], w[2][c], w[3][c]);
    }
}

// Output accumulators: chunk cN holds rows 4 ty + a, columns 64 N + 4 tx .. + 4.
struct Acc {
    c0: array<vec4<f32>, 4>,
    c1: array<vec4<f32>, 4>,
    c2: array<vec4<f32>, 4>,
    c3: array<vec4<f32>, 4>,
}

// acc[a] + Σ_j W[4 ty + a][j] · M[m.row0 + j][64 c + 4 tx ..] over the 64 weight columns, for
// one 64-column chunk c of M's dim: M staged 32 rows at a time. Holds barriers: call in
// uniform control flow, after `store_weights` and a barrier.
fn accumulate_chunk(acc: array<vec4<f32>, 4>, c: u32, m: Rows, t: u32) -> array<vec4<f32>, 4> {
    let ty = t / 16u;
    let tx = t % 16u;
    var out = acc;
    for (var h = 0u; h < 2u; h++) {
        // V_S[j][col / 4][col % 4] = M[m.row0 + 32 h + j][64 c + col]: 16 elements per thread,
        // consecutive threads reading consecutive columns (whole 128-byte lines of f32 per warp
        // load) and storing consecutive words.
        for (var n = 0u; n < 16u; n++) {
            let idx = t + TWG * n;
            let j = idx / 64u;
            let col = idx % 64u;
            let r = m.row0 + 32u * h + j;
            var val = 0.0;
            if (r < m.n_rows && 64u * c + col < m.dim) {
                val = load(m.src, m.base + r * m.dim + 64u * c + col);
            }
            smem[V_S + j * 16u + col / 4u][col % 4u] = val;
        }
        workgroupBarrier();
        for (var j = 0u; j < 32u; j++) {
            out = outer_fma(out, smem[w_index(32u * h + j, ty)], smem[V_S + j * 16u + tx]);
        }
        workgroupBarrier();
    }
    return out;
}

// acc + W M over the chunks of M's dim (`chunks` = ⌈m.dim / 64⌉, a pipeline constant).
fn accumulate(acc: Acc, chunks: u32, m: Rows, t: u32) -> Acc {
    var out = acc;
    out.c0 = accumulate_chunk(out.c0, 0u, m, t);
    if (chunks > 1u) {
        out.c1 = accumulate_chunk(out.c1, 1u, m, t);
    }
    if (chunks > 2u) {
        out.c2 = accumulate_chunk(out.c2, 2u, m, t);
    }
    if (chunks > 3u) {
        out.c3 = accumulate_chunk(out.c3, 3u, m, t);
    }
    return out;
}

fn rescale_chunk(acc: array<vec4<f32>, 4>, f: vec4<f32>) -> array<vec4<f32>, 4> {
    return array<vec4<f32>, 4>(acc[0] * f.x, acc[1] * f.y, acc[2] * f.z, acc[3] * f.w);
}

// Row a of the `chunks` chunks in use times f[a].
fn rescale(acc: Acc, chunks: u32, f: vec4<f32>) -> Acc {
    var out = acc;
    out.c0 = rescale_chunk(out.c0, f);
    if (chunks > 1u) {
        out.c1 = rescale_chunk(out.c1, f);
    }
    if (chunks > 2u) {
        out.c2 = rescale_chunk(out.c2, f);
    }
    if (chunks > 3u) {
        out.c3 = rescale_chunk(out.c3, f);
    }
    return out;
}

// ---------------------------------------------------------------- state and stores

// Rows row0 .. (< n_rows) of a tile in a row-major f32 or element array: row r, column col
// at flat index (row_base + r) · stride + offset + col, col < dim. Used for the carried state
// (stride and offset of its layout) and for the outputs (stride = dim, offset 0).
struct Span {
    row_base: u32,
    row0: u32,
    n_rows: u32,
    stride: u32,
    offset: u32,
    dim: u32,
}

fn carry_chunk(acc: array<vec4<f32>, 4>, c: u32, save: bool, s: Span,
               t: u32) -> array<vec4<f32>, 4> {
    let ty = t / 16u;
    let tx = t % 16u;
    var out = acc;
    for (var a = 0u; a < 4u; a++) {
        let r = s.row0 + 4u * ty + a;
        if (r >= s.n_rows) {
            continue;
        }
        let st = (s.row_base + r) * s.stride + s.offset;
        for (var e = 0u; e < 4u; e++) {
            let col = 64u * c + 4u * tx + e;
            if (col < s.dim) {
                if (save) {
                    state[st + col] = out[a][e];
                } else {
                    out[a][e] = state[st + col];
                }
            }
        }
    }
    return out;
}

// Save acc (save = true; returns it unchanged) or restore it from `state`.
fn carry(acc: Acc, chunks: u32, save: bool, s: Span, t: u32) -> Acc {
    var out = acc;
    out.c0 = carry_chunk(out.c0, 0u, save, s, t);
    if (chunks > 1u) {
        out.c1 = carry_chunk(out.c1, 1u, save, s, t);
    }
    if (chunks > 2u) {
        out.c2 = carry_chunk(out.c2, 2u, save, s, t);
    }
    if (chunks > 3u) {
        out.c3 = carry_chunk(out.c3, 3u, save, s, t);
    }
    return out;
}

// Outputs `store` writes.
const OUT_O: u32 = 0u;
const OUT_DQ: u32 = 1u;
const OUT_DK: u32 = 2u;
const OUT_DV: u32 = 3u;

fn store_pair(out: u32, w: u32, first: bool, second: bool, v0: f32, v1: f32) {
    switch out {
        case 0u: { o_out_stp(w, first, second, v0, v1); }
        case 1u: { dq_stp(w, first, second, v0, v1); }
        case 2u: { dk_stp(w, first, second, v0, v1); }
        default: { dv_stp(w, first, second, v0, v1); }
    }
}

// Write chunk c of the thread's rows of the output `out` (`rows`: stride = dim, offset 0):
// acc[a] · f[a], times ρ and plus the residual for O when the epilogue has them.
// Consecutive elements of the thread are paired into the words it owns (packed bf16 stores
// whole words where it can).
fn store_chunk(acc: array<vec4<f32>, 4>, c: u32, out: u32, rows: Span, f: vec4<f32>, t: u32) {
    let ty = t / 16u;
    let tx = t % 16u;
    let col = 64u * c + 4u * tx;
    if (col >= rows.dim) {
        return;
    }
    for (var a = 0u; a < 4u; a++) {
        let r = rows.row0 + 4u * ty + a;
        if (r >= rows.n_rows) {
            continue;
        }
        let row = rows.row_base + r;
        var fa = f[a];
        if (out == OUT_O && p.has_rho == 1u) {
            fa *= rho[row];
        }
        let lo = row * rows.stride + rows.offset + col;
        let n = min(4u, rows.dim - col);
        var vals = acc[a] * fa;
        if (out == OUT_O && p.has_residual == 1u) {
            vals += residual_quad(lo, n);
        }
        // The thread owns elements lo .. lo + n: whole words where lo is even, else the second
        // half of word lo - 1, then pairs (every index a constant: no local-memory vector).
        if ((lo & 1u) == 0u) {
            store_pair(out, lo, true, n > 1u, vals.x, vals.y);
            if (n > 2u) {
                store_pair(out, lo + 2u, true, n > 3u, vals.z, vals.w);
            }
        } else {
            store_pair(out, lo - 1u, false, true, 0.0, vals.x);
            if (n > 1u) {
                store_pair(out, lo + 1u, true, n > 2u, vals.y, vals.z);
            }
            if (n > 3u) {
                store_pair(out, lo + 3u, true, false, vals.w, 0.0);
            }
        }
    }
}

// The residual's elements lo .. lo + n (n <= 4), 0 past them.
fn residual_quad(lo: u32, n: u32) -> vec4<f32> {
    var r = vec4<f32>(0.0);
    r.x = residual_ld(lo);
    if (n > 1u) {
        r.y = residual_ld(lo + 1u);
    }
    if (n > 2u) {
        r.z = residual_ld(lo + 2u);
    }
    if (n > 3u) {
        r.w = residual_ld(lo + 3u);
    }
    return r;
}

// The tile's rows row0 .. (< n_rows) of a [.., dim] output whose first row is row_base.
fn output_rows(row_base: u32, row0: u32, n_rows: u32, dim: u32) -> Span {
    return Span(row_base, row0, n_rows, dim, 0u, dim);
}

fn store(acc: Acc, chunks: u32, out: u32, rows: Span, f: vec4<f32>, t: u32) {
    store_chunk(acc.c0, 0u, out, rows, f, t);
    if (chunks > 1u) {
        store_chunk(acc.c1, 1u, out, rows, f, t);
    }
    if (chunks > 2u) {
        store_chunk(acc.c2, 2u, out, rows, f, t);
    }
    if (chunks > 3u) {
        store_chunk(acc.c3, 3u, out, rows, f, t);
    }
}

// ---------------------------------------------------------------- query tiles

// The 32-row query tile of a forward or dQ workgroup: query head bh (reading kv head bkv),
// rows i0 .. i0 + 32 (the last existing one last_row), in layout block qb.
struct QueryTile {
    bh: u32,
    bkv: u32,
    i0: u32,
    qb: u32,
    last_row: u32,
}

// Tile w of the grid (false when w is past it).
fn query_tile(w: u32, tile: ptr<function, QueryTile>) -> bool {
    let q_tiles = (p.len_q + TR - 1u) / TR;
    if (w >= p.batch * p.heads_q * q_tiles) {
        return false;
    }
    let bh = w / q_tiles;
    let i0 = (w % q_tiles) * TR;
    *tile = QueryTile(bh, kv_head(bh), i0, i0 / BLOCK, min(i0 + TR, p.len_q) - 1u);
    return true;
}

// Q, K, V, dO of head bh (kv head bkv) as row operands: Q and dO from query row i0, K and V
// from key j0.
fn q_rows(bh: u32, i0: u32) -> Rows {
    return Rows(SRC_Q, bh * p.len_q * p.head_dim, i0, p.len_q, p.head_dim);
}
fn do_rows(bh: u32, i0: u32) -> Rows {
    return Rows(SRC_DO, bh * p.len_q * p.head_dim_v, i0, p.len_q, p.head_dim_v);
}
fn k_rows(bkv: u32, j0: u32) -> Rows {
    return Rows(SRC_K, bkv * p.len_k * p.head_dim, j0, p.len_k, p.head_dim);
}
fn v_rows(bkv: u32, j0: u32) -> Rows {
    return Rows(SRC_V, bkv * p.len_k * p.head_dim_v, j0, p.len_k, p.head_dim_v);
}

// ---------------------------------------------------------------- forward

// O = softmax(scale · Q Kᵀ) V per 32 query rows, online over the rows' key blocks. All 16
// threads of a row share its running max m (exchanged through RED once per block); each keeps
// its own partial sum of exp(s − m) over its 4 keys of every block, and the 16 are added in a
// fixed order at the end, so passes and single runs give the same bits.
@compute @workgroup_size(128)
fn attention_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) t: u32) {
    var tile: QueryTile;
    if (!query_tile(flat_workgroup(wg, nwg), &tile)) {
        return;
    }
    let ty = t / 16u;
    let tx = t % 16u;
    // State per row: m, 16 partial sums, then acc.
    let carried = Span(tile.bh * p.len_q, tile.i0, p.len_q, p.head_dim_v + 17u, 17u,
                       p.head_dim_v);

    // Per row a of the thread's 4: the running max of the row's visible scores and this
    // thread's partial Σ exp(s − m).
    var m = vec4<f32>(MASKED);
    var psum = vec4<f32>(0.0);
    var acc: Acc;
    if (p.tile_begin > 0u) {
        for (var a = 0u; a < 4u; a++) {
            let i = tile.i0 + 4u * ty + a;
            if (i < p.len_q) {
                let st = (tile.bh * p.len_q + i) * carried.stride;
                m[a] = state[st];
                psum[a] = state[st + 1u + tx];
            }
        }
        acc = carry(acc, DV_CHUNKS, false, carried, t);
    }

    let n_blocks = key_block_count(tile.bh, tile.qb, tile.last_row);
    for (var n = 0u; n < n_blocks; n++) {
        if (!in_pass(n)) {
            continue;
        }
        let j0 = key_block(tile.bh, tile.qb, n) * BLOCK;
        var s = tile_products(q_rows(tile.bh, tile.i0), k_rows(tile.bkv, j0), t);

        // Scale and mask; the rows' maxima over the block through RED.
        var part = vec4<f32>(MASKED);
        for (var a = 0u; a < 4u; a++) {
            for (var c = 0u; c < 4u; c++) {
                let sc = select(MASKED, p.scale * s[a][c],
                                visible(tile.i0 + 4u * ty + a, j0 + 4u * tx + c));
                s[a][c] = sc;
                part[a] = max(part[a], sc);
            }
        }
        smem[RED + tx * 9u + ty] = part;
        workgroupBarrier();
        var m_new = m;
        for (var x = 0u; x < 16u; x++) {
            m_new = max(m_new, smem[RED + x * 9u + ty]);
        }

        // Online softmax: rows whose max is still MASKED see nothing yet (p = 0, alpha = 1).
        var alpha = vec4<f32>(1.0);
        var pr: array<vec4<f32>, 4>;
        for (var a = 0u; a < 4u; a++) {
            if (m_new[a] > MASKED) {
                alpha[a] = select(exp(m[a] - m_new[a]), 0.0, m[a] == MASKED);
                var block_sum = 0.0;
                for (var c = 0u; c < 4u; c++) {
                    let sc = s[a][c];
                    let e = select(exp(sc - m_new[a]), 0.0, sc == MASKED);
                    pr[a][c] = e;
                    block_sum += e;
                }
                psum[a] = psum[a] * alpha[a] + block_sum;
                m[a] = m_new[a];
            }
        }
        store_weights(pr, t);
        // W_T complete, and every thread done reading RED before V_S overwrites it.
        workgroupBarrier();
        acc = accumulate(rescale(acc, DV_CHUNKS, alpha), DV_CHUNKS, v_rows(tile.bkv, j0), t);
    }

    if (p.last_pass == 0u) {
        for (var a = 0u; a < 4u; a++) {
            let i = tile.i0 + 4u * ty + a;
            if (i < p.len_q) {
                let st = (tile.bh * p.len_q + i) * carried.stride;
                if (tx == 0u) {
                    state[st] = m[a];
                }
                state[st + 1u + tx] = psum[a];
            }
        }
        carry(acc, DV_CHUNKS, true, carried, t);
        return;
    }

    // The rows' sums: their 16 partial sums in a fixed order (the last accumulation ended with
    // a barrier, so RED is free).
    smem[RED + tx * 9u + ty] = psum;
    workgroupBarrier();
    var sum = vec4<f32>(0.0);
    for (var x = 0u; x < 16u; x++) {
        sum += smem[RED + x * 9u + ty];
    }
    var inv = vec4<f32>(0.0);
    for (var a = 0u; a < 4u; a++) {
        let i = tile.i0 + 4u * ty + a;
        if (i < p.len_q && tx == 0u) {
            lse_out[tile.bh * p.len_q + i] = select(m[a] + log(sum[a]), neg_inf(), sum[a] == 0.0);
        }
        inv[a] = select(1.0 / sum[a], 0.0, sum[a] == 0.0);
    }
    store(acc, DV_CHUNKS, OUT_O, output_rows(tile.bh * p.len_q, tile.i0, p.len_q, p.head_dim_v),
          inv, t);
}

// ---------------------------------------------------------------- backward

// Δ_i = Σ_d dO_id · O_id: 16 threads per query row (4 rows per workgroup) read consecutive
// columns, and a fixed tree adds their 16 partial sums (the same bits every run); stored with
// the row's LSE as stats[i].
const DELTA_LANES: u32 = 16u;
var<workgroup> delta_red: array<f32, WG>;

@compute @workgroup_size(64)
fn attention_backward_delta(@builtin(workgroup_id) wg: vec3<u32>,
                            @builtin(num_workgroups) nwg: vec3<u32>,
                            @builtin(local_invocation_index) t: u32) {
    let rows = p.batch * p.heads_q * p.len_q;
    let row0 = flat_workgroup(wg, nwg) * (WG / DELTA_LANES);
    if (row0 >= rows) {
        return;
    }
    let row = row0 + t / DELTA_LANES;
    let lane = t % DELTA_LANES;
    var s = 0.0;
    if (row < rows) {
        for (var c = lane; c < p.head_dim_v; c += DELTA_LANES) {
            s += d_o_ld(row * p.head_dim_v + c) * o_in_ld(row * p.head_dim_v + c);
        }
    }
    delta_red[t] = s;
    workgroupBarrier();
    for (var h = DELTA_LANES / 2u; h > 0u; h >>= 1u) {
        if (lane < h) {
            delta_red[t] += delta_red[t + h];
        }
        workgroupBarrier();
    }
    if (lane == 0u && row < rows) {
        stats[row] = vec2<f32>(lse_in[row], delta_red[t]);
    }
}

// LSE and Δ of query row i of head bh (MASKED and 0 past Lq, so that P = 0 there).
fn row_stats(bh: u32, i: u32) -> vec2<f32> {
    if (i >= p.len_q) {
        return vec2<f32>(MASKED, 0.0);
    }
    return stats[bh * p.len_q + i];
}

// P = exp(scale · s − lse) where query i sees key j and the row saw a key (lse > −inf), else
// 0; and dS = P (dP − Δ).
fn p_and_ds(s: f32, dp: f32, i: u32, j: u32, stats: vec2<f32>) -> vec2<f32> {
    if (stats.x <= MASKED || !visible(i, j)) {
        return vec2<f32>(0.0);
    }
    let pr = exp(p.scale * s - stats.x);
    return vec2<f32>(pr, pr * (dp - stats.y));
}

// dQ = scale · dS K per 32 query rows, over the rows' key blocks.
@compute @workgroup_size(128)
fn attention_backward_dq(@builtin(workgroup_id) wg: vec3<u32>,
                         @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_index) t: u32) {
    var tile: QueryTile;
    if (!query_tile(flat_workgroup(wg, nwg), &tile)) {
        return;
    }
    let ty = t / 16u;
    let tx = t % 16u;
    let carried = output_rows(tile.bh * p.len_q, tile.i0, p.len_q, p.head_dim);
    var acc: Acc;
    if (p.tile_begin > 0u) {
        acc = carry(acc, D_CHUNKS, false, carried, t);
    }
    var stats: array<vec2<f32>, 4>;
    for (var a = 0u; a < 4u; a++) {
        stats[a] = row_stats(tile.bh, tile.i0 + 4u * ty + a);
    }
    let n_blocks = key_block_count(tile.bh, tile.qb, tile.last_row);
    for (var n = 0u; n < n_blocks; n++) {
        if (!in_pass(n)) {
            continue;
        }
        let j0 = key_block(tile.bh, tile.qb, n) * BLOCK;
        let s = tile_products(q_rows(tile.bh, tile.i0), k_rows(tile.bkv, j0), t);
        let dp = tile_products(do_rows(tile.bh, tile.i0), v_rows(tile.bkv, j0), t);
        var ds: array<vec4<f32>, 4>;
        for (var a = 0u; a < 4u; a++) {
            for (var c = 0u; c < 4u; c++) {
                ds[a][c] = p_and_ds(s[a][c], dp[a][c], tile.i0 + 4u * ty + a, j0 + 4u * tx + c,
                                    stats[a]).y;
            }
        }
        store_weights(ds, t);
        workgroupBarrier();
        acc = accumulate(acc, D_CHUNKS, k_rows(tile.bkv, j0), t);
    }
    if (p.last_pass == 0u) {
        carry(acc, D_CHUNKS, true, carried, t);
        return;
    }
    store(acc, D_CHUNKS, OUT_DQ, carried, vec4<f32>(p.scale), t);
}

// dK = scale · dSᵀ Q and dV = Pᵀ dO per 32 keys of one kv head, summing over the query heads of
// its GQA group and their query blocks, in a fixed order (no atomics).
@compute @workgroup_size(128)
fn attention_backward_dkdv(@builtin(workgroup_id) wg: vec3<u32>,
                           @builtin(num_workgroups) nwg: vec3<u32>,
                           @builtin(local_invocation_index) t: u32) {
    let k_tiles = (p.len_k + TR - 1u) / TR;
    let w = flat_workgroup(wg, nwg);
    if (w >= p.batch * p.heads_kv * k_tiles) {
        return;
    }
    let bkv = w / k_tiles;
    let j0 = (w % k_tiles) * TR;
    let kb = j0 / BLOCK;
    let b = bkv / p.heads_kv;
    let hkv = bkv % p.heads_kv;
    let ty = t / 16u;
    let tx = t % 16u;
    // State per key: acc_k[D], then acc_v[Dv].
    let stride = p.head_dim + p.head_dim_v;
    let carried_k = Span(bkv * p.len_k, j0, p.len_k, stride, 0u, p.head_dim);
    let carried_v = Span(bkv * p.len_k, j0, p.len_k, stride, p.head_dim, p.head_dim_v);
    var acc_k: Acc;
    var acc_v: Acc;
    if (p.tile_begin > 0u) {
        acc_k = carry(acc_k, D_CHUNKS, false, carried_k, t);
        acc_v = carry(acc_v, DV_CHUNKS, false, carried_v, t);
    }
    var it = 0u;
    for (var g = 0u; g < p.group; g++) {
        let bh = b * p.heads_q + hkv * p.group + g;
        let n_blocks = query_block_count(bh, kb);
        for (var n = 0u; n < n_blocks; n++) {
            let i0 = query_block(bh, kb, n) * BLOCK;
            // Skip query blocks that see none of these keys (causal).
            if (visible_keys(min(i0 + BLOCK, p.len_q) - 1u) <= j0) {
                continue;
            }
            it++;
            if (!in_pass(it - 1u)) {
                continue;
            }
            // Rows = keys here, columns = queries: st[a][c] = k_{j0 + 4 ty + a} · q_{i0 + 4 tx + c}.
            let st = tile_products(k_rows(bkv, j0), q_rows(bh, i0), t);
            let dpt = tile_products(v_rows(bkv, j0), do_rows(bh, i0), t);
            var pt: array<vec4<f32>, 4>;
            var dst: array<vec4<f32>, 4>;
            for (var c = 0u; c < 4u; c++) {
                let i = i0 + 4u * tx + c;
                let stats = row_stats(bh, i);
                for (var a = 0u; a < 4u; a++) {
                    let pd = p_and_ds(st[a][c], dpt[a][c], i, j0 + 4u * ty + a, stats);
                    pt[a][c] = pd.x;
                    dst[a][c] = pd.y;
                }
            }
            // dV[j] += Σ_i P[i][j] dO[i], then dK[j] += Σ_i dS[i][j] Q[i] (each accumulation
            // ends with a barrier, so W_T is free again).
            store_weights(pt, t);
            workgroupBarrier();
            acc_v = accumulate(acc_v, DV_CHUNKS, do_rows(bh, i0), t);
            store_weights(dst, t);
            workgroupBarrier();
            acc_k = accumulate(acc_k, D_CHUNKS, q_rows(bh, i0), t);
        }
    }
    if (p.last_pass == 0u) {
        carry(acc_k, D_CHUNKS, true, carried_k, t);
        carry(acc_v, DV_CHUNKS, true, carried_v, t);
        return;
    }
    store(acc_k, D_CHUNKS, OUT_DK, output_rows(bkv * p.len_k, j0, p.len_k, p.head_dim),
          vec4<f32>(p.scale), t);
    store(acc_v, DV_CHUNKS, OUT_DV, output_rows(bkv * p.len_k, j0, p.len_k, p.head_dim_v),
          vec4<f32>(1.0), t);
}
