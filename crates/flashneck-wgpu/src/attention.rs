//! Dense and block-sparse attention on the device (SPEC §1, §2): the host side of
//! `kernels/wgsl/attention.wgsl` and `kernels/wgsl/topk.wgsl`.
//!
//! Dense attention runs the sparse kernels with `sparse = 0` (every key block up to the last
//! visible one), so the two share one code path. Unused bindings (the layout for dense calls,
//! the epilogue when absent) are bound to a one-word stand-in buffer.

use crate::device::{Bind, Launch};
use crate::shaders::Shader;
use crate::{BACKEND, WgpuBackend, WgpuBuffer};
use flashneck_core::{
    AttentionParams, AttentionShape, Backend, DType, DeviceLayout, Error, Result, TopkParams,
};

/// Tile edge of the backward kernels (query rows and keys per tile).
const TILE: usize = 16;
/// Query rows per workgroup of the forward (`FQ` in attention.wgsl); it walks keys a layout
/// block (64) at a time.
const FORWARD_ROWS: usize = 32;
/// Head dims of Q and K the forward stages per step of S (`DK` in attention.wgsl).
const FORWARD_DK: usize = 16;
/// Head-dim chunk the kernels stage in workgroup memory (`CH` in attention.wgsl).
const CH: usize = 64;
/// Key blocks topk.wgsl's per-thread bitset holds (64 words of 32 bits): len_k <= 131072.
const MAX_TOPK_KEY_BLOCKS: usize = 2048;
/// Threads per workgroup of the row-wise kernels.
const WG: u64 = 64;

/// Must match `Params` in attention.wgsl and topk.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    batch: u32,
    heads_q: u32,
    heads_kv: u32,
    len_q: u32,
    len_k: u32,
    head_dim: u32,
    head_dim_v: u32,
    group: u32,
    scale: f32,
    causal: u32,
    sparse: u32,
    max_blocks: u32,
    max_blocks_t: u32,
    q_blocks: u32,
    k_blocks: u32,
    has_rho: u32,
    has_residual: u32,
    // topk.wgsl only.
    keep: u32,
    sink: u32,
    local: u32,
    // attention.wgsl only: the pass (see `passes`).
    tile_begin: u32,
    tile_end: u32,
    last_pass: u32,
}

impl Params {
    /// Sizes as u32: every buffer passed the binding-size check (< 2^32 bytes).
    fn of(p: &AttentionParams) -> Self {
        let s = &p.shape;
        Params {
            batch: s.batch as u32,
            heads_q: s.heads_q as u32,
            heads_kv: s.heads_kv as u32,
            len_q: s.len_q as u32,
            len_k: s.len_k as u32,
            head_dim: s.head_dim as u32,
            head_dim_v: s.head_dim_v as u32,
            group: s.group_size() as u32,
            scale: p.scale,
            causal: u32::from(p.causal),
            q_blocks: s.q_blocks() as u32,
            k_blocks: s.k_blocks() as u32,
            ..Params::default()
        }
    }
}

/// Workgroup barriers one workgroup may run in one dispatch on a CPU adapter. lavapipe
/// (llvmpipe) stops a workgroup of these kernels short, with no error, once it has run about a
/// thousand barriers (measured on Mesa 22.3.6: ~970 fail, ~850 pass;
/// `tests/lavapipe_long_workgroups.rs`), so there the loops are cut into passes of at most this
/// many, with a margin of more than 3x. GPU adapters run each loop in one pass (no such limit
/// is known; the GPU check runs the conformance suite there).
pub(crate) const MAX_BARRIERS_PER_PASS: u32 = 256;

/// Which loop of attention.wgsl a launch runs (they differ in barriers per tile).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Loop {
    /// `attention_forward`: per 64-key block, S = Q·Kᵀ (2 barriers per 16 dims of D), the
    /// rows' maxima and the store of P (2), P·V (4 per 64-column chunk of Dv: two halves of 32
    /// keys).
    Forward,
    /// `attention_backward_dq`: per key tile, S (2 per chunk of D), dP (2 per chunk of Dv), the
    /// store of dS (1), dS·K (2 per chunk of D).
    Dq,
    /// `attention_backward_dkdv`: per query tile, S and dS·Q (4 per chunk of D), dP and P·dO
    /// (4 per chunk of Dv), the stores of P and dS (1).
    DkDv,
}

impl Loop {
    /// Barriers one tile of the loop runs for head dims `d`, `dv`.
    pub(crate) fn barriers_per_tile(self, d: usize, dv: usize) -> u32 {
        let (cd, cdv) = (d.div_ceil(CH) as u32, dv.div_ceil(CH) as u32);
        match self {
            Loop::Forward => 2 * d.div_ceil(FORWARD_DK) as u32 + 2 + 4 * cdv,
            Loop::Dq => 4 * cd + 2 * cdv + 1,
            Loop::DkDv => 4 * cd + 4 * cdv + 1,
        }
    }

    /// At most how many tiles one workgroup's loop runs: key blocks for the forward, key
    /// tiles for dQ (a layout selects a subset of them), query tiles of the whole GQA group for
    /// dK/dV.
    pub(crate) fn max_tiles(self, s: &AttentionShape) -> usize {
        match self {
            Loop::Forward => s.len_k.div_ceil(flashneck_core::BLOCK),
            Loop::Dq => s.len_k.div_ceil(TILE),
            Loop::DkDv => s.group_size() * s.len_q.div_ceil(TILE),
        }
    }
}

/// The passes `(tile_begin, tile_end)` that cut `lp`'s loop so that no workgroup runs more
/// than `budget` barriers in one dispatch: one pass (`(0, u32::MAX)`) when the whole loop fits,
/// or when there is no budget (a GPU adapter).
pub(crate) fn passes(lp: Loop, s: &AttentionShape, budget: Option<u32>) -> Vec<(u32, u32)> {
    let Some(budget) = budget else {
        return vec![(0, u32::MAX)];
    };
    let per_pass = (budget / lp.barriers_per_tile(s.head_dim, s.head_dim_v)).max(1) as usize;
    let tiles = lp.max_tiles(s);
    if tiles <= per_pass {
        return vec![(0, u32::MAX)];
    }
    (0..tiles.div_ceil(per_pass))
        .map(|k| {
            let end = if (k + 1) * per_pass >= tiles {
                u32::MAX
            } else {
                ((k + 1) * per_pass) as u32
            };
            ((k * per_pass) as u32, end)
        })
        .collect()
}

/// The parameter blocks of `passes` (the last one writes the outputs).
fn pass_params(prm: Params, passes: &[(u32, u32)]) -> Vec<Params> {
    passes
        .iter()
        .enumerate()
        .map(|(n, &(tile_begin, tile_end))| Params {
            tile_begin,
            tile_end,
            last_pass: u32::from(n + 1 == passes.len()),
            ..prm
        })
        .collect()
}

/// The loop state carried between passes (`state` in attention.wgsl): `len` f32 when there
/// are several passes, else one word (bound read-write, so not the read-only stand-in).
fn state_buffer(be: &WgpuBackend, passes: &[(u32, u32)], len: usize) -> Result<wgpu::Buffer> {
    be.alloc_scratch(if passes.len() > 1 { len } else { 1 })
}

/// What the forward binds besides Q, K, V, O and LSE.
pub(crate) struct ForwardExtras<'a> {
    pub layout: Option<&'a DeviceLayout<WgpuBackend>>,
    pub row_scale: Option<&'a WgpuBuffer<f32>>,
    pub residual: Option<&'a wgpu::Buffer>,
}

/// Workgroups of a kernel with one workgroup per 16 rows of each head.
fn tiles(heads: usize, len: usize) -> u64 {
    (heads * len.div_ceil(TILE)) as u64
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn forward<T>(
    be: &WgpuBackend,
    p: &AttentionParams,
    dtype: DType,
    q: &WgpuBuffer<T>,
    k: &WgpuBuffer<T>,
    v: &WgpuBuffer<T>,
    x: ForwardExtras<'_>,
    o: &mut WgpuBuffer<T>,
    lse: &mut WgpuBuffer<f32>,
) -> Result<()> {
    let s = &p.shape;
    let mut prm = Params::of(p);
    let stand_in = be.alloc_scratch(1)?;
    let (counts, indices) = match x.layout {
        Some(l) => {
            prm.sparse = 1;
            prm.max_blocks = l.host().max_blocks() as u32;
            (l.counts().raw(), l.indices().raw())
        }
        None => (&stand_in, &stand_in),
    };
    prm.has_rho = u32::from(x.row_scale.is_some());
    prm.has_residual = u32::from(x.residual.is_some());
    let passes = passes(Loop::Forward, s, be.barriers_per_pass);
    // Per row: the running max, the 16 threads' partial sums, the accumulators.
    let state = state_buffer(be, &passes, s.lse_len() * (s.head_dim_v + 17))?;
    // One pipeline per number of 64-column chunks of Dv, so that the accumulators stay in
    // registers (their indices are constants).
    let overrides = [("DV_CHUNKS", s.head_dim_v.div_ceil(CH) as u32)];
    let binds = [
        (1, Bind::Read(q.raw())),
        (2, Bind::Read(k.raw())),
        (3, Bind::Read(v.raw())),
        (4, Bind::Write(o.raw())),
        (5, Bind::Write(lse.raw())),
        (6, Bind::Read(counts)),
        (7, Bind::Read(indices)),
        (8, Bind::Read(x.row_scale.map_or(&stand_in, |b| b.raw()))),
        (9, Bind::Read(x.residual.unwrap_or(&stand_in))),
        (19, Bind::Write(&state)),
    ];
    let params = pass_params(prm, &passes);
    let launches: Vec<Launch<'_>> = params
        .iter()
        .map(|prm| Launch {
            shader: Shader::Attention,
            entry: "attention_forward",
            dtype,
            overrides: &overrides,
            params: bytemuck::bytes_of(prm),
            binds: &binds,
            workgroups: (s.batch * s.heads_q * s.len_q.div_ceil(FORWARD_ROWS)) as u64,
        })
        .collect();
    be.run(&launches)
}

/// The backward's inputs and outputs.
pub(crate) struct Grads<'a, T> {
    pub q: &'a WgpuBuffer<T>,
    pub k: &'a WgpuBuffer<T>,
    pub v: &'a WgpuBuffer<T>,
    pub o: &'a WgpuBuffer<T>,
    pub d_o: &'a WgpuBuffer<T>,
    pub lse: &'a WgpuBuffer<f32>,
    pub dq: &'a WgpuBuffer<T>,
    pub dk: &'a WgpuBuffer<T>,
    pub dv: &'a WgpuBuffer<T>,
}

/// Δ, then dQ per query tile, then dK/dV per key tile (one submission: Δ, then the passes of
/// dQ, then those of dK/dV).
pub(crate) fn backward<T>(
    be: &WgpuBackend,
    p: &AttentionParams,
    dtype: DType,
    layouts: Option<(&DeviceLayout<WgpuBackend>, &DeviceLayout<WgpuBackend>)>,
    g: Grads<'_, T>,
) -> Result<()> {
    let s = &p.shape;
    let mut prm = Params::of(p);
    let stand_in = be.alloc_scratch(1)?;
    let delta = be.alloc_scratch(s.lse_len())?;
    let (counts, indices, counts_t, indices_t) = match layouts {
        Some((l, lt)) => {
            prm.sparse = 1;
            prm.max_blocks = l.host().max_blocks() as u32;
            prm.max_blocks_t = lt.host().max_blocks() as u32;
            (
                l.counts().raw(),
                l.indices().raw(),
                lt.counts().raw(),
                lt.indices().raw(),
            )
        }
        None => (&stand_in, &stand_in, &stand_in, &stand_in),
    };
    let dq_passes = passes(Loop::Dq, s, be.barriers_per_pass);
    let dkdv_passes = passes(Loop::DkDv, s, be.barriers_per_pass);
    let dq_state = state_buffer(be, &dq_passes, s.q_len())?;
    let dkdv_state = state_buffer(
        be,
        &dkdv_passes,
        s.batch * s.heads_kv * s.len_k * (s.head_dim + s.head_dim_v),
    )?;
    let binds_delta = [
        (10, Bind::Read(g.o.raw())),
        (11, Bind::Read(g.d_o.raw())),
        (13, Bind::Write(&delta)),
    ];
    let inputs = [
        (1, Bind::Read(g.q.raw())),
        (2, Bind::Read(g.k.raw())),
        (3, Bind::Read(g.v.raw())),
        (11, Bind::Read(g.d_o.raw())),
        (12, Bind::Read(g.lse.raw())),
        (13, Bind::Write(&delta)),
    ];
    let mut binds_dq = inputs.to_vec();
    binds_dq.extend([
        (6, Bind::Read(counts)),
        (7, Bind::Read(indices)),
        (14, Bind::Write(g.dq.raw())),
        (19, Bind::Write(&dq_state)),
    ]);
    let mut binds_dkdv = inputs.to_vec();
    binds_dkdv.extend([
        (17, Bind::Read(counts_t)),
        (18, Bind::Read(indices_t)),
        (15, Bind::Write(g.dk.raw())),
        (16, Bind::Write(g.dv.raw())),
        (19, Bind::Write(&dkdv_state)),
    ]);
    let delta_params = [prm];
    let dq_params = pass_params(prm, &dq_passes);
    let dkdv_params = pass_params(prm, &dkdv_passes);
    let mut launches = Vec::new();
    for (entry, params, binds, workgroups) in [
        (
            "attention_backward_delta",
            &delta_params[..],
            &binds_delta[..],
            (s.lse_len() as u64).div_ceil(WG),
        ),
        (
            "attention_backward_dq",
            &dq_params,
            &binds_dq,
            s.batch as u64 * tiles(s.heads_q, s.len_q),
        ),
        (
            "attention_backward_dkdv",
            &dkdv_params,
            &binds_dkdv,
            s.batch as u64 * tiles(s.heads_kv, s.len_k),
        ),
    ] {
        launches.extend(params.iter().map(|prm| Launch {
            shader: Shader::Attention,
            entry,
            dtype,
            overrides: &[],
            params: bytemuck::bytes_of(prm),
            binds,
            workgroups,
        }));
    }
    be.run(&launches)
}

/// Pool Q per query block and K per key block, then select per query block (topk.wgsl); the
/// device result is read back once to build the validated host layout.
pub(crate) fn block_topk<T>(
    be: &WgpuBackend,
    p: &AttentionParams,
    topk: &TopkParams,
    dtype: DType,
    q: &WgpuBuffer<T>,
    k: &WgpuBuffer<T>,
) -> Result<DeviceLayout<WgpuBackend>> {
    let s = &p.shape;
    let (nqb, nkb) = (s.q_blocks(), s.k_blocks());
    if nkb > MAX_TOPK_KEY_BLOCKS {
        return Err(Error::unsupported(
            BACKEND,
            format!(
                "block_topk with {nkb} key blocks (len_k = {}): topk.wgsl keeps a bitset of at \
                 most {MAX_TOPK_KEY_BLOCKS}",
                s.len_k
            ),
        ));
    }
    let max_blocks = topk.max_blocks(nkb);
    let clamp = |v: usize| v.min(nkb) as u32;
    let prm = Params {
        max_blocks: max_blocks as u32,
        keep: clamp(topk.keep),
        sink: clamp(topk.sink),
        local: clamp(topk.local),
        ..Params::of(p)
    };
    let rows = s.batch * s.heads_q * nqb;
    let q_means = be.alloc_scratch(rows * s.head_dim)?;
    let k_means = be.alloc_scratch(s.batch * s.heads_kv * nkb * s.head_dim)?;
    let scores = be.alloc_scratch(rows * nkb)?;
    let counts = be.alloc::<u32>(rows)?;
    let indices = be.alloc::<u32>(rows * max_blocks)?;
    let params = bytemuck::bytes_of(&prm);
    be.run(&[
        Launch {
            shader: Shader::Topk,
            entry: "topk_pool",
            dtype,
            overrides: &[],
            params,
            binds: &[
                (1, Bind::Read(q.raw())),
                (2, Bind::Read(k.raw())),
                (3, Bind::Write(&q_means)),
                (4, Bind::Write(&k_means)),
            ],
            workgroups: (((rows + s.batch * s.heads_kv * nkb) * s.head_dim) as u64).div_ceil(WG),
        },
        Launch {
            shader: Shader::Topk,
            entry: "topk_select",
            dtype,
            overrides: &[],
            params,
            binds: &[
                (3, Bind::Write(&q_means)),
                (4, Bind::Write(&k_means)),
                (5, Bind::Write(&scores)),
                (6, Bind::Write(counts.raw())),
                (7, Bind::Write(indices.raw())),
            ],
            workgroups: (rows as u64).div_ceil(WG),
        },
    ])?;
    let (host_counts, host_indices) = (be.download(&counts)?, be.download(&indices)?);
    DeviceLayout::from_device(
        BACKEND,
        p,
        max_blocks,
        host_counts,
        host_indices,
        counts,
        indices,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every pass of every loop stays within the barrier budget, and the passes cover the
    /// loop's tiles once, in order, for head dims up to 256, GQA groups up to 8 and lengths
    /// up to 4096 (Hq = 8, Hkv = 1, Lq = 2048, D = Dv = 256 among them).
    #[test]
    fn passes_bound_the_barriers_per_workgroup() {
        for (d, dv) in [(1, 1), (64, 64), (65, 1), (82, 121), (128, 128), (256, 256)] {
            for group in [1, 2, 8] {
                for len in [1, 16, 17, 131, 1048, 2048, 4096] {
                    let s = AttentionShape {
                        head_dim_v: dv,
                        ..AttentionShape::gqa(1, group, 1, len, len, d)
                    };
                    for lp in [Loop::Forward, Loop::Dq, Loop::DkDv] {
                        let tiles = lp.max_tiles(&s) as u32;
                        let per_tile = lp.barriers_per_tile(d, dv);
                        let ps = passes(lp, &s, Some(MAX_BARRIERS_PER_PASS));
                        let mut next = 0;
                        for (n, &(begin, end)) in ps.iter().enumerate() {
                            assert_eq!(begin, next, "{lp:?} {s:?}: passes {ps:?}");
                            let last = n + 1 == ps.len();
                            assert_eq!(end == u32::MAX, last, "{lp:?} {s:?}: passes {ps:?}");
                            let run = end.min(tiles) - begin;
                            assert!(run > 0, "{lp:?} {s:?}: empty pass in {ps:?}");
                            assert!(
                                run * per_tile <= MAX_BARRIERS_PER_PASS,
                                "{lp:?} {s:?}: {run} tiles of {per_tile} barriers"
                            );
                            next = end;
                        }
                    }
                }
            }
        }
        // The shape of the brief: 147 dK/dV passes of 7 query tiles (231 barriers) each.
        let s = AttentionShape::gqa(1, 8, 1, 2048, 2048, 256);
        assert_eq!(Loop::DkDv.barriers_per_tile(256, 256), 33);
        assert_eq!(
            passes(Loop::DkDv, &s, Some(MAX_BARRIERS_PER_PASS)).len(),
            147
        );
        // No budget (a GPU adapter): one pass.
        assert_eq!(passes(Loop::DkDv, &s, None), vec![(0, u32::MAX)]);
    }
}
