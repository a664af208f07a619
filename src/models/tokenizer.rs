//! A model directory's tokenizer: `tokenizer.json` (what transformers' fast tokenizers save), or
//! Qwen2's slow-tokenizer files `vocab.json` + `merges.txt` read natively into the same
//! byte-level BPE transformers' `Qwen2Converter` builds (NFC, Qwen's split regex, byte-level,
//! no prefix space), with the added tokens of `tokenizer_config.json` (`added_tokens_decoder`)
//! or `added_tokens.json`. When both forms are present `tokenizer.json` is used: it is the file
//! the converter wrote from the other two, and the one the goldens were checked against.

use crate::error::{Error, Result};
use std::path::Path;
use tokenizers::Tokenizer;

/// Which files a tokenizer was built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenizerSource {
    TokenizerJson,
    VocabMerges,
}

/// Qwen2's pre-tokenizer split (transformers' `Qwen2Converter` / `PRETOKENIZE_REGEX`).
const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Load the tokenizer of `dir` and say from which files.
pub fn load(dir: &Path) -> Result<(Tokenizer, TokenizerSource)> {
    let json = dir.join("tokenizer.json");
    if json.is_file() {
        let t = Tokenizer::from_file(&json).map_err(|e| Error::input(&json, format!("cannot load tokenizer: {e}")))?;
        return Ok((t, TokenizerSource::TokenizerJson));
    }
    if dir.join("vocab.json").is_file() && dir.join("merges.txt").is_file() {
        return Ok((from_vocab_merges(dir)?, TokenizerSource::VocabMerges));
    }
    Err(Error::input(
        dir,
        if dir.join("tokenizer.model").is_file() {
            "no tokenizer.json or vocab.json + merges.txt in the model directory (it has a SentencePiece tokenizer.model, \
             which perceptio does not read yet); write a tokenizer.json with \
             `python -c \"from transformers import AutoTokenizer as T; T.from_pretrained('DIR', trust_remote_code=True).save_pretrained('DIR')\"`"
        } else {
            "no tokenizer.json (or vocab.json + merges.txt) in the model directory"
        },
    ))
}

/// The byte-level BPE of Qwen2's slow tokenizer files.
pub fn from_vocab_merges(dir: &Path) -> Result<Tokenizer> {
    let vocab_path = dir.join("vocab.json");
    let merges_path = dir.join("merges.txt");
    let vocab: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&crate::util::read_file(&vocab_path)?)
            .map_err(|e| Error::input(&vocab_path, format!("not a vocab.json (token → id): {e}")))?;
    let text = String::from_utf8(crate::util::read_file(&merges_path)?)
        .map_err(|_| Error::input(&merges_path, "merges.txt is not UTF-8"))?;
    let mut merges = Vec::new();
    for (i, line) in text.lines().enumerate() {
        // The first line of a GPT-2-style merges file is `#version: ...`; blank lines carry nothing.
        if line.is_empty() || (i == 0 && line.starts_with("#version")) {
            continue;
        }
        let (a, b) = line.split_once(' ').ok_or_else(|| {
            Error::at_line(
                &merges_path,
                i + 1,
                format!("expected two tokens separated by a space, got {line:?}"),
            )
        })?;
        merges.push(serde_json::json!([a, b]));
    }
    let config = read_config(dir)?;
    let add_prefix_space = config
        .get("add_prefix_space")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let added = added_tokens(dir, &config)?;
    let byte_level = serde_json::json!({"type": "ByteLevel", "add_prefix_space": add_prefix_space, "trim_offsets": false, "use_regex": false});
    let spec = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT}, "behavior": "Isolated", "invert": false},
            byte_level,
        ]},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": false, "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": merges,
        },
    });
    spec.to_string().parse::<Tokenizer>().map_err(|e| {
        Error::input(
            &vocab_path,
            format!("cannot build a BPE tokenizer from vocab.json + merges.txt: {e}"),
        )
    })
}

fn read_config(dir: &Path) -> Result<serde_json::Value> {
    let p = dir.join("tokenizer_config.json");
    if !p.is_file() {
        return Ok(serde_json::json!({}));
    }
    serde_json::from_slice(&crate::util::read_file(&p)?).map_err(|e| Error::input(&p, format!("not valid JSON: {e}")))
}

/// Added tokens as the slow tokenizer registers them: `added_tokens_decoder` of
/// `tokenizer_config.json` (id → flags), else `added_tokens.json` (content → id; special when it
/// is one of the config's special tokens).
fn added_tokens(dir: &Path, config: &serde_json::Value) -> Result<Vec<serde_json::Value>> {
    let entry = |id: u64, content: &str, flags: &serde_json::Value, special: bool| {
        let b = |k: &str, d: bool| flags.get(k).and_then(|v| v.as_bool()).unwrap_or(d);
        serde_json::json!({
            "id": id, "content": content, "single_word": b("single_word", false), "lstrip": b("lstrip", false),
            "rstrip": b("rstrip", false), "normalized": b("normalized", !special), "special": b("special", special),
        })
    };
    let cfg_path = dir.join("tokenizer_config.json");
    let mut out = Vec::new();
    if let Some(dec) = config.get("added_tokens_decoder").and_then(|d| d.as_object()) {
        for (id, flags) in dec {
            let id: u64 = id
                .parse()
                .map_err(|_| Error::input(&cfg_path, format!("added_tokens_decoder key {id:?} is not an id")))?;
            let content = flags
                .get("content")
                .and_then(|c| c.as_str())
                .ok_or_else(|| Error::input(&cfg_path, format!("added_tokens_decoder[{id}] has no content")))?;
            out.push(entry(id, content, flags, false));
        }
    } else if dir.join("added_tokens.json").is_file() {
        let p = dir.join("added_tokens.json");
        let map: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&crate::util::read_file(&p)?)
            .map_err(|e| Error::input(&p, format!("not an added_tokens.json (token → id): {e}")))?;
        let mut specials: Vec<String> = ["bos_token", "eos_token", "pad_token", "unk_token"]
            .iter()
            .filter_map(|k| config.get(*k))
            .filter_map(|v| v.as_str().or_else(|| v.get("content").and_then(|c| c.as_str())))
            .map(String::from)
            .collect();
        if let Some(a) = config.get("additional_special_tokens").and_then(|a| a.as_array()) {
            specials.extend(a.iter().filter_map(|v| v.as_str().map(String::from)));
        }
        for (content, id) in &map {
            let id = id
                .as_u64()
                .ok_or_else(|| Error::input(&p, format!("{content:?} has no integer id")))?;
            out.push(entry(id, content, &serde_json::Value::Null, specials.contains(content)));
        }
    }
    out.sort_by_key(|t| t["id"].as_u64());
    Ok(out)
}
