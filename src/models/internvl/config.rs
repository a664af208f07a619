//! `config.json` of an InternVL2.5 (`internvl_chat`) or Sa2VA (`sa2va_chat`) checkpoint.

use serde::Deserialize;

fn default_norm() -> String {
    "rms_norm".into()
}
fn default_ln_eps() -> f64 {
    1e-6
}
fn default_act() -> String {
    "gelu".into()
}
fn default_true() -> bool {
    true
}

/// InternViT settings (`vision_config`); a missing key takes `InternVisionConfig`'s default
/// (the 6B's: no qkv bias, qk-norm, RMSNorm), as transformers fills it in.
#[derive(Debug, Clone, Deserialize)]
pub struct VisionConfig {
    pub hidden_size: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub image_size: usize,
    pub patch_size: usize,
    #[serde(default)]
    pub qkv_bias: bool,
    /// "layer_norm" (InternViT-300M) or "rms_norm" (InternViT-6B).
    #[serde(default = "default_norm")]
    pub norm_type: String,
    #[serde(default = "default_ln_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// q/k RMSNorm over the full width (InternViT-6B).
    #[serde(default = "default_true")]
    pub qk_normalization: bool,
}

fn default_ratio() -> f64 {
    0.5
}
fn default_select() -> i64 {
    -1
}
fn default_ps() -> String {
    "v1".into()
}
fn default_max_patch() -> usize {
    6
}
fn default_min_patch() -> usize {
    1
}

/// The top-level checkpoint config; `llm_config` is kept raw and parsed per architecture. A
/// missing key takes the default of `Sa2VAChatConfig` / `InternVLChatConfig` (the same in both:
/// `ps_version` v1, no dynamic tiling, no thumbnail, at most 6 tiles), as the reference reads it;
/// `template` has no usable default there (both call `.replace`/a lookup on it), so it is required.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    #[serde(default)]
    pub model_type: String,
    pub vision_config: VisionConfig,
    pub llm_config: serde_json::Value,
    pub template: String,
    #[serde(default = "default_ratio")]
    pub downsample_ratio: f64,
    #[serde(default = "default_select")]
    pub select_layer: i64,
    #[serde(default = "default_ps")]
    pub ps_version: String,
    #[serde(default)]
    pub force_image_size: Option<usize>,
    #[serde(default = "default_max_patch")]
    pub max_dynamic_patch: usize,
    #[serde(default = "default_min_patch")]
    pub min_dynamic_patch: usize,
    #[serde(default)]
    pub use_thumbnail: bool,
    #[serde(default)]
    pub dynamic_image_size: bool,
}

/// Which decoder the checkpoint carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LlmArch {
    Qwen2,
    InternLm2,
}

impl Config {
    /// Tile size: `force_image_size`, else the ViT's `image_size`.
    pub fn image_size(&self) -> usize {
        self.force_image_size.unwrap_or(self.vision_config.image_size)
    }

    /// Image tokens per tile after pixel shuffle: (S/patch)² · ratio².
    pub fn num_image_token(&self) -> usize {
        let side = self.image_size() / self.vision_config.patch_size;
        ((side * side) as f64 * self.downsample_ratio * self.downsample_ratio).round() as usize
    }

    /// The tile budget the reference inference code uses for this model type: Sa2VA's
    /// predict_forward fixes 12; InternVL's chat uses `max_dynamic_patch`.
    pub fn default_max_tiles(&self) -> usize {
        if self.model_type == "sa2va_chat" {
            12
        } else {
            self.max_dynamic_patch
        }
    }

    /// Tiling switches `(dynamic, min tiles, thumbnail)`: Sa2VA's `preparing_for_generation`
    /// fixes dynamic tiling from 1 tile with a thumbnail whatever its config says; InternVL
    /// checkpoints use their config.
    pub fn tiling(&self) -> (bool, usize, bool) {
        if self.model_type == "sa2va_chat" {
            (true, 1, true)
        } else {
            (self.dynamic_image_size, self.min_dynamic_patch, self.use_thumbnail)
        }
    }

    pub fn llm_arch(&self) -> Result<LlmArch, String> {
        let arch = self
            .llm_config
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(|a| a.as_str())
            .unwrap_or("");
        let mt = self.llm_config.get("model_type").and_then(|a| a.as_str()).unwrap_or("");
        match (arch, mt) {
            ("Qwen2ForCausalLM", _) | (_, "qwen2") => Ok(LlmArch::Qwen2),
            ("InternLM2ForCausalLM", _) | (_, "internlm2") => Ok(LlmArch::InternLm2),
            _ => Err(format!("unsupported llm_config architecture {arch:?} (model_type {mt:?}); supported: Qwen2ForCausalLM, InternLM2ForCausalLM")),
        }
    }
}

/// Refuse, naming the family, a Qwen-VL-based Sa2VA checkpoint given to the InternVL loader: the
/// Qwen2.5-VL and Qwen3-VL based checkpoints write a `Qwen*VLConfig` (`text_config` +
/// `vision_config`) where the InternVL-based ones write `llm_config` + `vision_config`; both of
/// those families load through `models::chat::Chat`.
pub fn check_family(config: &serde_json::Value) -> Result<(), String> {
    if config.get("llm_config").is_some() || config.get("text_config").is_none() {
        return Ok(());
    }
    let vision = config
        .get("vision_config")
        .and_then(|v| v.get("model_type"))
        .and_then(|t| t.as_str())
        .unwrap_or("");
    let family = if vision.contains("qwen3") {
        "Qwen3-VL"
    } else if vision.contains("qwen2_5") || vision.contains("qwen2") {
        "Qwen2.5-VL"
    } else {
        "a Qwen-VL"
    };
    if family != "a Qwen-VL" {
        return Err(format!(
            "this is a Sa2VA checkpoint built on {family} (vision_config.model_type {vision:?}), not InternVL: \
             load it as models::chat::Chat (which picks the family from the config)"
        ));
    }
    Err(format!(
        "this is a Sa2VA checkpoint built on {family} (vision_config.model_type {vision:?}); perceptio runs the \
         InternVL-based members (Sa2VA-1B/4B/8B/26B, Sa2VA-InternVL3-*) and the Qwen2.5-VL and Qwen3-VL based ones, \
         and does not know this one"
    ))
}

/// A note when the config looks like the Sa2VA-1B that `ByteDance/Sa2VA-1B` held before
/// September 2025 (InternVL2.0-1B + Qwen2-0.5B; the repo was replaced in place by the
/// InternVL2.5-1B + Qwen2.5-0.5B model perceptio targets). Same architecture and the same
/// predict_forward, so it runs, but its numbers are not the model card's. Sa2VA's converter
/// keeps the base model's names: `llm_config._name_or_path` (the LLM, `Qwen2-0.5B*`) or the
/// top-level `_name_or_path` (the InternVL it loaded, `InternVL2-1B`); the last path part counts.
pub fn superseded_note(config: &serde_json::Value) -> Option<String> {
    let last = |v: Option<&serde_json::Value>| {
        v.and_then(|v| v.as_str())
            .and_then(|n| n.trim_end_matches('/').rsplit('/').next())
            .map(str::to_string)
    };
    let llm = last(config.get("llm_config").and_then(|l| l.get("_name_or_path")));
    let base = last(config.get("_name_or_path"));
    let what = match (llm, base) {
        (Some(l), _) if l.starts_with("Qwen2-0.5B") => format!("its LLM is {l}"),
        (_, Some(b)) if b.starts_with("InternVL2-1B") => format!("it was converted from {b}"),
        _ => return None,
    };
    Some(format!(
        "{what}: it looks like the pre-September-2025 Sa2VA-1B (InternVL2.0 + Qwen2-0.5B); perceptio targets the current \
         ByteDance/Sa2VA-1B (InternVL2.5 + Qwen2.5-0.5B), whose model-card numbers this one will not reproduce"
    ))
}

#[cfg(test)]
mod family_tests {
    use super::*;

    #[test]
    fn qwen_vl_members_are_sent_to_chat_by_name_and_the_old_1b_is_noted() {
        let qwen3 = serde_json::json!({"model_type": "sa2va_chat", "text_config": {}, "vision_config": {"model_type": "qwen3_vl"}});
        let e = check_family(&qwen3).unwrap_err();
        // Qwen3-VL runs, but through models::chat::Chat, not the InternVL loader.
        assert!(e.contains("Qwen3-VL") && e.contains("Chat"), "{e}");
        let qwen25 = serde_json::json!({"text_config": {}, "vision_config": {"model_type": "qwen2_5_vl"}});
        let e = check_family(&qwen25).unwrap_err();
        assert!(e.contains("Qwen2.5-VL") && e.contains("Chat"), "{e}");
        let internvl =
            serde_json::json!({"llm_config": {"_name_or_path": "Qwen/Qwen2.5-0.5B-Instruct"}, "vision_config": {}});
        assert!(check_family(&internvl).is_ok() && superseded_note(&internvl).is_none());
        let old = serde_json::json!({"llm_config": {"_name_or_path": "/ckpt/Qwen2-0.5B-Instruct"}});
        assert!(superseded_note(&old).unwrap().contains("pre-September-2025"));
        let old = serde_json::json!({"_name_or_path": "./pretrained/InternVL2-1B/", "llm_config": {}});
        assert!(superseded_note(&old).unwrap().contains("converted from InternVL2-1B"));
        // the current 1B and the InternVL3 members are not flagged
        for name in ["./pretrained/InternVL2_5-1B/", "OpenGVLab/InternVL3-2B"] {
            let c = serde_json::json!({"_name_or_path": name, "llm_config": {"_name_or_path": "Qwen/Qwen2.5-1.5B-Instruct"}});
            assert!(superseded_note(&c).is_none(), "{name}");
        }
    }
}

#[cfg(test)]
mod default_tests {
    use super::*;

    fn minimal(extra: serde_json::Value) -> serde_json::Value {
        let mut c = serde_json::json!({
            "vision_config": {"hidden_size": 8, "num_attention_heads": 2, "intermediate_size": 16,
                              "num_hidden_layers": 1, "image_size": 28, "patch_size": 14},
            "llm_config": {"architectures": ["Qwen2ForCausalLM"]},
        });
        c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        c
    }

    #[test]
    fn missing_keys_take_the_reference_config_defaults() {
        let c: Config = serde_json::from_value(minimal(serde_json::json!({"template": "qwen_chat"}))).unwrap();
        // InternVLChatConfig / Sa2VAChatConfig defaults
        assert_eq!(c.ps_version, "v1");
        assert_eq!(
            (c.dynamic_image_size, c.use_thumbnail, c.max_dynamic_patch),
            (false, false, 6)
        );
        assert_eq!(c.tiling(), (false, 1, false));
        assert_eq!(c.default_max_tiles(), 6);
        // Sa2VA's predict_forward tiles dynamically with a thumbnail whatever the config says
        let s: Config = serde_json::from_value(minimal(
            serde_json::json!({"template": "qwen_chat", "model_type": "sa2va_chat"}),
        ))
        .unwrap();
        assert_eq!((s.tiling(), s.default_max_tiles()), ((true, 1, true), 12));
        // no template: the reference cannot run it either, so it is an error naming the field
        let e = serde_json::from_value::<Config>(minimal(serde_json::json!({})))
            .unwrap_err()
            .to_string();
        assert!(e.contains("template"), "{e}");
    }
}
