//! f64 oracles: naive, obviously correct implementations of SPEC, used only by tests.
//!
//! They share no code with the fast paths (a materialised score matrix is fine here). Inputs are
//! f64 copies of the (already rounded) inputs the backend sees.

pub mod attention;
pub mod grkan;
pub mod gumbel;
