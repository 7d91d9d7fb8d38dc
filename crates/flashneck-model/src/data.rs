//! The synthetic task: do the two marked tokens carry the same value?
//!
//! A sequence has `len` tokens, each with a value in `0..values`; exactly two positions, drawn
//! at random, are marked. The label is 1 when the two marked tokens have equal values, else 0
//! (balanced: each half of the time). Token features are `one_hot(value) ⊕ [marked]`.
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
        Ok(MatchTask { len, values })
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
}
