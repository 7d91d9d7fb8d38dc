//! The conformance suite on the emulated CUDA device (small shapes: the emulator is slow).

flashneck_conformance::conformance_suite!(
    flashneck_cuda::CudaBackend::emulated().unwrap(),
    flashneck_conformance::Config::small()
);
