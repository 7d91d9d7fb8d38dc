//! The conformance suite on the emulated CUDA device: small shapes by default (the emulator is
//! slow); `FLASHNECK_CONFORMANCE=full` runs the full suite the real device runs, to check the
//! kernels on its shapes before a GPU is lent.

flashneck_conformance::conformance_suite!(
    flashneck_cuda::CudaBackend::emulated().unwrap(),
    flashneck_conformance::Config::from_env(flashneck_conformance::Config::small())
);
