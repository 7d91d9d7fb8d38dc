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
    AttentionParams, Backend, BlockLayout, DType, DeviceLayout, Error, Result, TopkParams,
};

/// Tile edge of the attention kernels (query rows and keys per tile).
const TILE: usize = 16;
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
    be.run(&[Launch {
        shader: Shader::Attention,
        entry: "attention_forward",
        dtype,
        params: bytemuck::bytes_of(&prm),
        binds: &[
            (1, Bind::Read(q.raw())),
            (2, Bind::Read(k.raw())),
            (3, Bind::Read(v.raw())),
            (4, Bind::Write(o.raw())),
            (5, Bind::Write(lse.raw())),
            (6, Bind::Read(counts)),
            (7, Bind::Read(indices)),
            (8, Bind::Read(x.row_scale.map_or(&stand_in, |b| b.raw()))),
            (9, Bind::Read(x.residual.unwrap_or(&stand_in))),
            // dO is unused here, but the shared `load` helper names it.
            (11, Bind::Read(&stand_in)),
        ],
        workgroups: s.batch as u64 * tiles(s.heads_q, s.len_q),
    }])
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

/// Δ, then dQ per query tile, then dK/dV per key tile (three launches, one submission).
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
    let params = bytemuck::bytes_of(&prm);
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
    ]);
    let mut binds_dkdv = inputs.to_vec();
    binds_dkdv.extend([
        (17, Bind::Read(counts_t)),
        (18, Bind::Read(indices_t)),
        (15, Bind::Write(g.dk.raw())),
        (16, Bind::Write(g.dv.raw())),
    ]);
    let launch = |entry, binds, workgroups| Launch {
        shader: Shader::Attention,
        entry,
        dtype,
        params,
        binds,
        workgroups,
    };
    be.run(&[
        launch(
            "attention_backward_delta",
            &binds_delta,
            (s.lse_len() as u64).div_ceil(WG),
        ),
        launch(
            "attention_backward_dq",
            &binds_dq,
            s.batch as u64 * tiles(s.heads_q, s.len_q),
        ),
        launch(
            "attention_backward_dkdv",
            &binds_dkdv,
            s.batch as u64 * tiles(s.heads_kv, s.len_k),
        ),
    ])
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
    let host = BlockLayout::new(
        s.batch,
        s.heads_q,
        nqb,
        nkb,
        max_blocks,
        be.download(&counts)?,
        be.download(&indices)?,
    )
    .map_err(|e| Error::device(BACKEND, format!("block_topk built an invalid layout: {e}")))?;
    DeviceLayout::new(host, counts, indices)
}
