//! A tiny run of the whole bench on the CPU (`--smoke` sizes, no peer): every op runs or is
//! reported unsupported, none fails, and the three reports are written and agree.

use flashneck_benches::Profile;
use flashneck_benches::cli::{self, Options};
use flashneck_benches::results::{Results, Status};

#[test]
fn smoke_run_of_every_op_on_the_cpu() {
    let out = std::env::temp_dir().join(format!("flashneck-bench-smoke-{}", std::process::id()));
    let opts = Options {
        backends: vec!["cpu".into()],
        profile: Some(Profile::Smoke),
        threads: 2,
        peer: false,
        out: out.clone(),
        quiet: true,
        ..Options::default()
    };
    let res = cli::run(&opts).expect("the smoke run completes");
    assert_eq!(res.backends.len(), 1);
    let cpu = &res.backends[0];
    assert_eq!(cpu.name, "cpu");
    assert!(cpu.limits.copy_gbs.is_some_and(|v| v > 0.0));
    assert!(cpu.limits.gemm_tflops.is_some_and(|v| v > 0.0));
    for op in flashneck_core::OpKind::ALL {
        assert!(
            cpu.cases.iter().any(|c| c.case.op == op.name()),
            "{} was not benched",
            op.name()
        );
    }
    for c in &cpu.cases {
        assert_ne!(c.status, Status::Failed, "{}: {:?}", c.case.id(), c.message);
        if c.status == Status::Ok {
            let t = c.time.as_ref().expect("times");
            assert!(t.runs >= Profile::Smoke.min_runs());
            assert!(t.median_s > 0.0 && t.median_s.is_finite());
            assert!(c.gbs.is_some_and(|g| g > 0.0 && g.is_finite()));
        }
    }
    let json = std::fs::read_to_string(out.join("results.json")).expect("results.json");
    let back: Results = serde_json::from_str(&json).expect("results.json parses");
    assert_eq!(back, res);
    for f in ["report.md", "report.html"] {
        let text = std::fs::read_to_string(out.join(f)).expect(f);
        for c in &cpu.cases {
            assert!(text.contains(&c.case.op), "{f} lacks {}", c.case.op);
        }
    }
    std::fs::remove_dir_all(&out).ok();
}

/// The same on wgpu: in CI that is lavapipe (`.ci/run` installs it), so a missing adapter fails.
#[cfg(feature = "wgpu")]
#[test]
fn smoke_run_of_every_op_on_wgpu() {
    let out =
        std::env::temp_dir().join(format!("flashneck-bench-smoke-wgpu-{}", std::process::id()));
    let opts = Options {
        backends: vec!["wgpu".into()],
        profile: Some(Profile::Smoke),
        threads: 2,
        peer: false,
        out: out.clone(),
        quiet: true,
        ..Options::default()
    };
    let res = cli::run(&opts).expect("the smoke run finds a wgpu adapter (lavapipe in CI)");
    let wgpu = &res.backends[0];
    assert_eq!(wgpu.name, "wgpu");
    assert!(wgpu.limits.copy_gbs.is_some_and(|v| v > 0.0));
    for c in &wgpu.cases {
        assert_ne!(c.status, Status::Failed, "{}: {:?}", c.case.id(), c.message);
    }
    assert!(out.join("report.html").exists());
    std::fs::remove_dir_all(&out).ok();
}
