//! Attention backward host code (SPEC §1, §2): grids and arguments of
//! kernels/cuda/attention_bwd.cu.
//!
//! Three launches, each owning what it writes (no atomics, so the result is bitwise
//! reproducible):
//! 1. `attn_bwd_delta_<T>`: `Δ = rowsum(dO ⊙ O)` into an f32 scratch buffer, a warp per row;
//! 2. `attn_bwd_dkdv_*`: one block per `(key block, kv head, batch)`, walking the query heads of
//!    the GQA group and the query blocks that see (dense) or selected (sparse, the transposed
//!    layout) the key block;
//! 3. `attn_bwd_dq_*`: one block per `(query block, query head, batch)` over its key blocks.
//!
//! Dense attention passes null layout pointers: the kernels then derive the visible blocks from
//! the causal mask themselves (the same blocks as `BlockLayout::causal`), so no layout is built
//! or uploaded. f16/bf16 run the tensor-core kernels (`_mma_`), f32 the SIMT ones (`_simt_`: no
//! TF32, whose 10-bit mantissa would miss SPEC's f32 tolerance). Head dims: `D = Dv` in
//! `attention::HEAD_DIMS`, checked by the shared `check_attention`, as are the 32-bit sizes.

use crate::attention::{
    attention_grid, attention_shape_args, check_attention, kernel_name, layout_args, uses_mma,
};
use crate::device::{Arg, Device, LaunchConfig};
use crate::memory::CudaBuffer;
use crate::{CudaBackend, elem_suffix};
use flashneck_core::{AttentionParams, BLOCK, DeviceLayout, Element, Result};

/// Threads of the SIMT kernels (`ATTN_BWD_THREADS`: 64 rows × 4).
const SIMT_THREADS: u32 = 256;
/// Threads of the tensor-core kernels (`ATTN_BWD_MMA_THREADS`: 4 warps × 16 rows).
const MMA_THREADS: u32 = 128;
/// Rows (warps) per block of the delta kernel (`ATTN_BWD_DELTA_ROWS`).
const DELTA_ROWS: usize = 8;

/// A layout and its transpose on the device (sparse), or none (dense).
pub type Layouts<'a> = Option<(&'a DeviceLayout<CudaBackend>, &'a DeviceLayout<CudaBackend>)>;

/// Dynamic shared memory of the `dkdv` and `dq` kernels for head dim `d` (must match the .cu).
fn shared_bytes<T: Element>(d: usize) -> (u32, u32) {
    if uses_mma::<T>() {
        let (dkdv, dq) = mma_shared_elems(d);
        ((dkdv * 2) as u32, (dq * 2) as u32)
    } else {
        // 4096 / D staged rows of two f32 operands; dK/dV adds LSE and Δ of those rows.
        let rows = 4096 / d;
        (
            ((2 * rows * d + 2 * rows) * 4) as u32,
            (2 * rows * d * 4) as u32,
        )
    }
}

/// 16-bit elements of shared memory of the tensor-core `dkdv` and `dq` kernels: the block's own
/// 64 rows of two operands plus a streamed tile of two operands, each row padded by 8 elements
/// (16 bytes) so that `ldmatrix` reads are free of bank conflicts; the dK/dV kernel adds LSE
/// and Δ of its streamed rows (2 f32 each).
fn mma_shared_elems(d: usize) -> (usize, usize) {
    let tile = mma_tile(d);
    let row = d + 8;
    let dkdv = 2 * BLOCK * row + 2 * tile * row + 2 * tile * 2;
    let dq = 2 * BLOCK * row + 2 * tile * row;
    (dkdv, dq)
}

/// Rows of the streamed tile of the tensor-core kernels (`attn_bwd_mma_dims<D>::TR` in the
/// .cu): 32 for D = 64, 16 for D = 128, so that the f32 accumulators (dK and dV: D/2 floats
/// each per thread) plus the score tiles fit the register file without spills, and the staged
/// rows fit 48 KiB of shared memory.
fn mma_tile(d: usize) -> usize {
    if d == 64 { 32 } else { 16 }
}

/// `dq, dk, dv` of dense (`layouts = None`) or block-sparse attention. The caller has validated
/// `p`, the layouts and every buffer length (`check_backward` / `check_sparse_backward`).
#[allow(clippy::too_many_arguments)]
pub fn backward<T: Element>(
    dev: &Device,
    p: &AttentionParams,
    layouts: Layouts<'_>,
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
    let s = &p.shape;
    let d = check_attention(dev, p)?;
    if s.batch == 0 {
        return Ok(());
    }
    // Null counts mean dense to the kernels. A sparse layout's counts are never empty where a
    // kernel reads them: `[B, Hq, nQB]` for dQ (launched only when nQB > 0) and `[B, Hq, nKB]`
    // for dK/dV (only when nKB > 0), so a real device never hands out address 0 for them.
    let (layout, max_blocks) = layout_args(dev, layouts.map(|(l, _)| l))?;
    let (layout_t, max_blocks_t) = layout_args(dev, layouts.map(|(_, lt)| lt))?;
    let kind = if uses_mma::<T>() { "mma" } else { "simt" };
    let (smem_dkdv, smem_dq) = shared_bytes::<T>(d);
    let threads = if uses_mma::<T>() {
        MMA_THREADS
    } else {
        SIMT_THREADS
    };

    // 1. Δ per query row.
    let rows = s.lse_len();
    let mut delta = CudaBuffer::<f32>::zeros(dev, rows)?;
    if rows > 0 {
        let args = [
            Arg::Ptr(o.addr(dev)?),
            Arg::Ptr(d_o.addr(dev)?),
            Arg::Ptr(delta.addr_mut(dev)?),
            Arg::I32(rows as i32),
            Arg::I32(d as i32),
        ];
        let cfg = LaunchConfig::linear(rows.div_ceil(DELTA_ROWS) as u32, 32 * DELTA_ROWS as u32);
        // SAFETY: `args` follows `attn_bwd_delta_<T>`'s parameter list; o and d_o hold
        // rows·Dv elements (checked by the caller), `delta` rows floats; the grid covers `rows`
        // warps, each reading one row and writing one float.
        unsafe {
            dev.launch(
                &format!("attn_bwd_delta_{}", elem_suffix::<T>()),
                &cfg,
                &args,
            )?;
        }
    }

    // 2. dK, dV per key block, and 3. dQ per query block: the same inputs (q, k, v, dO, LSE,
    // Δ), then the pass's outputs, its layout and the shared shape arguments.
    let inputs = [
        Arg::Ptr(q.addr(dev)?),
        Arg::Ptr(k.addr(dev)?),
        Arg::Ptr(v.addr(dev)?),
        Arg::Ptr(d_o.addr(dev)?),
        Arg::Ptr(lse.addr(dev)?),
        Arg::Ptr(delta.addr(dev)?),
    ];
    let pass = |name: &str,
                outputs: &[Arg],
                (layout, max_blocks): ([Arg; 2], usize),
                (blocks, heads, shared_bytes): (usize, usize, u32)|
     -> Result<()> {
        if blocks == 0 {
            return Ok(());
        }
        let mut args = inputs.to_vec();
        args.extend_from_slice(outputs);
        args.extend(layout);
        args.push(Arg::I32(max_blocks as i32));
        args.extend(attention_shape_args(p));
        let cfg = LaunchConfig {
            shared_bytes,
            ..attention_grid(dev, blocks, heads, s.batch, threads)?
        };
        // SAFETY: `args` follows the parameter list of `attn_bwd_dkdv_<kind>_<T>_d<D>` (outputs
        // dk, dv; the transposed layout) and `attn_bwd_dq_<kind>_<T>_d<D>` (output dq; the
        // forward layout) alike. q, k, v, d_o, lse, dq, dk, dv have the lengths of `p`'s shape
        // (checked by the caller), `delta` one float per query row. The layout pointers are
        // null (dense) or a layout validated against `p`: counts [B, Hq, n] and indices
        // [B, Hq, n, max_blocks] with ascending block indices in range, n = nKB for the
        // transposed layout (dK/dV), nQB for the forward one (dQ). One block per (block, head,
        // batch) writes only its own rows of the outputs, which are borrowed mutably (no
        // aliasing). `delta` lives until `backward` returns, after both launches are queued
        // (cudarc frees in stream order; the emulator has finished by then).
        unsafe { dev.launch(&kernel_name::<T>(name, d), &cfg, &args) }
    };
    // dK/dV: every key block is written, also with no query rows (then zeros).
    pass(
        &format!("attn_bwd_dkdv_{kind}"),
        &[Arg::Ptr(dk.addr_mut(dev)?), Arg::Ptr(dv.addr_mut(dev)?)],
        (layout_t, max_blocks_t),
        (s.k_blocks(), s.heads_kv, smem_dkdv),
    )?;
    // dQ: rows with no visible key get 0.
    pass(
        &format!("attn_bwd_dq_{kind}"),
        &[Arg::Ptr(dq.addr_mut(dev)?)],
        (layout, max_blocks),
        (s.q_blocks(), s.heads_q, smem_dq),
    )?;
    Ok(())
}
