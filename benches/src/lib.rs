//! # flashneck-benches
//!
//! `flashneck-bench` (run it with `cargo xtask bench`) measures every op on every backend
//! present against the device's limits and the PyTorch peers, and writes a report. This crate
//! also holds the CPU criterion benches (`cargo bench -p flashneck-benches`).
//!
//! Read top to bottom:
//! - [`cases`]: the standard problems of each op per [`Profile`], and the work model (bytes,
//!   FLOPs) behind every rate;
//! - [`calls`]: a case turned into a timed call on a backend (inputs rotated when they fit in
//!   cache);
//! - [`target`]: the small trait each backend implements for timing and limits ([`limits`]
//!   measures the CPU's);
//! - [`peer`]: the PyTorch peer process (`peers/torch_peer.py`);
//! - [`runner`]: the loop, generic over the backend, interleaving ours and the peer's runs;
//! - [`results`] (`results.json`) and [`report`] (stdout table, `report.md`, `report.html`);
//! - [`cli`]: the options and [`cli::run`], which ties it all together.

pub mod calls;
pub mod cases;
pub mod cli;
pub mod limits;
pub mod peer;
pub mod progress;
pub mod report;
pub mod results;
pub mod runner;
pub mod stats;
pub mod target;

pub use cases::Profile;
