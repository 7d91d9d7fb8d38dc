//! Attention speed on the CPU at issue 2's size: f32 `[B=1, H=8, L=2048, D=64]`, causal and
//! not, forward and backward. Run with the thread count fixed, next to the PyTorch peer
//! (`docs/ops/attention.md` has both commands):
//!
//! ```text
//! RAYON_NUM_THREADS=2 cargo run --release -p flashneck-cpu --example attention_speed
//! ```
//!
//! Prints the best of 9 timed runs (after one warm-up) and the achieved GFLOP/s
//! (forward `4·B·H·L²·D`, backward `2.5×` that, both halved under causal).

use flashneck_core::{AttentionOps, AttentionParams, AttentionShape, Backend};
use flashneck_cpu::CpuBackend;
use std::time::Instant;

/// CPU time of every thread of this process so far, in ms (Linux `schedstat`; 0 elsewhere).
fn cpu_ms() -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .sum::<f64>()
        / 1e6
}

/// The fastest of 9 timed runs (after one warm-up), as `(wall ms, CPU ms)`: the least
/// disturbed by other processes. On a loaded machine the CPU time is the steadier number.
fn best_ms(mut f: impl FnMut()) -> (f64, f64) {
    f();
    let t: Vec<(f64, f64)> = (0..9)
        .map(|_| {
            let (s, c) = (Instant::now(), cpu_ms());
            f();
            (s.elapsed().as_secs_f64() * 1e3, cpu_ms() - c)
        })
        .collect();
    let min = |v: Vec<f64>| v.into_iter().fold(f64::INFINITY, f64::min);
    (
        min(t.iter().map(|x| x.0).collect()),
        min(t.iter().map(|x| x.1).collect()),
    )
}

fn main() -> flashneck_core::Result<()> {
    let b = CpuBackend::new();
    let (batch, heads, len, dim) = (1, 8, 2048, 64);
    let shape = AttentionShape::mha(batch, heads, len, len, dim);
    println!("cpu: {}", b.info().device);
    let n = shape.q_len();
    let data = |seed: u32| -> Vec<f32> {
        (0..n as u32)
            .map(|i| {
                ((i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 9) as f32 / 8_388_608.0) - 1.0
            })
            .collect()
    };
    let (q, k, v, d_o) = (
        b.upload(&data(1))?,
        b.upload(&data(2))?,
        b.upload(&data(3))?,
        b.upload(&data(4))?,
    );
    for causal in [false, true] {
        let p = AttentionParams::new(shape).with_causal(causal);
        let mut o = b.alloc::<f32>(shape.o_len())?;
        let mut lse = b.alloc::<f32>(shape.lse_len())?;
        let (mut dq, mut dk, mut dv) = (b.alloc(n)?, b.alloc(n)?, b.alloc(n)?);
        let fwd = best_ms(|| {
            b.attention_forward(&p, &q, &k, &v, &mut o, &mut lse)
                .unwrap()
        });
        let bwd = best_ms(|| {
            b.attention_backward(&p, &q, &k, &v, &o, &d_o, &lse, &mut dq, &mut dk, &mut dv)
                .unwrap()
        });
        let flop = 4.0 * (batch * heads * len * len * dim) as f64 * if causal { 0.5 } else { 1.0 };
        println!(
            "attention f32 [B={batch}, H={heads}, L={len}, D={dim}] causal={causal}: \
             forward {:.1} ms wall ({:.1} GFLOP/s), {:.1} ms cpu; \
             backward {:.1} ms wall ({:.1} GFLOP/s), {:.1} ms cpu",
            fwd.0,
            flop / fwd.0 / 1e6,
            fwd.1,
            bwd.0,
            2.5 * flop / bwd.0 / 1e6,
            bwd.1
        );
    }
    Ok(())
}
