//! The backend trait and one op trait per family.
//!
//! A backend owns a device and its buffers ([`Backend`]); each op family is a trait on top
//! ([`AttentionOps`], [`SparseAttentionOps`], [`GrKanOps`], [`GumbelOps`]). Every backend
//! implements every op trait: an op it has no kernel for returns [`Error::Unsupported`] and says
//! so in [`BackendInfo::supports`], so callers and the conformance suite can tell "missing"
//! from "broken".
//!
//! Every op validates its parameters and buffer lengths before any launch (`*Params::check_*`).
//! Outputs are written whole: an op never relies on the previous contents of an output buffer.

use crate::dtype::{DType, Element, Scalar};
use crate::error::{Error, Result, check_len};
use crate::layout::BlockLayout;
use crate::params::{AttentionParams, GrKanParams, GumbelParams, TopkParams};

/// A buffer in a backend's memory.
pub trait DeviceBuffer: Send + Sync {
    /// Number of elements.
    fn len(&self) -> usize;
    /// True when the buffer holds no element.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Every op of every family, for [`BackendInfo::supports`], benches and reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OpKind {
    AttentionForward,
    AttentionBackward,
    SparseForward,
    SparseBackward,
    BlockTopk,
    GrKanForward,
    GrKanBackward,
    GumbelForward,
    GumbelBackward,
    GumbelNoise,
}

impl OpKind {
    pub const ALL: [OpKind; 10] = [
        OpKind::AttentionForward,
        OpKind::AttentionBackward,
        OpKind::SparseForward,
        OpKind::SparseBackward,
        OpKind::BlockTopk,
        OpKind::GrKanForward,
        OpKind::GrKanBackward,
        OpKind::GumbelForward,
        OpKind::GumbelBackward,
        OpKind::GumbelNoise,
    ];

    /// Snake-case name used in reports and on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            OpKind::AttentionForward => "attention_forward",
            OpKind::AttentionBackward => "attention_backward",
            OpKind::SparseForward => "sparse_attention_forward",
            OpKind::SparseBackward => "sparse_attention_backward",
            OpKind::BlockTopk => "block_topk",
            OpKind::GrKanForward => "grkan_forward",
            OpKind::GrKanBackward => "grkan_backward",
            OpKind::GumbelForward => "gumbel_softmax_forward",
            OpKind::GumbelBackward => "gumbel_softmax_backward",
            OpKind::GumbelNoise => "gumbel_noise",
        }
    }
}

/// Which attention head dims a backend takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeadDims {
    /// Any `D` and `Dv` from 1 to the bound.
    UpTo(usize),
    /// Only these, with `D = Dv`.
    Exactly(Vec<usize>),
}

impl HeadDims {
    pub fn contains(&self, d: usize, dv: usize) -> bool {
        match self {
            HeadDims::UpTo(m) => d >= 1 && dv >= 1 && d <= *m && dv <= *m,
            HeadDims::Exactly(v) => d == dv && v.contains(&d),
        }
    }
}

/// What a backend is and what it can run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendInfo {
    /// Short backend name: `cpu`, `cuda`, `cuda-emu`, `wgpu`.
    pub name: String,
    /// The device it runs on, in words (CPU model and threads, GPU name, adapter and driver).
    pub device: String,
    /// Attention head dims it takes.
    pub head_dims: HeadDims,
    /// For each op it implements, the element types it takes.
    pub ops: Vec<(OpKind, Vec<DType>)>,
}

impl BackendInfo {
    /// Whether the backend has a kernel for `op` on `dtype`.
    pub fn supports(&self, op: OpKind, dtype: DType) -> bool {
        self.ops
            .iter()
            .any(|(o, dts)| *o == op && dts.contains(&dtype))
    }
}

/// A device and its memory. Buffers are typed by element; `u32` buffers hold layouts.
pub trait Backend: Send + Sync + Sized {
    /// A buffer of `T` on this backend's device.
    type Buffer<T: Scalar>: DeviceBuffer;

    fn info(&self) -> BackendInfo;
    /// Copy host data into a new device buffer.
    fn upload<T: Scalar>(&self, data: &[T]) -> Result<Self::Buffer<T>>;
    /// Copy a device buffer back to the host (waits for pending work).
    fn download<T: Scalar>(&self, buf: &Self::Buffer<T>) -> Result<Vec<T>>;
    /// A new zero-filled buffer of `len` elements.
    fn alloc<T: Scalar>(&self, len: usize) -> Result<Self::Buffer<T>>;
    /// Wait until all submitted work has finished (for timing).
    fn synchronize(&self) -> Result<()>;

    /// Upload a layout (already validated on the host) for the sparse ops.
    fn upload_layout(&self, layout: &BlockLayout) -> Result<DeviceLayout<Self>> {
        DeviceLayout::new(
            layout.clone(),
            self.upload(layout.counts())?,
            self.upload(layout.indices())?,
        )
    }
}

/// A [`BlockLayout`] on a backend's device, with the validated host copy kept beside it. The
/// fields are private so that the device buffers always have the host layout's lengths: a
/// kernel may trust the dims it reads from [`DeviceLayout::host`].
pub struct DeviceLayout<B: Backend> {
    host: BlockLayout,
    counts: B::Buffer<u32>,
    indices: B::Buffer<u32>,
}

impl<B: Backend> DeviceLayout<B> {
    /// Pair a host layout with device buffers holding its `counts` and `indices` (as uploaded
    /// by [`Backend::upload_layout`], or written by a backend's `block_topk`).
    pub fn new(host: BlockLayout, counts: B::Buffer<u32>, indices: B::Buffer<u32>) -> Result<Self> {
        check_len("layout.counts", counts.len(), host.counts().len())?;
        check_len("layout.indices", indices.len(), host.indices().len())?;
        Ok(DeviceLayout {
            host,
            counts,
            indices,
        })
    }
    /// A layout a backend's `block_topk` wrote into `counts` and `indices` on the device, for
    /// `p`'s shape with rows of `max_blocks`, given with its host copy (`host_counts`,
    /// `host_indices`, as read back): validated as any layout, so that a kernel bug breaking
    /// the layout rules is [`Error::Device`] of `backend` rather than a wrong answer.
    pub fn from_device(
        backend: &str,
        p: &AttentionParams,
        max_blocks: usize,
        host_counts: Vec<u32>,
        host_indices: Vec<u32>,
        counts: B::Buffer<u32>,
        indices: B::Buffer<u32>,
    ) -> Result<Self> {
        let s = &p.shape;
        let (q_blocks, k_blocks) = (s.q_blocks(), s.k_blocks());
        let host = BlockLayout::new(
            s.batch,
            s.heads_q,
            q_blocks,
            k_blocks,
            max_blocks,
            host_counts,
            host_indices,
        )
        .map_err(|e| Error::device(backend, format!("block_topk built an invalid layout: {e}")))?;
        DeviceLayout::new(host, counts, indices)
    }

    /// The validated host layout (dims are read from it).
    pub fn host(&self) -> &BlockLayout {
        &self.host
    }
    /// `counts [batch, heads, rows]` on the device.
    pub fn counts(&self) -> &B::Buffer<u32> {
        &self.counts
    }
    /// `indices [batch, heads, rows, max_blocks]` on the device.
    pub fn indices(&self) -> &B::Buffer<u32> {
        &self.indices
    }
    /// The host layout, dropping the device buffers.
    pub fn into_host(self) -> BlockLayout {
        self.host
    }
}

/// Dense attention, FlashAttention-2 semantics (SPEC §1).
pub trait AttentionOps: Backend {
    /// `O = softmax(scale · Q Kᵀ) V` and `LSE` (f32). Rows with no visible key: `O = 0`,
    /// `LSE = −inf`.
    fn attention_forward<T: Element>(
        &self,
        p: &AttentionParams,
        q: &Self::Buffer<T>,
        k: &Self::Buffer<T>,
        v: &Self::Buffer<T>,
        o: &mut Self::Buffer<T>,
        lse: &mut Self::Buffer<f32>,
    ) -> Result<()>;

    /// `dQ, dK, dV` from `Q, K, V, O, dO, LSE`; under GQA `dK`, `dV` sum over the group.
    #[allow(clippy::too_many_arguments)]
    fn attention_backward<T: Element>(
        &self,
        p: &AttentionParams,
        q: &Self::Buffer<T>,
        k: &Self::Buffer<T>,
        v: &Self::Buffer<T>,
        o: &Self::Buffer<T>,
        d_o: &Self::Buffer<T>,
        lse: &Self::Buffer<f32>,
        dq: &mut Self::Buffer<T>,
        dk: &mut Self::Buffer<T>,
        dv: &mut Self::Buffer<T>,
    ) -> Result<()>;
}

/// The Re-ttention epilogue's optional inputs (SPEC §2): `o ← ρ ⊙ o + R`.
pub struct SparseEpilogue<'a, B: Backend, T: Element> {
    /// `ρ [B, Hq, Lq]` (f32), one scale per query row.
    pub row_scale: Option<&'a B::Buffer<f32>>,
    /// `R [B, Hq, Lq, Dv]`, added after the scale.
    pub residual: Option<&'a B::Buffer<T>>,
}

impl<B: Backend, T: Element> SparseEpilogue<'_, B, T> {
    /// No epilogue: plain sparse attention.
    pub fn none() -> Self {
        SparseEpilogue {
            row_scale: None,
            residual: None,
        }
    }
}

/// Block-sparse attention over a [`BlockLayout`] (SPEC §2).
pub trait SparseAttentionOps: Backend {
    /// Attention over the visible keys of the selected blocks, then the epilogue. `lse` is
    /// reported before the epilogue.
    #[allow(clippy::too_many_arguments)]
    fn sparse_attention_forward<T: Element>(
        &self,
        p: &AttentionParams,
        layout: &DeviceLayout<Self>,
        q: &Self::Buffer<T>,
        k: &Self::Buffer<T>,
        v: &Self::Buffer<T>,
        epilogue: SparseEpilogue<'_, Self, T>,
        o: &mut Self::Buffer<T>,
        lse: &mut Self::Buffer<f32>,
    ) -> Result<()>;

    /// Gradients of the attention itself (the output before the epilogue: pass that `o`, and
    /// `ρ ⊙ dO` as `d_o` when an epilogue was used). `layout_t` is `layout.transpose()`.
    #[allow(clippy::too_many_arguments)]
    fn sparse_attention_backward<T: Element>(
        &self,
        p: &AttentionParams,
        layout: &DeviceLayout<Self>,
        layout_t: &DeviceLayout<Self>,
        q: &Self::Buffer<T>,
        k: &Self::Buffer<T>,
        v: &Self::Buffer<T>,
        o: &Self::Buffer<T>,
        d_o: &Self::Buffer<T>,
        lse: &Self::Buffer<f32>,
        dq: &mut Self::Buffer<T>,
        dk: &mut Self::Buffer<T>,
        dv: &mut Self::Buffer<T>,
    ) -> Result<()>;

    /// Top-k block selection from pooled scores (SPEC §2); the result is sorted ascending and
    /// has `max_blocks = TopkParams::max_blocks(nKB)`.
    fn block_topk<T: Element>(
        &self,
        p: &AttentionParams,
        topk: &TopkParams,
        q: &Self::Buffer<T>,
        k: &Self::Buffer<T>,
    ) -> Result<DeviceLayout<Self>>;
}

/// Group-Rational KAN (SPEC §3).
pub trait GrKanOps: Backend {
    /// `y = P(x) / Q(x)` per channel group.
    fn grkan_forward<T: Element>(
        &self,
        p: &GrKanParams,
        x: &Self::Buffer<T>,
        a: &Self::Buffer<f32>,
        b: &Self::Buffer<f32>,
        y: &mut Self::Buffer<T>,
    ) -> Result<()>;

    /// `dx`, and `da`, `db` reduced in a fixed order (bitwise reproducible).
    #[allow(clippy::too_many_arguments)]
    fn grkan_backward<T: Element>(
        &self,
        p: &GrKanParams,
        x: &Self::Buffer<T>,
        a: &Self::Buffer<f32>,
        b: &Self::Buffer<f32>,
        dy: &Self::Buffer<T>,
        dx: &mut Self::Buffer<T>,
        da: &mut Self::Buffer<f32>,
        db: &mut Self::Buffer<f32>,
    ) -> Result<()>;
}

/// Gumbel-Softmax with counter-based Philox noise (SPEC §4).
pub trait GumbelOps: Backend {
    /// `y = softmax((logits + g) / tau)`, or its one-hot argmax when `p.hard`. `y_soft`, when
    /// given, receives the soft sample in f32 for the backward (needed when `hard`).
    fn gumbel_softmax_forward<T: Element>(
        &self,
        p: &GumbelParams,
        logits: &Self::Buffer<T>,
        y: &mut Self::Buffer<T>,
        y_soft: Option<&mut Self::Buffer<f32>>,
    ) -> Result<()>;

    /// `dlogits = (1/tau) · y_soft ⊙ (dy − Σ_k y_soft · dy)` (straight-through when hard).
    fn gumbel_softmax_backward<T: Element>(
        &self,
        p: &GumbelParams,
        y_soft: &Self::Buffer<f32>,
        dy: &Self::Buffer<T>,
        dlogits: &mut Self::Buffer<T>,
    ) -> Result<()>;

    /// The raw noise `g` of flat elements `0 .. out.len()`.
    fn gumbel_noise(&self, seed: u64, offset: u64, out: &mut Self::Buffer<f32>) -> Result<()>;
}

/// A backend with every op family: what the model crate, the conformance suite and the
/// benches take.
pub trait Kernels: AttentionOps + SparseAttentionOps + GrKanOps + GumbelOps {}
impl<B: AttentionOps + SparseAttentionOps + GrKanOps + GumbelOps> Kernels for B {}
