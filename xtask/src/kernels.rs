//! `cargo xtask kernels`: the NVRTC kernel check.
//!
//! Every `kernels/cuda/*.cu` is compiled by NVRTC 13 (loaded at run time) to `compute_80` and
//! `compute_90` PTX and to `sm_80` and `sm_90` cubins with ptxas's verbose report. The check fails
//! on any compile error, register spill or local memory (stack frame, spill stores/loads, lmem),
//! and prints a table of registers and shared memory per kernel and architecture.
//!
//! libnvrtc is found through the loader path; when it is not there, the check looks for python's
//! `nvidia/cu13/lib` (pip's `nvidia-cuda-nvrtc`) and re-runs itself with that folder on
//! `LD_LIBRARY_PATH` (the loader reads the variable only at start-up).

use flashneck_cuda::nvrtc;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const PTX_ARCHES: [&str; 2] = ["compute_80", "compute_90"];
const CUBIN_ARCHES: [&str; 2] = ["sm_80", "sm_90"];
/// Set in the re-run, so that it never re-runs again.
const REEXEC_FLAG: &str = "FLASHNECK_NVRTC_REEXEC";

/// What ptxas reported for one kernel on one architecture.
#[derive(Clone, Debug, Default, PartialEq)]
struct KernelReport {
    registers: u32,
    smem_bytes: u32,
    stack_bytes: u32,
    spill_stores: u32,
    spill_loads: u32,
    lmem_bytes: u32,
}

impl KernelReport {
    fn uses_local_memory(&self) -> bool {
        self.stack_bytes + self.spill_stores + self.spill_loads + self.lmem_bytes > 0
    }
}

pub fn run(args: &[String]) -> Result<(), String> {
    if !args.is_empty() {
        return Err(format!("kernels takes no arguments, got {args:?}"));
    }
    if !nvrtc::present() {
        return rerun_with_nvrtc_path("kernels").unwrap_or_else(|| Err(NVRTC_MISSING.into()));
    }
    let (major, minor) = nvrtc::version()?;
    println!("NVRTC {major}.{minor}");
    let dir = crate::workspace_root().join("kernels/cuda");
    let header = read(&dir.join("common.cuh"))?;
    let headers = [("common.cuh", header.as_str())];
    let mut sources: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .collect();
    sources.sort();
    if sources.is_empty() {
        return Err(format!("no .cu file in {}", dir.display()));
    }

    // kernel -> arch -> report
    let mut table: BTreeMap<String, BTreeMap<&str, KernelReport>> = BTreeMap::new();
    let mut failures = Vec::new();
    for path in &sources {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let src = read(path)?;
        for arch in PTX_ARCHES {
            if let Err(e) = nvrtc::compile_with_headers(&src, &name, arch, &[], &headers) {
                failures.push(e);
            }
        }
        for arch in CUBIN_ARCHES {
            match nvrtc::compile_with_headers(&src, &name, arch, &["--ptxas-options=-v"], &headers)
            {
                Ok(c) => {
                    for (kernel, r) in parse_ptxas(&c.log) {
                        if r.uses_local_memory() {
                            failures.push(format!(
                                "{name}: {kernel} on {arch} uses local memory: {r:?}"
                            ));
                        }
                        table.entry(kernel).or_default().insert(arch, r);
                    }
                }
                Err(e) => failures.push(e),
            }
        }
    }

    println!("| kernel | sm_80 regs | sm_80 smem (B) | sm_90 regs | sm_90 smem (B) |");
    println!("|---|---:|---:|---:|---:|");
    for (kernel, per_arch) in &table {
        let cell = |arch: &str| {
            per_arch.get(arch).map_or(("-".into(), "-".into()), |r| {
                (r.registers.to_string(), r.smem_bytes.to_string())
            })
        };
        let (r80, s80): (String, String) = cell("sm_80");
        let (r90, s90): (String, String) = cell("sm_90");
        println!("| {kernel} | {r80} | {s80} | {r90} | {s90} |");
    }
    if failures.is_empty() {
        println!(
            "kernel check: {} sources, {} kernels, {PTX_ARCHES:?} PTX and {CUBIN_ARCHES:?} cubins, \
             no spills, no local memory",
            sources.len(),
            table.len()
        );
        Ok(())
    } else {
        Err(format!("kernel check failed:\n{}", failures.join("\n")))
    }
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Python's `nvidia/cu13/lib`, where pip's NVRTC wheel puts libnvrtc.
fn python_nvrtc_dir() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import nvidia, os; print(os.path.dirname(list(nvidia.__path__)[0]))",
        ])
        .output()
        .ok()?;
    let site = String::from_utf8(out.stdout).ok()?;
    let dir = PathBuf::from(site.trim()).join("nvidia/cu13/lib");
    dir.join("libnvrtc.so.13").exists().then_some(dir)
}

/// What the kernel check needs and the loader did not find.
const NVRTC_MISSING: &str = "libnvrtc (CUDA 13) not found: install \
    `nvidia-cuda-nvrtc==13.0.88` (pip) or put its lib folder on LD_LIBRARY_PATH";

/// Run this xtask's `subcommand` again in a child whose `LD_LIBRARY_PATH` holds pip's NVRTC
/// (the loader reads the variable only at start-up) and return its outcome; `None` when there
/// is no pip NVRTC to add, or this process is that child already.
pub(crate) fn rerun_with_nvrtc_path(subcommand: &str) -> Option<Result<(), String>> {
    if std::env::var_os(REEXEC_FLAG).is_some() {
        return None;
    }
    let dir = python_nvrtc_dir()?;
    let path = match std::env::var("LD_LIBRARY_PATH") {
        Ok(p) if !p.is_empty() => format!("{}:{p}", dir.display()),
        _ => dir.display().to_string(),
    };
    let run = || {
        let exe = std::env::current_exe().map_err(|e| format!("cannot re-run myself: {e}"))?;
        let status = Command::new(exe)
            .arg(subcommand)
            .env("LD_LIBRARY_PATH", path)
            .env(REEXEC_FLAG, "1")
            .status()
            .map_err(|e| format!("cannot re-run myself: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("`cargo xtask {subcommand}` failed (see above)"))
        }
    };
    Some(run())
}

/// The numbers ptxas prints for each entry function:
/// `Compiling entry function 'NAME' for 'sm_90'`, then
/// `N bytes stack frame, N bytes spill stores, N bytes spill loads` and
/// `Used N registers, ..., N bytes smem[, N bytes lmem]`.
fn parse_ptxas(log: &str) -> Vec<(String, KernelReport)> {
    let mut out: Vec<(String, KernelReport)> = Vec::new();
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or_default().to_string();
            out.push((name, KernelReport::default()));
            continue;
        }
        let Some((_, r)) = out.last_mut() else {
            continue;
        };
        // "N bytes X" and "Used N registers" pairs, comma separated.
        let body = line.split(':').next_back().unwrap_or_default();
        for part in body.split(',') {
            let words: Vec<&str> = part.split_whitespace().collect();
            let num = |i: usize| words.get(i).and_then(|w| w.parse::<u32>().ok());
            match words.as_slice() {
                [_, "bytes", "stack", "frame"] => r.stack_bytes = num(0).unwrap_or(0),
                [_, "bytes", "spill", "stores"] => r.spill_stores = num(0).unwrap_or(0),
                [_, "bytes", "spill", "loads"] => r.spill_loads = num(0).unwrap_or(0),
                ["Used", _, "registers"] => r.registers = num(1).unwrap_or(0),
                [_, "bytes", "smem"] => r.smem_bytes = num(0).unwrap_or(0),
                [_, "bytes", "lmem"] => r.lmem_bytes = num(0).unwrap_or(0),
                [_, "bytes", "cumulative", "stack", "size"] => {
                    r.stack_bytes = r.stack_bytes.max(num(0).unwrap_or(0))
                }
                _ => {}
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ptxas_verbose_output() {
        let log = "ptxas info    : 0 bytes gmem\n\
ptxas info    : Compiling entry function 'k1' for 'sm_90'\n\
ptxas info    : Function properties for k1\n\
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
ptxas info    : Used 80 registers, used 1 barriers, 64 bytes smem\n\
ptxas info    : Compiling entry function 'k2' for 'sm_90'\n\
ptxas info    : Function properties for k2\n\
ptxas         .     8 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads\n\
ptxas info    : Used 72 registers, used 0 barriers, 8 bytes cumulative stack size, 16 bytes lmem\n";
        let r = parse_ptxas(log);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].0, "k1");
        assert_eq!(r[0].1.registers, 80);
        assert_eq!(r[0].1.smem_bytes, 64);
        assert!(!r[0].1.uses_local_memory());
        assert_eq!(r[1].1.spill_stores, 8);
        assert_eq!(r[1].1.spill_loads, 4);
        assert_eq!(r[1].1.lmem_bytes, 16);
        assert!(r[1].1.uses_local_memory());
    }
}
