//! f64 oracle of dense and block-sparse attention (SPEC §1, §2) and of `block_topk`.
//!
//! Written straight from SPEC's formulas, one query row at a time, with the row's whole score
//! vector materialised. It shares nothing with the fast path but core's parameter and layout
//! helpers. Layout `None` means dense attention (every key block selected).

use flashneck_core::{AttentionParams, BLOCK, BlockLayout, TopkParams};

/// Whether query row `i` of head `(b, h)` attends to key `j`: the element mask of SPEC §1, and
/// the key's block is selected by `layout` (when given).
fn attends(
    p: &AttentionParams,
    layout: Option<&BlockLayout>,
    b: usize,
    h: usize,
    i: usize,
    j: usize,
) -> bool {
    sees(p, i, j) && layout.is_none_or(|l| l.row(b, h, i / BLOCK).contains(&((j / BLOCK) as u32)))
}

/// SPEC §1's element mask, written here again on purpose (the oracle shares no masking code
/// with the backends): key `j` exists, and under `causal` (bottom-right aligned) `j <= i + Lk − Lq`.
fn sees(p: &AttentionParams, i: usize, j: usize) -> bool {
    let (lq, lk) = (p.shape.len_q as i64, p.shape.len_k as i64);
    (j as i64) < lk && (!p.causal || j as i64 <= i as i64 + lk - lq)
}

/// Key blocks holding at least one key some row of query block `qb` sees, by enumeration.
fn visible_blocks(p: &AttentionParams, qb: usize) -> Vec<bool> {
    let s = &p.shape;
    let rows = qb * BLOCK..((qb + 1) * BLOCK).min(s.len_q);
    (0..s.k_blocks())
        .map(|kb| {
            let keys = kb * BLOCK..((kb + 1) * BLOCK).min(s.len_k);
            rows.clone().any(|i| keys.clone().any(|j| sees(p, i, j)))
        })
        .collect()
}

/// SPEC §2's anchor of the `local` window: the block holding key
/// `min(Lk − 1, (qb + 1)·64 − 1 + Lk − Lq)`; none when that key index is negative.
fn anchor_block(p: &AttentionParams, qb: usize) -> Option<usize> {
    let (lq, lk) = (p.shape.len_q as i64, p.shape.len_k as i64);
    let key = (lk - 1).min((qb as i64 + 1) * BLOCK as i64 - 1 + lk - lq);
    (key >= 0).then_some(key as usize / BLOCK)
}

/// Scores `s_j = scale · q_i · k_j` of one query row against every key it attends to
/// (`None` for the others).
fn row_scores(
    p: &AttentionParams,
    layout: Option<&BlockLayout>,
    q: &[f64],
    k: &[f64],
    b: usize,
    h: usize,
    i: usize,
) -> Vec<Option<f64>> {
    let s = &p.shape;
    let d = s.head_dim;
    let hk = h / s.group_size();
    let qi = &q[((b * s.heads_q + h) * s.len_q + i) * d..][..d];
    (0..s.len_k)
        .map(|j| {
            attends(p, layout, b, h, i, j).then(|| {
                let kj = &k[((b * s.heads_kv + hk) * s.len_k + j) * d..][..d];
                p.scale as f64 * qi.iter().zip(kj).map(|(x, y)| x * y).sum::<f64>()
            })
        })
        .collect()
}

/// `ln Σ exp(s_j)` over the present scores (`−inf` when there are none).
fn log_sum_exp(scores: &[Option<f64>]) -> f64 {
    let max = scores
        .iter()
        .flatten()
        .fold(f64::NEG_INFINITY, |m, &s| m.max(s));
    if max == f64::NEG_INFINITY {
        return f64::NEG_INFINITY;
    }
    max + scores
        .iter()
        .flatten()
        .map(|s| (s - max).exp())
        .sum::<f64>()
        .ln()
}

/// Forward: `(o [B, Hq, Lq, Dv], lse [B, Hq, Lq])`, with the Re-ttention epilogue
/// `o ← ρ · o + R` applied when `row_scale` / `residual` are given (`lse` before it).
pub fn attention_forward(
    p: &AttentionParams,
    layout: Option<&BlockLayout>,
    q: &[f64],
    k: &[f64],
    v: &[f64],
    row_scale: Option<&[f64]>,
    residual: Option<&[f64]>,
) -> (Vec<f64>, Vec<f64>) {
    let s = &p.shape;
    let dv = s.head_dim_v;
    let mut o = vec![0.0; s.o_len()];
    let mut lse = vec![f64::NEG_INFINITY; s.lse_len()];
    for b in 0..s.batch {
        for h in 0..s.heads_q {
            let hk = h / s.group_size();
            for i in 0..s.len_q {
                let row = (b * s.heads_q + h) * s.len_q + i;
                let scores = row_scores(p, layout, q, k, b, h, i);
                let l = log_sum_exp(&scores);
                lse[row] = l;
                let oi = &mut o[row * dv..][..dv];
                for (j, sj) in scores.iter().enumerate() {
                    if let Some(sj) = sj {
                        let pj = (sj - l).exp();
                        let vj = &v[((b * s.heads_kv + hk) * s.len_k + j) * dv..][..dv];
                        for (x, y) in oi.iter_mut().zip(vj) {
                            *x += pj * y;
                        }
                    }
                }
                let rho = row_scale.map_or(1.0, |r| r[row]);
                for (c, x) in oi.iter_mut().enumerate() {
                    *x = rho * *x + residual.map_or(0.0, |r| r[row * dv + c]);
                }
            }
        }
    }
    (o, lse)
}

/// Backward from SPEC §1: `Δ_i = dO_i · O_i`, `P = exp(S − LSE)`, `dV = Pᵀ dO`, `dP = dO Vᵀ`,
/// `dS = P ⊙ (dP − Δ)`, `dQ = scale · dS K`, `dK = scale · dSᵀ Q` (`dK`, `dV` summed over each
/// GQA group). `o` is the output before any epilogue. Returns `(dq, dk, dv)`.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    p: &AttentionParams,
    layout: Option<&BlockLayout>,
    q: &[f64],
    k: &[f64],
    v: &[f64],
    o: &[f64],
    d_o: &[f64],
    lse: &[f64],
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let s = &p.shape;
    let (d, dvd) = (s.head_dim, s.head_dim_v);
    let scale = p.scale as f64;
    let mut dq = vec![0.0; s.q_len()];
    let mut dk = vec![0.0; s.k_len()];
    let mut dv = vec![0.0; s.v_len()];
    for b in 0..s.batch {
        for h in 0..s.heads_q {
            let hk = h / s.group_size();
            for i in 0..s.len_q {
                let row = (b * s.heads_q + h) * s.len_q + i;
                if lse[row] == f64::NEG_INFINITY {
                    continue; // P = 0 on this row: it contributes nothing.
                }
                let doi = &d_o[row * dvd..][..dvd];
                let delta: f64 = doi
                    .iter()
                    .zip(&o[row * dvd..][..dvd])
                    .map(|(x, y)| x * y)
                    .sum();
                let scores = row_scores(p, layout, q, k, b, h, i);
                for (j, sj) in scores.iter().enumerate() {
                    let Some(sj) = sj else { continue };
                    let pij = (sj - lse[row]).exp();
                    let krow = (b * s.heads_kv + hk) * s.len_k + j;
                    let vj = &v[krow * dvd..][..dvd];
                    let dpij: f64 = doi.iter().zip(vj).map(|(x, y)| x * y).sum();
                    let dsij = pij * (dpij - delta);
                    for c in 0..dvd {
                        dv[krow * dvd + c] += pij * doi[c];
                    }
                    for c in 0..d {
                        dq[row * d + c] += scale * dsij * k[krow * d + c];
                        dk[krow * d + c] += scale * dsij * q[row * d + c];
                    }
                }
            }
        }
    }
    (dq, dk, dv)
}

/// Mean of the rows `start..end` of a row-major `[rows, d]` matrix.
fn mean_rows(x: &[f64], d: usize, start: usize, end: usize) -> Vec<f64> {
    let mut m = vec![0.0; d];
    for r in start..end {
        for (a, y) in m.iter_mut().zip(&x[r * d..][..d]) {
            *a += y;
        }
    }
    m.iter().map(|a| a / (end - start) as f64).collect()
}

/// `block_topk` from SPEC §2: for every `(b, hq, qb)`, the first `sink` visible key blocks, the
/// `local` blocks counting back from the local anchor, and the `keep` best-scoring other
/// visible blocks (ties to the lower index, NaN last), sorted ascending.
pub fn block_topk(p: &AttentionParams, topk: &TopkParams, q: &[f64], k: &[f64]) -> BlockLayout {
    let s = &p.shape;
    let d = s.head_dim;
    let (nqb, nkb) = (s.q_blocks(), s.k_blocks());
    let mut lists = Vec::with_capacity(s.batch * s.heads_q * nqb);
    for b in 0..s.batch {
        for h in 0..s.heads_q {
            let hk = h / s.group_size();
            let qh = &q[(b * s.heads_q + h) * s.len_q * d..][..s.len_q * d];
            let kh = &k[(b * s.heads_kv + hk) * s.len_k * d..][..s.len_k * d];
            let k_means: Vec<Vec<f64>> = (0..nkb)
                .map(|kb| mean_rows(kh, d, kb * BLOCK, ((kb + 1) * BLOCK).min(s.len_k)))
                .collect();
            for qb in 0..nqb {
                let q_mean = mean_rows(qh, d, qb * BLOCK, ((qb + 1) * BLOCK).min(s.len_q));
                // Blocks holding at least one key this query block may see.
                let visible = visible_blocks(p, qb);
                let mut chosen = vec![false; nkb];
                let first_visible = (0..nkb).filter(|&kb| visible[kb]).take(topk.sink);
                for kb in first_visible {
                    chosen[kb] = true;
                }
                if let Some(anchor) = anchor_block(p, qb) {
                    for kb in (0..=anchor).rev().take(topk.local) {
                        chosen[kb] |= visible[kb];
                    }
                }
                let mut others: Vec<(f64, usize)> = (0..nkb)
                    .filter(|&kb| visible[kb] && !chosen[kb])
                    .map(|kb| {
                        let dot: f64 = q_mean.iter().zip(&k_means[kb]).map(|(x, y)| x * y).sum();
                        (p.scale as f64 * dot, kb)
                    })
                    .collect();
                // Best first; NaN after every number; equal scores by ascending index.
                others.sort_by(|a, b| match (a.0.is_nan(), b.0.is_nan()) {
                    (false, false) => b.0.partial_cmp(&a.0).unwrap().then(a.1.cmp(&b.1)),
                    (true, true) => a.1.cmp(&b.1),
                    (x, y) => x.cmp(&y),
                });
                for &(_, kb) in others.iter().take(topk.keep) {
                    chosen[kb] = true;
                }
                lists.push(
                    (0..nkb)
                        .filter(|&kb| chosen[kb])
                        .map(|kb| kb as u32)
                        .collect::<Vec<u32>>(),
                );
            }
        }
    }
    let max_blocks = topk.max_blocks(nkb);
    let mut counts = Vec::with_capacity(lists.len());
    let mut indices = vec![0u32; lists.len() * max_blocks];
    for (r, l) in lists.iter().enumerate() {
        counts.push(l.len() as u32);
        indices[r * max_blocks..r * max_blocks + l.len()].copy_from_slice(l);
    }
    BlockLayout::new(s.batch, s.heads_q, nqb, nkb, max_blocks, counts, indices)
        .expect("oracle block_topk builds a valid layout")
}
