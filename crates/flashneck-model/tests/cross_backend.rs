//! The cross-backend composition proof: the same model, seed and batches trained for a few
//! steps on the wgpu backend (lavapipe) and on the CUDA emulator give the CPU backend's losses
//! and gradients, within f32 attention tolerance.
//!
//! The CUDA kernels take head dims 64 and 128 only, so the model here has `head_dim = 64`
//! (`d_model 128`, 2 query heads sharing 1 kv head).

use flashneck_core::{Kernels, OpKind};
use flashneck_cpu::CpuBackend;
use flashneck_model::{GumbelSample, MatchTask, Model, ModelConfig, Param, TrainConfig, train};
use rand::{SeedableRng, rngs::StdRng};

/// Relative agreement of losses and gradients (`max|x − ref| / max(1e-3, max|ref|)` per tensor):
/// SPEC's f32 attention tolerance. Measured: ~2e-6 for gradients, ~1e-8 for losses.
const TOL: f64 = 1e-4;

fn setup() -> (ModelConfig, MatchTask) {
    let task = MatchTask::new(8, 5).unwrap();
    let cfg = ModelConfig {
        d_model: 128,
        heads_q: 2,
        heads_kv: 1,
        d_ff: 64,
        ..ModelConfig::small(task.in_dim(), task.len, task.classes())
    };
    (cfg, task)
}

/// Loss and every gradient tensor of one forward/backward at fixed weights and noise.
fn grads<B: Kernels>(b: &B) -> (f64, Vec<(String, Vec<f32>)>) {
    let (cfg, task) = setup();
    let data = task.sample(&mut StdRng::seed_from_u64(3), 8);
    let mut model = Model::new(cfg, 1).unwrap();
    let sample = GumbelSample {
        tau: 1.0,
        seed: 5,
        offset: 2,
        hard: false,
    };
    let loss = model
        .loss_and_grad(b, &data.x, &data.labels, sample)
        .unwrap();
    let g = model
        .params()
        .into_iter()
        .map(|(n, p): (String, &mut Param)| (n, p.grad.clone()))
        .collect();
    (loss, g)
}

fn rel(x: f64, reference: f64) -> f64 {
    (x - reference).abs() / reference.abs().max(1e-3)
}

fn matches_cpu<B: Kernels>(b: &B) {
    let info = b.info();
    for op in [
        OpKind::AttentionForward,
        OpKind::AttentionBackward,
        OpKind::GrKanForward,
        OpKind::GrKanBackward,
        OpKind::GumbelForward,
        OpKind::GumbelBackward,
    ] {
        assert!(
            info.supports(op, flashneck_core::DType::F32),
            "{} must claim {}",
            info.name,
            op.name()
        );
    }
    let cpu = CpuBackend::new();

    // One step: the loss and every gradient tensor.
    let (loss_ref, g_ref) = grads(&cpu);
    let (loss, g) = grads(b);
    assert!(rel(loss, loss_ref) < TOL, "loss {loss} vs cpu {loss_ref}");
    let mut worst = 0.0f64;
    for ((name, r), (_, x)) in g_ref.iter().zip(&g) {
        let scale = r.iter().fold(1e-3f32, |m, v| m.max(v.abs())) as f64;
        let err = r
            .iter()
            .zip(x)
            .map(|(r, x)| (r - x).abs() as f64)
            .fold(0.0, f64::max);
        assert!(
            err / scale < TOL,
            "{}: {name} off by {:.2e}",
            info.name,
            err / scale
        );
        worst = worst.max(err / scale);
    }
    println!("{}: worst gradient error {worst:.2e} (relative)", info.name);

    // Three training steps (Adam, fresh batches and noise): the same curve.
    let (cfg, task) = setup();
    let tc = TrainConfig {
        steps: 3,
        batch: 8,
        eval_every: 3,
        eval_examples: 16,
        ..TrainConfig::default()
    };
    let (_, r_ref) = train(&cpu, cfg, &task, &tc).unwrap();
    let (_, r) = train(b, cfg, &task, &tc).unwrap();
    println!(
        "{}: losses {:?} vs cpu {:?}",
        info.name, r.losses, r_ref.losses
    );
    for (x, r) in r.losses.iter().zip(&r_ref.losses) {
        assert!(rel(*x, *r) < TOL, "{}: loss {x} vs cpu {r}", info.name);
    }
    let (x, r) = (r.evals.last().unwrap(), r_ref.evals.last().unwrap());
    assert!(
        rel(x.loss, r.loss) < TOL,
        "{}: eval {x:?} vs {r:?}",
        info.name
    );
}

#[test]
fn wgpu_trains_like_the_cpu() {
    let b = flashneck_wgpu::WgpuBackend::new()
        .expect("no wgpu adapter: this test needs a Vulkan driver (CI installs lavapipe)");
    matches_cpu(&b);
}

#[test]
fn emulated_cuda_trains_like_the_cpu() {
    let b = flashneck_cuda::CudaBackend::emulated().unwrap();
    matches_cpu(&b);
}
