//! Running one flashneck op on host slices through a backend.
//!
//! The layers keep their activations on the host. [`on_device`] is the one piece of plumbing
//! between the two worlds: upload the inputs, allocate the outputs, run the op, download the
//! outputs. The functions below it are one call each, so the layers never see a device buffer.
//! Round trips per op are slow on a real GPU, on purpose: this crate proves that the ops compose
//! and train, not how fast (a fused, device-resident model would keep buffers on the device).

use flashneck_core::{
    AttentionParams, Backend, BlockLayout, Error, GrKanParams, GumbelParams, Kernels, Result,
    SparseEpilogue, TopkParams,
};

/// Upload `inputs`, allocate zeroed outputs of `outputs` elements each, run `op` on the device
/// buffers, and return the downloaded outputs.
pub fn on_device<B: Backend, const N: usize, const M: usize>(
    backend: &B,
    inputs: [&[f32]; N],
    outputs: [usize; M],
    op: impl FnOnce(&[B::Buffer<f32>; N], &mut [B::Buffer<f32>; M]) -> Result<()>,
) -> Result<[Vec<f32>; M]> {
    let ins = to_array(
        inputs
            .iter()
            .map(|x| backend.upload(x))
            .collect::<Result<Vec<_>>>()?,
    )?;
    let mut outs = to_array(
        outputs
            .iter()
            .map(|&n| backend.alloc::<f32>(n))
            .collect::<Result<Vec<_>>>()?,
    )?;
    op(&ins, &mut outs)?;
    to_array(
        outs.iter()
            .map(|o| backend.download(o))
            .collect::<Result<Vec<_>>>()?,
    )
}

/// A `Vec` of exactly `N` items as an array (the callers above always build exactly `N`).
fn to_array<T, const N: usize>(v: Vec<T>) -> Result<[T; N]> {
    let n = v.len();
    v.try_into()
        .map_err(|_| Error::shape("host_ops", format!("{N} buffers"), format!("{n} buffers")))
}

/// Dense attention (SPEC §1): `(O, LSE)` from `Q [B, Hq, L, D]`, `K, V [B, Hkv, L, D]`.
pub fn attention_forward<B: Kernels>(
    backend: &B,
    p: &AttentionParams,
    q: &[f32],
    k: &[f32],
    v: &[f32],
) -> Result<(Vec<f32>, Vec<f32>)> {
    let s = &p.shape;
    let [o, lse] = on_device(backend, [q, k, v], [s.o_len(), s.lse_len()], |i, o| {
        let [o, lse] = o;
        backend.attention_forward(p, &i[0], &i[1], &i[2], o, lse)
    })?;
    Ok((o, lse))
}

/// Dense attention backward: `(dQ, dK, dV)`.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward<B: Kernels>(
    backend: &B,
    p: &AttentionParams,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    o: &[f32],
    d_o: &[f32],
    lse: &[f32],
) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    let s = &p.shape;
    let lens = [s.q_len(), s.k_len(), s.v_len()];
    let [dq, dk, dv] = on_device(backend, [q, k, v, o, d_o, lse], lens, |i, o| {
        let [dq, dk, dv] = o;
        backend.attention_backward(p, &i[0], &i[1], &i[2], &i[3], &i[4], &i[5], dq, dk, dv)
    })?;
    Ok((dq, dk, dv))
}

/// Block selection (SPEC §2's `block_topk`): each query block's key blocks, from pooled scores
/// of `Q` and `K`.
pub fn block_topk<B: Kernels>(
    backend: &B,
    p: &AttentionParams,
    topk: &TopkParams,
    q: &[f32],
    k: &[f32],
) -> Result<BlockLayout> {
    let (q, k) = (backend.upload(q)?, backend.upload(k)?);
    Ok(backend.block_topk(p, topk, &q, &k)?.into_host())
}

/// Block-sparse attention over `layout` (SPEC §2): `(O, LSE)`. With `row_scale = Some(ρ)`, the
/// backend's Re-ttention epilogue scales each output row, `o_i ← ρ_i · o_i` (no residual); `LSE`
/// is the sparse one either way (reported before the epilogue).
pub fn sparse_attention_forward<B: Kernels>(
    backend: &B,
    p: &AttentionParams,
    layout: &BlockLayout,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    row_scale: Option<&[f32]>,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let s = &p.shape;
    let layout = backend.upload_layout(layout)?;
    let rho = row_scale.map(|r| backend.upload(r)).transpose()?;
    let [o, lse] = on_device(backend, [q, k, v], [s.o_len(), s.lse_len()], |i, o| {
        let [o, lse] = o;
        let epilogue = SparseEpilogue {
            row_scale: rho.as_ref(),
            residual: None,
        };
        backend.sparse_attention_forward(p, &layout, &i[0], &i[1], &i[2], epilogue, o, lse)
    })?;
    Ok((o, lse))
}

/// Block-sparse attention backward over `layout` and its transpose: `(dQ, dK, dV)`. `o` is the
/// output *before* any epilogue and `d_o` the gradient of that output.
#[allow(clippy::too_many_arguments)]
pub fn sparse_attention_backward<B: Kernels>(
    backend: &B,
    p: &AttentionParams,
    layout: &BlockLayout,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    o: &[f32],
    d_o: &[f32],
    lse: &[f32],
) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    let s = &p.shape;
    let layout_t = backend.upload_layout(&layout.transpose())?;
    let layout = backend.upload_layout(layout)?;
    let lens = [s.q_len(), s.k_len(), s.v_len()];
    let [dq, dk, dv] = on_device(backend, [q, k, v, o, d_o, lse], lens, |i, o| {
        let [dq, dk, dv] = o;
        backend.sparse_attention_backward(
            p, &layout, &layout_t, &i[0], &i[1], &i[2], &i[3], &i[4], &i[5], dq, dk, dv,
        )
    })?;
    Ok((dq, dk, dv))
}

/// GR-KAN forward (SPEC §3): `y = P(x)/Q(x)` per channel group.
pub fn grkan_forward<B: Kernels>(
    backend: &B,
    p: &GrKanParams,
    x: &[f32],
    a: &[f32],
    b: &[f32],
) -> Result<Vec<f32>> {
    let [y] = on_device(backend, [x, a, b], [p.x_len()], |i, o| {
        backend.grkan_forward(p, &i[0], &i[1], &i[2], &mut o[0])
    })?;
    Ok(y)
}

/// GR-KAN backward: `(dx, da, db)`.
pub fn grkan_backward<B: Kernels>(
    backend: &B,
    p: &GrKanParams,
    x: &[f32],
    a: &[f32],
    b: &[f32],
    dy: &[f32],
) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    let lens = [p.x_len(), p.a_len(), p.b_len()];
    let [dx, da, db] = on_device(backend, [x, a, b, dy], lens, |i, o| {
        let [dx, da, db] = o;
        backend.grkan_backward(p, &i[0], &i[1], &i[2], &i[3], dx, da, db)
    })?;
    Ok((dx, da, db))
}

/// Gumbel-Softmax forward (SPEC §4): `(y, y_soft)`; `y` is one-hot when `p.hard`.
pub fn gumbel_forward<B: Kernels>(
    backend: &B,
    p: &GumbelParams,
    logits: &[f32],
) -> Result<(Vec<f32>, Vec<f32>)> {
    let [y, y_soft] = on_device(backend, [logits], [p.len(), p.len()], |i, o| {
        let [y, y_soft] = o;
        backend.gumbel_softmax_forward(p, &i[0], y, Some(y_soft))
    })?;
    Ok((y, y_soft))
}

/// Gumbel-Softmax backward: `dlogits` from the saved `y_soft` and `dy`.
pub fn gumbel_backward<B: Kernels>(
    backend: &B,
    p: &GumbelParams,
    y_soft: &[f32],
    dy: &[f32],
) -> Result<Vec<f32>> {
    let [dlogits] = on_device(backend, [y_soft, dy], [p.len()], |i, o| {
        backend.gumbel_softmax_backward(p, &i[0], &i[1], &mut o[0])
    })?;
    Ok(dlogits)
}
