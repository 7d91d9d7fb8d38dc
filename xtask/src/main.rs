//! Project tasks, run as `cargo xtask <task>` (the alias is in `.cargo/config.toml`):
//!
//! - `test`: everything CI checks (fmt, clippy, docs, every test, the ASan emulator run, NVRTC);
//! - `bench [options]`: `flashneck-bench`, every op on every backend present, with a report;
//! - `kernels`: compile every CUDA kernel with NVRTC and check registers and spills;
//! - `gpu-bundle`: build the self-contained folder that the GPU check runs.

mod bench;
mod gpu_bundle;
mod kernels;
mod steps;
mod test;

use std::path::PathBuf;

const USAGE: &str = "usage: cargo xtask <test|bench|kernels|gpu-bundle> [args]
  test            fmt --check, clippy -D warnings, doc -D warnings, every test, the emulated
                  CUDA suite under ASan, the NVRTC kernel check (what CI runs)
  bench [opts]    run flashneck-bench (see `cargo xtask bench --help`);
                  `bench --criterion` runs the CPU criterion benches
  kernels         NVRTC compile of every CUDA kernel, registers and spills
  gpu-bundle      build the folder for the GPU check";

/// The workspace root (the parent of this crate).
fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root();
    let rest = args.get(1..).unwrap_or(&[]);
    let code = match args.first().map(String::as_str) {
        Some("test") => test::run(&root, rest),
        Some("bench") => bench::run(&root, rest),
        Some("kernels") => report(kernels::run(rest)),
        Some("gpu-bundle") => report(gpu_bundle::run(rest)),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            0
        }
        _ => {
            eprintln!("{USAGE}");
            2
        }
    };
    std::process::exit(code);
}

/// Print an in-process task's error; its exit code.
fn report(r: Result<(), String>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("xtask: {e}");
            1
        }
    }
}
