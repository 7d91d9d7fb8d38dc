//! GR-KAN host code (SPEC §3): tiles, grids and arguments of kernels/cuda/grkan.cu.
//!
//! A block owns `rows_per_tile` rows of one group's channels (grid = tiles × groups). Tiles are
//! sized to about 1024 16-byte vectors per block (4 per thread), enough work per block to hide
//! latency and enough blocks to fill the device on the benchmark shapes.

use crate::device::{Arg, Device, LaunchConfig};
use crate::memory::CudaBuffer;
use crate::{elem_suffix, fits_i32};
use flashneck_core::{Element, GrKanParams, Result};

/// Threads per block (`GRKAN_THREADS` in grkan.cu).
const THREADS: u32 = 256;
/// Floats per (tile, group) partial of the backward (`GRKAN_PARTIAL`).
const PARTIAL: usize = 16;
/// 16-byte vectors per block.
const VECTORS_PER_BLOCK: usize = 1024;

/// How a call is tiled.
struct Tiling {
    rows_per_tile: usize,
    tiles: usize,
    vectorized: bool,
}

fn tiling<T: Element>(dev: &Device, p: &GrKanParams) -> Result<Tiling> {
    let width = p.group_width();
    let vec = 16 / size_of::<T>();
    let rows_per_tile = (VECTORS_PER_BLOCK * vec / width).clamp(1, p.rows.max(1));
    let tiles = p.rows.div_ceil(rows_per_tile);
    fits_i32(dev, "rows", p.rows)?;
    fits_i32(dev, "channels", p.channels)?;
    fits_i32(dev, "grid (tiles × groups)", tiles * p.groups)?;
    Ok(Tiling {
        rows_per_tile,
        tiles,
        // Each row's group segment starts at a multiple of `vec` elements of a 16-byte aligned
        // buffer when the group width is a multiple of the vector width.
        vectorized: width.is_multiple_of(vec),
    })
}

/// The arguments every GR-KAN kernel ends with.
fn shape_args(p: &GrKanParams, t: &Tiling) -> [Arg; 7] {
    [
        Arg::I32(p.rows as i32),
        Arg::I32(p.channels as i32),
        Arg::I32(p.groups as i32),
        Arg::I32(p.num_degree as i32),
        Arg::I32(p.den_degree as i32),
        Arg::I32(t.rows_per_tile as i32),
        Arg::I32(t.vectorized as i32),
    ]
}

/// `y = P(x) / Q(x)`. The caller has validated the parameters and every buffer's length.
pub fn forward<T: Element>(
    dev: &Device,
    p: &GrKanParams,
    x: &CudaBuffer<T>,
    a: &CudaBuffer<f32>,
    b: &CudaBuffer<f32>,
    y: &mut CudaBuffer<T>,
) -> Result<()> {
    if p.rows == 0 {
        return Ok(());
    }
    let t = tiling::<T>(dev, p)?;
    let mut args = vec![
        Arg::Ptr(x.addr(dev)?),
        Arg::Ptr(a.addr(dev)?),
        Arg::Ptr(b.addr(dev)?),
        Arg::Ptr(y.addr_mut(dev)?),
    ];
    args.extend(shape_args(p, &t));
    let cfg = LaunchConfig::linear((t.tiles * p.groups) as u32, THREADS);
    // SAFETY: `args` follows `grkan_forward_<T>`'s parameter list; x and y hold rows·channels
    // elements, a groups·(M+1) and b groups·N (checked above), all live buffers of `dev` (y
    // borrowed mutably, so not aliased), and the grid covers exactly `tiles` tiles × groups.
    unsafe {
        dev.launch(
            &format!("grkan_forward_{}", elem_suffix::<T>()),
            &cfg,
            &args,
        )
    }
}

/// `dx` and the fixed-order sums `da`, `db`: one fused pass writing a partial per block, then
/// `grkan_reduce` summing the partials in tile order. Validates parameters and lengths first.
#[allow(clippy::too_many_arguments)]
pub fn backward<T: Element>(
    dev: &Device,
    p: &GrKanParams,
    x: &CudaBuffer<T>,
    a: &CudaBuffer<f32>,
    b: &CudaBuffer<f32>,
    dy: &CudaBuffer<T>,
    dx: &mut CudaBuffer<T>,
    da: &mut CudaBuffer<f32>,
    db: &mut CudaBuffer<f32>,
) -> Result<()> {
    let t = tiling::<T>(dev, p)?;
    let tiles = if p.rows == 0 { 0 } else { t.tiles };
    let mut partials = CudaBuffer::<f32>::zeros(dev, tiles * p.groups * PARTIAL)?;
    if tiles > 0 {
        let mut args = vec![
            Arg::Ptr(x.addr(dev)?),
            Arg::Ptr(a.addr(dev)?),
            Arg::Ptr(b.addr(dev)?),
            Arg::Ptr(dy.addr(dev)?),
            Arg::Ptr(dx.addr_mut(dev)?),
            Arg::Ptr(partials.addr_mut(dev)?),
        ];
        args.extend(shape_args(p, &t));
        let cfg = LaunchConfig::linear((tiles * p.groups) as u32, THREADS);
        // SAFETY: `args` follows `grkan_backward_<T>`'s parameter list; x, dy and dx hold
        // rows·channels elements, a groups·(M+1), b groups·N (checked above) and `partials`
        // tiles·groups·PARTIAL floats, one partial per block of this grid; outputs are
        // borrowed mutably (or owned), so no buffer aliases another.
        unsafe {
            dev.launch(
                &format!("grkan_backward_{}", elem_suffix::<T>()),
                &cfg,
                &args,
            )?;
        }
    }
    // One block per coefficient of every group (the sum over zero tiles writes zeros).
    let outputs = p.groups * (p.num_degree + 1 + p.den_degree);
    fits_i32(dev, "groups × coefficients", outputs)?;
    let args = [
        Arg::Ptr(partials.addr(dev)?),
        Arg::Ptr(da.addr_mut(dev)?),
        Arg::Ptr(db.addr_mut(dev)?),
        Arg::I32(tiles as i32),
        Arg::I32(p.groups as i32),
        Arg::I32(p.num_degree as i32),
        Arg::I32(p.den_degree as i32),
    ];
    let cfg = LaunchConfig::linear(outputs as u32, THREADS);
    // SAFETY: `args` follows `grkan_reduce`'s parameter list: `partials` holds
    // tiles·groups·PARTIAL floats, da groups·(M+1) and db groups·N (checked above), one block
    // per coefficient. `partials` is freed when this returns, after the launch is queued:
    // cudarc frees device memory in stream order, and the emulator has finished by then.
    unsafe { dev.launch("grkan_reduce", &cfg, &args) }
}
