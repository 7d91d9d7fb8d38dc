//! Philox4x32-10 (Salmon et al., Random123) and the Gumbel noise of SPEC §4.
//!
//! The noise of flat element `n` depends only on `(seed, offset, n)`, so every backend draws the
//! same raw words in any order and any tiling: a counter-based generator has no state to carry.

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// The high and low halves of the 64-bit product `a · b`.
#[inline(always)]
fn mulhilo(a: u32, b: u32) -> (u32, u32) {
    let p = a as u64 * b as u64;
    ((p >> 32) as u32, p as u32)
}

/// Philox4x32 with 10 rounds: four random words for one 128-bit counter under a 64-bit key.
#[inline]
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut c = counter;
    let mut k = key;
    for round in 0..10 {
        if round > 0 {
            k[0] = k[0].wrapping_add(W0);
            k[1] = k[1].wrapping_add(W1);
        }
        let (hi0, lo0) = mulhilo(M0, c[0]);
        let (hi1, lo1) = mulhilo(M1, c[2]);
        c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0];
    }
    c
}

/// The Philox call that covers flat elements `4c .. 4c + 3` (SPEC §4).
#[inline]
pub fn gumbel_block(seed: u64, offset: u64, c: u64) -> [u32; 4] {
    philox4x32_10(
        [
            c as u32,
            (c >> 32) as u32,
            offset as u32,
            (offset >> 32) as u32,
        ],
        [seed as u32, (seed >> 32) as u32],
    )
}

/// The raw 32-bit word for flat element `n`.
#[inline]
pub fn gumbel_word(seed: u64, offset: u64, n: u64) -> u32 {
    gumbel_block(seed, offset, n / 4)[(n % 4) as usize]
}

/// Uniform `u = (x >> 9 + 0.5) · 2⁻²³` in `[2⁻²⁴, 1 − 2⁻²⁴]`, and `t = 1 − u`; both exact in f32.
#[inline(always)]
pub fn uniform_from_word(x: u32) -> (f32, f32) {
    let u = ((x >> 9) as f32 + 0.5) * (1.0 / 8_388_608.0);
    (u, 1.0 - u)
}

/// Gumbel noise `g = −ln(−ln u)` from a raw word, with `−ln u` computed as `−log1p(−t)` so that
/// it stays accurate near `u = 1`.
#[inline(always)]
pub fn gumbel_from_word(x: u32) -> f32 {
    let (_, t) = uniform_from_word(x);
    let e = -(-t).ln_1p();
    -e.ln()
}

/// The Gumbel noise of flat element `n` (SPEC §4).
#[inline]
pub fn gumbel_noise_at(seed: u64, offset: u64, n: u64) -> f32 {
    gumbel_from_word(gumbel_word(seed, offset, n))
}

/// Fill `out` with the noise of flat elements `start .. start + out.len()`.
pub fn fill_gumbel_noise(seed: u64, offset: u64, start: u64, out: &mut [f32]) {
    let mut n = start;
    let mut i = 0;
    while i < out.len() {
        let words = gumbel_block(seed, offset, n / 4);
        let lane = (n % 4) as usize;
        let take = (4 - lane).min(out.len() - i);
        for j in 0..take {
            out[i + j] = gumbel_from_word(words[lane + j]);
        }
        i += take;
        n += take as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random123_known_answers() {
        assert_eq!(
            philox4x32_10([0; 4], [0; 2]),
            [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
        );
        assert_eq!(
            philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
        );
        assert_eq!(
            philox4x32_10(
                [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
                [0xa4093822, 0x299f31d0]
            ),
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
        );
    }

    #[test]
    fn uniform_is_exact_and_open() {
        let (u0, t0) = uniform_from_word(0);
        assert_eq!(u0, 2f32.powi(-24));
        assert_eq!(t0, 1.0 - 2f32.powi(-24));
        let (u1, t1) = uniform_from_word(u32::MAX);
        assert_eq!(u1, 1.0 - 2f32.powi(-24));
        assert_eq!(t1, 2f32.powi(-24));
        // Near u = 1 the noise is large and finite: g = −ln(−ln(1 − 2⁻²⁴)) ≈ 16.64.
        let g = gumbel_from_word(u32::MAX);
        assert!((g as f64 - (-(-(1.0f64 - 2f64.powi(-24)).ln()).ln())).abs() < 1e-5);
    }

    #[test]
    fn fill_matches_pointwise() {
        let mut out = vec![0.0; 11];
        fill_gumbel_noise(7, 3, 5, &mut out);
        for (i, &g) in out.iter().enumerate() {
            assert_eq!(g.to_bits(), gumbel_noise_at(7, 3, 5 + i as u64).to_bits());
        }
    }
}
