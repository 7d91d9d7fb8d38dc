//! Conformance checks: grkan. SKELETON: to be written.

/// Instantiate this module's checks for one backend.
#[macro_export]
macro_rules! grkan_tests {
    ($make:expr, $config:expr) => {};
}
