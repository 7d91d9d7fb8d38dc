//! # flashneck-cpu
//!
//! The reference backend: every op of SPEC for `f32`, `f16` and `bf16` inputs with f32
//! arithmetic, parallel with rayon. It is also the home of the f64 [`oracle`]s that the
//! conformance suite checks every backend against.
//!
//! Validation happens here, once, before any op module runs; the op modules
//! ([`attention`], [`grkan`], [`gumbel`]) take plain slices that are known to fit.

pub mod attention;
pub mod grkan;
pub mod gumbel;
pub mod oracle;
mod simd;

use flashneck_core::{
    AttentionOps, AttentionParams, Backend, BackendInfo, BlockLayout, DType, DeviceBuffer,
    DeviceLayout, Element, Error, GrKanOps, GrKanParams, GumbelOps, GumbelParams, HeadDims, OpKind,
    Result, Scalar, SparseAttentionOps, SparseEpilogue, TopkParams, checks, params::MAX_HEAD_DIM,
};
use std::sync::Arc;

/// A host buffer: the CPU backend's device memory is the heap.
#[derive(Clone, Debug, PartialEq)]
pub struct CpuBuffer<T>(pub Vec<T>);

impl<T: Scalar> DeviceBuffer for CpuBuffer<T> {
    fn len(&self) -> usize {
        self.0.len()
    }
}

/// The CPU backend. Runs on rayon's global pool, or on a pool of its own
/// ([`CpuBackend::with_threads`]) so that benchmarks can fix the thread count.
#[derive(Clone, Default)]
pub struct CpuBackend {
    pool: Option<Arc<rayon::ThreadPool>>,
}

impl CpuBackend {
    /// A backend on rayon's global thread pool.
    pub fn new() -> Self {
        CpuBackend { pool: None }
    }

    /// A backend on a pool of its own with `threads` workers.
    pub fn with_threads(threads: usize) -> Result<Self> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(|e| Error::device("cpu", format!("cannot build a thread pool: {e}")))?;
        Ok(CpuBackend {
            pool: Some(Arc::new(pool)),
        })
    }

    /// Number of worker threads the ops run on.
    pub fn threads(&self) -> usize {
        self.pool
            .as_ref()
            .map_or_else(rayon::current_num_threads, |p| p.current_num_threads())
    }

    /// Run `f` on this backend's pool.
    fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match &self.pool {
            Some(p) => p.install(f),
            None => f(),
        }
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

impl Backend for CpuBackend {
    type Buffer<T: Scalar> = CpuBuffer<T>;

    fn info(&self) -> BackendInfo {
        BackendInfo {
            name: "cpu".into(),
            device: format!("{} ({} threads)", cpu_model(), self.threads()),
            head_dims: HeadDims::UpTo(MAX_HEAD_DIM),
            ops: OpKind::ALL
                .iter()
                .map(|&op| (op, DType::ALL.to_vec()))
                .collect(),
        }
    }

    fn upload<T: Scalar>(&self, data: &[T]) -> Result<CpuBuffer<T>> {
        Ok(CpuBuffer(data.to_vec()))
    }

    fn download<T: Scalar>(&self, buf: &CpuBuffer<T>) -> Result<Vec<T>> {
        Ok(buf.0.clone())
    }

    fn alloc<T: Scalar>(&self, len: usize) -> Result<CpuBuffer<T>> {
        Ok(CpuBuffer(vec![T::zeroed(); len]))
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
}

impl AttentionOps for CpuBackend {
    fn attention_forward<T: Element>(
        &self,
        p: &AttentionParams,
        q: &CpuBuffer<T>,
        k: &CpuBuffer<T>,
        v: &CpuBuffer<T>,
        o: &mut CpuBuffer<T>,
        lse: &mut CpuBuffer<f32>,
    ) -> Result<()> {
        checks::attention_forward(p, q, k, v, o, lse)?;
        // Dense attention is the sparse code path on the full layout.
        let layout = BlockLayout::causal(p);
        self.run(|| {
            attention::forward(
                p, &layout, &q.0, &k.0, &v.0, None, None, &mut o.0, &mut lse.0,
            )
        });
        Ok(())
    }

    fn attention_backward<T: Element>(
        &self,
        p: &AttentionParams,
        q: &CpuBuffer<T>,
        k: &CpuBuffer<T>,
        v: &CpuBuffer<T>,
        o: &CpuBuffer<T>,
        d_o: &CpuBuffer<T>,
        lse: &CpuBuffer<f32>,
        dq: &mut CpuBuffer<T>,
        dk: &mut CpuBuffer<T>,
        dv: &mut CpuBuffer<T>,
    ) -> Result<()> {
        checks::attention_backward(p, q, k, v, o, d_o, lse, dq, dk, dv)?;
        let layout = BlockLayout::causal(p);
        let layout_t = layout.transpose();
        self.run(|| {
            attention::backward(
                p, &layout, &layout_t, &q.0, &k.0, &v.0, &o.0, &d_o.0, &lse.0, &mut dq.0,
                &mut dk.0, &mut dv.0,
            )
        });
        Ok(())
    }
}

impl SparseAttentionOps for CpuBackend {
    fn sparse_attention_forward<T: Element>(
        &self,
        p: &AttentionParams,
        layout: &DeviceLayout<Self>,
        q: &CpuBuffer<T>,
        k: &CpuBuffer<T>,
        v: &CpuBuffer<T>,
        epilogue: SparseEpilogue<'_, Self, T>,
        o: &mut CpuBuffer<T>,
        lse: &mut CpuBuffer<f32>,
    ) -> Result<()> {
        checks::sparse_forward(p, layout, q, k, v, &epilogue, o, lse)?;
        let row_scale = epilogue.row_scale.map(|b| b.0.as_slice());
        let residual = epilogue.residual.map(|b| b.0.as_slice());
        self.run(|| {
            attention::forward(
                p,
                layout.host(),
                &q.0,
                &k.0,
                &v.0,
                row_scale,
                residual,
                &mut o.0,
                &mut lse.0,
            )
        });
        Ok(())
    }

    fn sparse_attention_backward<T: Element>(
        &self,
        p: &AttentionParams,
        layout: &DeviceLayout<Self>,
        layout_t: &DeviceLayout<Self>,
        q: &CpuBuffer<T>,
        k: &CpuBuffer<T>,
        v: &CpuBuffer<T>,
        o: &CpuBuffer<T>,
        d_o: &CpuBuffer<T>,
        lse: &CpuBuffer<f32>,
        dq: &mut CpuBuffer<T>,
        dk: &mut CpuBuffer<T>,
        dv: &mut CpuBuffer<T>,
    ) -> Result<()> {
        checks::sparse_backward(p, layout, layout_t, q, k, v, o, d_o, lse, dq, dk, dv)?;
        self.run(|| {
            attention::backward(
                p,
                layout.host(),
                layout_t.host(),
                &q.0,
                &k.0,
                &v.0,
                &o.0,
                &d_o.0,
                &lse.0,
                &mut dq.0,
                &mut dk.0,
                &mut dv.0,
            )
        });
        Ok(())
    }

    fn block_topk<T: Element>(
        &self,
        p: &AttentionParams,
        topk: &TopkParams,
        q: &CpuBuffer<T>,
        k: &CpuBuffer<T>,
    ) -> Result<DeviceLayout<Self>> {
        checks::block_topk(p, topk, q, k)?;
        let layout = self.run(|| attention::block_topk(p, topk, &q.0, &k.0));
        self.upload_layout(&layout)
    }
}

impl GrKanOps for CpuBackend {
    fn grkan_forward<T: Element>(
        &self,
        p: &GrKanParams,
        x: &CpuBuffer<T>,
        a: &CpuBuffer<f32>,
        b: &CpuBuffer<f32>,
        y: &mut CpuBuffer<T>,
    ) -> Result<()> {
        checks::grkan_forward(p, x, a, b, y)?;
        self.run(|| grkan::forward(p, &x.0, &a.0, &b.0, &mut y.0));
        Ok(())
    }

    fn grkan_backward<T: Element>(
        &self,
        p: &GrKanParams,
        x: &CpuBuffer<T>,
        a: &CpuBuffer<f32>,
        b: &CpuBuffer<f32>,
        dy: &CpuBuffer<T>,
        dx: &mut CpuBuffer<T>,
        da: &mut CpuBuffer<f32>,
        db: &mut CpuBuffer<f32>,
    ) -> Result<()> {
        checks::grkan_backward(p, x, a, b, dy, dx, da, db)?;
        self.run(|| grkan::backward(p, &x.0, &a.0, &b.0, &dy.0, &mut dx.0, &mut da.0, &mut db.0));
        Ok(())
    }
}

impl GumbelOps for CpuBackend {
    fn gumbel_softmax_forward<T: Element>(
        &self,
        p: &GumbelParams,
        logits: &CpuBuffer<T>,
        y: &mut CpuBuffer<T>,
        y_soft: Option<&mut CpuBuffer<f32>>,
    ) -> Result<()> {
        checks::gumbel_forward(p, logits, y, y_soft.as_deref())?;
        let y_soft = y_soft.map(|b| b.0.as_mut_slice());
        self.run(|| gumbel::forward(p, &logits.0, &mut y.0, y_soft));
        Ok(())
    }

    fn gumbel_softmax_backward<T: Element>(
        &self,
        p: &GumbelParams,
        y_soft: &CpuBuffer<f32>,
        dy: &CpuBuffer<T>,
        dlogits: &mut CpuBuffer<T>,
    ) -> Result<()> {
        checks::gumbel_backward(p, y_soft, dy, dlogits)?;
        self.run(|| gumbel::backward(p, &y_soft.0, &dy.0, &mut dlogits.0));
        Ok(())
    }

    fn gumbel_noise(&self, seed: u64, offset: u64, out: &mut CpuBuffer<f32>) -> Result<()> {
        self.run(|| gumbel::noise(seed, offset, &mut out.0));
        Ok(())
    }
}
