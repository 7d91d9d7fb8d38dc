//! Gumbel-Softmax on the CPU (SPEC §4).
//!
//! The forward is fused per row, rows in parallel; each rayon task (a fixed number of rows) is a
//! `Task` run through the crate's runtime dispatch (`crate::simd`), so the same source runs
//! as AVX2+FMA code where the CPU has it. Per row, with per-task scratch rows that stay in
//! L1/L2: (1) the row's raw Philox words, one call per 4 elements, 8 counters at a time in
//! vector lanes (each state word as 4 × u64 pairs of u32 lanes, so that the 32×32→64-bit
//! products are AVX2's `vpmuludq`; portable Rust, no intrinsics); (2) `s = logits + g` with the noise `g = −ln(−ln u)`, elementwise; then the max
//! in 8 lanes; (3) `exp((s − max) / tau)`, elementwise, and its sum in 8 lanes per block of 256;
//! (4) normalisation and the writes of `y` / `y_soft`. The max is subtracted before the
//! division by `tau`, so that the rounding of `s` is not amplified twice at small temperatures.
//! The scratch row is padded to a multiple of 8 with `−∞` (its `exp` is 0), so every lane loop
//! is full-width.
//!
//! `ln` and `exp` are branch-free f32 polynomials (Cephes-style, within ~2 ulp) so that they
//! vectorise; libm's scalar calls cost more than everything else. `−ln u` near
//! `u = 1` is accurate without `log1p`: the argument reduction forms `u − 1 = −t` exactly and the
//! polynomial is in `u − 1`, which is what SPEC's `−log1p(−t)` asks for. Every loop is
//! elementwise or sums in a fixed lane order, so the bits depend only on the inputs and on the
//! instruction set (the FMA path fuses the polynomial steps), never on the thread count.
//!
//! The backward is the straight-through formula, one row at a time.

use crate::simd::{Isa, Task, madd};
use flashneck_core::philox::gumbel_block;
use flashneck_core::{Element, GumbelParams};
use rayon::prelude::*;

/// Rows per parallel task, chosen so that a task holds at least this many elements.
const TASK_ELEMS: usize = 32 * 1024;
/// Lanes of the reductions (max, sum): one AVX2 register of f32.
const LANES: usize = 8;

/// Sum of `f(i)` for `i in 0..n` in f32, in 8 lanes per block of 256 elements, then over the
/// blocks: the rounding error grows with `n / 256 + 32`, not with `n` (10⁴ classes keep the
/// f32 tolerance), and the lanes vectorise.
#[inline(always)]
fn blocked_sum(n: usize, f: impl Fn(usize) -> f32) -> f32 {
    const BLOCK: usize = 256;
    let mut total = 0.0f32;
    let mut start = 0;
    while start < n {
        let end = (start + BLOCK).min(n);
        let mut acc = [0.0f32; LANES];
        let mut i = start;
        while i + LANES <= end {
            for (l, a) in acc.iter_mut().enumerate() {
                *a += f(i + l);
            }
            i += LANES;
        }
        for j in i..end {
            acc[j - i] += f(j);
        }
        total += acc.iter().sum::<f32>();
        start = end;
    }
    total
}

/// Rows per rayon task for rows of `k` elements.
fn task_rows(k: usize) -> usize {
    (TASK_ELEMS / k.max(1)).max(1)
}

/// Natural log of a positive normal f32 (Cephes `logf`): `x = m · 2^e` with `m ∈ [√½, √2)`,
/// `f = m − 1` (exact), `ln x = f − f²/2 + f³·P(f) + e·ln 2`.
#[inline(always)]
fn ln<const FMA: bool>(x: f32) -> f32 {
    let bits = x.to_bits();
    let mut e = ((bits >> 23) & 0xff) as i32 - 126;
    let m = f32::from_bits((bits & 0x007f_ffff) | 0x3f00_0000); // [0.5, 1)
    let small = m < std::f32::consts::FRAC_1_SQRT_2;
    e -= small as i32;
    let f = if small { m + m - 1.0 } else { m - 1.0 };
    let z = f * f;
    let mut y = 7.037_683_6e-2;
    for c in [
        -1.151_461e-1,
        1.167_699_9e-1,
        -1.242_014_1e-1,
        1.424_932_3e-1,
        -1.666_805_8e-1,
        2.000_071_4e-1,
        -2.499_999_4e-1,
        3.333_333e-1,
    ] {
        y = madd::<FMA>(y, f, c);
    }
    let fe = e as f32;
    let y = madd::<FMA>(y * f, z, madd::<FMA>(-2.121_944_4e-4, fe, -0.5 * z));
    madd::<FMA>(0.693_359_4, fe, f + y)
}

/// `exp(x)` for `x <= 0` (Cephes `expf`): `x = n ln 2 + r`, `|r| <= ln2/2`, a degree-6
/// polynomial in `r`, scaled by `2^n` through the exponent bits. Below `−87` (and for `−∞`) it
/// returns 0.
#[inline(always)]
fn exp<const FMA: bool>(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 · 2²³: adding it rounds to an integer.
    let v = x.max(-87.0);
    let t = madd::<FMA>(v, std::f32::consts::LOG2_E, MAGIC);
    let n = t - MAGIC;
    // `n` as an integer: the low mantissa bits of `t` (|n| ≤ 126, far below 2²²).
    let ni = t.to_bits().wrapping_sub(MAGIC.to_bits()) as i32;
    let r = madd::<FMA>(n, 2.121_944_4e-4, madd::<FMA>(n, -0.693_359_4, v));
    let z = r * r;
    let mut p = 1.987_569_1e-4;
    for c in [
        1.398_2e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ] {
        p = madd::<FMA>(p, r, c);
    }
    let y = madd::<FMA>(p, z, r + 1.0);
    let scale = f32::from_bits(((ni + 127) as u32) << 23);
    if x < -87.0 { 0.0 } else { y * scale }
}

/// Gumbel noise from a raw word: `u = (x >> 9 + 0.5) · 2⁻²³`, `e = −ln u`, `g = −ln e`.
#[inline(always)]
fn gumbel<const FMA: bool>(word: u32) -> f32 {
    // `x >> 9 < 2²³` converts exactly through i32 (a single vector instruction, unlike u32).
    let u = (((word >> 9) as i32) as f32 + 0.5) * (1.0 / 8_388_608.0);
    -ln::<FMA>(-ln::<FMA>(u))
}

/// Philox counters evaluated together: 8, as 4 pairs of u32 lanes packed in u64 (one AVX2
/// register per state word).
const PAIRS: usize = 4;
/// Counters per batch.
const BATCH: usize = 2 * PAIRS;

/// One Philox state word of [`BATCH`] counters: counter `2i` in the low half of `.0[i]`,
/// counter `2i + 1` in the high half.
#[derive(Clone, Copy)]
struct Pairs([u64; PAIRS]);

const LO: u64 = 0xFFFF_FFFF;

impl Pairs {
    fn splat(v: u32) -> Pairs {
        Pairs([v as u64 | (v as u64) << 32; PAIRS])
    }

    /// The high and low 32 bits of `m · x` for every u32 lane `x`: two 32×32→64-bit products
    /// per pair (the even lanes, and the odd lanes shifted down), which is exactly AVX2's
    /// `vpmuludq`, then the halves regrouped with shifts and masks.
    #[inline(always)]
    fn mulhilo(self, m: u32) -> (Pairs, Pairs) {
        let (mut hi, mut lo) = ([0u64; PAIRS], [0u64; PAIRS]);
        for i in 0..PAIRS {
            let even = (self.0[i] & LO) * m as u64;
            let odd = (self.0[i] >> 32) * m as u64;
            hi[i] = (even >> 32) | (odd & !LO);
            lo[i] = (even & LO) | (odd << 32);
        }
        (Pairs(hi), Pairs(lo))
    }

    #[inline(always)]
    fn xor(self, a: Pairs, b: Pairs) -> Pairs {
        Pairs(std::array::from_fn(|i| self.0[i] ^ a.0[i] ^ b.0[i]))
    }
}

/// Philox4x32-10 (SPEC §4, as `flashneck_core::philox::philox4x32_10`) for [`BATCH`] counters
/// at once, every step a lane-wise operation on 4 × u64 that LLVM compiles to AVX2 (or two
/// SSE2 registers in the portable build). The words-match test checks it against the core.
#[inline(always)]
fn philox_batch(ctr: [Pairs; 4], key: [u32; 2]) -> [Pairs; 4] {
    const M0: u32 = 0xD251_1F53;
    const M1: u32 = 0xCD9E_8D57;
    let [mut c0, mut c1, mut c2, mut c3] = ctr;
    let [mut k0, mut k1] = key;
    for round in 0..10 {
        if round > 0 {
            k0 = k0.wrapping_add(0x9E37_79B9);
            k1 = k1.wrapping_add(0xBB67_AE85);
        }
        let (hi0, lo0) = c0.mulhilo(M0);
        let (hi1, lo1) = c2.mulhilo(M1);
        (c0, c1, c2, c3) = (
            hi1.xor(c1, Pairs::splat(k0)),
            lo1,
            hi0.xor(c3, Pairs::splat(k1)),
            lo0,
        );
    }
    [c0, c1, c2, c3]
}

/// The raw words of the Philox calls for counters `first, first + 1, …` (SPEC §4): `out` holds
/// whole blocks of 4 words, `out[4i + lane]` = word `lane` of counter `first + i`. [`BATCH`]
/// counters at a time in vector lanes, the last few one by one.
#[inline(always)]
fn fill_blocks(seed: u64, offset: u64, first: u64, out: &mut [u32]) {
    let key = [seed as u32, (seed >> 32) as u32];
    let done = first + (out.len() / (4 * BATCH) * BATCH) as u64;
    let mut batches = out.chunks_exact_mut(4 * BATCH);
    for (b, batch) in (&mut batches).enumerate() {
        let c = first + (b * BATCH) as u64;
        // Counters c + 2i (low halves) and c + 2i + 1 (high halves).
        let lo_words = Pairs(std::array::from_fn(|i| {
            let (e, o) = (c + 2 * i as u64, c + 2 * i as u64 + 1);
            (e & LO) | (o & LO) << 32
        }));
        let hi_words = Pairs(std::array::from_fn(|i| {
            let (e, o) = (c + 2 * i as u64, c + 2 * i as u64 + 1);
            (e >> 32) | (o >> 32) << 32
        }));
        let ctr = [
            lo_words,
            hi_words,
            Pairs::splat(offset as u32),
            Pairs::splat((offset >> 32) as u32),
        ];
        let w = philox_batch(ctr, key);
        // Counter 2i's block is the low halves of the 4 words, counter 2i + 1's the high halves.
        for (i, blocks) in batch.chunks_exact_mut(8).enumerate() {
            for (j, word) in w.iter().enumerate() {
                blocks[j] = word.0[i] as u32;
                blocks[4 + j] = (word.0[i] >> 32) as u32;
            }
        }
    }
    for (i, block) in batches.into_remainder().chunks_exact_mut(4).enumerate() {
        block.copy_from_slice(&gumbel_block(seed, offset, done + i as u64));
    }
}

/// The raw words of flat elements `start .. start + len`: fills `buf` with whole Philox blocks
/// and returns the subslice that starts at `start` (`buf` needs `len + 3` words rounded up to 4).
#[inline(always)]
fn words_at(seed: u64, offset: u64, start: u64, len: usize, buf: &mut [u32]) -> &[u32] {
    let skip = (start % 4) as usize;
    let blocks = (skip + len).div_ceil(4);
    fill_blocks(seed, offset, start / 4, &mut buf[..4 * blocks]);
    &buf[skip..skip + len]
}

/// Per-task scratch rows: Philox words (`k` padded to 8, plus 3 for the alignment to 4) and
/// the soft row (`k` padded to 8).
struct Scratch {
    words: Vec<u32>,
    s: Vec<f32>,
}

impl Scratch {
    fn new(k: usize) -> Scratch {
        let padded = k.div_ceil(LANES) * LANES;
        Scratch {
            words: vec![0; (padded + 3).div_ceil(4) * 4],
            s: vec![f32::NEG_INFINITY; padded],
        }
    }
}

/// The lane-wise maximum of `s` (length a multiple of [`LANES`]).
#[inline(always)]
fn max_of(s: &[f32]) -> f32 {
    let mut m = [f32::NEG_INFINITY; LANES];
    for c in s.chunks_exact(LANES) {
        for l in 0..LANES {
            m[l] = m[l].max(c[l]);
        }
    }
    m.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b))
}

/// The index of the largest value, ties to the lowest index: per lane the first maximum, then
/// the lanes compared by value and index. `s.len()` is a multiple of [`LANES`].
#[inline(always)]
fn argmax(s: &[f32]) -> usize {
    let mut best = [f32::NEG_INFINITY; LANES];
    let mut at = [0u32; LANES];
    for (i, c) in s.chunks_exact(LANES).enumerate() {
        for l in 0..LANES {
            let better = c[l] > best[l];
            best[l] = if better { c[l] } else { best[l] };
            at[l] = if better {
                (i * LANES + l) as u32
            } else {
                at[l]
            };
        }
    }
    let mut b = 0;
    for l in 1..LANES {
        if best[l] > best[b] || (best[l] == best[b] && at[l] < at[b]) {
            b = l;
        }
    }
    at[b] as usize
}

/// One row of the forward: `y_soft` into `scratch.s`, then the writes.
#[inline(always)]
fn forward_row<T: Element, const FMA: bool>(
    p: &GumbelParams,
    row: usize,
    logits: &[T],
    y_row: &mut [T],
    ys_row: Option<&mut [f32]>,
    scratch: &mut Scratch,
) {
    let k = p.classes;
    let Scratch { words, s } = scratch;
    let words = words_at(p.seed, p.offset, (row * k) as u64, k, words);
    // (2) s = logits + g, elementwise; the padding of `s` is −∞ (the previous row left 0).
    for ((v, &w), l) in s[..k].iter_mut().zip(words).zip(logits) {
        *v = l.to_f32() + gumbel::<FMA>(w);
    }
    s[k..].fill(f32::NEG_INFINITY);
    let max = max_of(s);
    // (3) exp, elementwise, then its sum.
    let inv_tau = 1.0 / p.tau;
    for v in s.iter_mut() {
        *v = exp::<FMA>((*v - max) * inv_tau);
    }
    let inv_sum = 1.0 / blocked_sum(s.len(), |i| s[i]);
    // (4) the writes.
    if !p.hard && ys_row.is_none() {
        for (o, &v) in y_row.iter_mut().zip(s.iter()) {
            *o = T::from_f32(v * inv_sum);
        }
        return;
    }
    for v in s[..k].iter_mut() {
        *v *= inv_sum;
    }
    if let Some(ys) = ys_row {
        ys.copy_from_slice(&s[..k]);
    }
    if p.hard {
        // The padding is 0 after the exp, below any normalised value of a real class.
        let best = argmax(s);
        for (i, o) in y_row.iter_mut().enumerate() {
            *o = T::from_f32(if i == best { 1.0 } else { 0.0 });
        }
    } else {
        for (o, &v) in y_row.iter_mut().zip(s.iter()) {
            *o = T::from_f32(v);
        }
    }
}

/// The rows of one rayon task as a dispatchable [`Task`].
struct ForwardRows<'a, T> {
    p: &'a GumbelParams,
    /// Index of the task's first row.
    first_row: usize,
    /// The task's logits.
    logits: &'a [T],
    y: &'a mut [T],
    y_soft: Option<&'a mut [f32]>,
}

impl<T: Element> Task for ForwardRows<'_, T> {
    #[inline(always)]
    fn run<const FMA: bool>(&mut self) {
        let k = self.p.classes;
        let mut scratch = Scratch::new(k);
        for (r, (y_row, l_row)) in self
            .y
            .chunks_exact_mut(k)
            .zip(self.logits.chunks_exact(k))
            .enumerate()
        {
            let ys_row = self
                .y_soft
                .as_deref_mut()
                .map(|ys| &mut ys[r * k..(r + 1) * k]);
            let row = self.first_row + r;
            forward_row::<T, FMA>(self.p, row, l_row, y_row, ys_row, &mut scratch);
        }
    }
}

/// Forward: `y_soft = softmax((logits + g) / tau)`; `y = y_soft`, or its one-hot argmax (ties to
/// the lowest `k`) when `p.hard`. `y_soft`, when given, receives the soft sample.
pub fn forward<T: Element>(
    p: &GumbelParams,
    logits: &[T],
    y: &mut [T],
    y_soft: Option<&mut [f32]>,
) {
    let k = p.classes;
    if p.is_empty() {
        return;
    }
    let isa = Isa::detect();
    let rows_per_task = task_rows(k);
    let task = rows_per_task * k;
    let run = |t: usize, y: &mut [T], y_soft: Option<&mut [f32]>| {
        let logits = &logits[t * task..][..y.len()];
        let first_row = t * rows_per_task;
        isa.run(&mut ForwardRows {
            p,
            first_row,
            logits,
            y,
            y_soft,
        });
    };
    match y_soft {
        Some(ys) => y
            .par_chunks_mut(task)
            .zip(ys.par_chunks_mut(task))
            .enumerate()
            .for_each(|(t, (yt, yst))| run(t, yt, Some(yst))),
        None => y
            .par_chunks_mut(task)
            .enumerate()
            .for_each(|(t, yt)| run(t, yt, None)),
    }
}

/// Backward (straight-through): `dlogits = (1/tau) · y_soft ⊙ (dy − Σ_k y_soft · dy)`.
pub fn backward<T: Element>(p: &GumbelParams, y_soft: &[f32], dy: &[T], dlogits: &mut [T]) {
    let k = p.classes;
    if p.is_empty() {
        return;
    }
    let inv_tau = 1.0 / p.tau;
    let task = task_rows(k) * k;
    dlogits
        .par_chunks_mut(task)
        .zip(y_soft.par_chunks(task).zip(dy.par_chunks(task)))
        .for_each(|(dl_task, (ys_task, dy_task))| {
            for ((dl, ys), dy) in dl_task
                .chunks_exact_mut(k)
                .zip(ys_task.chunks_exact(k))
                .zip(dy_task.chunks_exact(k))
            {
                let dot = blocked_sum(k, |i| ys[i] * dy[i].to_f32());
                for ((o, &s), d) in dl.iter_mut().zip(ys).zip(dy) {
                    *o = T::from_f32(inv_tau * s * (d.to_f32() - dot));
                }
            }
        });
}

/// One chunk of the raw noise as a dispatchable [`Task`].
struct NoiseChunk<'a> {
    seed: u64,
    offset: u64,
    /// Flat index of `out[0]`.
    start: u64,
    out: &'a mut [f32],
}

impl Task for NoiseChunk<'_> {
    #[inline(always)]
    fn run<const FMA: bool>(&mut self) {
        let mut buf = vec![0u32; (self.out.len() + 3).div_ceil(4) * 4 + 4];
        let words = words_at(self.seed, self.offset, self.start, self.out.len(), &mut buf);
        for (o, &w) in self.out.iter_mut().zip(words) {
            *o = gumbel::<FMA>(w);
        }
    }
}

/// The raw noise `g` of flat elements `0 .. out.len()` (SPEC §4), in parallel chunks.
pub fn noise(seed: u64, offset: u64, out: &mut [f32]) {
    const CHUNK: usize = 4 * 4096;
    let isa = Isa::detect();
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(t, out)| {
        let start = (t * CHUNK) as u64;
        isa.run(&mut NoiseChunk {
            seed,
            offset,
            start,
            out,
        })
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ln_and_exp_are_within_a_few_ulp<const FMA: bool>() {
        let mut worst_ln = 0.0f64;
        let mut x = 1e-30f32;
        while x < 1e30 {
            let got = ln::<FMA>(x) as f64;
            let want = (x as f64).ln();
            worst_ln = worst_ln.max((got - want).abs() / want.abs().max(1e-30));
            x *= 1.001_7;
        }
        // Near 1 the relative accuracy of ln must hold too (u = 1 − t).
        for i in 1..100_000u32 {
            let u = 1.0 - i as f32 * 2f32.powi(-24);
            let got = ln::<FMA>(u) as f64;
            let want = (u as f64).ln();
            worst_ln = worst_ln.max((got - want).abs() / want.abs());
        }
        assert!(
            worst_ln < 3e-7,
            "ln relative error {worst_ln:e} (FMA {FMA})"
        );
        let mut worst_exp = 0.0f64;
        for i in 0..200_000 {
            let x = -(i as f32) * 4.3e-4;
            let got = exp::<FMA>(x) as f64;
            let want = (x as f64).exp();
            worst_exp = worst_exp.max((got - want).abs() / want);
        }
        assert!(
            worst_exp < 3e-7,
            "exp relative error {worst_exp:e} (FMA {FMA})"
        );
        assert_eq!(exp::<FMA>(-1e30), 0.0);
        assert_eq!(exp::<FMA>(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp::<FMA>(0.0), 1.0);
    }

    #[test]
    fn ln_and_exp_are_within_a_few_ulp_portable() {
        ln_and_exp_are_within_a_few_ulp::<false>();
    }

    /// The fused variant (run here through `mul_add`, whatever the CPU).
    #[test]
    fn ln_and_exp_are_within_a_few_ulp_fused() {
        ln_and_exp_are_within_a_few_ulp::<true>();
    }

    #[test]
    fn words_match_the_core_stream_at_any_start() {
        for start in [0u64, 1, 2, 3, 5, 4 * 9 + 3] {
            for len in [0usize, 1, 3, 4, 5, 31, 33, 70] {
                let mut buf = vec![0u32; (len + 3).div_ceil(4) * 4 + 4];
                let out = words_at(7, 11, start, len, &mut buf);
                assert_eq!(out.len(), len);
                for (i, &w) in out.iter().enumerate() {
                    let want = flashneck_core::philox::gumbel_word(7, 11, start + i as u64);
                    assert_eq!(w, want, "start {start} len {len} i {i}");
                }
            }
        }
    }

    #[test]
    fn argmax_takes_the_lowest_index_of_ties() {
        let mut s = vec![0.0f32; 24];
        assert_eq!(argmax(&s), 0);
        s[13] = 2.0;
        s[21] = 2.0;
        s[5] = 1.0;
        assert_eq!(argmax(&s), 13);
        s[4] = 2.0;
        assert_eq!(argmax(&s), 4);
        s[23] = 3.0;
        assert_eq!(argmax(&s), 23);
    }
}
