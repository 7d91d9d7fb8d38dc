//! Conformance checks for GR-KAN (SPEC §3): forward and backward against the f64 oracle over
//! random shapes, degrees and groups for every dtype; the oracle's backward against central
//! finite differences; the edge cases `b = 0`, `x = 0`, one row and no rows; determinism.

use crate::{
    Config, assert_close, assert_close_f64, bits, fresh_rng, nan_buffer, property, ran,
    random_input,
};
use flashneck_core::params::MAX_KAN_DEGREE;
use flashneck_core::{DType, Element, GrKanParams, Kernels, OpKind, grkan_init};
use flashneck_cpu::oracle::grkan as oracle;
use proptest::prelude::*;
use rand::{Rng, SeedableRng, rngs::StdRng};

/// One GR-KAN problem: parameters and inputs as `T`, with their f64 copies for the oracle.
struct Problem<T> {
    p: GrKanParams,
    x: (Vec<T>, Vec<f64>),
    a: (Vec<f32>, Vec<f64>),
    b: (Vec<f32>, Vec<f64>),
    dy: (Vec<T>, Vec<f64>),
}

impl<T: Element> Problem<T> {
    /// Random inputs: `x ~ 1` (`|x| < 3.5`), `dy ~ 1`, and coefficients `~ 0.5 · 2^-i` for
    /// degree `i` (exact scalings), decaying like trained and GELU-fitted ones, so that `P` and
    /// the gradient sums stay well conditioned (a degree-7 polynomial with O(1) coefficients at
    /// `|x| = 3.5` cancels terms of O(10³), beyond what f32 sums can resolve to 1e-4).
    fn random(p: GrKanParams, rng: &mut impl Rng) -> Self {
        let decay = |(mut v, _): (Vec<f32>, Vec<f64>), per_group: usize, first: i32| {
            for (i, c) in v.iter_mut().enumerate() {
                *c *= 2f32.powi(-((i % per_group.max(1)) as i32 + first));
            }
            let f = v.iter().map(|&c| c as f64).collect();
            (v, f)
        };
        Problem {
            p,
            x: random_input(rng, p.x_len(), 1.0),
            a: decay(random_input(rng, p.a_len(), 1.0), p.num_degree + 1, 1),
            b: decay(random_input(rng, p.b_len(), 1.0), p.den_degree, 1),
            dy: random_input(rng, p.x_len(), 1.0),
        }
    }

    /// Forward on the backend (output poisoned with NaN first); `None` when unsupported.
    fn forward<B: Kernels>(&self, b: &B) -> Option<Vec<T>> {
        let x = b.upload(&self.x.0).unwrap();
        let a = b.upload(&self.a.0).unwrap();
        let bb = b.upload(&self.b.0).unwrap();
        let mut y = nan_buffer::<B, T>(b, self.p.x_len());
        let r = b.grkan_forward(&self.p, &x, &a, &bb, &mut y);
        ran(b, OpKind::GrKanForward, T::DTYPE, r)?;
        Some(b.download(&y).unwrap())
    }

    /// Backward on the backend: `(dx, da, db)`; `None` when unsupported.
    #[allow(clippy::type_complexity)]
    fn backward<B: Kernels>(&self, b: &B) -> Option<(Vec<T>, Vec<f32>, Vec<f32>)> {
        let x = b.upload(&self.x.0).unwrap();
        let a = b.upload(&self.a.0).unwrap();
        let bb = b.upload(&self.b.0).unwrap();
        let dy = b.upload(&self.dy.0).unwrap();
        let mut dx = nan_buffer::<B, T>(b, self.p.x_len());
        let mut da = nan_buffer::<B, f32>(b, self.p.a_len());
        let mut db = nan_buffer::<B, f32>(b, self.p.b_len());
        let r = b.grkan_backward(&self.p, &x, &a, &bb, &dy, &mut dx, &mut da, &mut db);
        ran(b, OpKind::GrKanBackward, T::DTYPE, r)?;
        Some((
            b.download(&dx).unwrap(),
            b.download(&da).unwrap(),
            b.download(&db).unwrap(),
        ))
    }

    /// Check the forward against the oracle with the dtype's elementwise tolerance.
    fn check_forward<B: Kernels>(&self, b: &B, seed: u64) {
        let Some(y) = self.forward(b) else { return };
        let want = oracle::grkan_forward(&self.p, &self.x.1, &self.a.1, &self.b.1);
        let what = format!("grkan_forward {} {:?}", T::DTYPE, self.p);
        assert_close(&what, &y, &want, T::DTYPE.elementwise_tolerance(), seed);
    }

    /// Check the backward against the oracle: `dx` elementwise, `da`/`db` as f32 sums.
    fn check_backward<B: Kernels>(&self, b: &B, seed: u64) -> Option<(Vec<f32>, Vec<f32>)> {
        let (dx, da, db) = self.backward(b)?;
        let (want_dx, want_da, want_db) =
            oracle::grkan_backward(&self.p, &self.x.1, &self.a.1, &self.b.1, &self.dy.1);
        let what = format!("grkan_backward {} {:?}", T::DTYPE, self.p);
        assert_close(
            &format!("{what} dx"),
            &dx,
            &want_dx,
            T::DTYPE.elementwise_tolerance(),
            seed,
        );
        let sum_tol = DType::F32.reduction_tolerance();
        assert_close(&format!("{what} da"), &da, &want_da, sum_tol, seed);
        assert_close(&format!("{what} db"), &db, &want_db, sum_tol, seed);
        Some((da, db))
    }
}

/// Random parameters: ragged rows, `G` groups of ragged width, degrees `0..=7`.
fn params_strategy(cfg: &Config) -> impl Strategy<Value = (GrKanParams, u64)> + use<> {
    (
        1..=cfg.max_rows,
        1..=8usize,
        1..=40usize,
        0..=MAX_KAN_DEGREE,
        0..=MAX_KAN_DEGREE,
        any::<u64>(),
    )
        .prop_map(|(rows, groups, width, m, n, seed)| {
            (
                GrKanParams::new(rows, groups * width, groups).with_degrees(m, n),
                seed,
            )
        })
}

fn forward_property<T: Element>(b: &impl Kernels, cfg: Config) {
    let what = format!("grkan forward property {}", T::DTYPE);
    property(cfg, &what, params_strategy(&cfg), |(p, seed), _| {
        Problem::<T>::random(p, &mut StdRng::seed_from_u64(seed)).check_forward(b, seed);
    });
}

fn backward_property<T: Element>(b: &impl Kernels, cfg: Config) {
    let what = format!("grkan backward property {}", T::DTYPE);
    property(cfg, &what, params_strategy(&cfg), |(p, seed), _| {
        Problem::<T>::random(p, &mut StdRng::seed_from_u64(seed)).check_backward(b, seed);
    });
}

/// Forward vs the oracle over random shapes, groups and degrees, every dtype.
pub fn forward_matches_oracle<B: Kernels>(b: &B, cfg: Config) {
    crate::for_each_dtype!(forward_property, b, cfg);
}

/// Backward (`dx`, `da`, `db`) vs the oracle over random shapes, groups and degrees, every dtype.
pub fn backward_matches_oracle<B: Kernels>(b: &B, cfg: Config) {
    crate::for_each_dtype!(backward_property, b, cfg);
}

/// KAT's default shape with the identity init (`b = 0`): the denominator still gets a gradient
/// (`sgn(0) = +1`), `db != 0`, and the forward is exactly `y = x`.
pub fn zero_denominator_still_learns<B: Kernels>(b: &B, _cfg: Config) {
    fn check<T: Element>(b: &impl Kernels) {
        let (mut rng, seed) = fresh_rng();
        let p = GrKanParams::new(37, 24, 4);
        let (a, bb) = grkan_init::identity(p.groups, p.num_degree, p.den_degree);
        let mut prob = Problem::<T>::random(p, &mut rng);
        prob.a = (a.clone(), a.iter().map(|&v| v as f64).collect());
        prob.b = (bb.clone(), bb.iter().map(|&v| v as f64).collect());
        if let Some(y) = prob.forward(b) {
            assert!(
                y.iter().zip(&prob.x.0).all(|(y, x)| y == x),
                "identity init: y != x"
            );
        }
        if let Some((_, db)) = prob.check_backward(b, seed) {
            assert!(
                db.iter().all(|&v| v != 0.0),
                "b = 0 must still get a gradient: db = {db:?}"
            );
        }
    }
    crate::for_each_dtype!(check, b);
}

/// `x = 0` exactly (and `-0`) in the input: finite `dx`, matching the oracle (`sgn(0) = +1`).
pub fn exact_zero_input<B: Kernels>(b: &B, _cfg: Config) {
    fn check<T: Element>(b: &impl Kernels) {
        let (mut rng, seed) = fresh_rng();
        for (m, n) in [(5, 4), (0, 1), (1, 1), (7, 7), (3, 0)] {
            let p = GrKanParams::new(9, 15, 3).with_degrees(m, n);
            let mut prob = Problem::<T>::random(p, &mut rng);
            for i in (0..p.x_len()).step_by(3) {
                let z: f32 = if i % 2 == 0 { 0.0 } else { -0.0 };
                prob.x.0[i] = T::from_f32(z);
                prob.x.1[i] = z as f64;
            }
            prob.check_forward(b, seed);
            prob.check_backward(b, seed);
        }
    }
    crate::for_each_dtype!(check, b);
}

/// One row, one group of one channel, and a wide single row: the smallest tiles.
pub fn one_row<B: Kernels>(b: &B, _cfg: Config) {
    fn check<T: Element>(b: &impl Kernels) {
        let (mut rng, seed) = fresh_rng();
        for p in [
            GrKanParams::new(1, 1, 1),
            GrKanParams::new(1, 768, 8),
            GrKanParams::new(1, 13, 13).with_degrees(2, 3),
        ] {
            let prob = Problem::<T>::random(p, &mut rng);
            prob.check_forward(b, seed);
            prob.check_backward(b, seed);
        }
    }
    crate::for_each_dtype!(check, b);
}

/// No rows: both passes succeed, and the coefficient gradients are exactly zero.
pub fn no_rows<B: Kernels>(b: &B, _cfg: Config) {
    let (mut rng, _) = fresh_rng();
    let prob = Problem::<f32>::random(GrKanParams::new(0, 16, 4), &mut rng);
    if prob.forward(b).is_some()
        && let Some((dx, da, db)) = prob.backward(b)
    {
        assert!(dx.is_empty());
        assert!(da.iter().chain(&db).all(|&v| v == 0.0), "da, db must be 0");
    }
}

/// The GELU-like init through the backend: within its documented error of GELU on [-3, 3].
pub fn gelu_init_is_gelu_like<B: Kernels>(b: &B, _cfg: Config) {
    let (a, bb) = grkan_init::gelu_like(2, 5, 4).expect("(5, 4) is fitted");
    let xs: Vec<f32> = (0..=600).map(|i| -3.0 + i as f32 * 0.01).collect();
    let p = GrKanParams::new(xs.len(), 2, 2);
    let x: Vec<f32> = xs.iter().flat_map(|&v| [v, v]).collect();
    let prob = Problem::<f32> {
        p,
        x: (x.clone(), x.iter().map(|&v| v as f64).collect()),
        a: (a.clone(), a.iter().map(|&v| v as f64).collect()),
        b: (bb.clone(), bb.iter().map(|&v| v as f64).collect()),
        dy: (vec![1.0; x.len()], vec![1.0; x.len()]),
    };
    let Some(y) = prob.forward(b) else { return };
    for (&xv, &yv) in x.iter().zip(&y) {
        let want = gelu(xv as f64);
        assert!(
            (yv as f64 - want).abs() < grkan_init::GELU_LIKE_MAX_ERROR + 1e-6,
            "GELU-like init at x = {xv}: {yv} vs GELU = {want}"
        );
    }
}

/// `GELU(x) = x·Φ(x)`, with `erf` by its Taylor series (accurate to ~1e-13 for `|x| ≤ 3`).
fn gelu(x: f64) -> f64 {
    let z = x / std::f64::consts::SQRT_2;
    let (mut sum, mut term) = (0.0, z);
    for n in 0..200 {
        sum += term / (2 * n + 1) as f64;
        term *= -z * z / (n + 1) as f64;
    }
    0.5 * x * (1.0 + sum * 2.0 / std::f64::consts::PI.sqrt())
}

/// `L = Σ dy · y` in f64 through the oracle's forward.
fn loss(p: &GrKanParams, x: &[f64], a: &[f64], b: &[f64], dy: &[f64]) -> f64 {
    let y = oracle::grkan_forward(p, x, a, b);
    y.iter().zip(dy).map(|(y, d)| y * d).sum()
}

/// Central difference of `L` along one coordinate of `v` (a copy of `x`, `a` or `b`).
fn central(v: &[f64], i: usize, h: f64, l: impl Fn(&[f64]) -> f64) -> f64 {
    let mut plus = v.to_vec();
    let mut minus = v.to_vec();
    plus[i] += h;
    minus[i] -= h;
    (l(&plus) - l(&minus)) / (2.0 * h)
}

/// The oracle's backward against central finite differences of the oracle's forward, away
/// from the kinks of `|x|` and `|b|`; and at `b = 0`, against the one-sided difference from
/// the right (SPEC's `sgn(0) = +1`).
pub fn oracle_backward_matches_finite_differences() {
    let (mut rng, seed) = fresh_rng();
    let away = |v: f64| if v.abs() < 0.05 { 0.05 + v.abs() } else { v };
    for (m, n) in [(5, 4), (0, 0), (1, 7), (7, 1), (3, 3)] {
        let p = GrKanParams::new(3, 6, 2).with_degrees(m, n);
        let x: Vec<f64> = (0..p.x_len())
            .map(|_| away(rng.gen_range(-2.5..2.5)))
            .collect();
        let a: Vec<f64> = (0..p.a_len()).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let bb: Vec<f64> = (0..p.b_len())
            .map(|_| away(rng.gen_range(-1.0..1.0)))
            .collect();
        let dy: Vec<f64> = (0..p.x_len()).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let (dx, da, db) = oracle::grkan_backward(&p, &x, &a, &bb, &dy);
        let h = 1e-6;
        let fd_x: Vec<f64> = (0..x.len())
            .map(|i| central(&x, i, h, |v| loss(&p, v, &a, &bb, &dy)))
            .collect();
        let fd_a: Vec<f64> = (0..a.len())
            .map(|i| central(&a, i, h, |v| loss(&p, &x, v, &bb, &dy)))
            .collect();
        let fd_b: Vec<f64> = (0..bb.len())
            .map(|i| central(&bb, i, h, |v| loss(&p, &x, &a, v, &dy)))
            .collect();
        let what = format!("grkan oracle vs finite differences {p:?}");
        assert_close_f64(&format!("{what} dx"), &dx, &fd_x, 1e-6, seed);
        assert_close_f64(&format!("{what} da"), &da, &fd_a, 1e-6, seed);
        assert_close_f64(&format!("{what} db"), &db, &fd_b, 1e-6, seed);
        // b = 0: the gradient is the derivative from the right.
        let zero = vec![0.0; p.b_len()];
        let (_, _, db0) = oracle::grkan_backward(&p, &x, &a, &zero, &dy);
        let l0 = loss(&p, &x, &a, &zero, &dy);
        // Second-order one-sided difference: (−3 L(0) + 4 L(h) − L(2h)) / 2h, with a small h
        // because the third derivative grows like |x|^(3N) (2.5^21 at N = 7).
        let h = 1e-7;
        let fd0: Vec<f64> = (0..zero.len())
            .map(|i| {
                let at = |t: f64| {
                    let mut v = zero.clone();
                    v[i] = t;
                    loss(&p, &x, &a, &v, &dy)
                };
                (-3.0 * l0 + 4.0 * at(h) - at(2.0 * h)) / (2.0 * h)
            })
            .collect();
        assert_close_f64(&format!("{what} db at b = 0"), &db0, &fd0, 1e-6, seed);
    }
}

/// Two runs give bitwise identical outputs, forward and backward.
pub fn two_runs_bitwise_equal<B: Kernels>(b: &B, _cfg: Config) {
    fn check<T: Element>(b: &impl Kernels) {
        let (mut rng, _) = fresh_rng();
        let prob = Problem::<T>::random(GrKanParams::new(211, 96, 8), &mut rng);
        if let (Some(y1), Some(y2)) = (prob.forward(b), prob.forward(b)) {
            assert_eq!(bits(&y1), bits(&y2), "grkan forward {} differs", T::DTYPE);
        }
        if let (Some(g1), Some(g2)) = (prob.backward(b), prob.backward(b)) {
            assert_eq!(bits(&g1.0), bits(&g2.0), "grkan dx {} differs", T::DTYPE);
            assert_eq!(bits(&g1.1), bits(&g2.1), "grkan da differs");
            assert_eq!(bits(&g1.2), bits(&g2.2), "grkan db differs");
        }
    }
    crate::for_each_dtype!(check, b);
}

/// Instantiate this module's checks for one backend.
#[macro_export]
macro_rules! grkan_tests {
    ($make:expr, $config:expr) => {
        $crate::checks!(
            grkan,
            $make,
            $config,
            [
                forward_matches_oracle,
                backward_matches_oracle,
                zero_denominator_still_learns,
                exact_zero_input,
                one_row,
                no_rows,
                gelu_init_is_gelu_like,
                two_runs_bitwise_equal,
            ]
        );
    };
}
