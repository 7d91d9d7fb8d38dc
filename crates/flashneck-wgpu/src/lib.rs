//! SKELETON: the wgpu backend.
