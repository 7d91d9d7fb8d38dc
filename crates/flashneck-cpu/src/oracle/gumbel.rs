//! f64 oracle of Gumbel-Softmax (SPEC §4): the same Philox words as every backend, then the
//! noise, the softmax and the straight-through backward in f64.

use flashneck_core::GumbelParams;
use flashneck_core::philox::gumbel_word;

/// The noise of flat elements `0 .. n` in f64, from the raw words of SPEC §4:
/// `u = (x >> 9 + 0.5) · 2⁻²³`, `g = −ln(−ln u)`.
pub fn gumbel_noise_f64(seed: u64, offset: u64, n: usize) -> Vec<f64> {
    (0..n as u64)
        .map(|i| {
            let x = gumbel_word(seed, offset, i);
            let u = ((x >> 9) as f64 + 0.5) * 2f64.powi(-23);
            // −ln u, accurate near u = 1 (t = 1 − u is exact).
            let e = -(-(1.0 - u)).ln_1p();
            -e.ln()
        })
        .collect()
}

/// `(y, y_soft)`: `y_soft = softmax((logits + g) / tau)` per row of `K`, and `y = y_soft` or,
/// when `hard`, the one-hot of its argmax (ties to the lowest `k`).
pub fn gumbel_forward(p: &GumbelParams, logits: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let k = p.classes;
    let g = gumbel_noise_f64(p.seed, p.offset, logits.len());
    let tau = p.tau as f64;
    let mut y_soft = vec![0.0; logits.len()];
    let mut y = vec![0.0; logits.len()];
    for r in 0..p.rows {
        let z: Vec<f64> = (0..k)
            .map(|i| (logits[r * k + i] + g[r * k + i]) / tau)
            .collect();
        let max = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = z.iter().map(|v| (v - max).exp()).sum();
        let mut best = 0;
        for i in 0..k {
            y_soft[r * k + i] = (z[i] - max).exp() / sum;
            if y_soft[r * k + i] > y_soft[r * k + best] {
                best = i;
            }
        }
        for i in 0..k {
            y[r * k + i] = if !p.hard {
                y_soft[r * k + i]
            } else if i == best {
                1.0
            } else {
                0.0
            };
        }
    }
    (y, y_soft)
}

/// `dlogits = (1/tau) · y_soft ⊙ (dy − Σ_k y_soft · dy)` per row.
pub fn gumbel_backward(p: &GumbelParams, y_soft: &[f64], dy: &[f64]) -> Vec<f64> {
    let k = p.classes;
    let tau = p.tau as f64;
    let mut out = vec![0.0; y_soft.len()];
    for r in 0..p.rows {
        let row = r * k..(r + 1) * k;
        let dot: f64 = y_soft[row.clone()]
            .iter()
            .zip(&dy[row.clone()])
            .map(|(s, d)| s * d)
            .sum();
        for i in row {
            out[i] = y_soft[i] * (dy[i] - dot) / tau;
        }
    }
    out
}
