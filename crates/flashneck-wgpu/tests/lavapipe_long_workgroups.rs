//! Regression test for a lavapipe bug (issue 5): a workgroup that runs more than about a
//! thousand workgroup barriers in the attention kernels' tile loops stops short with no error
//! (measured on Mesa 22.3.6: ~970 barriers fail, ~850 pass). Before the fix, each case below
//! ran one workgroup well past that count and came back wrong: dK/dV mostly unwritten (NaN),
//! the forward's O and dQ wrong. The kernels now cut their loops into passes of at most 256
//! barriers (`attention::passes`), carrying the loop state between passes, so these shapes
//! match the f64 oracle, dense and sparse, and bit for bit run to run.

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

/// dK/dV: one key tile's workgroup loops over 8 query heads × 9 query tiles, 17 barriers each
/// (1224 in one workgroup before the fix).
///
/// Each test here fails with the passes disabled (`MAX_BARRIERS_PER_PASS` set to 2^30, i.e.
/// single-pass kernels): NaN in dK, in dQ.
fn long_gqa_group() -> AttentionParams {
    AttentionParams::new(AttentionShape {
        head_dim_v: 121,
        ..AttentionShape::gqa(1, 8, 1, 131, 45, 82)
    })
}

/// Forward and dQ: dQ's workgroup loops over 69 key tiles of 25 barriers (1725 before the
/// fix). The register-tiled forward walks 18 key blocks of 50 barriers (900) and is cut into 4
/// passes, so this also checks the state it carries between passes; that forward, unlike the
/// backward kernels, ran 2350 barriers in one workgroup correctly on lavapipe (Lk = 3000), so
/// with the passes disabled only dQ fails here.
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
