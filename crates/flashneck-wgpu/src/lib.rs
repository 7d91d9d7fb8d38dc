//! # flashneck-wgpu
//!
//! The wgpu backend: WGSL ports of flashneck's ops (`kernels/wgsl/*.wgsl`), run through wgpu's
//! Vulkan backend (lavapipe in CI, any Vulkan GPU elsewhere).
//!
//! The device flow follows wgpu's `hello_compute` example, top to bottom in
//! [`WgpuBackend::new`]: an instance restricted to Vulkan, the adapter, a device with the
//! adapter's own limits, error handlers that record instead of panicking. Tensors are storage
//! buffers ([`Storage`]): `f16` tensors as native f16 where the adapter has `SHADER_F16` (unless
//! [`Options::f16_storage`] is off), `bf16` (which WGSL lacks) packed two per 32-bit word, and
//! everything else as 32-bit words: `f32` and `u32` as they are, fallback `f16` widened to `f32`
//! on upload and narrowed back (round to nearest even) on download. Every kernel computes in f32
//! and rounds what it stores to the op's element type, so device values are always exact values
//! of that type (docs/wgpu.md says why and what it costs).

mod attention;
mod device;
mod grkan;
mod gumbel;
pub mod shaders;
mod timing;

pub use shaders::{Storage, Variant};

use flashneck_core::{
    AttentionOps, AttentionParams, Backend, BackendInfo, DType, DeviceBuffer, DeviceLayout,
    Element, Error, GrKanOps, GrKanParams, GumbelOps, GumbelParams, HeadDims, OpKind, Result,
    Scalar, SparseAttentionOps, SparseEpilogue, TopkParams, checks,
};
use half::{bf16, f16};
use std::any::TypeId;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

/// Backend name in errors and reports.
pub(crate) const BACKEND: &str = "wgpu";

/// Bytes of a 32-bit word, the unit of buffer sizes and copies (wgpu wants multiples of 4).
const WORD: u64 = 4;

/// A tensor (or layout) on the device: a storage buffer of `len` elements in `storage`'s
/// representation (rounded up to whole words).
#[derive(Debug)]
pub struct WgpuBuffer<T> {
    buffer: wgpu::Buffer,
    len: usize,
    storage: Storage,
    _elem: PhantomData<T>,
}

impl<T> WgpuBuffer<T> {
    /// The underlying wgpu buffer (at least one word long, even when `len == 0`).
    pub fn raw(&self) -> &wgpu::Buffer {
        &self.buffer
    }

    /// How the elements are stored on the device.
    pub fn storage(&self) -> Storage {
        self.storage
    }
}

/// Choices made when a backend is created. Each feature is used only where the adapter has
/// it; turning one off runs the path adapters without it take (the tests do, on lavapipe).
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Store `f16` tensors as native f16 where the adapter has `SHADER_F16` (the default). Off:
    /// widened to f32 words. (bf16 is packed two per word on every adapter.)
    pub f16_storage: bool,
    /// Row reductions (GR-KAN, Gumbel) with subgroup operations where the adapter has
    /// `SUBGROUP` (the default). Off: workgroup-memory trees only.
    pub subgroups: bool,
    /// Ask for at most this many storage buffers per shader stage instead of the adapter's
    /// own limit (WebGPU's default is 8): to see what an adapter with so few refuses. `None`
    /// (the default): the adapter's limit.
    pub max_storage_buffers_per_shader_stage: Option<u32>,
}

impl Default for Options {
    /// Every feature the adapter has, except those turned off in the environment:
    /// `FLASHNECK_WGPU_NO_F16`, `FLASHNECK_WGPU_NO_SUBGROUPS` (set to anything but `0` or the
    /// empty string).
    fn default() -> Self {
        let off = |var| std::env::var(var).is_ok_and(|v| !v.is_empty() && v != "0");
        Options {
            f16_storage: !off("FLASHNECK_WGPU_NO_F16"),
            subgroups: !off("FLASHNECK_WGPU_NO_SUBGROUPS"),
            max_storage_buffers_per_shader_stage: None,
        }
    }
}

impl Options {
    /// Neither native f16 nor subgroups: what an adapter with no optional feature runs.
    pub const BASELINE: Options = Options {
        f16_storage: false,
        subgroups: false,
        max_storage_buffers_per_shader_stage: None,
    };
}

impl<T: Scalar> DeviceBuffer for WgpuBuffer<T> {
    fn len(&self) -> usize {
        self.len
    }
}

/// The first device error reported outside an error scope (uncaptured error or lost device).
type Fault = Arc<Mutex<Option<String>>>;

/// One wgpu device and queue, with its pipelines built once and cached. Clones share the
/// device, the queue and the pipeline cache (tests share one backend through clones).
#[derive(Clone)]
pub struct WgpuBackend {
    adapter_info: wgpu::AdapterInfo,
    device: wgpu::Device,
    queue: wgpu::Queue,
    limits: wgpu::Limits,
    features: wgpu::Features,
    /// f16 tensors are stored as native f16 (`SHADER_F16` and [`Options::f16_storage`]).
    f16_storage: bool,
    /// Row reductions use subgroup operations (`SUBGROUP` and [`Options::subgroups`]).
    subgroups: bool,
    /// Workgroup barriers one attention dispatch may run (`attention::passes`): bounded on CPU
    /// adapters, whose llvmpipe stops long workgroups short; `None` (one pass) on GPUs.
    barriers_per_pass: Option<u32>,
    /// One-word buffers bound where a kernel names a binding its launch does not use: one for
    /// read-only bindings, one for written ones (wgpu refuses a buffer bound both ways in one
    /// dispatch). Made once per device, not per call; no kernel stores to the written one.
    stand_in_read: wgpu::Buffer,
    stand_in_written: wgpu::Buffer,
    pipelines: Arc<Mutex<device::PipelineCache>>,
    fault: Fault,
    /// The ops whose kernels all fit the device's limits (what `info()` claims).
    ops: Vec<OpKind>,
}

impl WgpuBackend {
    /// Open a Vulkan adapter (a high-performance one when there is a choice); where there is
    /// none, a Metal or DX12 one (built in on macOS / Windows only). Never GL.
    ///
    /// No adapter gives [`Error::Device`]; so does a device request the adapter refuses.
    /// Options: [`Options::default`] (native f16 storage and subgroup reductions where the
    /// adapter has them, unless `FLASHNECK_WGPU_NO_F16` / `FLASHNECK_WGPU_NO_SUBGROUPS` is set).
    pub fn new() -> Result<Self> {
        Self::with_options(Options::default())
    }

    /// [`WgpuBackend::new`] with explicit [`Options`].
    pub fn with_options(options: Options) -> Result<Self> {
        // 1. + 2. An instance and its adapter, Vulkan first. CI asserts that the adapter it
        //    gets is Vulkan, so a fallback cannot pass unnoticed there.
        let adapter = request_adapter(wgpu::Backends::VULKAN)
            .or_else(|vulkan| {
                request_adapter(wgpu::Backends::METAL | wgpu::Backends::DX12).map_err(|_| vulkan)
            })
            .map_err(|e| {
                Error::device(
                    BACKEND,
                    format!(
                        "no Vulkan adapter ({e}); install a Vulkan driver, e.g. Mesa's lavapipe \
                         (Debian: mesa-vulkan-drivers)"
                    ),
                )
            })?;
        let adapter_info = adapter.get_info();

        // 3. A device with the adapter's own limits (wgpu's defaults are lower: storage
        //    bindings, workgroup memory) and the optional features we can use.
        let mut limits = adapter.limits();
        if let Some(n) = options.max_storage_buffers_per_shader_stage {
            limits.max_storage_buffers_per_shader_stage =
                limits.max_storage_buffers_per_shader_stage.min(n);
        }
        let mut wanted =
            wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS;
        if options.f16_storage {
            wanted |= wgpu::Features::SHADER_F16;
        }
        if options.subgroups {
            wanted |= wgpu::Features::SUBGROUP;
        }
        let features = adapter.features() & wanted;
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("flashneck"),
            required_features: features,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| Error::device(BACKEND, format!("device request failed: {e}")))?;

        // 4. Errors outside our error scopes and a lost device are recorded, never panics;
        //    the next call reports them as Error::Device.
        let fault: Fault = Arc::new(Mutex::new(None));
        let f = fault.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| record(&f, e.to_string())));
        let f = fault.clone();
        device.set_device_lost_callback(move |reason, msg| {
            record(&f, format!("device lost ({reason:?}): {msg}"))
        });

        let ops = ops_within(&limits)?;
        let barriers_per_pass = (adapter_info.device_type == wgpu::DeviceType::Cpu)
            .then_some(attention::MAX_BARRIERS_PER_PASS);
        let stand_in = |label| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: WORD,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            })
        };
        let (stand_in_read, stand_in_written) = (stand_in("stand-in"), stand_in("stand-in (rw)"));
        Ok(WgpuBackend {
            adapter_info,
            device,
            queue,
            limits,
            features,
            f16_storage: features.contains(wgpu::Features::SHADER_F16),
            subgroups: features.contains(wgpu::Features::SUBGROUP),
            barriers_per_pass,
            stand_in_read,
            stand_in_written,
            pipelines: Arc::new(Mutex::new(HashMap::new())),
            ops,
            fault,
        })
    }

    /// The adapter this backend runs on (name, driver, backend API).
    pub fn adapter_info(&self) -> wgpu::AdapterInfo {
        self.adapter_info.clone()
    }

    /// The device limits in force (the adapter's own).
    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }

    /// Whether the device uses `SHADER_F16` (f16 types in shaders and 16-bit storage buffers):
    /// the adapter has it and [`Options::f16_storage`] asked for it. The kernels compute in f32
    /// either way; the feature lets f16 tensors be stored as f16.
    pub fn has_shader_f16(&self) -> bool {
        self.features.contains(wgpu::Features::SHADER_F16)
    }

    /// Whether the row reductions use subgroup operations: the adapter has `SUBGROUP` and
    /// [`Options::subgroups`] asked for it.
    pub fn has_subgroups(&self) -> bool {
        self.subgroups
    }

    /// The build of `shader` this device runs for element type `dtype`.
    pub fn variant(&self, shader: shaders::Shader, dtype: DType) -> Variant {
        shader.variant(Variant::new(self.storage(dtype), self.subgroups))
    }

    /// How tensors of `dtype` are stored on this device: native f16 for f16 where the
    /// adapter has `SHADER_F16` and [`Options::f16_storage`] is on, bf16 packed two per word,
    /// else 32-bit words.
    pub fn storage(&self, dtype: DType) -> Storage {
        match dtype {
            DType::F16 if self.f16_storage => Storage::F16,
            DType::BF16 => Storage::Bf16,
            _ => Storage::F32,
        }
    }

    /// The storage of host type `T` (`u32` layouts: words).
    fn storage_of<T: Scalar>(&self) -> Storage {
        if TypeId::of::<T>() == TypeId::of::<f16>() {
            self.storage(DType::F16)
        } else if TypeId::of::<T>() == TypeId::of::<bf16>() {
            self.storage(DType::BF16)
        } else {
            Storage::F32
        }
    }

    /// The four Philox4x32-10 words the shaders compute for one counter and key (for tests
    /// against SPEC §4's known answers).
    pub fn philox_words(&self, counter: [u32; 4], key: [u32; 2]) -> Result<[u32; 4]> {
        gumbel::philox_words(self, counter, key)
    }

    /// Copy the first `size` bytes of `src` (a COPY_SRC buffer) to the host, waiting for the
    /// queue.
    pub(crate) fn read_back(&self, src: &wgpu::Buffer, size: u64) -> Result<Vec<u8>> {
        let staging = self.scoped(|| {
            let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("read back"),
                size,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let mut enc = self
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
            enc.copy_buffer_to_buffer(src, 0, &staging, 0, size);
            self.queue.submit([enc.finish()]);
            staging
        })?;
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            // The receiver lives until recv() below returns.
            let _ = tx.send(r);
        });
        self.synchronize()?;
        rx.recv()
            .map_err(|_| Error::device(BACKEND, "buffer mapping never completed"))?
            .map_err(|e| Error::device(BACKEND, format!("buffer mapping failed: {e}")))?;
        let bytes = staging
            .get_mapped_range(..)
            .map_err(|e| Error::device(BACKEND, format!("mapped range: {e}")))?
            .to_vec();
        staging.unmap();
        Ok(bytes)
    }

    /// Destroy the device now (its memory is freed at once). Every later call on this backend
    /// and its clones returns [`Error::Device`]; tests use it to exercise the lost-device path.
    pub fn destroy(&self) {
        self.device.destroy();
    }

    /// Fail with the first recorded uncaptured error or device loss.
    pub(crate) fn check_alive(&self) -> Result<()> {
        let fault = self
            .fault
            .lock()
            .map_err(|_| Error::device(BACKEND, "fault lock poisoned"))?;
        match fault.as_ref() {
            Some(msg) => Err(Error::device(BACKEND, msg.clone())),
            None => Ok(()),
        }
    }

    /// Check that a buffer of `len` elements in `storage` can be created and bound as storage;
    /// its size in bytes (a whole number of words, at least one). Also below 2^32 bytes on
    /// every adapter (Metal reports larger binding sizes): the kernels index elements and pass
    /// sizes in u32, which this one check makes safe for every op.
    fn check_size(&self, len: usize, storage: Storage) -> Result<u64> {
        let bytes = (len.max(1) as u64)
            .saturating_mul(storage.bytes())
            .next_multiple_of(WORD);
        let max = self
            .limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size)
            .min(u64::from(u32::MAX) & !(WORD - 1));
        if bytes > max {
            return Err(Error::bad(
                "len",
                format!("a buffer of at most {max} bytes (max_storage_buffer_binding_size)"),
                format!("{len} elements = {bytes} bytes"),
            ));
        }
        Ok(bytes)
    }

    /// A device buffer of `len` elements in `storage` holding `contents` (zeros when `None`;
    /// padded with zeros to the buffer's whole words).
    fn create<T>(
        &self,
        len: usize,
        storage: Storage,
        contents: Option<&[u8]>,
    ) -> Result<WgpuBuffer<T>> {
        let size = self.check_size(len, storage)?;
        let usage = wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST;
        let buffer = self.scoped(|| {
            // wgpu zero-fills new buffers.
            let b = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size,
                usage,
                mapped_at_creation: false,
            });
            if let Some(bytes) = contents.filter(|c| !c.is_empty()) {
                // write_buffer takes whole words: the whole ones as they are, the last partial
                // one padded with zeros.
                let whole = bytes.len() - bytes.len() % WORD as usize;
                if whole > 0 {
                    self.queue.write_buffer(&b, 0, &bytes[..whole]);
                }
                if whole < bytes.len() {
                    let mut last = [0u8; WORD as usize];
                    last[..bytes.len() - whole].copy_from_slice(&bytes[whole..]);
                    self.queue.write_buffer(&b, whole as u64, &last);
                }
            }
            b
        })?;
        Ok(WgpuBuffer {
            buffer,
            len,
            storage,
            _elem: PhantomData,
        })
    }

    /// The stand-ins for unused bindings: `(read-only, written)` (see the fields).
    pub(crate) fn stand_ins(&self) -> (&wgpu::Buffer, &wgpu::Buffer) {
        (&self.stand_in_read, &self.stand_in_written)
    }

    /// A scratch buffer of `len` f32 words (zero-filled) for a kernel's intermediate results.
    pub(crate) fn alloc_scratch(&self, len: usize) -> Result<wgpu::Buffer> {
        Ok(self.create::<f32>(len, Storage::F32, None)?.buffer)
    }

    /// The word layout (`Storage::F32`) of a host slice: fallback f16 widened to f32.
    fn to_words<T: Scalar>(data: &[T]) -> Vec<u8> {
        if TypeId::of::<T>() == TypeId::of::<f16>() {
            let h: &[f16] = bytemuck::cast_slice(data);
            let w: Vec<f32> = h.iter().map(|v| v.to_f32()).collect();
            bytemuck::cast_slice(&w).to_vec()
        } else {
            bytemuck::cast_slice(data).to_vec()
        }
    }

    /// The host values of device words: fallback f16 narrowed (round to nearest even).
    fn from_words<T: Scalar>(words: &[u32]) -> Vec<T> {
        if TypeId::of::<T>() == TypeId::of::<f16>() {
            let h: Vec<f16> = words
                .iter()
                .map(|&w| f16::from_f32(f32::from_bits(w)))
                .collect();
            bytemuck::cast_slice(&h).to_vec()
        } else {
            bytemuck::cast_slice(words).to_vec()
        }
    }

    /// What this backend runs: every op listed here has a kernel for every dtype.
    fn implemented_ops() -> Vec<OpKind> {
        OpKind::ALL.to_vec()
    }
}

/// The entry points an op launches.
fn entry_points(op: OpKind) -> &'static [(shaders::Shader, &'static str)] {
    use shaders::Shader::{Attention, GrKan, Gumbel, Topk};
    match op {
        OpKind::AttentionForward | OpKind::SparseForward => &[(Attention, "attention_forward")],
        OpKind::AttentionBackward | OpKind::SparseBackward => &[
            (Attention, "attention_backward_delta"),
            (Attention, "attention_backward_dq"),
            (Attention, "attention_backward_dkdv"),
        ],
        OpKind::BlockTopk => &[(Topk, "topk_pool"), (Topk, "topk_select")],
        OpKind::GrKanForward => &[(GrKan, "grkan_forward")],
        OpKind::GrKanBackward => &[
            (GrKan, "grkan_backward_partials"),
            (GrKan, "grkan_backward_reduce"),
        ],
        OpKind::GumbelForward => &[(Gumbel, "gumbel_forward")],
        OpKind::GumbelBackward => &[(Gumbel, "gumbel_backward")],
        OpKind::GumbelNoise => &[(Gumbel, "gumbel_noise")],
    }
}

/// The implemented ops whose every entry point binds no more storage buffers than `limits`
/// allow per shader stage: an op that cannot run is not claimed (and returns `Unsupported`
/// before any launch if called).
fn ops_within(limits: &wgpu::Limits) -> Result<Vec<OpKind>> {
    let max = limits.max_storage_buffers_per_shader_stage as usize;
    let plain = Variant::new(Storage::F32, false);
    let mut ops = Vec::new();
    for op in WgpuBackend::implemented_ops() {
        let mut fits = true;
        for &(shader, entry) in entry_points(op) {
            let r = shaders::entry_resources(shader, plain, entry, &[])
                .map_err(|e| Error::device(BACKEND, e))?;
            fits &= r.storage_bindings.len() <= max;
        }
        if fits {
            ops.push(op);
        }
    }
    Ok(ops)
}

/// The preferred adapter among `backends`, with its real limits.
fn request_adapter(backends: wgpu::Backends) -> Result<wgpu::Adapter, wgpu::RequestAdapterError> {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = backends;
    let instance = wgpu::Instance::new(desc);
    pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
        power_preference: wgpu::PowerPreference::HighPerformance,
        force_fallback_adapter: false,
        compatible_surface: None,
        // The adapter's real limits, not fingerprint-hiding buckets.
        apply_limit_buckets: false,
    }))
}

fn record(fault: &Fault, msg: String) {
    if let Ok(mut f) = fault.lock() {
        f.get_or_insert(msg);
    }
}

impl Backend for WgpuBackend {
    type Buffer<T: Scalar> = WgpuBuffer<T>;

    fn info(&self) -> BackendInfo {
        let a = &self.adapter_info;
        BackendInfo {
            name: BACKEND.into(),
            device: format!(
                "{} ({:?}, {:?}, driver {} {})",
                a.name, a.backend, a.device_type, a.driver, a.driver_info
            ),
            head_dims: HeadDims::UpTo(flashneck_core::params::MAX_HEAD_DIM),
            ops: self
                .ops
                .iter()
                .map(|&op| (op, DType::ALL.to_vec()))
                .collect(),
        }
    }

    fn upload<T: Scalar>(&self, data: &[T]) -> Result<WgpuBuffer<T>> {
        let storage = self.storage_of::<T>();
        match storage {
            // Native f16, packed bf16: the host bytes as they are.
            Storage::F16 | Storage::Bf16 => {
                self.create(data.len(), storage, Some(bytemuck::cast_slice(data)))
            }
            Storage::F32 => self.create(data.len(), storage, Some(&Self::to_words(data))),
        }
    }

    fn download<T: Scalar>(&self, buf: &WgpuBuffer<T>) -> Result<Vec<T>> {
        if buf.len == 0 {
            return Ok(Vec::new());
        }
        let bytes = buf.len as u64 * buf.storage.bytes();
        let raw = self.read_back(&buf.buffer, bytes.next_multiple_of(WORD))?;
        match buf.storage {
            Storage::F16 | Storage::Bf16 => {
                // T is f16 or bf16: 2-byte halves, little-endian like the device's words.
                let halves: Vec<u16> = raw[..bytes as usize]
                    .chunks_exact(2)
                    .map(|h| u16::from_le_bytes([h[0], h[1]]))
                    .collect();
                Ok(bytemuck::cast_slice(&halves).to_vec())
            }
            Storage::F32 => Ok(Self::from_words(bytemuck::cast_slice(&raw))),
        }
    }

    fn alloc<T: Scalar>(&self, len: usize) -> Result<WgpuBuffer<T>> {
        self.create(len, self.storage_of::<T>(), None)
    }

    fn synchronize(&self) -> Result<()> {
        self.check_alive()?;
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::device(BACKEND, format!("waiting for the device: {e}")))?;
        self.check_alive()
    }
}

impl AttentionOps for WgpuBackend {
    fn attention_forward<T: Element>(
        &self,
        p: &AttentionParams,
        q: &WgpuBuffer<T>,
        k: &WgpuBuffer<T>,
        v: &WgpuBuffer<T>,
        o: &mut WgpuBuffer<T>,
        lse: &mut WgpuBuffer<f32>,
    ) -> Result<()> {
        checks::attention_forward(p, q, k, v, o, lse)?;
        let extras = attention::ForwardExtras {
            layout: None,
            row_scale: None,
            residual: None,
        };
        attention::forward(self, p, T::DTYPE, q, k, v, extras, o, lse)
    }

    fn attention_backward<T: Element>(
        &self,
        p: &AttentionParams,
        q: &WgpuBuffer<T>,
        k: &WgpuBuffer<T>,
        v: &WgpuBuffer<T>,
        o: &WgpuBuffer<T>,
        d_o: &WgpuBuffer<T>,
        lse: &WgpuBuffer<f32>,
        dq: &mut WgpuBuffer<T>,
        dk: &mut WgpuBuffer<T>,
        dv: &mut WgpuBuffer<T>,
    ) -> Result<()> {
        checks::attention_backward(p, q, k, v, o, d_o, lse, dq, dk, dv)?;
        let g = attention::Grads {
            q,
            k,
            v,
            o,
            d_o,
            lse,
            dq,
            dk,
            dv,
        };
        attention::backward(self, p, T::DTYPE, None, g)
    }
}

impl SparseAttentionOps for WgpuBackend {
    fn sparse_attention_forward<T: Element>(
        &self,
        p: &AttentionParams,
        layout: &DeviceLayout<Self>,
        q: &WgpuBuffer<T>,
        k: &WgpuBuffer<T>,
        v: &WgpuBuffer<T>,
        epilogue: SparseEpilogue<'_, Self, T>,
        o: &mut WgpuBuffer<T>,
        lse: &mut WgpuBuffer<f32>,
    ) -> Result<()> {
        checks::sparse_forward(p, layout, q, k, v, &epilogue, o, lse)?;
        let extras = attention::ForwardExtras {
            layout: Some(layout),
            row_scale: epilogue.row_scale,
            residual: epilogue.residual.map(|b| b.raw()),
        };
        attention::forward(self, p, T::DTYPE, q, k, v, extras, o, lse)
    }

    fn sparse_attention_backward<T: Element>(
        &self,
        p: &AttentionParams,
        layout: &DeviceLayout<Self>,
        layout_t: &DeviceLayout<Self>,
        q: &WgpuBuffer<T>,
        k: &WgpuBuffer<T>,
        v: &WgpuBuffer<T>,
        o: &WgpuBuffer<T>,
        d_o: &WgpuBuffer<T>,
        lse: &WgpuBuffer<f32>,
        dq: &mut WgpuBuffer<T>,
        dk: &mut WgpuBuffer<T>,
        dv: &mut WgpuBuffer<T>,
    ) -> Result<()> {
        checks::sparse_backward(p, layout, layout_t, q, k, v, o, d_o, lse, dq, dk, dv)?;
        let g = attention::Grads {
            q,
            k,
            v,
            o,
            d_o,
            lse,
            dq,
            dk,
            dv,
        };
        attention::backward(self, p, T::DTYPE, Some((layout, layout_t)), g)
    }

    fn block_topk<T: Element>(
        &self,
        p: &AttentionParams,
        topk: &TopkParams,
        q: &WgpuBuffer<T>,
        k: &WgpuBuffer<T>,
    ) -> Result<DeviceLayout<Self>> {
        checks::block_topk(p, topk, q, k)?;
        attention::block_topk(self, p, topk, T::DTYPE, q, k)
    }
}

impl GrKanOps for WgpuBackend {
    fn grkan_forward<T: Element>(
        &self,
        p: &GrKanParams,
        x: &WgpuBuffer<T>,
        a: &WgpuBuffer<f32>,
        b: &WgpuBuffer<f32>,
        y: &mut WgpuBuffer<T>,
    ) -> Result<()> {
        checks::grkan_forward(p, x, a, b, y)?;
        grkan::forward(self, p, T::DTYPE, x, a, b, y)
    }

    fn grkan_backward<T: Element>(
        &self,
        p: &GrKanParams,
        x: &WgpuBuffer<T>,
        a: &WgpuBuffer<f32>,
        b: &WgpuBuffer<f32>,
        dy: &WgpuBuffer<T>,
        dx: &mut WgpuBuffer<T>,
        da: &mut WgpuBuffer<f32>,
        db: &mut WgpuBuffer<f32>,
    ) -> Result<()> {
        checks::grkan_backward(p, x, a, b, dy, dx, da, db)?;
        grkan::backward(self, p, T::DTYPE, x, a, b, dy, dx, da, db)
    }
}

impl GumbelOps for WgpuBackend {
    fn gumbel_softmax_forward<T: Element>(
        &self,
        p: &GumbelParams,
        logits: &WgpuBuffer<T>,
        y: &mut WgpuBuffer<T>,
        y_soft: Option<&mut WgpuBuffer<f32>>,
    ) -> Result<()> {
        checks::gumbel_forward(p, logits, y, y_soft.as_deref())?;
        gumbel::forward(self, p, T::DTYPE, logits, y, y_soft)
    }

    fn gumbel_softmax_backward<T: Element>(
        &self,
        p: &GumbelParams,
        y_soft: &WgpuBuffer<f32>,
        dy: &WgpuBuffer<T>,
        dlogits: &mut WgpuBuffer<T>,
    ) -> Result<()> {
        checks::gumbel_backward(p, y_soft, dy, dlogits)?;
        gumbel::backward(self, p, T::DTYPE, y_soft, dy, dlogits)
    }

    fn gumbel_noise(&self, seed: u64, offset: u64, out: &mut WgpuBuffer<f32>) -> Result<()> {
        gumbel::noise(self, seed, offset, out)
    }
}
