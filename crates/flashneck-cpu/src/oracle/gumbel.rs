//! f64 oracle. SKELETON: to be written.
