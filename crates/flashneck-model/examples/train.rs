//! Train the concept-bottleneck classifier on the match task and print its curve.
//!
//! ```text
//! cargo run -p flashneck-model --release --example train -- [--backend cpu|wgpu|cuda|cuda-emu]
//!     [--steps N] [--seed S] [--lr LR] [--tau TAU] [--batch N] [--d-model D] [--heads-q H]
//!     [--heads-kv H] [--concepts K] [--len L] [--mark-span S]
//!     [--attention dense|sparse] [--keep N] [--sink N] [--local N] [--rettention]
//!     [--min-accuracy A]
//! ```
//!
//! `--min-accuracy A` makes the run fail (exit 1) when the last held-out accuracy is below `A`:
//! the GPU check (gpu/run.sh) trains on the real device this way.
//!
//! `--attention sparse` selects key blocks with the backend's `block_topk` (`--keep 1 --sink 1
//! --local 1` by default) and runs block-sparse attention over them; `--rettention` adds the
//! Re-ttention row scale. Blocks are 64 tokens: use a long task, e.g. `--len 256 --mark-span 64`
//! (both marked tokens in one random 64-token block of four).
//!
//! The CUDA backend's attention takes head dims 64 and 128 only: run it with `--d-model 128`
//! (two query heads of 64).

use flashneck_core::{Error, Kernels, Result};

use flashneck_model::{AttentionMode, MatchTask, ModelConfig, TrainConfig, train};
use std::time::Instant;

/// Parsed command line.
struct Args {
    backend: String,
    cfg: TrainConfig,
    d_model: usize,
    heads: (usize, usize),
    concepts: usize,
    len: usize,
    mark_span: Option<usize>,
    sparse: bool,
    /// `(keep, sink, local)` of the sparse mode.
    topk: (usize, usize, usize),
    rettention: bool,
    /// Fail when the last held-out accuracy is below this.
    min_accuracy: Option<f64>,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        backend: "cpu".into(),
        cfg: TrainConfig::default(),
        d_model: 16,
        heads: (2, 1),
        concepts: 8,
        len: 8,
        mark_span: None,
        sparse: false,
        topk: (1, 1, 1),
        rettention: false,
        min_accuracy: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| Error::bad("arguments", format!("a value after {flag}"), "nothing"))
        };
        let number = |v: String| {
            v.parse::<u64>()
                .map_err(|_| Error::bad("arguments", "a non-negative integer", v))
        };
        let float = |v: String| {
            v.parse::<f32>()
                .map_err(|_| Error::bad("arguments", "a number", v))
        };
        match flag.as_str() {
            "--backend" => args.backend = value()?,
            "--steps" => args.cfg.steps = number(value()?)? as usize,
            "--seed" => args.cfg.seed = number(value()?)?,
            "--d-model" => args.d_model = number(value()?)? as usize,
            "--heads-q" => args.heads.0 = number(value()?)? as usize,
            "--heads-kv" => args.heads.1 = number(value()?)? as usize,
            "--concepts" => args.concepts = number(value()?)? as usize,
            "--batch" => args.cfg.batch = number(value()?)? as usize,
            "--len" => args.len = number(value()?)? as usize,
            "--mark-span" => args.mark_span = Some(number(value()?)? as usize),
            "--attention" => {
                args.sparse = match value()?.as_str() {
                    "dense" => false,
                    "sparse" => true,
                    other => return Err(Error::bad("--attention", "dense or sparse", other)),
                }
            }
            "--keep" => args.topk.0 = number(value()?)? as usize,
            "--sink" => args.topk.1 = number(value()?)? as usize,
            "--local" => args.topk.2 = number(value()?)? as usize,
            "--rettention" => args.rettention = true,
            "--min-accuracy" => {
                let v = value()?;
                args.min_accuracy = Some(
                    v.parse::<f64>()
                        .map_err(|_| Error::bad("--min-accuracy", "a number", v))?,
                );
            }
            "--lr" => args.cfg.lr = float(value()?)?,
            "--tau" => args.cfg.tau = float(value()?)?,
            other => {
                return Err(Error::bad(
                    "arguments",
                    "--backend, --steps, --seed, --lr, --tau, --batch, --d-model, --heads-q, \
                     --heads-kv, --concepts, --len, --mark-span, --attention, --keep, --sink, \
                     --local, --rettention, --min-accuracy",
                    other,
                ));
            }
        }
    }
    Ok(args)
}

fn run<B: Kernels>(backend: &B, args: &Args) -> Result<()> {
    let cfg = &args.cfg;
    let mut task = MatchTask::new(args.len, 5)?;
    if let Some(span) = args.mark_span {
        task = task.with_mark_span(span)?;
    }
    let (keep, sink, local) = args.topk;
    let attention = if args.sparse {
        AttentionMode::TopK {
            keep,
            sink,
            local,
            rettention: args.rettention,
        }
    } else {
        AttentionMode::Dense
    };
    let model_cfg = ModelConfig {
        d_model: args.d_model,
        heads_q: args.heads.0,
        heads_kv: args.heads.1,
        concepts: args.concepts,
        attention,
        ..ModelConfig::small(task.in_dim(), task.len, task.classes())
    };
    println!("backend: {}", backend.info().device);
    println!(
        "task: match (len {}, {} values, marks within {} tokens), model: {model_cfg:?}",
        task.len,
        task.values,
        task.mark_span()
    );
    let start = Instant::now();
    let (mut model, report) = train(backend, model_cfg, &task, cfg)?;
    let wall = start.elapsed();
    println!("{} parameters", model.num_params());
    println!(
        "step  train_loss(mean of last {})  held_out_loss  held_out_acc  [blocks/qb of nKB, mean rho]",
        cfg.eval_every
    );
    for e in &report.evals {
        let lo = e.step.saturating_sub(cfg.eval_every);
        let window = &report.losses[lo..e.step];
        let train = if window.is_empty() {
            f64::NAN
        } else {
            window.iter().sum::<f64>() / window.len() as f64
        };
        let sel = match e.selection {
            Some(s) => match s.mean_rho {
                Some(rho) => format!("  {:.2} of {}, {rho:.3}", s.mean_blocks, s.key_blocks),
                None => format!("  {:.2} of {}", s.mean_blocks, s.key_blocks),
            },
            None => String::new(),
        };
        println!(
            "{:>4}  {:>10.4}  {:>13.4}  {:>12.3}{sel}",
            e.step, train, e.loss, e.accuracy
        );
    }
    println!("{} steps in {:.2} s", cfg.steps, wall.as_secs_f64());
    // A NaN accuracy fails too.
    let last = report.evals.last().map_or(0.0, |e| e.accuracy);
    match args.min_accuracy {
        Some(min) if last.partial_cmp(&min).is_none_or(|o| o.is_lt()) => Err(Error::bad(
            "--min-accuracy",
            format!("a last held-out accuracy of at least {min}"),
            last,
        )),
        _ => Ok(()),
    }
}

fn main() -> Result<()> {
    let args = parse_args()?;
    match args.backend.as_str() {
        "cpu" => run(&flashneck_cpu::CpuBackend::new(), &args),
        "wgpu" => run(&flashneck_wgpu::WgpuBackend::new()?, &args),
        // The CUDA kernels take head dims 64 and 128: pass `--d-model 128` (2 heads of 64).
        "cuda" => run(&flashneck_cuda::CudaBackend::new(0)?, &args),
        "cuda-emu" => run(&flashneck_cuda::CudaBackend::emulated()?, &args),
        other => Err(Error::bad(
            "--backend",
            "cpu, wgpu, cuda or cuda-emu",
            other,
        )),
    }
}
