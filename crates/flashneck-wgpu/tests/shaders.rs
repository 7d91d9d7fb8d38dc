//! Static checks of every WGSL shader, with no device: naga parses and validates each one,
//! and its workgroup memory fits WebGPU's default limit (16384 bytes), which neither naga nor
//! lavapipe enforces. `device_limits` checks the same against a real adapter's limit.

use flashneck_wgpu::shaders::{
    Shader, WEBGPU_DEFAULT_WORKGROUP_STORAGE, validate, workgroup_bytes,
};

#[test]
fn every_shader_passes_naga_validation() {
    for s in Shader::ALL {
        if let Err(e) = validate(s) {
            panic!("{e}");
        }
    }
}

#[test]
fn every_shader_fits_the_webgpu_default_workgroup_memory() {
    for s in Shader::ALL {
        let m = validate(s).unwrap();
        let bytes = workgroup_bytes(&m);
        println!("{s}.wgsl: {bytes} bytes of workgroup memory");
        assert!(
            bytes <= WEBGPU_DEFAULT_WORKGROUP_STORAGE,
            "{s}.wgsl declares {bytes} bytes of workgroup memory > {WEBGPU_DEFAULT_WORKGROUP_STORAGE}"
        );
    }
}

#[test]
fn workgroup_memory_is_counted() {
    // The reductions' scratch arrays: 256 f32 in grkan, 64 f32 + 64 u32 in gumbel. A counter
    // that returned 0 would make the limit checks vacuous.
    assert_eq!(workgroup_bytes(&validate(Shader::GrKan).unwrap()), 1024);
    assert_eq!(workgroup_bytes(&validate(Shader::Gumbel).unwrap()), 512);
}
