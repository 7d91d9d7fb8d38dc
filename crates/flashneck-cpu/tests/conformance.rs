//! The whole conformance suite on the CPU backend, at full size: every op, every dtype, against
//! the f64 oracles (see `flashneck-conformance`).

flashneck_conformance::conformance_suite!(
    flashneck_cpu::CpuBackend::new(),
    flashneck_conformance::Config::full()
);
