//! A model directory's tokenizer: `tokenizer.json` (what transformers' fast tokenizers save),
//! Qwen2's slow-tokenizer files `vocab.json` + `merges.txt` read natively into the same
//! byte-level BPE transformers' `Qwen2Converter` builds (NFC, Qwen's split regex, byte-level,
//! no prefix space), or InternLM2's SentencePiece `tokenizer.model` with the rules of its slow
//! tokenizer (`tokenization_internlm2.py` on transformers 4.57, what Sa2VA loads with
//! `use_fast=False`), both with the added tokens of `tokenizer_config.json`.
//!
//! Which file wins when several are present: a `tokenizer.model` whose config names
//! `InternLM2Tokenizer` is used even beside a `tokenizer.json`, because Sa2VA loads that class
//! with `use_fast=False` and a converted fast tokenizer can differ from it (BPE score ties,
//! decode spacing); otherwise `tokenizer.json` is used (for Qwen2 it is the file the converter
//! wrote from vocab.json + merges.txt, and the one the goldens were checked against).

use crate::error::{Error, Result};
use crate::models::spm::SentencePiece;
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// Which files a tokenizer was built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenizerSource {
    TokenizerJson,
    VocabMerges,
    SentencePiece,
}

/// Token ids of one encoded text (the part of `tokenizers::Encoding` perceptio uses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoding {
    ids: Vec<u32>,
}

impl Encoding {
    pub fn get_ids(&self) -> &[u32] {
        &self.ids
    }
}

/// A tokenizer: a `tokenizers` one (tokenizer.json, Qwen2's vocab + merges) or InternLM2's slow
/// SentencePiece tokenizer. The methods mirror `tokenizers::Tokenizer`'s.
#[derive(Debug, Clone)]
pub enum Tokenizer {
    Fast(Box<tokenizers::Tokenizer>),
    Spm(Box<SpmTokenizer>),
}

impl From<tokenizers::Tokenizer> for Tokenizer {
    fn from(t: tokenizers::Tokenizer) -> Self {
        Self::Fast(Box::new(t))
    }
}

impl Tokenizer {
    /// Ids of `text`; `add_special_tokens` adds what the tokenizer adds around a sequence
    /// (InternLM2: `<s>` when `add_bos_token`).
    pub fn encode(&self, text: impl AsRef<str>, add_special_tokens: bool) -> tokenizers::Result<Encoding> {
        let ids = match self {
            Self::Fast(t) => t.encode(text.as_ref(), add_special_tokens)?.get_ids().to_vec(),
            Self::Spm(t) => t.encode(text.as_ref(), add_special_tokens)?,
        };
        Ok(Encoding { ids })
    }

    /// Text of `ids`, as the reference tokenizer's `decode`.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> tokenizers::Result<String> {
        match self {
            Self::Fast(t) => t.decode(ids, skip_special_tokens),
            Self::Spm(t) => t.decode(ids, skip_special_tokens),
        }
    }

    /// The id of a token string (added tokens included); `None` if it is not in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        match self {
            Self::Fast(t) => t.token_to_id(token),
            Self::Spm(t) => t.token_to_id(token),
        }
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        match self {
            Self::Fast(t) => t.id_to_token(id),
            Self::Spm(t) => t.id_to_token(id),
        }
    }

    pub fn get_vocab_size(&self, with_added_tokens: bool) -> usize {
        match self {
            Self::Fast(t) => t.get_vocab_size(with_added_tokens),
            Self::Spm(t) => t.vocab_size(with_added_tokens),
        }
    }
}

/// Qwen2's pre-tokenizer split (transformers' `Qwen2Converter` / `PRETOKENIZE_REGEX`).
const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Load the tokenizer of `dir` and say from which files.
pub fn load(dir: &Path) -> Result<(Tokenizer, TokenizerSource)> {
    let json = dir.join("tokenizer.json");
    let model = dir.join("tokenizer.model");
    let has_json = json.is_file();
    if model.is_file() {
        let config = read_config(dir)?;
        let class = slow_class(&config);
        if class.as_deref().is_some_and(is_internlm2_class) {
            if has_json {
                note_once(&format!(
                    "{}: using tokenizer.model, not tokenizer.json: the config names {}, which Sa2VA loads with \
                     use_fast=False (the slow tokenizer reads tokenizer.model)",
                    dir.display(),
                    class.as_deref().unwrap_or_default()
                ));
            }
            return Ok((
                Tokenizer::Spm(Box::new(SpmTokenizer::load(dir)?)),
                TokenizerSource::SentencePiece,
            ));
        }
        if !has_json {
            return Err(Error::input(
                &model,
                format!(
                    "a SentencePiece tokenizer.model with tokenizer_class {}: perceptio implements the slow-tokenizer \
                     rules of InternLM2Tokenizer only (tokenizer_config.json's tokenizer_class); give a tokenizer.json",
                    class.map_or("(none)".to_string(), |c| format!("{c:?}"))
                ),
            ));
        }
    }
    if has_json {
        let t = tokenizers::Tokenizer::from_file(&json)
            .map_err(|e| Error::input(&json, format!("cannot load tokenizer: {e}")))?;
        if model.is_file() {
            note_once(&format!(
                "{}: using tokenizer.json, not tokenizer.model (the config names no InternLM2Tokenizer, whose slow rules perceptio implements)",
                dir.display()
            ));
        }
        return Ok((t.into(), TokenizerSource::TokenizerJson));
    }
    if dir.join("vocab.json").is_file() && dir.join("merges.txt").is_file() {
        return Ok((from_vocab_merges(dir)?.into(), TokenizerSource::VocabMerges));
    }
    Err(Error::input(
        dir,
        "no tokenizer.json, vocab.json + merges.txt or SentencePiece tokenizer.model in the model directory",
    ))
}

/// Print `msg` on stderr the first time it comes up in this process (and to tracing).
pub(crate) fn note_once(msg: &str) {
    static SEEN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    tracing::info!("{msg}");
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    if !seen.iter().any(|m| m == msg) {
        eprintln!("note: {msg}");
        seen.push(msg.to_string());
    }
}

/// The slow tokenizer class a config names: `tokenizer_class`, or the slow half of
/// `auto_map.AutoTokenizer` (`["tokenization_internlm2.InternLM2Tokenizer", ...]`).
fn slow_class(config: &serde_json::Value) -> Option<String> {
    let auto = config
        .get("auto_map")
        .and_then(|m| m.get("AutoTokenizer"))
        .and_then(|a| a.get(0))
        .and_then(|s| s.as_str())
        .map(|s| s.rsplit('.').next().unwrap_or(s).to_string());
    let class = config.get("tokenizer_class").and_then(|c| c.as_str()).map(String::from);
    match (class, auto) {
        (Some(c), _) if is_internlm2_class(&c) => Some(c),
        (_, Some(a)) if is_internlm2_class(&a) => Some(a),
        (c, a) => c.or(a),
    }
}

/// InternLM2's tokenizer classes: `use_fast=False` makes either the slow `InternLM2Tokenizer`.
fn is_internlm2_class(c: &str) -> bool {
    matches!(c, "InternLM2Tokenizer" | "InternLM2TokenizerFast")
}

/// The byte-level BPE of Qwen2's slow tokenizer files.
pub fn from_vocab_merges(dir: &Path) -> Result<tokenizers::Tokenizer> {
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
    spec.to_string().parse::<tokenizers::Tokenizer>().map_err(|e| {
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

/// One added token of `added_tokens_decoder` with the flags the slow tokenizer honours.
#[derive(Debug, Clone)]
struct Added {
    content: String,
    lstrip: bool,
    rstrip: bool,
    single_word: bool,
}

/// InternLM2's slow tokenizer: transformers 4.57's `PreTrainedTokenizer` (added tokens split out
/// first, their lstrip/rstrip/single_word flags, each remaining piece of text through
/// sentencepiece, `<s>` added when `add_bos_token`) and `InternLM2Tokenizer`'s decode rules.
#[derive(Debug, Clone)]
pub struct SpmTokenizer {
    sp: SentencePiece,
    added: HashMap<String, (u32, Added)>,
    added_by_id: HashMap<u32, String>,
    /// Added contents longest first, for the leftmost-longest split.
    by_len: Vec<String>,
    /// Whether some added token starts with this byte (skips the scan elsewhere).
    first_byte: Vec<bool>,
    /// `all_special_tokens`: bos/eos/unk/pad and `additional_special_tokens`.
    all_special: HashSet<String>,
    /// Added tokens decoded as separate sub-texts joined by spaces (`legacy_added_tokens`).
    legacy: HashSet<String>,
    add_bos: bool,
    add_eos: bool,
    clean_up_spaces: bool,
}

/// Python's `str.isspace` (Unicode White_Space plus the ASCII separators U+001C..U+001F).
fn py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// transformers' `clean_up_tokenization`, which `InternLM2Tokenizer.convert_tokens_to_string`
/// applies unconditionally.
fn clean_up(s: &str) -> String {
    s.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
}

impl SpmTokenizer {
    /// `tokenizer.model` + `tokenizer_config.json` (+ `special_tokens_map.json`, which
    /// transformers lets override the config's special tokens) of `dir`.
    pub fn load(dir: &Path) -> Result<Self> {
        let sp = SentencePiece::from_file(&dir.join("tokenizer.model"))?;
        let cfg_path = dir.join("tokenizer_config.json");
        let mut config = read_config(dir)?;
        let map_path = dir.join("special_tokens_map.json");
        if map_path.is_file() {
            let map: serde_json::Value = serde_json::from_slice(&crate::util::read_file(&map_path)?)
                .map_err(|e| Error::input(&map_path, format!("not valid JSON: {e}")))?;
            if let (Some(m), Some(c)) = (map.as_object(), config.as_object_mut()) {
                for (k, v) in m {
                    c.insert(k.clone(), v.clone());
                }
            }
        }
        let text = |v: &serde_json::Value| -> Option<String> {
            v.as_str()
                .or_else(|| v.get("content").and_then(|c| c.as_str()))
                .map(String::from)
        };
        let flag = |k: &str, d: bool| -> Result<bool> {
            match config.get(k) {
                None | Some(serde_json::Value::Null) => Ok(d),
                Some(v) => v
                    .as_bool()
                    .ok_or_else(|| Error::input(&cfg_path, format!("{k} is not a boolean"))),
            }
        };
        let add_bos = flag("add_bos_token", true)?;
        let add_eos = flag("add_eos_token", false)?;
        let clean_up_spaces = flag("clean_up_tokenization_spaces", false)?;
        // InternLM2Tokenizer's defaults for the special tokens.
        let mut specials: Vec<String> = Vec::new();
        for (k, d) in [
            ("bos_token", "<s>"),
            ("eos_token", "</s>"),
            ("unk_token", "<unk>"),
            ("pad_token", "</s>"),
        ] {
            match config.get(k) {
                None => specials.push(d.to_string()),
                Some(serde_json::Value::Null) => {}
                Some(v) => {
                    specials.push(text(v).ok_or_else(|| {
                        Error::input(&cfg_path, format!("{k} is neither a string nor {{\"content\"}}"))
                    })?)
                }
            }
        }
        let mut additional = Vec::new();
        if let Some(a) = config.get("additional_special_tokens").filter(|a| !a.is_null()) {
            let a = a
                .as_array()
                .ok_or_else(|| Error::input(&cfg_path, "additional_special_tokens is not a list"))?;
            for v in a {
                additional.push(text(v).ok_or_else(|| {
                    Error::input(&cfg_path, format!("additional_special_tokens entry {v} is not a token"))
                })?);
            }
        }
        specials.extend(additional.iter().cloned());
        let mut t = Self {
            sp,
            added: HashMap::new(),
            added_by_id: HashMap::new(),
            by_len: Vec::new(),
            first_byte: vec![false; 256],
            all_special: specials.iter().cloned().collect(),
            legacy: HashSet::new(),
            add_bos,
            add_eos,
            clean_up_spaces,
        };
        for e in added_tokens(dir, &config)? {
            let id = e["id"].as_u64().unwrap_or_default();
            let id = u32::try_from(id)
                .map_err(|_| Error::input(&cfg_path, format!("added token id {id} does not fit a u32")))?;
            let b = |k: &str| e[k].as_bool().unwrap_or(false);
            let content = e["content"].as_str().unwrap_or_default().to_string();
            t.insert_added(
                id,
                Added {
                    content,
                    lstrip: b("lstrip"),
                    rstrip: b("rstrip"),
                    single_word: b("single_word"),
                },
            );
        }
        // PreTrainedTokenizer.__init__ adds the special tokens not yet added: at their id in
        // the vocabulary, else after it.
        for s in &specials {
            if !t.added.contains_key(s) {
                let id = if t.sp.has_piece(s) {
                    t.sp.piece_to_id(s)
                } else {
                    t.vocab_size(true) as u32
                };
                t.insert_added(
                    id,
                    Added {
                        content: s.clone(),
                        lstrip: false,
                        rstrip: false,
                        single_word: false,
                    },
                );
            }
        }
        let vocab = t.sp.piece_size() as u32;
        t.legacy = t
            .added
            .keys()
            .filter(|k| !t.all_special.contains(*k))
            .cloned()
            .chain(additional.iter().filter(|a| t.convert_token(a) >= vocab).cloned())
            .collect();
        if add_bos && t.sp.bos_id().is_none() {
            return Err(Error::input(
                &cfg_path,
                "add_bos_token is true but the SentencePiece model has no control piece for its bos_piece",
            ));
        }
        Ok(t)
    }

    fn insert_added(&mut self, id: u32, a: Added) {
        if let Some(old) = self.added_by_id.insert(id, a.content.clone()) {
            self.added.remove(&old);
        }
        if let Some(&b) = a.content.as_bytes().first() {
            self.first_byte[b as usize] = true;
        }
        self.added.insert(a.content.clone(), (id, a));
        self.by_len = self.added.keys().cloned().collect();
        self.by_len.sort_by(|x, y| y.len().cmp(&x.len()).then(x.cmp(y)));
    }

    /// `convert_tokens_to_ids` for one token: added tokens first, then the model (unknown id).
    fn convert_token(&self, t: &str) -> u32 {
        self.added.get(t).map_or_else(|| self.sp.piece_to_id(t), |(id, _)| *id)
    }

    pub fn token_to_id(&self, t: &str) -> Option<u32> {
        self.added
            .get(t)
            .map(|(id, _)| *id)
            .or_else(|| self.sp.has_piece(t).then(|| self.sp.piece_to_id(t)))
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.added_by_id
            .get(&id)
            .cloned()
            .or_else(|| self.sp.id_to_piece(id).map(String::from))
    }

    /// The model's pieces, plus the added tokens beyond them when `with_added`.
    pub fn vocab_size(&self, with_added: bool) -> usize {
        let n = self.sp.piece_size();
        if with_added {
            n + self.added_by_id.keys().filter(|&&id| id as usize >= n).count()
        } else {
            n
        }
    }

    /// The underlying SentencePiece model.
    pub fn sentencepiece(&self) -> &SentencePiece {
        &self.sp
    }

    /// `Trie.split`: the text cut around every added token (leftmost, longest first).
    fn split<'a>(&self, text: &'a str) -> Vec<&'a str> {
        let mut out = Vec::new();
        let (mut start, mut i) = (0, 0);
        while i < text.len() {
            let rest = &text[i..];
            let hit = self.first_byte[rest.as_bytes()[0] as usize]
                .then(|| self.by_len.iter().find(|c| rest.starts_with(c.as_str())))
                .flatten();
            if let Some(m) = hit {
                if start < i {
                    out.push(&text[start..i]);
                }
                out.push(&text[i..i + m.len()]);
                i += m.len();
                start = i;
            } else {
                i += rest.chars().next().map_or(1, char::len_utf8);
            }
        }
        if start < text.len() {
            out.push(&text[start..]);
        }
        out
    }

    /// `tokenizer.encode(text)` (`tokenize`, `convert_tokens_to_ids`,
    /// `build_inputs_with_special_tokens`).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> tokenizers::Result<Vec<u32>> {
        let mut parts: Vec<String> = self.split(text).into_iter().map(String::from).collect();
        for i in 0..parts.len() {
            let Some((_, a)) = self.added.get(&parts[i]) else {
                continue;
            };
            let a = a.clone();
            // `left` and `right` as they were before this token's stripping, as in Python.
            let left = (i > 0).then(|| parts[i - 1].clone()).filter(|s| !s.is_empty());
            let right = (i + 1 < parts.len())
                .then(|| parts[i + 1].clone())
                .filter(|s| !s.is_empty());
            if let (true, Some(r)) = (a.rstrip, &right) {
                parts[i + 1] = r.trim_start_matches(py_space).to_string();
            }
            if let (true, Some(l)) = (a.lstrip, &left) {
                parts[i - 1] = l.trim_end_matches(py_space).to_string();
            }
            if a.single_word && left.as_ref().is_some_and(|l| !l.ends_with(' ')) {
                let t = std::mem::take(&mut parts[i]);
                parts[i - 1].push_str(&t);
            } else if a.single_word && right.as_ref().is_some_and(|r| !r.starts_with(' ')) {
                let t = std::mem::take(&mut parts[i]);
                parts[i + 1].insert_str(0, &t);
            }
        }
        let mut ids = Vec::new();
        if add_special_tokens && self.add_bos {
            ids.push(self.sp.bos_id().ok_or("the SentencePiece model has no bos piece")?);
        }
        for p in parts.iter().filter(|p| !p.is_empty()) {
            if let Some((id, _)) = self.added.get(p) {
                ids.push(*id);
            } else {
                ids.extend(
                    self.sp
                        .encode_pieces(p)
                        .iter()
                        .map(|(piece, id)| self.added.get(piece).map_or(*id, |(a, _)| *a)),
                );
            }
        }
        if add_special_tokens && self.add_eos {
            ids.push(self.sp.eos_id().ok_or("the SentencePiece model has no eos piece")?);
        }
        Ok(ids)
    }

    /// `InternLM2Tokenizer.convert_tokens_to_string`: special tokens kept as text (a space
    /// before each that follows ordinary text), the rest through sentencepiece, then
    /// `clean_up_tokenization`.
    fn tokens_to_string(&self, tokens: &[&str]) -> String {
        let mut out = String::new();
        let mut sub: Vec<&str> = Vec::new();
        let mut prev_special = false;
        for &t in tokens {
            if self.all_special.contains(t) {
                if !prev_special {
                    out.push(' ');
                }
                out.push_str(&self.sp.decode_pieces(&sub));
                out.push_str(t);
                prev_special = true;
                sub.clear();
            } else {
                sub.push(t);
                prev_special = false;
            }
        }
        out.push_str(&self.sp.decode_pieces(&sub));
        // `_maybe_add_prefix_space` always adds the space (it tests a token string against a
        // set of ids), and `[1:]` takes it off again.
        clean_up(&out)
    }

    /// `tokenizer.decode(ids, skip_special_tokens)` (PreTrainedTokenizer._decode with
    /// `spaces_between_special_tokens=True`).
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> tokenizers::Result<String> {
        let mut tokens: Vec<&str> = Vec::with_capacity(ids.len());
        for &id in ids {
            let t = match self.added_by_id.get(&id) {
                Some(t) => t.as_str(),
                None => self
                    .sp
                    .id_to_piece(id)
                    .ok_or_else(|| format!("token id {id} is out of range (vocabulary of {})", self.sp.piece_size()))?,
            };
            if skip_special_tokens && self.all_special.contains(t) {
                continue;
            }
            tokens.push(t);
        }
        let mut subs: Vec<String> = Vec::new();
        let mut cur: Vec<&str> = Vec::new();
        for t in tokens {
            if self.legacy.contains(t) {
                if !cur.is_empty() {
                    let s = self.tokens_to_string(&cur);
                    if !s.is_empty() {
                        subs.push(s);
                    }
                    cur.clear();
                }
                subs.push(t.to_string());
            } else {
                cur.push(t);
            }
        }
        if !cur.is_empty() {
            subs.push(self.tokens_to_string(&cur));
        }
        let text = subs.join(" ");
        Ok(if self.clean_up_spaces { clean_up(&text) } else { text })
    }
}
