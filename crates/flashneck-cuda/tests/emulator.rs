//! Self-tests of the CPU emulator of the CUDA execution model (docs/cuda-emulator.md), on the
//! kernels of kernels/cuda/emu/tests/selftest.cu. Every expected value is computed here, in Rust,
//! from the CUDA / PTX ISA definitions, so the emulator cannot be wrong in the same way as a kernel.
//!
//! Run: CARGO_TARGET_DIR=/work/target-cuda-emu cargo test -p flashneck-cuda --test emulator
//! (and with FLASHNECK_EMU_ASAN=1 for the AddressSanitizer build).

use std::ffi::c_void;
use std::sync::mpsc;
use std::time::Duration;

use flashneck_cuda::emu::{self, EmuLaunchConfig};
use half::{bf16, f16};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// `cuLaunchKernel`-style argument array: pointers to each (mutable local) argument value.
macro_rules! args {
    ($($a:expr),* $(,)?) => { [$(std::ptr::from_mut(&mut $a).cast::<c_void>()),*] };
}

/// A generator with a fresh seed (or FLASHNECK_SEED), and the seed to print on failure.
fn fresh_rng() -> (StdRng, u64) {
    let seed = std::env::var("FLASHNECK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().r#gen());
    (StdRng::seed_from_u64(seed), seed)
}

fn cfg(grid: [u32; 3], block: [u32; 3], shared_bytes: u32) -> EmuLaunchConfig {
    EmuLaunchConfig {
        grid,
        block,
        shared_bytes,
    }
}

/// Runs `f` on its own thread and fails if it takes longer than `secs` (a hang is a failure).
fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs))
        .unwrap_or_else(|_| panic!("emulated launch did not finish within {secs} s"))
}

/// Block sums of `x` by `emu_selftest_block_sum` with `block` threads per block.
fn block_sums(x: &[f32], block: u32) -> Result<Vec<f32>, String> {
    let blocks = x.len().div_ceil(block as usize);
    let mut out = vec![f32::NAN; blocks];
    let (mut xp, mut op, mut n) = (x.as_ptr(), out.as_mut_ptr(), x.len() as i32);
    // SAFETY: each argument points at a local of the kernel's parameter type, and the buffers
    // they point at outlive the call and cover every element this launch reads or writes.
    unsafe {
        emu::launch(
            "emu_selftest_block_sum",
            &cfg([blocks as u32, 1, 1], [block, 1, 1], 0),
            &mut args!(xp, op, n),
        )
    }?;
    Ok(out)
}

#[test]
fn block_reduction_in_shared_memory_with_barriers() {
    let (mut rng, seed) = fresh_rng();
    for (n, block) in [(1000usize, 256u32), (3001, 1024), (77, 32), (5, 1)] {
        let x: Vec<f32> = (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
        let got = block_sums(&x, block).unwrap();
        for (b, (chunk, g)) in x.chunks(block as usize).zip(&got).enumerate() {
            let want: f64 = chunk.iter().map(|&v| f64::from(v)).sum();
            let bound = 1e-5 * chunk.iter().map(|&v| f64::from(v.abs())).sum::<f64>() + 1e-6;
            assert!(
                (f64::from(*g) - want).abs() <= bound,
                "seed {seed}: n {n} block {block}: block {b} sum {g}, want {want}"
            );
        }
    }
}

#[test]
fn thread_and_block_indices_in_3d() {
    let (grid, block) = ([3u32, 2, 2], [5u32, 3, 2]);
    let threads = (block.iter().product::<u32>() * grid.iter().product::<u32>()) as usize;
    let mut out = vec![u32::MAX; 8 * threads];
    let mut op = out.as_mut_ptr();
    // SAFETY: each argument points at a local of the kernel's parameter type, and the buffers
    // they point at outlive the call and cover every element this launch reads or writes.
    unsafe { emu::launch("emu_selftest_indices", &cfg(grid, block, 0), &mut args!(op)) }.unwrap();
    let mut i = 0;
    for bz in 0..grid[2] {
        for by in 0..grid[1] {
            for bx in 0..grid[0] {
                for tz in 0..block[2] {
                    for ty in 0..block[1] {
                        for tx in 0..block[0] {
                            let want = [tx, ty, tz, bx, by, bz, 30, 12];
                            assert_eq!(out[8 * i..8 * i + 8], want, "thread {i}");
                            i += 1;
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn dynamic_shared_memory_is_per_block() {
    let (mut rng, seed) = fresh_rng();
    let (blocks, block) = (7usize, 96usize);
    let x: Vec<f32> = (0..blocks * block)
        .map(|_| rng.gen_range(-5.0f32..5.0))
        .collect();
    let mut out = vec![f32::NAN; x.len()];
    let (mut xp, mut op) = (x.as_ptr(), out.as_mut_ptr());
    let c = cfg(
        [blocks as u32, 1, 1],
        [block as u32, 1, 1],
        (block * 4) as u32,
    );
    // SAFETY: each argument points at a local of the kernel's parameter type, and the buffers
    // they point at outlive the call and cover every element this launch reads or writes.
    unsafe { emu::launch("emu_selftest_reverse", &c, &mut args!(xp, op)) }.unwrap();
    for (b, (got, src)) in out.chunks(block).zip(x.chunks(block)).enumerate() {
        let want: Vec<f32> = src.iter().rev().copied().collect();
        assert_eq!(got, &want[..], "seed {seed}: block {b}");
    }
}

/// CUDA's definition of the source lane of each shuffle (None: the lane keeps its own value).
fn shuffle_sources(lane: usize, delta: usize, width: usize) -> [usize; 4] {
    let base = lane - lane % width;
    let idx = base + ((5 * lane + 3) % 32) % width;
    let up = if lane - base >= delta {
        lane - delta
    } else {
        lane
    };
    let down = if lane - base + delta < width {
        lane + delta
    } else {
        lane
    };
    let xor = if (lane ^ delta) < base + width {
        lane ^ delta
    } else {
        lane
    };
    [idx, up, down, xor]
}

#[test]
fn shuffles_and_votes_follow_cuda_semantics() {
    let (mut rng, seed) = fresh_rng();
    let (blocks, block) = (3usize, 64usize);
    for (delta, width) in [
        (1usize, 32usize),
        (3, 32),
        (16, 32),
        (1, 16),
        (5, 8),
        (16, 8),
        (2, 4),
        (1, 1),
    ] {
        let x: Vec<f32> = (0..blocks * block)
            .map(|_| rng.gen_range(-3.0f32..3.0))
            .collect();
        let mut out = vec![f32::NAN; 7 * x.len()];
        let (mut xp, mut op, mut d, mut w) =
            (x.as_ptr(), out.as_mut_ptr(), delta as i32, width as i32);
        let c = cfg([blocks as u32, 1, 1], [block as u32, 1, 1], 0);
        // SAFETY: each argument points at a local of the kernel's parameter type, and the buffers
        // they point at outlive the call and cover every element this launch reads or writes.
        unsafe { emu::launch("emu_selftest_warp", &c, &mut args!(xp, op, d, w)) }.unwrap();
        for (wi, warp) in x.chunks(32).enumerate() {
            let ballot = warp
                .iter()
                .enumerate()
                .fold(0u32, |m, (l, &v)| m | (u32::from(v > 0.0) << l));
            let any = warp.iter().any(|&v| v > 2.0);
            let all = warp.iter().all(|&v| v > -2.0);
            for lane in 0..32 {
                let i = 32 * wi + lane;
                let got = &out[7 * i..7 * i + 7];
                let ctx = format!("seed {seed}: delta {delta} width {width} thread {i}");
                for (k, src) in shuffle_sources(lane, delta, width).into_iter().enumerate() {
                    assert_eq!(got[k].to_bits(), warp[src].to_bits(), "{ctx}: shuffle {k}");
                }
                let want_ballot = if lane < 16 {
                    (ballot & 0xffff) + 1
                } else {
                    ballot
                };
                assert_eq!(got[4].to_bits(), want_ballot, "{ctx}: ballot");
                assert_eq!(got[5], f32::from(u8::from(any)), "{ctx}: any");
                assert_eq!(got[6], f32::from(u8::from(all)), "{ctx}: all");
            }
        }
    }
}

#[test]
fn threads_exiting_before_a_barrier_are_reported() {
    let err = within(60, || {
        let mut out = vec![0.0f32; 64];
        let (mut op, mut keep) = (out.as_mut_ptr(), 40i32);
        // SAFETY: each argument points at a local of the kernel's parameter type, and the buffers
        // they point at outlive the call and cover every element this launch reads or writes.
        unsafe {
            emu::launch(
                "emu_selftest_exit_before_barrier",
                &cfg([2, 1, 1], [64, 1, 1], 0),
                &mut args!(op, keep),
            )
        }
    })
    .expect_err("barrier divergence must be an error");
    assert!(err.contains("barrier divergence in block ("), "{err}");
    assert!(
        err.contains("threads 0..39 at __syncthreads #1 (selftest.cu:"),
        "{err}"
    );
    assert!(err.contains("threads 40..63 exited"), "{err}");
    // The worker threads that abandoned that block run the next grid correctly.
    let x: Vec<f32> = (0..300).map(|i| i as f32).collect();
    let sums = within(60, move || block_sums(&x, 128)).unwrap();
    assert_eq!(sums, vec![8128.0, 24512.0, 12210.0]);
}

#[test]
fn threads_at_different_barriers_are_reported() {
    let err = within(60, || {
        let mut out = vec![0.0f32; 64];
        let (mut op, mut split) = (out.as_mut_ptr(), 32i32);
        // SAFETY: each argument points at a local of the kernel's parameter type, and the buffers
        // they point at outlive the call and cover every element this launch reads or writes.
        unsafe {
            emu::launch(
                "emu_selftest_two_barriers",
                &cfg([1, 1, 1], [64, 1, 1], 0),
                &mut args!(op, split),
            )
        }
    })
    .expect_err("barrier divergence must be an error");
    assert!(err.contains("barrier divergence in block (0,0,0)"), "{err}");
    let sites: Vec<&str> = err.split("at __syncthreads #1 (").skip(1).collect();
    assert_eq!(sites.len(), 2, "{err}");
    assert_ne!(
        sites[0].split(')').next(),
        sites[1].split(')').next(),
        "{err}"
    );
}

#[test]
fn a_shuffle_with_an_exited_lane_is_reported() {
    let err = within(60, || {
        let mut out = vec![0.0f32; 32];
        let (mut op, mut gone) = (out.as_mut_ptr(), 5i32);
        // SAFETY: each argument points at a local of the kernel's parameter type, and the buffers
        // they point at outlive the call and cover every element this launch reads or writes.
        unsafe {
            emu::launch(
                "emu_selftest_shuffle_after_exit",
                &cfg([1, 1, 1], [32, 1, 1], 0),
                &mut args!(op, gone),
            )
        }
    })
    .expect_err("an incomplete shuffle must be an error");
    assert!(
        err.contains("warp collective cannot complete in block (0,0,0)"),
        "{err}"
    );
    assert!(
        err.contains("threads 0..4 at __shfl_xor_sync mask 0xffffffff"),
        "{err}"
    );
    assert!(err.contains("thread 5 exited"), "{err}");
}

/// A half-precision type of the mma: rounding from f32 and the bits.
trait Half: Copy {
    fn round(v: f32) -> Self;
    fn bits(self) -> u16;
    fn value(self) -> f64;
    const BF16: i32;
}

impl Half for f16 {
    fn round(v: f32) -> Self {
        f16::from_f32(v)
    }
    fn bits(self) -> u16 {
        self.to_bits()
    }
    fn value(self) -> f64 {
        f64::from(self.to_f32())
    }
    const BF16: i32 = 0;
}

impl Half for bf16 {
    fn round(v: f32) -> Self {
        bf16::from_f32(v)
    }
    fn bits(self) -> u16 {
        self.to_bits()
    }
    fn value(self) -> f64 {
        f64::from(self.to_f32())
    }
    const BF16: i32 = 1;
}

fn pack<H: Half>(lo: H, hi: H) -> u32 {
    u32::from(lo.bits()) | (u32::from(hi.bits()) << 16)
}

/// D = A * B + C in f64 with A 16x16, B 16x8 (row-major [k][n]), C 16x8.
fn matmul(a: &[f64], b: &[f64], c: &[f64]) -> Vec<f64> {
    let mut d = c.to_vec();
    for m in 0..16 {
        for n in 0..8 {
            d[m * 8 + n] += (0..16).map(|k| a[m * 16 + k] * b[k * 8 + n]).sum::<f64>();
        }
    }
    d
}

/// Error bound of an f32 accumulation of 16 exact products and C.
fn mma_bound(a: &[f64], b: &[f64], c: &[f64], m: usize, n: usize) -> f64 {
    let mag: f64 = (0..16)
        .map(|k| (a[m * 16 + k] * b[k * 8 + n]).abs())
        .sum::<f64>()
        + c[m * 8 + n].abs();
    17.0 * f64::from(f32::EPSILON) * mag + 1e-30
}

fn check_mma_fragments<H: Half>() {
    let (mut rng, seed) = fresh_rng();
    let blocks = 3;
    let (mut fa, mut fb, mut fc) = (
        vec![0u32; blocks * 128],
        vec![0u32; blocks * 64],
        vec![0f32; blocks * 128],
    );
    let mut mats = Vec::new();
    for blk in 0..blocks {
        let a: Vec<H> = (0..256)
            .map(|_| H::round(rng.gen_range(-2.0f32..2.0)))
            .collect();
        let b: Vec<H> = (0..128)
            .map(|_| H::round(rng.gen_range(-2.0f32..2.0)))
            .collect();
        let c: Vec<f32> = (0..128).map(|_| rng.gen_range(-4.0f32..4.0)).collect();
        // PTX ISA fragment layouts, g = lane / 4, t = lane % 4.
        for lane in 0..32 {
            let (g, t, l) = (lane / 4, lane % 4, blk * 32 + lane);
            let at = |r: usize, k: usize| a[r * 16 + k];
            let bt = |k: usize, n: usize| b[k * 8 + n];
            fa[4 * l] = pack(at(g, 2 * t), at(g, 2 * t + 1));
            fa[4 * l + 1] = pack(at(g + 8, 2 * t), at(g + 8, 2 * t + 1));
            fa[4 * l + 2] = pack(at(g, 2 * t + 8), at(g, 2 * t + 9));
            fa[4 * l + 3] = pack(at(g + 8, 2 * t + 8), at(g + 8, 2 * t + 9));
            fb[2 * l] = pack(bt(2 * t, g), bt(2 * t + 1, g));
            fb[2 * l + 1] = pack(bt(2 * t + 8, g), bt(2 * t + 9, g));
            fc[4 * l..4 * l + 4].copy_from_slice(&[
                c[g * 8 + 2 * t],
                c[g * 8 + 2 * t + 1],
                c[(g + 8) * 8 + 2 * t],
                c[(g + 8) * 8 + 2 * t + 1],
            ]);
        }
        mats.push((a, b, c));
    }
    let mut d = vec![f32::NAN; blocks * 128];
    let (mut ap, mut bp, mut cp, mut dp, mut kind) = (
        fa.as_ptr(),
        fb.as_ptr(),
        fc.as_ptr(),
        d.as_mut_ptr(),
        H::BF16,
    );
    let c = cfg([blocks as u32, 1, 1], [32, 1, 1], 0);
    // SAFETY: each argument points at a local of the kernel's parameter type, and the buffers
    // they point at outlive the call and cover every element this launch reads or writes.
    unsafe { emu::launch("emu_selftest_mma", &c, &mut args!(ap, bp, cp, dp, kind)) }.unwrap();
    for (blk, (a, b, c)) in mats.iter().enumerate() {
        let a: Vec<f64> = a.iter().map(|v| v.value()).collect();
        let b: Vec<f64> = b.iter().map(|v| v.value()).collect();
        let c: Vec<f64> = c.iter().map(|&v| f64::from(v)).collect();
        let want = matmul(&a, &b, &c);
        for lane in 0..32 {
            let (g, t) = (lane / 4, lane % 4);
            for (i, (m, n)) in [
                (g, 2 * t),
                (g, 2 * t + 1),
                (g + 8, 2 * t),
                (g + 8, 2 * t + 1),
            ]
            .into_iter()
            .enumerate()
            {
                let got = f64::from(d[(blk * 32 + lane) * 4 + i]);
                let w = want[m * 8 + n];
                assert!(
                    (got - w).abs() <= mma_bound(&a, &b, &c, m, n),
                    "seed {seed}: block {blk} lane {lane} d[{i}] = D[{m}][{n}] = {got}, want {w}"
                );
            }
        }
    }
}

#[test]
fn mma_f16_fragments_multiply() {
    check_mma_fragments::<f16>();
}

#[test]
fn mma_bf16_fragments_multiply() {
    check_mma_fragments::<bf16>();
}

fn check_ldmatrix(trans: bool) {
    let (mut rng, seed) = fresh_rng();
    let m: Vec<u16> = (0..256).map(|_| rng.r#gen()).collect(); // 4 matrices of 8x8, row-major
    let mut out = vec![0u32; 128];
    let (mut mp, mut op, mut tr) = (m.as_ptr(), out.as_mut_ptr(), i32::from(trans));
    // SAFETY: each argument points at a local of the kernel's parameter type, and the buffers
    // they point at outlive the call and cover every element this launch reads or writes.
    unsafe {
        emu::launch(
            "emu_selftest_ldmatrix",
            &cfg([1, 1, 1], [32, 1, 1], 0),
            &mut args!(mp, op, tr),
        )
    }
    .unwrap();
    let at = |i: usize, r: usize, c: usize| u32::from(m[i * 64 + r * 8 + c]);
    for lane in 0..32 {
        for i in 0..4 {
            let (row, col) = (lane / 4, 2 * (lane % 4));
            let want = if trans {
                at(i, col, row) | (at(i, col + 1, row) << 16)
            } else {
                at(i, row, col) | (at(i, row, col + 1) << 16)
            };
            assert_eq!(
                out[4 * lane + i],
                want,
                "seed {seed}: trans {trans} lane {lane} register {i}"
            );
        }
    }
}

#[test]
fn ldmatrix_x4_distributes_rows() {
    check_ldmatrix(false);
}

#[test]
fn ldmatrix_x4_trans_distributes_columns() {
    check_ldmatrix(true);
}

fn check_mma_tile<H: Half>() {
    let (mut rng, seed) = fresh_rng();
    let a: Vec<H> = (0..256)
        .map(|_| H::round(rng.gen_range(-3.0f32..3.0)))
        .collect();
    let b: Vec<H> = (0..128)
        .map(|_| H::round(rng.gen_range(-3.0f32..3.0)))
        .collect();
    let (abits, bbits): (Vec<u16>, Vec<u16>) = (
        a.iter().map(|v| v.bits()).collect(),
        b.iter().map(|v| v.bits()).collect(),
    );
    let mut d = vec![f32::NAN; 128];
    let (mut ap, mut bp, mut dp, mut kind) =
        (abits.as_ptr(), bbits.as_ptr(), d.as_mut_ptr(), H::BF16);
    // SAFETY: each argument points at a local of the kernel's parameter type, and the buffers
    // they point at outlive the call and cover every element this launch reads or writes.
    unsafe {
        emu::launch(
            "emu_selftest_mma_tile",
            &cfg([1, 1, 1], [32, 1, 1], 0),
            &mut args!(ap, bp, dp, kind),
        )
    }
    .unwrap();
    let a: Vec<f64> = a.iter().map(|v| v.value()).collect();
    let b: Vec<f64> = b.iter().map(|v| v.value()).collect();
    let zero = vec![0.0; 128];
    let want = matmul(&a, &b, &zero);
    for m in 0..16 {
        for n in 0..8 {
            let got = f64::from(d[m * 8 + n]);
            assert!(
                (got - want[m * 8 + n]).abs() <= mma_bound(&a, &b, &zero, m, n),
                "seed {seed}: D[{m}][{n}] = {got}, want {}",
                want[m * 8 + n]
            );
        }
    }
}

#[test]
fn ldmatrix_and_mma_compose_into_a_matrix_product_f16() {
    check_mma_tile::<f16>();
}

#[test]
fn ldmatrix_and_mma_compose_into_a_matrix_product_bf16() {
    check_mma_tile::<bf16>();
}

#[test]
fn conversions_round_to_nearest_even() {
    let (mut rng, seed) = fresh_rng();
    // Every 16-bit pattern decoded as f16 and as bf16; f32 inputs: random bit patterns, the exact
    // midpoints between neighbouring f16 and bf16 values (ties), and special values.
    let h_in: Vec<u16> = (0..=u16::MAX).collect();
    let mut x: Vec<f32> = (0..20000).map(|_| f32::from_bits(rng.r#gen())).collect();
    for _ in 0..20000 {
        let h: u16 = rng.r#gen::<u16>() & 0x7bff;
        let lo = f16::from_bits(h).to_f32();
        let hi = f16::from_bits(h + 1).to_f32();
        x.push((lo + hi) / 2.0);
        let b = rng.r#gen::<u16>() & 0x7f7f;
        let bits = (u32::from(b) << 16) | 0x8000 | (u32::from(rng.r#gen::<bool>()) << 16);
        x.push(f32::from_bits(bits)); // bf16 ties, on even and odd mantissas
        x.push(rng.gen_range(-1e-4f32..1e-4)); // f16 subnormals
    }
    x.extend([
        0.0,
        -0.0,
        65504.0,
        65519.99,
        65520.0,
        -65520.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
    ]);
    x.extend([
        f32::MAX,
        f32::MIN_POSITIVE,
        2.9802322e-8,
        2.9802326e-8,
        5.9604645e-8,
        1e-45,
    ]);
    let n = x.len().max(h_in.len());
    x.resize(n, 1.0);
    let (mut h, mut bf, mut back) = (vec![0u16; n], vec![0u16; n], vec![f32::NAN; 2 * n]);
    let (mut xp, mut hip, mut hp, mut bp, mut backp, mut count) = (
        x.as_ptr(),
        h_in.as_ptr(),
        h.as_mut_ptr(),
        bf.as_mut_ptr(),
        back.as_mut_ptr(),
        h_in.len() as i32,
    );
    let c = cfg([(n as u32).div_ceil(256), 1, 1], [256, 1, 1], 0);
    // SAFETY: each argument points at a local of the kernel's parameter type, and the buffers
    // they point at outlive the call and cover every element this launch reads or writes.
    unsafe {
        emu::launch(
            "emu_selftest_convert",
            &c,
            &mut args!(xp, hip, hp, bp, backp, count),
        )
    }
    .unwrap();
    for (i, &v) in x[..h_in.len()].iter().enumerate() {
        let (wh, wb) = (f16::from_f32(v), bf16::from_f32(v));
        if v.is_nan() {
            assert!(
                f16::from_bits(h[i]).is_nan() && bf16::from_bits(bf[i]).is_nan(),
                "NaN stays NaN"
            );
        } else {
            assert_eq!(
                h[i],
                wh.to_bits(),
                "seed {seed}: f16 of {v:e} ({:#010x})",
                v.to_bits()
            );
            assert_eq!(
                bf[i],
                wb.to_bits(),
                "seed {seed}: bf16 of {v:e} ({:#010x})",
                v.to_bits()
            );
        }
    }
    for (i, &bits) in h_in.iter().enumerate() {
        let (wh, wb) = (
            f16::from_bits(bits).to_f32(),
            bf16::from_bits(bits).to_f32(),
        );
        let (gh, gb) = (back[2 * i], back[2 * i + 1]);
        assert!(
            gh.to_bits() == wh.to_bits() || (gh.is_nan() && wh.is_nan()),
            "f16 {bits:#06x}: {gh} vs {wh}"
        );
        assert!(
            gb.to_bits() == wb.to_bits() || (gb.is_nan() && wb.is_nan()),
            "bf16 {bits:#06x}: {gb} vs {wb}"
        );
    }
}

#[test]
fn parallel_blocks_match_one_thread() {
    let (mut rng, seed) = fresh_rng();
    let x: Vec<f32> = (0..128 * 61 + 17)
        .map(|_| rng.gen_range(-1.0f32..1.0))
        .collect();
    let run = |threads| {
        emu::set_worker_threads(Some(threads));
        let sums = block_sums(&x, 128);
        emu::set_worker_threads(None);
        sums.unwrap()
    };
    let one = run(1);
    let many = run(4);
    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&one), bits(&many), "seed {seed}");

    // Blocks running at the same time on different OS threads each own their static shared memory.
    let mut bad = vec![0u32; 64];
    let mut bp = bad.as_mut_ptr();
    emu::set_worker_threads(Some(4));
    // SAFETY: each argument points at a local of the kernel's parameter type, and the buffers
    // they point at outlive the call and cover every element this launch reads or writes.
    let result = unsafe {
        emu::launch(
            "emu_selftest_shared_owner",
            &cfg([64, 1, 1], [256, 1, 1], 0),
            &mut args!(bp),
        )
    };
    emu::set_worker_threads(None);
    result.unwrap();
    assert!(
        bad.iter().all(|&b| b == 0),
        "blocks saw each other's shared memory: {bad:?}"
    );
}

#[test]
fn bad_launches_are_errors() {
    // Outputs poisoned: a refused launch must leave every element untouched.
    let mut out = vec![f32::NAN; 4];
    let mut op = out.as_mut_ptr();
    let refused = [
        (
            "no_such_kernel",
            cfg([1, 1, 1], [1, 1, 1], 0),
            "does not exist",
        ),
        // emu_selftest_reverse takes two arguments; one is given.
        (
            "emu_selftest_reverse",
            cfg([1, 1, 1], [4, 1, 1], 16),
            "takes 2 arguments, 1 given",
        ),
        // More than 1024 threads, an empty grid, more shared memory than any device has.
        (
            "emu_selftest_write_all",
            cfg([1, 1, 1], [2048, 1, 1], 0),
            "invalid launch configuration",
        ),
        (
            "emu_selftest_write_all",
            cfg([0, 1, 1], [4, 1, 1], 0),
            "invalid launch configuration",
        ),
        (
            "emu_selftest_write_all",
            cfg([1, 1, 1], [4, 1, 1], 228 * 1024),
            "invalid launch configuration",
        ),
    ];
    for (kernel, config, expected) in refused {
        // SAFETY: every launch here is refused before anything runs (unknown kernel, wrong
        // argument count, invalid configuration); `op` points at a live buffer of 4 floats.
        let err = unsafe { emu::launch(kernel, &config, &mut args!(op)) }
            .expect_err("a bad launch must be refused");
        assert!(err.contains(expected), "{kernel}: {err}");
    }
    assert!(out.iter().all(|v| v.is_nan()), "nothing ran: {out:?}");
    assert!(emu::kernel_names().contains(&"emu_selftest_block_sum"));
}

/// C++ driver for the AddressSanitizer test: clean launches first (barriers, shuffles, mma: fiber
/// switches must not confuse ASan), then a kernel that writes past the end of a heap buffer.
const ASAN_DRIVER: &str = r#"
#include <cstdio>
#include <vector>
struct flashneck_emu_launch_config { unsigned grid[3]; unsigned block[3]; unsigned shared_bytes; };
#define LAUNCHER(name) extern "C" int flashneck_emu_launch_##name(const flashneck_emu_launch_config*, void**, char*, unsigned long);
LAUNCHER(emu_selftest_block_sum)
LAUNCHER(emu_selftest_warp)
LAUNCHER(emu_selftest_mma_tile)
LAUNCHER(emu_selftest_write_all)
LAUNCHER(emu_selftest_shared_read)
int main(int argc, char** argv) {
    const bool shared = argc > 1 && argv[1][0] == 's';
    char err[512];
    std::vector<float> x(4096, 1.0f), out(7 * 4096);
    const float* xp = x.data(); float* op = out.data(); int n = 4096, delta = 3, width = 16;
    void* sum_args[] = {&xp, &op, &n};
    flashneck_emu_launch_config sum{{16, 1, 1}, {256, 1, 1}, 0};
    if (flashneck_emu_launch_emu_selftest_block_sum(&sum, sum_args, err, sizeof err)) { puts(err); return 2; }
    void* warp_args[] = {&xp, &op, &delta, &width};
    if (flashneck_emu_launch_emu_selftest_warp(&sum, warp_args, err, sizeof err)) { puts(err); return 2; }
    std::vector<unsigned short> a(256, 0x3c00), b(128, 0x3c00);
    const unsigned short* ap = a.data(); const unsigned short* bp = b.data(); int bf16 = 0;
    void* mma_args[] = {&ap, &bp, &op, &bf16};
    flashneck_emu_launch_config warp{{1, 1, 1}, {32, 1, 1}, 0};
    if (flashneck_emu_launch_emu_selftest_mma_tile(&warp, mma_args, err, sizeof err)) { puts(err); return 2; }
    if (out[0] != 16.0f) { puts("mma result wrong"); return 2; }
    int index = 63;
    void* shared_args[] = {&op, &index};
    flashneck_emu_launch_config block64{{1, 1, 1}, {64, 1, 1}, 0};
    if (flashneck_emu_launch_emu_selftest_shared_read(&block64, shared_args, err, sizeof err)) { puts(err); return 2; }
    if (out[0] != 64.0f) { puts("shared read wrong"); return 2; }
    puts("clean launches ok");
    fflush(stdout);
    if (shared) {
        index = 70;
        flashneck_emu_launch_emu_selftest_shared_read(&block64, shared_args, err, sizeof err);
        puts("no overflow detected");
        return 0;
    }
    float* small = new float[100];
    void* oob_args[] = {&small};
    flashneck_emu_launch_config oob{{1, 1, 1}, {128, 1, 1}, 0};
    flashneck_emu_launch_emu_selftest_write_all(&oob, oob_args, err, sizeof err);
    delete[] small;
    puts("no overflow detected");
    return 0;
}
"#;

/// AddressSanitizer catches out-of-bounds accesses in emulated kernels, to global (heap) memory
/// and to static shared memory: the emulator runtime and the self-test kernels are compiled with
/// `g++ -fsanitize=address` into a small C++ program run as a subprocess (an ASan report aborts
/// its process, so it cannot run inside this one).
#[test]
fn asan_reports_heap_and_shared_overflows() {
    let kernels = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../kernels/cuda");
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("emu-asan");
    std::fs::create_dir_all(&dir).unwrap();
    let driver = dir.join("driver.cpp");
    std::fs::write(&driver, ASAN_DRIVER).unwrap();
    let exe = dir.join("driver");
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "g++".into());
    let build = std::process::Command::new(&cxx)
        .args([
            "-std=c++17",
            "-g",
            "-O1",
            "-fsanitize=address",
            "-fno-omit-frame-pointer",
            "-DFLASHNECK_EMU",
        ])
        .arg("-I")
        .arg(&kernels)
        .args(["-x", "c++"])
        .arg(kernels.join("emu/tests/selftest.cu"))
        .arg(kernels.join("emu/runtime.cpp"))
        .arg(&driver)
        .arg("-o")
        .arg(&exe)
        .arg("-lpthread")
        .output()
        .expect("run g++");
    assert!(
        build.status.success(),
        "g++ failed:\n{}",
        String::from_utf8_lossy(&build.stderr)
    );
    for (mode, report, kernel) in [
        ("heap", "heap-buffer-overflow", "emu_selftest_write_all"),
        (
            "shared",
            "global-buffer-overflow",
            "emu_selftest_shared_read",
        ),
    ] {
        let run = std::process::Command::new(&exe)
            .arg(mode)
            .env("ASAN_OPTIONS", "detect_leaks=0")
            .env("FLASHNECK_EMU_THREADS", "2")
            .output()
            .expect("run the ASan driver");
        let (stdout, stderr) = (
            String::from_utf8_lossy(&run.stdout),
            String::from_utf8_lossy(&run.stderr),
        );
        assert!(
            stdout.contains("clean launches ok"),
            "{mode}: clean launches failed:\n{stdout}\n{stderr}"
        );
        assert!(
            !run.status.success(),
            "{mode}: the overflow went unnoticed:\n{stdout}\n{stderr}"
        );
        assert!(stderr.contains(report), "{mode}: {stderr}");
        assert!(stderr.contains(kernel), "{mode}: {stderr}");
    }
}

/// Set in the child process of `asan_build_catches_overflow_in_process`.
const ASAN_CHILD: &str = "FLASHNECK_EMU_ASAN_CHILD";

/// In the FLASHNECK_EMU_ASAN=1 build, an out-of-bounds write by a kernel launched through
/// `emu::launch` aborts the process with an ASan report: this test reruns the test binary on
/// `asan_child_overflow` alone and expects exactly that.
#[test]
fn asan_build_catches_overflow_in_process() {
    if !emu::built_with_asan() {
        println!(
            "skip: not an AddressSanitizer build (set FLASHNECK_EMU_ASAN=1 to run this check)"
        );
        return;
    }
    let run = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "asan_child_overflow",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ASAN_CHILD, "1")
        .env("ASAN_OPTIONS", "detect_leaks=0")
        .output()
        .expect("rerun the test binary");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        !run.status.success(),
        "the overflow went unnoticed:\n{stderr}"
    );
    assert!(stderr.contains("heap-buffer-overflow"), "{stderr}");
    assert!(stderr.contains("emu_selftest_write_all"), "{stderr}");
}

#[test]
#[ignore = "the child of asan_build_catches_overflow_in_process: it overflows a heap buffer"]
fn asan_child_overflow() {
    if std::env::var_os(ASAN_CHILD).is_none() {
        return;
    }
    let mut small = vec![0.0f32; 100];
    let mut p = small.as_mut_ptr();
    // SAFETY: deliberately not: this child process exists to let ASan catch the overflow of
    // `small` (the launch writes 128 floats); it runs only under the ASan build.
    let result = unsafe {
        emu::launch(
            "emu_selftest_write_all",
            &cfg([1, 1, 1], [128, 1, 1], 0),
            &mut args!(p),
        )
    };
    println!("launch returned {result:?}; {} elements", small.len());
}

/// Four floats on a 16-byte boundary, as cp.async needs.
#[derive(Clone, Copy)]
#[repr(C, align(16))]
struct Chunk([f32; 4]);

#[test]
fn cp_async_copies_and_faults_when_misaligned() {
    let (mut rng, seed) = fresh_rng();
    let chunks: Vec<Chunk> = (0..65)
        .map(|_| Chunk([(); 4].map(|_| rng.gen_range(-1.0f32..1.0))))
        .collect();
    let src: Vec<f32> = chunks.iter().flat_map(|c| c.0).collect();
    let mut dst = vec![f32::NAN; 256];
    let (mut sp, mut dp, mut offset) = (chunks.as_ptr().cast::<f32>(), dst.as_mut_ptr(), 4i32);
    // SAFETY: each argument points at a local of the kernel's parameter type, and the buffers
    // they point at outlive the call and cover every element this launch reads or writes.
    unsafe {
        emu::launch(
            "emu_selftest_cp_async",
            &cfg([1, 1, 1], [64, 1, 1], 0),
            &mut args!(sp, dp, offset),
        )
    }
    .unwrap();
    assert_eq!(dst, src[4..260], "seed {seed}");
    let err = within(60, move || {
        let mut dst = vec![f32::NAN; 256];
        let (mut sp, mut dp, mut offset) = (chunks.as_ptr().cast::<f32>(), dst.as_mut_ptr(), 1i32);
        // SAFETY: each argument points at a local of the kernel's parameter type, and the buffers
        // they point at outlive the call and cover every element this launch reads or writes.
        unsafe {
            emu::launch(
                "emu_selftest_cp_async",
                &cfg([1, 1, 1], [64, 1, 1], 0),
                &mut args!(sp, dp, offset),
            )
        }
    })
    .expect_err("a misaligned cp.async must be an error");
    assert!(err.contains("emulator fault in block (0,0,0)"), "{err}");
    assert!(err.contains("not 16-byte aligned"), "{err}");
}

/// `emu_selftest_cp_async_groups` on 512 floats of `src` (16-byte aligned chunks) with its
/// `waited` mode; the 512 floats it copied out, or the launch's error.
fn cp_async_groups(src: &[[f32; 4]], waited: i32) -> Result<Vec<f32>, String> {
    // NaN until the kernel writes it (its poison from cp.async is all ones, another NaN).
    let mut dst = vec![f32::NAN; 512];
    let (mut sp, mut dp, mut w) = (src.as_ptr().cast::<f32>(), dst.as_mut_ptr(), waited);
    // SAFETY: each argument points at a local of the kernel's parameter type, and the buffers
    // they point at outlive the call and cover every element this launch reads or writes.
    unsafe {
        emu::launch(
            "emu_selftest_cp_async_groups",
            &cfg([1, 1, 1], [64, 1, 1], 0),
            &mut args!(sp, dp, w),
        )
    }
    .map(|()| dst)
}

/// 128 random 16-byte chunks (512 floats) and the same values flat.
fn random_chunks() -> (Vec<[f32; 4]>, Vec<f32>, u64) {
    let (mut rng, seed) = fresh_rng();
    let src: Vec<f32> = (0..512).map(|_| rng.gen_range(-2.0f32..2.0)).collect();
    let chunks = src.chunks(4).map(|c| [c[0], c[1], c[2], c[3]]).collect();
    (chunks, src, seed)
}

#[test]
fn cp_async_copies_land_only_at_the_wait_covering_their_group() {
    let (chunks, src, seed) = random_chunks();
    // Both groups waited for: everything landed.
    assert_eq!(cp_async_groups(&chunks, 0).unwrap(), src, "seed {seed}");
    // Only the older group waited for: the newer one still reads as poison (a kernel that
    // waits too little fails on the emulator instead of passing by luck).
    let early = cp_async_groups(&chunks, 1).unwrap();
    assert_eq!(early[..256], src[..256], "seed {seed}");
    assert!(
        early[256..].iter().all(|v| v.to_bits() == u32::MAX),
        "seed {seed}: the second group landed before its wait"
    );
}

/// A thread that exits with a copy in flight faults in that launch (not in whichever later
/// launch happens to run cp.async on the same OS thread), and leaves nothing behind for the
/// next launch of the same grid.
#[test]
fn cp_async_in_flight_at_thread_exit_faults() {
    let (chunks, src, seed) = random_chunks();
    let err =
        cp_async_groups(&chunks, 2).expect_err("a copy in flight at thread exit must be an error");
    assert!(err.contains("emulator fault in block (0,0,0)"), "{err}");
    assert!(
        err.contains("still in flight when its thread exited"),
        "{err}"
    );
    let next = cp_async_groups(&chunks, 0).expect("the next launch starts clean");
    assert_eq!(next, src, "seed {seed}");
}

#[test]
fn reverse_schedule_exposes_a_missing_barrier() {
    let (mut rng, seed) = fresh_rng();
    let x: Vec<f32> = (0..256).map(|_| rng.gen_range(1.0f32..2.0)).collect();
    let run = |schedule| {
        let mut out = vec![f32::NAN; 256];
        let (mut xp, mut op) = (x.as_ptr(), out.as_mut_ptr());
        // SAFETY: each argument points at a local of the kernel's parameter type, and the buffers
        // they point at outlive the call and cover every element this launch reads or writes.
        let result = emu::with_schedule(schedule, || unsafe {
            emu::launch(
                "emu_selftest_missing_barrier",
                &cfg([1, 1, 1], [256, 1, 1], 0),
                &mut args!(xp, op),
            )
        });
        result.unwrap();
        out
    };
    let forward = run(emu::Schedule::Forward);
    assert_eq!(
        forward[1..],
        x[..255],
        "seed {seed}: the forward schedule runs writers first"
    );
    let reverse = run(emu::Schedule::Reverse);
    assert!(
        reverse[1..]
            .iter()
            .zip(&x[..255])
            .all(|(got, want)| got != want),
        "seed {seed}: the reverse schedule must read every slot before its writer ran"
    );
}

#[test]
fn full_mask_shuffles_in_a_partial_warp() {
    // 40 threads: the second warp has lanes 0..7 only; a full mask names just those.
    let mut out = vec![f32::NAN; 40];
    let (mut op, mut gone) = (out.as_mut_ptr(), -1i32);
    // SAFETY: each argument points at a local of the kernel's parameter type, and the buffers
    // they point at outlive the call and cover every element this launch reads or writes.
    unsafe {
        emu::launch(
            "emu_selftest_shuffle_after_exit",
            &cfg([1, 1, 1], [40, 1, 1], 0),
            &mut args!(op, gone),
        )
    }
    .unwrap();
    let want: Vec<f32> = (0..40u32).map(|t| (t ^ 1) as f32).collect();
    assert_eq!(out, want);
}
