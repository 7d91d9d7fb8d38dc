//! Device plumbing: the pipeline cache and the one way kernels are launched.
//!
//! A launch names a shader, an entry point and the element type (the `DTYPE` override; with
//! the device's features it also fixes the shader's [`Variant`]: the storage of the op's
//! tensors and whether its reductions use subgroups), any other pipeline-overridable constants
//! the op specialises its kernels on (GR-KAN's degrees), a parameter block (bound as a uniform
//! at binding 0) and the storage buffers it binds. A pipeline's layout holds only the storage
//! bindings its entry point uses (naga says which), so kernels sharing a module do not count
//! each other's buffers against the adapter's per-stage limit; a launch that leaves one of them
//! unbound is an error, and so is an entry point that needs more than the adapter allows.
//! Pipelines and their bind group layouts are built on first use and cached for the backend's
//! lifetime, one per set of constants.
//! Every batch of launches runs inside wgpu error scopes, so a validation or out-of-memory error
//! comes back as [`Error::Device`] instead of wgpu's default panic.

use crate::shaders::{self, Shader, Variant};
use crate::{BACKEND, WgpuBackend};
use flashneck_core::{DType, Error, Result};
use std::collections::HashMap;
use std::sync::Arc;
use wgpu::util::DeviceExt;

/// How a kernel binds a storage buffer.
#[derive(Clone, Copy)]
pub(crate) enum Bind<'a> {
    Read(&'a wgpu::Buffer),
    Write(&'a wgpu::Buffer),
}

impl<'a> Bind<'a> {
    fn buffer(self) -> &'a wgpu::Buffer {
        match self {
            Bind::Read(b) | Bind::Write(b) => b,
        }
    }
    fn read_only(&self) -> bool {
        matches!(self, Bind::Read(_))
    }
}

/// One dispatch: `workgroups` workgroups (folded into a 2-D grid) of `entry` in `shader`.
pub(crate) struct Launch<'a> {
    pub shader: Shader,
    pub entry: &'static str,
    pub dtype: DType,
    /// Values of the shader's `override` constants besides `DTYPE` (part of the pipeline's key:
    /// the driver compiles each set as constants, so loops they bound have fixed trip counts).
    pub overrides: &'a [(&'static str, u32)],
    /// The parameter block (a `#[repr(C)]` Pod struct matching the shader's `Params`).
    pub params: &'a [u8],
    /// Storage buffers by binding number (binding 0 is the parameter uniform).
    pub binds: &'a [(u32, Bind<'a>)],
    pub workgroups: u64,
}

/// A compiled entry point, the bind group layout it was built with and the storage bindings
/// that layout holds (the ones the entry point uses).
pub(crate) struct Pipeline {
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
    bindings: Vec<u32>,
}

/// The buffer `l` binds at `binding`, or an error naming the entry point that needs it.
fn bound<'a>(l: &Launch<'a>, binding: u32) -> Result<Bind<'a>> {
    l.binds
        .iter()
        .find(|(n, _)| *n == binding)
        .map(|&(_, b)| b)
        .ok_or_else(|| {
            Error::device(
                BACKEND,
                format!(
                    "{}.wgsl {} uses binding {binding}, which the launch does not bind",
                    l.shader, l.entry
                ),
            )
        })
}

/// Pipelines keyed by (shader, entry point, element type, shader variant, overrides).
pub(crate) type PipelineCache = HashMap<PipelineKey, Arc<Pipeline>>;

type PipelineKey = (
    Shader,
    &'static str,
    DType,
    Variant,
    Vec<(&'static str, u32)>,
);

/// An error and all its sources, one per line (wgpu's own message is often just the kind).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(&format!("\n  caused by: {s}"));
        source = s.source();
    }
    msg
}

fn dtype_code(d: DType) -> f64 {
    match d {
        DType::F32 => 0.0,
        DType::F16 => 1.0,
        DType::BF16 => 2.0,
    }
}

impl WgpuBackend {
    /// The cached pipeline for a launch, built (and its workgroup memory checked) on first use.
    fn pipeline(&self, l: &Launch<'_>) -> Result<Arc<Pipeline>> {
        let variant = self.variant(l.shader, l.dtype);
        let key = (l.shader, l.entry, l.dtype, variant, l.overrides.to_vec());
        let mut cache = self
            .pipelines
            .lock()
            .map_err(|_| Error::device(BACKEND, "pipeline cache lock poisoned"))?;
        if let Some(p) = cache.get(&key) {
            return Ok(p.clone());
        }
        let mut constants = vec![("DTYPE", dtype_code(l.dtype))];
        constants.extend(l.overrides.iter().map(|&(name, v)| (name, f64::from(v))));
        let resources = shaders::entry_resources(l.shader, variant, l.entry, &constants)
            .map_err(|e| Error::device(BACKEND, e))?;
        let need = resources.workgroup_bytes;
        let limit = u64::from(self.limits.max_compute_workgroup_storage_size);
        let buffers = resources.storage_bindings.len();
        let max_buffers = self.limits.max_storage_buffers_per_shader_stage as usize;
        if buffers > max_buffers {
            return Err(Error::unsupported(
                BACKEND,
                format!(
                    "{}.wgsl {} binds {buffers} storage buffers, the adapter allows \
                     {max_buffers} per shader stage",
                    l.shader, l.entry
                ),
            ));
        }
        if need > limit {
            return Err(Error::unsupported(
                BACKEND,
                format!(
                    "{}.wgsl {} needs {need} bytes of workgroup memory, the adapter allows {limit}",
                    l.shader, l.entry
                ),
            ));
        }
        let source = l.shader.source(variant);
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(l.shader.name()),
                source: wgpu::ShaderSource::Wgsl(source.into()),
            });
        let mut entries = vec![wgpu::BindGroupLayoutEntry {
            binding: 0,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Uniform,
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        }];
        for &binding in &resources.storage_bindings {
            entries.push(wgpu::BindGroupLayoutEntry {
                binding,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage {
                        read_only: bound(l, binding)?.read_only(),
                    },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            });
        }
        let layout = self
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(l.entry),
                entries: &entries,
            });
        let pipeline_layout = self
            .device
            .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(l.entry),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(l.entry),
                layout: Some(&pipeline_layout),
                module: &module,
                entry_point: Some(l.entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &constants,
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
        let p = Arc::new(Pipeline {
            pipeline,
            layout,
            bindings: resources.storage_bindings,
        });
        cache.insert(key, p.clone());
        Ok(p)
    }

    /// Fold `n` workgroups into an `(x, y)` grid within the per-dimension limit.
    fn grid(&self, n: u64) -> Result<(u32, u32)> {
        let max = u64::from(self.limits.max_compute_workgroups_per_dimension);
        let x = n.min(max);
        let y = n.div_ceil(x.max(1));
        if y > max {
            return Err(Error::unsupported(
                BACKEND,
                format!("{n} workgroups exceed the {max} x {max} dispatch grid"),
            ));
        }
        Ok((x as u32, y as u32))
    }

    /// Encode `launches` in order into one command buffer and submit it, inside error scopes.
    /// Their parameter blocks share one uniform buffer, each at an offset aligned to the
    /// device's `min_uniform_buffer_offset_alignment` (a multi-pass attention call makes dozens
    /// of launches; one buffer instead of one each).
    pub(crate) fn run(&self, launches: &[Launch<'_>]) -> Result<()> {
        // Uniform bindings must be a multiple of 16 bytes long.
        let block = |l: &Launch<'_>| l.params.len().div_ceil(16).max(1) as u64 * 16;
        let align = u64::from(self.limits.min_uniform_buffer_offset_alignment);
        let stride = launches
            .iter()
            .map(block)
            .max()
            .unwrap_or(16)
            .next_multiple_of(align);
        let mut params = vec![0u8; (stride * launches.len().max(1) as u64) as usize];
        for (i, l) in launches.iter().enumerate() {
            let at = i * stride as usize;
            params[at..at + l.params.len()].copy_from_slice(l.params);
        }
        self.scoped(|| {
            let uniform = self
                .device
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("params"),
                    contents: &params,
                    usage: wgpu::BufferUsages::UNIFORM,
                });
            let mut encoder = self
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
            for (i, l) in launches.iter().enumerate() {
                if l.workgroups == 0 {
                    continue;
                }
                let (x, y) = self.grid(l.workgroups)?;
                let pipeline = self.pipeline(l)?;
                let mut entries = vec![wgpu::BindGroupEntry {
                    binding: 0,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: &uniform,
                        offset: i as u64 * stride,
                        size: wgpu::BufferSize::new(block(l)),
                    }),
                }];
                // Only the bindings the entry point uses: a launch may name more (one list
                // shared by several kernels), and the layout holds only these.
                for &binding in &pipeline.bindings {
                    entries.push(wgpu::BindGroupEntry {
                        binding,
                        resource: bound(l, binding)?.buffer().as_entire_binding(),
                    });
                }
                let group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some(l.entry),
                    layout: &pipeline.layout,
                    entries: &entries,
                });
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some(l.entry),
                    timestamp_writes: None,
                });
                pass.set_pipeline(&pipeline.pipeline);
                pass.set_bind_group(0, &group, &[]);
                pass.dispatch_workgroups(x, y, 1);
            }
            self.queue.submit([encoder.finish()]);
            Ok(())
        })?
    }

    /// Run `f` inside validation, out-of-memory and internal error scopes, and turn any error
    /// they catch (or a lost device) into [`Error::Device`].
    pub(crate) fn scoped<R>(&self, f: impl FnOnce() -> R) -> Result<R> {
        self.check_alive()?;
        let internal = self.device.push_error_scope(wgpu::ErrorFilter::Internal);
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let r = f();
        let errors = [
            pollster::block_on(validation.pop()),
            pollster::block_on(oom.pop()),
            pollster::block_on(internal.pop()),
        ];
        if let Some(e) = errors.into_iter().flatten().next() {
            return Err(Error::device(BACKEND, error_chain(&e)));
        }
        self.check_alive()?;
        Ok(r)
    }
}
