//! Direct checks of the CUDA kernels under the emulator against the suite's f64 oracles
//! (flashneck_cpu::oracle, written from SPEC §3/§4) with SPEC §0's tolerances, on random ragged
//! shapes chosen to reach every code path (vectorized and scalar GR-KAN tiles; warp-per-row,
//! block-per-row resident and chunked Gumbel rows). The conformance suite
//! (tests/conformance_emu.rs) checks the same ops on property-drawn shapes.

use flashneck_conformance::{
    assert_close, bits, fresh_rng, nan_buffer, random_input, relative_error,
};
use flashneck_core::{
    Backend, DType, Element, Error, GrKanOps, GrKanParams, GumbelOps, GumbelParams,
};
use flashneck_cpu::oracle::{grkan, gumbel};
use flashneck_cuda::CudaBackend;
use half::{bf16, f16};
use rand::{Rng, rngs::StdRng};

fn backend() -> CudaBackend {
    CudaBackend::emulated().unwrap()
}

/// SPEC §0: the tolerance of sums over many elements in f32 (GR-KAN's `da`, `db`, which are f32
/// whatever the input dtype).
const SUM_TOLERANCE: f64 = 1e-4;

// ---- GR-KAN ------------------------------------------------------------------------------------

fn grkan_case<T: Element>(b: &CudaBackend, rng: &mut StdRng, seed: u64, p: GrKanParams) {
    let (x, xf) = random_input::<T>(rng, p.x_len(), 1.0);
    let (dy, dyf) = random_input::<T>(rng, p.x_len(), 1.0);
    let (a, af) = random_input::<f32>(rng, p.a_len(), 0.5);
    let (mut bb, mut bf) = random_input::<f32>(rng, p.b_len(), 0.5);
    // Exercise sgn(±0) = +1 on one coefficient.
    if let Some(v) = bb.first_mut() {
        *v = -0.0;
        bf[0] = 0.0;
    }
    let y_ref = grkan::grkan_forward(&p, &xf, &af, &bf);
    let (dx_ref, da_ref, db_ref) = grkan::grkan_backward(&p, &xf, &af, &bf, &dyf);
    let what = format!("{} {p:?}", T::DTYPE);
    let tol = T::DTYPE.elementwise_tolerance();

    let xd = b.upload(&x).unwrap();
    let ad = b.upload(&a).unwrap();
    let bd = b.upload(&bb).unwrap();
    let dyd = b.upload(&dy).unwrap();
    let mut y = nan_buffer::<_, T>(b, p.x_len());
    b.grkan_forward(&p, &xd, &ad, &bd, &mut y).unwrap();
    assert_close(
        &format!("y {what}"),
        &b.download(&y).unwrap(),
        &y_ref,
        tol,
        seed,
    );

    let mut dx = nan_buffer::<_, T>(b, p.x_len());
    let mut da = nan_buffer::<_, f32>(b, p.a_len());
    let mut db = nan_buffer::<_, f32>(b, p.b_len());
    b.grkan_backward(&p, &xd, &ad, &bd, &dyd, &mut dx, &mut da, &mut db)
        .unwrap();
    assert_close(
        &format!("dx {what}"),
        &b.download(&dx).unwrap(),
        &dx_ref,
        tol,
        seed,
    );
    let da1 = b.download(&da).unwrap();
    let db1 = b.download(&db).unwrap();
    assert_close(&format!("da {what}"), &da1, &da_ref, SUM_TOLERANCE, seed);
    assert_close(&format!("db {what}"), &db1, &db_ref, SUM_TOLERANCE, seed);

    // Bitwise reproducible (NaN-poisoned again, so that an element the second run leaves
    // unwritten cannot match).
    let mut dx2 = nan_buffer::<_, T>(b, p.x_len());
    let mut da2 = nan_buffer::<_, f32>(b, p.a_len());
    let mut db2 = nan_buffer::<_, f32>(b, p.b_len());
    b.grkan_backward(&p, &xd, &ad, &bd, &dyd, &mut dx2, &mut da2, &mut db2)
        .unwrap();
    assert_eq!(b.download(&dx2).unwrap(), b.download(&dx).unwrap());
    assert_eq!(
        bits(&b.download(&da2).unwrap()),
        bits(&da1),
        "da not reproducible"
    );
    assert_eq!(bits(&b.download(&db2).unwrap()), bits(&db1));
}

fn grkan_all<T: Element>() {
    let b = backend();
    let (mut rng, seed) = fresh_rng();
    // Vectorized (width multiple of 8), scalar (odd width), many rows per tile, one row, degree
    // extremes.
    let cases = [
        GrKanParams::new(37, 48, 3),
        GrKanParams::new(23, 30, 5).with_degrees(3, 2),
        GrKanParams::new(1, 7, 1).with_degrees(7, 7),
        GrKanParams::new(130, 16, 2).with_degrees(0, 0),
        GrKanParams::new(2100, 8, 1).with_degrees(5, 4),
    ];
    for p in cases {
        grkan_case::<T>(&b, &mut rng, seed, p);
    }
}

#[test]
fn grkan_matches_reference_f32() {
    grkan_all::<f32>();
}
#[test]
fn grkan_matches_reference_f16() {
    grkan_all::<f16>();
}
#[test]
fn grkan_matches_reference_bf16() {
    grkan_all::<bf16>();
}

#[test]
fn grkan_zero_rows_gives_zero_gradients() {
    let b = backend();
    let p = GrKanParams::new(0, 8, 2);
    let x = b.alloc::<f32>(0).unwrap();
    let a = b.upload(&vec![1.0f32; p.a_len()]).unwrap();
    let bb = b.upload(&vec![1.0f32; p.b_len()]).unwrap();
    let mut dx = b.alloc::<f32>(0).unwrap();
    let mut da = nan_buffer::<_, f32>(&b, p.a_len());
    let mut db = nan_buffer::<_, f32>(&b, p.b_len());
    b.grkan_backward(&p, &x, &a, &bb, &x, &mut dx, &mut da, &mut db)
        .unwrap();
    assert!(b.download(&da).unwrap().iter().all(|&v| v == 0.0));
    assert!(b.download(&db).unwrap().iter().all(|&v| v == 0.0));
}

#[test]
fn bad_input_is_a_typed_error_before_launch() {
    let b = backend();
    let p = GrKanParams::new(4, 8, 3); // 8 % 3 != 0
    let x = b.alloc::<f32>(32).unwrap();
    let a = b.alloc::<f32>(18).unwrap();
    let bb = b.alloc::<f32>(12).unwrap();
    let mut y = b.alloc::<f32>(32).unwrap();
    assert!(matches!(
        b.grkan_forward(&p, &x, &a, &bb, &mut y),
        Err(Error::BadParameter {
            arg: "channels",
            ..
        })
    ));
    let p = GrKanParams::new(4, 8, 2);
    let mut y = b.alloc::<f32>(31).unwrap();
    let a = b.alloc::<f32>(12).unwrap();
    let bb = b.alloc::<f32>(8).unwrap();
    assert!(matches!(
        b.grkan_forward(&p, &x, &a, &bb, &mut y),
        Err(Error::ShapeMismatch { arg: "y", .. })
    ));
    let g = GumbelParams::new(2, 3, 0.0);
    let l = b.alloc::<f32>(6).unwrap();
    let mut y = b.alloc::<f32>(6).unwrap();
    assert!(matches!(
        b.gumbel_softmax_forward(&g, &l, &mut y, None),
        Err(Error::BadParameter { arg: "tau", .. })
    ));
    assert!(
        b.info()
            .supports(flashneck_core::OpKind::GrKanForward, DType::BF16)
    );
    assert!(
        b.info()
            .supports(flashneck_core::OpKind::AttentionForward, DType::F32)
    );
}

/// SPEC §3 puts no bound on `Q`: a denominator in `(2^126, 2^128)`, where the fast
/// `__fdividef` returns 0 (as the emulator does too), must still divide correctly.
#[test]
fn grkan_divides_correctly_for_huge_denominators() {
    let b = backend();
    let p = GrKanParams::new(3, 8, 1).with_degrees(0, 4);
    // P = 2^127; Q = 1 + |x|^4 spans 2^125 .. 2^128 over these x (0x1p31.75 ≈ 3.6e9).
    let xs: Vec<f32> = (0..p.x_len())
        .map(|i| 2f32.powf(31.25 + 0.03 * i as f32))
        .collect();
    let (x, xf): (Vec<f32>, Vec<f64>) = (xs.clone(), xs.iter().map(|&v| f64::from(v)).collect());
    let a = [2f32.powi(127)];
    let bb = [0.0f32, 0.0, 0.0, 1.0];
    let af = [f64::from(a[0])];
    let bf = [0.0, 0.0, 0.0, 1.0];
    let y_ref = grkan::grkan_forward(&p, &xf, &af, &bf);
    assert!(
        y_ref.iter().any(|&v| v > 0.5),
        "the case must reach Q > 2^126"
    );
    let dy = vec![1.0f32; p.x_len()];
    let dx_ref = grkan::grkan_backward(&p, &xf, &af, &bf, &vec![1.0; p.x_len()]).0;
    let (xd, ad, bd, dyd) = (
        b.upload(&x).unwrap(),
        b.upload(&a).unwrap(),
        b.upload(&bb).unwrap(),
        b.upload(&dy).unwrap(),
    );
    let mut y = nan_buffer::<_, f32>(&b, p.x_len());
    b.grkan_forward(&p, &xd, &ad, &bd, &mut y).unwrap();
    let tol = DType::F32.elementwise_tolerance();
    assert_close("y, huge Q", &b.download(&y).unwrap(), &y_ref, tol, 0);
    let mut dx = nan_buffer::<_, f32>(&b, p.x_len());
    let mut da = nan_buffer::<_, f32>(&b, 1);
    let mut db = nan_buffer::<_, f32>(&b, 4);
    b.grkan_backward(&p, &xd, &ad, &bd, &dyd, &mut dx, &mut da, &mut db)
        .unwrap();
    let (_, da_ref, db_ref) = grkan::grkan_backward(&p, &xf, &af, &bf, &vec![1.0; p.x_len()]);
    assert_close(
        "da, huge Q",
        &b.download(&da).unwrap(),
        &da_ref,
        SUM_TOLERANCE,
        0,
    );
    // db_4 = -Σ P |x|^4 / Q² ≈ -Σ y: of order 10.
    assert_close(
        "db, huge Q",
        &b.download(&db).unwrap(),
        &db_ref,
        SUM_TOLERANCE,
        0,
    );
    // dx = -P Q'/Q² ≈ -4 y / x is tiny: compare relative to its own magnitude.
    let got: Vec<f64> = b
        .download(&dx)
        .unwrap()
        .iter()
        .map(|&v| f64::from(v))
        .collect();
    for (i, (g, w)) in got.iter().zip(&dx_ref).enumerate() {
        assert!(
            (g - w).abs() <= 1e-5 * w.abs(),
            "dx, huge Q: element {i} is {g}, oracle {w}"
        );
    }
}

// ---- Gumbel-Softmax ----------------------------------------------------------------------------

fn gumbel_case<T: Element>(b: &CudaBackend, rng: &mut StdRng, seed: u64, rows: usize, k: usize) {
    let p = GumbelParams::new(rows, k, 0.5 + rng.r#gen::<f32>())
        .with_seed(rng.r#gen(), rng.gen_range(0..1u64 << 40));
    let (logits, lf) = random_input::<T>(rng, p.len(), 2.0);
    let (_, soft_ref) = gumbel::gumbel_forward(&p, &lf);
    let what = format!("{} rows {rows} K {k}", T::DTYPE);
    let tol = T::DTYPE.elementwise_tolerance();
    let ld = b.upload(&logits).unwrap();

    // Soft: y in T, y_soft in f32.
    let mut y = nan_buffer::<_, T>(b, p.len());
    let mut ys = nan_buffer::<_, f32>(b, p.len());
    b.gumbel_softmax_forward(&p, &ld, &mut y, Some(&mut ys))
        .unwrap();
    assert_close(
        &format!("y soft {what}"),
        &b.download(&y).unwrap(),
        &soft_ref,
        tol,
        seed,
    );
    let ys_host = b.download(&ys).unwrap();
    let f32_tol = DType::F32.elementwise_tolerance();
    assert_close(
        &format!("y_soft {what}"),
        &ys_host,
        &soft_ref,
        f32_tol,
        seed,
    );

    // Hard: a one-hot whose class is the oracle's argmax, or one whose soft value is the maximum
    // to within f32 rounding (a near-tie the f32 noise may order either way).
    let ph = p.with_hard(true);
    let mut yh = nan_buffer::<_, T>(b, p.len());
    b.gumbel_softmax_forward(&ph, &ld, &mut yh, None).unwrap();
    let yh = b.download(&yh).unwrap();
    for r in 0..rows {
        let row: Vec<f32> = yh[r * k..(r + 1) * k].iter().map(|v| v.to_f32()).collect();
        let soft = &soft_ref[r * k..(r + 1) * k];
        let ones: Vec<usize> = (0..k).filter(|&c| row[c] == 1.0).collect();
        assert_eq!(
            ones.len(),
            1,
            "hard {what}: row {r} has ones at {ones:?}; FLASHNECK_SEED={seed}"
        );
        assert!(row.iter().all(|&v| v == 0.0 || v == 1.0));
        let best = (0..k).fold(0, |m, c| if soft[c] > soft[m] { c } else { m });
        let got = ones[0];
        let window = 4.0 * f64::from(f32::EPSILON) * soft[best];
        assert!(
            (soft[got] - soft[best]).abs() <= window,
            "hard {what}: row {r} argmax {got} (soft {}), oracle {best} (soft {}); \
             FLASHNECK_SEED={seed}",
            soft[got],
            soft[best]
        );
    }

    // Backward from the f32 y_soft the forward saved.
    let (dy, dyf) = random_input::<T>(rng, p.len(), 1.0);
    let ysf: Vec<f64> = ys_host.iter().map(|&v| f64::from(v)).collect();
    let want = gumbel::gumbel_backward(&p, &ysf, &dyf);
    let dyd = b.upload(&dy).unwrap();
    let mut dl = nan_buffer::<_, T>(b, p.len());
    b.gumbel_softmax_backward(&p, &ys, &dyd, &mut dl).unwrap();
    assert_close(
        &format!("dlogits {what}"),
        &b.download(&dl).unwrap(),
        &want,
        tol,
        seed,
    );
}

fn gumbel_all<T: Element>() {
    let b = backend();
    let (mut rng, seed) = fresh_rng();
    // Warp per row (K <= 1020), block per row resident (K <= 4093) and chunked; ragged K so
    // rows start mid-quad.
    for (rows, k) in [(9, 1), (7, 37), (5, 1017), (3, 1203), (2, 4093), (2, 5001)] {
        gumbel_case::<T>(&b, &mut rng, seed, rows, k);
    }
}

#[test]
fn gumbel_matches_reference_f32() {
    gumbel_all::<f32>();
}
#[test]
fn gumbel_matches_reference_f16() {
    gumbel_all::<f16>();
}
#[test]
fn gumbel_matches_reference_bf16() {
    gumbel_all::<bf16>();
}

#[test]
fn gumbel_noise_matches_the_oracle() {
    let b = backend();
    for (seed, offset, n) in [
        (0u64, 0u64, 1usize),
        (7, 3, 1031),
        (u64::MAX, 1 << 40, 4096),
    ] {
        let mut out = nan_buffer::<_, f32>(&b, n);
        b.gumbel_noise(seed, offset, &mut out).unwrap();
        let got: Vec<f64> = b
            .download(&out)
            .unwrap()
            .iter()
            .map(|&v| f64::from(v))
            .collect();
        let want = gumbel::gumbel_noise_f64(seed, offset, n);
        // Per element, so that small noise values are held to the tolerance too.
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let err = relative_error(&[*g], &[*w]).unwrap();
            assert!(
                err <= 2e-5,
                "noise {i} (seed {seed}, offset {offset}): {g} vs {w}"
            );
        }
    }
}

// ---- Attention forward and block_topk (cuda-fwd) -----------------------------------------------

/// Shapes the conformance suite's small config does not reach: one query row against many keys
/// (causal and not), `Lk` far beyond `Lq`, a sparse epilogue on rows that see no key, head dims
/// the CUDA kernels do not take, and `block_topk` on random (inexact) inputs against the CPU.
mod attention_forward {
    use super::{backend, fresh_rng, random_input};
    use flashneck_conformance::{assert_close, nan_buffer};
    use flashneck_core::{
        AttentionOps, AttentionParams, AttentionShape, Backend, BlockLayout, DType, Element, Error,
        SparseAttentionOps, SparseEpilogue, TopkParams,
    };
    use flashneck_cpu::CpuBackend;
    use flashneck_cpu::oracle::attention as oracle;
    use flashneck_cuda::CudaBackend;
    use half::{bf16, f16};
    use rand::{Rng, rngs::StdRng};

    /// Forward (dense, or sparse with the epilogue) against the f64 oracle; returns `(o, lse)`.
    fn check<T: Element>(
        b: &CudaBackend,
        rng: &mut StdRng,
        seed: u64,
        p: &AttentionParams,
        layout: Option<&BlockLayout>,
        epilogue: bool,
    ) -> (Vec<T>, Vec<f32>) {
        let s = &p.shape;
        let (q, qf) = random_input::<T>(rng, s.q_len(), 1.0);
        let (k, kf) = random_input::<T>(rng, s.k_len(), 1.0);
        let (v, vf) = random_input::<T>(rng, s.v_len(), 1.0);
        let rho: Vec<f32> = (0..s.lse_len()).map(|_| rng.gen_range(0.1..1.5)).collect();
        let (res, resf) = random_input::<T>(rng, s.o_len(), 1.0);
        let (qd, kd, vd) = (
            b.upload(&q).unwrap(),
            b.upload(&k).unwrap(),
            b.upload(&v).unwrap(),
        );
        let mut o = nan_buffer::<_, T>(b, s.o_len());
        let mut lse = nan_buffer::<_, f32>(b, s.lse_len());
        let (rho_d, res_d) = (b.upload(&rho).unwrap(), b.upload(&res).unwrap());
        match layout {
            None => b
                .attention_forward(p, &qd, &kd, &vd, &mut o, &mut lse)
                .unwrap(),
            Some(l) => {
                let dl = b.upload_layout(l).unwrap();
                let e = SparseEpilogue {
                    row_scale: epilogue.then_some(&rho_d),
                    residual: epilogue.then_some(&res_d),
                };
                b.sparse_attention_forward(p, &dl, &qd, &kd, &vd, e, &mut o, &mut lse)
                    .unwrap()
            }
        }
        let rho64: Vec<f64> = rho.iter().map(|&r| r as f64).collect();
        let (o_ref, lse_ref) = oracle::attention_forward(
            p,
            layout,
            &qf,
            &kf,
            &vf,
            epilogue.then_some(&rho64[..]),
            epilogue.then_some(&resf[..]),
        );
        let (o, lse) = (b.download(&o).unwrap(), b.download(&lse).unwrap());
        let tag = format!(
            "{} {p:?} sparse={} epilogue={epilogue}",
            T::DTYPE,
            layout.is_some()
        );
        assert_close(
            &format!("o {tag}"),
            &o,
            &o_ref,
            T::DTYPE.reduction_tolerance(),
            seed,
        );
        assert_close(
            &format!("lse {tag}"),
            &lse,
            &lse_ref,
            DType::F32.reduction_tolerance(),
            seed,
        );
        (o, lse)
    }

    fn long_keys<T: Element>() {
        let b = backend();
        let (mut rng, seed) = fresh_rng();
        for d in [64, 128] {
            for (lq, lk, causal) in [(1, 700, false), (1, 700, true), (3, 1000, true)] {
                let p = AttentionParams::new(AttentionShape::gqa(1, 2, 1, lq, lk, d))
                    .with_causal(causal);
                check::<T>(&b, &mut rng, seed, &p, None, false);
            }
        }
    }

    #[test]
    fn one_query_row_and_many_keys_f32() {
        long_keys::<f32>();
    }
    #[test]
    fn one_query_row_and_many_keys_f16() {
        long_keys::<f16>();
    }
    #[test]
    fn one_query_row_and_many_keys_bf16() {
        long_keys::<bf16>();
    }

    /// Lq > Lk causal with the full epilogue: rows that see no key give `o = R` and
    /// `lse = −inf`; the layout also keeps blocks whose keys are all causally hidden.
    fn epilogue_on_empty_rows<T: Element>() {
        let b = backend();
        let (mut rng, seed) = fresh_rng();
        for d in [64, 128] {
            let p =
                AttentionParams::new(AttentionShape::gqa(1, 2, 1, 150, 70, d)).with_causal(true);
            let s = &p.shape;
            let lists: Vec<Vec<u32>> = (0..s.heads_q * s.q_blocks())
                .map(|r| if r % 3 == 1 { vec![1] } else { vec![0, 1] })
                .collect();
            let layout =
                BlockLayout::from_lists(1, s.heads_q, s.q_blocks(), s.k_blocks(), &lists).unwrap();
            let (_, lse) = check::<T>(&b, &mut rng, seed, &p, Some(&layout), true);
            // Row 0 sees no key (0 > 0 + 70 − 150): lse = −inf, never NaN.
            assert_eq!(lse[0], f32::NEG_INFINITY);
            assert!(lse.iter().all(|v| !v.is_nan()));
        }
    }

    #[test]
    fn sparse_epilogue_on_rows_without_keys() {
        epilogue_on_empty_rows::<f32>();
        epilogue_on_empty_rows::<f16>();
        epilogue_on_empty_rows::<bf16>();
    }

    /// Head dims without a kernel are `Unsupported`, naming the head dims, before any launch
    /// (outputs keep their contents).
    #[test]
    fn other_head_dims_are_unsupported() {
        let b = backend();
        for (d, dv) in [(32, 32), (96, 96), (64, 128), (256, 256)] {
            let mut shape = AttentionShape::mha(1, 2, 70, 65, d);
            shape.head_dim_v = dv;
            let p = AttentionParams::new(shape);
            let s = &p.shape;
            let q = b.alloc::<f32>(s.q_len()).unwrap();
            let k = b.alloc::<f32>(s.k_len()).unwrap();
            let v = b.alloc::<f32>(s.v_len()).unwrap();
            let mut o = b.upload(&vec![7.0f32; s.o_len()]).unwrap();
            let mut lse = b.upload(&vec![7.0f32; s.lse_len()]).unwrap();
            let dense = b.attention_forward(&p, &q, &k, &v, &mut o, &mut lse);
            let dl = b.upload_layout(&BlockLayout::dense(&p)).unwrap();
            let sparse = b.sparse_attention_forward(
                &p,
                &dl,
                &q,
                &k,
                &v,
                SparseEpilogue::none(),
                &mut o,
                &mut lse,
            );
            for r in [dense, sparse] {
                match r {
                    Err(Error::Unsupported { ref what, .. }) => {
                        assert!(
                            what.contains("head_dim") && what.contains("[64, 128]"),
                            "{what}"
                        )
                    }
                    other => panic!("D = {d}, Dv = {dv}: expected Unsupported, got {other:?}"),
                }
            }
            assert!(b.download(&o).unwrap().iter().all(|&x| x == 7.0));
            assert!(b.download(&lse).unwrap().iter().all(|&x| x == 7.0));
        }
    }

    /// `block_topk` takes any head dim and, on random inputs (inexact pooled scores), gives
    /// exactly the CPU backend's layout.
    #[test]
    fn block_topk_equals_the_cpu_on_random_inputs() {
        let b = backend();
        let cpu = CpuBackend::new();
        let (mut rng, seed) = fresh_rng();
        for (shape, causal, topk) in [
            (AttentionShape::gqa(2, 4, 2, 300, 520, 24), true, (2, 1, 1)),
            (AttentionShape::gqa(1, 2, 1, 640, 200, 64), true, (1, 1, 2)),
            (AttentionShape::mha(1, 3, 130, 2200, 40), false, (5, 2, 0)),
        ] {
            let p = AttentionParams::new(shape).with_causal(causal);
            let topk = TopkParams {
                keep: topk.0,
                sink: topk.1,
                local: topk.2,
            };
            let (q, _) = random_input::<bf16>(&mut rng, shape.q_len(), 1.0);
            let (k, _) = random_input::<bf16>(&mut rng, shape.k_len(), 1.0);
            let got = b
                .block_topk(&p, &topk, &b.upload(&q).unwrap(), &b.upload(&k).unwrap())
                .unwrap()
                .into_host();
            let want = cpu
                .block_topk(
                    &p,
                    &topk,
                    &cpu.upload(&q).unwrap(),
                    &cpu.upload(&k).unwrap(),
                )
                .unwrap()
                .into_host();
            assert_eq!(
                got, want,
                "{p:?} {topk:?}; replay with FLASHNECK_SEED={seed}"
            );
        }
    }
}
