//! Dense and block-sparse attention on the device (SPEC §1, §2): the host side of
//! `kernels/wgsl/attention.wgsl` and `kernels/wgsl/topk.wgsl`.
//!
//! Dense attention runs the sparse kernels with `sparse = 0` (every key block up to the last
//! visible one), so the two share one code path. The kernels share their load and store
//! helpers, so each names every tensor binding; the ones a launch does not use (the layout for
//! dense calls, the epilogue when absent, the other kernels' outputs, the pass state of a
//! single pass) are bound to the backend's one-word stand-ins.

use crate::device::{Bind, Launch};
use crate::shaders::Shader;
use crate::{BACKEND, WgpuBackend, WgpuBuffer};
use flashneck_core::{
    AttentionParams, AttentionShape, Backend, DType, DeviceLayout, Error, Result, TopkParams,
};

/// Rows (query rows, or keys for dK/dV) per workgroup of the attention kernels (`TR` in
/// attention.wgsl); each walks its columns a layout block (64) at a time.
const TILE_ROWS: usize = 32;
/// Head dims staged per step of a product of rows (`DK` in attention.wgsl).
const PRODUCT_DIMS: usize = 16;
/// Output columns per accumulator chunk (`Acc` in attention.wgsl).
const CHUNK: usize = 64;
/// Key blocks topk.wgsl's per-thread bitset holds (64 words of 32 bits): len_k <= 131072.
const MAX_TOPK_KEY_BLOCKS: usize = 2048;
/// Threads per workgroup of the row-wise kernels.
const WG: u64 = 64;
/// Query rows per workgroup of Δ (16 threads each: `DELTA_LANES` in attention.wgsl).
const DELTA_ROWS_PER_WORKGROUP: u64 = 4;

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

/// Which loop of attention.wgsl a launch runs (they differ in barriers per block). A product
/// of rows costs 2 barriers per 16 dims of its head dim, an accumulation 4 per 64-column chunk
/// of its output (two halves of 32 value rows), a store of weights 1.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Loop {
    /// `attention_forward`, per key block: S = Q·Kᵀ, the rows' maxima (1), the store of P (1),
    /// P·V.
    Forward,
    /// `attention_backward_dq`, per key block: S, dP = dO·Vᵀ, the store of dS, dS·K.
    Dq,
    /// `attention_backward_dkdv`, per query block: Sᵀ = K·Qᵀ, dPᵀ = V·dOᵀ, the store of Pᵀ,
    /// Pᵀ·dO, the store of dSᵀ, dSᵀ·Q.
    DkDv,
}

impl Loop {
    /// Barriers one block of the loop runs for head dims `d`, `dv`.
    pub(crate) fn barriers_per_tile(self, d: usize, dv: usize) -> u32 {
        let product = |dim: usize| 2 * dim.div_ceil(PRODUCT_DIMS) as u32;
        let accumulate = |dim: usize| 4 * dim.div_ceil(CHUNK) as u32;
        match self {
            Loop::Forward => product(d) + 2 + accumulate(dv),
            Loop::Dq => product(d) + product(dv) + 1 + accumulate(d),
            Loop::DkDv => product(d) + product(dv) + 2 + accumulate(dv) + accumulate(d),
        }
    }

    /// At most how many blocks one workgroup's loop runs: key blocks for the forward and dQ
    /// (a layout selects a subset of them), the query blocks of the whole GQA group for dK/dV.
    pub(crate) fn max_tiles(self, s: &AttentionShape) -> usize {
        match self {
            Loop::Forward | Loop::Dq => s.k_blocks(),
            Loop::DkDv => s.group_size() * s.q_blocks(),
        }
    }
}

/// The pipeline constants of every attention kernel: the number of 64-column accumulator
/// chunks of D and of Dv, so that the accumulators' indices are constants (one pipeline per
/// pair).
fn chunk_overrides(s: &AttentionShape) -> [(&'static str, u32); 2] {
    [
        ("D_CHUNKS", s.head_dim.div_ceil(CHUNK) as u32),
        ("DV_CHUNKS", s.head_dim_v.div_ceil(CHUNK) as u32),
    ]
}

/// Every tensor binding of attention.wgsl bound to a stand-in (`WgpuBackend::stand_ins`): `read`
/// for the read-only ones, `written` for the read-write ones. A launch replaces the ones it
/// uses (`with`); the device binds only those its entry point reaches (the kernels share
/// helpers that pick a source or an output at run time, so each reaches more than it uses).
fn unused_bindings<'a>(read: &'a wgpu::Buffer, written: &'a wgpu::Buffer) -> Vec<(u32, Bind<'a>)> {
    let mut binds: Vec<(u32, Bind<'a>)> = [1, 2, 3, 6, 7, 8, 9, 10, 11, 12, 17, 18]
        .into_iter()
        .map(|b| (b, Bind::Read(read)))
        .collect();
    binds.extend(
        [4, 5, 13, 14, 15, 16, 19]
            .into_iter()
            .map(|b| (b, Bind::Write(written))),
    );
    binds
}

/// `binds` with each binding of `used` replaced.
fn with<'a>(mut binds: Vec<(u32, Bind<'a>)>, used: &[(u32, Bind<'a>)]) -> Vec<(u32, Bind<'a>)> {
    for &(n, b) in used {
        match binds.iter_mut().find(|(m, _)| *m == n) {
            Some(slot) => slot.1 = b,
            None => binds.push((n, b)),
        }
    }
    binds
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
/// are several passes; none for one pass, which binds the written stand-in (it neither restores
/// nor saves state).
fn state_buffer(
    be: &WgpuBackend,
    passes: &[(u32, u32)],
    len: usize,
) -> Result<Option<wgpu::Buffer>> {
    (passes.len() > 1)
        .then(|| be.alloc_scratch(len))
        .transpose()
}

/// What the forward binds besides Q, K, V, O and LSE.
pub(crate) struct ForwardExtras<'a> {
    pub layout: Option<&'a DeviceLayout<WgpuBackend>>,
    pub row_scale: Option<&'a WgpuBuffer<f32>>,
    pub residual: Option<&'a wgpu::Buffer>,
}

/// Workgroups of a kernel with one workgroup per 32 rows of each head.
fn tiles(heads: usize, len: usize) -> u64 {
    (heads * len.div_ceil(TILE_ROWS)) as u64
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
    let (read, written) = be.stand_ins();
    let (counts, indices) = match x.layout {
        Some(l) => {
            prm.sparse = 1;
            prm.max_blocks = l.host().max_blocks() as u32;
            (l.counts().raw(), l.indices().raw())
        }
        None => (read, read),
    };
    prm.has_rho = u32::from(x.row_scale.is_some());
    prm.has_residual = u32::from(x.residual.is_some());
    let passes = passes(Loop::Forward, s, be.barriers_per_pass);
    // Per row: the running max, the 16 threads' partial sums, the accumulators.
    let state = state_buffer(be, &passes, s.lse_len() * (s.head_dim_v + 17))?;
    let binds = with(
        unused_bindings(read, written),
        &[
            (1, Bind::Read(q.raw())),
            (2, Bind::Read(k.raw())),
            (3, Bind::Read(v.raw())),
            (4, Bind::Write(o.raw())),
            (5, Bind::Write(lse.raw())),
            (6, Bind::Read(counts)),
            (7, Bind::Read(indices)),
            (8, Bind::Read(x.row_scale.map_or(read, |b| b.raw()))),
            (9, Bind::Read(x.residual.unwrap_or(read))),
            (19, Bind::Write(state.as_ref().unwrap_or(written))),
        ],
    );
    let overrides = chunk_overrides(s);
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
            workgroups: s.batch as u64 * tiles(s.heads_q, s.len_q),
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
    let (read, written) = be.stand_ins();
    // (LSE, Δ) per query row, written by the Δ kernel (at least one pair: the binding is an
    // array of vec2, even for an empty batch).
    let stats = be.alloc_scratch(2 * s.lse_len().max(1))?;
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
        None => (read, read, read, read),
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
        (12, Bind::Read(g.lse.raw())),
        (13, Bind::Write(&stats)),
    ];
    let inputs = with(
        unused_bindings(read, written),
        &[
            (1, Bind::Read(g.q.raw())),
            (2, Bind::Read(g.k.raw())),
            (3, Bind::Read(g.v.raw())),
            (11, Bind::Read(g.d_o.raw())),
            (13, Bind::Write(&stats)),
        ],
    );
    let binds_dq = with(
        inputs.clone(),
        &[
            (6, Bind::Read(counts)),
            (7, Bind::Read(indices)),
            (14, Bind::Write(g.dq.raw())),
            (19, Bind::Write(dq_state.as_ref().unwrap_or(written))),
        ],
    );
    let binds_dkdv = with(
        inputs,
        &[
            (17, Bind::Read(counts_t)),
            (18, Bind::Read(indices_t)),
            (15, Bind::Write(g.dk.raw())),
            (16, Bind::Write(g.dv.raw())),
            (19, Bind::Write(dkdv_state.as_ref().unwrap_or(written))),
        ],
    );
    let overrides = chunk_overrides(s);
    let delta_params = [prm];
    let dq_params = pass_params(prm, &dq_passes);
    let dkdv_params = pass_params(prm, &dkdv_passes);
    let mut launches = Vec::new();
    for (entry, params, binds, overrides, workgroups) in [
        (
            "attention_backward_delta",
            &delta_params[..],
            &binds_delta[..],
            &[][..],
            (s.lse_len() as u64).div_ceil(DELTA_ROWS_PER_WORKGROUP),
        ),
        (
            "attention_backward_dq",
            &dq_params,
            &binds_dq,
            &overrides[..],
            s.batch as u64 * tiles(s.heads_q, s.len_q),
        ),
        (
            "attention_backward_dkdv",
            &dkdv_params,
            &binds_dkdv,
            &overrides[..],
            s.batch as u64 * tiles(s.heads_kv, s.len_k),
        ),
    ] {
        launches.extend(params.iter().map(|prm| Launch {
            shader: Shader::Attention,
            entry,
            dtype,
            overrides,
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
    use crate::shaders::{check_params_layout, host_fields};

    /// The uniform block the host writes is the one attention.wgsl and topk.wgsl read.
    #[test]
    fn params_match_the_shaders() {
        let fields = host_fields!(Params; batch, heads_q, heads_kv, len_q, len_k, head_dim,
            head_dim_v, group, scale, causal, sparse, max_blocks, max_blocks_t, q_blocks,
            k_blocks, has_rho, has_residual, keep, sink, local, tile_begin, tile_end, last_pass);
        for shader in [Shader::Attention, Shader::Topk] {
            check_params_layout(shader, &fields, std::mem::size_of::<Params>());
        }
    }

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
        // Hq = 8, Hkv = 1, L = 2048, D = Dv = 256: 128 dK/dV passes of 2 query blocks (196
        // barriers) each.
        let s = AttentionShape::gqa(1, 8, 1, 2048, 2048, 256);
        assert_eq!(Loop::DkDv.barriers_per_tile(256, 256), 98);
        assert_eq!(
            passes(Loop::DkDv, &s, Some(MAX_BARRIERS_PER_PASS)).len(),
            128
        );
        // No budget (a GPU adapter): one pass.
        assert_eq!(passes(Loop::DkDv, &s, None), vec![(0, u32::MAX)]);
    }
}
