//! GR-KAN on the device (SPEC §3): the host side of `kernels/wgsl/grkan.wgsl`.
//!
//! Both directions give each workgroup a tile of `rows_per_tile` rows × one group's columns,
//! with the degrees as the shader's override constants (one pipeline per (M, N)). The
//! backward writes `dx` and one partial sum of each coefficient gradient per tile, then a
//! second pass sums the partials in tile order.

use crate::device::{Bind, Launch};
use crate::shaders::Shader;
use crate::{WgpuBackend, WgpuBuffer};
use flashneck_core::{DType, GrKanParams, Result};

/// Threads per workgroup in grkan.wgsl.
const WG: u64 = 256;
/// Elements of one workgroup's tile: 16 per thread.
const TILE_ELEMS: usize = 4096;

/// The shader's `override` constants for `p`'s degrees.
fn degrees(p: &GrKanParams) -> [(&'static str, u32); 2] {
    [
        ("NUM_DEGREE", p.num_degree as u32),
        ("DEN_DEGREE", p.den_degree as u32),
    ]
}

/// Must match `Params` in grkan.wgsl.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    channels: u32,
    group_width: u32,
    groups: u32,
    num_degree: u32,
    den_degree: u32,
    elements: u32,
    rows_per_tile: u32,
    tiles: u32,
}

/// Validated sizes as the shader's 32-bit parameters. Buffer sizes are already checked
/// against the binding limit (< 2^32 bytes), so every count fits in a u32.
fn params(p: &GrKanParams) -> Params {
    let rows_per_tile = (TILE_ELEMS / p.group_width()).max(1);
    Params {
        rows: p.rows as u32,
        channels: p.channels as u32,
        group_width: p.group_width() as u32,
        groups: p.groups as u32,
        num_degree: p.num_degree as u32,
        den_degree: p.den_degree as u32,
        elements: p.x_len() as u32,
        rows_per_tile: rows_per_tile as u32,
        tiles: p.rows.div_ceil(rows_per_tile) as u32,
    }
}

pub(crate) fn forward<T>(
    be: &WgpuBackend,
    p: &GrKanParams,
    dtype: DType,
    x: &WgpuBuffer<T>,
    a: &WgpuBuffer<f32>,
    b: &WgpuBuffer<f32>,
    y: &mut WgpuBuffer<T>,
) -> Result<()> {
    let prm = params(p);
    be.run(&[Launch {
        shader: Shader::GrKan,
        entry: "grkan_forward",
        dtype,
        overrides: &degrees(p),
        params: bytemuck::bytes_of(&prm),
        binds: &[
            (1, Bind::Read(x.raw())),
            (2, Bind::Read(a.raw())),
            (3, Bind::Read(b.raw())),
            (5, Bind::Write(y.raw())),
        ],
        workgroups: u64::from(prm.tiles) * p.groups as u64,
    }])
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn backward<T>(
    be: &WgpuBackend,
    p: &GrKanParams,
    dtype: DType,
    x: &WgpuBuffer<T>,
    a: &WgpuBuffer<f32>,
    b: &WgpuBuffer<f32>,
    dy: &WgpuBuffer<T>,
    dx: &mut WgpuBuffer<T>,
    da: &mut WgpuBuffer<f32>,
    db: &mut WgpuBuffer<f32>,
) -> Result<()> {
    let prm = params(p);
    let coefs = p.num_degree + 1 + p.den_degree;
    let partials = be.alloc_scratch(prm.tiles as usize * p.groups * coefs)?;
    let binds_partials = [
        (1, Bind::Read(x.raw())),
        (2, Bind::Read(a.raw())),
        (3, Bind::Read(b.raw())),
        (4, Bind::Read(dy.raw())),
        (5, Bind::Write(dx.raw())),
        (6, Bind::Write(&partials)),
    ];
    let binds_reduce = [
        (6, Bind::Write(&partials)),
        (7, Bind::Write(da.raw())),
        (8, Bind::Write(db.raw())),
    ];
    be.run(&[
        Launch {
            shader: Shader::GrKan,
            entry: "grkan_backward_partials",
            dtype,
            overrides: &degrees(p),
            params: bytemuck::bytes_of(&prm),
            binds: &binds_partials,
            workgroups: u64::from(prm.tiles) * p.groups as u64,
        },
        Launch {
            shader: Shader::GrKan,
            entry: "grkan_backward_reduce",
            dtype,
            // It reads the degrees from the parameters: one pipeline for every (M, N).
            overrides: &[],
            params: bytemuck::bytes_of(&prm),
            binds: &binds_reduce,
            workgroups: ((p.groups * coefs) as u64).div_ceil(WG),
        },
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shaders::{check_params_layout, host_fields};

    /// The uniform block the host writes is the one grkan.wgsl reads.
    #[test]
    fn params_match_the_shader() {
        let fields = host_fields!(Params; rows, channels, group_width, groups, num_degree,
            den_degree, elements, rows_per_tile, tiles);
        check_params_layout(Shader::GrKan, &fields, std::mem::size_of::<Params>());
    }
}
