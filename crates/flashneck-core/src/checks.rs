//! The checks every op runs on the host before any launch, taken from the buffers themselves.
//!
//! Each backend's trait method calls the one function of its op here, so every backend refuses
//! the same inputs with the same typed errors (SPEC §0); the rules live in [`AttentionParams`],
//! [`GrKanParams`] and [`GumbelParams`] (`validate`, `check_*`) and in [`BlockLayout`]'s checks.

#[cfg(doc)]
use crate::BlockLayout;
use crate::backend::{Backend, DeviceBuffer, DeviceLayout, SparseEpilogue};
use crate::{AttentionParams, Element, GrKanParams, GumbelParams, Result, TopkParams};

/// `attention_forward`: parameters, and the lengths of `q, k, v, o, lse`.
pub fn attention_forward(
    p: &AttentionParams,
    q: &impl DeviceBuffer,
    k: &impl DeviceBuffer,
    v: &impl DeviceBuffer,
    o: &impl DeviceBuffer,
    lse: &impl DeviceBuffer,
) -> Result<()> {
    p.check_forward(q.len(), k.len(), v.len(), o.len(), lse.len())
}

/// `block_topk`: parameters, `topk`, and the lengths of `q` and `k`.
pub fn block_topk(
    p: &AttentionParams,
    topk: &TopkParams,
    q: &impl DeviceBuffer,
    k: &impl DeviceBuffer,
) -> Result<()> {
    p.check_topk(topk, q.len(), k.len())
}

/// `attention_backward`: parameters, and every buffer's length.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    p: &AttentionParams,
    q: &impl DeviceBuffer,
    k: &impl DeviceBuffer,
    v: &impl DeviceBuffer,
    o: &impl DeviceBuffer,
    d_o: &impl DeviceBuffer,
    lse: &impl DeviceBuffer,
    dq: &impl DeviceBuffer,
    dk: &impl DeviceBuffer,
    dv: &impl DeviceBuffer,
) -> Result<()> {
    p.check_backward(
        q.len(),
        k.len(),
        v.len(),
        o.len(),
        d_o.len(),
        lse.len(),
        dq.len(),
        dk.len(),
        dv.len(),
    )
}

/// `sparse_attention_forward`: the dense checks, the layout's dims and the epilogue's lengths.
#[allow(clippy::too_many_arguments)]
pub fn sparse_forward<B: Backend, T: Element>(
    p: &AttentionParams,
    layout: &DeviceLayout<B>,
    q: &B::Buffer<T>,
    k: &B::Buffer<T>,
    v: &B::Buffer<T>,
    epilogue: &SparseEpilogue<'_, B, T>,
    o: &B::Buffer<T>,
    lse: &B::Buffer<f32>,
) -> Result<()> {
    p.check_sparse_forward(
        layout.host(),
        q.len(),
        k.len(),
        v.len(),
        epilogue.row_scale.map(|b| b.len()),
        epilogue.residual.map(|b| b.len()),
        o.len(),
        lse.len(),
    )
}

/// `sparse_attention_backward`: the dense checks, both layouts' dims, and that `layout_t` is
/// the transpose of `layout`.
#[allow(clippy::too_many_arguments)]
pub fn sparse_backward<B: Backend, T: Element>(
    p: &AttentionParams,
    layout: &DeviceLayout<B>,
    layout_t: &DeviceLayout<B>,
    q: &B::Buffer<T>,
    k: &B::Buffer<T>,
    v: &B::Buffer<T>,
    o: &B::Buffer<T>,
    d_o: &B::Buffer<T>,
    lse: &B::Buffer<f32>,
    dq: &B::Buffer<T>,
    dk: &B::Buffer<T>,
    dv: &B::Buffer<T>,
) -> Result<()> {
    p.check_sparse_backward(
        layout.host(),
        layout_t.host(),
        q.len(),
        k.len(),
        v.len(),
        o.len(),
        d_o.len(),
        lse.len(),
        dq.len(),
        dk.len(),
        dv.len(),
    )
}

/// `grkan_forward`: parameters, and the lengths of `x, a, b, y`.
pub fn grkan_forward(
    p: &GrKanParams,
    x: &impl DeviceBuffer,
    a: &impl DeviceBuffer,
    b: &impl DeviceBuffer,
    y: &impl DeviceBuffer,
) -> Result<()> {
    p.check_forward(x.len(), a.len(), b.len(), y.len())
}

/// `grkan_backward`: parameters, and every buffer's length.
#[allow(clippy::too_many_arguments)]
pub fn grkan_backward(
    p: &GrKanParams,
    x: &impl DeviceBuffer,
    a: &impl DeviceBuffer,
    b: &impl DeviceBuffer,
    dy: &impl DeviceBuffer,
    dx: &impl DeviceBuffer,
    da: &impl DeviceBuffer,
    db: &impl DeviceBuffer,
) -> Result<()> {
    p.check_backward(
        x.len(),
        a.len(),
        b.len(),
        dy.len(),
        dx.len(),
        da.len(),
        db.len(),
    )
}

/// `gumbel_softmax_forward`: parameters, and the lengths of `logits, y` and `y_soft` if given.
pub fn gumbel_forward<S: DeviceBuffer>(
    p: &GumbelParams,
    logits: &impl DeviceBuffer,
    y: &impl DeviceBuffer,
    y_soft: Option<&S>,
) -> Result<()> {
    p.check_forward(logits.len(), y.len(), y_soft.map(|b| b.len()))
}

/// `gumbel_softmax_backward`: parameters, and the lengths of `y_soft, dy, dlogits`.
pub fn gumbel_backward(
    p: &GumbelParams,
    y_soft: &impl DeviceBuffer,
    dy: &impl DeviceBuffer,
    dlogits: &impl DeviceBuffer,
) -> Result<()> {
    p.check_backward(y_soft.len(), dy.len(), dlogits.len())
}
