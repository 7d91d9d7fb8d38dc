//! Gumbel-Softmax host code (SPEC §4): which row mapping of kernels/cuda/gumbel.cu a call uses.
//!
//! A row of `K` classes overlaps at most `ceil((K + 3) / 4)` Philox quads. Up to 8 quads per lane
//! of a warp it runs warp-per-row (4 rows per block), resident in registers; beyond, block-per-row
//! (256 threads, 4 quads each resident; longer rows take the kernel's online-softmax path).

use crate::device::{Arg, Device, LaunchConfig};
use crate::memory::CudaBuffer;
use crate::{elem_suffix, fits_i32};
use flashneck_core::{DeviceBuffer, Element, GumbelParams, Result};

const WARP_ROWS: usize = 4; // GUMBEL_WARP_ROWS
const WARP_QUADS: usize = 32 * 8; // 32 lanes × GUMBEL_WARP_Q
const BLOCK: u32 = 256; // GUMBEL_BLOCK

/// Kernel variant and launch shape for `rows` rows of `classes` classes.
fn row_mapping(dev: &Device, rows: usize, classes: usize) -> Result<(&'static str, LaunchConfig)> {
    fits_i32(dev, "rows", rows)?;
    fits_i32(dev, "classes", classes)?;
    // ceil((K + 3) / 4) <= div_ceil(K, 4) + 1 quads, whatever the row's alignment.
    if classes.div_ceil(4) < WARP_QUADS {
        Ok((
            "warp",
            LaunchConfig::linear(rows.div_ceil(WARP_ROWS) as u32, (WARP_ROWS * 32) as u32),
        ))
    } else {
        Ok(("block", LaunchConfig::linear(rows as u32, BLOCK)))
    }
}

/// Forward. The caller has validated the parameters and every buffer's length.
pub fn forward<T: Element>(
    dev: &Device,
    p: &GumbelParams,
    logits: &CudaBuffer<T>,
    y: &mut CudaBuffer<T>,
    y_soft: Option<&mut CudaBuffer<f32>>,
) -> Result<()> {
    if p.rows == 0 {
        return Ok(());
    }
    let (variant, cfg) = row_mapping(dev, p.rows, p.classes)?;
    let y_soft = match y_soft {
        Some(b) => b.addr_mut(dev)?,
        None => 0,
    };
    let args = [
        Arg::Ptr(logits.addr(dev)?),
        Arg::Ptr(y.addr_mut(dev)?),
        Arg::Ptr(y_soft),
        Arg::I32(p.rows as i32),
        Arg::I32(p.classes as i32),
        Arg::F32(p.tau),
        Arg::U64(p.seed),
        Arg::U64(p.offset),
        Arg::I32(p.hard as i32),
    ];
    // SAFETY: `args` follows `gumbel_forward_<variant>_<T>`'s parameter list; logits, y and
    // y_soft (when given; null otherwise, which the kernel checks before writing it) hold
    // rows·classes elements (checked above), all live buffers of `dev`, outputs borrowed
    // mutably; `row_mapping`'s grid covers the rows, and the kernel skips rows past `rows`.
    unsafe {
        dev.launch(
            &format!("gumbel_forward_{variant}_{}", elem_suffix::<T>()),
            &cfg,
            &args,
        )
    }
}

/// Backward. The caller has validated the parameters and every buffer's length.
pub fn backward<T: Element>(
    dev: &Device,
    p: &GumbelParams,
    y_soft: &CudaBuffer<f32>,
    dy: &CudaBuffer<T>,
    dlogits: &mut CudaBuffer<T>,
) -> Result<()> {
    if p.rows == 0 {
        return Ok(());
    }
    let (variant, cfg) = row_mapping(dev, p.rows, p.classes)?;
    let args = [
        Arg::Ptr(y_soft.addr(dev)?),
        Arg::Ptr(dy.addr(dev)?),
        Arg::Ptr(dlogits.addr_mut(dev)?),
        Arg::I32(p.rows as i32),
        Arg::I32(p.classes as i32),
        Arg::F32(p.tau),
    ];
    // SAFETY: `args` follows `gumbel_backward_<variant>_<T>`'s parameter list; y_soft, dy and
    // dlogits hold rows·classes elements (checked above), all live buffers of `dev`, dlogits
    // borrowed mutably; the kernel skips rows past `rows`.
    unsafe {
        dev.launch(
            &format!("gumbel_backward_{variant}_{}", elem_suffix::<T>()),
            &cfg,
            &args,
        )
    }
}

/// The raw noise of flat elements `0 .. out.len()`.
pub fn noise(dev: &Device, seed: u64, offset: u64, out: &mut CudaBuffer<f32>) -> Result<()> {
    let n = out.len();
    if n == 0 {
        return Ok(());
    }
    // Grid-stride kernel: one quad per thread per step, at most 65536 blocks.
    let blocks = n.div_ceil(4).div_ceil(BLOCK as usize).min(1 << 16) as u32;
    let args = [
        Arg::Ptr(out.addr_mut(dev)?),
        Arg::U64(n as u64),
        Arg::U64(seed),
        Arg::U64(offset),
    ];
    // SAFETY: `args` follows `gumbel_noise`'s parameter list; the grid-stride kernel writes
    // exactly elements 0..n of `out`, a live buffer of `dev` of n floats borrowed mutably.
    unsafe { dev.launch("gumbel_noise", &LaunchConfig::linear(blocks, BLOCK), &args) }
}
