//! What is benchmarked: every op at the standard sizes of the issues, scaled by a [`Profile`],
//! and the work model (bytes moved, floating-point operations) that turns a time into GB/s and
//! TFLOP/s.

use flashneck_core::{AttentionParams, AttentionShape, DType, GrKanParams, GumbelParams, OpKind};
use serde::{Deserialize, Serialize};

/// How big and how long: `smoke` for tests, `quick` (the default without a GPU), `standard`
/// (the default with one) and `full`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    Smoke,
    Quick,
    Standard,
    Full,
}

impl Profile {
    pub fn name(self) -> &'static str {
        match self {
            Profile::Smoke => "smoke",
            Profile::Quick => "quick",
            Profile::Standard => "standard",
            Profile::Full => "full",
        }
    }

    /// Seconds of measured runs per case and side (ours, then the peer's again).
    pub fn seconds_per_case(self) -> f64 {
        match self {
            Profile::Smoke => 0.02,
            Profile::Quick => 0.6,
            Profile::Standard => 2.0,
            Profile::Full => 5.0,
        }
    }

    /// Fewest measured runs per case and side, whatever they cost.
    pub fn min_runs(self) -> usize {
        match self {
            Profile::Smoke => 2,
            Profile::Quick => 3,
            Profile::Standard => 5,
            Profile::Full => 10,
        }
    }

    /// Most measured runs per case and side.
    pub fn max_runs(self) -> usize {
        match self {
            Profile::Smoke => 3,
            Profile::Quick => 50,
            Profile::Standard => 200,
            Profile::Full => 500,
        }
    }
}

/// The shape and parameters of one benchmarked call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "family", rename_all = "snake_case")]
pub enum Problem {
    /// Dense attention (forward or backward).
    Attention {
        batch: usize,
        heads: usize,
        len: usize,
        head_dim: usize,
        causal: bool,
    },
    /// Block-sparse attention on a random layout keeping `density` of the visible key blocks
    /// (the diagonal block always kept); `block_topk` keeps the same share.
    Sparse {
        batch: usize,
        heads: usize,
        len: usize,
        head_dim: usize,
        causal: bool,
        density: f64,
    },
    /// GR-KAN on `x [rows, channels]` with KAT's degrees `M = 5, N = 4`.
    GrKan {
        rows: usize,
        channels: usize,
        groups: usize,
    },
    /// Gumbel-Softmax over `logits [rows, classes]`, soft, `tau = 1`.
    Gumbel { rows: usize, classes: usize },
    /// `elements` draws of the raw Gumbel noise.
    Noise { elements: usize },
}

impl Problem {
    /// Attention parameters (dense or sparse problems only).
    pub fn attention_params(&self) -> Option<AttentionParams> {
        match *self {
            Problem::Attention {
                batch,
                heads,
                len,
                head_dim,
                causal,
            }
            | Problem::Sparse {
                batch,
                heads,
                len,
                head_dim,
                causal,
                ..
            } => Some(
                AttentionParams::new(AttentionShape::mha(batch, heads, len, len, head_dim))
                    .with_causal(causal),
            ),
            _ => None,
        }
    }

    pub fn grkan_params(&self) -> Option<GrKanParams> {
        match *self {
            Problem::GrKan {
                rows,
                channels,
                groups,
            } => Some(GrKanParams::new(rows, channels, groups)),
            _ => None,
        }
    }

    pub fn gumbel_params(&self) -> Option<GumbelParams> {
        match *self {
            Problem::Gumbel { rows, classes } => {
                Some(GumbelParams::new(rows, classes, 1.0).with_seed(0x5eed, 0))
            }
            _ => None,
        }
    }

    /// A short human label: `B1 H8 L2048 D64 causal`, `25216x768 G8`, ...
    pub fn label(&self) -> String {
        match *self {
            Problem::Attention {
                batch,
                heads,
                len,
                head_dim,
                causal,
            } => format!(
                "B{batch} H{heads} L{len} D{head_dim}{}",
                if causal { " causal" } else { "" }
            ),
            Problem::Sparse {
                batch,
                heads,
                len,
                head_dim,
                causal,
                density,
            } => {
                // 50%, 12.5%, 3%: no trailing zeros.
                let pct = format!("{:.1}", density * 100.0);
                let pct = pct.trim_end_matches('0').trim_end_matches('.');
                format!(
                    "B{batch} H{heads} L{len} D{head_dim}{} {pct}%",
                    if causal { " causal" } else { "" }
                )
            }
            Problem::GrKan {
                rows,
                channels,
                groups,
            } => format!("{rows}x{channels} G{groups}"),
            Problem::Gumbel { rows, classes } => format!("{rows}x{classes}"),
            Problem::Noise { elements } => format!("n={elements}"),
        }
    }
}

/// One benchmarked call: an op, an element type and a problem.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Case {
    /// `OpKind::name()` of the op.
    pub op: String,
    pub dtype: String,
    pub problem: Problem,
}

impl Case {
    pub fn new(op: OpKind, dtype: DType, problem: Problem) -> Self {
        Case {
            op: op.name().to_string(),
            dtype: dtype.name().to_string(),
            problem,
        }
    }

    pub fn op_kind(&self) -> Option<OpKind> {
        OpKind::ALL.into_iter().find(|o| o.name() == self.op)
    }

    pub fn dtype(&self) -> Option<DType> {
        DType::from_name(&self.dtype)
    }

    /// `op dtype label`, unique within a backend's run.
    pub fn id(&self) -> String {
        format!("{} {} {}", self.op, self.dtype, self.problem.label())
    }
}

/// The standard problems of each op (issues 2, 4 and 6), scaled by `profile`. `gpu` picks the
/// GPU sizes (larger, and the second GR-KAN and Gumbel shapes).
pub fn problems(op: OpKind, profile: Profile, gpu: bool) -> Vec<Problem> {
    use Profile::*;
    let attention = |len: usize, head_dim: usize, causal: bool| Problem::Attention {
        batch: 1,
        heads: 8,
        len,
        head_dim,
        causal,
    };
    let sparse = |len: usize, density: f64| Problem::Sparse {
        batch: 1,
        heads: 8,
        len,
        head_dim: 64,
        causal: false,
        density,
    };
    // Attention: L = 2048 to 8192, D = 64 and 128, causal and not.
    let (lens, dims): (&[usize], &[usize]) = match (profile, gpu) {
        (Smoke, _) => (&[96], &[64]),
        (Quick, false) => (&[2048], &[64]),
        (Quick, true) => (&[2048, 8192], &[64, 128]),
        (Standard, false) => (&[2048, 4096], &[64]),
        (Standard, true) | (Full, _) => (&[2048, 4096, 8192], &[64, 128]),
    };
    // Sparse: densities 50% to 3%.
    let (sparse_len, densities): (usize, &[f64]) = match (profile, gpu) {
        (Smoke, _) => (192, &[0.5]),
        (Quick, false) => (2048, &[0.5, 0.125, 0.03]),
        (Quick, true) | (Standard, false) => (4096, &[0.5, 0.25, 0.125, 0.06, 0.03]),
        (Standard, true) | (Full, _) => (8192, &[0.5, 0.25, 0.125, 0.06, 0.03]),
    };
    // GR-KAN: KAT-Tiny's [128·197, 768, G=8], and [8·4096, 3072, 8] on GPUs.
    let grkan: &[(usize, usize)] = match (profile, gpu) {
        (Smoke, _) => &[(197, 96)],
        (_, false) => &[(25216, 768)],
        (_, true) => &[(25216, 768), (32768, 3072)],
    };
    // Gumbel: [4096, 4096], and [65536, 1000] on GPUs and in full.
    let gumbel: &[(usize, usize)] = match (profile, gpu) {
        (Smoke, _) => &[(64, 1000)],
        (Quick | Standard, false) => &[(4096, 4096)],
        _ => &[(4096, 4096), (65536, 1000)],
    };
    match op {
        OpKind::AttentionForward | OpKind::AttentionBackward => {
            let mut v = Vec::new();
            for &l in lens {
                for &d in dims {
                    for causal in [false, true] {
                        v.push(attention(l, d, causal));
                    }
                }
            }
            v
        }
        OpKind::SparseForward | OpKind::SparseBackward => {
            densities.iter().map(|&d| sparse(sparse_len, d)).collect()
        }
        OpKind::BlockTopk => vec![sparse(sparse_len, 0.125)],
        OpKind::GrKanForward | OpKind::GrKanBackward => grkan
            .iter()
            .map(|&(rows, channels)| Problem::GrKan {
                rows,
                channels,
                groups: 8,
            })
            .collect(),
        OpKind::GumbelForward | OpKind::GumbelBackward => gumbel
            .iter()
            .map(|&(rows, classes)| Problem::Gumbel { rows, classes })
            .collect(),
        OpKind::GumbelNoise => {
            let (rows, classes) = gumbel[0];
            vec![Problem::Noise {
                elements: rows * classes,
            }]
        }
    }
}

/// Bytes an op must move at least (each input read once, each output written once) and the
/// floating-point operations it does, as counted by [`work`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Work {
    pub bytes: f64,
    pub flops: f64,
}

/// Query/key pairs attention visits: every visible pair of the selected blocks.
fn attended_pairs(p: &AttentionParams, density: Option<f64>) -> f64 {
    let s = &p.shape;
    let visible: usize = (0..s.len_q).map(|i| p.visible_keys(i)).sum();
    let per_head = visible as f64 * density.unwrap_or(1.0);
    per_head * (s.batch * s.heads_q) as f64
}

/// The work model of one call. FLOPs count multiply-adds as two; attention counts only its
/// matrix products (forward `2·pairs·(D + Dv)`, backward `2·pairs·(3D + 2Dv)`: S, dV, dP, dQ,
/// dK, as FlashAttention-2 counts them); GR-KAN counts the polynomial evaluations per element
/// (forward `2(M+N) + 2`, backward `4(M+N) + 8` plus `2(M+N+1)` for the coefficient sums);
/// Gumbel-Softmax counts 8 per element (noise, scale, max, exp, sum, divide), its backward 4.
pub fn work(op: OpKind, dtype: DType, problem: &Problem) -> Work {
    let e = dtype.size_bytes() as f64;
    match problem {
        Problem::Attention { .. } | Problem::Sparse { .. } => {
            let p = problem.attention_params().expect("attention problem");
            let s = p.shape;
            let density = match problem {
                Problem::Sparse { density, .. } => Some(*density),
                _ => None,
            };
            let pairs = attended_pairs(&p, density);
            let (d, dv) = (s.head_dim as f64, s.head_dim_v as f64);
            let (q, k, v, o, lse) = (
                s.q_len() as f64,
                s.k_len() as f64,
                s.v_len() as f64,
                s.o_len() as f64,
                s.lse_len() as f64,
            );
            match op {
                OpKind::AttentionForward | OpKind::SparseForward => Work {
                    bytes: (q + k + v + o) * e + lse * 4.0,
                    flops: 2.0 * pairs * (d + dv),
                },
                OpKind::AttentionBackward | OpKind::SparseBackward => Work {
                    // Reads Q, K, V, O, dO, LSE; writes dQ, dK, dV.
                    bytes: (2.0 * (q + k + v) + 2.0 * o) * e + lse * 4.0,
                    flops: 2.0 * pairs * (3.0 * d + 2.0 * dv),
                },
                _ => Work {
                    // block_topk: pooling reads Q and K once; scores are tiny.
                    bytes: (q + k) * e,
                    flops: q + k + 2.0 * (s.q_blocks() * s.k_blocks()) as f64 * d,
                },
            }
        }
        Problem::GrKan { .. } => {
            let p = problem.grkan_params().expect("grkan problem");
            let n = p.x_len() as f64;
            let deg = (p.num_degree + p.den_degree) as f64;
            match op {
                OpKind::GrKanForward => Work {
                    bytes: 2.0 * n * e,
                    flops: n * (2.0 * deg + 2.0),
                },
                _ => Work {
                    bytes: 3.0 * n * e,
                    flops: n * (4.0 * deg + 8.0 + 2.0 * (deg + 1.0)),
                },
            }
        }
        Problem::Gumbel { rows, classes } => {
            let n = (rows * classes) as f64;
            match op {
                OpKind::GumbelForward => Work {
                    bytes: 2.0 * n * e,
                    flops: 8.0 * n,
                },
                // Reads y_soft (f32) and dy, writes dlogits.
                _ => Work {
                    bytes: n * (4.0 + 2.0 * e),
                    flops: 4.0 * n,
                },
            }
        }
        Problem::Noise { elements } => Work {
            bytes: *elements as f64 * 4.0,
            flops: 4.0 * *elements as f64,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_op_has_problems_in_every_profile() {
        for profile in [
            Profile::Smoke,
            Profile::Quick,
            Profile::Standard,
            Profile::Full,
        ] {
            for op in OpKind::ALL {
                for gpu in [false, true] {
                    assert!(!problems(op, profile, gpu).is_empty(), "{op:?} {profile:?}");
                }
            }
        }
    }

    #[test]
    fn causal_attention_does_about_half_the_work() {
        let full = Problem::Attention {
            batch: 1,
            heads: 8,
            len: 2048,
            head_dim: 64,
            causal: false,
        };
        let causal = Problem::Attention {
            batch: 1,
            heads: 8,
            len: 2048,
            head_dim: 64,
            causal: true,
        };
        let f = work(OpKind::AttentionForward, DType::F32, &full);
        let c = work(OpKind::AttentionForward, DType::F32, &causal);
        assert_eq!(f.flops, 4.0 * 8.0 * 2048.0 * 2048.0 * 64.0);
        let ratio = c.flops / f.flops;
        assert!((ratio - 0.5).abs() < 0.01, "{ratio}");
        assert_eq!(f.bytes, c.bytes);
    }
}
