//! The training loop: fresh seeded batches, soft Gumbel samples with a fresh Philox offset per
//! step, Adam; evaluation on a fixed held-out set with hard (one-hot) concept samples.

use crate::data::{Batch, MatchTask};
use crate::layers::GumbelSample;
use crate::linalg;
use crate::model::{Model, ModelConfig, SelectionStats};
use crate::optim::Adam;
use flashneck_core::{Error, Kernels, Result};
use rand::{SeedableRng, rngs::StdRng};

/// What to train and how long.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TrainConfig {
    pub steps: usize,
    pub batch: usize,
    pub lr: f32,
    /// Seeds the weights, the training batches, the held-out set and the Gumbel noise.
    pub seed: u64,
    /// Gumbel-Softmax temperature during training. A warm sample (3.0) trains reliably; at 1.0
    /// some seeds stall (see docs/model.md). Evaluation samples hard one-hots, where `tau`
    /// does not matter.
    pub tau: f32,
    /// Evaluate every this many steps (and after the last).
    pub eval_every: usize,
    /// Size of the held-out set.
    pub eval_examples: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            steps: 400,
            batch: 32,
            lr: 3e-3,
            seed: 0,
            tau: 3.0,
            eval_every: 50,
            eval_examples: 512,
        }
    }
}

/// One evaluation on the held-out set.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EvalPoint {
    /// Steps taken before this evaluation.
    pub step: usize,
    pub loss: f64,
    pub accuracy: f64,
    /// In top-k attention mode, how sparse the evaluation's selection was.
    pub selection: Option<SelectionStats>,
}

/// The curve of a run.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainReport {
    /// Training loss of every step (on that step's batch, with that step's noise).
    pub losses: Vec<f64>,
    /// Held-out loss and accuracy, at step 0, every `eval_every` steps and at the end.
    pub evals: Vec<EvalPoint>,
}

/// The offset of the held-out evaluations' Gumbel noise, far from the training offsets.
const EVAL_OFFSET: u64 = u64::MAX;

/// Mean loss and accuracy of `model` on `data`, with hard concept samples from a fixed stream.
pub fn evaluate<B: Kernels>(
    backend: &B,
    model: &mut Model,
    data: &Batch,
    seed: u64,
) -> Result<(f64, f64)> {
    let sample = GumbelSample {
        tau: 1.0,
        seed,
        offset: EVAL_OFFSET,
        hard: true,
    };
    let logits = model.forward(backend, &data.x, data.size(), sample)?;
    let classes = model.config().classes;
    let (loss, _) = linalg::softmax_cross_entropy(&logits, &data.labels, classes)?;
    let correct = logits
        .chunks(classes)
        .zip(&data.labels)
        .filter(|(row, label)| linalg::argmax(row) == **label)
        .count();
    Ok((loss, correct as f64 / data.size() as f64))
}

/// Train a fresh model of `model_cfg` on `task`. Deterministic: the same arguments on the same
/// backend give bitwise the same curve.
pub fn train<B: Kernels>(
    backend: &B,
    model_cfg: ModelConfig,
    task: &MatchTask,
    cfg: &TrainConfig,
) -> Result<(Model, TrainReport)> {
    if cfg.batch == 0 {
        return Err(Error::bad("batch", ">= 1", 0));
    }
    if cfg.eval_examples == 0 {
        return Err(Error::bad("eval_examples", ">= 1", 0));
    }
    if cfg.eval_every == 0 {
        return Err(Error::bad("eval_every", ">= 1", 0));
    }
    if model_cfg.in_dim != task.in_dim() || model_cfg.len != task.len {
        return Err(Error::bad(
            "model_cfg",
            format!("in_dim {} and len {} (the task's)", task.in_dim(), task.len),
            format!("in_dim {} and len {}", model_cfg.in_dim, model_cfg.len),
        ));
    }
    let mut model = Model::new(model_cfg, cfg.seed)?;
    let mut adam = Adam::new(cfg.lr)?;
    let mut data_rng = StdRng::seed_from_u64(cfg.seed.wrapping_add(1));
    let held_out = task.sample(
        &mut StdRng::seed_from_u64(cfg.seed.wrapping_add(2)),
        cfg.eval_examples,
    );
    let mut report = TrainReport {
        losses: Vec::with_capacity(cfg.steps),
        evals: Vec::new(),
    };
    let eval = |model: &mut Model, step: usize| -> Result<EvalPoint> {
        let (loss, accuracy) = evaluate(backend, model, &held_out, cfg.seed)?;
        Ok(EvalPoint {
            step,
            loss,
            accuracy,
            selection: model.selection_stats(),
        })
    };
    report.evals.push(eval(&mut model, 0)?);
    for step in 0..cfg.steps {
        let batch = task.sample(&mut data_rng, cfg.batch);
        let sample = GumbelSample {
            tau: cfg.tau,
            seed: cfg.seed,
            offset: step as u64,
            hard: false,
        };
        let loss = model.loss_and_grad(backend, &batch.x, &batch.labels, sample)?;
        adam.step(model.params())?;
        report.losses.push(loss);
        let done = step + 1;
        if done % cfg.eval_every == 0 || done == cfg.steps {
            report.evals.push(eval(&mut model, done)?);
        }
    }
    Ok((model, report))
}
