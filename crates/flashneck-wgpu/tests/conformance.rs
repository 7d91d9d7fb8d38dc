//! The conformance suite on the wgpu backend (lavapipe in CI). The shared backend asserts that
//! the adapter is Vulkan, so a silent fallback fails every test.
//!
//! `FLASHNECK_CONFORMANCE=full` selects the full suite (D, Dv up to 256, longer sequences).
//!
//! Full head dims (Config::small: D, Dv up to 128, like the emulated CUDA suite): the lavapipe
//! bug that once capped them at 64 (long attention workgroups stopping short) is fixed by the
//! kernels' passes, and `tests/lavapipe_long_workgroups.rs` guards it.

mod common;

flashneck_conformance::conformance_suite!(
    common::backend(),
    flashneck_conformance::Config::from_env(flashneck_conformance::Config::small())
);
