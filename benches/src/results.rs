//! `results.json`: everything one run of the bench measured, the input of every report.

use crate::cases::{Case, Profile, Work};
use crate::stats::Summary;
use serde::{Deserialize, Serialize};

/// One run of `flashneck-bench`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Results {
    /// Format version of this file.
    pub version: u32,
    /// `git rev-parse HEAD` (with `-dirty` when the tree has changes), or `unknown`.
    pub commit: String,
    /// UTC date and time of the start of the run, RFC 3339.
    pub date: String,
    /// The host: OS, CPU model, cores, memory.
    pub machine: String,
    pub profile: Profile,
    /// Bench threads on the CPU (the CPU backend and the CPU peer use this many).
    pub threads: usize,
    /// The peer used, e.g. `torch 2.5.1 (/usr/bin/python3)`, or why there is none.
    pub peer: String,
    pub backends: Vec<BackendResults>,
}

/// Everything measured on one backend.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendResults {
    /// `BackendInfo::name`: `cpu`, `wgpu`, `cuda`.
    pub name: String,
    /// The device, in words.
    pub device: String,
    /// The device's limits, measured in this run.
    pub limits: Limits,
    pub cases: Vec<CaseResult>,
}

/// A device's ceilings, measured in the same run as the ops.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Copy bandwidth, GB/s (bytes read plus bytes written, per second).
    pub copy_gbs: Option<f64>,
    /// The compute ceiling, TFLOP/s: a dense GEMM's rate (CPU, CUDA), or the f32 FMA peak
    /// where the API reaches no GEMM unit (wgpu).
    pub gemm_tflops: Option<f64>,
    /// Element type of that ceiling (`f32` on the CPU and wgpu, `bf16` on CUDA).
    pub gemm_dtype: String,
    /// What the ceiling measures: `GEMM`, or `FMA peak` (independent fused multiply-adds on
    /// registers). Results recorded before this field read as `GEMM`.
    #[serde(default = "gemm_ceiling")]
    pub compute_ceiling: String,
    /// The ceiling of f32 cases where it is not the one above, TFLOP/s: on CUDA cuBLAS's f32
    /// GEMM (no tensor cores), the roof of the kernels that compute in f32 on the CUDA cores,
    /// which the bf16 tensor-core rate would put an order of magnitude too high.
    #[serde(default)]
    pub f32_gemm_tflops: Option<f64>,
    /// How they were measured.
    pub method: String,
}

fn gemm_ceiling() -> String {
    "GEMM".into()
}

/// What happened to one case.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// The backend has no kernel for this op, dtype or head dim.
    Unsupported,
    /// The op returned an error other than Unsupported.
    Failed,
    /// Not run: the run's `--time-budget` ran out before this case.
    #[serde(rename = "out_of_time")]
    OutOfTime,
}

/// One case on one backend.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CaseResult {
    pub case: Case,
    pub status: Status,
    /// Why unsupported or failed.
    pub message: Option<String>,
    pub work: Work,
    /// Input sets rotated between runs (1 = no rotation: the inputs do not fit in cache).
    pub input_sets: usize,
    pub time: Option<Summary>,
    /// Achieved rates from the median time.
    pub gbs: Option<f64>,
    pub tflops: Option<f64>,
    /// Achieved GB/s over the measured copy bandwidth.
    pub fraction_of_copy: Option<f64>,
    /// Achieved TFLOP/s over the measured compute ceiling (GEMM rate or FMA peak).
    pub fraction_of_gemm: Option<f64>,
    /// Which ceiling binds under the roofline model: `memory` when the op's arithmetic
    /// intensity is below the ridge point (compute ceiling / copy bandwidth), else `compute`.
    pub bound: Option<String>,
    pub peer: Option<PeerResult>,
}

/// The peer's timings of the same case, measured interleaved with ours.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerResult {
    /// What ran, e.g. `torch.nn.functional.scaled_dot_product_attention`.
    pub name: String,
    pub time: Option<Summary>,
    /// Peer median / our median: above 1 means flashneck is faster.
    pub speedup: Option<f64>,
    pub error: Option<String>,
}

impl Limits {
    /// The higher of each ceiling in `self` and `other` (two measurements of one device).
    pub fn best(&self, other: &Limits) -> Limits {
        let max = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        Limits {
            copy_gbs: max(self.copy_gbs, other.copy_gbs),
            gemm_tflops: max(self.gemm_tflops, other.gemm_tflops),
            gemm_dtype: self.gemm_dtype.clone(),
            compute_ceiling: self.compute_ceiling.clone(),
            f32_gemm_tflops: max(self.f32_gemm_tflops, other.f32_gemm_tflops),
            method: format!(
                "{}; the better of a measurement before and one after the cases",
                self.method
            ),
        }
    }

    /// The compute ceiling a case of element type `dtype` (its name) is measured against: the
    /// f32 one for f32 cases where there is one, else the device's.
    pub fn compute_tflops(&self, dtype: &str) -> Option<f64> {
        match self.f32_gemm_tflops {
            Some(f32_peak) if dtype == "f32" => Some(f32_peak),
            _ => self.gemm_tflops,
        }
    }
}

impl CaseResult {
    /// Fill the achieved rates and their share of `limits` from the median time (cases that
    /// did not run keep `None`).
    pub fn apply_limits(&mut self, limits: &Limits) {
        let Some(t) = &self.time else { return };
        let r = rates(
            &self.work,
            t.median_s,
            limits.copy_gbs,
            limits.compute_tflops(&self.case.dtype),
        );
        self.gbs = Some(r.gbs);
        self.tflops = Some(r.tflops);
        self.fraction_of_copy = r.fraction_of_copy;
        self.fraction_of_gemm = r.fraction_of_gemm;
        self.bound = r.bound;
    }

    /// A case that did not run.
    pub fn skipped(case: Case, work: Work, status: Status, message: String) -> Self {
        CaseResult {
            case,
            status,
            message: Some(message),
            work,
            input_sets: 0,
            time: None,
            gbs: None,
            tflops: None,
            fraction_of_copy: None,
            fraction_of_gemm: None,
            bound: None,
            peer: None,
        }
    }

    /// Arithmetic intensity, FLOP per byte.
    pub fn intensity(&self) -> f64 {
        if self.work.bytes > 0.0 {
            self.work.flops / self.work.bytes
        } else {
            0.0
        }
    }
}

/// Rates from the median time and the limits: what [`CaseResult`] reports.
#[derive(Clone, Debug, PartialEq)]
pub struct Rates {
    pub gbs: f64,
    pub tflops: f64,
    pub fraction_of_copy: Option<f64>,
    pub fraction_of_gemm: Option<f64>,
    pub bound: Option<String>,
}

/// Achieved rates of `work` done in `median_s`, and their share of the copy bandwidth
/// `copy_gbs` and the compute ceiling `peak_tflops`.
pub fn rates(work: &Work, median_s: f64, copy_gbs: Option<f64>, peak_tflops: Option<f64>) -> Rates {
    let gbs = work.bytes / median_s / 1e9;
    let tflops = work.flops / median_s / 1e12;
    let bw = copy_gbs.filter(|v| *v > 0.0);
    let peak = peak_tflops.filter(|v| *v > 0.0);
    let bound = match (bw, peak) {
        (Some(bw), Some(peak)) => {
            // FLOP per byte where the two ceilings meet.
            let ridge = peak * 1e3 / bw;
            let intensity = work.flops / work.bytes.max(f64::MIN_POSITIVE);
            Some(
                if intensity < ridge {
                    "memory"
                } else {
                    "compute"
                }
                .to_string(),
            )
        }
        (Some(_), None) => Some("memory".into()),
        (None, Some(_)) => Some("compute".into()),
        (None, None) => None,
    };
    Rates {
        gbs,
        tflops,
        fraction_of_copy: bw.map(|bw| gbs / bw),
        fraction_of_gemm: peak.map(|p| tflops / p),
        bound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_the_binding_ceiling() {
        let limits = Limits {
            copy_gbs: Some(10.0),
            gemm_tflops: Some(0.1),
            gemm_dtype: "f32".into(),
            compute_ceiling: "GEMM".into(),
            f32_gemm_tflops: None,
            method: String::new(),
        };
        let (bw, peak) = (limits.copy_gbs, limits.compute_tflops("f32"));
        // Ridge at 10 FLOP/B: 1 FLOP/B is memory-bound, 100 compute-bound.
        let mem = rates(
            &Work {
                bytes: 1e9,
                flops: 1e9,
            },
            0.2,
            bw,
            peak,
        );
        assert_eq!(mem.gbs, 5.0);
        assert_eq!(mem.fraction_of_copy, Some(0.5));
        assert_eq!(mem.bound.as_deref(), Some("memory"));
        let cmp = rates(
            &Work {
                bytes: 1e9,
                flops: 1e11,
            },
            2.0,
            bw,
            peak,
        );
        assert_eq!(cmp.tflops, 0.05);
        assert_eq!(cmp.fraction_of_gemm, Some(0.5));
        assert_eq!(cmp.bound.as_deref(), Some("compute"));
    }

    /// With an f32 ceiling (CUDA), f32 cases are measured against it and the others against
    /// the device's; a case moves from compute- to memory-bound when its ridge moves.
    #[test]
    fn f32_cases_take_the_f32_ceiling() {
        let limits = Limits {
            copy_gbs: Some(10.0),
            gemm_tflops: Some(1.0),
            gemm_dtype: "bf16".into(),
            compute_ceiling: "GEMM".into(),
            f32_gemm_tflops: Some(0.1),
            method: String::new(),
        };
        assert_eq!(limits.compute_tflops("f32"), Some(0.1));
        assert_eq!(limits.compute_tflops("bf16"), Some(1.0));
        assert_eq!(limits.compute_tflops("f16"), Some(1.0));
        let no_f32 = Limits {
            f32_gemm_tflops: None,
            ..limits.clone()
        };
        assert_eq!(no_f32.compute_tflops("f32"), Some(1.0));
        let work = Work {
            bytes: 1e9,
            flops: 5e10,
        };
        // 50 FLOP/B: above the f32 ridge (10), below the bf16 one (100).
        let f32_case = rates(&work, 1.0, limits.copy_gbs, limits.compute_tflops("f32"));
        assert_eq!(f32_case.fraction_of_gemm, Some(0.5));
        assert_eq!(f32_case.bound.as_deref(), Some("compute"));
        let bf16_case = rates(&work, 1.0, limits.copy_gbs, limits.compute_tflops("bf16"));
        assert_eq!(bf16_case.fraction_of_gemm, Some(0.05));
        assert_eq!(bf16_case.bound.as_deref(), Some("memory"));
        let best = limits.best(&Limits {
            f32_gemm_tflops: Some(0.2),
            ..limits.clone()
        });
        assert_eq!(best.f32_gemm_tflops, Some(0.2));
    }
}
