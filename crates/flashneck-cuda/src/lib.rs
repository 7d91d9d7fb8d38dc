//! SKELETON: the CUDA backend.
