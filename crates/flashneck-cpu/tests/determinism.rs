//! CPU-only: results do not depend on the number of threads. GR-KAN's `da`/`db` are reduced per
//! tile (a fixed range of rows) and then in tile order, so 1, 2, 3 or 7 workers give the same
//! bits; the Gumbel forward and backward are per row and must match too.

use flashneck_conformance::{fresh_rng, nan_buffer, random_input};
use flashneck_core::{Backend, GrKanOps, GrKanParams, GumbelOps, GumbelParams};
use flashneck_cpu::CpuBackend;

/// The bit patterns of an output, which must be fully written: outputs start as NaN
/// (`nan_buffer`), so an element no thread count writes stays NaN and fails here instead of
/// comparing equal across runs.
fn bits(v: &[f32]) -> Vec<u32> {
    assert!(
        v.iter().all(|x| x.is_finite()),
        "an output element is not written"
    );
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn grkan_backward_is_bitwise_equal_for_any_thread_count() {
    let (mut rng, seed) = fresh_rng();
    // Many tiles (ragged last one) and a ragged group width.
    let p = GrKanParams::new(1237, 84, 4);
    let (x, _) = random_input::<f32>(&mut rng, p.x_len(), 1.0);
    let (a, _) = random_input::<f32>(&mut rng, p.a_len(), 0.3);
    let (b, _) = random_input::<f32>(&mut rng, p.b_len(), 0.3);
    let (dy, _) = random_input::<f32>(&mut rng, p.x_len(), 1.0);
    let run = |threads: usize| {
        let be = CpuBackend::with_threads(threads).unwrap();
        let (x, a, b, dy) = (
            be.upload(&x).unwrap(),
            be.upload(&a).unwrap(),
            be.upload(&b).unwrap(),
            be.upload(&dy).unwrap(),
        );
        let mut dx = nan_buffer::<_, f32>(&be, p.x_len());
        let mut da = nan_buffer::<_, f32>(&be, p.a_len());
        let mut db = nan_buffer::<_, f32>(&be, p.b_len());
        be.grkan_backward(&p, &x, &a, &b, &dy, &mut dx, &mut da, &mut db)
            .unwrap();
        let mut y = nan_buffer::<_, f32>(&be, p.x_len());
        be.grkan_forward(&p, &x, &a, &b, &mut y).unwrap();
        [dx, da, db, y].map(|v| bits(&be.download(&v).unwrap()))
    };
    let one = run(1);
    for threads in [2, 3, 7] {
        assert!(
            run(threads) == one,
            "GR-KAN with {threads} threads differs from 1 thread (FLASHNECK_SEED={seed})"
        );
    }
}

#[test]
fn gumbel_is_bitwise_equal_for_any_thread_count() {
    let (mut rng, seed) = fresh_rng();
    let p = GumbelParams::new(333, 517, 0.3)
        .with_seed(11, 5)
        .with_hard(true);
    let (logits, _) = random_input::<f32>(&mut rng, p.len(), 2.0);
    let (dy, _) = random_input::<f32>(&mut rng, p.len(), 1.0);
    let run = |threads: usize| {
        let be = CpuBackend::with_threads(threads).unwrap();
        let l = be.upload(&logits).unwrap();
        let mut y = nan_buffer::<_, f32>(&be, p.len());
        let mut ys = nan_buffer::<_, f32>(&be, p.len());
        be.gumbel_softmax_forward(&p, &l, &mut y, Some(&mut ys))
            .unwrap();
        let d = be.upload(&dy).unwrap();
        let mut dl = nan_buffer::<_, f32>(&be, p.len());
        be.gumbel_softmax_backward(&p, &ys, &d, &mut dl).unwrap();
        let mut g = nan_buffer::<_, f32>(&be, 100_003);
        be.gumbel_noise(1, 2, &mut g).unwrap();
        [y, ys, dl, g].map(|v| bits(&be.download(&v).unwrap()))
    };
    let one = run(1);
    for threads in [2, 3] {
        assert!(
            run(threads) == one,
            "Gumbel with {threads} threads differs from 1 thread (FLASHNECK_SEED={seed})"
        );
    }
}
