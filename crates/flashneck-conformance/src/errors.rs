//! Conformance checks for bad input (SPEC §0, issue 2 item 6): every error path of every op
//! returns the typed error naming the argument, before any launch, and never panics.
//!
//! A backend that does not claim an op may answer `Unsupported` instead (validation before the
//! unsupported check is not required then); a backend that claims it must return exactly the
//! expected error.

use crate::Config;
use flashneck_core::{
    AttentionParams, AttentionShape, Backend, BlockLayout, DType, Element, Error, GrKanParams,
    GumbelParams, Kernels, OpKind, Result, SparseEpilogue, TopkParams,
};

/// Which error variant a bad input must produce.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Shape,
    Bad,
}

/// Assert that `r` is the expected error naming `arg` (or `Unsupported` when the backend does
/// not claim `op` for `dtype`).
#[track_caller]
fn expect_err<R>(b: &impl Backend, op: OpKind, dtype: DType, r: Result<R>, kind: Kind, arg: &str) {
    let supported = b.info().supports(op, dtype);
    match r {
        Ok(_) => panic!("{} {dtype}: bad `{arg}` was accepted", op.name()),
        Err(Error::ShapeMismatch { arg: got, .. }) if kind == Kind::Shape && got == arg => {}
        Err(Error::BadParameter { arg: got, .. }) if kind == Kind::Bad && got == arg => {}
        Err(e) if e.is_unsupported() && !supported => {
            crate::announce_skip(&format!(
                "skip: {} {} {dtype}: {e}",
                b.info().name,
                op.name()
            ));
        }
        Err(e) => panic!(
            "{} {dtype}: bad `{arg}` must give {kind:?} naming `{arg}`, got: {e}",
            op.name()
        ),
    }
}

/// `Err` of the core's own validation (no backend involved), naming `arg`.
#[track_caller]
fn expect_core_err<R: std::fmt::Debug>(r: Result<R>, kind: Kind, arg: &str) {
    match r {
        Err(Error::ShapeMismatch { arg: got, .. }) if kind == Kind::Shape && got == arg => {}
        Err(Error::BadParameter { arg: got, .. }) if kind == Kind::Bad && got == arg => {}
        other => panic!("bad `{arg}` must give {kind:?} naming `{arg}`, got {other:?}"),
    }
}

/// A NaN-filled buffer of `n` elements, one longer when `name == bad`.
fn buf<B: Backend, T: Element>(b: &B, name: &str, n: usize, bad: &str) -> B::Buffer<T> {
    // Capped: the huge-shape checks must be refused by validation, not by the allocator.
    crate::nan_buffer(b, n.min(1 << 16) + usize::from(name == bad))
}

/// Assert that refused calls wrote nothing (errors come before any launch): every element of
/// each output is still the NaN it was filled with.
#[track_caller]
fn untouched<B: Backend, T: Element>(b: &B, outputs: &[(&str, &B::Buffer<T>)]) {
    for (name, out) in outputs {
        let v = b.download(out).unwrap();
        assert!(
            v.iter().all(|x| x.to_f32().is_nan()),
            "`{name}` was written by a call that was refused"
        );
    }
}

/// Run every attention-family op (dense fwd/bwd, sparse fwd/bwd, block_topk) with parameters
/// `p` and buffer `bad` one element too long, expecting `(kind, arg)` from each.
fn attention_ops<T: Element>(
    b: &impl Kernels,
    p: &AttentionParams,
    bad: &str,
    kind: Kind,
    arg: &str,
    ops: &[OpKind],
) {
    let s = &p.shape;
    let dt = T::DTYPE;
    let q = buf::<_, T>(b, "q", s.q_len(), bad);
    let k = buf::<_, T>(b, "k", s.k_len(), bad);
    let v = buf::<_, T>(b, "v", s.v_len(), bad);
    let d_o = buf::<_, T>(b, "d_o", s.o_len(), bad);
    let o_in = buf::<_, T>(b, "o", s.o_len(), bad);
    let lse_in = buf::<_, f32>(b, "lse", s.lse_len(), bad);
    let row_scale = buf::<_, f32>(b, "row_scale", s.lse_len(), bad);
    let residual = buf::<_, T>(b, "residual", s.o_len(), bad);
    let mut o = buf::<_, T>(b, "o", s.o_len(), bad);
    let mut lse = buf::<_, f32>(b, "lse", s.lse_len(), bad);
    let mut dq = buf::<_, T>(b, "dq", s.q_len(), bad);
    let mut dk = buf::<_, T>(b, "dk", s.k_len(), bad);
    let mut dv = buf::<_, T>(b, "dv", s.v_len(), bad);
    // A valid layout for a valid shape (built from the sane parts of `p`, capped so that the
    // huge-shape checks stay small: validation must refuse them before looking at the layout).
    let sane = AttentionParams::new(AttentionShape::mha(
        s.batch.min(4),
        s.heads_q.clamp(1, 8),
        s.len_q.min(1024),
        s.len_k.min(1024),
        8,
    ));
    let layout = b.upload_layout(&BlockLayout::dense(&sane)).unwrap();
    let layout_t = b
        .upload_layout(&BlockLayout::dense(&sane).transpose())
        .unwrap();
    for &op in ops {
        let r = match op {
            OpKind::AttentionForward => b.attention_forward(p, &q, &k, &v, &mut o, &mut lse),
            OpKind::AttentionBackward => b.attention_backward(
                p, &q, &k, &v, &o_in, &d_o, &lse_in, &mut dq, &mut dk, &mut dv,
            ),
            OpKind::SparseForward => {
                let epi = SparseEpilogue {
                    row_scale: Some(&row_scale),
                    residual: Some(&residual),
                };
                b.sparse_attention_forward(p, &layout, &q, &k, &v, epi, &mut o, &mut lse)
            }
            OpKind::SparseBackward => b.sparse_attention_backward(
                p, &layout, &layout_t, &q, &k, &v, &o_in, &d_o, &lse_in, &mut dq, &mut dk, &mut dv,
            ),
            OpKind::BlockTopk => {
                let topk = TopkParams {
                    keep: 1,
                    sink: 1,
                    local: 1,
                };
                b.block_topk(p, &topk, &q, &k).map(|_| ())
            }
            _ => unreachable!("attention_ops runs attention-family ops only"),
        };
        expect_err(b, op, dt, r, kind, arg);
    }
    untouched(b, &[("o", &o), ("dq", &dq), ("dk", &dk), ("dv", &dv)]);
    untouched(b, &[("lse", &lse)]);
}

/// The five attention-family ops.
const ATTENTION_OPS: [OpKind; 5] = [
    OpKind::AttentionForward,
    OpKind::AttentionBackward,
    OpKind::SparseForward,
    OpKind::SparseBackward,
    OpKind::BlockTopk,
];

fn attention_shape() -> AttentionShape {
    AttentionShape::gqa(2, 4, 2, 70, 65, 16)
}

/// Each buffer of each attention-family op, one element too long: `ShapeMismatch` naming it.
pub fn attention_buffer_lengths<B: Kernels>(b: &B, _cfg: Config) {
    fn check<T: Element>(b: &impl Kernels) {
        use OpKind::*;
        let p = AttentionParams::new(attention_shape());
        let cases: [(&str, &[OpKind]); 11] = [
            ("q", &ATTENTION_OPS),
            ("k", &ATTENTION_OPS),
            (
                "v",
                &[
                    AttentionForward,
                    AttentionBackward,
                    SparseForward,
                    SparseBackward,
                ],
            ),
            (
                "o",
                &[
                    AttentionForward,
                    AttentionBackward,
                    SparseForward,
                    SparseBackward,
                ],
            ),
            (
                "lse",
                &[
                    AttentionForward,
                    AttentionBackward,
                    SparseForward,
                    SparseBackward,
                ],
            ),
            ("d_o", &[AttentionBackward, SparseBackward]),
            ("dq", &[AttentionBackward, SparseBackward]),
            ("dk", &[AttentionBackward, SparseBackward]),
            ("dv", &[AttentionBackward, SparseBackward]),
            ("row_scale", &[SparseForward]),
            ("residual", &[SparseForward]),
        ];
        for (arg, ops) in cases {
            attention_ops::<T>(b, &p, arg, Kind::Shape, arg, ops);
        }
    }
    crate::for_each_dtype!(check, b);
}

/// `Hq % Hkv != 0`, `Hq = 0`, `Hkv = 0`: `BadParameter` for every attention-family op.
pub fn attention_bad_heads<B: Kernels>(b: &B, _cfg: Config) {
    for (hq, hkv, arg) in [(6, 4, "heads_q"), (0, 1, "heads_q"), (2, 0, "heads_kv")] {
        let p = AttentionParams::new(AttentionShape::gqa(1, hq, hkv, 70, 65, 16));
        attention_ops::<f32>(b, &p, "none", Kind::Bad, arg, &ATTENTION_OPS);
    }
}

/// `D = 0`, `D > 256`, `Dv = 0`, `Dv > 256`: `BadParameter` for every attention-family op.
pub fn attention_bad_head_dims<B: Kernels>(b: &B, _cfg: Config) {
    for (d, dv, arg) in [
        (0, 16, "head_dim"),
        (257, 16, "head_dim"),
        (16, 0, "head_dim_v"),
        (16, 257, "head_dim_v"),
    ] {
        let mut s = AttentionShape::mha(1, 2, 70, 65, d);
        s.head_dim_v = dv;
        let p = AttentionParams::new(s).with_scale(0.25);
        attention_ops::<f32>(b, &p, "none", Kind::Bad, arg, &ATTENTION_OPS);
    }
}

/// A non-finite `scale`: `BadParameter` for every attention-family op.
pub fn attention_bad_scale<B: Kernels>(b: &B, _cfg: Config) {
    for scale in [f32::NAN, f32::INFINITY] {
        let p = AttentionParams::new(attention_shape()).with_scale(scale);
        attention_ops::<f32>(b, &p, "none", Kind::Bad, "scale", &ATTENTION_OPS);
    }
}

/// `keep = sink = local = 0`: `BadParameter` naming `keep`.
pub fn topk_nothing_to_keep<B: Kernels>(b: &B, _cfg: Config) {
    let p = AttentionParams::new(attention_shape());
    let q = b.alloc::<f32>(p.shape.q_len()).unwrap();
    let k = b.alloc::<f32>(p.shape.k_len()).unwrap();
    let topk = TopkParams {
        keep: 0,
        sink: 0,
        local: 0,
    };
    let r = b.block_topk(&p, &topk, &q, &k).map(|_| ());
    expect_err(b, OpKind::BlockTopk, DType::F32, r, Kind::Bad, "keep");
}

/// Sparse ops with a layout of the wrong dims (`layout`, `layout_t`), and a `layout_t` that is
/// not the transpose of `layout`.
pub fn sparse_layout_mismatch<B: Kernels>(b: &B, _cfg: Config) {
    let p = AttentionParams::new(attention_shape());
    let s = &p.shape;
    let q = b.alloc::<f32>(s.q_len()).unwrap();
    let k = b.alloc::<f32>(s.k_len()).unwrap();
    let v = b.alloc::<f32>(s.v_len()).unwrap();
    let o_in = b.alloc::<f32>(s.o_len()).unwrap();
    let lse_in = b.alloc::<f32>(s.lse_len()).unwrap();
    let mut o = b.alloc::<f32>(s.o_len()).unwrap();
    let mut lse = b.alloc::<f32>(s.lse_len()).unwrap();
    let mut dq = b.alloc::<f32>(s.q_len()).unwrap();
    let mut dk = b.alloc::<f32>(s.k_len()).unwrap();
    let mut dv = b.alloc::<f32>(s.v_len()).unwrap();
    let good = BlockLayout::dense(&p);
    // Wrong number of query blocks (Lq = 130: 3 blocks instead of 2).
    let other = AttentionParams::new(AttentionShape::gqa(2, 4, 2, 130, 65, 16));
    let wrong = b.upload_layout(&BlockLayout::dense(&other)).unwrap();
    let wrong_t = b
        .upload_layout(&BlockLayout::dense(&other).transpose())
        .unwrap();
    let layout = b.upload_layout(&good).unwrap();
    let layout_t = b.upload_layout(&good.transpose()).unwrap();
    let r = b.sparse_attention_forward(
        &p,
        &wrong,
        &q,
        &k,
        &v,
        SparseEpilogue::none(),
        &mut o,
        &mut lse,
    );
    expect_err(
        b,
        OpKind::SparseForward,
        DType::F32,
        r,
        Kind::Shape,
        "layout",
    );
    let r = b.sparse_attention_backward(
        &p, &wrong, &layout_t, &q, &k, &v, &o_in, &o_in, &lse_in, &mut dq, &mut dk, &mut dv,
    );
    expect_err(
        b,
        OpKind::SparseBackward,
        DType::F32,
        r,
        Kind::Shape,
        "layout",
    );
    let r = b.sparse_attention_backward(
        &p, &layout, &wrong_t, &q, &k, &v, &o_in, &o_in, &lse_in, &mut dq, &mut dk, &mut dv,
    );
    expect_err(
        b,
        OpKind::SparseBackward,
        DType::F32,
        r,
        Kind::Shape,
        "layout_t",
    );
    // Right dims, but not the transpose: query block 1 drops key block 0 in `layout` only.
    let lists: Vec<Vec<u32>> = (0..s.batch * s.heads_q * 2)
        .map(|r| if r % 2 == 1 { vec![1] } else { vec![0, 1] })
        .collect();
    let partial = BlockLayout::from_lists(s.batch, s.heads_q, 2, 2, &lists).unwrap();
    let partial = b.upload_layout(&partial).unwrap();
    let r = b.sparse_attention_backward(
        &p, &partial, &layout_t, &q, &k, &v, &o_in, &o_in, &lse_in, &mut dq, &mut dk, &mut dv,
    );
    expect_err(
        b,
        OpKind::SparseBackward,
        DType::F32,
        r,
        Kind::Bad,
        "layout_t",
    );
}

/// Invalid layouts are refused by `BlockLayout::new` / `from_lists` (before any backend sees
/// them): unsorted, duplicate and out-of-range indices, a count above `max_blocks`,
/// `max_blocks` above the column blocks, and buffers of the wrong length.
pub fn invalid_layouts<B: Kernels>(_b: &B, _cfg: Config) {
    // One head, two rows, four column blocks, max_blocks = 3.
    let new =
        |counts: Vec<u32>, indices: Vec<u32>| BlockLayout::new(1, 1, 2, 4, 3, counts, indices);
    assert!(
        new(vec![2, 3], vec![0, 1, 0, 0, 2, 3]).is_ok(),
        "control layout"
    );
    expect_core_err(
        new(vec![2, 3], vec![1, 0, 0, 0, 2, 3]),
        Kind::Bad,
        "indices",
    );
    expect_core_err(
        new(vec![2, 3], vec![0, 1, 0, 1, 1, 3]),
        Kind::Bad,
        "indices",
    );
    expect_core_err(
        new(vec![2, 3], vec![0, 4, 0, 0, 2, 3]),
        Kind::Bad,
        "indices",
    );
    expect_core_err(new(vec![2, 4], vec![0, 1, 0, 0, 2, 3]), Kind::Bad, "counts");
    expect_core_err(new(vec![2], vec![0, 1, 0, 0, 2, 3]), Kind::Shape, "counts");
    expect_core_err(new(vec![2, 3], vec![0, 1, 0, 0, 2]), Kind::Shape, "indices");
    expect_core_err(
        BlockLayout::new(1, 1, 2, 2, 3, vec![0, 0], vec![0; 6]),
        Kind::Bad,
        "max_blocks",
    );
    expect_core_err(
        BlockLayout::from_lists(1, 1, 2, 4, &[vec![2, 1], vec![0]]),
        Kind::Bad,
        "indices",
    );
    expect_core_err(
        BlockLayout::from_lists(1, 1, 2, 4, &[vec![0]]),
        Kind::Shape,
        "lists",
    );
}

/// Run GR-KAN forward and backward with parameters `p` and buffer `bad` one element too long.
fn grkan_ops<T: Element>(b: &impl Kernels, p: &GrKanParams, bad: &str, kind: Kind, arg: &str) {
    // Lengths from the raw fields: they must not panic on invalid parameters either.
    let xl = p.rows.saturating_mul(p.channels);
    let al = p.groups.saturating_mul(p.num_degree + 1);
    let bl = p.groups.saturating_mul(p.den_degree);
    let x = buf::<_, T>(b, "x", xl, bad);
    let a = buf::<_, f32>(b, "a", al, bad);
    let bb = buf::<_, f32>(b, "b", bl, bad);
    let dy = buf::<_, T>(b, "dy", xl, bad);
    let mut y = buf::<_, T>(b, "y", xl, bad);
    let mut dx = buf::<_, T>(b, "dx", xl, bad);
    let mut da = buf::<_, f32>(b, "da", al, bad);
    let mut db = buf::<_, f32>(b, "db", bl, bad);
    if !matches!(bad, "dy" | "dx" | "da" | "db") {
        let r = b.grkan_forward(p, &x, &a, &bb, &mut y);
        expect_err(b, OpKind::GrKanForward, T::DTYPE, r, kind, arg);
    }
    if bad != "y" {
        let r = b.grkan_backward(p, &x, &a, &bb, &dy, &mut dx, &mut da, &mut db);
        expect_err(b, OpKind::GrKanBackward, T::DTYPE, r, kind, arg);
    }
    untouched(b, &[("y", &y), ("dx", &dx)]);
    untouched(b, &[("da", &da), ("db", &db)]);
}

/// Each GR-KAN buffer one element too long: `ShapeMismatch` naming it.
pub fn grkan_buffer_lengths<B: Kernels>(b: &B, _cfg: Config) {
    fn check<T: Element>(b: &impl Kernels) {
        let p = GrKanParams::new(5, 12, 4);
        for arg in ["x", "a", "b", "y", "dy", "dx", "da", "db"] {
            grkan_ops::<T>(b, &p, arg, Kind::Shape, arg);
        }
    }
    crate::for_each_dtype!(check, b);
}

/// `C % G != 0`, `C = 0`, `G = 0`: `BadParameter` from both GR-KAN ops.
pub fn grkan_bad_groups<B: Kernels>(b: &B, _cfg: Config) {
    for (c, g, arg) in [(12, 5, "channels"), (0, 4, "channels"), (12, 0, "groups")] {
        grkan_ops::<f32>(b, &GrKanParams::new(5, c, g), "none", Kind::Bad, arg);
    }
}

/// `rows · C` overflowing `usize`: `BadParameter` naming `rows`, never a panic.
pub fn grkan_huge_shape<B: Kernels>(b: &B, _cfg: Config) {
    let p = GrKanParams::new(usize::MAX / 4, 8, 4);
    grkan_ops::<f32>(b, &p, "none", Kind::Bad, "rows");
}

/// Element counts overflowing `usize`: `BadParameter` naming `len_q` / `len_k`, never a panic.
pub fn attention_huge_shape<B: Kernels>(b: &B, _cfg: Config) {
    let p = AttentionParams::new(AttentionShape::mha(usize::MAX / 8, 4, 1 << 20, 70, 16));
    attention_ops::<f32>(b, &p, "none", Kind::Bad, "len_q", &ATTENTION_OPS);
    let p = AttentionParams::new(AttentionShape::mha(1, 4, 70, usize::MAX / 8, 16));
    attention_ops::<f32>(b, &p, "none", Kind::Bad, "len_k", &ATTENTION_OPS);
}

/// `M > 7` or `N > 7`: `BadParameter` from both GR-KAN ops.
pub fn grkan_bad_degrees<B: Kernels>(b: &B, _cfg: Config) {
    for (m, n, arg) in [
        (8, 4, "num_degree"),
        (5, 8, "den_degree"),
        (9, 9, "num_degree"),
    ] {
        let p = GrKanParams::new(5, 12, 4).with_degrees(m, n);
        grkan_ops::<f32>(b, &p, "none", Kind::Bad, arg);
    }
}

/// Run Gumbel forward (with `y_soft`) and backward with `p` and buffer `bad` one too long.
fn gumbel_ops<T: Element>(b: &impl Kernels, p: &GumbelParams, bad: &str, kind: Kind, arg: &str) {
    let n = p.rows.saturating_mul(p.classes).min(1 << 20);
    let logits = buf::<_, T>(b, "logits", n, bad);
    let dy = buf::<_, T>(b, "dy", n, bad);
    let ys_in = buf::<_, f32>(b, "y_soft", n, bad);
    let mut y = buf::<_, T>(b, "y", n, bad);
    let mut ys = buf::<_, f32>(b, "y_soft", n, bad);
    let mut dl = buf::<_, T>(b, "dlogits", n, bad);
    if !matches!(bad, "dy" | "dlogits") {
        let r = b.gumbel_softmax_forward(p, &logits, &mut y, Some(&mut ys));
        expect_err(b, OpKind::GumbelForward, T::DTYPE, r, kind, arg);
    }
    if !matches!(bad, "logits" | "y") {
        let r = b.gumbel_softmax_backward(p, &ys_in, &dy, &mut dl);
        expect_err(b, OpKind::GumbelBackward, T::DTYPE, r, kind, arg);
    }
    untouched(b, &[("y", &y), ("dlogits", &dl)]);
    untouched(b, &[("y_soft", &ys)]);
}

/// Each Gumbel buffer one element too long: `ShapeMismatch` naming it.
pub fn gumbel_buffer_lengths<B: Kernels>(b: &B, _cfg: Config) {
    fn check<T: Element>(b: &impl Kernels) {
        let p = GumbelParams::new(3, 7, 0.5);
        for arg in ["logits", "y", "y_soft", "dy", "dlogits"] {
            gumbel_ops::<T>(b, &p, arg, Kind::Shape, arg);
        }
    }
    crate::for_each_dtype!(check, b);
}

/// `tau <= 0`, subnormal, NaN or infinite: `BadParameter` naming `tau`, from forward and backward.
pub fn gumbel_bad_tau<B: Kernels>(b: &B, _cfg: Config) {
    for tau in [
        0.0,
        -0.0,
        -1.0,
        1e-40,
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
    ] {
        gumbel_ops::<f32>(b, &GumbelParams::new(3, 7, tau), "none", Kind::Bad, "tau");
    }
}

/// `K = 0`: `BadParameter` naming `classes`; `rows · K ≥ 2⁶⁴`: naming `rows`.
pub fn gumbel_bad_classes<B: Kernels>(b: &B, _cfg: Config) {
    gumbel_ops::<f32>(
        b,
        &GumbelParams::new(3, 0, 1.0),
        "none",
        Kind::Bad,
        "classes",
    );
    let huge = GumbelParams::new(usize::MAX, 2, 1.0);
    gumbel_ops::<f32>(b, &huge, "none", Kind::Bad, "rows");
}

/// Instantiate this module's checks for one backend.
#[macro_export]
macro_rules! error_tests {
    ($make:expr, $config:expr) => {
        $crate::checks!(
            errors,
            $make,
            $config,
            [
                attention_buffer_lengths,
                attention_bad_heads,
                attention_bad_head_dims,
                attention_bad_scale,
                topk_nothing_to_keep,
                sparse_layout_mismatch,
                invalid_layouts,
                grkan_buffer_lengths,
                grkan_bad_groups,
                grkan_huge_shape,
                attention_huge_shape,
                grkan_bad_degrees,
                gumbel_buffer_lengths,
                gumbel_bad_tau,
                gumbel_bad_classes,
            ]
        );
    };
}
