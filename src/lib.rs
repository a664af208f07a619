//! perceptio: spatial grounding with large vision-language models.
//!
//! Today the library holds the benchmark scorers (`eval`) and their file formats; the model
//! stack (InternVL, SAM2, depth tokens) and the hub client come next (see docs/architecture.md).

pub mod cli;
pub mod depthmap;
pub mod error;
pub mod eval;
pub mod hub;
pub mod mask;
pub mod models;
pub mod preprocess;
pub mod render;
pub mod run;
pub mod train;
pub mod util;

pub use error::{Error, Result};
