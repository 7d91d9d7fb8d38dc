//! Turn a [`Case`](crate::cases::Case) into a ready-to-time call on a backend: inputs uploaded once (several sets
//! when they fit in cache, rotated between calls), outputs allocated once, and a closure that
//! runs the op on the next input set.

use crate::cases::Problem;
use flashneck_core::{
    BlockLayout, DType, DeviceLayout, Element, Error, GumbelParams, Kernels, OpKind, Result,
    SparseEpilogue, TopkParams, grkan_init,
};
use half::{bf16, f16};

/// A prepared call: each invocation runs the op once on the next input set.
pub type Call<'a> = Box<dyn FnMut() -> Result<()> + 'a>;

/// Deterministic uniform numbers (SplitMix64), so that every run benches the same inputs.
pub struct Uniform(u64);

impl Uniform {
    pub fn new(seed: u64) -> Self {
        Uniform(seed)
    }

    /// Next value in `[lo, hi)`.
    pub fn next(&mut self, lo: f32, hi: f32) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let u = (z >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * u
    }

    pub fn fill<T: Element>(&mut self, n: usize, lo: f32, hi: f32) -> Vec<T> {
        (0..n).map(|_| T::from_f32(self.next(lo, hi))).collect()
    }
}

/// How many input sets to rotate: enough that two sets' worth of calls sweep past a cache of
/// `cache_bytes`, at most 8; 1 when one set does not fit in the cache.
pub fn input_sets(input_bytes: f64, cache_bytes: usize) -> usize {
    if input_bytes <= 0.0 || input_bytes >= cache_bytes as f64 {
        1
    } else {
        ((2.0 * cache_bytes as f64 / input_bytes).ceil() as usize).clamp(2, 8)
    }
}

/// A random block layout keeping `density` of the visible key blocks of every query block,
/// always including the diagonal one (the block holding the last visible key).
pub fn random_layout(p: &flashneck_core::AttentionParams, density: f64, seed: u64) -> BlockLayout {
    let s = &p.shape;
    let (rows, cols) = (s.q_blocks(), s.k_blocks());
    let mut rng = Uniform::new(seed);
    let mut lists = Vec::with_capacity(s.batch * s.heads_q * rows);
    for _ in 0..s.batch * s.heads_q {
        for qb in 0..rows {
            let visible = flashneck_core::layout::visible_key_blocks(p, qb);
            let anchor = flashneck_core::layout::local_anchor_block(p, qb);
            let want = ((visible as f64 * density).round() as usize).clamp(1, visible.max(1));
            let mut chosen: Vec<u32> = anchor.map(|a| vec![a as u32]).unwrap_or_default();
            // Partial Fisher-Yates over the other visible blocks.
            let mut others: Vec<u32> = (0..visible as u32)
                .filter(|&c| Some(c as usize) != anchor)
                .collect();
            let mut i = 0;
            while chosen.len() < want && i < others.len() {
                let j = i + (rng.next(0.0, 1.0) * (others.len() - i) as f32) as usize;
                let j = j.min(others.len() - 1);
                others.swap(i, j);
                chosen.push(others[i]);
                i += 1;
            }
            chosen.sort_unstable();
            if visible == 0 {
                chosen.clear();
            }
            lists.push(chosen);
        }
    }
    BlockLayout::from_lists(s.batch, s.heads_q, rows, cols, &lists)
        .expect("a random layout is ascending and in range")
}

/// Bytes of the inputs one call reads (what rotation has to keep out of cache).
fn input_bytes(op: OpKind, dtype: DType, problem: &Problem) -> f64 {
    crate::cases::work(op, dtype, problem).bytes
}

/// Prepare `op` on `problem` for element type `dtype` on backend `b`.
/// Returns the call and the number of input sets it rotates.
pub fn prepare<'a, B: Kernels>(
    b: &'a B,
    op: OpKind,
    dtype: DType,
    problem: &Problem,
    cache_bytes: usize,
) -> Result<(Call<'a>, usize)> {
    let sets = input_sets(input_bytes(op, dtype, problem), cache_bytes);
    let call = match dtype {
        DType::F32 => prepare_typed::<B, f32>(b, op, problem, sets)?,
        DType::F16 => prepare_typed::<B, f16>(b, op, problem, sets)?,
        DType::BF16 => prepare_typed::<B, bf16>(b, op, problem, sets)?,
    };
    Ok((call, sets))
}

fn mismatch(op: OpKind, problem: &Problem) -> Error {
    Error::bad(
        "problem",
        format!("a problem of {}", op.name()),
        problem.label(),
    )
}

/// Cycle through `sets` items.
fn rotate<T>(items: &[T], next: &mut usize) -> usize {
    let i = *next;
    *next = (*next + 1) % items.len();
    i
}

fn prepare_typed<'a, B: Kernels, T: Element>(
    b: &'a B,
    op: OpKind,
    problem: &Problem,
    sets: usize,
) -> Result<Call<'a>> {
    let mut rng = Uniform::new(0xF1A5_4EC4 ^ op as u64);
    match op {
        OpKind::AttentionForward
        | OpKind::AttentionBackward
        | OpKind::SparseForward
        | OpKind::SparseBackward
        | OpKind::BlockTopk => {
            let p = problem
                .attention_params()
                .ok_or_else(|| mismatch(op, problem))?;
            let s = p.shape;
            let layout = match *problem {
                Problem::Sparse { density, .. } => random_layout(&p, density, 7),
                _ => BlockLayout::causal(&p),
            };
            let mut inputs = Vec::with_capacity(sets);
            for _ in 0..sets {
                inputs.push((
                    b.upload(&rng.fill::<T>(s.q_len(), -1.0, 1.0))?,
                    b.upload(&rng.fill::<T>(s.k_len(), -1.0, 1.0))?,
                    b.upload(&rng.fill::<T>(s.v_len(), -1.0, 1.0))?,
                ));
            }
            let mut o = b.alloc::<T>(s.o_len())?;
            let mut lse = b.alloc::<f32>(s.lse_len())?;
            let mut next = 0;
            match op {
                OpKind::AttentionForward => Ok(Box::new(move || {
                    let (q, k, v) = &inputs[rotate(&inputs, &mut next)];
                    b.attention_forward(&p, q, k, v, &mut o, &mut lse)
                })),
                OpKind::SparseForward => {
                    let dl = b.upload_layout(&layout)?;
                    Ok(Box::new(move || {
                        let (q, k, v) = &inputs[rotate(&inputs, &mut next)];
                        b.sparse_attention_forward(
                            &p,
                            &dl,
                            q,
                            k,
                            v,
                            SparseEpilogue::none(),
                            &mut o,
                            &mut lse,
                        )
                    }))
                }
                OpKind::BlockTopk => {
                    let keep = layout.max_blocks().saturating_sub(2);
                    let topk = TopkParams {
                        keep,
                        sink: 1,
                        local: 1,
                    };
                    Ok(Box::new(move || {
                        let (q, k, _) = &inputs[rotate(&inputs, &mut next)];
                        let chosen: DeviceLayout<B> = b.block_topk(&p, &topk, q, k)?;
                        std::hint::black_box(&chosen);
                        Ok(())
                    }))
                }
                _ => {
                    // Backward: each set gets its own O, LSE (from a forward) and dO.
                    let sparse = op == OpKind::SparseBackward;
                    let dl = b.upload_layout(&layout)?;
                    let dl_t = b.upload_layout(&layout.transpose())?;
                    let mut saved = Vec::with_capacity(sets);
                    for (q, k, v) in &inputs {
                        let mut o = b.alloc::<T>(s.o_len())?;
                        let mut lse = b.alloc::<f32>(s.lse_len())?;
                        if sparse {
                            b.sparse_attention_forward(
                                &p,
                                &dl,
                                q,
                                k,
                                v,
                                SparseEpilogue::none(),
                                &mut o,
                                &mut lse,
                            )?;
                        } else {
                            b.attention_forward(&p, q, k, v, &mut o, &mut lse)?;
                        }
                        let d_o = b.upload(&rng.fill::<T>(s.o_len(), -1.0, 1.0))?;
                        saved.push((o, lse, d_o));
                    }
                    let mut dq = b.alloc::<T>(s.q_len())?;
                    let mut dk = b.alloc::<T>(s.k_len())?;
                    let mut dv = b.alloc::<T>(s.v_len())?;
                    Ok(Box::new(move || {
                        let i = rotate(&inputs, &mut next);
                        let (q, k, v) = &inputs[i];
                        let (o, lse, d_o) = &saved[i];
                        if sparse {
                            b.sparse_attention_backward(
                                &p, &dl, &dl_t, q, k, v, o, d_o, lse, &mut dq, &mut dk, &mut dv,
                            )
                        } else {
                            b.attention_backward(
                                &p, q, k, v, o, d_o, lse, &mut dq, &mut dk, &mut dv,
                            )
                        }
                    }))
                }
            }
        }
        OpKind::GrKanForward | OpKind::GrKanBackward => {
            let p = problem
                .grkan_params()
                .ok_or_else(|| mismatch(op, problem))?;
            // Identity-initialised coefficients, perturbed so that every term is live.
            let (mut a, mut bc) = grkan_init::identity(p.groups, p.num_degree, p.den_degree);
            a.iter_mut().for_each(|v| *v += rng.next(-0.1, 0.1));
            bc.iter_mut().for_each(|v| *v += rng.next(-0.1, 0.1));
            let (a, bc) = (b.upload(&a)?, b.upload(&bc)?);
            let mut inputs = Vec::with_capacity(sets);
            for _ in 0..sets {
                let x = b.upload(&rng.fill::<T>(p.x_len(), -3.0, 3.0))?;
                let dy = if op == OpKind::GrKanBackward {
                    Some(b.upload(&rng.fill::<T>(p.x_len(), -1.0, 1.0))?)
                } else {
                    None
                };
                inputs.push((x, dy));
            }
            let mut out = b.alloc::<T>(p.x_len())?;
            let mut da = b.alloc::<f32>(p.a_len())?;
            let mut db = b.alloc::<f32>(p.b_len())?;
            let mut next = 0;
            Ok(Box::new(move || {
                let (x, dy) = &inputs[rotate(&inputs, &mut next)];
                match dy {
                    None => b.grkan_forward(&p, x, &a, &bc, &mut out),
                    Some(dy) => b.grkan_backward(&p, x, &a, &bc, dy, &mut out, &mut da, &mut db),
                }
            }))
        }
        OpKind::GumbelForward | OpKind::GumbelBackward => {
            let p: GumbelParams = problem
                .gumbel_params()
                .ok_or_else(|| mismatch(op, problem))?;
            let n = p.len();
            let mut out = b.alloc::<T>(n)?;
            let mut next = 0;
            if op == OpKind::GumbelForward {
                let inputs = (0..sets)
                    .map(|_| b.upload(&rng.fill::<T>(n, -4.0, 4.0)))
                    .collect::<Result<Vec<_>>>()?;
                Ok(Box::new(move || {
                    let logits = &inputs[rotate(&inputs, &mut next)];
                    b.gumbel_softmax_forward(&p, logits, &mut out, None)
                }))
            } else {
                let mut inputs = Vec::with_capacity(sets);
                for _ in 0..sets {
                    let logits = b.upload(&rng.fill::<T>(n, -4.0, 4.0))?;
                    let mut y_soft = b.alloc::<f32>(n)?;
                    b.gumbel_softmax_forward(&p, &logits, &mut out, Some(&mut y_soft))?;
                    inputs.push((y_soft, b.upload(&rng.fill::<T>(n, -1.0, 1.0))?));
                }
                Ok(Box::new(move || {
                    let (y_soft, dy) = &inputs[rotate(&inputs, &mut next)];
                    b.gumbel_softmax_backward(&p, y_soft, dy, &mut out)
                }))
            }
        }
        OpKind::GumbelNoise => {
            let Problem::Noise { elements } = *problem else {
                return Err(mismatch(op, problem));
            };
            let mut out = b.alloc::<f32>(elements)?;
            let mut offset = 0u64;
            Ok(Box::new(move || {
                offset += 1;
                b.gumbel_noise(0x5eed, offset, &mut out)
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flashneck_core::{AttentionParams, AttentionShape};

    #[test]
    fn rotation_only_when_inputs_fit_in_cache() {
        assert_eq!(input_sets(64e6, 32 << 20), 1);
        assert_eq!(input_sets(1e6, 32 << 20), 8);
        assert_eq!(input_sets(20e6, 32 << 20), 4);
    }

    #[test]
    fn random_layouts_keep_the_density_and_the_diagonal() {
        let p = AttentionParams::new(AttentionShape::mha(1, 2, 2048, 2048, 64));
        let l = random_layout(&p, 0.25, 3);
        for qb in 0..l.rows() {
            let row = l.row(0, 1, qb);
            assert_eq!(row.len(), 8);
            assert!(row.contains(&(qb as u32)), "{row:?}");
        }
        let c = AttentionParams::new(AttentionShape::mha(1, 1, 300, 300, 64)).with_causal(true);
        let l = random_layout(&c, 0.5, 3);
        assert!(l.check_forward(&c).is_ok());
        assert_eq!(l.row(0, 0, 0), &[0]);
    }
}
