//! Conformance checks: errors. SKELETON: to be written.

/// Instantiate this module's checks for one backend.
#[macro_export]
macro_rules! error_tests {
    ($make:expr, $config:expr) => {};
}
