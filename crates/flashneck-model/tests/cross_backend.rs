//! The cross-backend composition proof: the same model, seed and batches trained for a few
//! steps on the wgpu backend (lavapipe) and on the CUDA emulator give the CPU backend's losses
//! and gradients, within f32 attention tolerance.
//!
//! The CUDA kernels take head dims 64 and 128 only, so the model here has `head_dim = 64`
//! (`d_model 128`, 2 query heads sharing 1 kv head).
//!
//! The block-sparse mode gets one step too: `block_topk`, sparse attention forward and
//! backward and the Re-ttention epilogue on the long task (`len 128`, two key blocks).

use flashneck_core::{Kernels, OpKind};
use flashneck_cpu::CpuBackend;
use flashneck_model::{
    AttentionMode, GumbelSample, MatchTask, Model, ModelConfig, Param, TrainConfig, train,
};
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

/// The sparse setup: the long task over two key blocks, and a top-1 selection per query block
/// (`keep 1`, no sink, no local block: half the blocks, chosen by the pooled scores alone)
/// with Re-ttention.
fn sparse_setup() -> (ModelConfig, MatchTask) {
    let task = MatchTask::new(128, 5).unwrap().with_mark_span(64).unwrap();
    let (cfg, _) = setup();
    let cfg = ModelConfig {
        in_dim: task.in_dim(),
        len: task.len,
        attention: AttentionMode::TopK {
            keep: 1,
            sink: 0,
            local: 0,
            rettention: true,
        },
        ..cfg
    };
    (cfg, task)
}

/// Every gradient tensor with its name.
type Grads = Vec<(String, Vec<f32>)>;

/// Loss and every gradient tensor of one forward/backward at fixed weights and noise.
fn grads<B: Kernels>(b: &B) -> (f64, Grads) {
    let (cfg, task) = setup();
    let (loss, g, _) = grads_of(b, cfg, &task, 8);
    (loss, g)
}

/// The same for any configuration and batch size, with the model's top-k layouts (empty when
/// dense).
fn grads_of<B: Kernels>(
    b: &B,
    cfg: ModelConfig,
    task: &MatchTask,
    batch: usize,
) -> (f64, Grads, Vec<flashneck_core::BlockLayout>) {
    let data = task.sample(&mut StdRng::seed_from_u64(3), batch);
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
    let layouts = model
        .selections()
        .into_iter()
        .map(|s| s.layout.clone())
        .collect();
    let g = model
        .params()
        .into_iter()
        .map(|(n, p): (String, &mut Param)| (n, p.grad.clone()))
        .collect();
    (loss, g, layouts)
}

/// The loss within [`TOL`], every gradient tensor within [`TOL`] of its largest entry; returns
/// the worst relative gradient error.
fn same_loss_and_grads(
    backend: &str,
    (loss, g): (f64, &Grads),
    (loss_ref, g_ref): (f64, &Grads),
) -> f64 {
    assert!(
        rel(loss, loss_ref) < TOL,
        "{backend}: loss {loss} vs cpu {loss_ref}"
    );
    assert_eq!(g.len(), g_ref.len());
    let mut worst = 0.0f64;
    for ((name, r), (x_name, x)) in g_ref.iter().zip(g) {
        // `f64::max` drops NaN and `zip` stops at the shorter side: check both first, so that
        // a NaN or a missing entry fails instead of vanishing from the fold.
        assert_eq!(x_name, name, "{backend}: parameter order differs");
        assert_eq!(x.len(), r.len(), "{backend}: {name} length");
        assert!(
            x.iter().chain(r).all(|v| v.is_finite()),
            "{backend}: {name} has a non-finite gradient"
        );
        let scale = r.iter().fold(1e-3f32, |m, v| m.max(v.abs())) as f64;
        let err = r
            .iter()
            .zip(x)
            .map(|(r, x)| (r - x).abs() as f64)
            .fold(0.0, f64::max);
        assert!(
            err / scale < TOL,
            "{backend}: {name} off by {:.2e}",
            err / scale
        );
        worst = worst.max(err / scale);
    }
    worst
}

/// One block-sparse step (top-k selection, sparse forward with the Re-ttention epilogue,
/// sparse backward) gives the CPU's layout, loss and gradients.
fn sparse_step_matches_cpu<B: Kernels>(b: &B) {
    let info = b.info();
    assert_claims(
        &info,
        &[
            OpKind::BlockTopk,
            OpKind::SparseForward,
            OpKind::SparseBackward,
        ],
    );
    let (cfg, task) = sparse_setup();
    let (loss_ref, g_ref, layouts_ref) = grads_of(&CpuBackend::new(), cfg, &task, 2);
    let (loss, g, layouts) = grads_of(b, cfg, &task, 2);
    // The same blocks chosen (a near-tie could flip one; these seeds have none), and sparse:
    // one of the two key blocks per query block.
    assert_eq!(layouts, layouts_ref, "{}: another top-k choice", info.name);
    assert_eq!(layouts[0].selected(), layouts[0].counts().len());
    let worst = same_loss_and_grads(&info.name, (loss, &g), (loss_ref, &g_ref));
    println!(
        "{}: sparse step, worst gradient error {worst:.2e} (relative)",
        info.name
    );
}

/// The backend claims each op in f32 (a backend that skipped one would test nothing here).
fn assert_claims(info: &flashneck_core::BackendInfo, ops: &[OpKind]) {
    for &op in ops {
        assert!(
            info.supports(op, flashneck_core::DType::F32),
            "{} must claim {}",
            info.name,
            op.name()
        );
    }
}

fn rel(x: f64, reference: f64) -> f64 {
    (x - reference).abs() / reference.abs().max(1e-3)
}

fn matches_cpu<B: Kernels>(b: &B) {
    let info = b.info();
    assert_claims(
        &info,
        &[
            OpKind::AttentionForward,
            OpKind::AttentionBackward,
            OpKind::GrKanForward,
            OpKind::GrKanBackward,
            OpKind::GumbelForward,
            OpKind::GumbelBackward,
        ],
    );
    let cpu = CpuBackend::new();

    // One step: the loss and every gradient tensor.
    let (loss_ref, g_ref) = grads(&cpu);
    let (loss, g) = grads(b);
    let worst = same_loss_and_grads(&info.name, (loss, &g), (loss_ref, &g_ref));
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
    assert_eq!(r.losses.len(), tc.steps, "{}: losses recorded", info.name);
    assert_eq!(r.losses.len(), r_ref.losses.len());
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

#[test]
fn wgpu_sparse_step_matches_the_cpu() {
    let b = flashneck_wgpu::WgpuBackend::new()
        .expect("no wgpu adapter: this test needs a Vulkan driver (CI installs lavapipe)");
    sparse_step_matches_cpu(&b);
}

#[test]
fn emulated_cuda_sparse_step_matches_the_cpu() {
    let b = flashneck_cuda::CudaBackend::emulated().unwrap();
    sparse_step_matches_cpu(&b);
}
