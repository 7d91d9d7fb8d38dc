//! Criterion benches of the CPU backend at the sizes of issue 2 (f32): attention forward and
//! backward `[1, 8, 2048, 64]` causal and not, GR-KAN `[25216, 768, G=8]` forward and backward,
//! Gumbel-Softmax forward `[4096, 4096]`. Small sample counts: `cargo bench` takes minutes.
//! `flashneck-bench` (`cargo xtask bench`) measures the same calls against the limits and peers.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use flashneck_benches::calls;
use flashneck_benches::cases::{Problem, work};
use flashneck_core::{DType, OpKind};
use flashneck_cpu::CpuBackend;
use std::time::Duration;

fn bench_op(c: &mut Criterion, backend: &CpuBackend, op: OpKind, problem: Problem) {
    let name = format!("{} f32 {}", op.name(), problem.label());
    let cache = flashneck_benches::limits::cpu_last_level_cache_bytes();
    let (mut call, _) = match calls::prepare(backend, op, DType::F32, &problem, cache) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("skip {name}: {e}");
            return;
        }
    };
    if let Err(e) = call() {
        eprintln!("skip {name}: {e}");
        return;
    }
    let mut g = c.benchmark_group(op.name());
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Bytes(
        work(op, DType::F32, &problem).bytes as u64,
    ));
    g.bench_function(name, |bench| {
        bench.iter(|| call().expect("the op ran in warm-up"))
    });
    g.finish();
}

fn cpu(c: &mut Criterion) {
    let backend = CpuBackend::new();
    for op in [OpKind::AttentionForward, OpKind::AttentionBackward] {
        for causal in [false, true] {
            let p = Problem::Attention {
                batch: 1,
                heads: 8,
                len: 2048,
                head_dim: 64,
                causal,
            };
            bench_op(c, &backend, op, p);
        }
    }
    for op in [OpKind::GrKanForward, OpKind::GrKanBackward] {
        let p = Problem::GrKan {
            rows: 25216,
            channels: 768,
            groups: 8,
        };
        bench_op(c, &backend, op, p);
    }
    let p = Problem::Gumbel {
        rows: 4096,
        classes: 4096,
    };
    bench_op(c, &backend, OpKind::GumbelForward, p);
}

criterion_group!(benches, cpu);
criterion_main!(benches);
