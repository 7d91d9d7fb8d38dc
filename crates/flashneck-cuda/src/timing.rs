//! Device timing for the benches: CUDA events, the copy bandwidth that the bandwidth-bound
//! kernels are judged against, and cuBLAS's bf16 and f32 GEMM rates.

use crate::device::{Device, EMULATED, REAL};
use cudarc::driver::{DevicePtr, DevicePtrMut, sys::CUevent_flags};
use flashneck_core::{Error, Result};
use std::time::Instant;

fn real(e: impl std::fmt::Debug) -> Error {
    Error::device(REAL, format!("{e:?}"))
}

/// Milliseconds `f` takes on the device.
pub fn time_ms(dev: &Device, f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
    match dev {
        Device::Emulated => {
            let t = Instant::now();
            f()?;
            Ok(t.elapsed().as_secs_f64() * 1e3)
        }
        Device::Real(d) => {
            d.ctx.bind_to_thread().map_err(real)?;
            let flags = Some(CUevent_flags::CU_EVENT_DEFAULT);
            let start = d.ctx.new_event(flags).map_err(real)?;
            let end = d.ctx.new_event(flags).map_err(real)?;
            start.record(&d.stream).map_err(real)?;
            f()?;
            end.record(&d.stream).map_err(real)?;
            end.synchronize().map_err(real)?;
            Ok(start.elapsed_ms(&end).map_err(real)? as f64)
        }
    }
}

/// `2 · bytes / time` of a device-to-device copy, best of 5 after a warm-up, in GB/s.
pub fn copy_bandwidth_gbs(dev: &Device, bytes: usize) -> Result<f64> {
    if bytes == 0 {
        return Err(Error::bad("bytes", ">= 1", 0));
    }
    let mut best = f64::INFINITY;
    match dev {
        Device::Emulated => {
            let src = vec![1u8; bytes];
            let mut dst = vec![0u8; bytes];
            for _ in 0..3 {
                let t = Instant::now();
                dst.copy_from_slice(&src);
                std::hint::black_box(&mut dst);
                best = best.min(t.elapsed().as_secs_f64());
            }
        }
        Device::Real(d) => {
            let src = d.stream.alloc_zeros::<u8>(bytes).map_err(real)?;
            let mut dst = d.stream.alloc_zeros::<u8>(bytes).map_err(real)?;
            d.stream.memcpy_dtod(&src, &mut dst).map_err(real)?;
            for _ in 0..5 {
                let ms = time_ms(dev, &mut || {
                    d.stream.memcpy_dtod(&src, &mut dst).map_err(real)
                })?;
                best = best.min(ms / 1e3);
            }
            // Both buffers outlive the timed copies (events were synchronized).
        }
    }
    Ok(2.0 * bytes as f64 / best / 1e9)
}

/// The input type of a GEMM ceiling: bf16 on the tensor cores, or f32 on the CUDA cores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmInput {
    Bf16,
    /// Plain f32: cuBLAS's default math mode takes no tensor-core (TF32) path.
    F32,
}

impl GemmInput {
    fn bytes(self) -> usize {
        match self {
            GemmInput::Bf16 => 2,
            GemmInput::F32 => 4,
        }
    }
}

/// `len` values uniform in [-1, 1) (xorshift64*, seeded by `seed`) in `ty`, as little-endian
/// bytes (bf16 by truncation of the f32, which keeps them in range).
fn random_bytes(ty: GemmInput, len: usize, seed: u64) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15_u64 ^ seed;
    let mut out = Vec::with_capacity(ty.bytes() * len);
    for _ in 0..len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let r = x.wrapping_mul(0x2545_f491_4f6c_dd1d);
        let v = (r >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
        match ty {
            GemmInput::Bf16 => out.extend_from_slice(&((v.to_bits() >> 16) as u16).to_le_bytes()),
            GemmInput::F32 => out.extend_from_slice(&v.to_le_bytes()),
        }
    }
    out
}

/// cuBLAS GEMM (`n × n × n` on `input`, f32 accumulation and output) in TFLOP/s, best of 5
/// after a warm-up.
pub fn gemm_tflops(dev: &Device, n: usize, input: GemmInput) -> Result<f64> {
    use cudarc::cublas::{CudaBlas, result::gemm_ex, sys};
    let Device::Real(d) = dev else {
        return Err(Error::unsupported(EMULATED, "cuBLAS GEMM on the emulator"));
    };
    // SAFETY: only tries to dlopen libcublas by its usual names.
    if !unsafe { sys::is_culib_present() } {
        return Err(Error::unsupported(REAL, "libcublas not found"));
    }
    let dim = i32::try_from(n).map_err(|_| Error::bad("n", "<= i32::MAX", n))?;
    if n == 0 {
        return Err(Error::bad("n", ">= 1", 0));
    }
    let ab_type = match input {
        GemmInput::Bf16 => sys::cudaDataType::CUDA_R_16BF,
        GemmInput::F32 => sys::cudaDataType::CUDA_R_32F,
    };
    d.ctx.bind_to_thread().map_err(real)?;
    let blas = CudaBlas::new(d.stream.clone()).map_err(real)?;
    // Random values: tensor cores draw less power (and clock higher) on constant data, which
    // would overstate the ceiling every "fraction of GEMM" is measured against.
    let a = d
        .stream
        .clone_htod(&random_bytes(input, n * n, 1))
        .map_err(real)?;
    let b = d
        .stream
        .clone_htod(&random_bytes(input, n * n, 2))
        .map_err(real)?;
    let mut c = d.stream.alloc_zeros::<u8>(n * n * 4).map_err(real)?;
    let (alpha, beta) = (1.0f32, 0.0f32);
    let (pa, _ga) = a.device_ptr(&d.stream);
    let (pb, _gb) = b.device_ptr(&d.stream);
    let (pc, _gc) = c.device_ptr_mut(&d.stream);
    let mut run = || -> Result<()> {
        // SAFETY: a, b hold n·n elements of `ab_type` and c n·n f32 on this stream's device;
        // alpha and beta are f32 as the f32 compute type requires; the handle is bound to the
        // same stream.
        unsafe {
            gemm_ex(
                *blas.handle(),
                sys::cublasOperation_t::CUBLAS_OP_N,
                sys::cublasOperation_t::CUBLAS_OP_N,
                dim,
                dim,
                dim,
                &alpha as *const f32 as *const _,
                pa as *const _,
                ab_type,
                dim,
                pb as *const _,
                ab_type,
                dim,
                &beta as *const f32 as *const _,
                pc as *mut _,
                sys::cudaDataType::CUDA_R_32F,
                dim,
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(real)
    };
    run()?;
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        best = best.min(time_ms(dev, &mut run)?);
    }
    Ok(2.0 * (n as f64).powi(3) / (best / 1e3) / 1e12)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_bf16_is_spread_over_minus_one_to_one() {
        let bytes = random_bytes(GemmInput::Bf16, 10_000, 1);
        let vals: Vec<f32> = bytes
            .chunks(2)
            .map(|b| f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16))
            .collect();
        assert!(vals.iter().all(|v| (-1.0..1.0).contains(v)));
        let mean = vals.iter().sum::<f32>() / vals.len() as f32;
        assert!(mean.abs() < 0.05, "{mean}");
        let distinct: std::collections::HashSet<u32> = vals.iter().map(|v| v.to_bits()).collect();
        assert!(distinct.len() > 1000, "{}", distinct.len());
        assert_ne!(
            random_bytes(GemmInput::Bf16, 16, 1),
            random_bytes(GemmInput::Bf16, 16, 2)
        );
    }

    #[test]
    fn no_gemm_ceiling_on_the_emulator() {
        for input in [GemmInput::Bf16, GemmInput::F32] {
            let err = gemm_tflops(&Device::Emulated, 64, input).unwrap_err();
            assert!(
                err.to_string().contains("cuBLAS GEMM on the emulator"),
                "{err}"
            );
        }
    }

    #[test]
    fn random_f32_are_the_bf16_values_before_truncation() {
        let f = random_bytes(GemmInput::F32, 1000, 7);
        let h = random_bytes(GemmInput::Bf16, 1000, 7);
        assert_eq!(f.len(), 4000);
        for (w, b) in f.chunks(4).zip(h.chunks(2)) {
            let v = f32::from_le_bytes([w[0], w[1], w[2], w[3]]);
            assert!((-1.0..1.0).contains(&v));
            assert_eq!(&w[2..4], b, "{v}");
        }
    }
}
