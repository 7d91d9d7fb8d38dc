//! `cargo xtask test`: what CI runs. Formatting, clippy with `-D warnings`, the docs with broken
//! links refused, every test of the workspace (the emulated CUDA suite included), the CPU suite
//! again on its other instruction sets, the emulated CUDA suite again under AddressSanitizer,
//! and the NVRTC kernel check.

use crate::steps::{Step, run_all};
use std::path::Path;

pub fn run(root: &Path, args: &[String]) -> i32 {
    if let Some(a) = args.first() {
        eprintln!("xtask test takes no arguments (got {a:?})");
        return 2;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut steps = vec![
        Step::cmd(
            "cargo fmt --check",
            root,
            &cargo,
            &["fmt", "--all", "--", "--check"],
            &[],
        ),
        Step::cmd(
            "cargo clippy (-D warnings)",
            root,
            &cargo,
            &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
            &[],
        ),
        // Docs are part of the product: every intra-doc link must resolve.
        Step::cmd(
            "cargo doc (-D warnings)",
            root,
            &cargo,
            &["doc", "--no-deps", "--workspace"],
            &[("RUSTDOCFLAGS", "-D warnings")],
        ),
        Step::cmd(
            "cargo test --workspace",
            root,
            &cargo,
            &["test", "--workspace"],
            &[],
        ),
    ];
    // The CPU backend picks its instruction set at run time (AVX-512 for attention, AVX2+FMA,
    // or portable): the default run above takes the best one here, these take the others.
    for (name, var) in [
        ("CPU suite on the AVX2 path", "FLASHNECK_CPU_NO_AVX512"),
        ("CPU suite on the portable path", "FLASHNECK_CPU_PORTABLE"),
    ] {
        steps.push(Step::cmd(
            name,
            root,
            &cargo,
            &[
                "test",
                "-p",
                "flashneck-cpu",
                "--test",
                "conformance",
                "--test",
                "determinism",
            ],
            &[(var, "1")],
        ));
    }
    // The second emulated run also changes the thread schedule (decreasing index, warps running
    // ahead past their collectives): a missing barrier shows as a different result in one of the
    // two runs (docs/cuda-emulator.md, "Races").
    let asan = "emulated CUDA suite under AddressSanitizer, reverse run-ahead schedule";
    if root.join("crates/flashneck-cuda/build.rs").exists() {
        // LeakSanitizer ignores only what NVRTC keeps to exit (see the file).
        let suppressions = format!(
            "suppressions={}",
            root.join("crates/flashneck-cuda/lsan.supp").display()
        );
        steps.push(Step::cmd(
            asan,
            root,
            &cargo,
            &["test", "-p", "flashneck-cuda"],
            &[
                ("FLASHNECK_EMU_ASAN", "1"),
                ("FLASHNECK_EMU_SCHEDULE", "reverse-run-ahead"),
                ("LSAN_OPTIONS", &suppressions),
            ],
        ));
    } else {
        steps.push(Step::skip(
            asan,
            "crates/flashneck-cuda has no build.rs (no emulator to build yet)",
        ));
    }
    steps.push(Step::task(
        "NVRTC kernel check (cargo xtask kernels)",
        || crate::kernels::run(&[]),
    ));
    run_all("xtask test", steps)
}
