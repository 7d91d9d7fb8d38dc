//! The backward, in two passes that each own their outputs (no atomics, deterministic):
//!
//! 1. `dK`, `dV`: one task per `(batch, kv head, key block)`. It walks the query heads of its
//!    GQA group in order and, for each, the query blocks that selected this key block (the
//!    transposed layout). Per tile (query-major) it recomputes `P = exp((scale·Q) Kᵀ − LSE)` from
//!    the saved LSE, `dP = dO Vᵀ`, `dS = P ⊙ (dP − Δ)`, and accumulates `dV += Pᵀ dO`,
//!    `dK += dSᵀ (scale·Q)`.
//! 2. `dQ`: one task per `(batch, query head, query block)` over its forward layout row, with
//!    key-major tiles `Pᵀ`, `dPᵀ`, `dSᵀ`, and `dQ += dS K`, times `scale` at the end.
//!
//! Each product reads its left operand transposed ([`gemm_tn`]), which is why the two passes
//! use opposite tile orientations. Both passes recompute the score tiles (no `L × L` matrix is
//! ever stored). `Δ = rowsum(dO ⊙ O)` is computed once, before the passes.

use super::forward::first_query;
use super::panels::{self, pad_dim, pad_len};
use super::simd::{Isa, Task};
use super::tile::{gemm_tn, grad_row, grad_row_t};
use flashneck_core::{AttentionParams, BLOCK, BlockLayout, Element};
use rayon::prelude::*;

/// What every backward task reads.
struct Shared<'a> {
    p: &'a AttentionParams,
    layout: &'a BlockLayout,
    layout_t: &'a BlockLayout,
    /// `scale · Q` as rows `[B·Hq, Lq_p, D_p]` and as transposed blocks `[B·Hq, nQB, D, 64]`.
    q: Vec<f32>,
    q_t: Vec<f32>,
    /// `K` as rows `[B·Hkv, Lk_p, D_p]` and transposed blocks `[B·Hkv, nKB, D, 64]`.
    k: Vec<f32>,
    k_t: Vec<f32>,
    /// `V` as transposed blocks `[B·Hkv, nKB, Dv, 64]`.
    v_t: Vec<f32>,
    /// `dO` as rows `[B·Hq, Lq_p, Dv_p]` and transposed blocks `[B·Hq, nQB, Dv, 64]`.
    d_o: Vec<f32>,
    d_o_t: Vec<f32>,
    /// `LSE` per row `[B·Hq, Lq_p]`, with `−inf` (empty rows) and padding as `+inf` so that
    /// `exp(s − lse) = 0` there.
    lse: Vec<f32>,
    /// `Δ = rowsum(dO ⊙ O)` per row `[B·Hq, Lq_p]`.
    delta: Vec<f32>,
}

/// `dq`, `dk`, `dv` of attention over `layout` (`layout_t` is its transpose), from the forward's
/// `o` (before any epilogue) and `lse` (SPEC §1). Every element of the outputs is written.
#[allow(clippy::too_many_arguments)]
pub fn backward<T: Element>(
    p: &AttentionParams,
    layout: &BlockLayout,
    layout_t: &BlockLayout,
    q: &[T],
    k: &[T],
    v: &[T],
    o: &[T],
    d_o: &[T],
    lse: &[f32],
    dq: &mut [T],
    dk: &mut [T],
    dv: &mut [T],
) {
    let s = &p.shape;
    let (bhq, bhk) = (s.batch * s.heads_q, s.batch * s.heads_kv);
    let (d, dv_dim) = (s.head_dim, s.head_dim_v);
    let (lq, lk) = (s.len_q, s.len_k);
    let (lse, delta) = row_stats(bhq, lq, dv_dim, o, d_o, lse);
    let sh = Shared {
        p,
        layout,
        layout_t,
        q: panels::rows(q, bhq, lq, d, p.scale),
        q_t: panels::blocks_t(q, bhq, lq, d, p.scale),
        k: panels::rows(k, bhk, lk, d, 1.0),
        k_t: panels::blocks_t(k, bhk, lk, d, 1.0),
        v_t: panels::blocks_t(v, bhk, lk, dv_dim, 1.0),
        d_o: panels::rows(d_o, bhq, lq, dv_dim, 1.0),
        d_o_t: panels::blocks_t(d_o, bhq, lq, dv_dim, 1.0),
        lse,
        delta,
    };
    let isa = Isa::detect();
    if !dk.is_empty() {
        dk.par_chunks_mut(lk * d)
            .zip(dv.par_chunks_mut(lk * dv_dim))
            .enumerate()
            .for_each(|(bhk, (dk_h, dv_h))| {
                dk_h.par_chunks_mut(BLOCK * d)
                    .zip(dv_h.par_chunks_mut(BLOCK * dv_dim))
                    .enumerate()
                    .for_each(|(kb, (dk, dv))| {
                        isa.run(&mut KeyBlock {
                            sh: &sh,
                            bhk,
                            kb,
                            dk,
                            dv,
                        })
                    });
            });
    }
    if !dq.is_empty() {
        dq.par_chunks_mut(lq * d)
            .enumerate()
            .for_each(|(bh, dq_h)| {
                dq_h.par_chunks_mut(BLOCK * d)
                    .enumerate()
                    .for_each(|(qb, dq)| {
                        isa.run(&mut QueryBlock {
                            sh: &sh,
                            bh,
                            qb,
                            dq,
                        })
                    });
            });
    }
}

/// Per-row `LSE` (empty rows and padding as `+inf`) and `Δ = rowsum(dO ⊙ O)` in f32, as
/// `[B·Hq, Lq_p]` each.
fn row_stats<T: Element>(
    bhq: usize,
    lq: usize,
    dv: usize,
    o: &[T],
    d_o: &[T],
    lse: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let lq_p = pad_len(lq);
    let mut lse_p = vec![f32::INFINITY; bhq * lq_p];
    let mut delta = vec![0.0f32; bhq * lq_p];
    if lq == 0 {
        return (lse_p, delta);
    }
    lse_p
        .par_chunks_mut(lq_p)
        .zip(delta.par_chunks_mut(lq_p))
        .enumerate()
        .for_each(|(bh, (lse_h, delta_h))| {
            for i in 0..lq {
                let row = bh * lq + i;
                if lse[row] != f32::NEG_INFINITY {
                    lse_h[i] = lse[row];
                }
                let o_row = &o[row * dv..(row + 1) * dv];
                let d_row = &d_o[row * dv..(row + 1) * dv];
                delta_h[i] = o_row
                    .iter()
                    .zip(d_row)
                    .map(|(a, b)| a.to_f32() * b.to_f32())
                    .sum();
            }
        });
    (lse_p, delta)
}

/// Pass 1: `dK`, `dV` of one key block of one kv head.
struct KeyBlock<'a, 's, T> {
    sh: &'s Shared<'a>,
    /// Flat `(batch, kv head)` index.
    bhk: usize,
    kb: usize,
    /// The block's rows of `dK` (`kn · D`) and `dV` (`kn · Dv`).
    dk: &'s mut [T],
    dv: &'s mut [T],
}

impl<T: Element> Task for KeyBlock<'_, '_, T> {
    const WIDE: bool = true;

    #[inline(always)]
    fn run<const FMA: bool>(&mut self) {
        let sh = self.sh;
        let p = sh.p;
        let s = &p.shape;
        let (d, dv) = (s.head_dim, s.head_dim_v);
        let (d_p, dv_p) = (pad_dim(d), pad_dim(dv));
        let (lq_p, nqb) = (pad_len(s.len_q), s.q_blocks());
        let (b, hk) = (self.bhk / s.heads_kv, self.bhk % s.heads_kv);
        let k0 = self.kb * BLOCK;
        let kn = self.dk.len() / d;
        let k_t = &sh.k_t[(self.bhk * s.k_blocks() + self.kb) * d * BLOCK..][..d * BLOCK];
        let v_t = &sh.v_t[(self.bhk * s.k_blocks() + self.kb) * dv * BLOCK..][..dv * BLOCK];

        let mut dk_acc = vec![0.0f32; kn * d_p];
        let mut dv_acc = vec![0.0f32; kn * dv_p];
        // Query-major tiles `[query][key]`: P and dS, read transposed by the dK, dV products.
        let mut p_tile = vec![[0.0f32; BLOCK]; BLOCK];
        let mut ds = vec![[0.0f32; BLOCK]; BLOCK];
        let group = s.group_size();
        for h in hk * group..(hk + 1) * group {
            let bh = b * s.heads_q + h;
            for &qb in sh.layout_t.row(b, h, self.kb) {
                let qb = qb as usize;
                let q0 = qb * BLOCK;
                let m = (s.len_q - q0).min(BLOCK);
                let q_t = &sh.q_t[(bh * nqb + qb) * d * BLOCK..][..d * BLOCK];
                let d_o_t = &sh.d_o_t[(bh * nqb + qb) * dv * BLOCK..][..dv * BLOCK];
                let q_rows = &sh.q[(bh * lq_p + q0) * d_p..][..BLOCK * d_p];
                let d_o_rows = &sh.d_o[(bh * lq_p + q0) * dv_p..][..BLOCK * dv_p];
                let lse = &sh.lse[bh * lq_p + q0..][..BLOCK];
                let delta = &sh.delta[bh * lq_p + q0..][..BLOCK];

                let (pt, dst) = (&mut p_tile[..m], &mut ds[..m]);
                let (pf, dsf) = (pt.as_flattened_mut(), dst.as_flattened_mut());
                gemm_tn::<false, FMA>(m, BLOCK, d, q_t, BLOCK, k_t, BLOCK, pf, BLOCK);
                gemm_tn::<false, FMA>(m, BLOCK, dv, d_o_t, BLOCK, v_t, BLOCK, dsf, BLOCK);
                for (i, (pr, dr)) in pt.iter_mut().zip(dst.iter_mut()).enumerate() {
                    let lim = p.visible_keys(q0 + i).saturating_sub(k0).min(kn);
                    grad_row(pr, dr, lse[i], delta[i], 0, lim);
                }
                let (pf, dsf) = (pt.as_flattened(), dst.as_flattened());
                gemm_tn::<true, FMA>(kn, dv_p, m, pf, BLOCK, d_o_rows, dv_p, &mut dv_acc, dv_p);
                gemm_tn::<true, FMA>(kn, d_p, m, dsf, BLOCK, q_rows, d_p, &mut dk_acc, d_p);
            }
        }
        store_rows(self.dk, &dk_acc, d, d_p, 1.0);
        store_rows(self.dv, &dv_acc, dv, dv_p, 1.0);
    }
}

/// Pass 2: `dQ` of one query block.
struct QueryBlock<'a, 's, T> {
    sh: &'s Shared<'a>,
    /// Flat `(batch, query head)` index.
    bh: usize,
    qb: usize,
    /// The block's rows of `dQ` (`m · D`).
    dq: &'s mut [T],
}

impl<T: Element> Task for QueryBlock<'_, '_, T> {
    const WIDE: bool = true;

    #[inline(always)]
    fn run<const FMA: bool>(&mut self) {
        let sh = self.sh;
        let p = sh.p;
        let s = &p.shape;
        let (d, dv) = (s.head_dim, s.head_dim_v);
        let d_p = pad_dim(d);
        let (lq_p, lk_p, nkb) = (pad_len(s.len_q), pad_len(s.len_k), s.k_blocks());
        let (b, h) = (self.bh / s.heads_q, self.bh % s.heads_q);
        let bhk = b * s.heads_kv + h / s.group_size();
        let q0 = self.qb * BLOCK;
        let m = self.dq.len() / d;
        let q_t = &sh.q_t[(self.bh * s.q_blocks() + self.qb) * d * BLOCK..][..d * BLOCK];
        let d_o_t = &sh.d_o_t[(self.bh * s.q_blocks() + self.qb) * dv * BLOCK..][..dv * BLOCK];
        let lse: &[f32; BLOCK] = sh.lse[self.bh * lq_p + q0..][..BLOCK]
            .try_into()
            .expect("a block of rows");
        let delta: &[f32; BLOCK] = sh.delta[self.bh * lq_p + q0..][..BLOCK]
            .try_into()
            .expect("a block of rows");

        let mut dq_acc = vec![0.0f32; m * d_p];
        // Key-major tiles `[key][query]`: Pᵀ and dSᵀ, read transposed by the dQ product.
        let mut p_t = vec![[0.0f32; BLOCK]; BLOCK];
        let mut ds_t = vec![[0.0f32; BLOCK]; BLOCK];
        for &kb in sh.layout.row(b, h, self.qb) {
            let kb = kb as usize;
            let k0 = kb * BLOCK;
            let kn = (s.len_k - k0).min(BLOCK);
            let k_t = &sh.k_t[(bhk * nkb + kb) * d * BLOCK..][..d * BLOCK];
            let v_t = &sh.v_t[(bhk * nkb + kb) * dv * BLOCK..][..dv * BLOCK];
            let k_rows = &sh.k[(bhk * lk_p + k0) * d_p..][..BLOCK * d_p];

            let (pt, dst) = (&mut p_t[..kn], &mut ds_t[..kn]);
            let (pf, dsf) = (pt.as_flattened_mut(), dst.as_flattened_mut());
            gemm_tn::<false, FMA>(kn, BLOCK, d, k_t, BLOCK, q_t, BLOCK, pf, BLOCK);
            gemm_tn::<false, FMA>(kn, BLOCK, dv, v_t, BLOCK, d_o_t, BLOCK, dsf, BLOCK);
            for (j, (pr, dr)) in pt.iter_mut().zip(dst.iter_mut()).enumerate() {
                let lo = first_query(p, q0, k0 + j).min(m);
                grad_row_t(pr, dr, lse, delta, lo, m);
            }
            let dsf = dst.as_flattened();
            gemm_tn::<true, FMA>(m, d_p, kn, dsf, BLOCK, k_rows, d_p, &mut dq_acc, d_p);
        }
        store_rows(self.dq, &dq_acc, d, d_p, p.scale);
    }
}

/// `out[r, c] = mul · acc[r, c]` for the first `dim` of `dim_p` columns of each row.
#[inline(always)]
fn store_rows<T: Element>(out: &mut [T], acc: &[f32], dim: usize, dim_p: usize, mul: f32) {
    for (o_row, a_row) in out.chunks_exact_mut(dim).zip(acc.chunks_exact(dim_p)) {
        for (o, &a) in o_row.iter_mut().zip(a_row) {
            *o = T::from_f32(mul * a);
        }
    }
}
