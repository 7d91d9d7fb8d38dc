//! GR-KAN on the CPU (SPEC §3).
// SKELETON: to be written.

use flashneck_core::{Element, GrKanParams};

pub fn forward<T: Element>(_p: &GrKanParams, _x: &[T], _a: &[f32], _b: &[f32], _y: &mut [T]) {
    unimplemented!()
}

#[allow(clippy::too_many_arguments)]
pub fn backward<T: Element>(
    _p: &GrKanParams,
    _x: &[T],
    _a: &[f32],
    _b: &[f32],
    _dy: &[T],
    _dx: &mut [T],
    _da: &mut [f32],
    _db: &mut [f32],
) {
    unimplemented!()
}
