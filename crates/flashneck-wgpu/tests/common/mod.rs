//! The backends the integration tests share (device creation and pipeline compilation on
//! lavapipe are slow): created once per test binary, handed out as clones that share device
//! and pipelines.

use flashneck_wgpu::{Options, WgpuBackend};
use std::sync::OnceLock;

/// A backend with `options`. Fails the test when there is no adapter, and when the adapter is
/// not Vulkan (a silent fallback must not pass CI); with `FLASHNECK_WGPU_REQUIRE_GPU=1` (the
/// GPU check) also when it is not a GPU, so that a CPU driver cannot stand in for the GPU's.
fn open(options: Options) -> WgpuBackend {
    let b = WgpuBackend::with_options(options).unwrap_or_else(|e| {
        panic!(
            "no wgpu backend: {e}. These tests need a Vulkan driver; CI installs Mesa's \
             lavapipe (mesa-vulkan-drivers)"
        )
    });
    let info = b.adapter_info();
    println!(
        "wgpu adapter: {} ({:?}, {:?}, {} {}), {options:?}",
        info.name, info.backend, info.device_type, info.driver, info.driver_info
    );
    assert_eq!(
        info.backend,
        wgpu::Backend::Vulkan,
        "the adapter must be Vulkan, got {:?}",
        info.backend
    );
    if std::env::var_os("FLASHNECK_WGPU_REQUIRE_GPU").is_some_and(|v| v == "1") {
        assert!(
            matches!(
                info.device_type,
                wgpu::DeviceType::DiscreteGpu | wgpu::DeviceType::IntegratedGpu
            ),
            "FLASHNECK_WGPU_REQUIRE_GPU=1: the adapter must be a GPU, got {} ({:?})",
            info.name,
            info.device_type
        );
    }
    b
}

/// The shared backend with the default options (native f16 storage and subgroup reductions
/// where the adapter has SHADER_F16 / SUBGROUP, unless FLASHNECK_WGPU_NO_F16 /
/// FLASHNECK_WGPU_NO_SUBGROUPS is set).
#[allow(dead_code)] // Not every test binary uses it.
pub fn backend() -> WgpuBackend {
    static SHARED: OnceLock<WgpuBackend> = OnceLock::new();
    SHARED.get_or_init(|| open(Options::default())).clone()
}

/// The shared backend without optional features: f16 tensors as f32 words, no subgroups, as
/// on adapters without SHADER_F16 and SUBGROUP.
#[allow(dead_code)] // Not every test binary uses it.
pub fn backend_baseline() -> WgpuBackend {
    static SHARED: OnceLock<WgpuBackend> = OnceLock::new();
    SHARED.get_or_init(|| open(Options::BASELINE)).clone()
}
