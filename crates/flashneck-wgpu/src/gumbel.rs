//! Gumbel-Softmax on the device (SPEC §4): the host side of `kernels/wgsl/gumbel.wgsl`.

use crate::device::{Bind, Launch};
use crate::shaders::Shader;
use crate::{WgpuBackend, WgpuBuffer};
use flashneck_core::{Backend, DType, GumbelParams, Result};

/// Threads per workgroup of the Gumbel kernels (the shader's `WG` override), but for rows
/// longer than 64 threads hold.
const WG: u64 = 64;
/// Threads per workgroup (and per row) for rows longer than `WG` threads hold in registers.
const WG_WIDE: u64 = 256;
/// Quads (4 elements) of its row each thread keeps in registers (`CACHE` in gumbel.wgsl).
const CACHED_QUADS: usize = 4;

/// How rows of `p.classes` are walked: `threads_per_row` threads (a power of two) share each
/// row, a workgroup of `wg` threads takes `wg / threads_per_row` rows (the shader's `WG` and
/// `TPR` overrides), and `workgroups` cover `p.rows`.
struct RowLaunch {
    workgroups: u64,
    threads_per_row: usize,
    overrides: [(&'static str, u32); 2],
}

/// The fewest threads per row (a power of two) whose registers hold every row of `p.classes`
/// at any alignment, up to a workgroup of 64; longer rows get 256 (and past what those hold,
/// the f32 row of binding 3 takes the rest).
fn row_launch(p: &GumbelParams) -> RowLaunch {
    let quads = most_quads(p.classes);
    let threads_per_row = quads.div_ceil(CACHED_QUADS).next_power_of_two();
    let (threads_per_row, wg) = if threads_per_row <= WG as usize {
        (threads_per_row, WG)
    } else {
        (WG_WIDE as usize, WG_WIDE)
    };
    let rows_per_workgroup = wg / threads_per_row as u64;
    RowLaunch {
        workgroups: (p.rows as u64).div_ceil(rows_per_workgroup),
        threads_per_row,
        overrides: [("WG", wg as u32), ("TPR", threads_per_row as u32)],
    }
}

/// The most quads (4-element groups at multiples of 4) any row of K classes overlaps: rows
/// start at multiples of K, so at offsets within a quad that are multiples of gcd(K, 4), the
/// largest being 4 − gcd(K, 4).
fn most_quads(classes: usize) -> usize {
    let step = [4, 1, 2, 1][classes % 4];
    (classes + (4 - step) % 4).div_ceil(4)
}

/// Whether every row's quads fit in its threads' registers, so that the forward stores
/// nothing in binding 3 unless y_soft is asked for.
fn rows_fit_in_registers(p: &GumbelParams, l: &RowLaunch) -> bool {
    most_quads(p.classes) <= l.threads_per_row * CACHED_QUADS
}

/// Must match `Params` in gumbel.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    classes: u32,
    seed_lo: u32,
    seed_hi: u32,
    offset_lo: u32,
    offset_hi: u32,
    hard: u32,
    inv_tau: f32,
    elements: u32,
    write_soft: u32,
}

impl Params {
    fn new(seed: u64, offset: u64) -> Self {
        Params {
            seed_lo: seed as u32,
            seed_hi: (seed >> 32) as u32,
            offset_lo: offset as u32,
            offset_hi: (offset >> 32) as u32,
            ..Params::default()
        }
    }

    /// The shader indexes flat elements with u32 (the Philox counter's high word is 0): every
    /// buffer passed the binding-size check (< 2^32 bytes), so the counts fit.
    fn of(p: &GumbelParams) -> Self {
        Params {
            rows: p.rows as u32,
            classes: p.classes as u32,
            hard: u32::from(p.hard),
            inv_tau: 1.0 / p.tau,
            elements: p.len() as u32,
            ..Params::new(p.seed, p.offset)
        }
    }
}

pub(crate) fn forward<T>(
    be: &WgpuBackend,
    p: &GumbelParams,
    dtype: DType,
    logits: &WgpuBuffer<T>,
    y: &mut WgpuBuffer<T>,
    y_soft: Option<&mut WgpuBuffer<f32>>,
) -> Result<()> {
    let mut prm = Params::of(p);
    let launch = row_launch(p);
    prm.write_soft = u32::from(y_soft.is_some());
    // Binding 3 (f32) holds the values of the quads past each thread's registers before
    // y_soft, so that y, which may be stored as f16, is written once, rounded. Without y_soft:
    // a scratch row, or the backend's written stand-in where the rows fit in registers
    // (nothing is stored there).
    let scratch;
    let y_soft = match y_soft {
        Some(b) => b.raw(),
        None if rows_fit_in_registers(p, &launch) => be.stand_ins().1,
        None => {
            scratch = be.alloc_scratch(p.len())?;
            &scratch
        }
    };
    be.run(&[Launch {
        shader: Shader::Gumbel,
        entry: "gumbel_forward",
        dtype,
        overrides: &launch.overrides,
        params: bytemuck::bytes_of(&prm),
        binds: &[
            (1, Bind::Read(logits.raw())),
            (2, Bind::Write(y.raw())),
            (3, Bind::Write(y_soft)),
        ],
        workgroups: launch.workgroups,
    }])
}

pub(crate) fn backward<T>(
    be: &WgpuBackend,
    p: &GumbelParams,
    dtype: DType,
    y_soft: &WgpuBuffer<f32>,
    dy: &WgpuBuffer<T>,
    dlogits: &mut WgpuBuffer<T>,
) -> Result<()> {
    let prm = Params::of(p);
    let launch = row_launch(p);
    be.run(&[Launch {
        shader: Shader::Gumbel,
        entry: "gumbel_backward",
        dtype,
        overrides: &launch.overrides,
        params: bytemuck::bytes_of(&prm),
        binds: &[
            (2, Bind::Write(dlogits.raw())),
            (4, Bind::Read(y_soft.raw())),
            (5, Bind::Read(dy.raw())),
        ],
        workgroups: launch.workgroups,
    }])
}

pub(crate) fn noise(
    be: &WgpuBackend,
    seed: u64,
    offset: u64,
    out: &mut WgpuBuffer<f32>,
) -> Result<()> {
    let n = flashneck_core::DeviceBuffer::len(out);
    let mut prm = Params::new(seed, offset);
    // `out` passed the binding-size check (< 2^32 bytes).
    prm.elements = n as u32;
    be.run(&[Launch {
        shader: Shader::Gumbel,
        entry: "gumbel_noise",
        dtype: DType::F32,
        overrides: &[],
        params: bytemuck::bytes_of(&prm),
        binds: &[(2, Bind::Write(out.raw()))],
        // One thread per quad (one Philox call, four elements).
        workgroups: (n as u64).div_ceil(4).div_ceil(WG),
    }])
}

pub(crate) fn philox_words(be: &WgpuBackend, counter: [u32; 4], key: [u32; 2]) -> Result<[u32; 4]> {
    let mut io = [0u32; 10];
    io[..4].copy_from_slice(&counter);
    io[4..6].copy_from_slice(&key);
    let words = be.upload(&io)?;
    be.run(&[Launch {
        shader: Shader::Gumbel,
        entry: "philox_words",
        dtype: DType::F32,
        overrides: &[],
        params: bytemuck::bytes_of(&Params::default()),
        binds: &[(6, Bind::Write(words.raw()))],
        workgroups: 1,
    }])?;
    let out = be.download(&words)?;
    Ok([out[6], out[7], out[8], out[9]])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shaders::{check_params_layout, host_fields};

    /// The uniform block the host writes is the one gumbel.wgsl reads.
    #[test]
    fn params_match_the_shader() {
        let fields = host_fields!(Params; rows, classes, seed_lo, seed_hi, offset_lo, offset_hi,
            hard, inv_tau, elements, write_soft);
        check_params_layout(Shader::Gumbel, &fields, std::mem::size_of::<Params>());
    }

    /// Threads per row: the fewest (a power of two) that hold the row, up to 64; then 256,
    /// which hold rows of up to 4094 classes, and of 4096. The workgroups cover every row.
    #[test]
    fn row_launch_takes_the_fewest_threads_that_hold_the_row() {
        for k in 1..=5000usize {
            let p = GumbelParams::new(37, k, 1.0);
            let l = row_launch(&p);
            let tpr = l.threads_per_row;
            assert!(tpr.is_power_of_two(), "K = {k}: {tpr}");
            let wg = l.overrides[0].1 as usize;
            assert_eq!(l.overrides, [("WG", wg as u32), ("TPR", tpr as u32)]);
            assert_eq!(wg, if tpr <= 64 { 64 } else { 256 }, "K = {k}");
            assert!(l.workgroups as usize * (wg / tpr) >= 37, "K = {k}");
            assert!((l.workgroups as usize - 1) * (wg / tpr) < 37, "K = {k}");
            let fits = rows_fit_in_registers(&p, &l);
            // 4094 = 2 mod 4 starts at even offsets only: 1024 quads, as 4093 and 4096.
            assert_eq!(fits, k <= 4094 || k == 4096, "K = {k}");
            if (2..=64).contains(&tpr) {
                assert!(
                    most_quads(k) > tpr / 2 * CACHED_QUADS,
                    "K = {k}: {tpr} threads"
                );
            }
            if fits {
                assert!(most_quads(k) <= tpr * CACHED_QUADS, "K = {k}");
            }
        }
        assert_eq!(
            row_launch(&GumbelParams::new(1, 13, 1.0)).threads_per_row,
            1
        );
        assert_eq!(
            row_launch(&GumbelParams::new(1, 15, 1.0)).threads_per_row,
            2
        );
        assert_eq!(
            row_launch(&GumbelParams::new(1, 1000, 1.0)).threads_per_row,
            64
        );
        assert_eq!(
            row_launch(&GumbelParams::new(1, 1023, 1.0)).threads_per_row,
            256
        );
    }

    /// `most_quads` against counting: the quads that rows 0..8 of K classes overlap.
    #[test]
    fn most_quads_is_the_most_any_row_overlaps() {
        for k in 1..=300usize {
            let most = (0..8)
                .map(|r| (r * k + k - 1) / 4 - (r * k) / 4 + 1)
                .max()
                .unwrap();
            assert_eq!(most_quads(k), most, "K = {k}");
        }
    }
}
