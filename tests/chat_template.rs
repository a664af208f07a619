//! The chat-template renderer against transformers 4.57's `render_jinja_template` (Jinja2), the
//! path Sa2VA's Qwen-VL `predict_forward` prompts go through: exact strings on the fixture
//! checkpoints' templates and on two templates exercising what real ones use (goldens:
//! tools/gen_chat_template_goldens.py).

use minijinja::Value;
use perceptio::models::chat_template::ChatTemplate;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The goldens as template values: maps keep the file's key order (Python dicts do).
fn goldens() -> Value {
    let p = root().join("fixtures/chat_template/goldens.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn get(v: &Value, key: &str) -> Value {
    v.get_attr(key).unwrap()
}

fn pairs(v: &Value) -> Vec<(String, Value)> {
    v.try_iter()
        .unwrap()
        .map(|k| (k.as_str().unwrap().to_string(), v.get_item(&k).unwrap()))
        .collect()
}

#[test]
fn renders_as_transformers_jinja2_does() {
    let g = goldens();
    let specials = pairs(&get(&g, "specials"));
    let cases: Vec<Value> = get(&g, "cases").try_iter().unwrap().collect();
    assert!(cases.len() >= 18);
    for c in &cases {
        let rel = get(c, "template").to_string();
        let path = root().join(&rel);
        let src = std::fs::read_to_string(&path).unwrap();
        let t = ChatTemplate::new(src, path.clone(), specials.clone()).unwrap();
        let tools = get(c, "tools");
        let got = t.render(
            get(c, "messages"),
            get(c, "add_generation_prompt").is_true(),
            (!tools.is_none()).then_some(tools),
            &pairs(&get(c, "kwargs")),
        );
        let what = format!("{rel} / {} / {}", get(c, "conversation"), get(c, "kwargs"));
        let want = get(c, "expected");
        match (want.is_undefined(), got) {
            (false, Ok(got)) => assert_eq!(got, want.as_str().unwrap(), "{what}"),
            (true, Err(e)) => {
                // the reference raised: so must we, with its message
                let want = get(c, "error").to_string();
                let msg = want.split_once(": ").map(|x| x.1).unwrap_or(&want).to_string();
                assert!(e.to_string().contains(&msg), "{what}: {e} vs {want}");
            }
            (_, got) => panic!("{what}: reference {want:?} / {:?}, perceptio {got:?}", get(c, "error")),
        }
    }
}

/// `from_dir` follows transformers 4.57's lookup: chat_template.json wins over
/// chat_template.jinja; processor_config.json's key is the last resort; none is `None`.
#[test]
fn lookup_order_of_a_model_directory() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    assert!(ChatTemplate::from_dir(dir).unwrap().is_none());
    let write = |name: &str, body: &str| std::fs::write(dir.join(name), body).unwrap();
    let render = |dir: &Path| {
        let t = ChatTemplate::from_dir(dir).unwrap().unwrap();
        (
            t.origin.file_name().unwrap().to_string_lossy().into_owned(),
            t.sa2va_turn("x", true).unwrap(),
        )
    };
    write(
        "processor_config.json",
        r#"{"chat_template": "P{{ messages[0].content[1].text }}"}"#,
    );
    assert_eq!(render(dir), ("processor_config.json".into(), "Px".into()));
    write(
        "chat_template.jinja",
        "J{{ messages[0].content[1].text }}{{ eos_token }}\n",
    );
    write(
        "tokenizer_config.json",
        r#"{"eos_token": {"content": "<|im_end|>", "special": true}}"#,
    );
    assert_eq!(render(dir), ("chat_template.jinja".into(), "Jx<|im_end|>".into()));
    write(
        "chat_template.json",
        r#"{"chat_template": "L{{ add_generation_prompt }}"}"#,
    );
    assert_eq!(render(dir), ("chat_template.json".into(), "LTrue".into()));
    write("chat_template.json", r#"{"chat_template": 3}"#);
    let e = ChatTemplate::from_dir(dir).unwrap_err().to_string();
    assert!(e.contains("chat_template.json") && e.contains("a number"), "{e}");
    write("chat_template.json", r#"{"chat_template": "{% for %}"}"#);
    let e = ChatTemplate::from_dir(dir).unwrap_err().to_string();
    assert!(e.contains("chat_template.json") && e.contains("does not parse"), "{e}");
}
