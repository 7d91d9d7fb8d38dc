//! Training on the CPU backend: the model learns the match task (three seeds), runs are
//! bitwise reproducible, and bad configurations are typed errors.

use flashneck_core::Error;
use flashneck_cpu::CpuBackend;
use flashneck_model::{GumbelSample, MatchTask, Model, ModelConfig, TrainConfig, train};

fn task() -> MatchTask {
    MatchTask::new(8, 5).unwrap()
}

fn config(task: &MatchTask) -> ModelConfig {
    ModelConfig::small(task.in_dim(), task.len, task.classes())
}

fn mean(x: &[f64]) -> f64 {
    x.iter().sum::<f64>() / x.len() as f64
}

#[test]
fn training_learns_the_match_task_for_three_seeds() {
    let (b, task) = (CpuBackend::new(), task());
    for seed in 0..3 {
        let cfg = TrainConfig {
            seed,
            ..TrainConfig::default()
        };
        let (_, report) = train(&b, config(&task), &task, &cfg).unwrap();
        assert_eq!(report.losses.len(), cfg.steps);
        let (first, last) = (report.evals[0], *report.evals.last().unwrap());
        let early = mean(&report.losses[..20]);
        let late = mean(&report.losses[cfg.steps - 50..]);
        println!(
            "seed {seed}: train loss {early:.4} -> {late:.4}, held-out accuracy {:.3} -> {:.3}",
            first.accuracy, last.accuracy
        );
        // Chance is 0.5 (balanced labels) and the loss starts near ln 2.
        assert!(first.accuracy < 0.6, "seed {seed}: starts at {first:?}");
        assert!(early > 0.6, "seed {seed}: early loss {early}");
        assert!(late < 0.5 * early, "seed {seed}: loss {early} -> {late}");
        assert!(last.loss < 0.3, "seed {seed}: held-out {last:?}");
        assert!(last.accuracy > 0.9, "seed {seed}: held-out {last:?}");
    }
}

#[test]
fn the_same_seed_gives_bitwise_equal_curves() {
    let (b, task) = (CpuBackend::new(), task());
    let cfg = TrainConfig {
        steps: 60,
        eval_every: 20,
        seed: 9,
        ..TrainConfig::default()
    };
    let run = |cfg: &TrainConfig| {
        let (_, r) = train(&b, config(&task), &task, cfg).unwrap();
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let evals: Vec<f64> = r.evals.iter().flat_map(|e| [e.loss, e.accuracy]).collect();
        (bits(&r.losses), bits(&evals))
    };
    let first = run(&cfg);
    assert_eq!(first, run(&cfg));
    // Not vacuously equal: another seed gives another curve.
    let other = run(&TrainConfig { seed: 10, ..cfg });
    assert_ne!(first.0, other.0);
}

#[test]
fn the_gumbel_offset_changes_the_noise() {
    // A fresh offset per step must give fresh noise: the same batch and weights, two offsets,
    // two different losses; the same offset twice, the same loss.
    let (b, task) = (CpuBackend::new(), task());
    let data = task.sample(&mut rand::SeedableRng::seed_from_u64(4), 16);
    let mut model = Model::new(config(&task), 1).unwrap();
    let mut loss = |offset| {
        let s = GumbelSample {
            tau: 1.0,
            seed: 2,
            offset,
            hard: false,
        };
        model.loss_and_grad(&b, &data.x, &data.labels, s).unwrap()
    };
    let (a, a2, c) = (loss(0), loss(0), loss(1));
    assert_eq!(a.to_bits(), a2.to_bits());
    assert_ne!(a, c);
}

#[test]
fn bad_configurations_and_calls_are_typed_errors() {
    let (b, task) = (CpuBackend::new(), task());
    let good = config(&task);
    let bad = |cfg: ModelConfig| Model::new(cfg, 0).err();
    assert!(matches!(
        bad(ModelConfig { heads_q: 3, ..good }),
        Some(Error::BadParameter { arg: "heads_q", .. })
    ));
    assert!(matches!(
        bad(ModelConfig {
            heads_q: 4,
            heads_kv: 3,
            ..good
        }),
        Some(Error::BadParameter { .. })
    ));
    assert!(matches!(
        bad(ModelConfig { d_ff: 30, ..good }),
        Some(Error::BadParameter {
            arg: "channels",
            ..
        })
    ));
    assert!(matches!(
        bad(ModelConfig {
            concepts: 0,
            ..good
        }),
        Some(Error::BadParameter {
            arg: "concepts",
            ..
        })
    ));

    let mut model = Model::new(good, 0).unwrap();
    let s = GumbelSample {
        tau: 1.0,
        seed: 0,
        offset: 0,
        hard: false,
    };
    // Backward before any forward.
    assert!(matches!(
        model.backward(&b, &[0.0; 4]),
        Err(Error::BadParameter { .. })
    ));
    // Input of the wrong length, labels out of range, a bad temperature.
    assert!(matches!(
        model.forward(&b, &[0.0; 7], 1, s),
        Err(Error::ShapeMismatch { arg: "x", .. })
    ));
    let data = task.sample(&mut rand::SeedableRng::seed_from_u64(0), 2);
    assert!(
        model
            .loss_and_grad(&b, &data.x, &[0, 2], s)
            .is_err_and(|e| matches!(e, Error::BadParameter { arg: "labels", .. }))
    );
    assert!(
        model
            .loss_and_grad(&b, &data.x, &data.labels, GumbelSample { tau: 0.0, ..s })
            .is_err_and(|e| matches!(e, Error::BadParameter { arg: "tau", .. }))
    );
    // A parameter replaced by one of the wrong length (the fields are public).
    model.embed.w.value.pop();
    assert!(matches!(
        model.forward(&b, &data.x, 2, s),
        Err(Error::ShapeMismatch {
            arg: "linear w",
            ..
        })
    ));
    // A training configuration that does not fit the task.
    let cfg = TrainConfig::default();
    // Each refused for its own reason (a bare `is_err()` would pass on any error at all).
    let refused = |r: Result<_, Error>, arg: &str| matches!(r, Err(Error::BadParameter { arg: got, .. }) if got == arg);
    assert!(refused(
        train(&b, ModelConfig { len: 5, ..good }, &task, &cfg).map(|_| ()),
        "model_cfg"
    ));
    assert!(refused(
        train(&b, good, &task, &TrainConfig { batch: 0, ..cfg }).map(|_| ()),
        "batch"
    ));
    assert!(refused(
        train(&b, good, &task, &TrainConfig { lr: -1.0, ..cfg }).map(|_| ()),
        "lr"
    ));
}
