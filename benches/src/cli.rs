//! The command line of `flashneck-bench` and the whole run: find the backends, start the peer,
//! run every case, write `results.json`, `report.md` and `report.html`.

use crate::cases::Profile;
use crate::peer::Peer;
use crate::progress::Progress;
use crate::report;
use crate::results::{BackendResults, Results, Status};
use crate::runner::{self, Pace, Selection};
use crate::target::BenchTarget;
use flashneck_core::{DType, OpKind};
use std::path::{Path, PathBuf};
use std::process::Command;

pub const USAGE: &str = "\
usage: flashneck-bench [options]

  --backend LIST   backends to run, in this order, comma-separated: cpu, wgpu, cuda
                   (default: all present, in that order)
  --op LIST        ops or families to run, e.g. attention,grkan_forward,gumbel (default: all)
  --dtype LIST     element types: f32, f16, bf16 (default: f32 on the CPU, all on GPUs)
  --smoke          tiny sizes, a few runs (tests)
  --quick          scaled-down sizes (the default without a GPU)
  --standard       the standard sizes (the default with a GPU)
  --full           every standard size, longer runs, every dtype
  --time-budget S  finish within about S seconds: cases are shortened to fit, and cases that
                   no longer fit are reported as out of time (the reports are always written)
  --threads N      CPU threads for the CPU backend and the CPU peer (default: all cores)
  --no-peer        do not start the PyTorch peer
  --out DIR        where to write results.json, report.md, report.html
                   (default: target/flashneck-bench)
  --quiet          no progress on stderr, no table on stdout

The peer is the first of $FLASHNECK_PYTHON, python3 that imports torch.";

/// Parsed options.
#[derive(Clone, Debug)]
pub struct Options {
    pub backends: Vec<String>,
    pub ops: Vec<OpKind>,
    pub dtypes: Vec<DType>,
    /// `None`: quick without a GPU, standard with one.
    pub profile: Option<Profile>,
    /// Seconds the whole run may take (`--time-budget`).
    pub time_budget: Option<f64>,
    pub threads: usize,
    pub peer: bool,
    pub out: PathBuf,
    pub quiet: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            backends: Vec::new(),
            ops: Vec::new(),
            dtypes: Vec::new(),
            profile: None,
            time_budget: None,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            peer: true,
            out: PathBuf::from("target/flashneck-bench"),
            quiet: false,
        }
    }
}

/// Ops named by `s`: an exact op name, or every op whose name starts with it (`attention`,
/// `sparse`, `grkan`, `gumbel`).
fn ops_named(s: &str) -> Vec<OpKind> {
    if let Some(op) = OpKind::ALL.into_iter().find(|o| o.name() == s) {
        return vec![op];
    }
    OpKind::ALL
        .into_iter()
        .filter(|o| o.name().starts_with(s))
        .collect()
}

/// Parse the arguments (without the program name).
pub fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options::default();
    let mut it = args.iter();
    let list = |v: Option<&String>, flag: &str| -> Result<Vec<String>, String> {
        let v = v.ok_or_else(|| format!("{flag} needs a value"))?;
        Ok(v.split(',')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect())
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--backend" => {
                for b in list(it.next(), a)? {
                    if !["cpu", "wgpu", "cuda"].contains(&b.as_str()) {
                        return Err(format!("unknown backend {b:?} (cpu, wgpu, cuda)"));
                    }
                    if !o.backends.contains(&b) {
                        o.backends.push(b);
                    }
                }
            }
            "--op" => {
                for name in list(it.next(), a)? {
                    let ops = ops_named(&name);
                    if ops.is_empty() {
                        let all: Vec<&str> = OpKind::ALL.iter().map(|o| o.name()).collect();
                        return Err(format!("unknown op {name:?}; ops: {}", all.join(", ")));
                    }
                    for op in ops {
                        if !o.ops.contains(&op) {
                            o.ops.push(op);
                        }
                    }
                }
            }
            "--dtype" => {
                for name in list(it.next(), a)? {
                    let dt = DType::from_name(&name)
                        .ok_or_else(|| format!("unknown dtype {name:?} (f32, f16, bf16)"))?;
                    if !o.dtypes.contains(&dt) {
                        o.dtypes.push(dt);
                    }
                }
            }
            "--smoke" => o.profile = Some(Profile::Smoke),
            "--quick" => o.profile = Some(Profile::Quick),
            "--standard" => o.profile = Some(Profile::Standard),
            "--full" => o.profile = Some(Profile::Full),
            "--time-budget" => {
                let v = it.next().ok_or("--time-budget needs a value")?;
                o.time_budget = Some(
                    v.parse::<f64>()
                        .ok()
                        .filter(|s| s.is_finite() && *s > 0.0)
                        .ok_or_else(|| {
                            format!(
                                "--time-budget: expected a positive number of seconds, got {v:?}"
                            )
                        })?,
                );
            }
            "--threads" => {
                let v = it.next().ok_or("--threads needs a value")?;
                o.threads =
                    v.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                        format!("--threads: expected a positive number, got {v:?}")
                    })?;
            }
            "--no-peer" => o.peer = false,
            "--out" => o.out = PathBuf::from(it.next().ok_or("--out needs a value")?),
            "--quiet" => o.quiet = true,
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown option {other:?}\n\n{USAGE}")),
        }
    }
    Ok(o)
}

/// `git rev-parse HEAD`, with `-dirty` when the tree has uncommitted changes.
pub fn commit() -> String {
    // A copy of the tree without .git (the GPU bundle) says which commit it was built from.
    if let Ok(c) = std::env::var("FLASHNECK_COMMIT")
        && !c.trim().is_empty()
    {
        return c.trim().to_string();
    }
    let out = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match out(&["rev-parse", "HEAD"]) {
        Some(h) if !h.is_empty() => {
            let dirty = out(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty { format!("{h}-dirty") } else { h }
        }
        _ => "unknown".into(),
    }
}

/// Now, as RFC 3339 UTC (`2026-01-31T12:00:00Z`).
pub fn now_utc() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The host in words: OS, CPU model, cores, memory.
pub fn machine() -> String {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or_else(
            || std::env::consts::ARCH.to_string(),
            |m| m.trim().to_string(),
        );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mem_gib = read("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / (1u64 << 20) as f64);
    let os = read("/etc/os-release")
        .lines()
        .find(|l| l.starts_with("PRETTY_NAME="))
        .map(|l| {
            l.trim_start_matches("PRETTY_NAME=")
                .trim_matches('"')
                .to_string()
        })
        .unwrap_or_else(|| std::env::consts::OS.to_string());
    match mem_gib {
        Some(m) => format!("{os}; {cpu}; {cores} cores; {m:.0} GiB"),
        None => format!("{os}; {cpu}; {cores} cores"),
    }
}

/// One backend found on this machine, ready to run (boxed: the backends differ in size).
enum Found {
    Cpu(Box<flashneck_cpu::CpuBackend>),
    #[cfg(feature = "wgpu")]
    Wgpu(Box<flashneck_wgpu::WgpuBackend>),
    #[cfg(feature = "cuda")]
    Cuda(Box<flashneck_cuda::CudaBackend>),
}

/// Evaluate `$body` with `$b` bound to (a reference to) the backend inside a [`Found`],
/// whatever its type.
macro_rules! on_backend {
    ($found:expr, $b:ident => $body:expr) => {
        match $found {
            Found::Cpu(boxed) => {
                let $b = &**boxed;
                $body
            }
            #[cfg(feature = "wgpu")]
            Found::Wgpu(boxed) => {
                let $b = &**boxed;
                $body
            }
            #[cfg(feature = "cuda")]
            Found::Cuda(boxed) => {
                let $b = &**boxed;
                $body
            }
        }
    };
}

/// Why a backend is missing from this build.
#[cfg_attr(all(feature = "wgpu", feature = "cuda"), allow(dead_code))]
fn not_built(name: &str) -> String {
    format!(
        "{name}: left out: not built into this flashneck-bench \
         (feature `{name}` of flashneck-benches)"
    )
}

/// The backends present and wanted, and a line for each one left out. They run in the order
/// `--backend` names them (so a GPU check can put the backend whose figures matter most first),
/// else CPU, wgpu, CUDA.
fn discover(o: &Options) -> (Vec<Found>, Vec<String>) {
    let default = ["cpu", "wgpu", "cuda"].map(String::from);
    let order = if o.backends.is_empty() {
        &default[..]
    } else {
        &o.backends[..]
    };
    let mut found = Vec::new();
    let mut notes = Vec::new();
    for name in order {
        match name.as_str() {
            "cpu" => match flashneck_cpu::CpuBackend::with_threads(o.threads) {
                Ok(b) => found.push(Found::Cpu(Box::new(b))),
                Err(e) => notes.push(format!("cpu: {e}")),
            },
            "wgpu" => {
                #[cfg(feature = "wgpu")]
                match flashneck_wgpu::WgpuBackend::new() {
                    Ok(b) => found.push(Found::Wgpu(Box::new(b))),
                    Err(e) => notes.push(format!("wgpu: left out: {e}")),
                }
                #[cfg(not(feature = "wgpu"))]
                notes.push(not_built("wgpu"));
            }
            "cuda" => {
                #[cfg(feature = "cuda")]
                {
                    if flashneck_cuda::CudaBackend::driver_present() {
                        match flashneck_cuda::CudaBackend::new(0) {
                            Ok(b) => found.push(Found::Cuda(Box::new(b))),
                            Err(e) => notes.push(format!("cuda: left out: {e}")),
                        }
                    } else {
                        notes.push(
                            "cuda: left out: no CUDA driver (libcuda) on this machine".into(),
                        );
                    }
                }
                #[cfg(not(feature = "cuda"))]
                notes.push(not_built("cuda"));
            }
            // `parse` admits only the names above.
            other => notes.push(format!("{other}: unknown backend")),
        }
    }
    (found, notes)
}

/// Run the bench and write the reports into `o.out`; returns the results.
pub fn run(o: &Options) -> Result<Results, String> {
    std::fs::create_dir_all(&o.out).map_err(|e| format!("cannot create {:?}: {e}", o.out))?;
    let (found, notes) = discover(o);
    let mut progress_notes = notes;
    if found.is_empty() {
        return Err(format!("no backend to run: {}", progress_notes.join("; ")));
    }
    let any_gpu = found.iter().any(|f| on_backend!(f, b => b.is_gpu()));
    let profile = o.profile.unwrap_or(if any_gpu {
        Profile::Standard
    } else {
        Profile::Quick
    });
    let sel = Selection {
        profile,
        ops: o.ops.clone(),
        dtypes: o.dtypes.clone(),
    };
    let plans: Vec<_> = found
        .iter()
        .map(|f| on_backend!(f, b => runner::cases_for(&sel, b.is_gpu(), b.is_software())))
        .collect();
    let total = plans.iter().map(Vec::len).sum();
    let mut pace = Pace::new(profile, o.time_budget, total);
    let mut progress = Progress::new(total, o.quiet);
    let mut peer = if o.peer {
        Peer::start(&o.out)
    } else {
        Err("disabled (--no-peer)".to_string())
    };
    let peer_line = match &peer {
        Ok(p) => p.description.clone(),
        Err(e) => format!("none: {e}"),
    };
    progress_notes.push(format!("peer: {peer_line}"));
    for n in &progress_notes {
        progress.note(n);
    }
    let mut backends: Vec<BackendResults> = Vec::new();
    for (f, cases) in found.iter().zip(&plans) {
        let peer_ref = peer.as_mut().ok();
        let r = on_backend!(f, b => {
            runner::run_backend(b, &sel, cases, o.threads, peer_ref, &mut pace, &mut progress)
        });
        backends.push(r);
    }
    progress.finish();
    drop(peer);
    let results = Results {
        version: 1,
        commit: commit(),
        date: now_utc(),
        machine: machine(),
        profile,
        threads: o.threads,
        peer: peer_line,
        backends,
    };
    write_reports(&results, &o.out)?;
    Ok(results)
}

/// Write `results.json`, `report.md` and `report.html` into `dir`.
pub fn write_reports(res: &Results, dir: &Path) -> Result<(), String> {
    let write = |name: &str, text: String| {
        let p = dir.join(name);
        std::fs::write(&p, text).map_err(|e| format!("cannot write {p:?}: {e}"))
    };
    let json = serde_json::to_string_pretty(res).map_err(|e| format!("results.json: {e}"))?;
    write("results.json", json + "\n")?;
    write("report.md", report::markdown(res))?;
    write("report.html", report::html(res))?;
    Ok(())
}

/// How many cases failed (an op returned an error other than Unsupported).
pub fn failures(res: &Results) -> usize {
    res.backends
        .iter()
        .flat_map(|b| &b.cases)
        .filter(|c| c.status == Status::Failed)
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn options_parse() {
        let o = parse(&args("--backend cpu --op attention,grkan_forward --dtype f16 --full --threads 3 --out x --no-peer")).unwrap();
        assert_eq!(o.backends, ["cpu"]);
        assert_eq!(
            o.ops,
            [
                OpKind::AttentionForward,
                OpKind::AttentionBackward,
                OpKind::GrKanForward
            ]
        );
        assert_eq!(o.dtypes, [DType::F16]);
        assert_eq!(o.profile, Some(Profile::Full));
        assert_eq!(o.threads, 3);
        assert_eq!(o.out, PathBuf::from("x"));
        assert!(!o.peer);
        assert!(parse(&args("--op nothing")).is_err());
        assert!(parse(&args("--dtype f64")).is_err());
        assert!(parse(&args("--backend tpu")).is_err());
        assert_eq!(
            parse(&args("--backend cuda,wgpu,cuda")).unwrap().backends,
            ["cuda", "wgpu"]
        );
        assert!(parse(&args("--threads 0")).is_err());
        assert_eq!(
            parse(&args("--time-budget 150")).unwrap().time_budget,
            Some(150.0)
        );
        assert!(parse(&args("--time-budget 0")).is_err());
        assert!(parse(&args("--time-budget soon")).is_err());
        assert!(parse(&args("--bogus")).is_err());
    }

    #[test]
    fn dates_are_rfc3339() {
        let d = now_utc();
        assert_eq!(d.len(), 20, "{d}");
        assert!(d.starts_with("20") && d.ends_with('Z'), "{d}");
    }
}
