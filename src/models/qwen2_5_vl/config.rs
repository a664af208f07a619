//! `config.json` of a Sa2VA-Qwen2.5-VL checkpoint: transformers' `Qwen2_5_VLConfig` fields (Sa2VA's
//! `Sa2VAChatConfigQwen` adds only `template`), read with transformers 4.57's defaults. The text
//! fields sit in `text_config` (as 4.57 writes them) or, in older files, at the top level.

use crate::models::qwen3_vl::config as q3;
use candle_nn::Activation;

// transformers 4.57's Qwen2_5_VL*Config defaults, for keys a config leaves out.
fn d_depth() -> usize {
    32
}
fn d_vision_hidden() -> usize {
    3584
}
fn d_vision_intermediate() -> usize {
    3420
}
fn d_heads() -> usize {
    16
}
fn d_patch() -> usize {
    14
}
fn two() -> usize {
    2
}
fn three() -> usize {
    3
}
fn d_window() -> usize {
    112
}
fn d_fullatt() -> Vec<usize> {
    vec![7, 15, 23, 31]
}
fn d_vocab() -> usize {
    152064
}
fn d_text_hidden() -> usize {
    8192
}
fn d_text_intermediate() -> usize {
    29568
}
fn d_layers() -> usize {
    80
}
fn d_text_heads() -> usize {
    64
}
fn d_kv() -> usize {
    8
}
fn d_theta() -> f64 {
    1_000_000.0
}
fn silu() -> Activation {
    Activation::Silu
}
fn d_image_token() -> u32 {
    151655
}
fn d_vision_start() -> u32 {
    151652
}
fn d_vision_end() -> u32 {
    151653
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct VisionConfig {
    #[serde(default = "d_depth")]
    pub depth: usize,
    #[serde(default = "d_vision_hidden")]
    pub hidden_size: usize,
    #[serde(default = "silu")]
    pub hidden_act: Activation,
    #[serde(default = "d_vision_intermediate")]
    pub intermediate_size: usize,
    #[serde(default = "d_heads")]
    pub num_heads: usize,
    /// `in_chans` in the original Qwen2.5-VL release's config.json.
    #[serde(default = "three", alias = "in_chans")]
    pub in_channels: usize,
    #[serde(default = "d_patch")]
    pub patch_size: usize,
    #[serde(default = "two")]
    pub spatial_merge_size: usize,
    #[serde(default = "two")]
    pub temporal_patch_size: usize,
    /// Side of an attention window in pixels (`window_size / merge / patch` merged tokens).
    #[serde(default = "d_window")]
    pub window_size: usize,
    /// Blocks that attend over the whole image; the others attend within windows.
    #[serde(default = "d_fullatt")]
    pub fullatt_block_indexes: Vec<usize>,
    #[serde(default = "d_vision_hidden")]
    pub out_hidden_size: usize,
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct TextConfig {
    #[serde(default = "d_vocab")]
    pub vocab_size: usize,
    #[serde(default = "d_text_hidden")]
    pub hidden_size: usize,
    #[serde(default = "d_text_intermediate")]
    pub intermediate_size: usize,
    #[serde(default = "d_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "d_text_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "d_kv")]
    pub num_key_value_heads: usize,
    #[serde(default = "silu")]
    pub hidden_act: Activation,
    #[serde(default = "crate::models::nn::default_rms_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "d_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    pub use_sliding_window: bool,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
}

#[derive(Debug, Clone, serde::Deserialize)]
struct Top {
    vision_config: VisionConfig,
    #[serde(default = "d_image_token")]
    image_token_id: u32,
    #[serde(default = "d_vision_start")]
    vision_start_token_id: u32,
    #[serde(default = "d_vision_end")]
    vision_end_token_id: u32,
    #[serde(default)]
    template: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub text_config: TextConfig,
    pub vision_config: VisionConfig,
    pub image_token_id: u32,
    pub vision_start_token_id: u32,
    pub vision_end_token_id: u32,
    pub template: Option<String>,
}

impl Config {
    /// Parse config.json's value; errors name the key.
    pub fn from_value(v: &serde_json::Value) -> Result<Self, String> {
        let top: Top = serde_json::from_value(v.clone()).map_err(|e| format!("unexpected config: {e}"))?;
        let text_v = v.get("text_config").unwrap_or(v);
        let text: TextConfig =
            serde_json::from_value(text_v.clone()).map_err(|e| format!("unexpected text_config: {e}"))?;
        if text.use_sliding_window {
            return Err("text_config.use_sliding_window is true: sliding-window attention is not supported".into());
        }
        if text.num_attention_heads == 0 || !text.hidden_size.is_multiple_of(text.num_attention_heads) {
            return Err(format!(
                "text_config.hidden_size {} is not a multiple of num_attention_heads {}",
                text.hidden_size, text.num_attention_heads
            ));
        }
        let c = top.vision_config.clone();
        if c.num_heads == 0 || !c.hidden_size.is_multiple_of(c.num_heads) {
            return Err(format!(
                "vision_config.hidden_size {} is not a multiple of num_heads {}",
                c.hidden_size, c.num_heads
            ));
        }
        let unit = c.spatial_merge_size * c.patch_size;
        if unit == 0 || c.window_size == 0 || !c.window_size.is_multiple_of(unit) {
            return Err(format!(
                "vision_config.window_size {} is not a multiple of spatial_merge_size·patch_size {}",
                c.window_size,
                c.spatial_merge_size * c.patch_size
            ));
        }
        if let Some(&i) = c.fullatt_block_indexes.iter().find(|&&i| i >= c.depth) {
            return Err(format!(
                "vision_config.fullatt_block_indexes names block {i} of {}",
                c.depth
            ));
        }
        Ok(Self {
            text_config: text,
            vision_config: top.vision_config,
            image_token_id: top.image_token_id,
            vision_start_token_id: top.vision_start_token_id,
            vision_end_token_id: top.vision_end_token_id,
            template: top.template,
        })
    }

    /// The Qwen3-VL-shaped config the shared prompt/text code reads (no DeepStack, no learned
    /// positions; head_dim = hidden / heads; the MRoPE sections from `rope_scaling`).
    pub fn shared(&self) -> Result<q3::Config, String> {
        let t = &self.text_config;
        let v = &self.vision_config;
        let rs = t.rope_scaling.as_ref();
        // 4.57 rewrites the original release's `"type": "mrope"` to rope_type "default".
        let rope_type = rs
            .and_then(|r| r.get("rope_type").or_else(|| r.get("type")))
            .and_then(|x| x.as_str())
            .map(|s| {
                if s == "mrope" {
                    "default".to_string()
                } else {
                    s.to_string()
                }
            });
        let section = rs
            .and_then(|r| r.get("mrope_section"))
            .map(|s| serde_json::from_value::<Vec<usize>>(s.clone()))
            .transpose()
            .map_err(|e| format!("text_config.rope_scaling.mrope_section: {e}"))?;
        if section.is_none() {
            return Err("text_config.rope_scaling.mrope_section is missing (Qwen2.5-VL needs its MRoPE split)".into());
        }
        let text = q3::TextConfig {
            vocab_size: t.vocab_size,
            hidden_size: t.hidden_size,
            intermediate_size: t.intermediate_size,
            num_hidden_layers: t.num_hidden_layers,
            num_attention_heads: t.num_attention_heads,
            num_key_value_heads: t.num_key_value_heads,
            head_dim: t.hidden_size / t.num_attention_heads,
            hidden_act: t.hidden_act,
            rms_norm_eps: t.rms_norm_eps,
            rope_theta: t.rope_theta,
            rope_scaling: Some(q3::RopeScaling {
                rope_type,
                mrope_section: section,
            }),
            attention_bias: true,
            tie_word_embeddings: t.tie_word_embeddings,
            eos_token_id: t.eos_token_id.clone(),
        };
        text.mrope_section()?;
        let vision = q3::VisionConfig {
            depth: v.depth,
            hidden_size: v.hidden_size,
            hidden_act: v.hidden_act,
            intermediate_size: v.intermediate_size,
            num_heads: v.num_heads,
            in_channels: v.in_channels,
            patch_size: v.patch_size,
            spatial_merge_size: v.spatial_merge_size,
            temporal_patch_size: v.temporal_patch_size,
            out_hidden_size: v.out_hidden_size,
            num_position_embeddings: 0,
            deepstack_visual_indexes: vec![],
        };
        Ok(q3::Config {
            text_config: text,
            vision_config: vision,
            image_token_id: self.image_token_id,
            vision_start_token_id: self.vision_start_token_id,
            vision_end_token_id: self.vision_end_token_id,
            template: self.template.clone(),
        })
    }
}

/// Whether a config is a Qwen2.5-VL-based Sa2VA (or plain Qwen2.5-VL) checkpoint.
pub fn is_qwen2_5_vl(config: &serde_json::Value) -> bool {
    let mt = |v: Option<&serde_json::Value>| {
        v.and_then(|v| v.get("model_type"))
            .and_then(|t| t.as_str())
            .unwrap_or("")
            .to_string()
    };
    config.get("llm_config").is_none()
        && (mt(config.get("vision_config")).starts_with("qwen2_5_vl")
            || mt(config.get("text_config")).starts_with("qwen2_5_vl")
            || mt(Some(config)).starts_with("qwen2_5_vl"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_top_level_text_fields_and_mrope_type_are_read() {
        let v = serde_json::json!({"model_type": "qwen2_5_vl", "hidden_size": 2048, "num_attention_heads": 16,
            "num_key_value_heads": 2, "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
            "vision_config": {"hidden_size": 1280, "in_chans": 3, "out_hidden_size": 2048}});
        assert!(is_qwen2_5_vl(&v));
        let c = Config::from_value(&v).unwrap();
        let s = c.shared().unwrap();
        assert_eq!(s.text_config.head_dim, 128);
        assert_eq!(s.text_config.mrope_section().unwrap(), [16, 24, 24]);
        assert_eq!(c.vision_config.fullatt_block_indexes, vec![7, 15, 23, 31]);
        let bad = serde_json::json!({"text_config": {"hidden_size": 64, "num_attention_heads": 4},
            "vision_config": {"model_type": "qwen2_5_vl"}});
        let e = Config::from_value(&bad).unwrap().shared().unwrap_err();
        assert!(e.contains("mrope_section"), "{e}");
    }
}
