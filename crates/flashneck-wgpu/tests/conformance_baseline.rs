//! The conformance suite on the wgpu backend without its optional features
//! (`Options::BASELINE`): f16 tensors stored as f32 words, row reductions as workgroup-memory
//! trees without subgroup operations. That is the path every adapter without SHADER_F16 and
//! SUBGROUP takes, run here on lavapipe, which has both (tests/conformance.rs runs them).

mod common;

flashneck_conformance::conformance_suite!(
    {
        let b = common::backend_baseline();
        assert_eq!(
            b.storage(flashneck_core::DType::F16),
            flashneck_wgpu::Storage::F32
        );
        assert!(!b.has_subgroups());
        b
    },
    flashneck_conformance::Config::small()
);
