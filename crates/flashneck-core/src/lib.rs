//! # flashneck-core
//!
//! Everything a backend and a user share, and nothing that computes an op:
//!
//! - [`dtype`]: the element types (`f32`, `f16`, `bf16`) and the scalar types a buffer may hold;
//! - [`error`]: the one error type, whose messages name the argument, the expected and the given;
//! - [`params`]: the parameter structs of every op, each with `validate()`;
//! - [`layout`]: [`BlockLayout`] for block-sparse attention and its helpers;
//! - [`philox`]: Philox4x32-10 and the Gumbel noise of SPEC §4, bit-exact on every backend;
//! - [`grkan_init`]: GR-KAN coefficient initialisers;
//! - [`backend`]: the backend trait (buffers, info) and one op trait per family.
//!
//! The operator contract is `shared/SPEC.md`; every item here follows it.

pub mod backend;
pub mod checks;
pub mod dtype;
pub mod error;
pub mod grkan_init;
pub mod layout;
pub mod params;
pub mod philox;

pub use backend::{
    AttentionOps, Backend, BackendInfo, DeviceBuffer, DeviceLayout, GrKanOps, GumbelOps, HeadDims,
    Kernels, OpKind, SparseAttentionOps, SparseEpilogue,
};
pub use dtype::{DType, Element, Scalar};
pub use error::{Error, Result};
pub use layout::{BLOCK, BlockLayout};
pub use params::{AttentionParams, AttentionShape, GrKanParams, GumbelParams, TopkParams};
