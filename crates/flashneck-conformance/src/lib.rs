//! # flashneck-conformance
//!
//! One suite, written once, checking every op of a backend against the f64 oracles of
//! `flashneck_cpu::oracle` with SPEC §0's tolerances. A backend crate instantiates it in an
//! integration test:
//!
//! ```ignore
//! flashneck_conformance::conformance_suite!(flashneck_cpu::CpuBackend::new(), Config::full());
//! ```
//!
//! Every check draws fresh random inputs (the seed is printed on failure; set
//! `FLASHNECK_SEED` to replay), poisons outputs with NaN before the op runs, and compares with
//! `max|out − ref| / max(1, max|ref|)`. An op that the backend does not claim in
//! [`BackendInfo::supports`](flashneck_core::BackendInfo::supports) must return `Unsupported`; the check prints one `skip:` line then.

pub mod attention;
pub mod errors;
pub mod grkan;
pub mod gumbel;
pub mod sparse;

use flashneck_core::{Backend, DType, Element, OpKind, Result};
use rand::{Rng, SeedableRng, rngs::StdRng};

/// How hard the suite works: the CPU runs it in full, emulators and lavapipe on smaller sizes.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// Cases per property test.
    pub cases: u32,
    /// Largest sequence length in attention property tests.
    pub max_len: usize,
    /// Largest head dim in attention property tests.
    pub max_head_dim: usize,
    /// Largest row count in GR-KAN and Gumbel property tests.
    pub max_rows: usize,
    /// Largest Gumbel `K` in property tests (fixed tests also run one large `K`).
    pub max_classes: usize,
}

impl Config {
    /// The full suite (the CPU backend).
    pub fn full() -> Self {
        Config {
            cases: 24,
            max_len: 300,
            max_head_dim: 256,
            max_rows: 300,
            max_classes: 10_000,
        }
    }
    /// Small shapes and few cases, for slow backends (the CUDA emulator, lavapipe).
    pub fn small() -> Self {
        Config {
            cases: 6,
            max_len: 140,
            max_head_dim: 128,
            max_rows: 70,
            max_classes: 2_000,
        }
    }
}

impl Config {
    /// `default`, unless the environment variable `FLASHNECK_CONFORMANCE` says `small` or
    /// `full` (the GPU check runs the sanitizers on the small suite, the rest on the full one).
    pub fn from_env(default: Config) -> Config {
        match std::env::var("FLASHNECK_CONFORMANCE").as_deref() {
            Ok("small") => Config::small(),
            Ok("full") => Config::full(),
            _ => default,
        }
    }
}

/// A random generator seeded from `FLASHNECK_SEED` or fresh entropy, with its seed for replay.
pub fn fresh_rng() -> (StdRng, u64) {
    let seed = std::env::var("FLASHNECK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().r#gen());
    (StdRng::seed_from_u64(seed), seed)
}

/// `n` normal-ish values with standard deviation `std` as `T`, and their exact f64 copies (after
/// rounding to `T`, so that the oracle sees what the backend sees).
pub fn random_input<T: Element>(rng: &mut impl Rng, n: usize, std: f32) -> (Vec<T>, Vec<f64>) {
    let vals: Vec<T> = (0..n)
        .map(|_| {
            // Sum of 4 uniforms: cheap, bell-shaped, bounded (no outliers to hide behind).
            let s: f32 = (0..4).map(|_| rng.r#gen::<f32>() - 0.5).sum();
            T::from_f32(s * std * 1.732)
        })
        .collect();
    let f = vals.iter().map(|v| v.to_f64()).collect();
    (vals, f)
}

/// Convert f64 values to `T`, returning them and their rounded f64 copies.
pub fn to_element<T: Element>(vals: &[f64]) -> (Vec<T>, Vec<f64>) {
    let t: Vec<T> = vals.iter().map(|&v| T::from_f64(v)).collect();
    let f = t.iter().map(|v| v.to_f64()).collect();
    (t, f)
}

/// A device buffer of `n` NaNs, so that an element the op does not write fails the comparison.
pub fn nan_buffer<B: Backend, T: Element>(b: &B, n: usize) -> B::Buffer<T> {
    b.upload(&vec![T::from_f32(f32::NAN); n])
        .expect("upload of a NaN-poisoned output")
}

/// SPEC §0 error: `max|out − ref| / max(1, max|ref|)`, or `Err` naming the first element where
/// the output is NaN/inf while the oracle is finite (or the lengths differ).
pub fn relative_error(got: &[f64], want: &[f64]) -> std::result::Result<f64, String> {
    if got.len() != want.len() {
        return Err(format!(
            "length {} != oracle length {}",
            got.len(),
            want.len()
        ));
    }
    let scale = want
        .iter()
        .filter(|v| v.is_finite())
        .fold(1.0f64, |m, v| m.max(v.abs()));
    let mut worst = 0.0f64;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if w.is_finite() {
            if !g.is_finite() {
                return Err(format!("element {i} is {g}, oracle {w}"));
            }
            worst = worst.max((g - w).abs() / scale);
        } else if !(g == w || (g.is_nan() && w.is_nan())) {
            return Err(format!("element {i} is {g}, oracle {w}"));
        }
    }
    Ok(worst)
}

/// Assert that `got` matches the oracle within `tol`; the message names what, where and the seed.
#[track_caller]
pub fn assert_close<T: Element>(what: &str, got: &[T], want: &[f64], tol: f64, seed: u64) {
    let g: Vec<f64> = got.iter().map(|v| v.to_f64()).collect();
    assert_close_f64(what, &g, want, tol, seed);
}

/// [`assert_close`] for values already in f64.
#[track_caller]
pub fn assert_close_f64(what: &str, got: &[f64], want: &[f64], tol: f64, seed: u64) {
    match relative_error(got, want) {
        Ok(err) if err <= tol => {}
        Ok(err) => {
            let (i, _) = got
                .iter()
                .zip(want)
                .enumerate()
                .max_by(|a, b| {
                    let da = (a.1.0 - a.1.1).abs();
                    let db = (b.1.0 - b.1.1).abs();
                    da.total_cmp(&db)
                })
                .unwrap();
            panic!(
                "{what}: error {err:.3e} > tolerance {tol:.1e} (worst element {i}: got {}, oracle {}); \
                 replay with FLASHNECK_SEED={seed}",
                got[i], want[i]
            )
        }
        Err(msg) => panic!("{what}: {msg}; replay with FLASHNECK_SEED={seed}"),
    }
}

/// Run `case(value, seed)` on `cfg.cases` draws of `strategy` with proptest, seeded from
/// [`fresh_rng`] (so `FLASHNECK_SEED=seed` replays every case) and writing no regression files.
/// Panics with `what`, the minimal failing case and the seed.
#[track_caller]
pub fn property<S: proptest::strategy::Strategy>(
    cfg: Config,
    what: &str,
    strategy: S,
    case: impl Fn(S::Value, u64),
) {
    use proptest::test_runner::{Config as ProptestConfig, RngAlgorithm, TestRng, TestRunner};
    let (_, seed) = fresh_rng();
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let config = ProptestConfig {
        cases: cfg.cases,
        failure_persistence: None,
        max_shrink_iters: 32,
        ..ProptestConfig::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &bytes));
    if let Err(e) = runner.run(&strategy, |v| {
        case(v, seed);
        Ok(())
    }) {
        panic!("{what}: {e}; replay with FLASHNECK_SEED={seed}");
    }
}

/// The bit patterns of `x` (through the exact widening to f64), for bitwise comparisons.
pub fn bits<T: Element>(x: &[T]) -> Vec<u64> {
    x.iter().map(|v| v.to_f64().to_bits()).collect()
}

/// Interpret an op's result: `Some(value)` when it ran; `None` (after one printed `skip:` line)
/// when it returned `Unsupported` and the backend does not claim the op for `dtype`. Panics
/// when a claimed op is unsupported, or on any other error.
#[track_caller]
pub fn ran<B: Backend, R>(b: &B, op: OpKind, dtype: DType, r: Result<R>) -> Option<R> {
    let info = b.info();
    match r {
        Ok(v) => Some(v),
        Err(e) if e.is_unsupported() && !info.supports(op, dtype) => {
            announce_skip(&format!("skip: {} {} {}: {e}", info.name, op.name(), dtype));
            None
        }
        Err(e) => panic!("{} {} {}: {e}", info.name, op.name(), dtype),
    }
}

/// Print a skip line once per process, past the test harness's output capture (which only
/// takes `print!`), so that a backend's missing kernels show in every test run.
pub(crate) fn announce_skip(line: &str) {
    use std::collections::HashSet;
    use std::io::Write;
    use std::sync::Mutex;
    static SEEN: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    if seen
        .get_or_insert_with(HashSet::new)
        .insert(line.to_string())
    {
        let _ = writeln!(std::io::stderr(), "{line}");
    }
}

/// Run `f` once per element type, as `f::<f32>()`, `f::<f16>()`, `f::<bf16>()`.
#[macro_export]
macro_rules! for_each_dtype {
    ($f:ident $(, $arg:expr)*) => {{
        $f::<f32>($($arg),*);
        $f::<$crate::half::f16>($($arg),*);
        $f::<$crate::half::bf16>($($arg),*);
    }};
}

pub use half;

/// Instantiate the whole suite for one backend: `conformance_suite!(make_backend(), config)`.
/// `make_backend()` is evaluated once per test.
#[macro_export]
macro_rules! conformance_suite {
    ($make:expr, $config:expr) => {
        $crate::attention_tests!($make, $config);
        $crate::sparse_tests!($make, $config);
        $crate::grkan_tests!($make, $config);
        $crate::gumbel_tests!($make, $config);
        $crate::error_tests!($make, $config);
    };
}

/// Declare one `#[test]` per listed check, each calling `module::check(&backend, config)`.
#[macro_export]
macro_rules! checks {
    ($module:ident, $make:expr, $config:expr, [$($check:ident),* $(,)?]) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[test]
                fn $check() {
                    let backend = $make;
                    $crate::$module::$check(&backend, $config);
                }
            )*
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_error_catches_nan_and_scales() {
        assert_eq!(relative_error(&[1.0, 2.0], &[1.0, 2.0]), Ok(0.0));
        assert!(relative_error(&[f64::NAN], &[1.0]).is_err());
        assert!(relative_error(&[1.0], &[1.0, 2.0]).is_err());
        // Scale is max(1, max|ref|): an error of 1 on a reference of 10 is 0.1.
        assert_eq!(relative_error(&[11.0], &[10.0]), Ok(0.1));
        assert_eq!(relative_error(&[0.5], &[0.0]), Ok(0.5));
        // −inf must match −inf exactly (LSE of an empty row).
        assert_eq!(
            relative_error(&[f64::NEG_INFINITY], &[f64::NEG_INFINITY]),
            Ok(0.0)
        );
        assert!(relative_error(&[0.0], &[f64::NEG_INFINITY]).is_err());
    }
}
