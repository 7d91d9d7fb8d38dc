//! Direct checks of the CUDA kernels under the emulator against f64 references written here from
//! SPEC §3/§4, on random ragged shapes that reach every code path (vectorized and scalar GR-KAN
//! tiles; warp-per-row, block-per-row resident and chunked Gumbel rows). The conformance suite
//! (tests/conformance_emu.rs) checks the same ops against the shared oracles.

use flashneck_core::{
    Backend, DType, Element, Error, GrKanOps, GrKanParams, GumbelOps, GumbelParams, philox,
};
use flashneck_cuda::CudaBackend;
use half::{bf16, f16};
use rand::{Rng, SeedableRng, rngs::StdRng};

fn backend() -> CudaBackend {
    CudaBackend::emulated().unwrap()
}

fn rng() -> (StdRng, u64) {
    let seed = std::env::var("FLASHNECK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().r#gen());
    (StdRng::seed_from_u64(seed), seed)
}

/// Random values rounded to `T`, with their f64 copies.
fn random<T: Element>(rng: &mut StdRng, n: usize, scale: f32) -> (Vec<T>, Vec<f64>) {
    let v: Vec<T> = (0..n)
        .map(|_| T::from_f32((rng.r#gen::<f32>() * 2.0 - 1.0) * scale))
        .collect();
    let f = v.iter().map(|x| x.to_f64()).collect();
    (v, f)
}

/// `max|got − want| / max(1, max|want|)`, failing on any non-finite output.
fn check(what: &str, got: &[f64], want: &[f64], tol: f64, seed: u64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    let mut worst = (0.0f64, 0usize);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            g.is_finite(),
            "{what}: element {i} is {g} (want {w}); FLASHNECK_SEED={seed}"
        );
        let e = (g - w).abs() / scale;
        if e > worst.0 {
            worst = (e, i);
        }
    }
    assert!(
        worst.0 <= tol,
        "{what}: error {:.3e} > {tol:.1e} at {} (got {}, want {}); FLASHNECK_SEED={seed}",
        worst.0,
        worst.1,
        got[worst.1],
        want[worst.1]
    );
}

fn f64s<T: Element>(v: &[T]) -> Vec<f64> {
    v.iter().map(|x| x.to_f64()).collect()
}

// ---- GR-KAN ------------------------------------------------------------------------------------

fn sgn(v: f64) -> f64 {
    if v < 0.0 { -1.0 } else { 1.0 }
}

/// f64 reference of SPEC §3: (y, dx, da, db).
fn grkan_ref(
    p: &GrKanParams,
    x: &[f64],
    a: &[f64],
    b: &[f64],
    dy: &[f64],
) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
    let (m, n, w) = (p.num_degree, p.den_degree, p.group_width());
    let mut y = vec![0.0; x.len()];
    let mut dx = vec![0.0; x.len()];
    let mut da = vec![0.0; p.a_len()];
    let mut db = vec![0.0; p.b_len()];
    for (i, &xv) in x.iter().enumerate() {
        let g = (i % p.channels) / w;
        let ga = &a[g * (m + 1)..(g + 1) * (m + 1)];
        let gb = &b[g * n..(g + 1) * n];
        let pv: f64 = (0..=m).map(|k| ga[k] * xv.powi(k as i32)).sum();
        let dp: f64 = (1..=m)
            .map(|k| k as f64 * ga[k] * xv.powi(k as i32 - 1))
            .sum();
        let q = 1.0
            + (1..=n)
                .map(|j| gb[j - 1].abs() * xv.abs().powi(j as i32))
                .sum::<f64>();
        let dq = sgn(xv)
            * (1..=n)
                .map(|j| j as f64 * gb[j - 1].abs() * xv.abs().powi(j as i32 - 1))
                .sum::<f64>();
        y[i] = pv / q;
        dx[i] = dy[i] * (dp / q - pv * dq / (q * q));
        for k in 0..=m {
            da[g * (m + 1) + k] += dy[i] * xv.powi(k as i32) / q;
        }
        for j in 1..=n {
            db[g * n + j - 1] += -dy[i] * pv / (q * q) * sgn(gb[j - 1]) * xv.abs().powi(j as i32);
        }
    }
    (y, dx, da, db)
}

fn grkan_case<T: Element>(b: &CudaBackend, rng: &mut StdRng, seed: u64, p: GrKanParams) {
    let (x, xf) = random::<T>(rng, p.x_len(), 2.0);
    let (dy, dyf) = random::<T>(rng, p.x_len(), 1.0);
    let (a, af) = random::<f32>(rng, p.a_len(), 1.0);
    let (bb, mut bf) = random::<f32>(rng, p.b_len(), 1.0);
    // Exercise sgn(±0) = +1 on one coefficient.
    let mut bb = bb;
    if let Some(v) = bb.first_mut() {
        *v = -0.0;
        bf[0] = 0.0;
    }
    let (y_ref, dx_ref, da_ref, db_ref) = grkan_ref(&p, &xf, &af, &bf, &dyf);
    let what = format!("{} {p:?}", T::DTYPE);

    let xd = b.upload(&x).unwrap();
    let ad = b.upload(&a).unwrap();
    let bd = b.upload(&bb).unwrap();
    let dyd = b.upload(&dy).unwrap();
    let mut y = b.upload(&vec![T::from_f32(f32::NAN); p.x_len()]).unwrap();
    b.grkan_forward(&p, &xd, &ad, &bd, &mut y).unwrap();
    let tol = T::DTYPE.elementwise_tolerance();
    check(
        &format!("y {what}"),
        &f64s(&b.download(&y).unwrap()),
        &y_ref,
        tol,
        seed,
    );

    let mut dx = b.upload(&vec![T::from_f32(f32::NAN); p.x_len()]).unwrap();
    let mut da = b.upload(&vec![f32::NAN; p.a_len()]).unwrap();
    let mut db = b.upload(&vec![f32::NAN; p.b_len()]).unwrap();
    b.grkan_backward(&p, &xd, &ad, &bd, &dyd, &mut dx, &mut da, &mut db)
        .unwrap();
    // dx is elementwise but with more roundings than y (in the input dtype): allow 4x.
    check(
        &format!("dx {what}"),
        &f64s(&b.download(&dx).unwrap()),
        &dx_ref,
        4.0 * tol,
        seed,
    );
    // da/db sum thousands of terms computed from rounded inputs: scale the tolerance by the
    // reduction tolerance, relative to the sums' magnitude.
    let rtol = T::DTYPE.reduction_tolerance().max(1e-4);
    let da1 = b.download(&da).unwrap();
    let db1 = b.download(&db).unwrap();
    check(&format!("da {what}"), &f64s(&da1), &da_ref, rtol, seed);
    check(&format!("db {what}"), &f64s(&db1), &db_ref, rtol, seed);

    // Bitwise reproducible.
    let mut dx2 = b.alloc::<T>(p.x_len()).unwrap();
    let mut da2 = b.alloc::<f32>(p.a_len()).unwrap();
    let mut db2 = b.alloc::<f32>(p.b_len()).unwrap();
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

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn grkan_all<T: Element>() {
    let b = backend();
    let (mut rng, seed) = rng();
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
    let mut da = b.upload(&vec![f32::NAN; p.a_len()]).unwrap();
    let mut db = b.upload(&vec![f32::NAN; p.b_len()]).unwrap();
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
        !b.info()
            .supports(flashneck_core::OpKind::AttentionForward, DType::F32)
    );
}

// ---- Gumbel-Softmax ----------------------------------------------------------------------------

/// f64 Gumbel noise of SPEC §4 from the raw Philox word.
fn noise_ref(seed: u64, offset: u64, n: u64) -> f64 {
    let x = philox::gumbel_word(seed, offset, n);
    let u = ((x >> 9) as f64 + 0.5) * 2f64.powi(-23);
    let e = -(-(1.0 - u)).ln_1p();
    -e.ln()
}

/// (y_soft, argmax per row) in f64.
fn gumbel_ref(p: &GumbelParams, logits: &[f64]) -> (Vec<f64>, Vec<usize>) {
    let k = p.classes;
    let mut ys = vec![0.0; logits.len()];
    let mut arg = vec![0; p.rows];
    for r in 0..p.rows {
        let z: Vec<f64> = (0..k)
            .map(|c| {
                let n = (r * k + c) as u64;
                (logits[r * k + c] + noise_ref(p.seed, p.offset, n)) / p.tau as f64
            })
            .collect();
        let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let s: f64 = z.iter().map(|v| (v - m).exp()).sum();
        for c in 0..k {
            ys[r * k + c] = (z[c] - m).exp() / s;
        }
        arg[r] = (0..k).fold(0, |best, c| if z[c] > z[best] { c } else { best });
    }
    (ys, arg)
}

fn gumbel_case<T: Element>(b: &CudaBackend, rng: &mut StdRng, seed: u64, rows: usize, k: usize) {
    let p = GumbelParams::new(rows, k, 0.5 + rng.r#gen::<f32>())
        .with_seed(rng.r#gen(), rng.gen_range(0..1u64 << 40));
    let (logits, lf) = random::<T>(rng, p.len(), 3.0);
    let (ys_ref, arg) = gumbel_ref(&p, &lf);
    let what = format!("{} rows {rows} K {k}", T::DTYPE);
    let tol = T::DTYPE.elementwise_tolerance();
    let ld = b.upload(&logits).unwrap();

    // Soft: y in T, y_soft in f32.
    let mut y = b.upload(&vec![T::from_f32(f32::NAN); p.len()]).unwrap();
    let mut ys = b.upload(&vec![f32::NAN; p.len()]).unwrap();
    b.gumbel_softmax_forward(&p, &ld, &mut y, Some(&mut ys))
        .unwrap();
    check(
        &format!("y soft {what}"),
        &f64s(&b.download(&y).unwrap()),
        &ys_ref,
        tol,
        seed,
    );
    let ys_host = b.download(&ys).unwrap();
    check(
        &format!("y_soft {what}"),
        &f64s(&ys_host),
        &ys_ref,
        2e-5,
        seed,
    );

    // Hard: one-hot of the argmax (the reference's argmax, unless a near-tie).
    let ph = p.with_hard(true);
    let mut yh = b.upload(&vec![T::from_f32(f32::NAN); p.len()]).unwrap();
    b.gumbel_softmax_forward(&ph, &ld, &mut yh, None).unwrap();
    let yh = f64s(&b.download(&yh).unwrap());
    for r in 0..rows {
        let row = &yh[r * k..(r + 1) * k];
        let ones: Vec<usize> = (0..k).filter(|&c| row[c] == 1.0).collect();
        assert_eq!(
            ones.len(),
            1,
            "hard {what}: row {r} has ones at {ones:?}; FLASHNECK_SEED={seed}"
        );
        assert!(row.iter().all(|&v| v == 0.0 || v == 1.0));
        let (got, want) = (ones[0], arg[r]);
        assert!(
            got == want || (ys_ref[r * k + got] - ys_ref[r * k + want]).abs() < 1e-5,
            "hard {what}: row {r} argmax {got}, reference {want}; FLASHNECK_SEED={seed}"
        );
    }

    // Backward from the f32 y_soft.
    let (dy, dyf) = random::<T>(rng, p.len(), 1.0);
    let ysf: Vec<f64> = ys_host.iter().map(|&v| v as f64).collect();
    let mut want = vec![0.0; p.len()];
    for r in 0..rows {
        let dot: f64 = (r * k..(r + 1) * k).map(|i| ysf[i] * dyf[i]).sum();
        for i in r * k..(r + 1) * k {
            want[i] = ysf[i] * (dyf[i] - dot) / p.tau as f64;
        }
    }
    let dyd = b.upload(&dy).unwrap();
    let mut dl = b.upload(&vec![T::from_f32(f32::NAN); p.len()]).unwrap();
    b.gumbel_softmax_backward(&p, &ys, &dyd, &mut dl).unwrap();
    check(
        &format!("dlogits {what}"),
        &f64s(&b.download(&dl).unwrap()),
        &want,
        tol,
        seed,
    );
}

fn gumbel_all<T: Element>() {
    let b = backend();
    let (mut rng, seed) = rng();
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
fn gumbel_noise_matches_core_philox() {
    let b = backend();
    for (seed, offset, n) in [
        (0u64, 0u64, 1usize),
        (7, 3, 1031),
        (u64::MAX, 1 << 40, 4096),
    ] {
        let mut out = b.upload(&vec![f32::NAN; n]).unwrap();
        b.gumbel_noise(seed, offset, &mut out).unwrap();
        let got = b.download(&out).unwrap();
        for (i, g) in got.iter().enumerate() {
            let want = philox::gumbel_noise_at(seed, offset, i as u64);
            assert!(
                (*g as f64 - want as f64).abs() <= 2e-5 * want.abs().max(1.0) as f64,
                "noise {i}: {g} vs {want}"
            );
        }
    }
}
