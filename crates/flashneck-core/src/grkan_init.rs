//! GR-KAN coefficient initialisers (SPEC §3).

use crate::error::{Error, Result};

/// Identity: `a = [0, 1, 0, …]`, `b = 0`, so `y = x`. Returns `(a [G, M+1], b [G, N])`.
pub fn identity(groups: usize, num_degree: usize, den_degree: usize) -> (Vec<f32>, Vec<f32>) {
    let mut a = vec![0.0f32; groups * (num_degree + 1)];
    if num_degree >= 1 {
        for g in 0..groups {
            a[g * (num_degree + 1) + 1] = 1.0;
        }
    }
    (a, vec![0.0f32; groups * den_degree])
}

/// Numerator of the GELU fit, `a_0 … a_5`.
const GELU_A: [f32; 6] = [
    -0.0014636996,
    0.49982023,
    0.40858608,
    0.11087559,
    0.01135828,
    0.0004925972,
];
/// Denominator of the GELU fit, `b_1 … b_4` (only `|b_j|` matters).
const GELU_B: [f32; 4] = [-0.008204925, 0.20812131, -0.0065742647, 5.2216326e-8];

/// Upper bound of `max |y(x) − GELU(x)|` on `[−3, 3]` for [`gelu_like`] (measured 1.50e-3).
pub const GELU_LIKE_MAX_ERROR: f64 = 1.6e-3;

/// A GELU-like start: every group gets the same fit of SPEC §3's exact form
/// `P(x) / (1 + Σ |b_j| |x|^j)` to `GELU(x) = x · Φ(x)`, with `max |error| ≤ 1.6e-3` on `[−3, 3]`
/// ([`GELU_LIKE_MAX_ERROR`]; outside that interval the fit drifts away from GELU, like KAT's).
///
/// The coefficients were fitted once by `crates/flashneck-core/tools/fit_gelu.py` (linearised
/// least squares, then Levenberg–Marquardt with Lawson reweighting towards minimax, on 6001
/// points of `[−3, 3]`), rounded to f32. Only KAT's default degrees `M = 5, N = 4` have a fit:
/// other degrees return [`Error::BadParameter`] (refit with the script to add more).
/// Returns `(a [G, 6], b [G, 4])`.
pub fn gelu_like(
    groups: usize,
    num_degree: usize,
    den_degree: usize,
) -> Result<(Vec<f32>, Vec<f32>)> {
    if num_degree != GELU_A.len() - 1 {
        return Err(Error::bad(
            "num_degree",
            "5 (the only fitted GELU numerator degree)",
            num_degree,
        ));
    }
    if den_degree != GELU_B.len() {
        return Err(Error::bad(
            "den_degree",
            "4 (the only fitted GELU denominator degree)",
            den_degree,
        ));
    }
    let a = (0..groups).flat_map(|_| GELU_A).collect();
    let b = (0..groups).flat_map(|_| GELU_B).collect();
    Ok((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `erf` by its Taylor series: for `|z| ≤ 2.2` the terms peak near `e^{z²} ≈ 130`, so f64
    /// keeps about 13 correct digits, far more than the bound checked here needs.
    fn erf(z: f64) -> f64 {
        let mut sum = 0.0;
        let mut term = z; // (−1)^n z^(2n+1) / n!
        for n in 0..200 {
            sum += term / (2 * n + 1) as f64;
            term *= -z * z / (n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    fn gelu(x: f64) -> f64 {
        0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2))
    }

    #[test]
    fn erf_series_is_accurate() {
        assert!((erf(1.0) - 0.842_700_792_949_714_9).abs() < 1e-13);
        assert!((erf(2.0) - 0.995_322_265_018_952_7).abs() < 1e-13);
    }

    #[test]
    fn gelu_like_is_within_its_documented_error_on_minus3_3() {
        let (a, b) = gelu_like(3, 5, 4).unwrap();
        assert_eq!((a.len(), b.len()), (18, 12));
        let mut worst = 0.0f64;
        for g in 0..3 {
            let (a, b) = (&a[g * 6..g * 6 + 6], &b[g * 4..g * 4 + 4]);
            for i in 0..=60_000 {
                let x = -3.0 + 6.0 * i as f64 / 60_000.0;
                let p: f64 = (0..6).map(|i| a[i] as f64 * x.powi(i as i32)).sum();
                let q: f64 = 1.0
                    + (0..4)
                        .map(|j| (b[j] as f64).abs() * x.abs().powi(j as i32 + 1))
                        .sum::<f64>();
                worst = worst.max((p / q - gelu(x)).abs());
            }
        }
        assert!(worst < GELU_LIKE_MAX_ERROR, "max error {worst:.3e}");
        // The fit is a real fit, not a loose bound: within 20% of the documented bound.
        assert!(worst > 0.8 * GELU_LIKE_MAX_ERROR, "max error {worst:.3e}");
    }

    #[test]
    fn gelu_like_rejects_unfitted_degrees() {
        assert!(matches!(
            gelu_like(1, 4, 4),
            Err(Error::BadParameter {
                arg: "num_degree",
                ..
            })
        ));
        assert!(matches!(
            gelu_like(1, 5, 3),
            Err(Error::BadParameter {
                arg: "den_degree",
                ..
            })
        ));
    }

    #[test]
    fn identity_is_identity() {
        let (a, b) = identity(2, 5, 4);
        assert_eq!(&a[..6], &[0.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
        assert!(b.iter().all(|&v| v == 0.0));
    }
}
