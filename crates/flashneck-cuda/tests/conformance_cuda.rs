//! The conformance suite on a real CUDA device (device 0). Without a driver every test prints one
//! `skip:` line and passes, unless `FLASHNECK_REQUIRE_CUDA=1`, which makes a missing driver fail.
//! Full sizes by default; `FLASHNECK_CONFORMANCE=small` selects the small suite (gpu/run.sh does
//! so under compute-sanitizer, which slows kernels 10-100x).

use flashneck_cuda::CudaBackend;
use std::io::Write;
use std::sync::Once;

/// Device 0, or `None` (after the skip line) when no driver is present and none is required.
fn real_device() -> Option<CudaBackend> {
    let required = std::env::var("FLASHNECK_REQUIRE_CUDA").is_ok_and(|v| v == "1");
    if !CudaBackend::driver_present() {
        assert!(
            !required,
            "FLASHNECK_REQUIRE_CUDA=1 but no CUDA driver (libcuda) was found"
        );
        // Once per run, and past the test harness's capture so that it stays visible.
        static SKIP_LINE: Once = Once::new();
        SKIP_LINE.call_once(|| {
            let _ = writeln!(
                std::io::stdout(),
                "skip: no CUDA driver (set FLASHNECK_REQUIRE_CUDA=1 to fail instead)"
            );
        });
        return None;
    }
    Some(CudaBackend::new(0).expect("CUDA device 0"))
}

/// One test per check of the suite; each returns early when there is no device.
macro_rules! real {
    () => {
        match real_device() {
            Some(b) => b,
            None => return,
        }
    };
}

flashneck_conformance::conformance_suite!(
    real!(),
    flashneck_conformance::Config::from_env(flashneck_conformance::Config::full())
);

#[test]
fn driver_check_is_consistent() {
    // Runs everywhere: with a driver, device 0 opens; without one, `new` is an error, not a panic.
    match real_device() {
        Some(b) => assert!(!b.is_emulated()),
        None => assert!(CudaBackend::new(0).is_err()),
    }
}
