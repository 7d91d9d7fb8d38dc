//! `cargo xtask bench`: build `flashneck-bench` in release with every backend (features `wgpu`
//! and `cuda` of flashneck-benches; it benches those whose device exists) and run it from the
//! workspace root, passing every argument through (`--backend`, `--op`, `--dtype`, `--quick`,
//! `--full`, `--out DIR`, ...). Reports land in `target/flashneck-bench/` unless `--out` says
//! otherwise. Should the GPU backends not build, it says so and benches the CPU alone.
//! `cargo xtask bench --criterion` runs the CPU criterion benches instead.

use std::path::Path;
use std::process::Command;

/// Every backend feature of flashneck-benches.
const ALL_BACKENDS: &str = "wgpu,cuda";

fn cargo(root: &Path) -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root);
    c
}

/// Run `c` with inherited stdio; its exit code.
fn status(mut c: Command) -> i32 {
    match c.status() {
        Ok(s) => s.code().unwrap_or(1),
        Err(e) => {
            eprintln!("xtask: cannot run cargo: {e}");
            127
        }
    }
}

const PACKAGE: [&str; 5] = [
    "-p",
    "flashneck-benches",
    "--bin",
    "flashneck-bench",
    "--release",
];

pub fn run(root: &Path, args: &[String]) -> i32 {
    if args.first().map(String::as_str) == Some("--criterion") {
        let mut c = cargo(root);
        c.args(["bench", "-p", "flashneck-benches", "--bench", "cpu", "--"])
            .args(&args[1..]);
        return status(c);
    }
    let mut build = cargo(root);
    build
        .arg("build")
        .args(PACKAGE)
        .args(["--features", ALL_BACKENDS]);
    let features: &[&str] = if status(build) == 0 {
        &["--features", ALL_BACKENDS]
    } else {
        eprintln!(
            "xtask bench: flashneck-bench does not build with the GPU backends \
             (--features {ALL_BACKENDS}); benching the CPU alone"
        );
        &[]
    };
    let mut c = cargo(root);
    c.arg("run")
        .args(PACKAGE)
        .args(features)
        .arg("--")
        .args(args);
    status(c)
}
