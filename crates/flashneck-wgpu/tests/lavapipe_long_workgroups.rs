//! Regression test for a lavapipe bug (issue 5): a workgroup of the earlier attention kernels
//! (16 × 16 tiles, run-time-indexed accumulator arrays) that ran more than about a thousand
//! workgroup barriers in its tile loop stopped short with no error (measured on Mesa 22.3.6:
//! ~970 barriers fail, ~850 pass): dK/dV mostly unwritten (NaN), O and dQ wrong. The kernels
//! cut their loops into passes of at most 256 barriers on CPU adapters (`attention::passes`),
//! carrying the loop state between passes. The register-tiled kernels that replaced those no
//! longer show the bug (with the passes disabled, each shape below passes, and so did shapes of
//! 2350 to 3807 barriers), but the passes stay since its cause is unknown; so these shapes now
//! check the state carried between passes (4 to 6 passes each) against the f64 oracle, dense
//! and sparse, and bit for bit run to run.

mod common;

use common::backend;
use flashneck_conformance::{attention::check_case, fresh_rng};
use flashneck_core::{AttentionParams, AttentionShape, BlockLayout, Element};
use half::f16;

/// Forward and backward of `p` (sparse over `layout` when given) against the f64 oracle, the
/// backward twice with the same bits.
fn check<T: Element>(p: AttentionParams, layout: Option<&BlockLayout>) {
    let (_, seed) = fresh_rng();
    check_case::<_, T>(&backend(), "long workgroups", &p, layout, seed);
}

/// dK/dV: one key tile's workgroup loops over 8 query heads × 3 query blocks, 46 barriers
/// each (1104 in one workgroup).
fn long_gqa_group() -> AttentionParams {
    AttentionParams::new(AttentionShape {
        head_dim_v: 121,
        ..AttentionShape::gqa(1, 8, 1, 131, 45, 82)
    })
}

/// Forward and dQ: one query tile's workgroup walks 18 key blocks, 50 (forward) and 81 (dQ)
/// barriers each (900 and 1458 in one workgroup).
fn long_keys() -> AttentionParams {
    AttentionParams::new(AttentionShape::mha(1, 1, 19, 1100, 256))
}

#[test]
fn long_gqa_group_dense() {
    check::<f32>(long_gqa_group(), None);
    check::<f32>(long_gqa_group().with_causal(true), None);
}

#[test]
fn long_gqa_group_sparse() {
    // The full layout: every query block over the transposed layout, as long as dense.
    let p = long_gqa_group();
    check::<f32>(p, Some(&BlockLayout::dense(&p)));
}

#[test]
fn long_key_range_dense_and_sparse() {
    let p = long_keys();
    check::<f32>(p, None);
    let p = p.with_causal(true);
    check::<f16>(p, Some(&BlockLayout::causal(&p)));
}
