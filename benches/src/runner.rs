//! The bench loop, generic over the backend: for each case, warm up, then time our call and the
//! peer's in alternating rounds, and turn the medians into rates, fractions of the device's
//! limits and a speedup over the peer.

use crate::calls;
use crate::cases::{self, Case, Problem, Profile};
use crate::peer::{self, Peer};
use crate::progress::Progress;
use crate::results::{BackendResults, CaseResult, PeerResult, Status};
use crate::stats::Summary;
use crate::target::BenchTarget;
use flashneck_core::{DType, Error, OpKind};
use std::time::Instant;

/// Rounds of alternation between our runs and the peer's.
const ROUNDS: usize = 5;

/// What to run.
#[derive(Clone, Debug)]
pub struct Selection {
    pub profile: Profile,
    /// Only these ops (all when empty).
    pub ops: Vec<OpKind>,
    /// Only these element types (when empty: f32 on the CPU, all three on GPUs and in `full`).
    pub dtypes: Vec<DType>,
}

/// The cases one backend runs under `sel`. `gpu` picks the GPU sizes; `software` (a GPU API
/// emulated on the CPU, such as lavapipe) runs the smoke sizes under `--quick`, which keeps the
/// default run within minutes: its speed says nothing about GPUs anyway.
pub fn cases_for(sel: &Selection, gpu: bool, software: bool) -> Vec<Case> {
    let sizes = if software && sel.profile == Profile::Quick {
        Profile::Smoke
    } else {
        sel.profile
    };
    let ops: Vec<OpKind> = if sel.ops.is_empty() {
        OpKind::ALL.to_vec()
    } else {
        sel.ops.clone()
    };
    let dtypes: Vec<DType> = if !sel.dtypes.is_empty() {
        sel.dtypes.clone()
    } else if gpu || sel.profile == Profile::Full {
        DType::ALL.to_vec()
    } else {
        vec![DType::F32]
    };
    let mut v = Vec::new();
    for &op in &ops {
        // The raw noise is f32 whatever the dtype: bench it once.
        let op_dtypes = if op == OpKind::GumbelNoise {
            &[DType::F32][..]
        } else {
            &dtypes[..]
        };
        for &dt in op_dtypes {
            for p in cases::problems(op, sizes, gpu) {
                v.push(Case::new(op, dt, p));
            }
        }
    }
    v
}

/// The pace of a whole run: the profile's seconds per case and side, shortened so that every
/// case still to run fits before an optional deadline (`--time-budget`). A run that must end
/// before an outer time limit (the GPU check's) writes its reports instead of being killed.
#[derive(Clone, Debug)]
pub struct Pace {
    profile: Profile,
    deadline: Option<Instant>,
    /// Cases not yet started, over every backend of the run.
    remaining: usize,
}

/// The share of the time left that measured runs may take; the rest goes to warm-ups, inputs,
/// the peer's set-up and the limits measured at the end of each backend.
const MEASURED_SHARE: f64 = 0.5;

impl Pace {
    pub fn new(profile: Profile, budget_s: Option<f64>, cases: usize) -> Self {
        Pace {
            profile,
            deadline: budget_s.map(|s| Instant::now() + std::time::Duration::from_secs_f64(s)),
            remaining: cases,
        }
    }

    /// The time the next case may take; `None` once the deadline has passed. Counts the case
    /// as started.
    fn next_case(&mut self) -> Option<Allowance> {
        let cases = self.remaining.max(1) as f64;
        self.remaining = self.remaining.saturating_sub(1);
        let full = self.profile.seconds_per_case();
        match self.deadline {
            None => Some(Allowance {
                per_side_s: full,
                cap_s: None,
            }),
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now()).as_secs_f64();
                (left > 0.0).then(|| Allowance {
                    per_side_s: full.min(left * MEASURED_SHARE / (2.0 * cases)),
                    cap_s: Some(left * MEASURED_SHARE / 2.0),
                })
            }
        }
    }
}

/// The time one case may take, per side (ours, the peer's).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Allowance {
    /// Seconds of measured runs aimed at.
    pub per_side_s: f64,
    /// Under a deadline, the most a side may take, even if that means fewer runs than the
    /// profile's minimum (never fewer than one): a call far slower than expected must not run
    /// the bench past its deadline.
    pub cap_s: Option<f64>,
}

impl Allowance {
    /// The profile's own time per case, no deadline.
    pub fn unbounded(profile: Profile) -> Self {
        Allowance {
            per_side_s: profile.seconds_per_case(),
            cap_s: None,
        }
    }
}

/// How many timed runs fit the allowance, given one run's time, within the profile's bounds
/// (and below the allowance's cap, which wins over the profile's minimum).
fn runs_for(profile: Profile, allow: Allowance, one_run_s: f64) -> usize {
    let n = if one_run_s > 0.0 {
        (allow.per_side_s / one_run_s).ceil() as usize
    } else {
        profile.max_runs()
    };
    let n = n.clamp(profile.min_runs(), profile.max_runs());
    match allow.cap_s {
        Some(cap) if one_run_s > 0.0 => n.min(((cap / one_run_s).floor() as usize).max(1)),
        _ => n,
    }
}

/// Why a case does not run on `b`, when the backend says so up front.
fn unsupported_reason<B: BenchTarget>(
    b: &B,
    op: OpKind,
    dtype: DType,
    p: &Problem,
) -> Option<String> {
    let info = b.info();
    if !info.supports(op, dtype) {
        return Some(format!(
            "{} has no {} kernel for {dtype}",
            info.name,
            op.name()
        ));
    }
    if let Some(ap) = p.attention_params() {
        let s = ap.shape;
        if !info.head_dims.contains(s.head_dim, s.head_dim_v) {
            return Some(format!(
                "{} does not take head dim {}",
                info.name, s.head_dim
            ));
        }
    }
    None
}

/// Run every case of `cases` on `b` and collect the results. `peer` is used when present.
pub fn run_backend<B: BenchTarget>(
    b: &B,
    sel: &Selection,
    cases: &[Case],
    threads: usize,
    mut peer: Option<&mut Peer>,
    pace: &mut Pace,
    progress: &mut Progress,
) -> BackendResults {
    let info = b.info();
    // Limits before and after the cases, the best of each kept: a ceiling measured while
    // something else loads the machine would flatter every op.
    progress.note(&format!("{}: measuring the device's limits", info.name));
    let before = b.measure_limits();
    let mut out = Vec::with_capacity(cases.len());
    for case in cases {
        progress.start(&info.name, &case.id());
        let r = match pace.next_case() {
            Some(allow) => run_case(b, sel.profile, allow, case, threads, peer.as_deref_mut()),
            None => CaseResult::skipped(
                case.clone(),
                case.op_kind()
                    .zip(case.dtype())
                    .map_or_else(Default::default, |(op, dt)| {
                        cases::work(op, dt, &case.problem)
                    }),
                Status::OutOfTime,
                "not run: the --time-budget ran out".to_string(),
            ),
        };
        progress.done(&r);
        out.push(r);
    }
    progress.note(&format!(
        "{}: measuring the device's limits again",
        info.name
    ));
    let limits = before.best(&b.measure_limits());
    for r in &mut out {
        r.apply_limits(&limits);
    }
    BackendResults {
        name: info.name,
        device: info.device,
        limits,
        cases: out,
    }
}

/// Run one case: ours (and the peer's, interleaved), each side's measured runs taking about
/// the allowance (within the profile's bounds on the number of runs). Rates are filled in later, by
/// [`CaseResult::apply_limits`].
pub fn run_case<B: BenchTarget>(
    b: &B,
    profile: Profile,
    allow: Allowance,
    case: &Case,
    threads: usize,
    peer: Option<&mut Peer>,
) -> CaseResult {
    let (Some(op), Some(dtype)) = (case.op_kind(), case.dtype()) else {
        let msg = format!("unknown op or dtype: {} {}", case.op, case.dtype);
        return CaseResult::skipped(case.clone(), Default::default(), Status::Failed, msg);
    };
    let work = cases::work(op, dtype, &case.problem);
    let skipped = |e: Error| {
        let status = match e {
            Error::Unsupported { .. } => Status::Unsupported,
            _ => Status::Failed,
        };
        CaseResult::skipped(case.clone(), work, status, e.to_string())
    };
    if let Some(why) = unsupported_reason(b, op, dtype, &case.problem) {
        return CaseResult::skipped(case.clone(), work, Status::Unsupported, why);
    }
    let (mut call, sets) = match calls::prepare(b, op, dtype, &case.problem, b.cache_bytes()) {
        Ok(c) => c,
        Err(e) => return skipped(e),
    };
    // Warm-up: one call per input set (first touch, kernel compilation, caches), or a single
    // call when calls are so slow that more would eat the case's budget.
    let mut warm = f64::INFINITY;
    for i in 0..sets.max(1) {
        match b.time(&mut call) {
            Ok(t) => warm = warm.min(t),
            Err(e) => return skipped(e),
        }
        if i == 0 && warm * sets as f64 > allow.per_side_s {
            break;
        }
    }
    let ours_runs = runs_for(profile, allow, warm);

    // The peer: set up the same case, then alternate rounds with ours.
    let id = case.id();
    let mut peer_state = match (peer, b.peer_device()) {
        (Some(p), Some(device)) if peer::has_peer(&case.op) => {
            let setup = if device == "cuda" && !p.cuda {
                Err("the peer's torch has no CUDA".to_string())
            } else {
                p.setup(&id, case, device, threads)
            };
            match setup {
                Ok((name, warm_s)) => {
                    Some((p, name, runs_for(profile, allow, warm_s), Vec::new(), None))
                }
                Err(e) => Some((p, String::new(), 0, Vec::new(), Some(e))),
            }
        }
        _ => None,
    };
    let mut ours = Vec::with_capacity(ours_runs);
    let rounds = ROUNDS.min(ours_runs);
    for round in 0..rounds {
        let share = |total: usize| total / rounds + usize::from(round < total % rounds);
        for _ in 0..share(ours_runs) {
            match b.time(&mut call) {
                Ok(t) => ours.push(t),
                Err(e) => return skipped(e),
            }
        }
        if let Some((p, _, peer_runs, times, err @ None)) = peer_state.as_mut() {
            let n = share(*peer_runs);
            if n > 0 {
                match p.run(&id, n) {
                    Ok(t) => times.extend(t),
                    Err(e) => *err = Some(e),
                }
            }
        }
    }
    drop(call);

    let time = Summary::of(&ours);
    let median = time.as_ref().map_or(f64::NAN, |s| s.median_s);
    let peer = peer_state.map(|(p, name, _, times, err)| {
        p.drop_case(&id);
        let t = Summary::of(&times);
        PeerResult {
            name,
            speedup: t.as_ref().map(|s| s.median_s / median),
            time: t,
            error: err,
        }
    });
    CaseResult {
        case: case.clone(),
        status: Status::Ok,
        message: None,
        work,
        input_sets: sets,
        time,
        gbs: None,
        tflops: None,
        fraction_of_copy: None,
        fraction_of_gemm: None,
        bound: None,
        peer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_counts_follow_the_budget() {
        let a = Allowance::unbounded(Profile::Quick);
        assert_eq!(runs_for(Profile::Quick, a, 10.0), Profile::Quick.min_runs());
        assert_eq!(runs_for(Profile::Quick, a, 1e-9), Profile::Quick.max_runs());
        assert_eq!(runs_for(Profile::Quick, a, 0.06), 10);
        // A cap wins over the minimum, down to one run.
        let capped = Allowance {
            cap_s: Some(2.5),
            ..a
        };
        assert_eq!(runs_for(Profile::Quick, capped, 1.0), 2);
        assert_eq!(runs_for(Profile::Quick, capped, 10.0), 1);
    }

    #[test]
    fn a_deadline_shortens_cases_and_then_stops_them() {
        let mut unbounded = Pace::new(Profile::Standard, None, 3);
        for _ in 0..5 {
            assert_eq!(
                unbounded.next_case(),
                Some(Allowance::unbounded(Profile::Standard))
            );
        }
        // 10 s for 100 cases: half of it measured, over two sides: 0.025 s per side.
        let mut tight = Pace::new(Profile::Standard, Some(10.0), 100);
        let a = tight.next_case().expect("before the deadline");
        assert!(a.per_side_s > 0.02 && a.per_side_s <= 0.025, "{a:?}");
        assert!(a.cap_s.is_some_and(|c| c > 2.0 && c <= 2.5), "{a:?}");
        let mut spent = Pace::new(Profile::Standard, Some(0.0), 3);
        assert_eq!(spent.next_case(), None);
    }

    #[test]
    fn cpu_cases_default_to_f32_and_gpu_cases_to_every_dtype() {
        let sel = Selection {
            profile: Profile::Quick,
            ops: vec![OpKind::GrKanForward],
            dtypes: vec![],
        };
        assert!(
            cases_for(&sel, false, false)
                .iter()
                .all(|c| c.dtype == "f32")
        );
        let gpu = cases_for(&sel, true, false);
        for dt in ["f32", "f16", "bf16"] {
            assert!(gpu.iter().any(|c| c.dtype == dt));
        }
    }
}
