//! perceptio: spatial grounding with large vision-language models (Sa2VA-style `[SEG]` → SAM2
//! masks, AURORA-style depth tokens, text answers from InternVL2.5-based models), and benchmark
//! scorers that reproduce the reference tools.
//!
//! Layers, each using only those below it (docs/architecture.md has the picture):
//! - [`cli`]: flags → ready objects, printing, exit codes.
//! - [`run`]: model-driven benchmark runs (resume, shards, manifests).
//! - [`report`]: self-contained HTML reports of scored runs (numbers, charts, galleries); uses
//!   the scorers and renderers, never the models.
//! - [`eval`]: pure scorers (RefCOCO cIoU, MMBench, HardBLINK); no candle, no models.
//! - [`models`]: InternVL, SAM2, the VQ-VAE, Depth Anything, built from one
//!   [`models::checkpoint::Checkpoint`]; never the hub or the CLI.
//! - [`hub`], [`preprocess`], [`render`]: downloads and the cache; exact image preprocessing;
//!   PNGs, overlays and depth files.
//! - [`mask`], [`depthmap`], [`util`], [`error`]: core types and helpers.

pub mod cli;
pub mod depthmap;
pub mod error;
pub mod eval;
pub mod hub;
pub mod mask;
pub mod models;
pub mod preprocess;
pub mod render;
pub mod report;
pub mod run;
pub mod train;
pub mod util;

pub use error::{Error, Result};
