//! The arithmetic inside one tile: a small register-blocked matrix product, a vectorisable
//! `exp`, and the masked softmax rows of the forward and of both backward orientations.
//!
//! Everything here is `#[inline(always)]` and generic over `FMA`, so that it is compiled twice:
//! once inside the `avx2,fma` entry point of [`super::simd`] (where LLVM emits 256-bit FMA code
//! for the fixed-size lane loops) and once portably (plain `a * b + c`, SSE2 on x86-64).

use crate::simd::madd;
use flashneck_core::BLOCK;

/// Columns of one micro-kernel panel (two AVX registers). Every product's `n` is a multiple.
pub const NR: usize = 16;
/// Rows of one micro-kernel step: `MR × NR` accumulators (10 AVX registers) stay in
/// registers; ragged row counts finish with 4-row and 1-row steps.
const MR: usize = 6;

/// `C[m × n] (+)= Aᵀ · B` (accumulating when `ACC`, overwriting otherwise) with `A` given transposed: `at [k × ≥m]` (row `p` holds `A[·, p]`),
/// `b [k × ≥n]`, `c [m × ≥n]`, row-major with leading dimensions `lda`, `ldb`, `ldc`; `n` is a
/// multiple of [`NR`]. Both operands are read along contiguous rows, one row pair per step.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn gemm_tn<const ACC: bool, const FMA: bool>(
    m: usize,
    n: usize,
    k: usize,
    at: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
) {
    debug_assert_eq!(n % NR, 0);
    for j0 in (0..n).step_by(NR) {
        let mut i = 0;
        while i + MR <= m {
            micro::<MR, ACC, FMA>(k, &at[i..], lda, &b[j0..], ldb, &mut c[i * ldc + j0..], ldc);
            i += MR;
        }
        while i + 4 <= m {
            micro::<4, ACC, FMA>(k, &at[i..], lda, &b[j0..], ldb, &mut c[i * ldc + j0..], ldc);
            i += 4;
        }
        while i < m {
            micro::<1, ACC, FMA>(k, &at[i..], lda, &b[j0..], ldb, &mut c[i * ldc + j0..], ldc);
            i += 1;
        }
    }
}

/// One `R × NR` block of `C (+)= Aᵀ · B`, accumulated in registers over the whole `k`.
#[inline(always)]
fn micro<const R: usize, const ACC: bool, const FMA: bool>(
    k: usize,
    at: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
) {
    let mut acc = [[0.0f32; NR]; R];
    if ACC {
        for (r, acc) in acc.iter_mut().enumerate() {
            acc.copy_from_slice(&c[r * ldc..r * ldc + NR]);
        }
    }
    for p in 0..k {
        let ap: &[f32; R] = at[p * lda..p * lda + R].try_into().expect("R rows");
        let bp: &[f32; NR] = b[p * ldb..p * ldb + NR].try_into().expect("NR columns");
        for (acc, &a) in acc.iter_mut().zip(ap) {
            for (x, &bx) in acc.iter_mut().zip(bp) {
                *x = madd::<FMA>(a, bx, *x);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        c[r * ldc..r * ldc + NR].copy_from_slice(acc);
    }
}

/// `e^x` to about 1 ulp, written with plain arithmetic and bit casts so that it vectorises
/// (Cephes' `expf`): `x = n·ln 2 + r` with `|r| ≤ ln 2 / 2` (Cody–Waite, two-part `ln 2`), `e^r`
/// by a degree-7 polynomial, `2^n` from the exponent bits. Exactly `0` for `x ≤ −88.03` (−inf
/// included); NaN stays NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2^23: adding it rounds to an integer.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = if x < -88.0 { -88.1 } else { x };
    let x = if x > 88.0 { 88.0 } else { x };
    let t = x * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let n_int = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    // n = −127 gives the bit pattern 0, i.e. 2^n = 0: fully underflowed entries are exact zeros.
    let pow2n = f32::from_bits(((n_int.max(-127) + 127) as u32) << 23);
    let poly = 1.987_569_1e-4_f32;
    let poly = poly * r + 1.398_199_9e-3;
    let poly = poly * r + 8.333_452e-3;
    let poly = poly * r + 4.166_579_6e-2;
    let poly = poly * r + 1.666_666_5e-1;
    let poly = poly * r + 0.5;
    (poly * (r * r) + r + 1.0) * pow2n
}

/// Call `f(i, visible)` for the 64 columns of a row whose visible columns are `lo ≤ i < hi`.
/// A row visible whole takes a loop without the mask (the common case: only diagonal and
/// ragged tiles are masked), so both loops vectorise to straight-line code. (The backward's
/// row functions spell the same split out with iterators, which LLVM vectorises better there.)
#[inline(always)]
fn for_columns(lo: usize, hi: usize, mut f: impl FnMut(usize, bool)) {
    if lo == 0 && hi >= BLOCK {
        (0..BLOCK).for_each(|i| f(i, true));
    } else {
        (0..BLOCK).for_each(|i| f(i, i >= lo && i < hi));
    }
}

/// Forward, transposed tile (one key per row, one query per column): fold the maxima of each
/// column over the visible entries (`i ≥ lo[j]` in row `j`) into `max`.
#[inline(always)]
pub fn col_max(s: &[[f32; BLOCK]], lo: &[usize], max: &mut [f32; BLOCK]) {
    for (row, &lo) in s.iter().zip(lo) {
        for_columns(lo, BLOCK, |i, visible| {
            let x = if visible { row[i] } else { f32::NEG_INFINITY };
            max[i] = if x > max[i] { x } else { max[i] };
        });
    }
}

/// Forward, transposed tile: `s[j][i] ← exp(s[j][i] − sub[i])` on the visible entries
/// (`i ≥ lo[j]`), `0` elsewhere, adding each column's sum into `sum`.
#[inline(always)]
pub fn col_exp(s: &mut [[f32; BLOCK]], lo: &[usize], sub: &[f32; BLOCK], sum: &mut [f32; BLOCK]) {
    for (row, &lo) in s.iter_mut().zip(lo) {
        for_columns(lo, BLOCK, |i, visible| {
            let e = exp(row[i] - sub[i]);
            row[i] = if visible { e } else { 0.0 };
            sum[i] += row[i];
        });
    }
}

/// Backward, row-wise (one query per row): `p ← exp(s − lse_row)` on the visible columns
/// `lo ≤ j < hi` (`0` elsewhere), then in place `ds = p ⊙ (dp − delta_row)`; `s` becomes `P`
/// and `dp` becomes `dS`.
#[inline(always)]
pub fn grad_row(
    s: &mut [f32; BLOCK],
    dp: &mut [f32; BLOCK],
    lse: f32,
    delta: f32,
    lo: usize,
    hi: usize,
) {
    let cols = s.iter_mut().zip(dp.iter_mut());
    if lo == 0 && hi >= BLOCK {
        for (x, d) in cols {
            let p = exp(*x - lse);
            *x = p;
            *d = p * (*d - delta);
        }
    } else {
        for (j, (x, d)) in cols.enumerate() {
            let e = exp(*x - lse);
            let p = if j >= lo && j < hi { e } else { 0.0 };
            *x = p;
            *d = p * (*d - delta);
        }
    }
}

/// Backward, transposed (one key per row, one query per column): `p ← exp(s − lse[col])`
/// on the visible columns `lo ≤ col < hi`, and `ds = p ⊙ (dp − delta[col])`.
#[inline(always)]
pub fn grad_row_t(
    s: &mut [f32; BLOCK],
    dp: &mut [f32; BLOCK],
    lse: &[f32; BLOCK],
    delta: &[f32; BLOCK],
    lo: usize,
    hi: usize,
) {
    let cols = s.iter_mut().zip(dp.iter_mut()).zip(lse).zip(delta);
    if lo == 0 && hi >= BLOCK {
        for (((x, d), &l), &dl) in cols {
            let p = exp(*x - l);
            *x = p;
            *d = p * (*d - dl);
        }
    } else {
        for (j, (((x, d), &l), &dl)) in cols.enumerate() {
            let e = exp(*x - l);
            let p = if j >= lo && j < hi { e } else { 0.0 };
            *x = p;
            *d = p * (*d - dl);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate_and_underflows_to_zero() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let got = exp(x) as f64;
            let want = (x as f64).exp();
            worst = worst.max(((got - want) / want).abs());
            x += 0.013;
        }
        assert!(worst < 2.5e-7, "relative error {worst}");
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-100.0), 0.0);
        assert!(exp(f32::NAN).is_nan());
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn gemm_matches_naive_on_ragged_shapes() {
        let (m, n, k) = (11, 32, 5);
        let at: Vec<f32> = (0..k * 13).map(|i| (i % 7) as f32 - 3.0).collect();
        let b: Vec<f32> = (0..k * 40).map(|i| (i % 5) as f32 * 0.5).collect();
        let mut c = vec![1.0f32; m * 33];
        gemm_tn::<true, false>(m, n, k, &at, 13, &b, 40, &mut c, 33);
        for i in 0..m {
            for j in 0..33 {
                let want = if j < n {
                    1.0 + (0..k).map(|p| at[p * 13 + i] * b[p * 40 + j]).sum::<f32>()
                } else {
                    1.0
                };
                assert_eq!(c[i * 33 + j], want, "({i}, {j})");
            }
        }
    }
}
