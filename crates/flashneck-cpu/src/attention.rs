//! Attention on the CPU (SPEC §1, §2): FlashAttention-2 tiling with the online softmax.
//!
//! Dense attention is block-sparse attention on
//! [`BlockLayout::causal`](flashneck_core::BlockLayout::causal) (lib.rs passes it), so
//! there is one code path and dense equals sparse on the full layout bit for bit.
//!
//! - [`forward`] (`attention/forward.rs`): one parallel task per `(batch, query head, query
//!   block)`, streaming over the selected key blocks with the online softmax;
//! - [`backward`] (`attention/backward.rs`): `dK`/`dV` per key block over the transposed layout
//!   (GQA groups summed inside the task), then `dQ` per query block; `P` is recomputed per tile
//!   from the saved LSE;
//! - [`block_topk`] (`attention/topk.rs`): pooled scores and the sink / local / top-k selection.
//!
//! The inputs are first copied to f32 panels (`attention/panels.rs`) in the layouts the tile
//! products read; the tile arithmetic (`attention/tile.rs`) is compiled for AVX2+FMA when the
//! CPU has it (`attention/simd.rs`). `docs/ops/attention.md` describes the algorithm.
//! Every function here trusts its caller (lib.rs) to have validated shapes and layouts.

mod backward;
mod forward;
mod panels;
mod simd;
mod tile;
mod topk;

pub use backward::backward;
pub use forward::forward;
pub use topk::block_topk;
