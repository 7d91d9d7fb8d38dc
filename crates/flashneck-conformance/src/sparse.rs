//! Conformance checks: block-sparse attention, the Re-ttention epilogue and `block_topk`
//! (SPEC §2), against `flashneck_cpu::oracle::attention` with a layout.

use crate::attention::{
    Inputs, check_backward, check_forward, finite_differences, fit, params_strategy, run_backward,
    run_forward,
};
use crate::{
    Config, assert_close, assert_close_f64, bits, fresh_rng, property, ran, random_input,
    to_element,
};
use flashneck_core::layout::{rho, visible_key_blocks};
use flashneck_core::{
    AttentionParams, AttentionShape, BLOCK, BlockLayout, Element, HeadDims, Kernels, OpKind,
    TopkParams,
};
use flashneck_cpu::oracle::attention as oracle;
use proptest::prelude::*;
use rand::{Rng, SeedableRng, rngs::StdRng};

/// A random layout for `p`: each row keeps each key block with probability `density`
/// (ascending by construction; rows may be empty; under causal, invisible blocks may be kept:
/// the element mask must still hide them). Public for the backends' own fixed cases.
pub fn random_layout(p: &AttentionParams, rng: &mut impl Rng, density: f64) -> BlockLayout {
    let s = &p.shape;
    let (nqb, nkb) = (s.q_blocks(), s.k_blocks());
    let lists: Vec<Vec<u32>> = (0..s.batch * s.heads_q * nqb)
        .map(|_| (0..nkb as u32).filter(|_| rng.gen_bool(density)).collect())
        .collect();
    BlockLayout::from_lists(s.batch, s.heads_q, nqb, nkb, &lists).expect("ascending lists")
}

/// Parameters (shrunk to the budget) and a case seed, plus a layout density.
fn sparse_strategy(
    cfg: Config,
    dims: &HeadDims,
) -> impl Strategy<Value = ((AttentionParams, u64), f64)> {
    (
        params_strategy(cfg, dims.clone()),
        prop_oneof![Just(0.3), Just(0.6), Just(1.0)],
    )
}

fn forward_property<T: Element>(b: &impl Kernels, cfg: Config) {
    property(
        cfg,
        "sparse attention",
        sparse_strategy(cfg, &b.info().head_dims),
        |((p, case), density), seed| {
            let mut rng = StdRng::seed_from_u64(case);
            let layout = random_layout(&p, &mut rng, density);
            let x = Inputs::<T>::random(&p, &mut rng, 1.0);
            check_forward(b, "sparse forward", &p, Some(&layout), &x, seed);
        },
    );
}

/// Property: the sparse forward matches the oracle on random shapes and random layouts.
pub fn random_layouts_forward<B: Kernels>(b: &B, cfg: Config) {
    crate::for_each_dtype!(forward_property, b, cfg);
}

fn backward_property<T: Element>(b: &impl Kernels, cfg: Config) {
    property(
        cfg,
        "sparse attention",
        sparse_strategy(cfg, &b.info().head_dims),
        |((p, case), density), seed| {
            let mut rng = StdRng::seed_from_u64(case);
            let layout = random_layout(&p, &mut rng, density);
            let x = Inputs::<T>::random(&p, &mut rng, 1.0);
            check_backward(b, "sparse backward", &p, Some(&layout), &x, &mut rng, seed);
        },
    );
}

/// Property: the sparse backward matches the oracle on random shapes and random layouts.
pub fn random_layouts_backward<B: Kernels>(b: &B, cfg: Config) {
    crate::for_each_dtype!(backward_property, b, cfg);
}

fn dense_equals_sparse_typed<T: Element>(b: &impl Kernels, _cfg: Config) {
    let (mut rng, _) = fresh_rng();
    for (shape, causal) in [
        (AttentionShape::gqa(2, 4, 2, 150, 201, 40), true),
        (AttentionShape::gqa(1, 2, 1, 200, 90, 24), true),
        (AttentionShape::mha(1, 2, 77, 130, 16), false),
    ] {
        let p = AttentionParams::new(fit(b, shape)).with_causal(causal);
        let full = BlockLayout::causal(&p);
        let x = Inputs::<T>::random(&p, &mut rng, 1.0);
        let d_o = random_input::<T>(&mut rng, p.shape.o_len(), 1.0);
        let (Some((o_d, lse_d)), Some((o_s, lse_s))) = (
            run_forward(b, &p, None, &x, None, None),
            run_forward(b, &p, Some(&full), &x, None, None),
        ) else {
            return;
        };
        assert_eq!(
            bits(&o_d),
            bits(&o_s),
            "o: dense != sparse on the full layout {p:?}"
        );
        assert_eq!(
            bits::<f32>(&lse_d),
            bits::<f32>(&lse_s),
            "lse: dense != sparse {p:?}"
        );
        let (Some(g_d), Some(g_s)) = (
            run_backward(b, &p, None, &x, &o_d, &d_o.0, &lse_d),
            run_backward(b, &p, Some(&full), &x, &o_d, &d_o.0, &lse_d),
        ) else {
            return;
        };
        assert_eq!(bits(&g_d.0), bits(&g_s.0), "dq: dense != sparse {p:?}");
        assert_eq!(bits(&g_d.1), bits(&g_s.1), "dk: dense != sparse {p:?}");
        assert_eq!(bits(&g_d.2), bits(&g_s.2), "dv: dense != sparse {p:?}");
    }
}

/// Dense attention equals sparse attention on `BlockLayout::causal` bit for bit (forward and
/// backward; the backend against itself).
pub fn dense_equals_sparse_on_full_layout<B: Kernels>(b: &B, cfg: Config) {
    crate::for_each_dtype!(dense_equals_sparse_typed, b, cfg);
}

fn epilogue_typed<T: Element>(b: &impl Kernels, _cfg: Config) {
    let (mut rng, seed) = fresh_rng();
    let p =
        AttentionParams::new(fit(b, AttentionShape::gqa(1, 4, 2, 140, 190, 32))).with_causal(true);
    let s = &p.shape;
    let layout = random_layout(&p, &mut rng, 0.5);
    let x = Inputs::<T>::random(&p, &mut rng, 1.0);
    let rho_vals: Vec<f32> = (0..s.lse_len()).map(|_| rng.gen_range(0.0..1.5)).collect();
    let residual = random_input::<T>(&mut rng, s.o_len(), 1.0);
    let tol = T::DTYPE.reduction_tolerance();
    for (use_rho, use_res) in [(true, true), (true, false), (false, true)] {
        let rs = use_rho.then_some(&rho_vals[..]);
        let res = use_res.then_some(&residual.0[..]);
        let Some((o, lse)) = run_forward(b, &p, Some(&layout), &x, rs, res) else {
            return;
        };
        let rs64: Option<Vec<f64>> = rs.map(|r| r.iter().map(|&v| v as f64).collect());
        let (o_ref, lse_ref) = oracle::attention_forward(
            &p,
            Some(&layout),
            &x.q.1,
            &x.k.1,
            &x.v.1,
            rs64.as_deref(),
            use_res.then_some(&residual.1[..]),
        );
        let tag = format!("epilogue rho={use_rho} residual={use_res} {}", T::DTYPE);
        assert_close(&format!("{tag}: o"), &o, &o_ref, tol, seed);
        let lse64: Vec<f64> = lse.iter().map(|&v| v as f64).collect();
        assert_close_f64(
            &format!("{tag}: lse (before the epilogue)"),
            &lse64,
            &lse_ref,
            flashneck_core::DType::F32.reduction_tolerance(),
            seed,
        );
    }
}

/// The Re-ttention epilogue `o ← ρ·o + R` (each part alone and both) matches the oracle, and
/// `lse` is reported before it.
pub fn epilogue_matches_oracle<B: Kernels>(b: &B, cfg: Config) {
    crate::for_each_dtype!(epilogue_typed, b, cfg);
}

/// `rho = exp(lse_sparse − lse_full)` from the backend's LSEs equals the share of the full
/// softmax's mass that falls on the sparse layout's keys (computed by the oracle).
pub fn rho_is_kept_softmax_mass<B: Kernels>(b: &B, _cfg: Config) {
    let (mut rng, seed) = fresh_rng();
    let p =
        AttentionParams::new(fit(b, AttentionShape::gqa(2, 2, 1, 200, 150, 24))).with_causal(true);
    let s = &p.shape;
    let layout = random_layout(&p, &mut rng, 0.5);
    let x = Inputs::<f32>::random(&p, &mut rng, 1.0);
    let (Some((_, lse_full)), Some((_, lse_sparse))) = (
        run_forward(b, &p, None, &x, None, None),
        run_forward(b, &p, Some(&layout), &x, None, None),
    ) else {
        return;
    };
    let got = rho(&lse_sparse, &lse_full).expect("equal lengths");
    // Oracle: the full softmax's mass on the kept keys is Σ_kept e^s / Σ_all e^s
    // = exp(lse_sparse − lse_full), with the oracle's f64 LSEs.
    let (_, full_ref) = oracle::attention_forward(&p, None, &x.q.1, &x.k.1, &x.v.1, None, None);
    let (_, sparse_ref) =
        oracle::attention_forward(&p, Some(&layout), &x.q.1, &x.k.1, &x.v.1, None, None);
    let want: Vec<f64> = sparse_ref
        .iter()
        .zip(&full_ref)
        .map(|(&sp, &fu)| {
            if sp == f64::NEG_INFINITY {
                0.0
            } else {
                (sp - fu).exp()
            }
        })
        .collect();
    assert!(
        want.iter().all(|&r| (0.0..=1.0 + 1e-12).contains(&r)),
        "rho in [0, 1]"
    );
    assert!(
        want.iter().any(|&r| r > 0.0 && r < 1.0),
        "a layout that keeps part of the mass"
    );
    let got64: Vec<f64> = got.iter().map(|&v| v as f64).collect();
    assert_close_f64("rho", &got64, &want, 1e-4, seed);
    assert_eq!(got.len(), s.lse_len());
}

/// Inputs whose rows are constant over each block of 64 and multiples of 1/8: the pooled
/// means and scores are then exact in f32 (and f16, bf16), so the layout must equal the
/// oracle's exactly. `ties` makes every key block of a head pool to the same mean.
fn blockwise_input<T: Element>(
    rng: &mut StdRng,
    heads: usize,
    len: usize,
    dim: usize,
    ties: bool,
) -> (Vec<T>, Vec<f64>) {
    let nb = len.div_ceil(BLOCK);
    let mut vals = vec![0.0f64; heads * len * dim];
    for h in 0..heads {
        let tied: Vec<f64> = (0..dim)
            .map(|_| rng.gen_range(-8i32..=8) as f64 / 8.0)
            .collect();
        for blk in 0..nb {
            let row: Vec<f64> = if ties {
                tied.clone()
            } else {
                (0..dim)
                    .map(|_| rng.gen_range(-8i32..=8) as f64 / 8.0)
                    .collect()
            };
            for r in blk * BLOCK..((blk + 1) * BLOCK).min(len) {
                vals[(h * len + r) * dim..][..dim].copy_from_slice(&row);
            }
        }
    }
    to_element(&vals)
}

fn run_topk<B: Kernels, T: Element>(
    b: &B,
    p: &AttentionParams,
    topk: &TopkParams,
    q: &[T],
    k: &[T],
) -> Option<BlockLayout> {
    let (qd, kd) = (b.upload(q).expect("upload"), b.upload(k).expect("upload"));
    ran(
        b,
        OpKind::BlockTopk,
        T::DTYPE,
        b.block_topk(p, topk, &qd, &kd),
    )
    .map(|l| l.into_host())
}

/// Assert the backend's layout equals the oracle's and never picks an invisible block.
fn check_topk<B: Kernels, T: Element>(
    b: &B,
    p: &AttentionParams,
    topk: &TopkParams,
    q: &(Vec<T>, Vec<f64>),
    k: &(Vec<T>, Vec<f64>),
) {
    let Some(got) = run_topk(b, p, topk, &q.0, &k.0) else {
        return;
    };
    let want = oracle::block_topk(p, topk, &q.1, &k.1);
    assert_eq!(got, want, "block_topk {} {p:?} {topk:?}", T::DTYPE);
    let s = &p.shape;
    for bb in 0..s.batch {
        for h in 0..s.heads_q {
            for qb in 0..s.q_blocks() {
                let row = got.row(bb, h, qb);
                let visible = visible_key_blocks(p, qb) as u32;
                assert!(row.iter().all(|&kb| kb < visible), "invisible block chosen");
            }
        }
    }
}

fn topk_property<T: Element>(b: &impl Kernels, cfg: Config) {
    let strategy = (
        params_strategy(cfg, b.info().head_dims),
        (0..3usize, 0..3usize, 0..4usize),
        any::<bool>(),
    );
    property(
        cfg,
        "block_topk",
        strategy,
        |((p, case), (keep, sink, local), ties), _| {
            let topk = TopkParams {
                keep: keep.max(usize::from(sink + local == 0)),
                sink,
                local,
            };
            let mut rng = StdRng::seed_from_u64(case);
            let s = &p.shape;
            let q = blockwise_input::<T>(&mut rng, s.batch * s.heads_q, s.len_q, s.head_dim, false);
            let k = blockwise_input::<T>(&mut rng, s.batch * s.heads_kv, s.len_k, s.head_dim, ties);
            check_topk(b, &p, &topk, &q, &k);
        },
    );
}

/// Property: `block_topk` equals the oracle's layout exactly (exact pooled scores; random
/// shapes, keep/sink/local, causal on and off, sometimes all scores tied).
pub fn block_topk_matches_oracle<B: Kernels>(b: &B, cfg: Config) {
    crate::for_each_dtype!(topk_property, b, cfg);
}

/// Fixed cases: ties go to the lower index, NaN scores rank last, causal never picks an
/// invisible block, and sink/local follow the bottom-right aligned anchor.
pub fn block_topk_ties_nan_and_causal<B: Kernels>(b: &B, _cfg: Config) {
    let (mut rng, _) = fresh_rng();
    // Lk − Lq = 150: query block 0 sees key blocks 0..=3, the last one sees all 7.
    let p =
        AttentionParams::new(fit(b, AttentionShape::gqa(1, 2, 1, 250, 400, 16))).with_causal(true);
    let s = &p.shape;
    let q = blockwise_input::<f32>(&mut rng, s.heads_q, s.len_q, s.head_dim, false);
    let tied = blockwise_input::<f32>(&mut rng, s.heads_kv, s.len_k, s.head_dim, true);
    // Every key block ties (the ragged last one too: its rows are the same constant).
    let topk = TopkParams {
        keep: 2,
        sink: 0,
        local: 0,
    };
    check_topk(b, &p, &topk, &q, &tied);
    if let Some(l) = run_topk(b, &p, &topk, &q.0, &tied.0) {
        assert_eq!(l.row(0, 0, 0), &[0, 1], "ties go to the lower index");
    }
    // A NaN in key block 1: its score is NaN and ranks after every number.
    let mut with_nan = tied.clone();
    with_nan.0[BLOCK * s.head_dim + 3] = f32::NAN;
    with_nan.1[BLOCK * s.head_dim + 3] = f64::NAN;
    check_topk(b, &p, &topk, &q, &with_nan);
    if let Some(l) = run_topk(b, &p, &topk, &q.0, &with_nan.0) {
        assert_eq!(l.row(0, 0, 0), &[0, 2], "NaN ranks last");
    }
    // sink + local only: block 0 and the blocks ending at the anchor.
    let topk = TopkParams {
        keep: 0,
        sink: 1,
        local: 2,
    };
    check_topk(b, &p, &topk, &q, &tied);
    if let Some(l) = run_topk(b, &p, &topk, &q.0, &tied.0) {
        assert_eq!(
            l.row(0, 1, 0),
            &[0, 2, 3],
            "sink 0, local 3 and 2 (anchor key 213)"
        );
        assert_eq!(
            l.row(0, 1, 3),
            &[0, 5, 6],
            "last query block: anchor is the last key block"
        );
        assert_eq!(l.max_blocks(), 3);
    }
    // Lq > Lk causal: the first query blocks see nothing and select nothing.
    let p = AttentionParams::new(fit(b, AttentionShape::mha(1, 1, 300, 70, 8))).with_causal(true);
    let d = p.shape.head_dim;
    let q = blockwise_input::<f32>(&mut rng, 1, 300, d, false);
    let k = blockwise_input::<f32>(&mut rng, 1, 70, d, false);
    let topk = TopkParams {
        keep: 1,
        sink: 1,
        local: 1,
    };
    check_topk(b, &p, &topk, &q, &k);
    if let Some(l) = run_topk(b, &p, &topk, &q.0, &k.0) {
        assert_eq!(l.row(0, 0, 0), &[] as &[u32], "no visible key block");
        assert_eq!(l.row(0, 0, 4), &[0, 1]);
    }
}

fn determinism_typed<T: Element>(b: &impl Kernels, _cfg: Config) {
    let (mut rng, _) = fresh_rng();
    let p =
        AttentionParams::new(fit(b, AttentionShape::gqa(2, 4, 2, 230, 260, 32))).with_causal(false);
    let layout = random_layout(&p, &mut rng, 0.5);
    let x = Inputs::<T>::random(&p, &mut rng, 1.0);
    let d_o = random_input::<T>(&mut rng, p.shape.o_len(), 1.0);
    let run = || {
        let (o, lse) = run_forward(b, &p, Some(&layout), &x, None, None)?;
        let (dq, dk, dv) = run_backward(b, &p, Some(&layout), &x, &o, &d_o.0, &lse)?;
        Some([bits(&o), bits::<f32>(&lse), bits(&dq), bits(&dk), bits(&dv)])
    };
    let (Some(first), Some(second)) = (run(), run()) else {
        return;
    };
    assert!(first == second, "two sparse runs differ ({})", T::DTYPE);
}

/// Two runs of the sparse forward and backward are bitwise equal.
pub fn sparse_deterministic<B: Kernels>(b: &B, cfg: Config) {
    crate::for_each_dtype!(determinism_typed, b, cfg);
}

/// The oracle's sparse backward agrees with central finite differences (a layout that skips
/// blocks). It checks the oracle, not a backend: `flashneck-cpu/tests/oracles.rs` runs it once.
pub fn oracle_sparse_backward_matches_finite_differences() {
    let (_, seed) = fresh_rng();
    let p = AttentionParams::new(AttentionShape::mha(1, 1, 70, 135, 2)).with_causal(true);
    let layout = BlockLayout::from_lists(1, 1, 2, 3, &[vec![0, 2], vec![1]]).expect("valid");
    finite_differences(&p, Some(&layout), seed);
}

/// Instantiate this module's checks for one backend.
#[macro_export]
macro_rules! sparse_tests {
    ($make:expr, $config:expr) => {
        $crate::checks!(
            sparse,
            $make,
            $config,
            [
                random_layouts_forward,
                random_layouts_backward,
                dense_equals_sparse_on_full_layout,
                epilogue_matches_oracle,
                rho_is_kept_softmax_mass,
                block_topk_matches_oracle,
                block_topk_ties_nan_and_causal,
                sparse_deterministic,
            ]
        );
    };
}
