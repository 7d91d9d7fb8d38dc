//! The conformance suite on the wgpu backend (lavapipe in CI). The shared backend asserts that
//! the adapter is Vulkan, so a silent fallback fails every test.
//!
//! Head dims are capped at 64 here (the other backends' suites go to 128 and 256): on lavapipe
//! a workgroup of the attention backward that runs more than about a thousand barriers stops
//! short and leaves dK/dV partly unwritten (known bug, reproduced by
//! `tests/lavapipe_long_workgroups.rs`, tracked on issue 5). With D, Dv <= 64 every case of the
//! suite stays under that count; larger head dims are still covered by `tests/direct.rs`.

mod common;

flashneck_conformance::conformance_suite!(
    common::backend(),
    flashneck_conformance::Config {
        max_head_dim: 64,
        ..flashneck_conformance::Config::small()
    }
);
