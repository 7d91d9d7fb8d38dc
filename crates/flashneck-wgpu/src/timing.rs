//! The timing helpers the benches use: [`WgpuBackend::time_ms`] and
//! [`WgpuBackend::copy_bandwidth_gbs`].
//!
//! With `TIMESTAMP_QUERY_INSIDE_ENCODERS` (and `TIMESTAMP_QUERY`) the device stamps the start
//! and the end of the timed work on the queue itself; without, the host's wall clock runs
//! between two synchronizations (which adds the submission and wait overheads).

use crate::{BACKEND, WORD, WgpuBackend};
use flashneck_core::{Backend, Error, Result};
use std::time::Instant;

impl WgpuBackend {
    /// Whether [`WgpuBackend::time_ms`] uses device timestamps.
    pub fn has_timestamps(&self) -> bool {
        self.features.contains(
            wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS,
        )
    }

    /// Milliseconds the device spends on what `f` submits: device timestamps written on the
    /// queue before and after `f` where the adapter has them, else the wall clock between a
    /// synchronized start and a synchronized end.
    pub fn time_ms(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
        self.synchronize()?;
        if !self.has_timestamps() {
            let start = Instant::now();
            f()?;
            self.synchronize()?;
            return Ok(start.elapsed().as_secs_f64() * 1e3);
        }
        let (queries, resolved) = self.scoped(|| {
            let queries = self.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("time_ms"),
                ty: wgpu::QueryType::Timestamp,
                count: 2,
            });
            let resolved = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("time_ms resolve"),
                size: 2 * wgpu::QUERY_SIZE as u64,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            (queries, resolved)
        })?;
        let stamp = |index: u32, resolve: bool| {
            self.scoped(|| {
                let mut enc = self
                    .device
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
                enc.write_timestamp(&queries, index);
                if resolve {
                    enc.resolve_query_set(&queries, 0..2, &resolved, 0);
                }
                self.queue.submit([enc.finish()]);
            })
        };
        stamp(0, false)?;
        f()?;
        stamp(1, true)?;
        let bytes = self.read_back(&resolved, 2 * wgpu::QUERY_SIZE as u64)?;
        let ticks: &[u64] = bytemuck::cast_slice(&bytes);
        if ticks[1] < ticks[0] {
            return Err(Error::device(BACKEND, "device timestamps went backwards"));
        }
        let ns = (ticks[1] - ticks[0]) as f64 * f64::from(self.queue.get_timestamp_period());
        Ok(ns * 1e-6)
    }

    /// Device-to-device copy bandwidth in GB/s, counting read plus written bytes, for a copy
    /// of `bytes` bytes (rounded up to whole words), best of five runs.
    pub fn copy_bandwidth_gbs(&self, bytes: usize) -> Result<f64> {
        let words = bytes.div_ceil(WORD as usize).max(1);
        let src = self.alloc::<u32>(words)?;
        let dst = self.alloc::<u32>(words)?;
        let size = words as u64 * WORD;
        let mut best = f64::INFINITY;
        for _ in 0..5 {
            let ms = self.time_ms(&mut || {
                self.scoped(|| {
                    let mut enc = self
                        .device
                        .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
                    enc.copy_buffer_to_buffer(src.raw(), 0, dst.raw(), 0, size);
                    self.queue.submit([enc.finish()]);
                })
            })?;
            best = best.min(ms);
        }
        if best <= 0.0 {
            return Err(Error::device(
                BACKEND,
                format!("a {size}-byte copy took no measurable time"),
            ));
        }
        Ok(2.0 * size as f64 / (best * 1e-3) / 1e9)
    }
}
