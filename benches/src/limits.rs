//! The CPU's ceilings, measured in the same run as the ops: copy bandwidth from a large
//! parallel memcpy, and the f32 GEMM rate of `matrixmultiply`, both on the bench's threads.
//! Each is the median of several repetitions, like the ops' times: the best one is too easily
//! an outlier on a shared or virtual machine.

use rayon::prelude::*;
use std::time::Instant;

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build()
        .expect("a thread pool for the limit measurements")
}

/// Copy bandwidth in GB/s (bytes read plus bytes written), median of 5 copies of 256 MiB.
pub fn cpu_copy_gbs(threads: usize) -> f64 {
    cpu_copy_gbs_sized(threads, 256 << 20, 5)
}

/// Copy bandwidth of `bytes`-sized copies, median of `reps`.
pub fn cpu_copy_gbs_sized(threads: usize, bytes: usize, reps: usize) -> f64 {
    let n = bytes / 4;
    let src: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let mut dst = vec![0f32; n];
    let chunk = (n / (threads.max(1) * 8)).max(4096);
    let pool = pool(threads);
    let mut times = Vec::with_capacity(reps.max(1));
    for _ in 0..reps.max(1) {
        let t0 = Instant::now();
        pool.install(|| {
            dst.par_chunks_mut(chunk)
                .zip(src.par_chunks(chunk))
                .for_each(|(d, s)| d.copy_from_slice(s));
        });
        times.push(t0.elapsed().as_secs_f64());
        std::hint::black_box(&dst);
    }
    2.0 * (n * 4) as f64 / median(&mut times) / 1e9
}

/// f32 GEMM rate in TFLOP/s: `C = A B` with `2048³`, median of 5.
pub fn cpu_sgemm_tflops(threads: usize) -> f64 {
    cpu_sgemm_tflops_sized(threads, 2048, 5)
}

/// f32 GEMM rate of `n³` products, median of `reps`. The rows of `C` are split over `threads`
/// workers, each calling the single-threaded `matrixmultiply::sgemm`.
pub fn cpu_sgemm_tflops_sized(threads: usize, n: usize, reps: usize) -> f64 {
    let a: Vec<f32> = (0..n * n).map(|i| ((i % 7) as f32 - 3.0) * 0.1).collect();
    let b: Vec<f32> = (0..n * n).map(|i| ((i % 5) as f32 - 2.0) * 0.1).collect();
    let mut c = vec![0f32; n * n];
    let rows = n.div_ceil(threads.max(1));
    let pool = pool(threads);
    let mut times = Vec::with_capacity(reps.max(1));
    for _ in 0..reps.max(1) {
        let t0 = Instant::now();
        pool.install(|| {
            c.par_chunks_mut(rows * n)
                .enumerate()
                .for_each(|(i, c_rows)| {
                    let m = c_rows.len() / n;
                    let a_rows = &a[i * rows * n..];
                    // SAFETY: `a_rows` holds at least m·n elements, `b` n·n and `c_rows` m·n,
                    // all row-major with the strides given; the slices do not alias.
                    unsafe {
                        matrixmultiply::sgemm(
                            m,
                            n,
                            n,
                            1.0,
                            a_rows.as_ptr(),
                            n as isize,
                            1,
                            b.as_ptr(),
                            n as isize,
                            1,
                            0.0,
                            c_rows.as_mut_ptr(),
                            n as isize,
                            1,
                        );
                    }
                });
        });
        times.push(t0.elapsed().as_secs_f64());
        std::hint::black_box(&c);
    }
    2.0 * (n as f64).powi(3) / median(&mut times) / 1e12
}

/// The median of a non-empty set of times.
fn median(times: &mut [f64]) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Size of the last-level cache from sysfs (32 MiB when unknown).
pub fn cpu_last_level_cache_bytes() -> usize {
    let parse = |s: &str| -> Option<usize> {
        let s = s.trim();
        let (num, mult) = match s.strip_suffix('K') {
            Some(n) => (n, 1 << 10),
            None => match s.strip_suffix('M') {
                Some(n) => (n, 1 << 20),
                None => (s, 1),
            },
        };
        num.parse::<usize>().ok().map(|v| v * mult)
    };
    (0..8)
        .rev()
        .find_map(|i| {
            std::fs::read_to_string(format!("/sys/devices/system/cpu/cpu0/cache/index{i}/size"))
                .ok()
                .and_then(|s| parse(&s))
        })
        .unwrap_or(32 << 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_measurements_are_positive_and_finite() {
        let bw = cpu_copy_gbs_sized(2, 1 << 20, 2);
        assert!(bw.is_finite() && bw > 0.0, "{bw}");
        let rate = cpu_sgemm_tflops_sized(2, 64, 1);
        assert!(rate.is_finite() && rate > 0.0, "{rate}");
        assert!(cpu_last_level_cache_bytes() > 0);
    }
}
