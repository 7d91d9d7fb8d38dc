//! # flashneck-model
//!
//! A small classifier, generic over flashneck's backend trait ([`flashneck_core::Kernels`]), that
//! proves the kernels compose into something that trains. It is a KAT-style transformer (the
//! MLP's activation is a learned GR-KAN rational) with a sparse concept bottleneck
//! (Gumbel-Softmax) in front of the classifier:
//!
//! ```text
//! features ─ embed ─┬─ LayerNorm ─ self-attention ─(+)─┬─ LayerNorm ─ fc1 ─ GR-KAN ─ fc2 ─(+)─ … ─
//!                   └──────────────────────────────────┘└──────────────────────────────────┘
//! ─ LayerNorm ─ mean-pool ─ concept logits ─ Gumbel-Softmax ─ classifier ─ cross-entropy
//! ```
//!
//! Every flashneck op family does real work in the forward *and* the backward, through the
//! backend: `attention_forward`/`attention_backward`, `grkan_forward`/`grkan_backward`,
//! `gumbel_softmax_forward`/`gumbel_softmax_backward`, and, with
//! [`AttentionMode::TopK`] in the config, the block-sparse family: `block_topk`,
//! `sparse_attention_forward` (with the Re-ttention epilogue) and `sparse_attention_backward`.
//! Everything else (matmuls, LayerNorm, pooling, cross-entropy, their gradients, Adam) is plain
//! f32 host code on slices.
//!
//! This crate proves composition and training, not speed: activations live on the host and
//! travel to the backend and back for every op ([`host_ops`]).
//!
//! Read the modules top to bottom:
//!
//! - [`linalg`]: host math with its backward (matmul, LayerNorm, heads, pooling, cross-entropy);
//! - [`host_ops`]: run one flashneck op on host slices through a backend;
//! - [`layers`]: [`layers::Linear`], [`layers::LayerNorm`], [`layers::SelfAttention`],
//!   [`layers::GrKanMlp`], [`layers::ConceptBottleneck`], each saving in its forward what its
//!   backward needs;
//! - [`model`]: the configuration and the model;
//! - [`optim`]: the Adam optimiser;
//! - [`data`]: the synthetic task (seeded);
//! - [`mod@train`]: the training loop, returning the loss and accuracy curve.
//!
//! `docs/model.md` has the architecture, the task and a measured curve.

pub mod data;
pub mod host_ops;
pub mod layers;
pub mod linalg;
pub mod model;
pub mod optim;
pub mod train;

pub use data::{Batch, MatchTask};
pub use layers::{AttentionMode, GumbelSample, Param, Selection};
pub use model::{Model, ModelConfig, SelectionStats};
pub use optim::Adam;
pub use train::{EvalPoint, TrainConfig, TrainReport, evaluate, train};
