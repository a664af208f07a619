//! Qwen2.5-VL-based Sa2VA (`ByteDance/Sa2VA-Qwen2_5-VL-*`): Sa2VA's `Sa2VAChatModelQwen` over
//! transformers' `Qwen2_5_VLForConditionalGeneration`, in the same layout and `predict_forward` as
//! the Qwen3-VL family, so it runs through [`crate::models::qwen3_vl::Qwen3Vl`] with this module's
//! config and window-attention vision tower and the Qwen2.5 decoder flavour.

pub mod config;
pub mod vision;

pub use config::{is_qwen2_5_vl, Config};
