//! `cargo xtask gpu-bundle`: the self-contained folder for the GPU check.
//!
//! Builds here (release, stripped) the CUDA conformance test executable, the wgpu conformance
//! and direct test executables, `flashneck-bench` and the model crate's training example, and
//! writes them with `gpu/run.sh` and the Vulkan loader into `./gpu-bundle/` (git-ignored). On the GPU machine (no
//! Rust; a CUDA 13 driver, compute-sanitizer, python3 with torch) `gpu-bundle/run.sh` runs the
//! conformance with skipping refused, memcheck and racecheck over a small subset, the benches,
//! and the wgpu tests and bench where the container has NVIDIA's Vulkan driver, writing JSON
//! under `$OUT` and printing a short table last (see docs/cuda.md).

use std::path::{Path, PathBuf};
use std::process::Command;

const BUNDLE: &str = "gpu-bundle";

pub fn run(args: &[String]) -> Result<(), String> {
    if !args.is_empty() {
        return Err(format!("gpu-bundle takes no arguments, got {args:?}"));
    }
    // The bundle carries cubins compiled here by NVRTC: where the loader has none but pip's is
    // installed, run again with it on the path (without any, the bundle warns and goes on).
    if !flashneck_cuda::nvrtc::present()
        && let Some(outcome) = crate::kernels::rerun_with_nvrtc_path("gpu-bundle")
    {
        return outcome;
    }
    let root = crate::workspace_root();
    let out = root.join(BUNDLE);
    if out.exists() {
        std::fs::remove_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    }
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;

    let conformance = build_executable(
        &root,
        &[
            "test",
            "--release",
            "-p",
            "flashneck-cuda",
            "--test",
            "conformance_cuda",
            "--no-run",
        ],
        "conformance_cuda",
    )?;
    install(&conformance, &out.join("conformance_cuda"))?;

    // The benches are another helper's crate, with the CUDA backend behind its `cuda` feature: a
    // missing binary or feature fails this part only, clearly.
    let manifest = std::fs::read_to_string(root.join("benches/Cargo.toml")).unwrap_or_default();
    let bench = if manifest
        .lines()
        .any(|l| l.trim_start().starts_with("cuda ="))
    {
        build_executable(
            &root,
            &[
                "build",
                "--release",
                "-p",
                "flashneck-benches",
                "--features",
                "cuda",
                "--bin",
                "flashneck-bench",
            ],
            "flashneck-bench",
        )
    } else {
        Err(
            "flashneck-benches has no `cuda` feature yet, so flashneck-bench cannot run the \
             CUDA backend"
                .to_string(),
        )
    };
    let bench_note = match &bench {
        Ok(path) => install(path, &out.join("flashneck-bench")).err(),
        Err(e) => Some(e.clone()),
    };

    // The model crate's training example: on the GPU it trains through the CUDA backend, every
    // op family's forward and backward composed (dense and block-sparse attention).
    let model = build_executable(
        &root,
        &[
            "build",
            "--release",
            "-p",
            "flashneck-model",
            "--example",
            "train",
        ],
        "train",
    )?;
    install(&model, &out.join("model-train"))?;

    // The wgpu backend's conformance suite and direct tests (packed bf16 stores, subgroup
    // reductions, typed device errors), run on the GPU's Vulkan driver when the container has it.
    for (test, name) in [
        ("conformance", "conformance_wgpu"),
        ("direct", "direct_wgpu"),
    ] {
        let exe = build_executable(
            &root,
            &[
                "test",
                "--release",
                "-p",
                "flashneck-wgpu",
                "--test",
                test,
                "--no-run",
            ],
            test,
        )?;
        install(&exe, &out.join(name))?;
    }

    // The Vulkan loader, so that the wgpu backend can run on the GPU machine beside CUDA (its
    // container has NVIDIA's Vulkan driver at best, rarely the loader); run.sh finds the ICD.
    match vulkan_loader() {
        Some(lib) => {
            let dir = out.join("vulkan");
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            std::fs::copy(&lib, dir.join("libvulkan.so.1"))
                .map_err(|e| format!("{}: {e}", lib.display()))?;
        }
        None => eprintln!(
            "warning: no libvulkan.so.1 here (Debian: libvulkan1): the bundle cannot run wgpu"
        ),
    }

    // The kernels compiled here for the H200 (sm_90) with NVRTC 13.0, the driver's version, so
    // that no process of the check spends NVRTC's time on them: run.sh points the backend at
    // them (FLASHNECK_CUBIN_DIR). Any other NVRTC leaves the folder empty; the backend then
    // compiles on the device, once for all processes (it writes the folder too).
    let cubins = out.join("cubins");
    std::fs::create_dir_all(&cubins).map_err(|e| format!("{}: {e}", cubins.display()))?;
    match flashneck_cuda::nvrtc::version() {
        Ok((13, 0)) => {
            let files =
                flashneck_cuda::write_cubins(&cubins, "sm_90").map_err(|e| e.to_string())?;
            println!(
                "{} sm_90 cubins (NVRTC 13.0) in {}",
                files.len(),
                cubins.display()
            );
        }
        Ok((major, minor)) => eprintln!(
            "warning: NVRTC {major}.{minor} here, not 13.0: no precompiled cubins (the device \
             compiles them)"
        ),
        Err(e) => eprintln!("warning: no precompiled cubins: {e}"),
    }

    // Which commit the bundle was built from (the tree copied to the device has no .git).
    std::fs::write(out.join("BUNDLE_INFO"), bundle_info())
        .map_err(|e| format!("BUNDLE_INFO: {e}"))?;

    for entry in std::fs::read_dir(root.join("gpu")).map_err(|e| format!("gpu/: {e}"))? {
        let path = entry.map_err(|e| e.to_string())?.path();
        let keep = path.extension().is_some_and(|x| x == "sh" || x == "py");
        if keep {
            let dst = out.join(path.file_name().unwrap_or_default());
            std::fs::copy(&path, &dst).map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    println!("gpu bundle written to {}", out.display());
    match bench_note {
        None => Ok(()),
        Some(e) => Err(format!(
            "the bundle has no flashneck-bench (run.sh will skip the benches): {e}"
        )),
    }
}

/// `commit=<HEAD>[-dirty]` and `built=<UTC time>` lines for run.sh, as the bench's reports
/// record them.
fn bundle_info() -> String {
    use flashneck_benches::cli::{commit, now_utc};
    format!("commit={}\nbuilt={}\n", commit(), now_utc())
}

/// This machine's Vulkan loader (symbolic links resolved), if any.
fn vulkan_loader() -> Option<PathBuf> {
    ["/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib"]
        .iter()
        .map(|d| Path::new(d).join("libvulkan.so.1"))
        .find(|p| p.exists())
        .and_then(|p| p.canonicalize().ok())
}

/// Run cargo with `args` and JSON messages; the executable of the artifact named `target`.
fn build_executable(root: &Path, args: &[&str], target: &str) -> Result<PathBuf, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args(args)
        .arg("--message-format=json-render-diagnostics")
        .current_dir(root)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !output.status.success() {
        return Err(format!("`cargo {}` failed", args.join(" ")));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .filter(|l| l.contains("\"reason\":\"compiler-artifact\""))
        .filter(|l| l.contains(&format!("\"name\":\"{target}\"")))
        .find_map(|l| json_string(l, "executable"))
        .map(PathBuf::from)
        .ok_or_else(|| {
            format!(
                "`cargo {}` produced no executable `{target}`",
                args.join(" ")
            )
        })
}

/// The string value of `"key":"..."` in one line of cargo's JSON (paths hold no escapes here).
fn json_string(line: &str, key: &str) -> Option<String> {
    let rest = line.split(&format!("\"{key}\":\"")).nth(1)?;
    Some(rest.split('"').next()?.replace("\\\\", "\\"))
}

/// Copy an executable into the bundle and strip it.
fn install(src: &Path, dst: &Path) -> Result<(), String> {
    std::fs::copy(src, dst).map_err(|e| format!("{}: {e}", src.display()))?;
    match Command::new("strip").arg(dst).status() {
        Ok(s) if s.success() => Ok(()),
        _ => {
            eprintln!("warning: could not strip {}", dst.display());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_executable_in_cargo_json() {
        let line = r#"{"reason":"compiler-artifact","target":{"kind":["test"],"name":"conformance_cuda"},"executable":"/t/release/deps/conformance_cuda-abc","fresh":true}"#;
        assert_eq!(
            json_string(line, "executable").as_deref(),
            Some("/t/release/deps/conformance_cuda-abc")
        );
        assert_eq!(json_string(line, "missing"), None);
    }
}
