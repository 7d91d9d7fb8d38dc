//! Conformance checks: dense attention (SPEC §1), and the plumbing the sparse checks share.
//!
//! Every check compares with `flashneck_cpu::oracle::attention` (f64) within
//! `DType::reduction_tolerance()`, on fresh random inputs, with NaN-poisoned outputs. Property
//! tests draw shapes (ragged lengths, `Lq ≠ Lk`, `Hq/Hkv ∈ {1, 2, 4, 8}`, causal or not,
//! `D ∈ 8..=max_head_dim`, sometimes `Dv ≠ D`) with proptest; shapes are shrunk to a work budget
//! so that the f64 oracle stays fast.

use crate::{
    Config, assert_close, assert_close_f64, bits, fresh_rng, nan_buffer, property, ran,
    random_input,
};
use flashneck_core::{
    AttentionParams, AttentionShape, Backend, BlockLayout, Element, HeadDims, Kernels, OpKind,
    SparseEpilogue,
};
use flashneck_cpu::oracle::attention as oracle;
use proptest::prelude::*;
use rand::{SeedableRng, rngs::StdRng};

/// Upper bound on `B · Hq · Lq · Lk · (D + Dv)` of one property case (keeps the oracle fast).
const WORK_BUDGET: usize = 8_000_000;

/// Host inputs of one case: `Q, K, V` as `T` and their exact f64 copies.
pub(crate) struct Inputs<T> {
    pub q: (Vec<T>, Vec<f64>),
    pub k: (Vec<T>, Vec<f64>),
    pub v: (Vec<T>, Vec<f64>),
}

impl<T: Element> Inputs<T> {
    /// Random `Q, K, V` for `p` with standard deviation `std`.
    pub fn random(p: &AttentionParams, rng: &mut StdRng, std: f32) -> Self {
        let s = &p.shape;
        Inputs {
            q: random_input(rng, s.q_len(), std),
            k: random_input(rng, s.k_len(), std),
            v: random_input(rng, s.v_len(), std),
        }
    }
}

/// Upload host data (the suite's device copies).
pub(crate) fn up<B: Backend, T: flashneck_core::Scalar>(b: &B, x: &[T]) -> B::Buffer<T> {
    b.upload(x).expect("upload")
}

/// Download a device buffer.
pub(crate) fn down<B: Backend, T: flashneck_core::Scalar>(b: &B, x: &B::Buffer<T>) -> Vec<T> {
    b.download(x).expect("download")
}

/// The backend's forward, dense (`layout = None`) or sparse with the epilogue; `None` when the
/// backend does not claim the op (a `skip:` line was printed).
pub(crate) fn run_forward<B: Kernels, T: Element>(
    b: &B,
    p: &AttentionParams,
    layout: Option<&BlockLayout>,
    x: &Inputs<T>,
    row_scale: Option<&[f32]>,
    residual: Option<&[T]>,
) -> Option<(Vec<T>, Vec<f32>)> {
    let s = &p.shape;
    let (q, k, v) = (up(b, &x.q.0), up(b, &x.k.0), up(b, &x.v.0));
    let mut o = nan_buffer::<B, T>(b, s.o_len());
    let mut lse = nan_buffer::<B, f32>(b, s.lse_len());
    match layout {
        None => ran(
            b,
            OpKind::AttentionForward,
            T::DTYPE,
            b.attention_forward(p, &q, &k, &v, &mut o, &mut lse),
        )?,
        Some(l) => {
            let dl = b.upload_layout(l).expect("upload layout");
            let rs = row_scale.map(|r| up(b, r));
            let res = residual.map(|r| up(b, r));
            let epilogue = SparseEpilogue {
                row_scale: rs.as_ref(),
                residual: res.as_ref(),
            };
            ran(
                b,
                OpKind::SparseForward,
                T::DTYPE,
                b.sparse_attention_forward(p, &dl, &q, &k, &v, epilogue, &mut o, &mut lse),
            )?
        }
    }
    Some((down(b, &o), down(b, &lse)))
}

/// The backend's backward (dense, or sparse over `layout`): `(dq, dk, dv)`.
pub(crate) fn run_backward<B: Kernels, T: Element>(
    b: &B,
    p: &AttentionParams,
    layout: Option<&BlockLayout>,
    x: &Inputs<T>,
    o: &[T],
    d_o: &[T],
    lse: &[f32],
) -> Option<(Vec<T>, Vec<T>, Vec<T>)> {
    let s = &p.shape;
    let (q, k, v) = (up(b, &x.q.0), up(b, &x.k.0), up(b, &x.v.0));
    let (o, d_o, lse) = (up(b, o), up(b, d_o), up(b, lse));
    let mut dq = nan_buffer::<B, T>(b, s.q_len());
    let mut dk = nan_buffer::<B, T>(b, s.k_len());
    let mut dv = nan_buffer::<B, T>(b, s.v_len());
    match layout {
        None => ran(
            b,
            OpKind::AttentionBackward,
            T::DTYPE,
            b.attention_backward(p, &q, &k, &v, &o, &d_o, &lse, &mut dq, &mut dk, &mut dv),
        )?,
        Some(l) => {
            let dl = b.upload_layout(l).expect("upload layout");
            let dlt = b.upload_layout(&l.transpose()).expect("upload layout");
            ran(
                b,
                OpKind::SparseBackward,
                T::DTYPE,
                b.sparse_attention_backward(
                    p, &dl, &dlt, &q, &k, &v, &o, &d_o, &lse, &mut dq, &mut dk, &mut dv,
                ),
            )?
        }
    }
    Some((down(b, &dq), down(b, &dk), down(b, &dv)))
}

fn f64s(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

/// Forward against the oracle: `o` and `lse`. Returns the backend's outputs for further use.
pub(crate) fn check_forward<B: Kernels, T: Element>(
    b: &B,
    what: &str,
    p: &AttentionParams,
    layout: Option<&BlockLayout>,
    x: &Inputs<T>,
    seed: u64,
) -> Option<(Vec<T>, Vec<f32>)> {
    let (o, lse) = run_forward(b, p, layout, x, None, None)?;
    let (o_ref, lse_ref) = oracle::attention_forward(p, layout, &x.q.1, &x.k.1, &x.v.1, None, None);
    let tol = T::DTYPE.reduction_tolerance();
    let tag = format!("{what} {} {p:?}", T::DTYPE);
    assert_close(&format!("{tag}: o"), &o, &o_ref, tol, seed);
    // LSE is an f32 statistic of inputs the oracle sees too: f32 tolerance in every dtype.
    let lse_tol = flashneck_core::DType::F32.reduction_tolerance();
    assert_close_f64(&format!("{tag}: lse"), &f64s(&lse), &lse_ref, lse_tol, seed);
    Some((o, lse))
}

/// Backward against the oracle: the backend's forward outputs `O`, `LSE` (as stored, rounded to
/// `T` and f32) are the backward's inputs, for the backend and the oracle alike, so the check
/// is of the backward op itself; `dq, dk, dv` must agree.
pub(crate) fn check_backward<B: Kernels, T: Element>(
    b: &B,
    what: &str,
    p: &AttentionParams,
    layout: Option<&BlockLayout>,
    x: &Inputs<T>,
    rng: &mut StdRng,
    seed: u64,
) {
    let Some((o, lse)) = run_forward(b, p, layout, x, None, None) else {
        return;
    };
    check_backward_from(b, what, p, layout, x, &o, &lse, rng, seed);
}

/// `(dq, dk, dv)` on the host.
type Grads<T> = (Vec<T>, Vec<T>, Vec<T>);

/// [`check_backward`] from given forward outputs; returns the backend's `(dq, dk, dv)` and the
/// `dO` it used, or `None` when the backend does not claim the op.
#[allow(clippy::too_many_arguments)]
fn check_backward_from<B: Kernels, T: Element>(
    b: &B,
    what: &str,
    p: &AttentionParams,
    layout: Option<&BlockLayout>,
    x: &Inputs<T>,
    o: &[T],
    lse: &[f32],
    rng: &mut StdRng,
    seed: u64,
) -> Option<(Grads<T>, Vec<T>)> {
    let d_o = random_input::<T>(rng, p.shape.o_len(), 1.0);
    let (dq, dk, dv) = run_backward(b, p, layout, x, o, &d_o.0, lse)?;
    let o64: Vec<f64> = o.iter().map(|v| v.to_f64()).collect();
    let (dq_ref, dk_ref, dv_ref) =
        oracle::attention_backward(p, layout, &x.q.1, &x.k.1, &x.v.1, &o64, &d_o.1, &f64s(lse));
    let tol = T::DTYPE.reduction_tolerance();
    let tag = format!("{what} {} {p:?}", T::DTYPE);
    assert_close(&format!("{tag}: dq"), &dq, &dq_ref, tol, seed);
    assert_close(&format!("{tag}: dk"), &dk, &dk_ref, tol, seed);
    assert_close(&format!("{tag}: dv"), &dv, &dv_ref, tol, seed);
    Some(((dq, dk, dv), d_o.0))
}

/// One fixed case, for a backend's own tests of shapes the property tests do not reach (long
/// tile loops, thin edges): forward and backward of `p` (dense, or sparse over `layout`) on
/// fresh random inputs from `seed` against the oracle, and the backward run a second time with
/// the same bits. Does nothing (after a `skip:` line) for ops the backend does not claim.
pub fn check_case<B: Kernels, T: Element>(
    b: &B,
    what: &str,
    p: &AttentionParams,
    layout: Option<&BlockLayout>,
    seed: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let x = Inputs::<T>::random(p, &mut rng, 1.0);
    let Some((o, lse)) = check_forward(b, what, p, layout, &x, seed) else {
        return;
    };
    let Some((grads, d_o)) = check_backward_from(b, what, p, layout, &x, &o, &lse, &mut rng, seed)
    else {
        return;
    };
    let again = run_backward(b, p, layout, &x, &o, &d_o, &lse).expect("ran once already");
    let tag = format!("{what} {} {p:?} seed {seed}", T::DTYPE);
    assert!(
        bits(&grads.0) == bits(&again.0)
            && bits(&grads.1) == bits(&again.1)
            && bits(&grads.2) == bits(&again.2),
        "{tag}: the backward gave other bits on a second run"
    );
}

/// `s` with head dims the backend takes: clamped to `UpTo(m)`, or the closest of
/// `Exactly(list)` (with `Dv = D`), so that the checks run on backends with fixed head dims.
pub(crate) fn fit_dims(dims: &HeadDims, s: AttentionShape) -> AttentionShape {
    let (head_dim, head_dim_v) = match dims {
        HeadDims::UpTo(m) => (s.head_dim.min(*m), s.head_dim_v.min(*m)),
        HeadDims::Exactly(list) => {
            let d = list
                .iter()
                .copied()
                .min_by_key(|d| d.abs_diff(s.head_dim))
                .unwrap_or(s.head_dim);
            (d, d)
        }
    };
    AttentionShape {
        head_dim,
        head_dim_v,
        ..s
    }
}

/// [`fit_dims`] for backend `b`.
pub(crate) fn fit<B: Backend>(b: &B, s: AttentionShape) -> AttentionShape {
    fit_dims(&b.info().head_dims, s)
}

/// Shrink the lengths of `p` until the case's work fits [`WORK_BUDGET`].
fn fit_budget(mut p: AttentionParams) -> AttentionParams {
    let s = &mut p.shape;
    let per_pair = s.batch * s.heads_q * (s.head_dim + s.head_dim_v);
    while per_pair * s.len_q * s.len_k > WORK_BUDGET {
        if s.len_q >= s.len_k {
            s.len_q = (s.len_q * 2 / 3).max(1);
        } else {
            s.len_k = (s.len_k * 2 / 3).max(1);
        }
    }
    p
}

/// Random attention parameters for property tests (head dims fitted to `dims`), and a seed for
/// the case's inputs.
pub(crate) fn params_strategy(
    cfg: Config,
    dims: HeadDims,
) -> impl Strategy<Value = (AttentionParams, u64)> {
    let d_range = 8..=cfg.max_head_dim.max(8);
    (
        (1..=2usize, 0..4u32, 0..4u32),
        (1..=cfg.max_len, 1..=cfg.max_len),
        (d_range.clone(), prop::option::weighted(0.3, d_range)),
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(move |((batch, e1, e2), (lq, lk), (d, dv), causal, seed)| {
            let shape = fit_dims(
                &dims,
                AttentionShape {
                    batch,
                    heads_q: 1 << e1.max(e2),
                    heads_kv: 1 << e1.min(e2),
                    len_q: lq,
                    len_k: lk,
                    head_dim: d,
                    head_dim_v: dv.unwrap_or(d),
                },
            );
            (
                fit_budget(AttentionParams::new(shape).with_causal(causal)),
                seed,
            )
        })
}

fn forward_property<T: Element>(b: &impl Kernels, cfg: Config) {
    property(
        cfg,
        "attention forward",
        params_strategy(cfg, b.info().head_dims),
        |(p, case), seed| {
            let x = Inputs::<T>::random(&p, &mut StdRng::seed_from_u64(case), 1.0);
            check_forward(b, "forward", &p, None, &x, seed);
        },
    );
}

/// Property: the forward matches the oracle on random shapes, in every dtype.
pub fn forward_matches_oracle<B: Kernels>(b: &B, cfg: Config) {
    crate::for_each_dtype!(forward_property, b, cfg);
}

fn backward_property<T: Element>(b: &impl Kernels, cfg: Config) {
    property(
        cfg,
        "attention backward",
        params_strategy(cfg, b.info().head_dims),
        |(p, case), seed| {
            let mut rng = StdRng::seed_from_u64(case);
            let x = Inputs::<T>::random(&p, &mut rng, 1.0);
            check_backward(b, "backward", &p, None, &x, &mut rng, seed);
        },
    );
}

/// Property: the backward matches the oracle on random shapes, in every dtype.
pub fn backward_matches_oracle<B: Kernels>(b: &B, cfg: Config) {
    crate::for_each_dtype!(backward_property, b, cfg);
}

fn fully_masked_rows_typed<T: Element>(b: &impl Kernels, _cfg: Config) {
    let (mut rng, seed) = fresh_rng();
    // Lq > Lk, causal: query i sees keys j <= i + Lk − Lq, so rows 0..Lq−Lk see nothing.
    let p =
        AttentionParams::new(fit(b, AttentionShape::gqa(2, 4, 2, 150, 37, 24))).with_causal(true);
    let x = Inputs::<T>::random(&p, &mut rng, 1.0);
    let Some((o, lse)) = check_forward(b, "fully masked rows", &p, None, &x, seed) else {
        return;
    };
    let s = &p.shape;
    let empty = s.len_q - s.len_k;
    for bh in 0..s.batch * s.heads_q {
        for i in 0..empty {
            let row = bh * s.len_q + i;
            assert_eq!(lse[row], f32::NEG_INFINITY, "lse of empty row {row}");
            let o_row = &o[row * s.head_dim_v..(row + 1) * s.head_dim_v];
            assert!(
                o_row.iter().all(|v| v.to_f32() == 0.0),
                "o of empty row {row}"
            );
        }
        assert!(lse[bh * s.len_q + empty].is_finite(), "first non-empty row");
    }
    let d_o = random_input::<T>(&mut rng, s.o_len(), 1.0);
    let Some((dq, _, _)) = run_backward(b, &p, None, &x, &o, &d_o.0, &lse) else {
        return;
    };
    for bh in 0..s.batch * s.heads_q {
        let rows = bh * s.len_q..bh * s.len_q + empty;
        let dq_rows = &dq[rows.start * s.head_dim..rows.end * s.head_dim];
        assert!(
            dq_rows.iter().all(|v| v.to_f32() == 0.0),
            "dq of empty rows"
        );
    }
    check_backward(b, "fully masked rows", &p, None, &x, &mut rng, seed);
}

/// Fixed case: `Lq > Lk` causal gives rows with `lse = −inf`, `o = 0`, `dq = 0` (never NaN).
pub fn fully_masked_rows<B: Kernels>(b: &B, cfg: Config) {
    crate::for_each_dtype!(fully_masked_rows_typed, b, cfg);
}

fn no_keys_typed<T: Element>(b: &impl Kernels, _cfg: Config) {
    let (mut rng, _) = fresh_rng();
    for causal in [false, true] {
        let p = AttentionParams::new(fit(b, AttentionShape::gqa(2, 2, 1, 70, 0, 16)))
            .with_causal(causal);
        let x = Inputs::<T>::random(&p, &mut rng, 1.0);
        let Some((o, lse)) = run_forward(b, &p, None, &x, None, None) else {
            return;
        };
        assert!(o.iter().all(|v| v.to_f32() == 0.0), "o with Lk = 0");
        assert!(
            lse.iter().all(|&l| l == f32::NEG_INFINITY),
            "lse with Lk = 0"
        );
        let d_o = random_input::<T>(&mut rng, p.shape.o_len(), 1.0);
        let Some((dq, dk, dv)) = run_backward(b, &p, None, &x, &o, &d_o.0, &lse) else {
            return;
        };
        assert!(dq.iter().all(|v| v.to_f32() == 0.0), "dq with Lk = 0");
        assert!(dk.is_empty() && dv.is_empty());
    }
}

/// Fixed case: `Lk = 0`: every row is empty (`o = 0`, `lse = −inf`, `dq = 0`).
pub fn no_keys<B: Kernels>(b: &B, cfg: Config) {
    crate::for_each_dtype!(no_keys_typed, b, cfg);
}

fn empty_batch_typed<T: Element>(b: &impl Kernels, _cfg: Config) {
    let (mut rng, _) = fresh_rng();
    for shape in [
        fit(b, AttentionShape::mha(0, 2, 50, 60, 32)),
        fit(b, AttentionShape::mha(1, 2, 0, 60, 32)),
    ] {
        let p = AttentionParams::new(shape).with_causal(true);
        let x = Inputs::<T>::random(&p, &mut rng, 1.0);
        let Some((o, lse)) = run_forward(b, &p, None, &x, None, None) else {
            return;
        };
        assert_eq!((o.len(), lse.len()), (0, 0));
        let Some((dq, dk, dv)) = run_backward(b, &p, None, &x, &o, &o, &lse) else {
            return;
        };
        assert!(dq.is_empty());
        // Lq = 0: no query attends to any key, so dK = dV = 0.
        assert!(
            dk.iter().chain(&dv).all(|v| v.to_f32() == 0.0),
            "dk, dv with Lq = 0"
        );
    }
}

/// Fixed cases: `B = 0` and `Lq = 0` run and write nothing (dK, dV are zero).
pub fn empty_batch<B: Kernels>(b: &B, cfg: Config) {
    crate::for_each_dtype!(empty_batch_typed, b, cfg);
}

fn extreme_scale_typed<T: Element>(b: &impl Kernels, _cfg: Config) {
    let (mut rng, seed) = fresh_rng();
    let shape = fit(b, AttentionShape::gqa(1, 2, 1, 93, 141, 32));
    // Logits of hundreds (one key dominates each row), and a scale so small that the softmax
    // is uniform.
    for (scale, causal) in [(12.0f32, false), (12.0, true), (1e-6, true)] {
        let p = AttentionParams::new(shape)
            .with_scale(scale)
            .with_causal(causal);
        let x = Inputs::<T>::random(&p, &mut rng, 1.0);
        check_forward(b, "extreme scale", &p, None, &x, seed);
        check_backward(b, "extreme scale", &p, None, &x, &mut rng, seed);
    }
}

/// Fixed cases: extreme logits (scale 12 on unit inputs) and a vanishing scale.
pub fn extreme_scale<B: Kernels>(b: &B, cfg: Config) {
    crate::for_each_dtype!(extreme_scale_typed, b, cfg);
}

fn gqa_typed<T: Element>(b: &impl Kernels, _cfg: Config) {
    let (mut rng, seed) = fresh_rng();
    for causal in [false, true] {
        let p = AttentionParams::new(fit(b, AttentionShape::gqa(1, 8, 1, 77, 130, 40)))
            .with_causal(causal);
        let x = Inputs::<T>::random(&p, &mut rng, 1.0);
        check_forward(b, "gqa 8:1", &p, None, &x, seed);
        check_backward(b, "gqa 8:1", &p, None, &x, &mut rng, seed);
    }
}

/// Fixed case: GQA 8:1 (MQA), where `dK`, `dV` sum over eight query heads.
pub fn gqa_eight_to_one<B: Kernels>(b: &B, cfg: Config) {
    crate::for_each_dtype!(gqa_typed, b, cfg);
}

fn every_head_dim_typed<T: Element>(b: &impl Kernels, _cfg: Config) {
    let dims = match b.info().head_dims {
        HeadDims::Exactly(list) => list,
        HeadDims::UpTo(max) => vec![max.min(128)],
    };
    let (mut rng, seed) = fresh_rng();
    for d in dims {
        let dense = AttentionParams::new(AttentionShape::gqa(2, 4, 2, 131, 97, d));
        let causal = dense.with_causal(true);
        let sparse =
            AttentionParams::new(AttentionShape::gqa(1, 2, 1, 150, 230, d)).with_causal(true);
        let layout = crate::sparse::random_layout(&sparse, &mut rng, 0.5);
        let what = format!("head dim {d}");
        for (p, l) in [(&dense, None), (&causal, None), (&sparse, Some(&layout))] {
            check_case::<_, T>(b, &what, p, l, seed);
        }
    }
}

/// Fixed cases: every head dim a backend with compiled kernels has (`HeadDims::Exactly`; one
/// of at most 128 for the others), dense (GQA 2:1, then causal with `Lq > Lk`, whose first rows
/// see no key) and sparse over a random layout (causal, `Lq < Lk`), on ragged shapes with
/// several 64-row blocks: the properties draw head dims at random, and may miss one.
pub fn every_head_dim<B: Kernels>(b: &B, cfg: Config) {
    crate::for_each_dtype!(every_head_dim_typed, b, cfg);
}

/// Central finite differences of `Σ o ⊙ dO` (the oracle's forward) against the oracle's
/// backward, for every element of `q`, `k`, `v`.
pub(crate) fn finite_differences(p: &AttentionParams, layout: Option<&BlockLayout>, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let s = &p.shape;
    let (_, q) = random_input::<f32>(&mut rng, s.q_len(), 1.0);
    let (_, k) = random_input::<f32>(&mut rng, s.k_len(), 1.0);
    let (_, v) = random_input::<f32>(&mut rng, s.v_len(), 1.0);
    let (_, d_o) = random_input::<f32>(&mut rng, s.o_len(), 1.0);
    let loss = |q: &[f64], k: &[f64], v: &[f64]| -> f64 {
        let (o, _) = oracle::attention_forward(p, layout, q, k, v, None, None);
        o.iter().zip(&d_o).map(|(a, b)| a * b).sum()
    };
    let (o, lse) = oracle::attention_forward(p, layout, &q, &k, &v, None, None);
    let (dq, dk, dv) = oracle::attention_backward(p, layout, &q, &k, &v, &o, &d_o, &lse);
    let h = 1e-5;
    let numeric = |which: usize| -> Vec<f64> {
        let mut xs = [q.clone(), k.clone(), v.clone()];
        (0..xs[which].len())
            .map(|i| {
                let x0 = xs[which][i];
                xs[which][i] = x0 + h;
                let up = loss(&xs[0], &xs[1], &xs[2]);
                xs[which][i] = x0 - h;
                let dn = loss(&xs[0], &xs[1], &xs[2]);
                xs[which][i] = x0;
                (up - dn) / (2.0 * h)
            })
            .collect()
    };
    let tag = format!("oracle backward vs finite differences {p:?}");
    assert_close_f64(&format!("{tag}: dq"), &dq, &numeric(0), 1e-6, seed);
    assert_close_f64(&format!("{tag}: dk"), &dk, &numeric(1), 1e-6, seed);
    assert_close_f64(&format!("{tag}: dv"), &dv, &numeric(2), 1e-6, seed);
    assert!(
        dq.iter().chain(&dk).chain(&dv).any(|g| g.abs() > 1e-3),
        "gradients are not all ~0"
    );
}

/// The oracle's backward agrees with central finite differences of its forward (small shapes). It checks the
/// oracle, not a backend: `flashneck-cpu/tests/oracles.rs` runs it once.
pub fn oracle_backward_matches_finite_differences() {
    let (_, seed) = fresh_rng();
    for causal in [false, true] {
        // Lq > Lk causal: includes an empty row (no gradient through it).
        let p = AttentionParams::new(AttentionShape {
            head_dim_v: 3,
            ..AttentionShape::gqa(1, 2, 1, 6, 5, 4)
        })
        .with_causal(causal);
        finite_differences(&p, None, seed);
    }
}

fn determinism_typed<T: Element>(b: &impl Kernels, _cfg: Config) {
    let (mut rng, _) = fresh_rng();
    let p =
        AttentionParams::new(fit(b, AttentionShape::gqa(2, 4, 2, 200, 170, 40))).with_causal(true);
    let x = Inputs::<T>::random(&p, &mut rng, 1.0);
    let d_o = random_input::<T>(&mut rng, p.shape.o_len(), 1.0);
    let run = || {
        let (o, lse) = run_forward(b, &p, None, &x, None, None)?;
        let (dq, dk, dv) = run_backward(b, &p, None, &x, &o, &d_o.0, &lse)?;
        Some([bits(&o), bits::<f32>(&lse), bits(&dq), bits(&dk), bits(&dv)])
    };
    let (Some(first), Some(second)) = (run(), run()) else {
        return;
    };
    assert!(first == second, "two runs differ ({})", T::DTYPE);
}

/// Two runs of the forward and the backward on the same inputs are bitwise equal.
pub fn deterministic<B: Kernels>(b: &B, cfg: Config) {
    crate::for_each_dtype!(determinism_typed, b, cfg);
}

/// Instantiate this module's checks for one backend.
#[macro_export]
macro_rules! attention_tests {
    ($make:expr, $config:expr) => {
        $crate::checks!(
            attention,
            $make,
            $config,
            [
                forward_matches_oracle,
                backward_matches_oracle,
                fully_masked_rows,
                no_keys,
                empty_batch,
                extreme_scale,
                gqa_eight_to_one,
                every_head_dim,
                deterministic,
            ]
        );
    };
}
