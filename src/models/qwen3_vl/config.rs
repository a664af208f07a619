//! `config.json` of a Sa2VA-Qwen3-VL checkpoint: transformers' `Qwen3VLConfig` fields (Sa2VA's
//! `Sa2VAChatConfigQwen` adds only `template`), read with transformers 4.57's defaults.

use candle_nn::Activation;

// transformers 4.57's Qwen3VL*Config defaults, for keys a config leaves out.
fn d_visionconfig_depth() -> usize {
    27
}
fn d_visionconfig_hidden_size() -> usize {
    1152
}
fn d_visionconfig_intermediate_size() -> usize {
    4304
}
fn d_visionconfig_num_heads() -> usize {
    16
}
fn d_visionconfig_patch_size() -> usize {
    16
}
fn d_visionconfig_spatial_merge_size() -> usize {
    2
}
fn d_visionconfig_temporal_patch_size() -> usize {
    2
}
fn d_visionconfig_out_hidden_size() -> usize {
    3584
}
fn d_visionconfig_num_position_embeddings() -> usize {
    2304
}
fn d_textconfig_vocab_size() -> usize {
    151936
}
fn d_textconfig_hidden_size() -> usize {
    4096
}
fn d_textconfig_intermediate_size() -> usize {
    22016
}
fn d_textconfig_num_hidden_layers() -> usize {
    32
}
fn d_textconfig_num_attention_heads() -> usize {
    32
}
fn d_textconfig_num_key_value_heads() -> usize {
    32
}
fn d_textconfig_head_dim() -> usize {
    128
}
fn d_config_image_token_id() -> u32 {
    151655
}
fn d_config_vision_start_token_id() -> u32 {
    151652
}
fn d_config_vision_end_token_id() -> u32 {
    151653
}
fn d_deepstack() -> Vec<usize> {
    vec![8, 16, 24]
}
fn d_theta() -> f64 {
    5_000_000.0
}
fn three() -> usize {
    3
}
fn gelu_tanh() -> Activation {
    Activation::GeluPytorchTanh
}
fn silu() -> Activation {
    Activation::Silu
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct VisionConfig {
    #[serde(default = "d_visionconfig_depth")]
    pub depth: usize,
    #[serde(default = "d_visionconfig_hidden_size")]
    pub hidden_size: usize,
    #[serde(default = "gelu_tanh")]
    pub hidden_act: Activation,
    #[serde(default = "d_visionconfig_intermediate_size")]
    pub intermediate_size: usize,
    #[serde(default = "d_visionconfig_num_heads")]
    pub num_heads: usize,
    #[serde(default = "three")]
    pub in_channels: usize,
    #[serde(default = "d_visionconfig_patch_size")]
    pub patch_size: usize,
    #[serde(default = "d_visionconfig_spatial_merge_size")]
    pub spatial_merge_size: usize,
    #[serde(default = "d_visionconfig_temporal_patch_size")]
    pub temporal_patch_size: usize,
    #[serde(default = "d_visionconfig_out_hidden_size")]
    pub out_hidden_size: usize,
    #[serde(default = "d_visionconfig_num_position_embeddings")]
    pub num_position_embeddings: usize,
    #[serde(default = "d_deepstack")]
    pub deepstack_visual_indexes: Vec<usize>,
}

/// `rope_scaling` of the text config: only the default rope type with an MRoPE section is known.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct RopeScaling {
    #[serde(default)]
    pub rope_type: Option<String>,
    #[serde(default)]
    pub mrope_section: Option<Vec<usize>>,
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct TextConfig {
    #[serde(default = "d_textconfig_vocab_size")]
    pub vocab_size: usize,
    #[serde(default = "d_textconfig_hidden_size")]
    pub hidden_size: usize,
    #[serde(default = "d_textconfig_intermediate_size")]
    pub intermediate_size: usize,
    #[serde(default = "d_textconfig_num_hidden_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "d_textconfig_num_attention_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "d_textconfig_num_key_value_heads")]
    pub num_key_value_heads: usize,
    #[serde(default = "d_textconfig_head_dim")]
    pub head_dim: usize,
    #[serde(default = "silu")]
    pub hidden_act: Activation,
    #[serde(default = "crate::models::nn::default_rms_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "d_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub rope_scaling: Option<RopeScaling>,
    #[serde(default)]
    pub attention_bias: bool,
    /// Tied embeddings store no `lm_head` (Sa2VA's converter unties and stores it).
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// One id or a list (generation stops on any).
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
}

impl TextConfig {
    /// The MRoPE (t, h, w) split of the rotary frequencies; transformers' default is [24, 20, 20].
    pub fn mrope_section(&self) -> Result<[usize; 3], String> {
        let rs = self.rope_scaling.as_ref();
        if let Some(t) = rs.and_then(|r| r.rope_type.as_deref()) {
            if t != "default" {
                return Err(format!(
                    "text_config.rope_scaling.rope_type {t:?} is not supported (only \"default\")"
                ));
            }
        }
        let s = rs
            .and_then(|r| r.mrope_section.clone())
            .unwrap_or_else(|| vec![24, 20, 20]);
        if s.len() != 3 || s.iter().sum::<usize>() != self.head_dim / 2 {
            return Err(format!(
                "text_config.rope_scaling.mrope_section {s:?} must be 3 numbers summing to head_dim/2 = {}",
                self.head_dim / 2
            ));
        }
        Ok([s[0], s[1], s[2]])
    }

    /// `eos_token_id` as a list.
    pub fn eos_ids(&self) -> Vec<u32> {
        match &self.eos_token_id {
            Some(serde_json::Value::Number(n)) => n.as_u64().map(|v| vec![v as u32]).unwrap_or_default(),
            Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_u64()).map(|v| v as u32).collect(),
            _ => vec![],
        }
    }
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct Config {
    pub text_config: TextConfig,
    pub vision_config: VisionConfig,
    #[serde(default = "d_config_image_token_id")]
    pub image_token_id: u32,
    #[serde(default = "d_config_vision_start_token_id")]
    pub vision_start_token_id: u32,
    #[serde(default = "d_config_vision_end_token_id")]
    pub vision_end_token_id: u32,
    #[serde(default)]
    pub template: Option<String>,
}

/// Whether a config is a Qwen3-VL-based Sa2VA (or plain Qwen3-VL) checkpoint.
pub fn is_qwen3_vl(config: &serde_json::Value) -> bool {
    let mt = |v: Option<&serde_json::Value>| {
        v.and_then(|v| v.get("model_type"))
            .and_then(|t| t.as_str())
            .unwrap_or("")
            .to_string()
    };
    config.get("llm_config").is_none()
        && (mt(config.get("vision_config")).starts_with("qwen3_vl")
            || mt(config.get("text_config")).starts_with("qwen3_vl"))
}
