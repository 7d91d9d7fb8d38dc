//! Attention on the CPU (SPEC §1, §2): FlashAttention-2 tiling with the online softmax.
// SKELETON: to be written.

use flashneck_core::{AttentionParams, BlockLayout, Element, TopkParams};

#[allow(clippy::too_many_arguments)]
pub fn forward<T: Element>(
    _p: &AttentionParams,
    _layout: &BlockLayout,
    _q: &[T],
    _k: &[T],
    _v: &[T],
    _row_scale: Option<&[f32]>,
    _residual: Option<&[T]>,
    _o: &mut [T],
    _lse: &mut [f32],
) {
    unimplemented!()
}

#[allow(clippy::too_many_arguments)]
pub fn backward<T: Element>(
    _p: &AttentionParams,
    _layout: &BlockLayout,
    _layout_t: &BlockLayout,
    _q: &[T],
    _k: &[T],
    _v: &[T],
    _o: &[T],
    _d_o: &[T],
    _lse: &[f32],
    _dq: &mut [T],
    _dk: &mut [T],
    _dv: &mut [T],
) {
    unimplemented!()
}

pub fn block_topk<T: Element>(
    _p: &AttentionParams,
    _topk: &TopkParams,
    _q: &[T],
    _k: &[T],
) -> BlockLayout {
    unimplemented!()
}
