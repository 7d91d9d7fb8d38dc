//! Summary statistics of a set of timings: the median and the spread around it.

use serde::{Deserialize, Serialize};

/// Timings of one case on one side, in seconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Measured runs (warm-up excluded).
    pub runs: usize,
    pub median_s: f64,
    /// 10th and 90th percentiles: the spread reported beside the median.
    pub p10_s: f64,
    pub p90_s: f64,
    pub min_s: f64,
    pub max_s: f64,
}

impl Summary {
    /// Summarise `samples` (seconds); `None` when there is none.
    pub fn of(samples: &[f64]) -> Option<Summary> {
        if samples.is_empty() {
            return None;
        }
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        Some(Summary {
            runs: s.len(),
            median_s: quantile(&s, 0.5),
            p10_s: quantile(&s, 0.1),
            p90_s: quantile(&s, 0.9),
            min_s: s[0],
            max_s: s[s.len() - 1],
        })
    }

    /// `(p90 - p10) / median`, the relative spread.
    pub fn spread(&self) -> f64 {
        if self.median_s > 0.0 {
            (self.p90_s - self.p10_s) / self.median_s
        } else {
            0.0
        }
    }
}

/// Linear-interpolated quantile of sorted data.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    let w = pos - lo as f64;
    sorted[lo] * (1.0 - w) + sorted[hi] * w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_percentiles() {
        let s = Summary::of(&[5.0, 1.0, 3.0, 2.0, 4.0]).unwrap();
        assert_eq!(s.median_s, 3.0);
        assert_eq!(s.min_s, 1.0);
        assert_eq!(s.max_s, 5.0);
        assert!((s.p10_s - 1.4).abs() < 1e-12);
        assert!((s.p90_s - 4.6).abs() < 1e-12);
        assert!((s.spread() - 3.2 / 3.0).abs() < 1e-12);
        assert!(Summary::of(&[]).is_none());
    }
}
