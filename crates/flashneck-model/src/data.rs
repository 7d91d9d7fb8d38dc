//! The synthetic task: do the two marked tokens carry the same value?
//!
//! A sequence has `len` tokens, each with a value in `0..values`; exactly two positions, drawn
//! at random, are marked. The label is 1 when the two marked tokens have equal values, else 0
//! (balanced: each half of the time). Token features are `one_hot(value) ⊕ [marked]`.
//!
//! The long variant ([`MatchTask::with_mark_span`]), for block-sparse attention: over, say,
//! `len = 256` tokens (four 64-token attention blocks), two aligned spans of `span` tokens (two
//! distinct blocks) drawn at random are marked; every token of the first carries value `a`,
//! every token of the second value `b`, and the label says whether `a == b`. The other tokens
//! are unmarked distractors with random values. The information sits in two blocks, whose
//! pooled keys can stand out (64 marked tokens each) for `block_topk` to find.
//!
//! Why it needs attention: the answer depends on a *pair* of tokens whose positions change from
//! example to example, among distractors with the same values. A per-token MLP followed by a
//! mean-pool sees only a sum of per-token features; attention lets every token fetch the two
//! marked values (query: anything, key: "is marked"), after which the MLP compares them.

use flashneck_core::{Error, Result};
use rand::{Rng, rngs::StdRng};

/// The match task's sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatchTask {
    pub len: usize,
    pub values: usize,
    /// `len` (the default): two marked tokens anywhere. Less: the long variant, whose marked
    /// tokens fill two distinct aligned spans `[s·span, (s+1)·span)` (`s` random). Private:
    /// only [`MatchTask::with_mark_span`], which checks it, sets it.
    mark_span: usize,
}

/// Examples: `x [size, len, in_dim]` and a label per example.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub x: Vec<f32>,
    pub labels: Vec<usize>,
}

impl Batch {
    pub fn size(&self) -> usize {
        self.labels.len()
    }
}

impl MatchTask {
    pub fn new(len: usize, values: usize) -> Result<Self> {
        if len < 2 {
            return Err(Error::bad("len", ">= 2 (two marked tokens)", len));
        }
        if values < 2 {
            return Err(Error::bad(
                "values",
                ">= 2 (else every pair matches)",
                values,
            ));
        }
        Ok(MatchTask {
            len,
            values,
            mark_span: len,
        })
    }

    /// Tokens per marked span: `len` for the short task.
    pub fn mark_span(&self) -> usize {
        self.mark_span
    }

    /// The long variant: two marked spans of `span` tokens, one of value `a`, one of value `b`
    /// (`span` a divisor of `len` smaller than it, at least 2).
    pub fn with_mark_span(self, span: usize) -> Result<Self> {
        if span < 2 || span >= self.len || !self.len.is_multiple_of(span) {
            return Err(Error::bad(
                "mark_span",
                format!("a divisor of len = {} in 2..len", self.len),
                span,
            ));
        }
        Ok(MatchTask {
            mark_span: span,
            ..self
        })
    }

    /// Features per token: the value's one-hot and the mark.
    pub fn in_dim(&self) -> usize {
        self.values + 1
    }

    pub fn classes(&self) -> usize {
        2
    }

    /// `n` fresh examples drawn from `rng`.
    pub fn sample(&self, rng: &mut StdRng, n: usize) -> Batch {
        if self.mark_span < self.len {
            return self.sample_long(rng, n);
        }
        let (len, dim) = (self.len, self.in_dim());
        let mut x = vec![0.0f32; n * len * dim];
        let mut labels = Vec::with_capacity(n);
        for e in 0..n {
            let mut vals: Vec<usize> = (0..len).map(|_| rng.gen_range(0..self.values)).collect();
            let i = rng.gen_range(0..len);
            let j = (i + rng.gen_range(1..len)) % len;
            let same = rng.gen_bool(0.5);
            vals[j] = if same {
                vals[i]
            } else {
                (vals[i] + rng.gen_range(1..self.values)) % self.values
            };
            for (t, &v) in vals.iter().enumerate() {
                let row = &mut x[(e * len + t) * dim..(e * len + t + 1) * dim];
                row[v] = 1.0;
                if t == i || t == j {
                    row[self.values] = 1.0;
                }
            }
            labels.push(usize::from(same));
        }
        Batch { x, labels }
    }
}

impl MatchTask {
    /// The long variant: every token of two distinct random aligned spans is marked, those of
    /// the first carrying value `a`, those of the second value `b`; every other token is an
    /// unmarked distractor with a random value. The label says whether `a == b`.
    fn sample_long(&self, rng: &mut StdRng, n: usize) -> Batch {
        let (len, dim, span) = (self.len, self.in_dim(), self.mark_span);
        let mut x = vec![0.0f32; n * len * dim];
        let mut labels = Vec::with_capacity(n);
        for e in 0..n {
            let spans = len / span;
            let sa = rng.gen_range(0..spans) * span;
            let sb = (sa + rng.gen_range(1..spans) * span) % len;
            let a = rng.gen_range(0..self.values);
            let same = rng.gen_bool(0.5);
            let b = if same {
                a
            } else {
                (a + rng.gen_range(1..self.values)) % self.values
            };
            for t in 0..len {
                let row = &mut x[(e * len + t) * dim..(e * len + t + 1) * dim];
                let (v, marked) = if (sa..sa + span).contains(&t) {
                    (a, true)
                } else if (sb..sb + span).contains(&t) {
                    (b, true)
                } else {
                    (rng.gen_range(0..self.values), false)
                };
                row[v] = 1.0;
                row[self.values] = f32::from(u8::from(marked));
            }
            labels.push(usize::from(same));
        }
        Batch { x, labels }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn labels_say_whether_the_marked_values_match() {
        let task = MatchTask::new(6, 3).unwrap();
        let batch = task.sample(&mut StdRng::seed_from_u64(1), 200);
        let dim = task.in_dim();
        let mut ones = 0;
        for (e, &label) in batch.labels.iter().enumerate() {
            let tokens = &batch.x[e * 6 * dim..(e + 1) * 6 * dim];
            let marked: Vec<usize> = tokens
                .chunks(dim)
                .filter(|t| t[3] == 1.0)
                .map(|t| t[..3].iter().position(|&v| v == 1.0).unwrap())
                .collect();
            assert_eq!(marked.len(), 2);
            assert_eq!(label, usize::from(marked[0] == marked[1]));
            ones += label;
        }
        assert!((70..130).contains(&ones), "unbalanced: {ones}/200");
        assert!(MatchTask::new(1, 3).is_err() && MatchTask::new(4, 1).is_err());
    }

    #[test]
    fn the_long_variant_marks_two_aligned_spans() {
        let task = MatchTask::new(256, 5).unwrap().with_mark_span(64).unwrap();
        let batch = task.sample(&mut StdRng::seed_from_u64(2), 200);
        let dim = task.in_dim();
        let (mut ones, mut starts) = (0, std::collections::BTreeSet::new());
        for (e, &label) in batch.labels.iter().enumerate() {
            let tokens: Vec<&[f32]> = batch.x[e * 256 * dim..(e + 1) * 256 * dim]
                .chunks(dim)
                .collect();
            let value = |t: usize| tokens[t][..5].iter().position(|&v| v == 1.0).unwrap();
            let marked: Vec<usize> = (0..256).filter(|&t| tokens[t][5] == 1.0).collect();
            assert_eq!(marked.len(), 128);
            let blocks: Vec<usize> = (0..4).filter(|b| marked.contains(&(b * 64))).collect();
            assert_eq!(blocks.len(), 2);
            for &b in &blocks {
                assert!((b * 64..b * 64 + 64).all(|t| marked.contains(&t)));
                assert!((b * 64..b * 64 + 64).all(|t| value(t) == value(b * 64)));
                starts.insert(b);
            }
            let (a, b) = (value(blocks[0] * 64), value(blocks[1] * 64));
            assert_eq!(label, usize::from(a == b));
            ones += label;
        }
        assert!((70..130).contains(&ones), "unbalanced: {ones}/200");
        assert_eq!(starts.len(), 4, "every block holds the span sometimes");
        for bad in [1, 3, 256, 512] {
            assert!(MatchTask::new(256, 5).unwrap().with_mark_span(bad).is_err());
        }
    }
}
