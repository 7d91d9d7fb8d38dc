//! The CUDA attention backward on the emulated device: what the conformance suite does not
//! guarantee. The suite (tests/conformance_emu.rs) checks the backward always after the
//! backend's own forward (`every_head_dim` for each head dim and dtype), and checks bitwise
//! determinism. Here, with `O` and `LSE` from the CPU backend (so that the backward is checked
//! on its own, and an error the forward and backward share cannot cancel), both head dims run
//! in every dtype, dense and sparse, each on a shape
//! with several 64-row blocks, ragged ends, `Lq ≠ Lk`, GQA and causal (fully masked rows where
//! `Lq > Lk`), against the f64 oracle with NaN-poisoned outputs; and head dims without a
//! compiled kernel are refused with `Unsupported` before any launch. The kernels give the same
//! bits in each of the emulator's schedules, which shows a missing barrier (see [`SCHEDULES`]).

use flashneck_conformance::sparse::random_layout;
use flashneck_conformance::{assert_close, fresh_rng, nan_buffer, random_input};
use flashneck_core::{
    AttentionOps, AttentionParams, AttentionShape, Backend, BlockLayout, Element, Error,
    SparseAttentionOps, SparseEpilogue,
};
use flashneck_cpu::CpuBackend;
use flashneck_cpu::oracle::attention as oracle;
use flashneck_cuda::CudaBackend;
use flashneck_cuda::emu::{self, Schedule};
use rand::rngs::StdRng;

/// `(o, lse)` of the CPU backend, dense or over `layout`.
fn cpu_forward<T: Element>(
    p: &AttentionParams,
    layout: Option<&BlockLayout>,
    q: &[T],
    k: &[T],
    v: &[T],
) -> (Vec<T>, Vec<f32>) {
    let cpu = CpuBackend::new();
    let s = &p.shape;
    let (q, k, v) = (
        cpu.upload(q).unwrap(),
        cpu.upload(k).unwrap(),
        cpu.upload(v).unwrap(),
    );
    let mut o = cpu.alloc::<T>(s.o_len()).unwrap();
    let mut lse = cpu.alloc::<f32>(s.lse_len()).unwrap();
    match layout {
        None => cpu.attention_forward(p, &q, &k, &v, &mut o, &mut lse),
        Some(l) => {
            let dl = cpu.upload_layout(l).unwrap();
            cpu.sparse_attention_forward(
                p,
                &dl,
                &q,
                &k,
                &v,
                SparseEpilogue::none(),
                &mut o,
                &mut lse,
            )
        }
    }
    .unwrap();
    (cpu.download(&o).unwrap(), cpu.download(&lse).unwrap())
}

/// The emulated CUDA backward: `(dq, dk, dv)`.
#[allow(clippy::too_many_arguments)]
fn cuda_backward<T: Element>(
    b: &CudaBackend,
    p: &AttentionParams,
    layout: Option<&BlockLayout>,
    q: &[T],
    k: &[T],
    v: &[T],
    o: &[T],
    d_o: &[T],
    lse: &[f32],
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let s = &p.shape;
    let up = |x: &[T]| b.upload(x).unwrap();
    let (q, k, v, o, d_o) = (up(q), up(k), up(v), up(o), up(d_o));
    let lse = b.upload(lse).unwrap();
    let mut dq = nan_buffer::<_, T>(b, s.q_len());
    let mut dk = nan_buffer::<_, T>(b, s.k_len());
    let mut dv = nan_buffer::<_, T>(b, s.v_len());
    match layout {
        None => b.attention_backward(p, &q, &k, &v, &o, &d_o, &lse, &mut dq, &mut dk, &mut dv),
        Some(l) => {
            let dl = b.upload_layout(l).unwrap();
            let dlt = b.upload_layout(&l.transpose()).unwrap();
            b.sparse_attention_backward(
                p, &dl, &dlt, &q, &k, &v, &o, &d_o, &lse, &mut dq, &mut dk, &mut dv,
            )
        }
    }
    .unwrap();
    (
        b.download(&dq).unwrap(),
        b.download(&dk).unwrap(),
        b.download(&dv).unwrap(),
    )
}

/// Random inputs of one case, with `O` and `LSE` from the CPU forward, and their f64 copies.
struct Case<T> {
    q: (Vec<T>, Vec<f64>),
    k: (Vec<T>, Vec<f64>),
    v: (Vec<T>, Vec<f64>),
    d_o: (Vec<T>, Vec<f64>),
    o: Vec<T>,
    lse: Vec<f32>,
}

impl<T: Element> Case<T> {
    fn random(p: &AttentionParams, layout: Option<&BlockLayout>, rng: &mut StdRng) -> Self {
        let s = &p.shape;
        let q = random_input::<T>(rng, s.q_len(), 1.0);
        let k = random_input::<T>(rng, s.k_len(), 1.0);
        let v = random_input::<T>(rng, s.v_len(), 1.0);
        let d_o = random_input::<T>(rng, s.o_len(), 1.0);
        let (o, lse) = cpu_forward(p, layout, &q.0, &k.0, &v.0);
        Case {
            q,
            k,
            v,
            d_o,
            o,
            lse,
        }
    }

    /// The emulated CUDA backward of this case.
    fn cuda(
        &self,
        b: &CudaBackend,
        p: &AttentionParams,
        layout: Option<&BlockLayout>,
    ) -> (Vec<T>, Vec<T>, Vec<T>) {
        let (q, k, v, d_o) = (&self.q.0, &self.k.0, &self.v.0, &self.d_o.0);
        cuda_backward(b, p, layout, q, k, v, &self.o, d_o, &self.lse)
    }

    /// `(dq, dk, dv)` against the f64 oracle.
    fn assert_matches_oracle(
        &self,
        p: &AttentionParams,
        layout: Option<&BlockLayout>,
        got: &(Vec<T>, Vec<T>, Vec<T>),
        seed: u64,
    ) {
        let o64: Vec<f64> = self.o.iter().map(|x| x.to_f64()).collect();
        let lse64: Vec<f64> = self.lse.iter().map(|&x| x as f64).collect();
        let (q, k, v, d_o) = (&self.q.1, &self.k.1, &self.v.1, &self.d_o.1);
        let (dq_ref, dk_ref, dv_ref) =
            oracle::attention_backward(p, layout, q, k, v, &o64, d_o, &lse64);
        let tol = T::DTYPE.reduction_tolerance();
        let tag = format!("{} sparse={} {p:?}", T::DTYPE, layout.is_some());
        assert_close(&format!("{tag}: dq"), &got.0, &dq_ref, tol, seed);
        assert_close(&format!("{tag}: dk"), &got.1, &dk_ref, tol, seed);
        assert_close(&format!("{tag}: dv"), &got.2, &dv_ref, tol, seed);
    }
}

/// One case against the oracle.
fn check<T: Element>(
    p: &AttentionParams,
    layout: Option<&BlockLayout>,
    rng: &mut StdRng,
    seed: u64,
) {
    let case = Case::<T>::random(p, layout, rng);
    let b = CudaBackend::emulated().unwrap();
    let got = case.cuda(&b, p, layout);
    case.assert_matches_oracle(p, layout, &got, seed);
}

fn params(
    b: usize,
    hq: usize,
    hkv: usize,
    lq: usize,
    lk: usize,
    d: usize,
    causal: bool,
) -> AttentionParams {
    AttentionParams::new(AttentionShape::gqa(b, hq, hkv, lq, lk, d)).with_causal(causal)
}

/// Both head dims, dense and over a random layout: `Lq > Lk` causal (rows 0..Lq−Lk see no key)
/// with GQA 2:1, and `Lq < Lk` causal over a random layout with GQA 4:1. Then the thin edges of
/// the tiles, dense: one query row (a streamed query tile of one real row, the rest zero-padded)
/// under GQA 8:1, and fewer keys than a streamed key tile (16 or 32 rows) with most rows fully
/// masked.
fn cases<T: Element>() {
    let (mut rng, seed) = fresh_rng();
    for d in [64, 128] {
        check::<T>(&params(2, 4, 2, 150, 70, d, true), None, &mut rng, seed);
        let p = params(1, 4, 1, 100, 170, d, true);
        let layout = random_layout(&p, &mut rng, 0.5);
        check::<T>(&p, Some(&layout), &mut rng, seed);
        check::<T>(&params(1, 8, 1, 1, 130, d, true), None, &mut rng, seed);
        check::<T>(&params(1, 2, 1, 20, 5, d, true), None, &mut rng, seed);
    }
}

#[test]
fn both_head_dims_f32() {
    cases::<f32>();
}
#[test]
fn both_head_dims_f16() {
    cases::<half::f16>();
}
#[test]
fn both_head_dims_bf16() {
    cases::<half::bf16>();
}

/// `D = 96` and `D ≠ Dv` are valid shapes without a kernel: `Unsupported`, dense and sparse,
/// and the outputs stay untouched (nothing was launched).
#[test]
fn head_dims_without_kernel_are_unsupported() {
    let b = CudaBackend::emulated().unwrap();
    let mut shapes = vec![AttentionShape::mha(1, 2, 70, 65, 96)];
    let mut s = AttentionShape::mha(1, 2, 70, 65, 64);
    s.head_dim_v = 128;
    shapes.push(s);
    for s in shapes {
        let p = AttentionParams::new(s);
        let buf = |n: usize| b.upload(&vec![1.0f32; n]).unwrap();
        let (q, k, v, o, d_o, lse) = (
            buf(s.q_len()),
            buf(s.k_len()),
            buf(s.v_len()),
            buf(s.o_len()),
            buf(s.o_len()),
            buf(s.lse_len()),
        );
        let (mut dq, mut dk, mut dv) = (buf(s.q_len()), buf(s.k_len()), buf(s.v_len()));
        let dense = b.attention_backward(&p, &q, &k, &v, &o, &d_o, &lse, &mut dq, &mut dk, &mut dv);
        let l = BlockLayout::dense(&p);
        let (dl, dlt) = (
            b.upload_layout(&l).unwrap(),
            b.upload_layout(&l.transpose()).unwrap(),
        );
        let sparse = b.sparse_attention_backward(
            &p, &dl, &dlt, &q, &k, &v, &o, &d_o, &lse, &mut dq, &mut dk, &mut dv,
        );
        for r in [dense, sparse] {
            assert!(matches!(r, Err(Error::Unsupported { .. })), "{s:?}: {r:?}");
        }
        for out in [&dq, &dk, &dv] {
            assert!(
                b.download(out).unwrap().iter().all(|&x| x == 1.0),
                "{s:?}: an output was written"
            );
        }
    }
}

/// `Lq = 0` (the suite covers `Lk = 0` and `B = 0`): no query sees a key, so `dK` and `dV` are
/// written as zeros over NaN-poisoned buffers, dense and sparse, both head dims.
#[test]
fn no_queries_gives_zero_dk_dv() {
    let b = CudaBackend::emulated().unwrap();
    let (mut rng, seed) = fresh_rng();
    for d in [64, 128] {
        let p = params(2, 2, 1, 0, 70, d, true);
        let s = &p.shape;
        let (k, _) = random_input::<half::bf16>(&mut rng, s.k_len(), 1.0);
        let (v, _) = random_input::<half::bf16>(&mut rng, s.v_len(), 1.0);
        let layout = BlockLayout::causal(&p);
        for l in [None, Some(&layout)] {
            let (dq, dk, dv) = cuda_backward(&b, &p, l, &[], &k, &v, &[], &[], &[]);
            assert!(dq.is_empty());
            let zeros = vec![0.0; s.k_len()];
            assert_close(
                &format!("dk, D = {d}, sparse = {}", l.is_some()),
                &dk,
                &zeros,
                0.0,
                seed,
            );
            assert_close(
                &format!("dv, D = {d}, sparse = {}", l.is_some()),
                &dv,
                &zeros,
                0.0,
                seed,
            );
        }
    }
}

/// The emulator's schedules (docs/cuda-emulator.md, "Races") that [`schedules`] compares. A
/// `__syncthreads` missing between a shared-memory write and another thread's read shows in one
/// of them (checked by deleting each barrier in turn): the tensor-core kernels' barriers only in
/// the run-ahead ones, where a warp runs past its collectives (ldmatrix, mma) before the next
/// warp starts. The other tests run in the default (increasing) order only.
const SCHEDULES: [Schedule; 4] = [
    Schedule::Forward,
    Schedule::Reverse,
    Schedule::ForwardRunAhead,
    Schedule::ReverseRunAhead,
];

/// Every schedule of [`SCHEDULES`] on the cases of [`cases`]: the same bits, and right.
fn schedules<T: Element>() {
    let (mut rng, seed) = fresh_rng();
    let b = CudaBackend::emulated().unwrap();
    for d in [64, 128] {
        let dense = params(1, 4, 2, 150, 70, d, true);
        let sparse = params(1, 4, 1, 100, 170, d, true);
        let layout = random_layout(&sparse, &mut rng, 0.5);
        for (p, l) in [(&dense, None), (&sparse, Some(&layout))] {
            let case = Case::<T>::random(p, l, &mut rng);
            let run = |schedule| emu::with_schedule(schedule, || case.cuda(&b, p, l));
            let first = run(SCHEDULES[0]);
            case.assert_matches_oracle(p, l, &first, seed);
            for schedule in &SCHEDULES[1..] {
                let other = run(*schedule);
                for (name, x, y) in [
                    ("dq", &first.0, &other.0),
                    ("dk", &first.1, &other.1),
                    ("dv", &first.2, &other.2),
                ] {
                    let differ = x
                        .iter()
                        .zip(y)
                        .filter(|(a, b)| a.to_f64().to_bits() != b.to_f64().to_bits());
                    assert_eq!(
                        differ.count(),
                        0,
                        "seed {seed}: {name} of {} sparse={} {p:?} differs between schedules \
                         {:?} and {schedule:?}",
                        T::DTYPE,
                        l.is_some(),
                        SCHEDULES[0]
                    );
                }
            }
        }
    }
}

#[test]
fn both_thread_orders_f32() {
    schedules::<f32>();
}
#[test]
fn both_thread_orders_f16() {
    schedules::<half::f16>();
}
#[test]
fn both_thread_orders_bf16() {
    schedules::<half::bf16>();
}
