//! The one backend every integration test shares (device creation and pipeline compilation on
//! lavapipe are slow): created once, handed out as clones that share device and pipelines.

use flashneck_wgpu::WgpuBackend;
use std::sync::OnceLock;

/// The shared backend. Fails the test when there is no adapter, and when the adapter is not
/// Vulkan (a silent fallback must not pass CI).
pub fn backend() -> WgpuBackend {
    static SHARED: OnceLock<WgpuBackend> = OnceLock::new();
    SHARED
        .get_or_init(|| {
            let b = WgpuBackend::new().unwrap_or_else(|e| {
                panic!(
                    "no wgpu backend: {e}. These tests need a Vulkan driver; CI installs Mesa's \
                     lavapipe (mesa-vulkan-drivers)"
                )
            });
            let info = b.adapter_info();
            println!(
                "wgpu adapter: {} ({:?}, {:?}, {} {})",
                info.name, info.backend, info.device_type, info.driver, info.driver_info
            );
            assert_eq!(
                info.backend,
                wgpu::Backend::Vulkan,
                "the adapter must be Vulkan, got {:?}",
                info.backend
            );
            b
        })
        .clone()
}
