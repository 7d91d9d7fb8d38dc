//! Gumbel-Softmax on the CPU (SPEC §4).
// SKELETON: to be written.

use flashneck_core::{Element, GumbelParams};

pub fn forward<T: Element>(
    _p: &GumbelParams,
    _logits: &[T],
    _y: &mut [T],
    _y_soft: Option<&mut [f32]>,
) {
    unimplemented!()
}

pub fn backward<T: Element>(_p: &GumbelParams, _y_soft: &[f32], _dy: &[T], _dlogits: &mut [T]) {
    unimplemented!()
}

pub fn noise(_seed: u64, _offset: u64, _out: &mut [f32]) {
    unimplemented!()
}
