//! The tiny Sa2VA-layout checkpoint of fixtures/sa2va, assembled as a sharded checkpoint
//! (see fixtures/sa2va/README.md).
#![allow(dead_code)]

use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(rel)
}

/// Build the sharded Sa2VA-layout checkpoint in `dir`.
pub fn assemble(dir: &Path) {
    let base = candle_core::safetensors::load(fixture("internvl/tiny-qwen2/model.safetensors"), &Device::Cpu).unwrap();
    let shard1: HashMap<String, Tensor> = base.into_iter().filter(|(k, _)| !k.starts_with("text_hidden_fcs.") && !k.starts_with("grounding_encoder.")).collect();
    candle_core::safetensors::save(&shard1, dir.join("model-00001-of-00003.safetensors")).unwrap();
    std::fs::copy(fixture("sam2/tiny_sa2va_sam2.safetensors"), dir.join("model-00002-of-00003.safetensors")).unwrap();
    std::fs::copy(fixture("sa2va/text_hidden_fcs.safetensors"), dir.join("model-00003-of-00003.safetensors")).unwrap();
    let mut map = serde_json::Map::new();
    for (i, f) in ["model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors"].iter().enumerate() {
        let t = candle_core::safetensors::load(dir.join(f), &Device::Cpu).unwrap();
        for k in t.keys() {
            assert!(map.insert(k.clone(), serde_json::Value::String(f.to_string())).is_none(), "duplicate key {k} (shard {})", i + 1);
        }
    }
    let idx = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(dir.join("model.safetensors.index.json"), idx.to_string()).unwrap();
    std::fs::copy(fixture("sa2va/config.json"), dir.join("config.json")).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"] {
        std::fs::copy(fixture(&format!("internvl/tiny-qwen2/{f}")), dir.join(f)).unwrap();
    }
}

