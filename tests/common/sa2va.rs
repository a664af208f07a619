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
    assemble_from(dir, "internvl/tiny-qwen2/model.safetensors", "sa2va");
}

/// Build the sharded Sa2VA-InternVL3-layout checkpoint of fixtures/sa2va_internvl3 in `dir`
/// (its own InternVL part with an untied lm_head; see fixtures/sa2va_internvl3/README.md).
pub fn assemble_internvl3(dir: &Path) {
    assemble_from(dir, "sa2va_internvl3/internvl.safetensors", "sa2va_internvl3");
}

/// Build the sharded Sa2VA-26B-layout checkpoint of fixtures/sa2va_26b in `dir`: an
/// InternViT-6B-style tower + mlp1 + InternLM2 (its own `output` head), and InternLM2's
/// SentencePiece `tokenizer.model` of fixtures/tokenizer/internlm2-spm instead of tiny-qwen2's
/// tokenizer (see fixtures/sa2va_26b/README.md).
pub fn assemble_26b(dir: &Path) {
    assemble_from(dir, "sa2va_26b/internvl.safetensors", "sa2va_26b");
    for f in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"] {
        std::fs::remove_file(dir.join(f)).unwrap();
    }
    for f in ["tokenizer.model", "tokenizer_config.json"] {
        std::fs::copy(fixture(&format!("tokenizer/internlm2-spm/{f}")), dir.join(f)).unwrap();
    }
}

/// Shards: the InternVL part `ivl` (minus `text_hidden_fcs.*` and `grounding_encoder.*`), the
/// tiny SAM2, and `text_hidden_fcs` + `config.json` of fixtures/`layout`; tiny-qwen2's tokenizer.
fn assemble_from(dir: &Path, ivl: &str, layout: &str) {
    let base = candle_core::safetensors::load(fixture(ivl), &Device::Cpu).unwrap();
    let shard1: HashMap<String, Tensor> = base
        .into_iter()
        .filter(|(k, _)| !k.starts_with("text_hidden_fcs.") && !k.starts_with("grounding_encoder."))
        .collect();
    candle_core::safetensors::save(&shard1, dir.join("model-00001-of-00003.safetensors")).unwrap();
    std::fs::copy(
        fixture("sam2/tiny_sa2va_sam2.safetensors"),
        dir.join("model-00002-of-00003.safetensors"),
    )
    .unwrap();
    std::fs::copy(
        fixture(&format!("{layout}/text_hidden_fcs.safetensors")),
        dir.join("model-00003-of-00003.safetensors"),
    )
    .unwrap();
    let mut map = serde_json::Map::new();
    for (i, f) in [
        "model-00001-of-00003.safetensors",
        "model-00002-of-00003.safetensors",
        "model-00003-of-00003.safetensors",
    ]
    .iter()
    .enumerate()
    {
        let t = candle_core::safetensors::load(dir.join(f), &Device::Cpu).unwrap();
        for k in t.keys() {
            assert!(
                map.insert(k.clone(), serde_json::Value::String(f.to_string()))
                    .is_none(),
                "duplicate key {k} (shard {})",
                i + 1
            );
        }
    }
    let idx = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(dir.join("model.safetensors.index.json"), idx.to_string()).unwrap();
    std::fs::copy(fixture(&format!("{layout}/config.json")), dir.join("config.json")).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"] {
        std::fs::copy(fixture(&format!("internvl/tiny-qwen2/{f}")), dir.join(f)).unwrap();
    }
}

/// Turn the assembled Sa2VA checkpoint in `dir` into a tiny Perceptio checkpoint: depth tokens
/// `<DEPTH_START>`, `<DEPTH_END>`, `<DEPTH_0..15>` added to the tokenizer, the (tied) embedding
/// matrix grown by as many random rows (as `resize_token_embeddings` would), the tiny VQ-VAE of
/// fixtures/depth as `vqvae.pt`, and a `perceptio.depth` block (3×3 grid, 16 codes).
pub fn add_depth_tokens(dir: &Path) {
    let tok_path = dir.join("tokenizer.json");
    let mut tok: serde_json::Value = serde_json::from_slice(&std::fs::read(&tok_path).unwrap()).unwrap();
    let base = 417u32;
    let mut names = vec!["<DEPTH_START>".to_string(), "<DEPTH_END>".to_string()];
    names.extend((0..16).map(|k| format!("<DEPTH_{k}>")));
    for (i, n) in names.iter().enumerate() {
        tok["added_tokens"].as_array_mut().unwrap().push(serde_json::json!({
            "id": base + i as u32, "content": n, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true
        }));
    }
    std::fs::write(&tok_path, tok.to_string()).unwrap();
    let shard = dir.join("model-00001-of-00003.safetensors");
    let mut t = candle_core::safetensors::load(&shard, &Device::Cpu).unwrap();
    let key = "language_model.model.embed_tokens.weight";
    let e = t[key].to_dtype(candle_core::DType::F32).unwrap();
    let (_, h) = e.dims2().unwrap();
    // Deterministic "random" rows with the scale of the existing ones.
    let rows: Vec<f32> = (0..names.len() * h)
        .map(|i| ((i as f32 * 12.9898).sin() * 43758.547).fract() * 0.04)
        .collect();
    let extra = Tensor::from_vec(rows, (names.len(), h), &Device::Cpu).unwrap();
    let grown = Tensor::cat(&[&e, &extra], 0).unwrap().to_dtype(t[key].dtype()).unwrap();
    t.insert(key.to_string(), grown);
    candle_core::safetensors::save(&t, &shard).unwrap();
    let cfg_path = dir.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    cfg["llm_config"]["vocab_size"] = serde_json::json!(base as usize + names.len());
    let vq: serde_json::Value = serde_json::from_slice(&std::fs::read(fixture("depth/goldens.json")).unwrap()).unwrap();
    cfg["perceptio"] = serde_json::json!({"depth": {
        "tokens": {"grid": [3, 3], "codebook_size": 16},
        "vqvae": {"file": "vqvae.pt"},
        "vqvae_config": vq["tiny_config"],
    }});
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    std::fs::copy(fixture("depth/tiny_vqvae.pt"), dir.join("vqvae.pt")).unwrap();
}
