//! Whole-model gradient check on the CPU backend: the backward's gradient of a sample of every
//! parameter tensor (embedding, LayerNorms, attention projections, GR-KAN `a`/`b`, MLP, concept
//! layer, classifier) against central finite differences of the loss.
//!
//! The Gumbel noise is fixed (same seed and offset at every evaluation), so the loss is a
//! deterministic function of the parameters. The forward runs in f32 and the loss is summed in
//! f64; `EPS = 5e-3` keeps the f32 rounding of the loss (~1e-7) well under the tolerance.

use flashneck_cpu::CpuBackend;
use flashneck_model::{AttentionMode, GumbelSample, MatchTask, Model, ModelConfig, Selection};
use rand::{SeedableRng, rngs::StdRng};

const EPS: f32 = 5e-3;
/// `|fd − analytic| ≤ ATOL + RTOL · max(|fd|, |analytic|)`.
const ATOL: f64 = 5e-5;
const RTOL: f64 = 5e-3;
/// Entries checked per parameter tensor (the largest-gradient entry, then evenly spaced ones).
const PER_TENSOR: usize = 4;
/// Gradients that are zero in exact arithmetic: a key bias adds the same `q·b` to every score
/// of a query row, which the softmax cancels.
const ZERO_BY_SYMMETRY: [&str; 1] = ["block0.attn.wk.b"];

fn tiny() -> (ModelConfig, MatchTask) {
    let task = MatchTask::new(5, 3).unwrap();
    let cfg = ModelConfig {
        in_dim: task.in_dim(),
        len: task.len,
        d_model: 8,
        heads_q: 1,
        heads_kv: 1,
        d_ff: 8,
        kan_groups: 2,
        layers: 1,
        concepts: 4,
        classes: task.classes(),
        attention: AttentionMode::Dense,
    };
    (cfg, task)
}

const SAMPLE: GumbelSample = GumbelSample {
    tau: 1.0,
    seed: 7,
    offset: 3,
    hard: false,
};

fn close(fd: f64, analytic: f64) -> bool {
    (fd - analytic).abs() <= ATOL + RTOL * fd.abs().max(analytic.abs())
}

/// `(name, index, analytic, finite difference)` of one checked gradient entry.
type Check = (String, usize, f64, f64);

/// A [`Check`] for a sample of every parameter tensor.
fn gradients() -> Vec<Check> {
    let (cfg, task) = tiny();
    gradients_of(cfg, &task).0
}

/// The same for any configuration, and the top-k selections the check ran with (empty when
/// dense). In top-k mode the selection (layout, and `ρ` with Re-ttention) is chosen once, at
/// the unperturbed parameters, and frozen for every loss evaluation: the backward treats both
/// as constants, so the finite differences must too.
fn gradients_of(cfg: ModelConfig, task: &MatchTask) -> (Vec<Check>, Vec<Selection>) {
    let b = CpuBackend::new();
    let data = task.sample(&mut StdRng::seed_from_u64(11), 2);
    let mut model = Model::new(cfg, 3).unwrap();
    // Move LayerNorm's γ/β, GR-KAN's b and the biases off their initial values, so that
    // every term of every backward is exercised (γ = 1 or β = 0 would hide a missing factor).
    let mut rng = StdRng::seed_from_u64(5);
    for (_, p) in model.params() {
        for v in &mut p.value {
            *v += rand::Rng::gen_range(&mut rng, -0.2..0.2);
        }
    }
    model
        .loss_and_grad(&b, &data.x, &data.labels, SAMPLE)
        .unwrap();
    let selections: Vec<Selection> = model.selections().into_iter().cloned().collect();
    if !selections.is_empty() {
        model.freeze_selections(Some(selections.clone())).unwrap();
    }
    let grads: Vec<(String, Vec<f32>)> = model
        .params()
        .into_iter()
        .map(|(n, p)| (n, p.grad.clone()))
        .collect();
    let mut out = Vec::new();
    for (t, (name, grad)) in grads.iter().enumerate() {
        let n = grad.len();
        let top = (0..n)
            .max_by(|&i, &j| grad[i].abs().total_cmp(&grad[j].abs()))
            .unwrap();
        let mut picks = vec![top];
        picks.extend((0..PER_TENSOR - 1).map(|k| (k * n / (PER_TENSOR - 1) + t) % n));
        picks.dedup();
        for i in picks {
            let mut loss_at = |delta: f32| {
                let original = {
                    let mut ps = model.params();
                    let v = &mut ps[t].1.value[i];
                    let o = *v;
                    *v = o + delta;
                    o
                };
                let logits = model.forward(&b, &data.x, 2, SAMPLE).unwrap();
                model.params()[t].1.value[i] = original;
                flashneck_model::linalg::softmax_cross_entropy(&logits, &data.labels, 2)
                    .unwrap()
                    .0
            };
            let fd = (loss_at(EPS) - loss_at(-EPS)) / (2.0 * EPS as f64);
            out.push((name.clone(), i, grad[i] as f64, fd));
        }
    }
    (out, selections)
}

/// Every parameter tensor of the model, checked by name.
const EVERY_TENSOR: [&str; 14] = [
    "embed.w",
    "block0.ln1.gamma",
    "block0.attn.wq.w",
    "block0.attn.wk.w",
    "block0.attn.wv.w",
    "block0.attn.wo.w",
    "block0.ln2.beta",
    "block0.mlp.fc1.w",
    "block0.mlp.kan_a",
    "block0.mlp.kan_b",
    "block0.mlp.fc2.w",
    "ln_f.gamma",
    "concepts.to_concepts.w",
    "concepts.classifier.w",
];

#[test]
fn every_layer_matches_finite_differences() {
    assert_all_close(&gradients());
}

/// Every entry within tolerance, every tensor of [`EVERY_TENSOR`] sampled, and every tensor
/// with a clearly non-zero gradient somewhere (so that the check is not vacuous).
fn assert_all_close(checks: &[Check]) {
    let names: std::collections::BTreeSet<&str> = checks.iter().map(|(n, ..)| n.as_str()).collect();
    for expected in EVERY_TENSOR {
        assert!(names.contains(expected), "{expected} not checked");
    }
    let mut bad = Vec::new();
    for (name, i, analytic, fd) in checks {
        if !close(*fd, *analytic) {
            bad.push(format!("{name}[{i}]: analytic {analytic:.6e}, fd {fd:.6e}"));
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {} gradients off:\n{}",
        bad.len(),
        checks.len(),
        bad.join("\n")
    );
    let worst = checks
        .iter()
        .map(|(_, _, a, fd)| (fd - a).abs() / (ATOL + RTOL * fd.abs().max(a.abs())))
        .fold(0.0, f64::max);
    println!(
        "{} gradients checked, worst error {worst:.3} of the tolerance",
        checks.len()
    );
    // The check is not vacuous: every tensor has an entry with a clearly non-zero gradient
    // (except the ones that are zero by symmetry, checked to be ~0 above).
    for name in names.into_iter().filter(|n| !ZERO_BY_SYMMETRY.contains(n)) {
        let biggest = checks
            .iter()
            .filter(|(n, ..)| n == name)
            .map(|(.., fd)| fd.abs())
            .fold(0.0, f64::max);
        assert!(
            biggest > 20.0 * ATOL,
            "{name}: largest |grad| {biggest:.2e}"
        );
    }
}

#[test]
fn a_gradient_ten_percent_off_fails_the_check() {
    // The same comparison, against gradients off by 10% (what a dropped or doubled term in a
    // backward typically gives, and much less): the largest entry of every tensor is rejected.
    let checks = gradients();
    let mut tensors: Vec<&str> = checks.iter().map(|(n, ..)| n.as_str()).collect();
    tensors.dedup();
    tensors.retain(|n| !ZERO_BY_SYMMETRY.contains(n));
    for name in tensors {
        let (_, _, analytic, fd) = checks.iter().find(|(n, ..)| n == name).unwrap();
        assert!(!close(*fd, analytic * 1.1), "{name}: 10% error passes");
    }
}

/// The tiny configuration with block-sparse attention over a ragged long sequence: `len 200`
/// (4 key blocks, the last one 8 keys), 2 query heads sharing 1 kv head, and a selection of
/// `sink 1, local 1, keep 1`: 2 or 3 of the 4 blocks per query block.
fn tiny_sparse(rettention: bool) -> (ModelConfig, MatchTask) {
    let (cfg, _) = tiny();
    let task = MatchTask::new(200, 3).unwrap();
    let cfg = ModelConfig {
        len: task.len,
        heads_q: 2,
        heads_kv: 1,
        attention: AttentionMode::TopK {
            keep: 1,
            sink: 1,
            local: 1,
            rettention,
        },
        ..cfg
    };
    (cfg, task)
}

#[test]
fn sparse_attention_matches_finite_differences_with_a_frozen_selection() {
    // Checked by hand that this fails: dropping the `ρ` scaling of dO in the backward fails
    // 49 of 98 gradients with Re-ttention (every tensor upstream of the attention output);
    // scaling by ρ² fails them too.
    for rettention in [false, true] {
        let (cfg, task) = tiny_sparse(rettention);
        let (checks, selections) = gradients_of(cfg, &task);
        // Not vacuous: the layout really is sparse, and ρ (the share of softmax mass kept) is
        // far enough from 1 that a missing or doubled ρ in the backward shows.
        let sel = &selections[0];
        let n_kb = sel.layout.cols();
        assert_eq!(n_kb, 4);
        assert!(sel.mean_blocks() < 3.0, "{:?}", sel.mean_blocks());
        if rettention {
            let rho = sel.mean_rho().unwrap();
            assert!((0.3..0.9).contains(&rho), "mean rho {rho}");
        }
        println!(
            "rettention {rettention}: {:.2} of {n_kb} key blocks per query block, mean rho {:?}",
            sel.mean_blocks(),
            sel.mean_rho()
        );
        assert_all_close(&checks);
    }
}
