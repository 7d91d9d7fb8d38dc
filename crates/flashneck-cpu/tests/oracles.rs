//! The f64 oracles checked against central finite differences of their own forwards. These
//! check the oracles, not a backend, so they run once, here, rather than per backend.

use flashneck_conformance::{attention, grkan, gumbel, sparse};

#[test]
fn attention_oracle_backward_matches_finite_differences() {
    attention::oracle_backward_matches_finite_differences();
}

#[test]
fn sparse_oracle_backward_matches_finite_differences() {
    sparse::oracle_sparse_backward_matches_finite_differences();
}

#[test]
fn grkan_oracle_backward_matches_finite_differences() {
    grkan::oracle_backward_matches_finite_differences();
}

#[test]
fn gumbel_oracle_backward_matches_finite_differences() {
    gumbel::oracle_backward_matches_finite_differences();
}
