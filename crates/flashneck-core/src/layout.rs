//! Block layouts for block-sparse attention (SPEC §2).
//!
//! A [`BlockLayout`] says, for each `(batch, head, row block)`, which column blocks take part:
//! `counts [batch, heads, rows]` and `indices [batch, heads, rows, max_blocks]`, each list
//! strictly ascending and in range. For attention the rows are query blocks and the columns key
//! blocks; the transposed layout (rows = key blocks) drives the backward's `dK`/`dV` pass.

use crate::error::{Error, Result, check_len};
use crate::params::AttentionParams;

/// Block edge in rows and keys (SPEC §2).
pub const BLOCK: usize = 64;

/// A validated block-sparse layout. Construct with [`BlockLayout::new`], [`BlockLayout::dense`]
/// or [`BlockLayout::causal`]; every constructor checks the invariants, so a value is valid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockLayout {
    batch: usize,
    heads: usize,
    rows: usize,
    cols: usize,
    max_blocks: usize,
    counts: Vec<u32>,
    indices: Vec<u32>,
}

impl BlockLayout {
    /// Build and validate a layout. Slots of `indices` past a row's count are ignored (but must
    /// exist: `indices.len() == batch * heads * rows * max_blocks`).
    pub fn new(
        batch: usize,
        heads: usize,
        rows: usize,
        cols: usize,
        max_blocks: usize,
        counts: Vec<u32>,
        indices: Vec<u32>,
    ) -> Result<Self> {
        let too_big = || Error::bad("rows", "a layout whose size fits in usize", rows);
        let n_rows = batch
            .checked_mul(heads)
            .and_then(|n| n.checked_mul(rows))
            .ok_or_else(too_big)?;
        check_len("counts", counts.len(), n_rows)?;
        let n_slots = n_rows.checked_mul(max_blocks).ok_or_else(too_big)?;
        check_len("indices", indices.len(), n_slots)?;
        if max_blocks > cols {
            return Err(Error::bad(
                "max_blocks",
                format!("<= number of column blocks ({cols})"),
                max_blocks,
            ));
        }
        for (r, &n) in counts.iter().enumerate() {
            if n as usize > max_blocks {
                return Err(Error::bad(
                    "counts",
                    format!("every count <= max_blocks ({max_blocks})"),
                    format!("{n} at row {r}"),
                ));
            }
            let list = &indices[r * max_blocks..r * max_blocks + n as usize];
            for (i, &c) in list.iter().enumerate() {
                if c as usize >= cols {
                    return Err(Error::bad(
                        "indices",
                        format!("every index < {cols}"),
                        format!("{c} at row {r}"),
                    ));
                }
                if i > 0 && list[i - 1] >= c {
                    return Err(Error::bad(
                        "indices",
                        "strictly ascending indices (sorted, no duplicates)",
                        format!("{} then {c} at row {r}", list[i - 1]),
                    ));
                }
            }
        }
        Ok(BlockLayout {
            batch,
            heads,
            rows,
            cols,
            max_blocks,
            counts,
            indices,
        })
    }

    /// Build a layout from one ascending list per row (`batch * heads * rows` lists).
    pub fn from_lists(
        batch: usize,
        heads: usize,
        rows: usize,
        cols: usize,
        lists: &[Vec<u32>],
    ) -> Result<Self> {
        check_len("lists", lists.len(), batch * heads * rows)?;
        let max_blocks = lists.iter().map(Vec::len).max().unwrap_or(0);
        let mut counts = Vec::with_capacity(lists.len());
        let mut indices = vec![0u32; lists.len() * max_blocks];
        for (r, l) in lists.iter().enumerate() {
            counts.push(l.len() as u32);
            indices[r * max_blocks..r * max_blocks + l.len()].copy_from_slice(l);
        }
        Self::new(batch, heads, rows, cols, max_blocks, counts, indices)
    }

    /// Every key block for every query block: sparse attention on it equals dense attention.
    pub fn dense(p: &AttentionParams) -> Self {
        Self::for_visible_blocks(&AttentionParams {
            causal: false,
            ..*p
        })
    }

    /// Every key block holding at least one key visible to the query block under `p`'s mask
    /// (all blocks when `p` is not causal).
    pub fn causal(p: &AttentionParams) -> Self {
        Self::for_visible_blocks(p)
    }

    fn for_visible_blocks(p: &AttentionParams) -> Self {
        let s = &p.shape;
        let (rows, cols) = (s.q_blocks(), s.k_blocks());
        let per_head: Vec<Vec<u32>> = (0..rows)
            .map(|qb| (0..visible_key_blocks(p, qb) as u32).collect())
            .collect();
        let lists: Vec<Vec<u32>> = (0..s.batch * s.heads_q)
            .flat_map(|_| per_head.iter().cloned())
            .collect();
        Self::from_lists(s.batch, s.heads_q, rows, cols, &lists)
            .expect("visible-block lists are ascending and in range")
    }

    pub fn batch(&self) -> usize {
        self.batch
    }
    pub fn heads(&self) -> usize {
        self.heads
    }
    /// Row blocks per head (query blocks, or key blocks for a transposed layout).
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Column blocks (key blocks, or query blocks for a transposed layout).
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Capacity of each row's index list.
    pub fn max_blocks(&self) -> usize {
        self.max_blocks
    }
    /// `counts [batch, heads, rows]`.
    pub fn counts(&self) -> &[u32] {
        &self.counts
    }
    /// `indices [batch, heads, rows, max_blocks]`.
    pub fn indices(&self) -> &[u32] {
        &self.indices
    }

    /// The selected column blocks of row block `row` of head `(b, h)`.
    pub fn row(&self, b: usize, h: usize, row: usize) -> &[u32] {
        let r = (b * self.heads + h) * self.rows + row;
        let start = r * self.max_blocks;
        &self.indices[start..start + self.counts[r] as usize]
    }

    /// Total number of selected blocks (for FLOP counts and densities).
    pub fn selected(&self) -> usize {
        self.counts.iter().map(|&c| c as usize).sum()
    }

    /// Check that this layout fits attention with parameters `p` (as a forward layout).
    pub fn check_forward(&self, p: &AttentionParams) -> Result<()> {
        let s = &p.shape;
        self.check_dims("layout", s.batch, s.heads_q, s.q_blocks(), s.k_blocks())
    }

    /// Check that this layout is a transposed layout for attention with parameters `p`.
    pub fn check_transposed(&self, p: &AttentionParams) -> Result<()> {
        let s = &p.shape;
        self.check_dims("layout_t", s.batch, s.heads_q, s.k_blocks(), s.q_blocks())
    }

    fn check_dims(
        &self,
        arg: &'static str,
        batch: usize,
        heads: usize,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        let want = (batch, heads, rows, cols);
        let got = (self.batch, self.heads, self.rows, self.cols);
        if want == got {
            Ok(())
        } else {
            Err(Error::shape(
                arg,
                format!("[batch, heads, row blocks, col blocks] = {want:?}"),
                format!("{got:?}"),
            ))
        }
    }

    /// The transposed layout: for each column block, the row blocks that selected it (ascending).
    pub fn transpose(&self) -> BlockLayout {
        let mut lists = vec![Vec::new(); self.batch * self.heads * self.cols];
        for bh in 0..self.batch * self.heads {
            for r in 0..self.rows {
                for &c in self.row(bh / self.heads, bh % self.heads, r) {
                    lists[bh * self.cols + c as usize].push(r as u32);
                }
            }
        }
        Self::from_lists(self.batch, self.heads, self.cols, self.rows, &lists)
            .expect("transposed lists are ascending and in range")
    }
}

/// How many key blocks query block `qb` can see: blocks `0..n` hold at least one visible key.
pub fn visible_key_blocks(p: &AttentionParams, qb: usize) -> usize {
    let s = &p.shape;
    if s.len_q == 0 || qb * BLOCK >= s.len_q {
        return 0;
    }
    let last_row = (qb * BLOCK + BLOCK).min(s.len_q) - 1;
    p.visible_keys(last_row).div_ceil(BLOCK)
}

/// The key block `block_topk`'s `local` window counts back from: the block holding key
/// `min(Lk − 1, (qb + 1)·64 − 1 + Lk − Lq)`, or `None` when that key index is negative.
pub fn local_anchor_block(p: &AttentionParams, qb: usize) -> Option<usize> {
    let s = &p.shape;
    if s.len_k == 0 {
        return None;
    }
    let key = ((qb as i64 + 1) * BLOCK as i64 - 1 + s.len_k as i64 - s.len_q as i64)
        .min(s.len_k as i64 - 1);
    (key >= 0).then_some(key as usize / BLOCK)
}

/// Re-ttention's row scale `rho = exp(lse_sparse − lse_full)`: the share of softmax mass the
/// sparse set keeps. A row that keeps nothing (`lse_sparse = −inf`) gets `0`.
pub fn rho(lse_sparse: &[f32], lse_full: &[f32]) -> Result<Vec<f32>> {
    check_len("lse_full", lse_full.len(), lse_sparse.len())?;
    Ok(lse_sparse
        .iter()
        .zip(lse_full)
        .map(|(&s, &f)| {
            if s == f32::NEG_INFINITY {
                0.0
            } else {
                (s - f).exp()
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::AttentionShape;

    fn params(lq: usize, lk: usize, causal: bool) -> AttentionParams {
        AttentionParams::new(AttentionShape::mha(2, 3, lq, lk, 16)).with_causal(causal)
    }

    #[test]
    fn invalid_layouts_are_errors() {
        let bad = |counts: Vec<u32>, idx: Vec<u32>| BlockLayout::new(1, 1, 1, 4, 3, counts, idx);
        assert!(bad(vec![2], vec![1, 0, 0]).is_err(), "unsorted");
        assert!(bad(vec![2], vec![1, 1, 0]).is_err(), "duplicate");
        assert!(bad(vec![1], vec![4, 0, 0]).is_err(), "out of range");
        assert!(bad(vec![4], vec![0, 1, 2]).is_err(), "count > max_blocks");
        assert!(bad(vec![1], vec![0, 0]).is_err(), "indices length");
        assert!(bad(vec![3], vec![0, 2, 3]).is_ok());
        // Slots past the count are ignored.
        assert!(bad(vec![1], vec![3, 9, 9]).is_ok());
    }

    #[test]
    fn dense_and_causal_layouts() {
        let p = params(130, 200, false);
        let d = BlockLayout::dense(&p);
        assert_eq!((d.rows(), d.cols(), d.max_blocks()), (3, 4, 4));
        assert_eq!(d.row(1, 2, 2), &[0, 1, 2, 3]);
        // Causal, Lk − Lq = 70: query block 0 (rows 0..63) sees keys up to 133 → blocks 0..=2.
        let c = BlockLayout::causal(&params(130, 200, true));
        assert_eq!(c.row(0, 0, 0), &[0, 1, 2]);
        assert_eq!(c.row(0, 0, 2), &[0, 1, 2, 3]);
        // Lq > Lk: the first query block sees nothing.
        let c = BlockLayout::causal(&params(200, 10, true));
        assert_eq!(c.row(0, 0, 0), &[] as &[u32]);
        assert_eq!(c.row(0, 0, 3), &[0]);
    }

    #[test]
    fn transpose_inverts() {
        let c = BlockLayout::causal(&params(300, 300, true));
        let t = c.transpose();
        assert_eq!((t.rows(), t.cols()), (5, 5));
        assert_eq!(t.row(0, 0, 0), &[0, 1, 2, 3, 4]);
        assert_eq!(t.row(1, 2, 4), &[4]);
        assert_eq!(
            t.transpose(),
            BlockLayout::from_lists(
                2,
                3,
                5,
                5,
                &(0..30)
                    .map(|i| { (0..=(i % 5) as u32).collect() })
                    .collect::<Vec<_>>()
            )
            .unwrap()
        );
    }

    #[test]
    fn local_anchor_follows_bottom_right_alignment() {
        assert_eq!(local_anchor_block(&params(128, 128, true), 0), Some(0));
        assert_eq!(local_anchor_block(&params(64, 256, true), 0), Some(3));
        assert_eq!(local_anchor_block(&params(256, 64, true), 0), None);
        assert_eq!(local_anchor_block(&params(100, 100, false), 1), Some(1));
    }

    #[test]
    fn visible_blocks_and_anchor_match_enumeration_on_ragged_shapes() {
        let lens = [1, 5, 63, 64, 65, 127, 130, 200, 257];
        for &lq in &lens {
            for &lk in &lens {
                for causal in [false, true] {
                    let p = params(lq, lk, causal);
                    for qb in 0..lq.div_ceil(BLOCK) {
                        let rows = qb * BLOCK..((qb + 1) * BLOCK).min(lq);
                        // Brute force: highest key any row of the block sees, plus one.
                        let seen = rows
                            .clone()
                            .flat_map(|i| (0..lk).filter(move |&j| p.visible(i, j)))
                            .max()
                            .map_or(0, |j| j / BLOCK + 1);
                        assert_eq!(visible_key_blocks(&p, qb), seen, "{lq} {lk} {causal} {qb}");
                        // SPEC's anchor key, computed in i64 from its formula.
                        let key =
                            (lk as i64 - 1).min((qb as i64 + 1) * 64 - 1 + lk as i64 - lq as i64);
                        let want = (key >= 0).then_some(key as usize / BLOCK);
                        assert_eq!(local_anchor_block(&p, qb), want, "{lq} {lk} {qb}");
                    }
                }
            }
        }
    }

    #[test]
    fn rho_of_empty_rows_is_zero() {
        let r = rho(
            &[f32::NEG_INFINITY, 0.0],
            &[f32::NEG_INFINITY, 0.0f32.ln_1p()],
        )
        .unwrap();
        assert_eq!(r, vec![0.0, 1.0]);
        assert!(rho(&[0.0], &[]).is_err());
    }
}
