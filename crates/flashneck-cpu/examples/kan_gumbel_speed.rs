//! Speed of GR-KAN and Gumbel-Softmax on the CPU against the machine's copy bandwidth (issue 2).
//!
//! ```text
//! RAYON_NUM_THREADS=2 cargo run --release -p flashneck-cpu --example kan_gumbel_speed
//! /opt/torchenv/bin/python crates/flashneck-cpu/examples/kan_gumbel_torch.py   # the peer
//! ```
//!
//! Bandwidth counts each input read once and each output written once: GR-KAN forward
//! `8 B/element` (x, y), backward `12 B/element` (x, dy, dx), memcpy `8 B/element`.
//!
//! The ops pick AVX2+FMA code at run time when the CPU has it (the default build needs no
//! `-C target-cpu`); `FLASHNECK_CPU_PORTABLE=1` times the portable code instead.

use flashneck_core::{Backend, GrKanOps, GrKanParams, GumbelOps, GumbelParams, grkan_init};
use flashneck_cpu::CpuBackend;
use rayon::prelude::*;
use std::time::Instant;

/// CPU seconds used by this process so far (all threads), from `/proc/self/stat` (10 ms ticks).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the `(comm)`: state is field 3, utime 14 and stime 15.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    if f.len() > 12 {
        (f[11] + f[12]) / 100.0
    } else {
        f64::NAN
    }
}

/// Seconds per run: the median wall time of `iters` runs after two warm-ups, and the CPU time
/// per run divided by `threads` (what the wall time would be on `threads` idle cores; the
/// machine is shared, so wall times are inflated by other processes).
fn time(iters: usize, threads: usize, mut f: impl FnMut()) -> (f64, f64) {
    f();
    f();
    let cpu0 = cpu_seconds();
    let mut t: Vec<f64> = (0..iters)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    let cpu = (cpu_seconds() - cpu0) / iters as f64 / threads as f64;
    t.sort_by(f64::total_cmp);
    (t[iters / 2], cpu)
}

/// `wall ms (cpu-based ms)` for printing.
fn ms((wall, cpu): (f64, f64)) -> String {
    format!("{:.2} ms wall, {:.2} ms cpu/threads", wall * 1e3, cpu * 1e3)
}

fn main() {
    let threads: usize = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let be = CpuBackend::with_threads(threads).expect("thread pool");
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    println!("{} ", be.info().device);

    // Copy bandwidth: the same element count as GR-KAN's x, copied by `threads` workers.
    let p = GrKanParams::new(25216, 768, 8);
    let n = p.x_len();
    let src: Vec<f32> = (0..n).map(|i| (i % 1013) as f32).collect();
    let mut dst = vec![0.0f32; n];
    let t_copy = time(31, threads, || {
        pool.install(|| {
            dst.par_chunks_mut(1 << 16)
                .zip(src.par_chunks(1 << 16))
                .for_each(|(d, s)| d.copy_from_slice(s))
        })
    });
    let bw = |bytes: f64, t: (f64, f64)| (bytes / t.0 / 1e9, bytes / t.1 / 1e9);
    let copy_bw = bw(8.0 * n as f64, t_copy);
    println!(
        "memcpy {n} f32: {}; {:.2} GB/s wall, {:.2} GB/s cpu-based",
        ms(t_copy),
        copy_bw.0,
        copy_bw.1
    );

    // GR-KAN f32 [25216, 768], G = 8, M = 5, N = 4, GELU-like init.
    let (a, b) = grkan_init::gelu_like(p.groups, p.num_degree, p.den_degree).unwrap();
    let x: Vec<f32> = (0..n)
        .map(|i| ((i * 7919) % 6001) as f32 / 1000.0 - 3.0)
        .collect();
    let dy: Vec<f32> = (0..n)
        .map(|i| ((i * 104_729) % 2001) as f32 / 1000.0 - 1.0)
        .collect();
    let (x, a, b, dy) = (
        be.upload(&x).unwrap(),
        be.upload(&a).unwrap(),
        be.upload(&b).unwrap(),
        be.upload(&dy).unwrap(),
    );
    let mut y = be.alloc::<f32>(n).unwrap();
    let t_fwd = time(15, threads, || {
        be.grkan_forward(&p, &x, &a, &b, &mut y).unwrap()
    });
    let fwd_bw = bw(8.0 * n as f64, t_fwd);
    println!(
        "grkan forward f32 [25216, 768] G=8: {}; {:.0}% of copy wall, {:.0}% cpu-based (target >= 50%)",
        ms(t_fwd),
        100.0 * fwd_bw.0 / copy_bw.0,
        100.0 * fwd_bw.1 / copy_bw.1
    );
    let mut dx = be.alloc::<f32>(n).unwrap();
    let mut da = be.alloc::<f32>(p.a_len()).unwrap();
    let mut db = be.alloc::<f32>(p.b_len()).unwrap();
    let t_bwd = time(15, threads, || {
        be.grkan_backward(&p, &x, &a, &b, &dy, &mut dx, &mut da, &mut db)
            .unwrap()
    });
    let bwd_bw = bw(12.0 * n as f64, t_bwd);
    println!(
        "grkan backward f32 [25216, 768] G=8: {}; {:.0}% of copy wall, {:.0}% cpu-based (target >= 30%)",
        ms(t_bwd),
        100.0 * bwd_bw.0 / copy_bw.0,
        100.0 * bwd_bw.1 / copy_bw.1
    );

    // The raw noise alone (Philox and two logs per element), for the breakdown of the forward.
    let mut g = be.alloc::<f32>(4096 * 4096).unwrap();
    let t = time(7, threads, || be.gumbel_noise(42, 0, &mut g).unwrap());
    println!("gumbel noise f32 [4096 * 4096]: {}", ms(t));

    // Gumbel-Softmax f32 [4096, 4096], tau = 1.
    for hard in [false, true] {
        let gp = GumbelParams::new(4096, 4096, 1.0)
            .with_seed(42, 0)
            .with_hard(hard);
        let logits: Vec<f32> = (0..gp.len())
            .map(|i| ((i * 7919) % 4001) as f32 / 1000.0 - 2.0)
            .collect();
        let logits = be.upload(&logits).unwrap();
        let mut y = be.alloc::<f32>(gp.len()).unwrap();
        let mut ys = be.alloc::<f32>(gp.len()).unwrap();
        let t = time(7, threads, || {
            be.gumbel_softmax_forward(&gp, &logits, &mut y, hard.then_some(&mut ys))
                .unwrap()
        });
        println!("gumbel forward f32 [4096, 4096] hard={hard}: {}", ms(t));
    }
}
