//! Block-sparse attention in the model, on the CPU backend: the model learns the long match
//! task with top-k attention (two seeds, one with Re-ttention), its layouts are sparse, runs
//! are bitwise reproducible, and misuse is a typed error.
//! (The finite-difference check of the sparse backward is in `gradient_check.rs`.)

use flashneck_core::{BLOCK, Error};
use flashneck_cpu::CpuBackend;
use flashneck_model::{
    AttentionMode, Batch, GumbelSample, MatchTask, Model, ModelConfig, Selection, TrainConfig,
    train,
};
use rand::{SeedableRng, rngs::StdRng};

/// 256 tokens (4 key blocks), two of them marked.
fn long_task() -> MatchTask {
    MatchTask::new(256, 5)
        .unwrap()
        .with_mark_span(BLOCK)
        .unwrap()
}

/// The default small model (`d_model 16`, 2 query heads on 1 kv head) with top-k attention:
/// the first block, the diagonal one and the best other (2 of 4 blocks for the first query
/// block, 3 for the others).
fn sparse_config(task: &MatchTask, rettention: bool) -> ModelConfig {
    ModelConfig {
        attention: AttentionMode::TopK {
            keep: 1,
            sink: 1,
            local: 1,
            rettention,
        },
        ..ModelConfig::small(task.in_dim(), task.len, task.classes())
    }
}

fn train_config(seed: u64) -> TrainConfig {
    TrainConfig {
        steps: 150,
        batch: 16,
        lr: 5e-3,
        seed,
        eval_every: 75,
        eval_examples: 256,
        ..TrainConfig::default()
    }
}

/// The two blocks each example's marked spans sit in.
fn marked_blocks(task: &MatchTask, data: &Batch) -> Vec<[u32; 2]> {
    let dim = task.in_dim();
    (0..data.size())
        .map(|e| {
            let tokens = &data.x[e * task.len * dim..(e + 1) * task.len * dim];
            let mut marked = tokens
                .chunks(dim)
                .enumerate()
                .filter(|(_, t)| t[task.values] == 1.0)
                .map(|(i, _)| (i / BLOCK) as u32);
            let first = marked.next().unwrap();
            let second = marked.find(|&b| b != first).unwrap();
            [first, second]
        })
        .collect()
}

/// Share of the rows `(example, head, query block)` of the two marked blocks whose selection
/// holds the *other* marked block: what a query block needs to compare the two values.
fn finds_the_other_block(task: &MatchTask, model: &mut Model, data: &Batch) -> f64 {
    let sample = GumbelSample {
        tau: 1.0,
        seed: 0,
        offset: 0,
        hard: true,
    };
    model
        .forward(&CpuBackend::new(), &data.x, data.size(), sample)
        .unwrap();
    let layout = &model.selections()[0].layout;
    let (mut hits, mut rows) = (0, 0);
    for (b, [x, y]) in marked_blocks(task, data).into_iter().enumerate() {
        for h in 0..layout.heads() {
            for (qb, other) in [(x, y), (y, x)] {
                hits += usize::from(layout.row(b, h, qb as usize).contains(&other));
                rows += 1;
            }
        }
    }
    hits as f64 / rows as f64
}

#[test]
fn sparse_attention_learns_the_long_task_for_two_seeds() {
    let (b, task) = (CpuBackend::new(), long_task());
    let probe = task.sample(&mut StdRng::seed_from_u64(99), 64);
    // Two seeds, not three: 150 steps of len 256 take ~6 s in the test profile.
    for (seed, rettention) in [(0, false), (2, true)] {
        let cfg = sparse_config(&task, rettention);
        let found_at_init =
            finds_the_other_block(&task, &mut Model::new(cfg, seed).unwrap(), &probe);
        let (mut model, report) = train(&b, cfg, &task, &train_config(seed)).unwrap();
        let (first, last) = (report.evals[0], *report.evals.last().unwrap());
        let sel = last.selection.expect("top-k mode reports its selection");
        let found = finds_the_other_block(&task, &mut model, &probe);
        println!(
            "seed {seed}, rettention {rettention}: held-out accuracy {:.3} -> {:.3}, \
             {:.2} of {} key blocks per query block, mean rho {:?}, \
             the other marked block selected in {:.0}% of rows (at init {:.0}%)",
            first.accuracy,
            last.accuracy,
            sel.mean_blocks,
            sel.key_blocks,
            sel.mean_rho,
            100.0 * found,
            100.0 * found_at_init
        );
        // Chance is 0.5 (balanced labels).
        assert!(first.accuracy < 0.6, "seed {seed}: starts at {first:?}");
        // Measured 0.953 and 0.906 (seed 1, not run here: 0.857 on 512 examples).
        assert!(last.accuracy > 0.75, "seed {seed}: ends at {last:?}");
        // Sparse: 2 of 4 blocks for query block 0, 3 of 4 for the others.
        assert_eq!(sel.key_blocks, 4);
        assert!(sel.mean_blocks < 3.0, "seed {seed}: {sel:?}");
        match (rettention, sel.mean_rho) {
            (true, Some(rho)) => assert!(rho > 0.0 && rho < 1.0, "seed {seed}: {sel:?}"),
            (false, None) => {}
            other => panic!("seed {seed}: rettention and rho disagree: {other:?}"),
        }
        // Measured, not asserted: the selection holds the other marked block in 94% and 57% of
        // the rows (54% and 50% at initialisation). `block_topk` gets no gradient: whether the
        // pooled scores learn to find it varies by seed, and the model can solve the task
        // without it (docs/model.md).
    }
}

#[test]
fn sparse_runs_with_one_seed_are_bitwise_equal() {
    let (b, task) = (CpuBackend::new(), long_task());
    let cfg = sparse_config(&task, true);
    let run = |seed| {
        let tc = TrainConfig {
            steps: 8,
            batch: 4,
            eval_every: 4,
            eval_examples: 8,
            ..train_config(seed)
        };
        let (_, r) = train(&b, cfg, &task, &tc).unwrap();
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let evals: Vec<f64> = r
            .evals
            .iter()
            .flat_map(|e| [e.loss, e.accuracy, e.selection.unwrap().mean_rho.unwrap()])
            .collect();
        (bits(&r.losses), bits(&evals))
    };
    let first = run(4);
    assert_eq!(first, run(4));
    // Not vacuously equal: another seed gives another curve.
    assert_ne!(first.0, run(5).0);
}

#[test]
fn sparse_misuse_is_a_typed_error() {
    let (b, task) = (CpuBackend::new(), long_task());
    let good = sparse_config(&task, true);
    // Nothing to select.
    let none = ModelConfig {
        attention: AttentionMode::TopK {
            keep: 0,
            sink: 0,
            local: 0,
            rettention: false,
        },
        ..good
    };
    assert!(matches!(
        Model::new(none, 0).err(),
        Some(Error::BadParameter { arg: "keep", .. })
    ));
    // A frozen selection that does not fit the input: a layout for another batch size, then a
    // row scale of the wrong length.
    let data = task.sample(&mut StdRng::seed_from_u64(1), 2);
    let s = GumbelSample {
        tau: 1.0,
        seed: 0,
        offset: 0,
        hard: false,
    };
    let mut model = Model::new(good, 0).unwrap();
    model.forward(&b, &data.x, 2, s).unwrap();
    let sel: Selection = model.selections()[0].clone();
    let one = task.sample(&mut StdRng::seed_from_u64(1), 1);
    model.freeze_selections(Some(vec![sel.clone()])).unwrap();
    assert!(matches!(
        model.forward(&b, &one.x, 1, s),
        Err(Error::ShapeMismatch { arg: "layout", .. })
    ));
    let short_rho = Selection {
        rho: sel.rho.as_ref().map(|r| r[1..].to_vec()),
        ..sel.clone()
    };
    model.freeze_selections(Some(vec![short_rho])).unwrap();
    assert!(matches!(
        model.forward(&b, &data.x, 2, s),
        Err(Error::ShapeMismatch {
            arg: "row_scale",
            ..
        })
    ));
    // One selection per layer.
    assert!(matches!(
        model.freeze_selections(Some(vec![sel.clone(), sel])),
        Err(Error::ShapeMismatch {
            arg: "selections",
            ..
        })
    ));
    // Frozen and then released: the same forward as a fresh choice.
    model.freeze_selections(None).unwrap();
    let fresh = model.forward(&b, &data.x, 2, s).unwrap();
    assert_eq!(
        fresh,
        Model::new(good, 0)
            .unwrap()
            .forward(&b, &data.x, 2, s)
            .unwrap()
    );
}
