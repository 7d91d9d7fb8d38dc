//! What the runner needs from a backend beyond the op traits: how to time a call on its device,
//! how to measure the device's limits, its cache size and which device the peer should use.
//! One impl per backend; the runner ([`crate::runner`]) is generic over it.

use crate::results::Limits;
use flashneck_core::{Kernels, Result};
use std::time::Instant;

/// A backend the bench can run.
pub trait BenchTarget: Kernels {
    /// The device's copy bandwidth and compute ceiling, measured now.
    fn measure_limits(&self) -> Limits;

    /// Seconds one call of `f` takes on the device. The default synchronises before and after
    /// and reads the host clock, which is exact for the CPU; GPU backends time on the device.
    fn time(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
        self.synchronize()?;
        let t0 = Instant::now();
        f()?;
        self.synchronize()?;
        Ok(t0.elapsed().as_secs_f64())
    }

    /// Bytes of the last-level cache in front of the data: inputs smaller than this are
    /// rotated between runs so that no run starts with them hot.
    fn cache_bytes(&self) -> usize;

    /// The PyTorch device the peer runs on to compare with this backend (`cpu`, `cuda`), or
    /// `None` when PyTorch has no counterpart on this device.
    fn peer_device(&self) -> Option<&'static str>;

    /// Whether this is a GPU (picks the GPU problem sizes).
    fn is_gpu(&self) -> bool;

    /// Whether this is a GPU API run in software on the CPU (lavapipe): `--quick` then runs
    /// the smoke sizes.
    fn is_software(&self) -> bool {
        false
    }
}

/// `method`, followed by the reason each ceiling in `results` that could not be measured
/// failed (a report says why a ceiling is missing).
#[cfg(any(feature = "cuda", feature = "wgpu"))]
fn with_failures(mut method: String, results: &[(&str, Option<&flashneck_core::Error>)]) -> String {
    for (what, err) in results {
        if let Some(e) = err {
            method.push_str(&format!("; {what} failed: {e}"));
        }
    }
    method
}

mod cpu {
    use super::*;
    use crate::limits;
    use flashneck_cpu::CpuBackend;

    impl BenchTarget for CpuBackend {
        fn measure_limits(&self) -> Limits {
            let threads = self.threads();
            Limits {
                copy_gbs: Some(limits::cpu_copy_gbs(threads)),
                gemm_tflops: Some(limits::cpu_sgemm_tflops(threads)),
                gemm_dtype: "f32".into(),
                compute_ceiling: "GEMM".into(),
                f32_gemm_tflops: None,
                method: format!(
                    "copy: median of 5 parallel memcpy of 256 MiB on {threads} threads \
                     (bytes read + written); GEMM: median of 5 f32 2048^3 \
                     matrixmultiply::sgemm split by rows over {threads} threads"
                ),
            }
        }

        fn cache_bytes(&self) -> usize {
            limits::cpu_last_level_cache_bytes()
        }

        fn peer_device(&self) -> Option<&'static str> {
            Some("cpu")
        }

        fn is_gpu(&self) -> bool {
            false
        }
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::*;
    use flashneck_cuda::CudaBackend;

    impl BenchTarget for CudaBackend {
        fn measure_limits(&self) -> Limits {
            let copy = self.copy_bandwidth_gbs(1 << 30);
            let gemm = self.gemm_bf16_tflops(8192);
            // f32 cases (the SIMT attention, f32 GR-KAN and Gumbel) run on the CUDA cores.
            let gemm_f32 = self.gemm_f32_tflops(4096);
            let method = super::with_failures(
                "copy: CudaBackend::copy_bandwidth_gbs, device-to-device copy of 1 GiB (bytes \
                 read + written); GEMM: CudaBackend::gemm_bf16_tflops, cuBLAS bf16 8192^3 on \
                 random values with f32 accumulation; f32 cases against \
                 CudaBackend::gemm_f32_tflops, cuBLAS f32 4096^3 (default math, no TF32)"
                    .to_string(),
                &[
                    ("copy", copy.as_ref().err()),
                    ("GEMM", gemm.as_ref().err()),
                    ("f32 GEMM", gemm_f32.as_ref().err()),
                ],
            );
            Limits {
                copy_gbs: copy.ok(),
                gemm_tflops: gemm.ok(),
                gemm_dtype: "bf16".into(),
                compute_ceiling: "GEMM".into(),
                f32_gemm_tflops: gemm_f32.ok(),
                method,
            }
        }

        /// CUDA events around the call.
        fn time(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
            Ok(self.time_ms(f)? / 1e3)
        }

        /// Larger than the L2 of current data-centre GPUs (50 to 60 MB).
        fn cache_bytes(&self) -> usize {
            64 << 20
        }

        fn peer_device(&self) -> Option<&'static str> {
            Some("cuda")
        }

        fn is_gpu(&self) -> bool {
            !self.is_emulated()
        }
    }
}

#[cfg(feature = "wgpu")]
mod wgpu {
    use super::*;
    use flashneck_wgpu::WgpuBackend;

    impl BenchTarget for WgpuBackend {
        /// WGSL reaches no tensor core, and the WGSL attention computes in f32 whatever the
        /// storage type, so the compute ceiling is the f32 FMA peak rather than a GEMM.
        fn measure_limits(&self) -> Limits {
            let copy = self.copy_bandwidth_gbs(128 << 20);
            // 2^14 workgroups of 256 threads fill a large GPU many waves over (so the last,
            // partial wave costs little); a CPU adapter needs far fewer.
            let workgroups = if self.is_software() { 256 } else { 1 << 14 };
            let fma = self.fma_peak_tflops(workgroups, 20.0);
            let method = super::with_failures(
                format!(
                    "copy: WgpuBackend::copy_bandwidth_gbs, buffer-to-buffer copy of 128 MiB \
                     (bytes read + written); compute: WgpuBackend::fma_peak_tflops, f32 FMA \
                     peak (ceiling.wgsl, {workgroups} workgroups of 256 threads, 32 \
                     independent FMA chains each, best of 5 runs of at least 20 ms)"
                ),
                &[("copy", copy.as_ref().err()), ("FMA", fma.as_ref().err())],
            );
            Limits {
                copy_gbs: copy.ok(),
                gemm_tflops: fma.ok(),
                gemm_dtype: "f32".into(),
                compute_ceiling: "FMA peak".into(),
                f32_gemm_tflops: None,
                method,
            }
        }

        /// Device timestamps where the adapter has them, else the host clock between
        /// synchronisations.
        fn time(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
            Ok(self.time_ms(f)? / 1e3)
        }

        fn cache_bytes(&self) -> usize {
            32 << 20
        }

        /// PyTorch has no wgpu device: no peer.
        fn peer_device(&self) -> Option<&'static str> {
            None
        }

        fn is_gpu(&self) -> bool {
            !self.is_software()
        }

        /// A CPU adapter such as lavapipe (compared by name to avoid depending on wgpu's
        /// types here).
        fn is_software(&self) -> bool {
            format!("{:?}", self.adapter_info().device_type) == "Cpu"
        }
    }
}
