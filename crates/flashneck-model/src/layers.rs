//! The layers. Each `forward` saves what its `backward` needs inside the layer; `backward`
//! consumes that, accumulates the parameter gradients into [`Param::grad`] and returns the
//! gradient of the layer's input. A `backward` without a preceding `forward` is an error.
//!
//! Host layers: [`Linear`], [`LayerNorm`]. Layers that run flashneck ops through the backend:
//! [`SelfAttention`] (attention, dense or block-sparse), [`GrKanMlp`] (GR-KAN), [`ConceptBottleneck`] (Gumbel-Softmax).

use crate::host_ops;
use crate::linalg::{self, NormCache, check, rows_of};
use flashneck_core::{
    AttentionParams, AttentionShape, BlockLayout, Error, GrKanParams, GumbelParams, Kernels,
    Result, TopkParams,
};
use rand::{Rng, rngs::StdRng};

/// A trainable tensor and its gradient (same length, row-major).
#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    pub value: Vec<f32>,
    pub grad: Vec<f32>,
}

impl Param {
    /// A parameter holding `value`, with a zero gradient.
    pub fn new(value: Vec<f32>) -> Self {
        let grad = vec![0.0; value.len()];
        Param { value, grad }
    }
    /// `n` values uniform in `[−bound, bound]`.
    pub fn uniform(rng: &mut StdRng, n: usize, bound: f32) -> Self {
        Param::new((0..n).map(|_| rng.gen_range(-bound..=bound)).collect())
    }
    pub fn zero_grad(&mut self) {
        self.grad.iter_mut().for_each(|g| *g = 0.0);
    }
}

/// Every parameter of a layer with its dotted name (`block0.attn.wq.w`), for the optimiser and
/// the gradient check.
pub type NamedParams<'a> = Vec<(String, &'a mut Param)>;

/// The error of a `backward` called without a saved forward.
pub(crate) fn no_forward(layer: &'static str) -> Error {
    Error::bad(
        layer,
        "a forward pass before backward",
        "backward without a saved forward",
    )
}

/// `y = x · W + b`, with `W [in, out]`.
pub struct Linear {
    pub w: Param,
    pub b: Param,
    inp: usize,
    out: usize,
    saved_x: Option<Vec<f32>>,
}

impl Linear {
    /// Uniform init with variance `1/in` (LeCun), zero bias.
    pub fn new(rng: &mut StdRng, inp: usize, out: usize) -> Self {
        let bound = (3.0 / inp as f32).sqrt();
        Linear {
            w: Param::uniform(rng, inp * out, bound),
            b: Param::new(vec![0.0; out]),
            inp,
            out,
            saved_x: None,
        }
    }

    pub fn forward(&mut self, x: &[f32]) -> Result<Vec<f32>> {
        let rows = rows_of("linear input", x.len(), self.inp)?;
        // The fields are public: a caller may have replaced them with the wrong length.
        check("linear w", self.w.value.len(), self.inp * self.out)?;
        check("linear b", self.b.value.len(), self.out)?;
        let y = linalg::matmul_bias(x, &self.w.value, &self.b.value, rows, self.inp, self.out);
        self.saved_x = Some(x.to_vec());
        Ok(y)
    }

    pub fn backward(&mut self, dy: &[f32]) -> Result<Vec<f32>> {
        let x = self.saved_x.take().ok_or_else(|| no_forward("linear"))?;
        let rows = x.len() / self.inp;
        check("linear dy", dy.len(), rows * self.out)?;
        check("linear w grad", self.w.grad.len(), self.inp * self.out)?;
        check("linear b grad", self.b.grad.len(), self.out)?;
        let (k, n) = (self.inp, self.out);
        linalg::matmul_dw_acc(&x, dy, rows, k, n, &mut self.w.grad, &mut self.b.grad);
        Ok(linalg::matmul_dx(dy, &self.w.value, rows, k, n))
    }

    pub fn params<'a>(&'a mut self, name: &str, out: &mut NamedParams<'a>) {
        out.push((format!("{name}.w"), &mut self.w));
        out.push((format!("{name}.b"), &mut self.b));
    }
}

/// LayerNorm over the feature dim, with a learned scale `γ` (init 1) and shift `β` (init 0).
pub struct LayerNorm {
    pub gamma: Param,
    pub beta: Param,
    dim: usize,
    saved: Option<NormCache>,
}

impl LayerNorm {
    const EPS: f32 = 1e-5;

    pub fn new(dim: usize) -> Self {
        LayerNorm {
            gamma: Param::new(vec![1.0; dim]),
            beta: Param::new(vec![0.0; dim]),
            dim,
            saved: None,
        }
    }

    pub fn forward(&mut self, x: &[f32]) -> Result<Vec<f32>> {
        rows_of("layer_norm input", x.len(), self.dim)?;
        check("layer_norm gamma", self.gamma.value.len(), self.dim)?;
        check("layer_norm beta", self.beta.value.len(), self.dim)?;
        let (y, cache) =
            linalg::layer_norm(x, &self.gamma.value, &self.beta.value, self.dim, Self::EPS);
        self.saved = Some(cache);
        Ok(y)
    }

    pub fn backward(&mut self, dy: &[f32]) -> Result<Vec<f32>> {
        let cache = self.saved.take().ok_or_else(|| no_forward("layer_norm"))?;
        check("layer_norm dy", dy.len(), cache.xhat.len())?;
        check("layer_norm gamma grad", self.gamma.grad.len(), self.dim)?;
        check("layer_norm beta grad", self.beta.grad.len(), self.dim)?;
        Ok(linalg::layer_norm_backward(
            dy,
            &cache,
            &self.gamma.value,
            self.dim,
            &mut self.gamma.grad,
            &mut self.beta.grad,
        ))
    }

    pub fn params<'a>(&'a mut self, name: &str, out: &mut NamedParams<'a>) {
        out.push((format!("{name}.gamma"), &mut self.gamma));
        out.push((format!("{name}.beta"), &mut self.beta));
    }
}

/// How the self-attention layer chooses the keys each query sees.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttentionMode {
    /// Every query sees every key (`attention_forward` / `attention_backward`).
    #[default]
    Dense,
    /// Block-sparse (SPEC §2): the backend's `block_topk` picks, for each 64-query block, the
    /// first `sink` key blocks, the `local` diagonal ones and the `keep` best-scoring others;
    /// attention runs over those (`sparse_attention_forward` / `_backward`). With `rettention`,
    /// the output rows are scaled by `ρ = exp(lse_sparse − lse_full)` (the share of the full
    /// softmax mass the selected keys hold) through the backend's epilogue.
    TopK {
        keep: usize,
        sink: usize,
        local: usize,
        rettention: bool,
    },
}

impl AttentionMode {
    /// `block_topk`'s parameters, in the top-k mode.
    pub fn topk(&self) -> Option<TopkParams> {
        match *self {
            AttentionMode::Dense => None,
            AttentionMode::TopK {
                keep, sink, local, ..
            } => Some(TopkParams { keep, sink, local }),
        }
    }
}

/// What the top-k mode chose in a forward: the layout and, with Re-ttention, the row scale `ρ`
/// `[batch, heads_q, len]`. Neither is differentiated: the layout is a piecewise-constant choice
/// and `ρ` is a constant of the backward (the gradient does not flow through its LSEs).
#[derive(Clone, Debug, PartialEq)]
pub struct Selection {
    pub layout: BlockLayout,
    pub rho: Option<Vec<f32>>,
}

impl Selection {
    /// Mean number of key blocks a query block attends to.
    pub fn mean_blocks(&self) -> f64 {
        let l = &self.layout;
        l.selected() as f64 / (l.batch() * l.heads() * l.rows()).max(1) as f64
    }

    /// Mean `ρ` over every query row (None without Re-ttention).
    pub fn mean_rho(&self) -> Option<f64> {
        let rho = self.rho.as_ref()?;
        Some(rho.iter().map(|&r| r as f64).sum::<f64>() / rho.len().max(1) as f64)
    }
}

/// What the attention backward needs: the op's inputs and outputs, in head layout (`o` before
/// any epilogue). The top-k selection, when there was one, is the layer's `last`.
struct AttentionSaved {
    p: AttentionParams,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    o: Vec<f32>,
    lse: Vec<f32>,
}

/// What the attention op gave: `o` and `lse` (what the backward needs), the layer's output
/// `ρ ⊙ o` when Re-ttention scaled it, and the top-k selection.
struct AttentionOut {
    o: Vec<f32>,
    lse: Vec<f32>,
    scaled: Option<Vec<f32>>,
    selection: Option<Selection>,
}

/// Multi-head (or grouped-query) self-attention, non-causal: host projections `Q, K, V, O`
/// around the backend's attention, dense or block-sparse ([`AttentionMode`]).
pub struct SelfAttention {
    pub wq: Linear,
    pub wk: Linear,
    pub wv: Linear,
    pub wo: Linear,
    heads_q: usize,
    heads_kv: usize,
    head_dim: usize,
    mode: AttentionMode,
    /// A selection to reuse instead of choosing one (top-k mode only): see
    /// [`SelfAttention::freeze_selection`].
    frozen: Option<Selection>,
    /// The selection of the last top-k forward.
    last: Option<Selection>,
    saved: Option<AttentionSaved>,
}

impl SelfAttention {
    /// `d_model = heads_q · head_dim`; `K` and `V` have `heads_kv` heads (GQA when fewer).
    /// Dense; [`SelfAttention::with_mode`] switches to top-k.
    pub fn new(rng: &mut StdRng, d_model: usize, heads_q: usize, heads_kv: usize) -> Self {
        let head_dim = d_model / heads_q;
        SelfAttention {
            wq: Linear::new(rng, d_model, heads_q * head_dim),
            wk: Linear::new(rng, d_model, heads_kv * head_dim),
            wv: Linear::new(rng, d_model, heads_kv * head_dim),
            wo: Linear::new(rng, heads_q * head_dim, d_model),
            heads_q,
            heads_kv,
            head_dim,
            mode: AttentionMode::Dense,
            frozen: None,
            last: None,
            saved: None,
        }
    }

    pub fn with_mode(mut self, mode: AttentionMode) -> Self {
        self.mode = mode;
        self
    }

    pub fn mode(&self) -> AttentionMode {
        self.mode
    }

    /// The layout (and `ρ`) the last top-k forward used; None in dense mode.
    pub fn last_selection(&self) -> Option<&Selection> {
        self.last.as_ref()
    }

    /// Reuse `selection` in every following top-k forward instead of running `block_topk` (and,
    /// with Re-ttention, the dense pass for `ρ`); `None` goes back to choosing. This makes the
    /// loss a smooth function of the parameters, for a finite-difference gradient check. A
    /// selection whose dims do not fit the input is a typed error in the forward.
    pub fn freeze_selection(&mut self, selection: Option<Selection>) {
        self.frozen = selection;
    }

    /// `x [batch, len, d_model]` to `[batch, len, d_model]`.
    pub fn forward<B: Kernels>(
        &mut self,
        backend: &B,
        x: &[f32],
        batch: usize,
        len: usize,
    ) -> Result<Vec<f32>> {
        check("attention x", x.len(), batch * len * self.wq.inp)?;
        let (hq, hkv, d) = (self.heads_q, self.heads_kv, self.head_dim);
        let shape = AttentionShape::gqa(batch, hq, hkv, len, len, d);
        let p = AttentionParams::new(shape);
        let q = linalg::split_heads(&self.wq.forward(x)?, batch, len, hq, d);
        let k = linalg::split_heads(&self.wk.forward(x)?, batch, len, hkv, d);
        let v = linalg::split_heads(&self.wv.forward(x)?, batch, len, hkv, d);
        let r = match self.mode.topk() {
            None => {
                let (o, lse) = host_ops::attention_forward(backend, &p, &q, &k, &v)?;
                AttentionOut {
                    o,
                    lse,
                    scaled: None,
                    selection: None,
                }
            }
            Some(topk) => self.sparse_forward(backend, &p, &topk, &q, &k, &v)?,
        };
        let out = r.scaled.as_ref().unwrap_or(&r.o);
        let y = self
            .wo
            .forward(&linalg::merge_heads(out, batch, len, hq, d))?;
        // Set together with `saved`, so the backward of this forward reads its selection.
        self.last = r.selection;
        self.saved = Some(AttentionSaved {
            p,
            q,
            k,
            v,
            o: r.o,
            lse: r.lse,
        });
        Ok(y)
    }

    /// The top-k forward:
    ///
    /// 1. the layout: `block_topk` on `Q`, `K` (or the frozen one);
    /// 2. `sparse_attention_forward` over it: `o`, `lse_sparse`;
    /// 3. with Re-ttention: `ρ = exp(lse_sparse − lse_full)`, `lse_full` from a dense
    ///    `attention_forward` (or the frozen `ρ`), then the sparse forward again with the
    ///    epilogue `row_scale = ρ` for the output. The second sparse pass is the price of
    ///    computing `ρ` from this very input: the epilogue needs `ρ` at launch, and `ρ` needs
    ///    the sparse LSE (a diffusion model reuses the previous step's statistics instead).
    fn sparse_forward<B: Kernels>(
        &self,
        backend: &B,
        p: &AttentionParams,
        topk: &TopkParams,
        q: &[f32],
        k: &[f32],
        v: &[f32],
    ) -> Result<AttentionOut> {
        let rettention = matches!(
            self.mode,
            AttentionMode::TopK {
                rettention: true,
                ..
            }
        );
        let frozen = self.frozen.as_ref();
        let layout = match frozen {
            Some(s) => s.layout.clone(),
            None => host_ops::block_topk(backend, p, topk, q, k)?,
        };
        let (o, lse) = host_ops::sparse_attention_forward(backend, p, &layout, q, k, v, None)?;
        if !rettention {
            return Ok(AttentionOut {
                o,
                lse,
                scaled: None,
                selection: Some(Selection { layout, rho: None }),
            });
        }
        let rho = match frozen.and_then(|s| s.rho.clone()) {
            Some(rho) => rho,
            None => {
                let (_, lse_full) = host_ops::attention_forward(backend, p, q, k, v)?;
                flashneck_core::layout::rho(&lse, &lse_full)?
            }
        };
        let (scaled, _) =
            host_ops::sparse_attention_forward(backend, p, &layout, q, k, v, Some(&rho))?;
        Ok(AttentionOut {
            o,
            lse,
            scaled: Some(scaled),
            selection: Some(Selection {
                layout,
                rho: Some(rho),
            }),
        })
    }

    pub fn backward<B: Kernels>(&mut self, backend: &B, dy: &[f32]) -> Result<Vec<f32>> {
        let s = self.saved.take().ok_or_else(|| no_forward("attention"))?;
        let (batch, len) = (s.p.shape.batch, s.p.shape.len_q);
        let (hq, hkv, d) = (self.heads_q, self.heads_kv, self.head_dim);
        let mut d_o = linalg::split_heads(&self.wo.backward(dy)?, batch, len, hq, d);
        let (dq, dk, dv) = match &self.last {
            None => {
                host_ops::attention_backward(backend, &s.p, &s.q, &s.k, &s.v, &s.o, &d_o, &s.lse)?
            }
            Some(sel) => {
                // out = ρ ⊙ o (ρ a constant per row) ⇒ dL/do = ρ ⊙ dL/dout.
                if let Some(rho) = &sel.rho {
                    check("attention rho", rho.len(), s.lse.len())?;
                    for (row, &r) in d_o.chunks_mut(d).zip(rho) {
                        row.iter_mut().for_each(|g| *g *= r);
                    }
                }
                host_ops::sparse_attention_backward(
                    backend,
                    &s.p,
                    &sel.layout,
                    &s.q,
                    &s.k,
                    &s.v,
                    &s.o,
                    &d_o,
                    &s.lse,
                )?
            }
        };
        let merge = |x: &[f32], heads| linalg::merge_heads(x, batch, len, heads, d);
        let mut dx = self.wq.backward(&merge(&dq, hq))?;
        linalg::add_assign(&mut dx, &self.wk.backward(&merge(&dk, hkv))?);
        linalg::add_assign(&mut dx, &self.wv.backward(&merge(&dv, hkv))?);
        Ok(dx)
    }

    pub fn params<'a>(&'a mut self, name: &str, out: &mut NamedParams<'a>) {
        self.wq.params(&format!("{name}.wq"), out);
        self.wk.params(&format!("{name}.wk"), out);
        self.wv.params(&format!("{name}.wv"), out);
        self.wo.params(&format!("{name}.wo"), out);
    }
}

/// KAT's MLP: `fc2(GR-KAN(fc1(x)))`, the activation a learned group-rational function run by the
/// backend's `grkan_forward` / `grkan_backward`, initialised to the GELU-like fit.
pub struct GrKanMlp {
    pub fc1: Linear,
    /// Numerator coefficients `a [groups, 6]`.
    pub a: Param,
    /// Denominator coefficients `b [groups, 4]`.
    pub b: Param,
    pub fc2: Linear,
    groups: usize,
    hidden: usize,
    saved: Option<(GrKanParams, Vec<f32>)>,
}

impl GrKanMlp {
    /// KAT's default degrees (`M = 5`, `N = 4`), the only ones with a GELU-like fit.
    pub const NUM_DEGREE: usize = 5;
    pub const DEN_DEGREE: usize = 4;

    pub fn new(rng: &mut StdRng, d_model: usize, hidden: usize, groups: usize) -> Result<Self> {
        let (a, b) =
            flashneck_core::grkan_init::gelu_like(groups, Self::NUM_DEGREE, Self::DEN_DEGREE)?;
        Ok(GrKanMlp {
            fc1: Linear::new(rng, d_model, hidden),
            a: Param::new(a),
            b: Param::new(b),
            fc2: Linear::new(rng, hidden, d_model),
            groups,
            hidden,
            saved: None,
        })
    }

    fn kan_params(&self, rows: usize) -> GrKanParams {
        GrKanParams::new(rows, self.hidden, self.groups)
            .with_degrees(Self::NUM_DEGREE, Self::DEN_DEGREE)
    }

    pub fn forward<B: Kernels>(&mut self, backend: &B, x: &[f32]) -> Result<Vec<f32>> {
        let h = self.fc1.forward(x)?;
        let p = self.kan_params(h.len() / self.hidden);
        let act = host_ops::grkan_forward(backend, &p, &h, &self.a.value, &self.b.value)?;
        let y = self.fc2.forward(&act)?;
        self.saved = Some((p, h));
        Ok(y)
    }

    pub fn backward<B: Kernels>(&mut self, backend: &B, dy: &[f32]) -> Result<Vec<f32>> {
        let (p, h) = self.saved.take().ok_or_else(|| no_forward("grkan_mlp"))?;
        let dact = self.fc2.backward(dy)?;
        let (dh, da, db) =
            host_ops::grkan_backward(backend, &p, &h, &self.a.value, &self.b.value, &dact)?;
        linalg::add_assign(&mut self.a.grad, &da);
        linalg::add_assign(&mut self.b.grad, &db);
        self.fc1.backward(&dh)
    }

    pub fn params<'a>(&'a mut self, name: &str, out: &mut NamedParams<'a>) {
        self.fc1.params(&format!("{name}.fc1"), out);
        out.push((format!("{name}.kan_a"), &mut self.a));
        out.push((format!("{name}.kan_b"), &mut self.b));
        self.fc2.params(&format!("{name}.fc2"), out);
    }
}

/// How the bottleneck samples its concepts: temperature and the Philox stream (`seed`,
/// `offset`), soft or hard (one-hot, straight-through).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GumbelSample {
    pub tau: f32,
    pub seed: u64,
    /// Advance it every step, so that the noise changes (SPEC §4's counter offset).
    pub offset: u64,
    pub hard: bool,
}

/// A sparse concept bottleneck: `x [batch, d]` → concept logits `[batch, K]` → Gumbel-Softmax
/// sample over the `K` concepts (the backend's `gumbel_softmax_forward` / `_backward`) →
/// linear classifier. Hard samples route every example through exactly one concept.
pub struct ConceptBottleneck {
    pub to_concepts: Linear,
    pub classifier: Linear,
    concepts: usize,
    saved: Option<(GumbelParams, Vec<f32>)>,
    last_sample: Vec<f32>,
}

impl ConceptBottleneck {
    pub fn new(rng: &mut StdRng, d_model: usize, concepts: usize, classes: usize) -> Self {
        ConceptBottleneck {
            to_concepts: Linear::new(rng, d_model, concepts),
            classifier: Linear::new(rng, concepts, classes),
            concepts,
            saved: None,
            last_sample: Vec::new(),
        }
    }

    /// The concept sample `[batch, K]` of the last forward (one-hot rows when hard).
    pub fn last_sample(&self) -> &[f32] {
        &self.last_sample
    }

    pub fn forward<B: Kernels>(
        &mut self,
        backend: &B,
        x: &[f32],
        sample: GumbelSample,
    ) -> Result<Vec<f32>> {
        let logits = self.to_concepts.forward(x)?;
        let rows = logits.len() / self.concepts;
        let p = GumbelParams::new(rows, self.concepts, sample.tau)
            .with_seed(sample.seed, sample.offset)
            .with_hard(sample.hard);
        let (y, y_soft) = host_ops::gumbel_forward(backend, &p, &logits)?;
        let out = self.classifier.forward(&y)?;
        self.saved = Some((p, y_soft));
        self.last_sample = y;
        Ok(out)
    }

    pub fn backward<B: Kernels>(&mut self, backend: &B, dy: &[f32]) -> Result<Vec<f32>> {
        let (p, y_soft) = self.saved.take().ok_or_else(|| no_forward("concepts"))?;
        let dsample = self.classifier.backward(dy)?;
        let dlogits = host_ops::gumbel_backward(backend, &p, &y_soft, &dsample)?;
        self.to_concepts.backward(&dlogits)
    }

    pub fn params<'a>(&'a mut self, name: &str, out: &mut NamedParams<'a>) {
        self.to_concepts.params(&format!("{name}.to_concepts"), out);
        self.classifier.params(&format!("{name}.classifier"), out);
    }
}
