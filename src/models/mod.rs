//! Model implementations in the candle-transformers style: a serde `Config`, one struct per
//! module built from a `VarBuilder` with the checkpoint's own key names, a `forward`, and a
//! `tracing` span per module so a profile names the slow part.

pub mod attention;
pub mod chat;
pub mod chat_template;
pub mod checkpoint;
pub mod conv;
pub mod depth_anything;
pub mod depth_tokens;
pub mod device;
pub mod fastops;
pub mod generate;
pub mod internlm2;
pub mod internvl;
pub mod nn;
pub mod perceptio;
pub mod q8_0;
pub mod qwen2;
pub mod qwen2_5_vl;
pub mod qwen3_vl;
pub mod sam2;
pub mod spm;
pub mod template;
pub mod tiktoken;
pub mod tokenizer;
pub mod vqvae;

/// Largest |a − b| over two tensors of one shape (the unit tests' tolerance checks).
#[cfg(test)]
pub(crate) fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>())
        .expect("same shapes, f32")
}
