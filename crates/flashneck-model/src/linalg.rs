//! Host math on row-major f32 slices, each function paired with its backward.
//!
//! Simple loops in a fixed order (so results are bitwise reproducible), sized for a model this
//! small. Shapes are the caller's business: every function here is called by a layer that has
//! already checked its input lengths, so mismatched lengths are a bug, reported as an error
//! rather than a panic by [`check`].

use flashneck_core::{Error, Result};

/// `Err(ShapeMismatch)` unless `got == expected` (lengths in elements): core's check.
pub use flashneck_core::error::check_len as check;

/// Rows of a `[rows, cols]` matrix stored in `len` elements, or a shape error.
pub fn rows_of(arg: &'static str, len: usize, cols: usize) -> Result<usize> {
    if cols == 0 || !len.is_multiple_of(cols) {
        return Err(Error::shape(
            arg,
            format!("a multiple of {cols} elements"),
            format!("{len} elements"),
        ));
    }
    Ok(len / cols)
}

/// `y [rows, n] = x [rows, k] · w [k, n] + bias [n]`.
pub fn matmul_bias(
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    rows: usize,
    k: usize,
    n: usize,
) -> Vec<f32> {
    let mut y = Vec::with_capacity(rows * n);
    for r in 0..rows {
        y.extend_from_slice(bias);
        let yr = &mut y[r * n..(r + 1) * n];
        for (i, &xi) in x[r * k..(r + 1) * k].iter().enumerate() {
            for (yo, &wio) in yr.iter_mut().zip(&w[i * n..(i + 1) * n]) {
                *yo += xi * wio;
            }
        }
    }
    y
}

/// Backward of [`matmul_bias`] for the input: `dx [rows, k] = dy [rows, n] · wᵀ`.
pub fn matmul_dx(dy: &[f32], w: &[f32], rows: usize, k: usize, n: usize) -> Vec<f32> {
    let mut dx = vec![0.0f32; rows * k];
    for r in 0..rows {
        let dyr = &dy[r * n..(r + 1) * n];
        for (i, dxi) in dx[r * k..(r + 1) * k].iter_mut().enumerate() {
            *dxi = dyr
                .iter()
                .zip(&w[i * n..(i + 1) * n])
                .map(|(a, b)| a * b)
                .sum();
        }
    }
    dx
}

/// Backward of [`matmul_bias`] for the parameters, accumulated:
/// `dw [k, n] += xᵀ · dy`, `dbias [n] += Σ_rows dy`.
pub fn matmul_dw_acc(
    x: &[f32],
    dy: &[f32],
    rows: usize,
    k: usize,
    n: usize,
    dw: &mut [f32],
    dbias: &mut [f32],
) {
    for r in 0..rows {
        let dyr = &dy[r * n..(r + 1) * n];
        for (i, &xi) in x[r * k..(r + 1) * k].iter().enumerate() {
            for (g, &d) in dw[i * n..(i + 1) * n].iter_mut().zip(dyr) {
                *g += xi * d;
            }
        }
        for (g, &d) in dbias.iter_mut().zip(dyr) {
            *g += d;
        }
    }
}

/// What LayerNorm's backward needs: the normalised input and `1/σ` per row.
pub struct NormCache {
    pub xhat: Vec<f32>,
    pub rstd: Vec<f32>,
}

/// LayerNorm over the last dim: `y = (x − μ)/sqrt(σ² + eps) · γ + β`.
pub fn layer_norm(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    dim: usize,
    eps: f32,
) -> (Vec<f32>, NormCache) {
    let rows = x.len() / dim;
    let mut y = vec![0.0f32; x.len()];
    let mut xhat = vec![0.0f32; x.len()];
    let mut rstd = vec![0.0f32; rows];
    for r in 0..rows {
        let xr = &x[r * dim..(r + 1) * dim];
        let mean = xr.iter().sum::<f32>() / dim as f32;
        let var = xr.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / dim as f32;
        let rs = 1.0 / (var + eps).sqrt();
        rstd[r] = rs;
        for c in 0..dim {
            let h = (xr[c] - mean) * rs;
            xhat[r * dim + c] = h;
            y[r * dim + c] = h * gamma[c] + beta[c];
        }
    }
    (y, NormCache { xhat, rstd })
}

/// Backward of [`layer_norm`]: returns `dx`, accumulates `dγ`, `dβ`.
/// `dx = rstd · (ĝ − mean(ĝ) − x̂ · mean(ĝ ⊙ x̂))` with `ĝ = dy ⊙ γ`.
pub fn layer_norm_backward(
    dy: &[f32],
    cache: &NormCache,
    gamma: &[f32],
    dim: usize,
    dgamma: &mut [f32],
    dbeta: &mut [f32],
) -> Vec<f32> {
    let rows = dy.len() / dim;
    let mut dx = vec![0.0f32; dy.len()];
    for r in 0..rows {
        let dyr = &dy[r * dim..(r + 1) * dim];
        let xh = &cache.xhat[r * dim..(r + 1) * dim];
        let mut mean_g = 0.0f32;
        let mut mean_gx = 0.0f32;
        for c in 0..dim {
            let g = dyr[c] * gamma[c];
            mean_g += g;
            mean_gx += g * xh[c];
            dgamma[c] += dyr[c] * xh[c];
            dbeta[c] += dyr[c];
        }
        mean_g /= dim as f32;
        mean_gx /= dim as f32;
        for c in 0..dim {
            let g = dyr[c] * gamma[c];
            dx[r * dim + c] = cache.rstd[r] * (g - mean_g - xh[c] * mean_gx);
        }
    }
    dx
}

/// `[batch, len, heads · d]` (a projection's output) to `[batch, heads, len, d]` (the layout
/// the attention ops take).
pub fn split_heads(x: &[f32], batch: usize, len: usize, heads: usize, d: usize) -> Vec<f32> {
    let mut y = vec![0.0f32; x.len()];
    for b in 0..batch {
        for t in 0..len {
            for h in 0..heads {
                let src = ((b * len + t) * heads + h) * d;
                let dst = ((b * heads + h) * len + t) * d;
                y[dst..dst + d].copy_from_slice(&x[src..src + d]);
            }
        }
    }
    y
}

/// The inverse of [`split_heads`] (and its backward, since it is a permutation):
/// `[batch, heads, len, d]` is `split_heads`' input layout with `len` and `heads` swapped.
pub fn merge_heads(x: &[f32], batch: usize, len: usize, heads: usize, d: usize) -> Vec<f32> {
    split_heads(x, batch, heads, len, d)
}

/// Mean over the sequence: `[batch, len, d]` to `[batch, d]`.
pub fn mean_pool(x: &[f32], batch: usize, len: usize, d: usize) -> Vec<f32> {
    let mut y = vec![0.0f32; batch * d];
    for b in 0..batch {
        for t in 0..len {
            for c in 0..d {
                y[b * d + c] += x[(b * len + t) * d + c];
            }
        }
    }
    let inv = 1.0 / len as f32;
    y.iter_mut().for_each(|v| *v *= inv);
    y
}

/// Backward of [`mean_pool`]: every position gets `dy / len`.
pub fn mean_pool_backward(dy: &[f32], batch: usize, len: usize, d: usize) -> Vec<f32> {
    let inv = 1.0 / len as f32;
    let mut dx = vec![0.0f32; batch * len * d];
    for b in 0..batch {
        for t in 0..len {
            for c in 0..d {
                dx[(b * len + t) * d + c] = dy[b * d + c] * inv;
            }
        }
    }
    dx
}

/// Mean softmax cross-entropy of `logits [batch, classes]` against `labels`, computed in f64,
/// and its gradient `dlogits = (softmax − one_hot) / batch` (f32).
pub fn softmax_cross_entropy(
    logits: &[f32],
    labels: &[usize],
    classes: usize,
) -> Result<(f64, Vec<f32>)> {
    let batch = labels.len();
    check("logits", logits.len(), batch * classes)?;
    if batch == 0 {
        return Err(Error::bad("labels", "at least one example", 0));
    }
    let mut loss = 0.0f64;
    let mut grad = vec![0.0f32; logits.len()];
    for (r, &label) in labels.iter().enumerate() {
        if label >= classes {
            return Err(Error::bad("labels", format!("< {classes}"), label));
        }
        let row = &logits[r * classes..(r + 1) * classes];
        let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
        let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
        loss += sum.ln() + max - row[label] as f64;
        for (c, g) in grad[r * classes..(r + 1) * classes].iter_mut().enumerate() {
            let p = (row[c] as f64 - max).exp() / sum;
            let y = if c == label { 1.0 } else { 0.0 };
            *g = ((p - y) / batch as f64) as f32;
        }
    }
    Ok((loss / batch as f64, grad))
}

/// `acc += x`, elementwise.
pub fn add_assign(acc: &mut [f32], x: &[f32]) {
    acc.iter_mut().zip(x).for_each(|(a, b)| *a += b);
}

/// Index of the largest value of `row` (the lowest index on ties).
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_then_merge_is_identity() {
        let x: Vec<f32> = (0..2 * 3 * 4 * 5).map(|i| i as f32).collect();
        let s = split_heads(&x, 2, 3, 4, 5);
        assert_ne!(s, x);
        // Element (b=1, t=2, h=3, d=4) moves to (b=1, h=3, t=2, d=4).
        assert_eq!(s[((4 + 3) * 3 + 2) * 5 + 4], x[((3 + 2) * 4 + 3) * 5 + 4]);
        assert_eq!(merge_heads(&s, 2, 3, 4, 5), x);
    }

    #[test]
    fn matmul_matches_a_hand_computed_product() {
        // [1 2; 3 4] · [5 6; 7 8] + [1, -1] = [20 21; 44 49].
        let y = matmul_bias(&[1., 2., 3., 4.], &[5., 6., 7., 8.], &[1., -1.], 2, 2, 2);
        assert_eq!(y, vec![20., 21., 44., 49.]);
        let dx = matmul_dx(&[1., 0., 0., 1.], &[5., 6., 7., 8.], 2, 2, 2);
        assert_eq!(dx, vec![5., 7., 6., 8.]);
    }

    #[test]
    fn cross_entropy_rejects_bad_labels() {
        assert!(softmax_cross_entropy(&[0.0, 1.0], &[2], 2).is_err());
        let (loss, g) = softmax_cross_entropy(&[0.0, 0.0], &[1], 2).unwrap();
        assert!((loss - std::f64::consts::LN_2).abs() < 1e-12);
        assert_eq!(g, vec![0.5, -0.5]);
    }
}
