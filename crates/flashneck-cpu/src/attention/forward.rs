//! The forward: one task per `(batch, query head, query block)`, run in parallel.
//!
//! A task keeps its 64 query rows' running maximum `m`, sum `l` and unnormalised output `acc`
//! (the online softmax) while it walks the key blocks its layout row selects; per key block it
//! computes the `64 × 64` score tile `Sᵀ = K (scale · Q)ᵀ` (key-major, so that the per-query
//! statistics are vector operations), masks it (keys ≥ Lk, causal), updates `m`, `l`, rescales
//! `acc` and adds `P V`. Memory per task is `O(64 · (Dv + 64))`.

use super::panels::{self, pad_dim, pad_len};
use super::simd::{Isa, Task};
use super::tile::{self, gemm_tn};
use flashneck_core::{AttentionParams, BLOCK, BlockLayout, Element};
use rayon::prelude::*;

/// What every forward task reads: parameters, layout and the f32 panels.
struct Shared<'a> {
    p: &'a AttentionParams,
    layout: &'a BlockLayout,
    /// `scale · Q` as transposed blocks `[B·Hq, nQB, D, 64]`.
    q_t: Vec<f32>,
    /// `K` as transposed blocks `[B·Hkv, nKB, D, 64]`.
    k_t: Vec<f32>,
    /// `V` as `[B·Hkv, Lk_p, Dv_p]`.
    v: Vec<f32>,
}

/// One query block's task and its slices of the outputs.
struct QueryBlock<'a, 's, T> {
    sh: &'s Shared<'a>,
    /// Flat `(batch, query head)` index.
    bh: usize,
    qb: usize,
    row_scale: Option<&'a [f32]>,
    residual: Option<&'a [T]>,
    /// The block's rows of `O` (`m · Dv`) and `LSE` (`m`).
    o: &'s mut [T],
    lse: &'s mut [f32],
}

/// `o` and `lse` of attention over the selected blocks of `layout` (SPEC §1, §2), with the
/// Re-ttention epilogue `o ← ρ·o + R` when `row_scale` / `residual` are given (`lse` before it).
/// Every element of `o` and `lse` is written.
#[allow(clippy::too_many_arguments)]
pub fn forward<T: Element>(
    p: &AttentionParams,
    layout: &BlockLayout,
    q: &[T],
    k: &[T],
    v: &[T],
    row_scale: Option<&[f32]>,
    residual: Option<&[T]>,
    o: &mut [T],
    lse: &mut [f32],
) {
    let s = &p.shape;
    if lse.is_empty() {
        return; // B = 0 or Lq = 0: nothing to write.
    }
    let (bhq, bhk) = (s.batch * s.heads_q, s.batch * s.heads_kv);
    let sh = Shared {
        p,
        layout,
        q_t: panels::blocks_t(q, bhq, s.len_q, s.head_dim, p.scale),
        k_t: panels::blocks_t(k, bhk, s.len_k, s.head_dim, 1.0),
        v: panels::rows(v, bhk, s.len_k, s.head_dim_v, 1.0),
    };
    let isa = Isa::detect();
    let dv = s.head_dim_v;
    o.par_chunks_mut(s.len_q * dv)
        .zip(lse.par_chunks_mut(s.len_q))
        .enumerate()
        .for_each(|(bh, (o_h, lse_h))| {
            o_h.par_chunks_mut(BLOCK * dv)
                .zip(lse_h.par_chunks_mut(BLOCK))
                .enumerate()
                .for_each(|(qb, (o, lse))| {
                    isa.run(&mut QueryBlock {
                        sh: &sh,
                        bh,
                        qb,
                        row_scale,
                        residual,
                        o,
                        lse,
                    })
                });
        });
}

impl<T: Element> Task for QueryBlock<'_, '_, T> {
    const WIDE: bool = true;

    #[inline(always)]
    fn run<const FMA: bool>(&mut self) {
        let Shared {
            p,
            layout,
            q_t,
            k_t,
            v,
        } = self.sh;
        let s = &p.shape;
        let (d, dv) = (s.head_dim, s.head_dim_v);
        let dv_p = pad_dim(dv);
        let (b, h) = (self.bh / s.heads_q, self.bh % s.heads_q);
        let bhk = b * s.heads_kv + h / s.group_size();
        let q0 = self.qb * BLOCK;
        let m = self.lse.len();
        let q_t = &q_t[(self.bh * s.q_blocks() + self.qb) * d * BLOCK..][..d * BLOCK];

        // The score tile is transposed (`[key][query]`): the softmax statistics of the 64
        // queries are then elementwise vector operations down the key rows.
        let mut scores = vec![[0.0f32; BLOCK]; BLOCK];
        let mut lo = [0usize; BLOCK];
        let mut acc = vec![0.0f32; m * dv_p];
        let mut col_max = [f32::NEG_INFINITY; BLOCK];
        let mut col_sum = [0.0f32; BLOCK];
        for &kb in layout.row(b, h, self.qb) {
            let kb = kb as usize;
            let k0 = kb * BLOCK;
            let kn = (s.len_k - k0).min(BLOCK);
            let k_t = &k_t[(bhk * s.k_blocks() + kb) * d * BLOCK..][..d * BLOCK];
            let v_rows = &v[(bhk * pad_len(s.len_k) + k0) * dv_p..][..BLOCK * dv_p];
            let st = &mut scores[..kn];
            gemm_tn::<false, FMA>(
                kn,
                BLOCK,
                d,
                k_t,
                BLOCK,
                q_t,
                BLOCK,
                st.as_flattened_mut(),
                BLOCK,
            );
            for (j, lo) in lo[..kn].iter_mut().enumerate() {
                *lo = first_query(p, q0, k0 + j);
            }
            let mut new_max = col_max;
            tile::col_max(st, &lo[..kn], &mut new_max);
            // Columns with nothing visible yet keep max −inf; subtract 0 there (all masked).
            let sub: [f32; BLOCK] = std::array::from_fn(|i| {
                if new_max[i] == f32::NEG_INFINITY {
                    0.0
                } else {
                    new_max[i]
                }
            });
            let mut sums = [0.0f32; BLOCK];
            tile::col_exp(st, &lo[..kn], &sub, &mut sums);
            for i in 0..m {
                let alpha = (col_max[i] - sub[i]).exp();
                col_sum[i] = col_sum[i] * alpha + sums[i];
                if alpha != 1.0 {
                    acc[i * dv_p..(i + 1) * dv_p]
                        .iter_mut()
                        .for_each(|x| *x *= alpha);
                }
            }
            col_max = new_max;
            gemm_tn::<true, FMA>(
                m,
                dv_p,
                kn,
                st.as_flattened(),
                BLOCK,
                v_rows,
                dv_p,
                &mut acc,
                dv_p,
            );
        }

        // Normalise, report LSE, then the Re-ttention epilogue o ← ρ·o + R.
        let row0 = self.bh * s.len_q + q0;
        for i in 0..m {
            // A sum of 0 means no visible key: o = 0, lse = −inf (a NaN sum propagates).
            let (inv, lse) = if col_sum[i] == 0.0 {
                (0.0, f32::NEG_INFINITY)
            } else {
                (1.0 / col_sum[i], col_max[i] + col_sum[i].ln())
            };
            self.lse[i] = lse;
            let rho = self.row_scale.map_or(1.0, |r| r[row0 + i]);
            let out = &mut self.o[i * dv..(i + 1) * dv];
            let acc = &acc[i * dv_p..i * dv_p + dv];
            match self.residual {
                Some(res) => {
                    let res = &res[(row0 + i) * dv..(row0 + i + 1) * dv];
                    for ((o, &a), r) in out.iter_mut().zip(acc).zip(res) {
                        *o = T::from_f32(rho * (a * inv) + r.to_f32());
                    }
                }
                None => {
                    for (o, &a) in out.iter_mut().zip(acc) {
                        *o = T::from_f32(rho * (a * inv));
                    }
                }
            }
        }
    }
}

/// The first query row of the block starting at `q0` that sees key `key` (0 when not causal),
/// clamped to `0..=64`: in the key's row of a transposed tile, columns `≥` it are visible.
#[inline(always)]
pub(super) fn first_query(p: &AttentionParams, q0: usize, key: usize) -> usize {
    if !p.causal {
        return 0;
    }
    let s = &p.shape;
    (key as i64 + s.len_q as i64 - s.len_k as i64 - q0 as i64).clamp(0, BLOCK as i64) as usize
}
