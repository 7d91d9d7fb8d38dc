//! Conformance checks: gumbel. SKELETON: to be written.

/// Instantiate this module's checks for one backend.
#[macro_export]
macro_rules! gumbel_tests {
    ($make:expr, $config:expr) => {};
}
