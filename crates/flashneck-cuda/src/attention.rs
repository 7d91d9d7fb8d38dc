//! Attention forward (dense and block-sparse with the Re-ttention epilogue) and `block_topk`
//! host code (SPEC §1, §2): validation, grids and arguments of kernels/cuda/attention.cu and
//! kernels/cuda/topk.cu.
//!
//! One forward kernel per (element type, head dim) serves dense and sparse attention: a block
//! owns 64 query rows (one query block of the layout) of one `(b, hq)` and walks its key blocks,
//! either all those its rows can see (dense: null layout pointers) or the layout's list. f16 and
//! bf16 run on tensor cores (4 warps of 16 rows), f32 on a SIMT kernel (4 threads per row).
//! Head dims are compile-time: `D = Dv` in [`HEAD_DIMS`]; others are `Unsupported`.
//!
//! The `pub(crate)` plumbing at the top ([`check_attention`], [`attention_shape_args`],
//! [`kernel_name`], [`attention_grid`]) is shared with the backward (attention_bwd.rs).

use crate::device::{Arg, Device, LaunchConfig};
use crate::memory::CudaBuffer;
use crate::{CudaBackend, elem_suffix, fits_i32};
use flashneck_core::{
    AttentionParams, AttentionShape, DType, DeviceBuffer, DeviceLayout, Element, Error, Result,
    SparseEpilogue, TopkParams,
};

/// Head dims (`D = Dv`) with compiled attention kernels.
pub(crate) const HEAD_DIMS: [usize; 2] = [64, 128];

/// Threads of the tensor-core forward (4 warps × 16 query rows) and of the f32 one (4 per row).
const FORWARD_THREADS_MMA: u32 = 128;
const FORWARD_THREADS_F32: u32 = 256;
/// Threads of the topk kernels (the select kernel runs one warp per query block).
const TOPK_THREADS: u32 = 128;

/// Checks beyond `p.check_*` that every CUDA attention op makes before a launch: the head dims
/// have kernels, and every size fits the kernels' 32-bit arithmetic. Returns `D`.
pub(crate) fn check_attention(dev: &Device, p: &AttentionParams) -> Result<usize> {
    let s = &p.shape;
    if s.head_dim != s.head_dim_v || !HEAD_DIMS.contains(&s.head_dim) {
        return Err(Error::unsupported(
            dev.backend(),
            format!(
                "attention with head_dim = {} and head_dim_v = {}: the CUDA kernels take \
                 head_dim = head_dim_v in {HEAD_DIMS:?}",
                s.head_dim, s.head_dim_v
            ),
        ));
    }
    fits_kernels(dev, s)?;
    for (what, v) in [("v elements", s.v_len()), ("o elements", s.o_len())] {
        fits_i32(dev, what, v)?;
    }
    Ok(s.head_dim)
}

/// The sizes every attention-family kernel (`block_topk` too) indexes with 32-bit integers.
fn fits_kernels(dev: &Device, s: &AttentionShape) -> Result<()> {
    for (what, v) in [
        ("batch", s.batch),
        ("heads_q", s.heads_q),
        ("len_q", s.len_q),
        ("len_k", s.len_k),
        ("q elements", s.q_len()),
        ("k elements", s.k_len()),
    ] {
        fits_i32(dev, what, v)?;
    }
    Ok(())
}

/// The arguments every attention kernel ends with: `batch, heads_q, heads_kv, len_q, len_k`
/// (i32), `scale` (f32), `causal` (i32 0/1). Valid after [`check_attention`].
pub(crate) fn attention_shape_args(p: &AttentionParams) -> Vec<Arg> {
    let s = &p.shape;
    vec![
        Arg::I32(s.batch as i32),
        Arg::I32(s.heads_q as i32),
        Arg::I32(s.heads_kv as i32),
        Arg::I32(s.len_q as i32),
        Arg::I32(s.len_k as i32),
        Arg::F32(p.scale),
        Arg::I32(p.causal as i32),
    ]
}

/// `"{base}_{f32|f16|bf16}_d{d}"`: the kernel of element type `T` and head dim `d`.
pub(crate) fn kernel_name<T: Element>(base: &str, d: usize) -> String {
    format!("{base}_{}_d{d}", elem_suffix::<T>())
}

/// Grid `[blocks, heads, batch]` of `threads` threads. `blocks`, `heads` and `batch` must be
/// positive (callers return early on empty work).
pub(crate) fn attention_grid(
    dev: &Device,
    blocks: usize,
    heads: usize,
    batch: usize,
    threads: u32,
) -> Result<LaunchConfig> {
    fits_i32(dev, "row blocks", blocks)?;
    for (what, v) in [("heads", heads), ("batch", batch)] {
        if v > 65_535 {
            return Err(Error::unsupported(
                dev.backend(),
                format!("{what} = {v} exceeds the CUDA grid's 65535"),
            ));
        }
    }
    Ok(LaunchConfig {
        grid: [blocks as u32, heads as u32, batch as u32],
        block: [threads, 1, 1],
        shared_bytes: 0,
    })
}

/// Whether the tensor-core kernels serve element type `T` (f16, bf16); f32 takes the SIMT
/// ones (SPEC's f32 tolerance excludes tf32), forward and backward alike.
pub(crate) fn uses_mma<T: Element>() -> bool {
    T::DTYPE != DType::F32
}

fn forward_threads<T: Element>() -> u32 {
    if !uses_mma::<T>() {
        FORWARD_THREADS_F32
    } else {
        FORWARD_THREADS_MMA
    }
}

/// A layout as kernel arguments: the addresses of its `counts` and `indices` and its
/// `max_blocks` (checked to fit an i32); null pointers and 0 for dense attention, which the
/// kernels read as "every visible block".
pub(crate) fn layout_args(
    dev: &Device,
    layout: Option<&DeviceLayout<CudaBackend>>,
) -> Result<([Arg; 2], usize)> {
    match layout {
        Some(l) => {
            fits_i32(dev, "layout.max_blocks", l.host().max_blocks())?;
            Ok((
                [
                    Arg::Ptr(l.counts().addr(dev)?),
                    Arg::Ptr(l.indices().addr(dev)?),
                ],
                l.host().max_blocks(),
            ))
        }
        None => Ok(([Arg::Ptr(0), Arg::Ptr(0)], 0)),
    }
}

/// The forward, dense (`layout` None, no epilogue; SPEC §1) or sparse over `layout` with the
/// optional epilogue `o ← ρ·o + R` (SPEC §2); lengths already checked by the caller.
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward<T: Element>(
    dev: &Device,
    p: &AttentionParams,
    layout: Option<&DeviceLayout<CudaBackend>>,
    epilogue: SparseEpilogue<'_, CudaBackend, T>,
    q: &CudaBuffer<T>,
    k: &CudaBuffer<T>,
    v: &CudaBuffer<T>,
    o: &mut CudaBuffer<T>,
    lse: &mut CudaBuffer<f32>,
) -> Result<()> {
    let d = check_attention(dev, p)?;
    let s = &p.shape;
    if s.batch == 0 || s.len_q == 0 {
        return Ok(());
    }
    let ([counts, indices], max_blocks) = layout_args(dev, layout)?;
    let row_scale = match epilogue.row_scale {
        Some(b) => b.addr(dev)?,
        None => 0,
    };
    let residual = match epilogue.residual {
        Some(b) => b.addr(dev)?,
        None => 0,
    };
    let mut args = vec![
        Arg::Ptr(q.addr(dev)?),
        Arg::Ptr(k.addr(dev)?),
        Arg::Ptr(v.addr(dev)?),
        Arg::Ptr(o.addr_mut(dev)?),
        Arg::Ptr(lse.addr_mut(dev)?),
        counts,
        indices,
        Arg::I32(max_blocks as i32),
        Arg::Ptr(row_scale),
        Arg::Ptr(residual),
    ];
    args.extend(attention_shape_args(p));
    let cfg = attention_grid(
        dev,
        s.q_blocks(),
        s.heads_q,
        s.batch,
        forward_threads::<T>(),
    )?;
    // SAFETY: `args` follows `attention_forward_<T>_d<D>`'s parameter list. q, k, v, o, lse
    // hold the lengths of `p`'s shape (checked by the caller); the layout's device buffers hold
    // batch·heads_q·nQB counts and that many · max_blocks indices (DeviceLayout's invariant)
    // of a layout validated against `p` (every index < nKB, count <= max_blocks); row_scale and
    // residual, when given, hold lse_len and o_len elements (checked), else 0 and never read.
    // o and lse are borrowed mutably, so no input aliases them. One block per (qb, hq, b).
    unsafe { dev.launch(&kernel_name::<T>("attention_forward", d), &cfg, &args) }
}

/// Block means of `x [heads, len, dim]` into `means [heads, ceil(len/64), dim]` (topk_pool).
fn pool<T: Element>(
    dev: &Device,
    x: &CudaBuffer<T>,
    heads: usize,
    len: usize,
    dim: usize,
    means: &mut CudaBuffer<f32>,
) -> Result<()> {
    let items = means.len();
    if items == 0 {
        return Ok(());
    }
    fits_i32(dev, "pooled elements", items)?;
    let args = [
        Arg::Ptr(x.addr(dev)?),
        Arg::Ptr(means.addr_mut(dev)?),
        Arg::I32(heads as i32),
        Arg::I32(len as i32),
        Arg::I32(dim as i32),
    ];
    let cfg = LaunchConfig::linear(items.div_ceil(TOPK_THREADS as usize) as u32, TOPK_THREADS);
    // SAFETY: `args` follows `topk_pool_<T>`'s parameter list: x holds heads·len·dim elements
    // (checked by the caller) and means heads·ceil(len/64)·dim floats (allocated so); one thread
    // per mean, the kernel skips threads past the end.
    unsafe { dev.launch(&format!("topk_pool_{}", elem_suffix::<T>()), &cfg, &args) }
}

/// `block_topk` (SPEC §2): pool Q and K per block (topk_pool), score every (query block, key
/// block) pair (topk_score), then select per query block (topk_select); the device layout is
/// read back once to build the validated host copy.
pub(crate) fn block_topk<T: Element>(
    dev: &Device,
    p: &AttentionParams,
    topk: &TopkParams,
    q: &CudaBuffer<T>,
    k: &CudaBuffer<T>,
) -> Result<DeviceLayout<CudaBackend>> {
    let s = &p.shape;
    let (nqb, nkb, d) = (s.q_blocks(), s.k_blocks(), s.head_dim);
    fits_kernels(dev, s)?;
    let rows = s.batch * s.heads_q * nqb;
    let max_blocks = topk.max_blocks(nkb);
    let pairs = rows
        .checked_mul(nkb)
        .ok_or_else(|| Error::unsupported(dev.backend(), "block_topk: too many block pairs"))?;
    fits_i32(dev, "block pairs", pairs)?;
    fits_i32(dev, "layout indices", rows * max_blocks)?;
    let clamp = |v: usize| v.min(nkb) as i32;

    let mut q_means = CudaBuffer::<f32>::zeros(dev, rows * d)?;
    let mut k_means = CudaBuffer::<f32>::zeros(dev, s.batch * s.heads_kv * nkb * d)?;
    let mut scores = CudaBuffer::<f32>::zeros(dev, pairs)?;
    let mut counts = CudaBuffer::<u32>::zeros(dev, rows)?;
    let mut indices = CudaBuffer::<u32>::zeros(dev, rows * max_blocks)?;
    pool(dev, q, s.batch * s.heads_q, s.len_q, d, &mut q_means)?;
    pool(dev, k, s.batch * s.heads_kv, s.len_k, d, &mut k_means)?;
    if pairs > 0 {
        let mut args = vec![
            Arg::Ptr(q_means.addr(dev)?),
            Arg::Ptr(k_means.addr(dev)?),
            Arg::Ptr(scores.addr_mut(dev)?),
            Arg::I32(d as i32),
        ];
        args.extend(attention_shape_args(p));
        let cfg = LaunchConfig::linear(pairs.div_ceil(TOPK_THREADS as usize) as u32, TOPK_THREADS);
        // SAFETY: `args` follows `topk_score`'s parameter list: q_means holds rows·D floats,
        // k_means batch·heads_kv·nKB·D and scores rows·nKB (allocated above for `p`'s shape);
        // one thread per score, threads past the end return.
        unsafe { dev.launch("topk_score", &cfg, &args)? };
    }
    if rows > 0 {
        let mut args = vec![
            Arg::Ptr(scores.addr(dev)?),
            Arg::Ptr(counts.addr_mut(dev)?),
            Arg::Ptr(indices.addr_mut(dev)?),
            Arg::I32(max_blocks as i32),
            Arg::I32(clamp(topk.keep)),
            Arg::I32(clamp(topk.sink)),
            Arg::I32(clamp(topk.local)),
        ];
        args.extend(attention_shape_args(p));
        let warps = TOPK_THREADS as usize / 32;
        let cfg = LaunchConfig::linear(rows.div_ceil(warps) as u32, TOPK_THREADS);
        // SAFETY: `args` follows `topk_select`'s parameter list: scores holds rows·nKB floats,
        // counts rows and indices rows·max_blocks u32 (allocated above); one warp per row,
        // which writes at most max_blocks = min(nKB, sink + local + keep) indices (the kernel
        // chooses at most sink + local + keep blocks, each < nKB).
        unsafe { dev.launch("topk_select", &cfg, &args)? };
    }
    let (host_counts, host_indices) = (counts.to_host(dev)?, indices.to_host(dev)?);
    DeviceLayout::from_device(
        dev.backend(),
        p,
        max_blocks,
        host_counts,
        host_indices,
        counts,
        indices,
    )
}
