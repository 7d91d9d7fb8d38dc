//! Conformance checks: sparse. SKELETON: to be written.

/// Instantiate this module's checks for one backend.
#[macro_export]
macro_rules! sparse_tests {
    ($make:expr, $config:expr) => {};
}
