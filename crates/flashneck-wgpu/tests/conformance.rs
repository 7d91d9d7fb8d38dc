//! The conformance suite on the wgpu backend (lavapipe in CI). The shared backend asserts that
//! the adapter is Vulkan, so a silent fallback fails every test.

mod common;

flashneck_conformance::conformance_suite!(
    common::backend(),
    flashneck_conformance::Config::small()
);
