//! Conformance checks: attention. SKELETON: to be written.

/// Instantiate this module's checks for one backend.
#[macro_export]
macro_rules! attention_tests {
    ($make:expr, $config:expr) => {};
}
