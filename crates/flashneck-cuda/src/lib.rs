//! # flashneck-cuda
//!
//! The CUDA backend: hand-written kernels (`kernels/cuda/*.cu`) compiled by NVRTC at run time and
//! launched through cudarc, or run on the CPU by the emulator of the CUDA execution model
//! ([`emu`]). Both go through one crate-private launch interface (`device::Device::launch`), so
//! the host code of every op (tiling, grid, arguments) is the same on both and is tested under
//! emulation. Raw addresses never cross the public API: callers hand over [`CudaBuffer`]s and the
//! ops validate their lengths before any launch.
//!
//! The crate builds and its tests run on machines without CUDA: libcuda and libnvrtc are loaded
//! at run time, and [`CudaBackend::new`] returns an error (never panics) when they are absent.
//!
//! Ops: GR-KAN forward/backward and Gumbel-Softmax forward/backward/noise, for f32, f16 and
//! bf16; attention forward, dense and block-sparse with the Re-ttention epilogue (`attention`,
//! head dims `D = Dv` in {64, 128}, others [`Error::Unsupported`]), and `block_topk`.
//! Attention backward, dense and block-sparse (`attention_bwd`, same head dims), bitwise
//! deterministic: every output element is written by one block, no atomics.

mod attention;
mod attention_bwd;
mod device;
pub mod emu;
mod grkan;
mod gumbel;
pub mod kernels;
mod memory;
pub mod nvrtc;
mod timing;

pub use device::{CUBIN_DIR_VAR, cubin_file_name, write_cubins};
pub use memory::CudaBuffer;

use device::{Device, RealDevice};
use flashneck_core::{
    AttentionOps, AttentionParams, Backend, BackendInfo, DType, DeviceLayout, Element, Error,
    GrKanOps, GrKanParams, GumbelOps, GumbelParams, HeadDims, OpKind, Result, Scalar,
    SparseAttentionOps, SparseEpilogue, TopkParams, checks,
};

/// The CUDA backend on one device, real or emulated.
pub struct CudaBackend {
    device: Device,
}

/// The kernel-name suffix of an element type (`f32`, `f16`, `bf16`).
pub(crate) fn elem_suffix<T: Element>() -> &'static str {
    T::DTYPE.name()
}

/// Kernels take 32-bit sizes: refuse (before any launch) what does not fit.
pub(crate) fn fits_i32(dev: &Device, what: &str, v: usize) -> Result<()> {
    if v <= i32::MAX as usize {
        Ok(())
    } else {
        Err(Error::unsupported(
            dev.backend(),
            format!("{what} = {v} exceeds the kernels' 32-bit range"),
        ))
    }
}

impl CudaBackend {
    /// The real device `ordinal`. `Err(Error::Device)` without a driver or such a device.
    pub fn new(ordinal: usize) -> Result<Self> {
        Ok(CudaBackend {
            device: Device::Real(RealDevice::get(ordinal)?),
        })
    }

    /// The CPU emulator of the CUDA execution model, driven by the same host code.
    pub fn emulated() -> Result<Self> {
        Ok(CudaBackend {
            device: Device::Emulated,
        })
    }

    /// Whether a CUDA driver (libcuda) can be loaded on this machine.
    pub fn driver_present() -> bool {
        device::driver_present()
    }

    /// True for the emulated backend.
    pub fn is_emulated(&self) -> bool {
        matches!(self.device, Device::Emulated)
    }

    /// Milliseconds `f` takes on the device: CUDA events around it (emulated: wall clock).
    pub fn time_ms(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
        timing::time_ms(&self.device, f)
    }

    /// Device-to-device copy bandwidth in GB/s for `bytes` bytes, counting bytes read and
    /// written (`2 · bytes / time`), the best of a few copies after a warm-up.
    pub fn copy_bandwidth_gbs(&self, bytes: usize) -> Result<f64> {
        timing::copy_bandwidth_gbs(&self.device, bytes)
    }

    /// bf16 GEMM rate of cuBLAS (`n × n × n`, f32 accumulation) in TFLOP/s; `Unsupported` when
    /// emulated or without libcublas.
    pub fn gemm_bf16_tflops(&self, n: usize) -> Result<f64> {
        timing::gemm_tflops(&self.device, n, timing::GemmInput::Bf16)
    }

    /// f32 GEMM rate of cuBLAS (`n × n × n`, default math: no TF32 tensor cores) in TFLOP/s:
    /// the roof of kernels that compute in f32 on the CUDA cores. `Unsupported` as above.
    pub fn gemm_f32_tflops(&self, n: usize) -> Result<f64> {
        timing::gemm_tflops(&self.device, n, timing::GemmInput::F32)
    }
}

impl Backend for CudaBackend {
    type Buffer<T: Scalar> = CudaBuffer<T>;

    fn info(&self) -> BackendInfo {
        let (name, device) = match &self.device {
            Device::Real(d) => (device::REAL, format!("{} ({})", d.name, d.arch)),
            Device::Emulated => (
                device::EMULATED,
                "CPU emulation of the CUDA execution model".to_string(),
            ),
        };
        BackendInfo {
            name: name.into(),
            device,
            head_dims: HeadDims::Exactly(attention::HEAD_DIMS.to_vec()),
            ops: [
                OpKind::AttentionForward,
                OpKind::SparseForward,
                OpKind::BlockTopk,
                OpKind::AttentionBackward,
                OpKind::SparseBackward,
                OpKind::GrKanForward,
                OpKind::GrKanBackward,
                OpKind::GumbelForward,
                OpKind::GumbelBackward,
                OpKind::GumbelNoise,
            ]
            .iter()
            .map(|&op| (op, DType::ALL.to_vec()))
            .collect(),
        }
    }

    fn upload<T: Scalar>(&self, data: &[T]) -> Result<CudaBuffer<T>> {
        CudaBuffer::from_host(&self.device, data)
    }

    fn download<T: Scalar>(&self, buf: &CudaBuffer<T>) -> Result<Vec<T>> {
        buf.to_host(&self.device)
    }

    fn alloc<T: Scalar>(&self, len: usize) -> Result<CudaBuffer<T>> {
        CudaBuffer::zeros(&self.device, len)
    }

    fn synchronize(&self) -> Result<()> {
        self.device.synchronize()
    }
}

impl AttentionOps for CudaBackend {
    fn attention_forward<T: Element>(
        &self,
        p: &AttentionParams,
        q: &CudaBuffer<T>,
        k: &CudaBuffer<T>,
        v: &CudaBuffer<T>,
        o: &mut CudaBuffer<T>,
        lse: &mut CudaBuffer<f32>,
    ) -> Result<()> {
        checks::attention_forward(p, q, k, v, o, lse)?;
        attention::forward(
            &self.device,
            p,
            None,
            SparseEpilogue::none(),
            q,
            k,
            v,
            o,
            lse,
        )
    }

    fn attention_backward<T: Element>(
        &self,
        p: &AttentionParams,
        q: &CudaBuffer<T>,
        k: &CudaBuffer<T>,
        v: &CudaBuffer<T>,
        o: &CudaBuffer<T>,
        d_o: &CudaBuffer<T>,
        lse: &CudaBuffer<f32>,
        dq: &mut CudaBuffer<T>,
        dk: &mut CudaBuffer<T>,
        dv: &mut CudaBuffer<T>,
    ) -> Result<()> {
        checks::attention_backward(p, q, k, v, o, d_o, lse, dq, dk, dv)?;
        attention_bwd::backward(&self.device, p, None, q, k, v, o, d_o, lse, dq, dk, dv)
    }
}

impl SparseAttentionOps for CudaBackend {
    fn sparse_attention_forward<T: Element>(
        &self,
        p: &AttentionParams,
        layout: &DeviceLayout<Self>,
        q: &CudaBuffer<T>,
        k: &CudaBuffer<T>,
        v: &CudaBuffer<T>,
        epilogue: SparseEpilogue<'_, Self, T>,
        o: &mut CudaBuffer<T>,
        lse: &mut CudaBuffer<f32>,
    ) -> Result<()> {
        checks::sparse_forward(p, layout, q, k, v, &epilogue, o, lse)?;
        attention::forward(&self.device, p, Some(layout), epilogue, q, k, v, o, lse)
    }

    fn sparse_attention_backward<T: Element>(
        &self,
        p: &AttentionParams,
        layout: &DeviceLayout<Self>,
        layout_t: &DeviceLayout<Self>,
        q: &CudaBuffer<T>,
        k: &CudaBuffer<T>,
        v: &CudaBuffer<T>,
        o: &CudaBuffer<T>,
        d_o: &CudaBuffer<T>,
        lse: &CudaBuffer<f32>,
        dq: &mut CudaBuffer<T>,
        dk: &mut CudaBuffer<T>,
        dv: &mut CudaBuffer<T>,
    ) -> Result<()> {
        checks::sparse_backward(p, layout, layout_t, q, k, v, o, d_o, lse, dq, dk, dv)?;
        attention_bwd::backward(
            &self.device,
            p,
            Some((layout, layout_t)),
            q,
            k,
            v,
            o,
            d_o,
            lse,
            dq,
            dk,
            dv,
        )
    }

    fn block_topk<T: Element>(
        &self,
        p: &AttentionParams,
        topk: &TopkParams,
        q: &CudaBuffer<T>,
        k: &CudaBuffer<T>,
    ) -> Result<DeviceLayout<Self>> {
        checks::block_topk(p, topk, q, k)?;
        attention::block_topk(&self.device, p, topk, q, k)
    }
}

impl GrKanOps for CudaBackend {
    fn grkan_forward<T: Element>(
        &self,
        p: &GrKanParams,
        x: &CudaBuffer<T>,
        a: &CudaBuffer<f32>,
        b: &CudaBuffer<f32>,
        y: &mut CudaBuffer<T>,
    ) -> Result<()> {
        checks::grkan_forward(p, x, a, b, y)?;
        grkan::forward(&self.device, p, x, a, b, y)
    }

    fn grkan_backward<T: Element>(
        &self,
        p: &GrKanParams,
        x: &CudaBuffer<T>,
        a: &CudaBuffer<f32>,
        b: &CudaBuffer<f32>,
        dy: &CudaBuffer<T>,
        dx: &mut CudaBuffer<T>,
        da: &mut CudaBuffer<f32>,
        db: &mut CudaBuffer<f32>,
    ) -> Result<()> {
        checks::grkan_backward(p, x, a, b, dy, dx, da, db)?;
        grkan::backward(&self.device, p, x, a, b, dy, dx, da, db)
    }
}

impl GumbelOps for CudaBackend {
    fn gumbel_softmax_forward<T: Element>(
        &self,
        p: &GumbelParams,
        logits: &CudaBuffer<T>,
        y: &mut CudaBuffer<T>,
        y_soft: Option<&mut CudaBuffer<f32>>,
    ) -> Result<()> {
        checks::gumbel_forward(p, logits, y, y_soft.as_deref())?;
        gumbel::forward(&self.device, p, logits, y, y_soft)
    }

    fn gumbel_softmax_backward<T: Element>(
        &self,
        p: &GumbelParams,
        y_soft: &CudaBuffer<f32>,
        dy: &CudaBuffer<T>,
        dlogits: &mut CudaBuffer<T>,
    ) -> Result<()> {
        checks::gumbel_backward(p, y_soft, dy, dlogits)?;
        gumbel::backward(&self.device, p, y_soft, dy, dlogits)
    }

    fn gumbel_noise(&self, seed: u64, offset: u64, out: &mut CudaBuffer<f32>) -> Result<()> {
        gumbel::noise(&self.device, seed, offset, out)
    }
}
