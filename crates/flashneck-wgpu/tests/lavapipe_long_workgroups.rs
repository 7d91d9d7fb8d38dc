//! Regression test for a lavapipe bug (issue 5): a workgroup that runs more than about a
//! thousand workgroup barriers in the attention kernels' tile loops stops short with no error
//! (measured on Mesa 22.3.6: ~970 barriers fail, ~850 pass). Before the fix, each case below
//! ran one workgroup well past that count and came back wrong: dK/dV mostly unwritten (NaN),
//! the forward's O and dQ wrong. The kernels now cut their loops into passes of at most 256
//! barriers (`attention::passes`), carrying the loop state between passes, so these shapes
//! match the f64 oracle, dense and sparse, and bit for bit run to run.

mod common;

use common::backend;
use flashneck_conformance::{assert_close, fresh_rng, nan_buffer, random_input};
use flashneck_core::{
    AttentionOps, AttentionParams, AttentionShape, Backend, BlockLayout, Element,
    SparseAttentionOps, SparseEpilogue,
};
use flashneck_cpu::oracle::attention as oracle;
use flashneck_wgpu::WgpuBackend;
use half::f16;

/// dQ, dK, dV on the device.
type Grads<T> = (Vec<T>, Vec<T>, Vec<T>);

/// Forward and backward of `p` (sparse over `layout` when given) against the f64 oracle; the
/// backward runs twice and must give the same bits.
fn check<T: Element>(p: AttentionParams, layout: Option<&BlockLayout>) {
    let b = backend();
    let (mut rng, seed) = fresh_rng();
    let s = p.shape;
    let what = format!("{} {p:?} sparse={} seed {seed}", T::DTYPE, layout.is_some());
    let (q, q64) = random_input::<T>(&mut rng, s.q_len(), 1.0);
    let (k, k64) = random_input::<T>(&mut rng, s.k_len(), 1.0);
    let (v, v64) = random_input::<T>(&mut rng, s.v_len(), 1.0);
    let (d_o, d_o64) = random_input::<T>(&mut rng, s.o_len(), 1.0);
    let up = |x: &[T]| b.upload(x).unwrap();
    let (qd, kd, vd, dod) = (up(&q), up(&k), up(&v), up(&d_o));
    let dl = layout.map(|l| {
        (
            b.upload_layout(l).unwrap(),
            b.upload_layout(&l.transpose()).unwrap(),
        )
    });
    let tol = T::DTYPE.reduction_tolerance();

    let mut o = nan_buffer::<_, T>(&b, s.o_len());
    let mut lse = nan_buffer::<_, f32>(&b, s.lse_len());
    match &dl {
        None => b.attention_forward(&p, &qd, &kd, &vd, &mut o, &mut lse),
        Some((l, _)) => b.sparse_attention_forward(
            &p,
            l,
            &qd,
            &kd,
            &vd,
            SparseEpilogue::none(),
            &mut o,
            &mut lse,
        ),
    }
    .unwrap();
    let (wo, wlse) = oracle::attention_forward(&p, layout, &q64, &k64, &v64, None, None);
    let o_host = b.download(&o).unwrap();
    let lse_host = b.download(&lse).unwrap();
    assert_close(&format!("{what} o"), &o_host, &wo, tol, seed);
    assert_close(&format!("{what} lse"), &lse_host, &wlse, 1e-4, seed);

    // The backward from the device's own O and LSE (the oracle gets the same values).
    let run = |b: &WgpuBackend| -> Grads<T> {
        let mut dq = nan_buffer::<_, T>(b, s.q_len());
        let mut dk = nan_buffer::<_, T>(b, s.k_len());
        let mut dv = nan_buffer::<_, T>(b, s.v_len());
        match &dl {
            None => {
                b.attention_backward(&p, &qd, &kd, &vd, &o, &dod, &lse, &mut dq, &mut dk, &mut dv)
            }
            Some((l, lt)) => b.sparse_attention_backward(
                &p, l, lt, &qd, &kd, &vd, &o, &dod, &lse, &mut dq, &mut dk, &mut dv,
            ),
        }
        .unwrap();
        (
            b.download(&dq).unwrap(),
            b.download(&dk).unwrap(),
            b.download(&dv).unwrap(),
        )
    };
    let (dq, dk, dv) = run(&b);
    let f64s = |x: &[T]| x.iter().map(|v| v.to_f64()).collect::<Vec<_>>();
    let lse64: Vec<f64> = lse_host.iter().map(|&v| v as f64).collect();
    let (wdq, wdk, wdv) =
        oracle::attention_backward(&p, layout, &q64, &k64, &v64, &f64s(&o_host), &d_o64, &lse64);
    assert_close(&format!("{what} dq"), &dq, &wdq, tol, seed);
    assert_close(&format!("{what} dk"), &dk, &wdk, tol, seed);
    assert_close(&format!("{what} dv"), &dv, &wdv, tol, seed);
    let bits = |x: &[T]| x.iter().map(|v| v.to_f64().to_bits()).collect::<Vec<_>>();
    let (dq2, dk2, dv2) = run(&b);
    assert!(
        bits(&dq) == bits(&dq2) && bits(&dk) == bits(&dk2) && bits(&dv) == bits(&dv2),
        "{what}: the backward differs between runs"
    );
}

/// dK/dV: one key tile's workgroup loops over 8 query heads × 9 query tiles, 17 barriers each
/// (1224 in one workgroup before the fix).
///
/// Each test here fails with the passes disabled (`MAX_BARRIERS_PER_PASS` set to 2^30, i.e.
/// the old single-pass kernels): NaN in dK, in O.
fn long_gqa_group() -> AttentionParams {
    AttentionParams::new(AttentionShape {
        head_dim_v: 121,
        ..AttentionShape::gqa(1, 8, 1, 131, 45, 82)
    })
}

/// Forward and dQ: one query tile's workgroup loops over 69 key tiles, 17 (forward) and 25
/// (dQ) barriers each (1173 and 1725 before the fix).
fn long_keys() -> AttentionParams {
    AttentionParams::new(AttentionShape::mha(1, 1, 19, 1100, 256))
}

#[test]
fn long_gqa_group_dense() {
    check::<f32>(long_gqa_group(), None);
    check::<f32>(long_gqa_group().with_causal(true), None);
}

#[test]
fn long_gqa_group_sparse() {
    // The full layout: every query block over the transposed layout, as long as dense.
    let p = long_gqa_group();
    check::<f32>(p, Some(&BlockLayout::dense(&p)));
}

#[test]
fn long_key_range_dense_and_sparse() {
    let p = long_keys();
    check::<f32>(p, None);
    let p = p.with_causal(true);
    check::<f16>(p, Some(&BlockLayout::causal(&p)));
}
