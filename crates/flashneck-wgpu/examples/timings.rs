//! Rough timings of every op on the first adapter (for reports; the real benchmarks are
//! `flashneck-bench`): `cargo run --release -p flashneck-wgpu --example timings`.

use flashneck_core::{
    AttentionOps, AttentionParams, AttentionShape, Backend, GrKanOps, GrKanParams, GumbelOps,
    GumbelParams, Result,
};
use flashneck_wgpu::WgpuBackend;

/// Best of three timed runs after one warm-up, in milliseconds.
fn best_ms(b: &WgpuBackend, f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        best = best.min(b.time_ms(f)?);
    }
    Ok(best)
}

fn main() -> Result<()> {
    let b = WgpuBackend::new()?;
    let info = b.adapter_info();
    println!(
        "adapter: {} ({:?}, {})",
        info.name, info.backend, info.driver_info
    );
    println!(
        "copy bandwidth: {:.2} GB/s",
        b.copy_bandwidth_gbs(64 << 20)?
    );

    let p = GrKanParams::new(4096, 768, 8);
    let x = b.upload(&vec![0.5f32; p.x_len()])?;
    let a = b.upload(&vec![0.1f32; p.a_len()])?;
    let bb = b.upload(&vec![0.1f32; p.b_len()])?;
    let (mut y, mut dx) = (b.alloc::<f32>(p.x_len())?, b.alloc::<f32>(p.x_len())?);
    let (mut da, mut db) = (b.alloc::<f32>(p.a_len())?, b.alloc::<f32>(p.b_len())?);
    let ms = best_ms(&b, &mut || b.grkan_forward(&p, &x, &a, &bb, &mut y))?;
    let gbs = 8.0 * p.x_len() as f64 / (ms * 1e-3) / 1e9;
    println!("grkan_forward f32 4096x768: {ms:.3} ms ({gbs:.2} GB/s)");
    let ms = best_ms(&b, &mut || {
        b.grkan_backward(&p, &x, &a, &bb, &y, &mut dx, &mut da, &mut db)
    })?;
    println!("grkan_backward f32 4096x768: {ms:.3} ms");

    let g = GumbelParams::new(8192, 100, 0.7);
    let logits = b.upload(&vec![0.0f32; g.len()])?;
    let (mut gy, mut ys) = (b.alloc::<f32>(g.len())?, b.alloc::<f32>(g.len())?);
    let ms = best_ms(&b, &mut || {
        b.gumbel_softmax_forward(&g, &logits, &mut gy, Some(&mut ys))
    })?;
    println!("gumbel_softmax_forward f32 8192x100: {ms:.3} ms");

    let ap = AttentionParams::new(AttentionShape::mha(1, 4, 512, 512, 64)).with_causal(true);
    let s = ap.shape;
    let q = b.upload(&vec![0.01f32; s.q_len()])?;
    let k = b.upload(&vec![0.02f32; s.k_len()])?;
    let v = b.upload(&vec![0.03f32; s.v_len()])?;
    let (mut o, mut lse) = (b.alloc::<f32>(s.o_len())?, b.alloc::<f32>(s.lse_len())?);
    let ms = best_ms(&b, &mut || {
        b.attention_forward(&ap, &q, &k, &v, &mut o, &mut lse)
    })?;
    // Causal: half of the 4·Lq·Lk·D multiply-adds.
    let gflops = 2.0 * 2.0 * (s.heads_q * s.len_q * s.len_k * s.head_dim) as f64 / 2.0;
    println!(
        "attention_forward f32 causal 1x4x512x512x64: {ms:.3} ms ({:.2} GFLOP/s)",
        gflops / (ms * 1e-3) / 1e9
    );
    let d_o = b.upload(&vec![0.04f32; s.o_len()])?;
    let (mut dq, mut dk, mut dv) = (
        b.alloc::<f32>(s.q_len())?,
        b.alloc::<f32>(s.k_len())?,
        b.alloc::<f32>(s.v_len())?,
    );
    let ms = best_ms(&b, &mut || {
        b.attention_backward(&ap, &q, &k, &v, &o, &d_o, &lse, &mut dq, &mut dk, &mut dv)
    })?;
    println!("attention_backward f32 causal 1x4x512x512x64: {ms:.3} ms");
    Ok(())
}
