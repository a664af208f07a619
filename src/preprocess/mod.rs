//! Image preprocessing, bit-exact with the Python reference.
//!
//! - [`image_io`]: load a PNG/JPEG (or stdin) as 8-bit RGB the way `Image.open(p).convert("RGB")`
//!   does, refusing oversized or broken files from their header.
//! - [`resize`]: Pillow's `Image.resize(size)` (default filter BICUBIC) for 8-bit RGB, ported from
//!   `libImaging/Resample.c` with its fixed-point arithmetic, so the uint8 output is identical.
//! - [`internvl`]: InternVL's `dynamic_preprocess` (aspect-ratio grid, row-major tiles, thumbnail)
//!   and `build_transform` (`ToTensor` + ImageNet `Normalize`).
//!
//! Goldens: `tools/gen_preprocess_goldens.py` (Pillow 13.0.0, torchvision 0.29.2; resize also
//! Pillow 12.3.0 and 12.1.1) writes
//! `fixtures/preprocess/`; `tests/preprocess.rs` checks every tile byte for byte.

/// ImageNet mean / std, as InternVL (`IMAGENET_MEAN` / `IMAGENET_STD`), SAM2 and Depth
/// Anything's processor all use them. Kept as f64 literals and rounded to f32 at use, as
/// `torch.as_tensor(mean, dtype=float32)` does (each rounds to the same f32 as its f32 literal).
pub const IMAGENET_MEAN: [f64; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f64; 3] = [0.229, 0.224, 0.225];

pub mod image_io;
pub mod internvl;
pub mod qwen_vl;
pub mod resize;
pub mod sam2;

pub use image_io::{load_depth_image, load_rgb, MAX_PIXELS};
pub use internvl::{
    dynamic_tiles, dynamic_tiles_compat, find_closest_aspect_ratio, normalize_tiles, target_ratios, TileGrid,
};
pub use resize::{resize_bicubic, resize_bicubic_compat, PillowCompat};
