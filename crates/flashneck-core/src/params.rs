//! Parameter structs of every op (SPEC §1–§4). Each has `validate()`, called by every backend
//! before it touches a buffer, and helpers giving the expected length of each buffer.

use crate::error::{Error, Result, check_len};
use crate::layout::{BLOCK, BlockLayout};

/// Largest head dim any backend accepts (SPEC §1).
pub const MAX_HEAD_DIM: usize = 256;
/// Largest GR-KAN numerator or denominator degree (SPEC §3).
pub const MAX_KAN_DEGREE: usize = 7;

/// The product of `dims`, or a [`Error::BadParameter`] on `arg` when it overflows `usize`.
fn checked_product(arg: &'static str, dims: &[usize]) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| {
            Error::bad(
                arg,
                "a shape whose element count fits in usize",
                format!("{dims:?}"),
            )
        })
}

/// Shapes of an attention call: `Q [B, Hq, Lq, D]`, `K [B, Hkv, Lk, D]`, `V [B, Hkv, Lk, Dv]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AttentionShape {
    pub batch: usize,
    pub heads_q: usize,
    pub heads_kv: usize,
    pub len_q: usize,
    pub len_k: usize,
    pub head_dim: usize,
    pub head_dim_v: usize,
}

impl AttentionShape {
    /// Multi-head attention with `D = Dv` and `Hq = Hkv`.
    pub fn mha(batch: usize, heads: usize, len_q: usize, len_k: usize, head_dim: usize) -> Self {
        Self::gqa(batch, heads, heads, len_q, len_k, head_dim)
    }

    /// Grouped-query attention with `D = Dv`.
    pub fn gqa(
        batch: usize,
        heads_q: usize,
        heads_kv: usize,
        len_q: usize,
        len_k: usize,
        head_dim: usize,
    ) -> Self {
        AttentionShape {
            batch,
            heads_q,
            heads_kv,
            len_q,
            len_k,
            head_dim,
            head_dim_v: head_dim,
        }
    }

    /// Query heads per kv head (`Hq / Hkv`); valid only after [`AttentionShape::validate`].
    pub fn group_size(&self) -> usize {
        self.heads_q / self.heads_kv
    }
    /// Elements of `Q` and `dQ` (saturating: meaningful once [`AttentionShape::validate`] passed).
    pub fn q_len(&self) -> usize {
        self.batch
            .saturating_mul(self.heads_q)
            .saturating_mul(self.len_q)
            .saturating_mul(self.head_dim)
    }
    /// Elements of `K` and `dK`.
    pub fn k_len(&self) -> usize {
        self.batch
            .saturating_mul(self.heads_kv)
            .saturating_mul(self.len_k)
            .saturating_mul(self.head_dim)
    }
    /// Elements of `V` and `dV`.
    pub fn v_len(&self) -> usize {
        self.batch
            .saturating_mul(self.heads_kv)
            .saturating_mul(self.len_k)
            .saturating_mul(self.head_dim_v)
    }
    /// Elements of `O`, `dO` and the Re-ttention residual.
    pub fn o_len(&self) -> usize {
        self.batch
            .saturating_mul(self.heads_q)
            .saturating_mul(self.len_q)
            .saturating_mul(self.head_dim_v)
    }
    /// Elements of `LSE` and the Re-ttention row scale.
    pub fn lse_len(&self) -> usize {
        self.batch
            .saturating_mul(self.heads_q)
            .saturating_mul(self.len_q)
    }
    /// Number of query blocks `nQB = ceil(Lq / 64)`.
    pub fn q_blocks(&self) -> usize {
        self.len_q.div_ceil(BLOCK)
    }
    /// Number of key blocks `nKB = ceil(Lk / 64)`.
    pub fn k_blocks(&self) -> usize {
        self.len_k.div_ceil(BLOCK)
    }

    /// Check heads and head dims (lengths may be zero: such a call does nothing).
    pub fn validate(&self) -> Result<()> {
        if self.heads_q == 0 {
            return Err(Error::bad("heads_q", ">= 1", self.heads_q));
        }
        if self.heads_kv == 0 {
            return Err(Error::bad("heads_kv", ">= 1", self.heads_kv));
        }
        if !self.heads_q.is_multiple_of(self.heads_kv) {
            return Err(Error::bad(
                "heads_q",
                format!("a multiple of heads_kv = {}", self.heads_kv),
                self.heads_q,
            ));
        }
        for (arg, d) in [("head_dim", self.head_dim), ("head_dim_v", self.head_dim_v)] {
            if d == 0 || d > MAX_HEAD_DIM {
                return Err(Error::bad(arg, format!("1..={MAX_HEAD_DIM}"), d));
            }
        }
        // Every buffer length must be representable, or `*_len` would overflow.
        let rows_q = checked_product("len_q", &[self.batch, self.heads_q, self.len_q])?;
        let rows_k = checked_product("len_k", &[self.batch, self.heads_kv, self.len_k])?;
        checked_product("len_q", &[rows_q, self.head_dim.max(self.head_dim_v)])?;
        checked_product("len_k", &[rows_k, self.head_dim.max(self.head_dim_v)])?;
        Ok(())
    }
}

/// Parameters of dense and block-sparse attention (SPEC §1, §2).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionParams {
    pub shape: AttentionShape,
    /// Softmax scale; [`AttentionParams::new`] sets `1/sqrt(D)`.
    pub scale: f32,
    /// Bottom-right aligned causal mask: query `i` sees key `j` iff `j <= i + Lk - Lq`.
    pub causal: bool,
}

impl AttentionParams {
    /// Non-causal attention with the default scale `1/sqrt(D)`.
    pub fn new(shape: AttentionShape) -> Self {
        AttentionParams {
            shape,
            scale: 1.0 / (shape.head_dim.max(1) as f32).sqrt(),
            causal: false,
        }
    }
    /// Set the causal flag.
    pub fn with_causal(mut self, causal: bool) -> Self {
        self.causal = causal;
        self
    }
    /// Set the softmax scale.
    pub fn with_scale(mut self, scale: f32) -> Self {
        self.scale = scale;
        self
    }

    /// Whether query row `i` sees key `j` (element mask only: `j < Lk` and causality).
    #[inline]
    pub fn visible(&self, i: usize, j: usize) -> bool {
        j < self.shape.len_k
            && (!self.causal
                || (j as i64) <= i as i64 + self.shape.len_k as i64 - self.shape.len_q as i64)
    }

    /// Number of keys query row `i` sees: keys `0..visible_keys(i)`.
    #[inline]
    pub fn visible_keys(&self, i: usize) -> usize {
        if !self.causal {
            return self.shape.len_k;
        }
        let last = i as i64 + self.shape.len_k as i64 - self.shape.len_q as i64;
        (last + 1).clamp(0, self.shape.len_k as i64) as usize
    }

    pub fn validate(&self) -> Result<()> {
        self.shape.validate()?;
        if !self.scale.is_finite() {
            return Err(Error::bad("scale", "a finite value", self.scale));
        }
        Ok(())
    }

    /// Lengths of the forward's buffers: `q, k, v, o, lse`.
    pub fn check_forward(&self, q: usize, k: usize, v: usize, o: usize, lse: usize) -> Result<()> {
        self.validate()?;
        let s = &self.shape;
        check_len("q", q, s.q_len())?;
        check_len("k", k, s.k_len())?;
        check_len("v", v, s.v_len())?;
        check_len("o", o, s.o_len())?;
        check_len("lse", lse, s.lse_len())
    }

    /// Lengths of the backward's buffers, in the order of the trait method.
    #[allow(clippy::too_many_arguments)]
    pub fn check_backward(
        &self,
        q: usize,
        k: usize,
        v: usize,
        o: usize,
        d_o: usize,
        lse: usize,
        dq: usize,
        dk: usize,
        dv: usize,
    ) -> Result<()> {
        self.check_forward(q, k, v, o, lse)?;
        let s = &self.shape;
        check_len("d_o", d_o, s.o_len())?;
        check_len("dq", dq, s.q_len())?;
        check_len("dk", dk, s.k_len())?;
        check_len("dv", dv, s.v_len())
    }
}

impl AttentionParams {
    /// The sparse forward's checks: [`AttentionParams::check_forward`], the layout's dims, and
    /// the lengths of the optional epilogue inputs `row_scale` and `residual`.
    #[allow(clippy::too_many_arguments)]
    pub fn check_sparse_forward(
        &self,
        layout: &BlockLayout,
        q: usize,
        k: usize,
        v: usize,
        row_scale: Option<usize>,
        residual: Option<usize>,
        o: usize,
        lse: usize,
    ) -> Result<()> {
        self.check_forward(q, k, v, o, lse)?;
        layout.check_forward(self)?;
        if let Some(n) = row_scale {
            check_len("row_scale", n, self.shape.lse_len())?;
        }
        if let Some(n) = residual {
            check_len("residual", n, self.shape.o_len())?;
        }
        Ok(())
    }

    /// The sparse backward's checks: [`AttentionParams::check_backward`], both layouts' dims,
    /// and that `layout_t` is `layout.transpose()`.
    #[allow(clippy::too_many_arguments)]
    pub fn check_sparse_backward(
        &self,
        layout: &BlockLayout,
        layout_t: &BlockLayout,
        q: usize,
        k: usize,
        v: usize,
        o: usize,
        d_o: usize,
        lse: usize,
        dq: usize,
        dk: usize,
        dv: usize,
    ) -> Result<()> {
        self.check_backward(q, k, v, o, d_o, lse, dq, dk, dv)?;
        layout.check_forward(self)?;
        layout_t.check_transposed(self)?;
        if *layout_t != layout.transpose() {
            return Err(Error::bad(
                "layout_t",
                "the transpose of `layout` (BlockLayout::transpose)",
                "a different layout",
            ));
        }
        Ok(())
    }

    /// `block_topk`'s checks: parameters, `topk`, and the lengths of `q` and `k`.
    pub fn check_topk(&self, topk: &TopkParams, q: usize, k: usize) -> Result<()> {
        self.validate()?;
        topk.validate()?;
        check_len("q", q, self.shape.q_len())?;
        check_len("k", k, self.shape.k_len())
    }
}

/// Parameters of `block_topk` (SPEC §2): how many key blocks each query block keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TopkParams {
    /// Best-scoring blocks kept besides the sink and local ones.
    pub keep: usize,
    /// First visible key blocks always kept (attention sinks).
    pub sink: usize,
    /// Diagonal blocks always kept, counting back from the block of the last visible key.
    pub local: usize,
}

impl TopkParams {
    /// The most blocks a query block can select: `min(nKB, sink + local + keep)`.
    pub fn max_blocks(&self, k_blocks: usize) -> usize {
        k_blocks.min(
            self.sink
                .saturating_add(self.local)
                .saturating_add(self.keep),
        )
    }
    pub fn validate(&self) -> Result<()> {
        if self.keep == 0 && self.sink == 0 && self.local == 0 {
            return Err(Error::bad(
                "keep",
                "keep + sink + local >= 1",
                "keep = sink = local = 0",
            ));
        }
        Ok(())
    }
}

/// Parameters of GR-KAN (SPEC §3): `x [rows, channels]`, `a [groups, M+1]`, `b [groups, N]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GrKanParams {
    pub rows: usize,
    pub channels: usize,
    pub groups: usize,
    /// Numerator degree `M` (`a` has `M + 1` coefficients per group).
    pub num_degree: usize,
    /// Denominator degree `N` (`b` has `N` coefficients per group).
    pub den_degree: usize,
}

impl GrKanParams {
    /// KAT's default degrees `M = 5, N = 4`.
    pub fn new(rows: usize, channels: usize, groups: usize) -> Self {
        GrKanParams {
            rows,
            channels,
            groups,
            num_degree: 5,
            den_degree: 4,
        }
    }
    pub fn with_degrees(mut self, m: usize, n: usize) -> Self {
        self.num_degree = m;
        self.den_degree = n;
        self
    }
    /// Elements of `x`, `y`, `dy`, `dx`.
    pub fn x_len(&self) -> usize {
        self.rows.saturating_mul(self.channels)
    }
    /// Elements of `a` and `da`.
    pub fn a_len(&self) -> usize {
        self.groups.saturating_mul(self.num_degree + 1)
    }
    /// Elements of `b` and `db`.
    pub fn b_len(&self) -> usize {
        self.groups.saturating_mul(self.den_degree)
    }
    /// Channels per group `C / G`.
    pub fn group_width(&self) -> usize {
        self.channels / self.groups
    }

    pub fn validate(&self) -> Result<()> {
        if self.groups == 0 {
            return Err(Error::bad("groups", ">= 1", self.groups));
        }
        if self.channels == 0 || !self.channels.is_multiple_of(self.groups) {
            return Err(Error::bad(
                "channels",
                format!("a positive multiple of groups = {}", self.groups),
                self.channels,
            ));
        }
        if self.num_degree > MAX_KAN_DEGREE {
            return Err(Error::bad(
                "num_degree",
                format!("0..={MAX_KAN_DEGREE}"),
                self.num_degree,
            ));
        }
        if self.den_degree > MAX_KAN_DEGREE {
            return Err(Error::bad(
                "den_degree",
                format!("0..={MAX_KAN_DEGREE}"),
                self.den_degree,
            ));
        }
        checked_product("rows", &[self.rows, self.channels])?;
        Ok(())
    }

    /// Lengths of the forward's buffers: `x, a, b, y`.
    pub fn check_forward(&self, x: usize, a: usize, b: usize, y: usize) -> Result<()> {
        self.validate()?;
        check_len("x", x, self.x_len())?;
        check_len("a", a, self.a_len())?;
        check_len("b", b, self.b_len())?;
        check_len("y", y, self.x_len())
    }

    /// Lengths of the backward's buffers: `x, a, b, dy, dx, da, db`.
    #[allow(clippy::too_many_arguments)]
    pub fn check_backward(
        &self,
        x: usize,
        a: usize,
        b: usize,
        dy: usize,
        dx: usize,
        da: usize,
        db: usize,
    ) -> Result<()> {
        self.validate()?;
        check_len("x", x, self.x_len())?;
        check_len("a", a, self.a_len())?;
        check_len("b", b, self.b_len())?;
        check_len("dy", dy, self.x_len())?;
        check_len("dx", dx, self.x_len())?;
        check_len("da", da, self.a_len())?;
        check_len("db", db, self.b_len())
    }
}

/// Parameters of Gumbel-Softmax (SPEC §4): `logits [rows, classes]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GumbelParams {
    pub rows: usize,
    /// `K`, the softmax width.
    pub classes: usize,
    /// Temperature, finite and `> 0`.
    pub tau: f32,
    pub seed: u64,
    /// Philox counter offset (the high half of the counter), advanced by the caller per step.
    pub offset: u64,
    /// Return a one-hot of the argmax (straight-through) instead of the soft sample.
    pub hard: bool,
}

impl GumbelParams {
    pub fn new(rows: usize, classes: usize, tau: f32) -> Self {
        GumbelParams {
            rows,
            classes,
            tau,
            seed: 0,
            offset: 0,
            hard: false,
        }
    }
    pub fn with_seed(mut self, seed: u64, offset: u64) -> Self {
        self.seed = seed;
        self.offset = offset;
        self
    }
    pub fn with_hard(mut self, hard: bool) -> Self {
        self.hard = hard;
        self
    }
    /// Elements of `logits`, `y`, `y_soft`, `dy`, `dlogits`.
    pub fn len(&self) -> usize {
        self.rows.saturating_mul(self.classes)
    }
    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn validate(&self) -> Result<()> {
        if self.classes == 0 {
            return Err(Error::bad("classes", ">= 1", self.classes));
        }
        // A subnormal tau would make 1/tau infinite; no useful temperature is that small.
        if !(self.tau.is_finite() && self.tau >= f32::MIN_POSITIVE) {
            return Err(Error::bad(
                "tau",
                "a finite value >= f32::MIN_POSITIVE (1.2e-38)",
                self.tau,
            ));
        }
        checked_product("rows", &[self.rows, self.classes])?;
        Ok(())
    }

    /// Lengths of the forward's buffers: `logits, y, y_soft` (when given).
    pub fn check_forward(&self, logits: usize, y: usize, y_soft: Option<usize>) -> Result<()> {
        self.validate()?;
        check_len("logits", logits, self.len())?;
        check_len("y", y, self.len())?;
        if let Some(n) = y_soft {
            check_len("y_soft", n, self.len())?;
        }
        Ok(())
    }

    /// Lengths of the backward's buffers: `y_soft, dy, dlogits`.
    pub fn check_backward(&self, y_soft: usize, dy: usize, dlogits: usize) -> Result<()> {
        self.validate()?;
        check_len("y_soft", y_soft, self.len())?;
        check_len("dy", dy, self.len())?;
        check_len("dlogits", dlogits, self.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_rejects_bad_heads_and_dims() {
        let ok = AttentionShape::gqa(1, 8, 2, 10, 12, 64);
        assert!(ok.validate().is_ok());
        assert!(matches!(
            AttentionShape::gqa(1, 6, 4, 10, 12, 64).validate(),
            Err(Error::BadParameter { arg: "heads_q", .. })
        ));
        assert!(matches!(
            AttentionShape::mha(1, 2, 10, 12, 0).validate(),
            Err(Error::BadParameter {
                arg: "head_dim",
                ..
            })
        ));
        assert!(matches!(
            AttentionShape::mha(1, 2, 10, 12, 257).validate(),
            Err(Error::BadParameter {
                arg: "head_dim",
                ..
            })
        ));
    }

    #[test]
    fn causal_visibility_is_bottom_right_aligned() {
        let p = AttentionParams::new(AttentionShape::mha(1, 1, 3, 5, 8)).with_causal(true);
        // Query 0 sees keys 0..=2, query 2 sees all five.
        assert_eq!(p.visible_keys(0), 3);
        assert_eq!(p.visible_keys(2), 5);
        assert!(p.visible(0, 2) && !p.visible(0, 3));
        let p = AttentionParams::new(AttentionShape::mha(1, 1, 5, 3, 8)).with_causal(true);
        // Lq > Lk: the first two queries see nothing.
        assert_eq!(p.visible_keys(0), 0);
        assert_eq!(p.visible_keys(1), 0);
        assert_eq!(p.visible_keys(2), 1);
    }

    #[test]
    fn grkan_and_gumbel_reject_bad_parameters() {
        assert!(GrKanParams::new(4, 12, 5).validate().is_err());
        assert!(
            GrKanParams::new(4, 12, 4)
                .with_degrees(8, 4)
                .validate()
                .is_err()
        );
        assert!(
            GrKanParams::new(4, 12, 4)
                .with_degrees(5, 8)
                .validate()
                .is_err()
        );
        assert!(GumbelParams::new(2, 3, 0.0).validate().is_err());
        assert!(GumbelParams::new(2, 3, f32::NAN).validate().is_err());
        assert!(GumbelParams::new(2, 0, 1.0).validate().is_err());
        assert!(GumbelParams::new(2, 3, 0.5).validate().is_ok());
        assert!(GumbelParams::new(2, 3, 1e-40).validate().is_err());
        assert!(GumbelParams::new(usize::MAX, 3, 1.0).validate().is_err());
        assert!(GrKanParams::new(usize::MAX / 2, 8, 4).validate().is_err());
        assert!(matches!(
            AttentionShape::mha(usize::MAX / 4, 8, 1 << 20, 4, 64).validate(),
            Err(Error::BadParameter { arg: "len_q", .. })
        ));
    }
}
