//! The configuration and the model: embed → `layers` × (attention block, GR-KAN MLP block) →
//! LayerNorm → mean-pool → concept bottleneck → class logits.

use crate::layers::{
    self, AttentionMode, ConceptBottleneck, GrKanMlp, GumbelSample, LayerNorm, Linear, NamedParams,
    Selection, SelfAttention,
};
use crate::linalg::{self, check};
use flashneck_core::{AttentionShape, Error, GrKanParams, Kernels, Result};
use rand::{SeedableRng, rngs::StdRng};

/// The model's sizes. [`ModelConfig::validate`] turns every bad combination into a typed error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelConfig {
    /// Features per input token.
    pub in_dim: usize,
    /// Sequence length.
    pub len: usize,
    pub d_model: usize,
    /// Query heads; `head_dim = d_model / heads_q`.
    pub heads_q: usize,
    /// Key/value heads (`heads_q` for MHA, fewer for GQA).
    pub heads_kv: usize,
    /// Hidden width of the GR-KAN MLP.
    pub d_ff: usize,
    /// GR-KAN groups (`d_ff % kan_groups == 0`).
    pub kan_groups: usize,
    pub layers: usize,
    /// Concepts `K` of the bottleneck.
    pub concepts: usize,
    pub classes: usize,
    /// Dense or block-sparse (top-k) self-attention; dense by default.
    pub attention: AttentionMode,
}

impl ModelConfig {
    /// The default for the match task: `d_model 16`, 2 query heads sharing 1 kv head (GQA),
    /// one layer, 8 concepts.
    pub fn small(in_dim: usize, len: usize, classes: usize) -> Self {
        ModelConfig {
            in_dim,
            len,
            d_model: 16,
            heads_q: 2,
            heads_kv: 1,
            d_ff: 32,
            kan_groups: 4,
            layers: 1,
            concepts: 8,
            classes,
            attention: AttentionMode::Dense,
        }
    }

    pub fn head_dim(&self) -> usize {
        self.d_model / self.heads_q.max(1)
    }

    pub fn validate(&self) -> Result<()> {
        for (arg, v) in [
            ("in_dim", self.in_dim),
            ("len", self.len),
            ("d_model", self.d_model),
            ("layers", self.layers),
            ("concepts", self.concepts),
            ("classes", self.classes),
        ] {
            if v == 0 {
                return Err(Error::bad(arg, ">= 1", v));
            }
        }
        if self.heads_q == 0 || !self.d_model.is_multiple_of(self.heads_q) {
            return Err(Error::bad(
                "heads_q",
                format!("a divisor of d_model = {}", self.d_model),
                self.heads_q,
            ));
        }
        AttentionShape::gqa(
            1,
            self.heads_q,
            self.heads_kv,
            self.len,
            self.len,
            self.head_dim(),
        )
        .validate()?;
        GrKanParams::new(1, self.d_ff, self.kan_groups)
            .with_degrees(GrKanMlp::NUM_DEGREE, GrKanMlp::DEN_DEGREE)
            .validate()?;
        if let Some(topk) = self.attention.topk() {
            topk.validate()?;
        }
        Ok(())
    }
}

/// How sparse the top-k attention of a forward was.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SelectionStats {
    /// Mean number of key blocks a query block attended to.
    pub mean_blocks: f64,
    /// Key blocks per sequence (`nKB`): the dense count.
    pub key_blocks: usize,
    /// Mean Re-ttention scale `ρ` (share of the full softmax mass kept), when used.
    pub mean_rho: Option<f64>,
}

/// One transformer block (pre-norm): `x + attn(ln1(x))`, then `x + mlp(ln2(x))`.
pub struct Block {
    pub ln1: LayerNorm,
    pub attn: SelfAttention,
    pub ln2: LayerNorm,
    pub mlp: GrKanMlp,
}

impl Block {
    fn forward<B: Kernels>(&mut self, backend: &B, x: &[f32], batch: usize) -> Result<Vec<f32>> {
        let len = x.len() / batch / self.ln1.gamma.value.len();
        let mut x1 = x.to_vec();
        let a = self
            .attn
            .forward(backend, &self.ln1.forward(x)?, batch, len)?;
        linalg::add_assign(&mut x1, &a);
        let mut x2 = x1.clone();
        let m = self.mlp.forward(backend, &self.ln2.forward(&x1)?)?;
        linalg::add_assign(&mut x2, &m);
        Ok(x2)
    }

    fn backward<B: Kernels>(&mut self, backend: &B, dy: &[f32]) -> Result<Vec<f32>> {
        let mut dx1 = dy.to_vec();
        let dm = self.ln2.backward(&self.mlp.backward(backend, dy)?)?;
        linalg::add_assign(&mut dx1, &dm);
        let mut dx = dx1.clone();
        let da = self.ln1.backward(&self.attn.backward(backend, &dx1)?)?;
        linalg::add_assign(&mut dx, &da);
        Ok(dx)
    }

    fn params<'a>(&'a mut self, name: &str, out: &mut NamedParams<'a>) {
        self.ln1.params(&format!("{name}.ln1"), out);
        self.attn.params(&format!("{name}.attn"), out);
        self.ln2.params(&format!("{name}.ln2"), out);
        self.mlp.params(&format!("{name}.mlp"), out);
    }
}

/// The classifier. `forward` saves what `backward` needs; `backward` accumulates gradients
/// into every [`crate::Param`] (call [`Model::zero_grad`] between steps).
pub struct Model {
    cfg: ModelConfig,
    pub embed: Linear,
    pub blocks: Vec<Block>,
    pub ln_f: LayerNorm,
    pub bottleneck: ConceptBottleneck,
    /// Batch size of the saved forward.
    saved_batch: Option<usize>,
}

impl Model {
    /// A freshly initialised model (seeded: the same seed gives the same weights).
    pub fn new(cfg: ModelConfig, seed: u64) -> Result<Self> {
        cfg.validate()?;
        let mut rng = StdRng::seed_from_u64(seed);
        let embed = Linear::new(&mut rng, cfg.in_dim, cfg.d_model);
        let blocks = (0..cfg.layers)
            .map(|_| {
                Ok(Block {
                    ln1: LayerNorm::new(cfg.d_model),
                    attn: SelfAttention::new(&mut rng, cfg.d_model, cfg.heads_q, cfg.heads_kv)
                        .with_mode(cfg.attention),
                    ln2: LayerNorm::new(cfg.d_model),
                    mlp: GrKanMlp::new(&mut rng, cfg.d_model, cfg.d_ff, cfg.kan_groups)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Model {
            cfg,
            embed,
            blocks,
            ln_f: LayerNorm::new(cfg.d_model),
            bottleneck: ConceptBottleneck::new(&mut rng, cfg.d_model, cfg.concepts, cfg.classes),
            saved_batch: None,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Class logits `[batch, classes]` of `x [batch, len, in_dim]`.
    pub fn forward<B: Kernels>(
        &mut self,
        backend: &B,
        x: &[f32],
        batch: usize,
        sample: GumbelSample,
    ) -> Result<Vec<f32>> {
        let c = self.cfg;
        if batch == 0 {
            return Err(Error::bad("batch", ">= 1", 0));
        }
        check("x", x.len(), batch * c.len * c.in_dim)?;
        let mut h = self.embed.forward(x)?;
        for block in &mut self.blocks {
            h = block.forward(backend, &h, batch)?;
        }
        let h = self.ln_f.forward(&h)?;
        let pooled = linalg::mean_pool(&h, batch, c.len, c.d_model);
        let logits = self.bottleneck.forward(backend, &pooled, sample)?;
        self.saved_batch = Some(batch);
        Ok(logits)
    }

    /// Backpropagate `dlogits [batch, classes]` through the saved forward.
    pub fn backward<B: Kernels>(&mut self, backend: &B, dlogits: &[f32]) -> Result<()> {
        let c = self.cfg;
        let batch = self
            .saved_batch
            .take()
            .ok_or_else(|| layers::no_forward("model"))?;
        check("dlogits", dlogits.len(), batch * c.classes)?;
        let dpooled = self.bottleneck.backward(backend, dlogits)?;
        let dh = linalg::mean_pool_backward(&dpooled, batch, c.len, c.d_model);
        let mut dh = self.ln_f.backward(&dh)?;
        for block in self.blocks.iter_mut().rev() {
            dh = block.backward(backend, &dh)?;
        }
        self.embed.backward(&dh)?;
        Ok(())
    }

    /// Forward, mean cross-entropy against `labels` (f64) and backward: the gradients of this
    /// loss end up in the parameters (zeroed first).
    pub fn loss_and_grad<B: Kernels>(
        &mut self,
        backend: &B,
        x: &[f32],
        labels: &[usize],
        sample: GumbelSample,
    ) -> Result<f64> {
        self.zero_grad();
        let logits = self.forward(backend, x, labels.len(), sample)?;
        let (loss, dlogits) = linalg::softmax_cross_entropy(&logits, labels, self.cfg.classes)?;
        self.backward(backend, &dlogits)?;
        Ok(loss)
    }

    /// Every parameter with its dotted name, in a fixed order.
    pub fn params(&mut self) -> NamedParams<'_> {
        let mut out = Vec::new();
        self.embed.params("embed", &mut out);
        for (i, block) in self.blocks.iter_mut().enumerate() {
            block.params(&format!("block{i}"), &mut out);
        }
        self.ln_f.params("ln_f", &mut out);
        self.bottleneck.params("concepts", &mut out);
        out
    }

    pub fn zero_grad(&mut self) {
        self.params().into_iter().for_each(|(_, p)| p.zero_grad());
    }

    /// The selections of the last top-k forward, one per layer (empty in dense mode).
    pub fn selections(&self) -> Vec<&Selection> {
        self.blocks
            .iter()
            .filter_map(|b| b.attn.last_selection())
            .collect()
    }

    /// Mean key blocks per query block and mean `ρ` of the last top-k forward, over every
    /// layer; None in dense mode.
    pub fn selection_stats(&self) -> Option<SelectionStats> {
        let sel = self.selections();
        let first = sel.first()?;
        let n = sel.len() as f64;
        let rhos: Option<Vec<f64>> = sel.iter().map(|s| s.mean_rho()).collect();
        Some(SelectionStats {
            mean_blocks: sel.iter().map(|s| s.mean_blocks()).sum::<f64>() / n,
            key_blocks: first.layout.cols(),
            mean_rho: rhos.map(|r| r.iter().sum::<f64>() / n),
        })
    }

    /// Reuse these selections (one per layer, as [`Model::selections`] returns them) in every
    /// following forward, or choose again with `None`: see [`SelfAttention::freeze_selection`].
    pub fn freeze_selections(&mut self, selections: Option<Vec<Selection>>) -> Result<()> {
        match selections {
            None => self
                .blocks
                .iter_mut()
                .for_each(|b| b.attn.freeze_selection(None)),
            Some(sel) => {
                check("selections", sel.len(), self.blocks.len())?;
                for (b, s) in self.blocks.iter_mut().zip(sel) {
                    b.attn.freeze_selection(Some(s));
                }
            }
        }
        Ok(())
    }

    /// Total number of trainable scalars.
    pub fn num_params(&mut self) -> usize {
        self.params().iter().map(|(_, p)| p.value.len()).sum()
    }
}
