//! `block_topk` (SPEC §2): pooled block scores and the sink / local / top-k selection.
//!
//! Q is pooled per query head and query block, K per kv head and key block (f32 means over the
//! rows that exist); the pooled score of a pair is `scale · q̄ · k̄`. Each `(b, hq, qb)` then keeps
//! its first `sink` visible blocks, its `local` blocks counting back from
//! [`local_anchor_block`], and the `keep` best other visible blocks.

use flashneck_core::layout::{local_anchor_block, visible_key_blocks};
use flashneck_core::{AttentionParams, BLOCK, BlockLayout, Element, TopkParams};
use rayon::prelude::*;

/// Means of each block of 64 rows of `x [heads, len, dim]`: `[heads, ceil(len/64), dim]`.
fn pooled<T: Element>(x: &[T], heads: usize, len: usize, dim: usize) -> Vec<f32> {
    let nb = len.div_ceil(BLOCK);
    let mut out = vec![0.0f32; heads * nb * dim];
    if out.is_empty() {
        return out;
    }
    out.par_chunks_mut(dim).enumerate().for_each(|(hb, mean)| {
        let (h, b) = (hb / nb, hb % nb);
        let rows = b * BLOCK..((b + 1) * BLOCK).min(len);
        let n = rows.len() as f32;
        for r in rows {
            for (m, v) in mean.iter_mut().zip(&x[(h * len + r) * dim..][..dim]) {
                *m += v.to_f32();
            }
        }
        mean.iter_mut().for_each(|m| *m /= n);
    });
    out
}

/// Select the key blocks of one query block from its pooled scores `scores[kb]`.
fn select(p: &AttentionParams, topk: &TopkParams, qb: usize, scores: &[f32]) -> Vec<u32> {
    let nkb = scores.len();
    let visible = if p.causal {
        visible_key_blocks(p, qb)
    } else {
        nkb
    };
    let mut chosen = vec![false; nkb];
    chosen[..topk.sink.min(visible)].fill(true);
    if let Some(anchor) = local_anchor_block(p, qb) {
        let first = (anchor + 1).saturating_sub(topk.local);
        for c in chosen
            .iter_mut()
            .take((anchor + 1).min(visible))
            .skip(first)
        {
            *c = true;
        }
    }
    let mut rest: Vec<usize> = (0..visible).filter(|&kb| !chosen[kb]).collect();
    // Best first, NaN last, ties by ascending index (the sort is stable).
    rest.sort_by(|&a, &b| {
        let (sa, sb) = (scores[a], scores[b]);
        match (sa.is_nan(), sb.is_nan()) {
            (false, false) => sb.partial_cmp(&sa).expect("no NaN here"),
            (x, y) => x.cmp(&y),
        }
    });
    for &kb in rest.iter().take(topk.keep) {
        chosen[kb] = true;
    }
    (0..nkb as u32).filter(|&kb| chosen[kb as usize]).collect()
}

/// The layout `block_topk` selects (SPEC §2), with `max_blocks = topk.max_blocks(nKB)`.
pub fn block_topk<T: Element>(
    p: &AttentionParams,
    topk: &TopkParams,
    q: &[T],
    k: &[T],
) -> BlockLayout {
    let s = &p.shape;
    let d = s.head_dim;
    let (nqb, nkb) = (s.q_blocks(), s.k_blocks());
    let q_mean = pooled(q, s.batch * s.heads_q, s.len_q, d);
    let k_mean = pooled(k, s.batch * s.heads_kv, s.len_k, d);
    let lists: Vec<Vec<u32>> = (0..s.batch * s.heads_q * nqb)
        .into_par_iter()
        .map(|row| {
            let (bh, qb) = (row / nqb, row % nqb);
            let bhk = bh / s.heads_q * s.heads_kv + bh % s.heads_q / s.group_size();
            let qm = &q_mean[(bh * nqb + qb) * d..][..d];
            let scores: Vec<f32> = (0..nkb)
                .map(|kb| {
                    let km = &k_mean[(bhk * nkb + kb) * d..][..d];
                    p.scale * qm.iter().zip(km).map(|(a, b)| a * b).sum::<f32>()
                })
                .collect();
            select(p, topk, qb, &scores)
        })
        .collect();
    let max_blocks = topk.max_blocks(nkb);
    let mut counts = Vec::with_capacity(lists.len());
    let mut indices = vec![0u32; lists.len() * max_blocks];
    for (r, l) in lists.iter().enumerate() {
        counts.push(l.len() as u32);
        indices[r * max_blocks..r * max_blocks + l.len()].copy_from_slice(l);
    }
    BlockLayout::new(s.batch, s.heads_q, nqb, nkb, max_blocks, counts, indices)
        .expect("selected lists are ascending, in range and at most sink + local + keep long")
}
