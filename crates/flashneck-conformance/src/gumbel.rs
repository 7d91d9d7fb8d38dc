//! Conformance checks for Gumbel-Softmax (SPEC §4): the noise (Philox known answers, agreement
//! with the core's Philox stream and the f64 oracle, mean and variance), the forward in soft
//! and hard mode against the f64 oracle over random shapes, temperatures, seeds and offsets for
//! every dtype, the straight-through backward against the oracle and the oracle against finite
//! differences, edge cases (`K = 1`, large `K`, one row, no rows, extreme logits) and
//! determinism.

use crate::{Config, assert_close, assert_close_f64, fresh_rng, nan_buffer, ran, random_input};
use crate::{bits, property};
use flashneck_core::philox::{gumbel_from_word, gumbel_noise_at};
use flashneck_core::{DType, Element, GumbelParams, Kernels, OpKind};
use flashneck_cpu::oracle::gumbel as oracle;
use proptest::prelude::*;
use rand::{Rng, SeedableRng, rngs::StdRng};

/// Euler–Mascheroni: the mean of the standard Gumbel distribution.
const EULER_GAMMA: f64 = 0.577_215_664_901_532_9;

/// The backend's noise for flat elements `0 .. n`; `None` when unsupported.
fn backend_noise<B: Kernels>(b: &B, seed: u64, offset: u64, n: usize) -> Option<Vec<f32>> {
    let mut out = nan_buffer::<B, f32>(b, n);
    let r = b.gumbel_noise(seed, offset, &mut out);
    ran(b, OpKind::GumbelNoise, DType::F32, r)?;
    Some(b.download(&out).unwrap())
}

/// The forward on the backend: `(y, y_soft)`; `None` when unsupported.
fn forward<T: Element, B: Kernels>(
    b: &B,
    p: &GumbelParams,
    logits: &[T],
) -> Option<(Vec<T>, Vec<f32>)> {
    let l = b.upload(logits).unwrap();
    let mut y = nan_buffer::<B, T>(b, p.len());
    let mut ys = nan_buffer::<B, f32>(b, p.len());
    let r = b.gumbel_softmax_forward(p, &l, &mut y, Some(&mut ys));
    ran(b, OpKind::GumbelForward, T::DTYPE, r)?;
    Some((b.download(&y).unwrap(), b.download(&ys).unwrap()))
}

/// The backward on the backend; `None` when unsupported.
fn backward<T: Element, B: Kernels>(
    b: &B,
    p: &GumbelParams,
    y_soft: &[f32],
    dy: &[T],
) -> Option<Vec<T>> {
    let ys = b.upload(y_soft).unwrap();
    let d = b.upload(dy).unwrap();
    let mut out = nan_buffer::<B, T>(b, p.len());
    let r = b.gumbel_softmax_backward(p, &ys, &d, &mut out);
    ran(b, OpKind::GumbelBackward, T::DTYPE, r)?;
    Some(b.download(&out).unwrap())
}

/// Check a hard forward row by row: `y` must be exactly a one-hot. Where the backend's `k`
/// differs from the oracle's argmax, accept it only as a tie within f32 rounding: the gap
/// `z_best − z_got = ln(soft_best / soft_got)` must be below a few ulp of the row's largest
/// `|z| = |logit + g| / tau` (with `|g| < 17` for SPEC's uniform range).
fn check_hard<T: Element>(
    what: &str,
    p: &GumbelParams,
    y: &[T],
    logits: &[f64],
    want_soft: &[f64],
    seed: u64,
) {
    let k = p.classes;
    for r in 0..p.rows {
        let row = &y[r * k..(r + 1) * k];
        let ones: Vec<usize> = (0..k).filter(|&i| row[i].to_f32() == 1.0).collect();
        let zeros = row.iter().filter(|v| v.to_f32() == 0.0).count();
        assert!(
            ones.len() == 1 && zeros == k - 1,
            "{what}: row {r} is not a one-hot: {:?}; replay with FLASHNECK_SEED={seed}",
            &row[..k.min(16)]
        );
        let soft = &want_soft[r * k..(r + 1) * k];
        let mut best = 0;
        for i in 0..k {
            if soft[i] > soft[best] {
                best = i;
            }
        }
        let got = ones[0];
        let max_logit = logits[r * k..(r + 1) * k]
            .iter()
            .fold(0.0f64, |m, l| m.max(l.abs()));
        let z_scale = 1.0 + (max_logit + 17.0) / p.tau as f64;
        let window = 8.0 * f32::EPSILON as f64 * z_scale;
        let gap = (soft[best] / soft[got]).ln();
        assert!(
            got == best || gap <= window,
            "{what}: row {r} picks k = {got} (oracle soft {}), oracle argmax k = {best} (soft {}): \
             z gap {gap:.3e} > rounding window {window:.3e}; replay with FLASHNECK_SEED={seed}",
            soft[got],
            soft[best]
        );
    }
}

/// Run the forward on random logits and check `y` and `y_soft` against the oracle.
fn check_forward<T: Element>(b: &impl Kernels, p: &GumbelParams, logits: &[T], seed: u64) {
    let Some((y, ys)) = forward(b, p, logits) else {
        return;
    };
    let l64: Vec<f64> = logits.iter().map(|v| v.to_f64()).collect();
    let (want_y, want_soft) = oracle::gumbel_forward(p, &l64);
    let what = format!("gumbel_forward {} {p:?}", T::DTYPE);
    // `y_soft` is f32 from inputs the oracle sees too: f32 elementwise tolerance.
    assert_close(
        &format!("{what} y_soft"),
        &ys,
        &want_soft,
        DType::F32.elementwise_tolerance(),
        seed,
    );
    if p.hard {
        check_hard(&what, p, &y, &l64, &want_soft, seed);
    } else {
        assert_close(
            &format!("{what} y"),
            &y,
            &want_y,
            T::DTYPE.elementwise_tolerance(),
            seed,
        );
        // Without `y_soft` a backend may take another path (no f32 copy to write): check it too.
        let l = b.upload(logits).unwrap();
        let mut y = nan_buffer::<_, T>(b, p.len());
        b.gumbel_softmax_forward(p, &l, &mut y, None)
            .unwrap_or_else(|e| panic!("{what} without y_soft: {e}"));
        assert_close(
            &format!("{what} y (no y_soft)"),
            &b.download(&y).unwrap(),
            &want_y,
            T::DTYPE.elementwise_tolerance(),
            seed,
        );
    }
}

/// Random `(rows, K, tau, hard, seed, offset, input seed)`: `K` log-uniform in
/// `1..=max_classes`, rows ragged (bounded so that a case stays under ~60k elements), `tau`
/// log-uniform in `[0.05, 10]`.
fn params_strategy(cfg: &Config) -> impl Strategy<Value = (GumbelParams, u64)> + use<> {
    let (max_rows, max_k) = (cfg.max_rows, cfg.max_classes);
    (
        0.0..=(max_k as f64).ln(),
        0.0f64..=1.0,
        (0.05f64).ln()..=(10.0f64).ln(),
        any::<bool>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(move |(lk, fr, ltau, hard, seed, offset, input)| {
            let k = (lk.exp().round() as usize).clamp(1, max_k);
            let rows_cap = (60_000 / k).clamp(1, max_rows);
            let rows = 1 + (fr * (rows_cap - 1) as f64) as usize;
            let p = GumbelParams::new(rows, k, ltau.exp() as f32)
                .with_seed(seed, offset)
                .with_hard(hard);
            (p, input)
        })
}

fn forward_property<T: Element>(b: &impl Kernels, cfg: Config) {
    let what = format!("gumbel forward property {}", T::DTYPE);
    property(cfg, &what, params_strategy(&cfg), |(p, input), _| {
        let (logits, _) = random_input::<T>(&mut StdRng::seed_from_u64(input), p.len(), 2.0);
        check_forward(b, &p, &logits, input);
    });
}

/// Random rows of `y_soft` (a softmax of random values, rounded to f32) and `dy`.
fn random_soft(p: &GumbelParams, rng: &mut impl Rng) -> (Vec<f32>, Vec<f64>) {
    let k = p.classes;
    let mut ys = vec![0.0f32; p.len()];
    for row in ys.chunks_mut(k) {
        let z: Vec<f64> = (0..k).map(|_| rng.gen_range(-3.0..3.0)).collect();
        let s: f64 = z.iter().map(|v| v.exp()).sum();
        for (o, v) in row.iter_mut().zip(&z) {
            *o = (v.exp() / s) as f32;
        }
    }
    let f = ys.iter().map(|&v| v as f64).collect();
    (ys, f)
}

fn backward_property<T: Element>(b: &impl Kernels, cfg: Config) {
    let what = format!("gumbel backward property {}", T::DTYPE);
    property(cfg, &what, params_strategy(&cfg), |(p, input), _| {
        let mut rng = StdRng::seed_from_u64(input);
        let (ys, ys64) = random_soft(&p, &mut rng);
        let (dy, dy64) = random_input::<T>(&mut rng, p.len(), 1.0);
        let Some(got) = backward(b, &p, &ys, &dy) else {
            return;
        };
        let want = oracle::gumbel_backward(&p, &ys64, &dy64);
        let what = format!("gumbel_backward {} {p:?}", T::DTYPE);
        assert_close(&what, &got, &want, T::DTYPE.elementwise_tolerance(), input);
    });
}

/// Forward (soft and hard) vs the oracle over random shapes, `tau`, seeds and offsets.
pub fn forward_matches_oracle<B: Kernels>(b: &B, cfg: Config) {
    crate::for_each_dtype!(forward_property, b, cfg);
}

/// Straight-through backward vs the oracle over random shapes and `tau`.
pub fn backward_matches_oracle<B: Kernels>(b: &B, cfg: Config) {
    crate::for_each_dtype!(backward_property, b, cfg);
}

/// The oracle's backward is the gradient of `L = Σ dy · y_soft` with the noise fixed: check it
/// against central finite differences of the oracle's soft forward.
pub fn oracle_backward_matches_finite_differences() {
    let (mut rng, seed) = fresh_rng();
    for (rows, k, tau) in [(3, 5, 1.0f32), (2, 17, 0.3), (1, 1, 2.0), (2, 8, 7.5)] {
        let p = GumbelParams::new(rows, k, tau).with_seed(rng.r#gen(), rng.r#gen());
        let logits: Vec<f64> = (0..p.len()).map(|_| rng.gen_range(-2.0..2.0)).collect();
        let dy: Vec<f64> = (0..p.len()).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let (_, ys) = oracle::gumbel_forward(&p, &logits);
        let grad = oracle::gumbel_backward(&p, &ys, &dy);
        let loss = |l: &[f64]| -> f64 {
            let (_, s) = oracle::gumbel_forward(&p, l);
            s.iter().zip(&dy).map(|(s, d)| s * d).sum()
        };
        let h = 1e-6;
        let fd: Vec<f64> = (0..logits.len())
            .map(|i| {
                let (mut plus, mut minus) = (logits.clone(), logits.clone());
                plus[i] += h;
                minus[i] -= h;
                (loss(&plus) - loss(&minus)) / (2.0 * h)
            })
            .collect();
        assert_close_f64(
            &format!("gumbel oracle vs finite differences {p:?}"),
            &grad,
            &fd,
            1e-6,
            seed,
        );
    }
}

/// Philox through the backend's `gumbel_noise`: Random123's first known answer (counter 0,
/// key 0), then random seeds and offsets against the core's Philox stream (same raw words, so
/// agreement within f32 rounding) and the f64 oracle.
pub fn noise_matches_philox<B: Kernels>(b: &B, _cfg: Config) {
    let Some(g) = backend_noise(b, 0, 0, 4) else {
        return;
    };
    let words = [0x6627e8d5u32, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8];
    let tol = DType::F32.elementwise_tolerance();
    for (i, &w) in words.iter().enumerate() {
        let u = ((w >> 9) as f64 + 0.5) * 2f64.powi(-23);
        let want = -(-u.ln()).ln();
        assert!(
            (g[i] as f64 - want).abs() <= tol * want.abs().max(1.0),
            "noise {i} of seed 0 offset 0: {} vs {want} (Random123 word {w:#010x})",
            g[i]
        );
    }
    let (mut rng, seed) = fresh_rng();
    for n in [1, 3, 4, 5, 1000, 4097] {
        let (s, o) = (rng.r#gen::<u64>(), rng.r#gen::<u64>());
        let Some(g) = backend_noise(b, s, o, n) else {
            return;
        };
        let core: Vec<f64> = (0..n as u64)
            .map(|i| gumbel_noise_at(s, o, i) as f64)
            .collect();
        let what = format!("gumbel_noise seed {s} offset {o} n {n}");
        assert_close(&format!("{what} vs core"), &g, &core, tol, seed);
        let f64_noise = oracle::gumbel_noise_f64(s, o, n);
        assert_close(&format!("{what} vs f64 oracle"), &g, &f64_noise, tol, seed);
    }
    // The extremes of the word range stay finite: u = 2⁻²⁴ and u = 1 − 2⁻²⁴.
    for w in [0u32, u32::MAX] {
        assert!(gumbel_from_word(w).is_finite());
    }
}

/// 10⁶ draws: mean → γ and variance → π²/6, each within 4 standard errors (the variance's
/// standard error from the sample's fourth central moment).
pub fn noise_mean_and_variance<B: Kernels>(b: &B, _cfg: Config) {
    let (mut rng, seed) = fresh_rng();
    let n = 1_000_000;
    let (s, o) = (rng.r#gen::<u64>(), rng.r#gen::<u64>());
    let Some(g) = backend_noise(b, s, o, n) else {
        return;
    };
    let nf = n as f64;
    let mean = g.iter().map(|&v| v as f64).sum::<f64>() / nf;
    let m2 = g.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / nf;
    let m4 = g.iter().map(|&v| (v as f64 - mean).powi(4)).sum::<f64>() / nf;
    let var = m2 * nf / (nf - 1.0);
    let se_mean = (m2 / nf).sqrt();
    let se_var = ((m4 - m2 * m2) / nf).sqrt();
    let want_var = std::f64::consts::PI.powi(2) / 6.0;
    assert!(
        (mean - EULER_GAMMA).abs() < 4.0 * se_mean,
        "noise mean {mean} vs {EULER_GAMMA} (se {se_mean:.2e}); seed {s} offset {o}; \
         replay with FLASHNECK_SEED={seed}"
    );
    assert!(
        (var - want_var).abs() < 4.0 * se_var,
        "noise variance {var} vs {want_var} (se {se_var:.2e}); seed {s} offset {o}; \
         replay with FLASHNECK_SEED={seed}"
    );
}

/// `K = 1`: `y = 1` in both modes, `dlogits = 0`.
pub fn single_class<B: Kernels>(b: &B, _cfg: Config) {
    fn check<T: Element>(b: &impl Kernels) {
        let (mut rng, seed) = fresh_rng();
        for hard in [false, true] {
            let p = GumbelParams::new(7, 1, 0.5)
                .with_seed(rng.r#gen(), rng.r#gen())
                .with_hard(hard);
            let (logits, _) = random_input::<T>(&mut rng, p.len(), 3.0);
            check_forward(b, &p, &logits, seed);
            if let Some((y, ys)) = forward(b, &p, &logits) {
                assert!(y.iter().all(|v| v.to_f32() == 1.0), "K = 1: y must be 1");
                let (dy, _) = random_input::<T>(&mut rng, p.len(), 1.0);
                if let Some(d) = backward(b, &p, &ys, &dy) {
                    assert!(d.iter().all(|v| v.to_f32() == 0.0), "K = 1: dlogits = 0");
                }
            }
        }
    }
    crate::for_each_dtype!(check, b);
}

/// One row of `cfg.max_classes` classes (10⁴ in the full config) and a single short row, in
/// both modes.
pub fn large_k_and_one_row<B: Kernels>(b: &B, cfg: Config) {
    fn check<T: Element>(b: &impl Kernels, cfg: Config) {
        let (mut rng, seed) = fresh_rng();
        for (rows, k) in [(3, cfg.max_classes), (1, cfg.max_classes - 1), (1, 5)] {
            for hard in [false, true] {
                let p = GumbelParams::new(rows, k, 0.7)
                    .with_seed(rng.r#gen(), rng.r#gen())
                    .with_hard(hard);
                let (logits, _) = random_input::<T>(&mut rng, p.len(), 2.0);
                check_forward(b, &p, &logits, seed);
            }
        }
    }
    crate::for_each_dtype!(check, b, cfg);
}

/// No rows: forward and backward succeed and write nothing.
pub fn no_rows<B: Kernels>(b: &B, _cfg: Config) {
    let p = GumbelParams::new(0, 12, 1.0).with_hard(true);
    if let Some((y, ys)) = forward::<f32, B>(b, &p, &[]) {
        assert!(y.is_empty() && ys.is_empty());
    }
    if let Some(d) = backward::<f32, B>(b, &p, &[], &[]) {
        assert!(d.is_empty());
    }
}

/// Extreme finite logits (±1e30, ±3e38 for f32; the dtype's largest values otherwise): a single
/// huge logit takes all the mass, huge negative ones get none, equal huge ones split it (the
/// noise is absorbed), never NaN; hard mode picks the huge one.
pub fn extreme_logits<B: Kernels>(b: &B, _cfg: Config) {
    fn check<T: Element>(b: &impl Kernels) {
        let (mut rng, seed) = fresh_rng();
        let big = match T::DTYPE {
            DType::F32 => 1e30,
            DType::F16 => 6e4,
            DType::BF16 => 1e30,
        };
        let absorbed = big > 1e20;
        let k = 9;
        for hard in [false, true] {
            for tau in [0.05f32, 1.0, 10.0] {
                let p = GumbelParams::new(4, k, tau)
                    .with_seed(rng.r#gen(), rng.r#gen())
                    .with_hard(hard);
                let (mut logits, _) = random_input::<T>(&mut rng, p.len(), 1.0);
                // Row 0: one huge logit. Row 1: all but one hugely negative. Where the noise is
                // absorbed (|logit| >= 1e20; f32 rounding of `logit + g` near 6e4 would be
                // amplified by 1/tau beyond any tolerance): row 2 has two equal huge logits, row
                // 3 is hugely negative everywhere.
                logits[3] = T::from_f32(big);
                for i in 0..k {
                    if i != 4 {
                        logits[k + i] = T::from_f32(-big);
                    }
                }
                if absorbed {
                    logits[2 * k + 1] = T::from_f32(big);
                    logits[2 * k + 6] = T::from_f32(big);
                    for i in 0..k {
                        logits[3 * k + i] = T::from_f32(-big);
                    }
                }
                check_forward(b, &p, &logits, seed);
                let Some((y, ys)) = forward(b, &p, &logits) else {
                    return;
                };
                assert!(ys.iter().all(|v| v.is_finite()), "y_soft must be finite");
                let at = |i: usize| y[i].to_f32();
                assert_eq!(at(3), 1.0, "row 0: the huge logit takes all the mass");
                assert_eq!(at(k + 4), 1.0, "row 1: the only finite-sized logit wins");
                if absorbed && !hard {
                    assert_eq!(
                        (at(2 * k + 1), at(2 * k + 6)),
                        (0.5, 0.5),
                        "equal huge logits"
                    );
                    let uniform = T::from_f32(1.0 / k as f32).to_f32();
                    assert!((3 * k..4 * k).all(|i| at(i) == uniform), "row 3 is uniform");
                }
                if absorbed && hard {
                    assert_eq!(at(2 * k + 1), 1.0, "ties go to the lowest k");
                    assert_eq!(at(3 * k), 1.0, "ties go to the lowest k");
                }
            }
        }
    }
    crate::for_each_dtype!(check, b);
}

/// Two runs give bitwise identical outputs: forward (both modes, `y` and `y_soft`), backward
/// and noise.
pub fn two_runs_bitwise_equal<B: Kernels>(b: &B, _cfg: Config) {
    fn check<T: Element>(b: &impl Kernels) {
        let (mut rng, _) = fresh_rng();
        for hard in [false, true] {
            let p = GumbelParams::new(37, 1031, 0.4)
                .with_seed(rng.r#gen(), rng.r#gen())
                .with_hard(hard);
            let (logits, _) = random_input::<T>(&mut rng, p.len(), 2.0);
            let (dy, _) = random_input::<T>(&mut rng, p.len(), 1.0);
            let (Some(f1), Some(f2)) = (forward(b, &p, &logits), forward(b, &p, &logits)) else {
                return;
            };
            assert_eq!(bits(&f1.0), bits(&f2.0), "gumbel y {} differs", T::DTYPE);
            assert_eq!(
                bits(&f1.1),
                bits(&f2.1),
                "gumbel y_soft {} differs",
                T::DTYPE
            );
            if let (Some(d1), Some(d2)) = (backward(b, &p, &f1.1, &dy), backward(b, &p, &f1.1, &dy))
            {
                assert_eq!(bits(&d1), bits(&d2), "gumbel dlogits {} differs", T::DTYPE);
            }
        }
    }
    crate::for_each_dtype!(check, b);
    let (s, o) = (3, 9);
    if let (Some(n1), Some(n2)) = (
        backend_noise(b, s, o, 10_001),
        backend_noise(b, s, o, 10_001),
    ) {
        assert_eq!(bits(&n1), bits(&n2), "gumbel noise differs");
    }
}

/// Instantiate this module's checks for one backend.
#[macro_export]
macro_rules! gumbel_tests {
    ($make:expr, $config:expr) => {
        $crate::checks!(
            gumbel,
            $make,
            $config,
            [
                forward_matches_oracle,
                backward_matches_oracle,
                noise_matches_philox,
                noise_mean_and_variance,
                single_class,
                large_k_and_one_row,
                no_rows,
                extreme_logits,
                two_runs_bitwise_equal,
            ]
        );
    };
}
