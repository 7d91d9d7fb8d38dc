//! The timing helpers the benches use: [`WgpuBackend::time_ms`] and
//! [`WgpuBackend::copy_bandwidth_gbs`] and [`WgpuBackend::fma_peak_tflops`].
//!
//! With `TIMESTAMP_QUERY_INSIDE_ENCODERS` (and `TIMESTAMP_QUERY`) the device stamps the start
//! and the end of the timed work on the queue itself; without, the host's wall clock runs
//! between two synchronizations (which adds the submission and wait overheads).

use crate::device::{Bind, Launch};
use crate::shaders::Shader;
use crate::{BACKEND, WORD, WgpuBackend};
use flashneck_core::{Backend, DType, Error, Result};
use std::time::Instant;

/// Must match `Params` in ceiling.wgsl.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct CeilingParams {
    iterations: u32,
    threads: u32,
    m: f32,
    c: f32,
}

/// Threads per workgroup of ceiling.wgsl.
const CEILING_WG: u64 = 256;
/// FLOP one thread of ceiling.wgsl does per loop trip: 8 vec4 FMAs.
const CEILING_FLOP_PER_TRIP: f64 = 64.0;
/// At most this many trips: every chain's count stays an exact f32 integer (below 2^23).
const CEILING_MAX_TRIPS: u32 = 1 << 22;

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

    /// The f32 rate of fused multiply-adds on registers, in TFLOP/s (an FMA counts 2): the
    /// compute ceiling of kernels that compute in f32, as the WGSL attention does on every
    /// storage type. `ceiling.wgsl` on `workgroups` workgroups of 256 threads (the bench's
    /// 2^14 fill an H200's 132 × 2048 resident threads about 15 times over, so the last,
    /// partial wave costs little); the loop trips double from 16 until one run takes at least
    /// `min_ms`, then the best of five runs at that size counts, if the sums the threads stored
    /// show that every trip ran.
    pub fn fma_peak_tflops(&self, workgroups: u32, min_ms: f64) -> Result<f64> {
        let threads = u64::from(workgroups.max(1)) * CEILING_WG;
        let threads_u32 = u32::try_from(threads).map_err(|_| {
            Error::unsupported(BACKEND, format!("{workgroups} workgroups are too many"))
        })?;
        let sink = self.alloc_scratch(threads as usize)?;
        let run = |iterations: u32| -> Result<f64> {
            let prm = CeilingParams {
                iterations,
                threads: threads_u32,
                m: 1.0,
                c: 1.0,
            };
            self.time_ms(&mut || {
                self.run(&[Launch {
                    shader: Shader::Ceiling,
                    entry: "fma_peak",
                    dtype: DType::F32,
                    overrides: &[],
                    params: bytemuck::bytes_of(&prm),
                    binds: &[(1, Bind::Write(&sink))],
                    workgroups: threads / CEILING_WG,
                }])
            })
        };
        // The first run builds the pipeline; it is not timed for the ceiling.
        run(1)?;
        let mut iterations = 16u32;
        while run(iterations)? < min_ms && iterations < CEILING_MAX_TRIPS {
            iterations *= 2;
        }
        let mut best = f64::INFINITY;
        for _ in 0..5 {
            best = best.min(run(iterations)?);
        }
        if best <= 0.0 {
            return Err(Error::device(
                BACKEND,
                "the FMA loop took no measurable time",
            ));
        }
        self.check_fma_sink(&sink, threads_u32.min(4096), iterations)?;
        let flop = threads as f64 * f64::from(iterations) * CEILING_FLOP_PER_TRIP;
        Ok(flop / (best * 1e-3) / 1e12)
    }

    /// A rate counts only if the loop ran: with m = c = 1 each of a thread's 32 chains counts
    /// its trips from its integer start `(thread % 1024) + 4·chain + lane`, so thread t stores
    /// `32·(t % 1024) + 496 + 32·iterations`, exactly in f64 and within f32 rounding of the
    /// stored sum (a loop the compiler dropped or shortened misses by far more).
    fn check_fma_sink(&self, sink: &wgpu::Buffer, threads: u32, iterations: u32) -> Result<()> {
        let bytes = self.read_back(sink, u64::from(threads) * WORD)?;
        let got: &[f32] = bytemuck::cast_slice(&bytes);
        for (thread, &v) in got.iter().enumerate() {
            let x = f64::from(thread as u32 & 1023);
            // Σ over chains 0..8 and lanes 0..4 of 4·chain + lane = 4·4·28 + 8·6 = 496.
            let want = 32.0 * x + 496.0 + 32.0 * f64::from(iterations);
            if (f64::from(v) - want).abs() > 1e-5 * want {
                return Err(Error::device(
                    BACKEND,
                    format!(
                        "ceiling.wgsl thread {thread} stored {v} after {iterations} trips, \
                         {want} if every trip ran"
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shaders::{check_params_layout, host_fields};

    /// The uniform block the host writes is the one ceiling.wgsl reads.
    #[test]
    fn ceiling_params_match_the_shader() {
        let fields = host_fields!(CeilingParams; iterations, threads, m, c);
        check_params_layout(
            Shader::Ceiling,
            &fields,
            std::mem::size_of::<CeilingParams>(),
        );
    }
}
