// Shared by attention.wgsl and topk.wgsl: the host puts this file between common.wgsl and
// either op's file. Both read the same uniform (`Params` in crates/flashneck-wgpu/src/
// attention.rs), so they declare it once here.

struct Params {
    batch: u32,
    heads_q: u32,
    heads_kv: u32,
    len_q: u32,
    len_k: u32,
    head_dim: u32,
    head_dim_v: u32,
    group: u32,        // heads_q / heads_kv
    scale: f32,
    causal: u32,
    sparse: u32,       // 1: iterate the layout's key blocks (and the transposed one's query blocks)
    max_blocks: u32,   // layout row capacity (topk: of the result, min(nKB, sink + local + keep))
    max_blocks_t: u32, // transposed layout row capacity
    q_blocks: u32,
    k_blocks: u32,
    has_rho: u32,
    has_residual: u32,
    // topk.wgsl only: keep, sink and local are clamped to nKB by the host.
    keep: u32,
    sink: u32,
    local: u32,
    // attention.wgsl only: this pass runs the tiles tile_begin .. tile_end of each workgroup's
    // loop (counted in loop order); the first pass starts fresh, the others resume from the
    // carried state, and only the last pass (last_pass = 1) writes the outputs. See
    // attention.wgsl's header.
    tile_begin: u32,
    tile_end: u32,
    last_pass: u32,
}

const BLOCK: u32 = 64u; // layout block edge

@group(0) @binding(0) var<uniform> p: Params;

// Keys 0 .. visible_keys(i) are the ones query row i may see (SPEC §1; causal is bottom-right
// aligned).
fn visible_keys(i: u32) -> u32 {
    if (p.causal == 0u) {
        return p.len_k;
    }
    if (i + 1u + p.len_k <= p.len_q) {
        return 0u;
    }
    return min(i + 1u + p.len_k - p.len_q, p.len_k);
}

// The kv head (batch-major, like the query head) that query head bh reads under GQA.
fn kv_head(bh: u32) -> u32 {
    return (bh / p.heads_q) * p.heads_kv + (bh % p.heads_q) / p.group;
}
