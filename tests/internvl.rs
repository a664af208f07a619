//! InternVL2.5 / Sa2VA parity with the reference PyTorch code on tiny random checkpoints in the
//! original key layout (goldens from tools/gen_internvl_goldens.py). Tolerances: f32, max abs
//! error ≤ 1e-4 × max(1, max |reference|) per stage; greedy tokens identical.

mod common;
use candle_core::{DType, Device, IndexOp, Tensor};
use common::*;
use perceptio::models::generate::{generate, GenerateOptions};
use perceptio::models::internvl::chat::ChatModel;
use std::collections::HashMap;

const QUESTION: &str = "Describe the image in detail.";

fn golden(model: &str, image: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(
        fixture(&format!("internvl/goldens/{model}_{image}.safetensors")),
        &Device::Cpu,
    )
    .unwrap()
}

fn load(model: &str) -> ChatModel {
    ChatModel::load(&fixture(&format!("internvl/{model}")), &Device::Cpu, DType::F32).unwrap()
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn assert_close(got: &Tensor, want: &Tensor, what: &str) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let err = max_abs(&(got - want).unwrap());
    let tol = 1e-4 * max_abs(want).max(1.0);
    assert!(err <= tol, "{what}: max abs error {err} > {tol}");
}

fn check_pair(model: &str, image: &str) {
    let g = golden(model, image);
    let mut chat = load(model);
    let file = if image == "portrait" { "coffee_portrait" } else { image };
    let img = perceptio::preprocess::image_io::load_rgb(&fixture(&format!("images/{file}.png"))).unwrap();
    // preprocessing: our tiles against the reference transform
    let (px, _, n) = chat.pixel_values(&img, 6).unwrap();
    assert_close(&px, &g["pixel_values"], &format!("{model}/{image} pixel_values"));
    let px = g["pixel_values"].clone();
    // vision tower and projector
    assert_close(
        &chat.model.vit_hidden(&px).unwrap(),
        &g["vit_hidden"],
        &format!("{model}/{image} vit_hidden"),
    );
    let feats = chat.model.extract_feature(&px).unwrap();
    assert_close(&feats, &g["vit_embeds"], &format!("{model}/{image} vit_embeds"));
    // prompt ids
    let ids = chat.prompt_ids(&format!("<image>\n{QUESTION}"), n).unwrap();
    let want_ids: Vec<u32> = g["input_ids"].to_dtype(DType::U32).unwrap().to_vec1().unwrap();
    assert_eq!(ids, want_ids, "{model}/{image} input_ids");
    // prefill logits
    let (embeds, _) = chat.prompt_embeds(&ids, &px).unwrap();
    chat.model.llm.clear_kv_cache();
    let h = chat.model.llm.forward_embeds(&embeds, 0).unwrap();
    let l = ids.len();
    let logits = chat.model.llm.logits(&h.i((0, l - 4..l)).unwrap()).unwrap();
    assert_close(
        &logits,
        &g["prefill_logits_last4"],
        &format!("{model}/{image} prefill logits"),
    );
    // greedy generation of 40 tokens, no stop
    let want_gen: Vec<u32> = g["generated_ids"].to_dtype(DType::U32).unwrap().to_vec1().unwrap();
    let opts = GenerateOptions {
        max_new_tokens: want_gen.len(),
        ..Default::default()
    };
    let out = generate(&mut chat.model, &embeds, &opts, |_| {}).unwrap();
    assert_eq!(out.ids, want_gen, "{model}/{image} greedy tokens");
    assert!(
        want_gen.iter().collect::<std::collections::HashSet<_>>().len() > 3,
        "degenerate golden"
    );
    // hidden state at each generated token's position (fed back), vs the reference's
    let hidden = Tensor::stack(&out.hidden, 0).unwrap();
    let want_hidden = &g["generated_hidden"];
    let n_h = hidden.dim(0).unwrap();
    let wh = want_hidden.narrow(0, want_hidden.dim(0).unwrap() - n_h, n_h).unwrap();
    assert_close(&hidden, &wh, &format!("{model}/{image} generated hidden"));
}

#[test]
fn qwen2_chelsea() {
    check_pair("tiny-qwen2", "chelsea");
}

#[test]
fn qwen2_portrait() {
    check_pair("tiny-qwen2", "portrait");
}

#[test]
fn internlm2_chelsea() {
    check_pair("tiny-internlm2", "chelsea");
}

#[test]
fn internlm2_portrait() {
    check_pair("tiny-internlm2", "portrait");
}

/// `perceptio ask chelsea.png QUESTION --json` on tiny-qwen2 (6 tiles, up to 40 tokens) with
/// `extra` flags: the JSON object and its token ids.
fn ask_json(extra: &[&str]) -> (serde_json::Value, Vec<u32>) {
    let model = fixture("internvl/tiny-qwen2");
    let img = fixture("images/chelsea.png");
    let mut args = vec![
        "ask",
        img.to_str().unwrap(),
        QUESTION,
        "--model",
        model.to_str().unwrap(),
        "--max-tiles",
        "6",
        "--max-new-tokens",
        "40",
        "--device",
        "cpu",
        "--json",
    ];
    args.extend_from_slice(extra);
    let j = run_json(&args);
    let ids = j["token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    (j, ids)
}

#[test]
fn ask_cli_end_to_end() {
    let g = golden("tiny-qwen2", "chelsea");
    let want: Vec<u32> = g["generated_ids"].to_dtype(DType::U32).unwrap().to_vec1().unwrap();
    let model = fixture("internvl/tiny-qwen2");
    let img = fixture("images/chelsea.png");
    let (j, got) = ask_json(&[]);
    // the CLI stops at a stop token; up to there it must follow the reference exactly
    assert!(!got.is_empty());
    assert_eq!(&got[..], &want[..got.len()]);
    assert_eq!(j["tiles"], g["pixel_values"].dim(0).unwrap());
    // streaming mode prints the same answer text; stdin works for the image
    let bytes = std::fs::read(&img).unwrap();
    let o = run(
        &[
            "ask",
            "-",
            QUESTION,
            "--model",
            model.to_str().unwrap(),
            "--max-tiles",
            "6",
            "--max-new-tokens",
            "40",
            "--device",
            "cpu",
        ],
        Some(&bytes),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), j["answer"].as_str().unwrap());
}

/// `--quantize q8_0` decodes through Q8_0 weights: it runs, and on this tiny random checkpoint
/// (near-tied logits) its first 8 greedy tokens still follow the f32 reference's (12 of them do
/// today; then the two part).
#[test]
fn ask_cli_quantized_decode_follows_the_reference_at_first() {
    let g = golden("tiny-qwen2", "chelsea");
    let want: Vec<u32> = g["generated_ids"].to_dtype(DType::U32).unwrap().to_vec1().unwrap();
    let (_, got) = ask_json(&["--quantize", "q8_0"]);
    assert!(got.len() >= 8, "{got:?}");
    assert_eq!(&got[..8], &want[..8]);
}

#[test]
fn bad_inputs_are_clear_errors() {
    let model = fixture("internvl/tiny-qwen2");
    let m = model.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // not an image
    let txt = dir.path().join("notes.png");
    std::fs::write(&txt, "hello").unwrap();
    assert_fails(
        &["ask", txt.to_str().unwrap(), "q", "--model", m, "--device", "cpu"],
        "notes.png",
    );
    let img = fixture("images/chelsea.png");
    let img = img.to_str().unwrap();
    // a directory without config.json
    assert_fails(
        &[
            "ask",
            img,
            "q",
            "--model",
            dir.path().to_str().unwrap(),
            "--device",
            "cpu",
        ],
        "no config.json",
    );
    // a truncated safetensors file
    let bad = dir.path().join("model");
    std::fs::create_dir(&bad).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(model.join(f), bad.join(f)).unwrap();
    }
    let st = std::fs::read(model.join("model.safetensors")).unwrap();
    std::fs::write(bad.join("model.safetensors"), &st[..st.len() / 2]).unwrap();
    assert_fails(
        &["ask", img, "q", "--model", bad.to_str().unwrap(), "--device", "cpu"],
        "truncated safetensors",
    );
    // a config whose sizes disagree with the weights: the key and both shapes are named
    std::fs::write(bad.join("model.safetensors"), &st).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("config.json")).unwrap()).unwrap();
    cfg["vision_config"]["intermediate_size"] = serde_json::json!(48);
    std::fs::write(bad.join("config.json"), cfg.to_string()).unwrap();
    assert_fails(
        &["ask", img, "q", "--model", bad.to_str().unwrap(), "--device", "cpu"],
        "mlp.fc1",
    );
    // empty question is a usage error
    let o = run(&["ask", img, "  ", "--model", m, "--device", "cpu"], None);
    assert_eq!(o.status.code(), Some(2));
    // asking for CUDA from a CPU build (or on a machine without a GPU) is a clear runtime error
    if !candle_core::utils::cuda_is_available() {
        let o = run(&["ask", img, "q", "--model", m, "--device", "cuda:0"], None);
        assert_eq!(o.status.code(), Some(1));
        assert!(stderr(&o).contains("--features cuda"), "{}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    }
    // bf16 on the CPU is refused naming what works, never a candle error string
    let o = run(
        &["ask", img, "q", "--model", m, "--device", "cpu", "--dtype", "bf16"],
        None,
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("f32") && stderr(&o).contains("f16") && !stderr(&o).contains("unsupported dtype"),
        "{}",
        stderr(&o)
    );
    let o = run(&["ask", img, "q", "--model", m, "--device", "tpu"], None);
    assert_eq!(o.status.code(), Some(2));
}

/// Stops as Sa2VA sets them: the template's stop words that are tokens, the tokenizer's eos
/// token, and, for a stop word the vocabulary does not have as one token (phi3_chat's `<|end|>`
/// with a Qwen2.5 vocabulary, as Sa2VA-4B's config names it), the decoded text.
#[test]
fn stop_words_follow_the_template_and_the_tokenizer() {
    let m = load("tiny-qwen2");
    let im_end = m.tokenizer.token_to_id("<|im_end|>").unwrap();
    assert!(m.stop_ids.contains(&im_end) && m.stop_text.is_none());
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("internvl/tiny-qwen2");
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
    }
    let cfg_path = dir.path().join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    cfg["template"] = serde_json::json!("phi3-chat");
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let m = ChatModel::load(dir.path(), &Device::Cpu, DType::F32).unwrap();
    assert_eq!(m.template.name, "phi3_chat");
    // `<|end|>` is not a token here: the eos token still stops, the text stop word too.
    assert_eq!(m.stop_ids, vec![im_end]);
    let st = m.stop_text.clone().expect("a text stop word");
    assert_eq!(st.words, vec!["<|end|>".to_string()]);
    let ids = |s: &str| m.tokenizer.encode(s, false).unwrap().get_ids().to_vec();
    assert!(ids("<|end|>").len() > 1, "the test needs <|end|> to be several tokens");
    assert!(st.hit(&ids("A cat.<|end|>")) && st.hit(&ids("A cat.<|end|>\n")));
    assert!(!st.hit(&ids("A cat.")) && !st.hit(&ids("<|end|> and more")));
    assert_eq!(m.decode_reply(&ids(" A cat. <|end|>"), &m.stop_ids).unwrap(), "A cat.");
}

/// `ask --json` reports prefill and decode apart: decode tokens/s is over the decode loop only.
#[test]
fn ask_timings_split_prefill_and_decode() {
    let img = fixture("images/chelsea.png");
    let model = fixture("internvl/tiny-qwen2");
    let j = run_json(&[
        "ask",
        img.to_str().unwrap(),
        "What is it?",
        "--model",
        model.to_str().unwrap(),
        "--max-tiles",
        "2",
        "--max-new-tokens",
        "8",
        "--device",
        "cpu",
        "--json",
    ]);
    let t = &j["timings"];
    let f = |k: &str| t[k].as_f64().unwrap_or_else(|| panic!("no timings.{k}: {t}"));
    assert!(f("prefill_s") > 0.0 && f("decode_s") > 0.0);
    assert!(f("prefill_s") + f("decode_s") <= f("llm_s") + 1e-6, "{t}");
    let n = j["tokens_generated"].as_f64().unwrap();
    assert!(
        (f("decode_tok_per_s") - n / f("decode_s")).abs() < 1e-6 * f("decode_tok_per_s").max(1.0),
        "{t}"
    );
    assert!(
        (f("prefill_tok_per_s") - j["prompt_tokens"].as_f64().unwrap() / f("prefill_s")).abs()
            < 1e-3 * f("prefill_tok_per_s")
    );
}

/// `--trace FILE` writes the run's spans as a Chrome trace (a JSON array of events).
#[test]
fn trace_flag_writes_a_chrome_trace() {
    let img = fixture("images/chelsea.png");
    let model = fixture("internvl/tiny-qwen2");
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace.json");
    let o = run(
        &[
            "ask",
            img.to_str().unwrap(),
            "What is it?",
            "--model",
            model.to_str().unwrap(),
            "--max-tiles",
            "1",
            "--max-new-tokens",
            "2",
            "--device",
            "cpu",
            "--trace",
            trace.to_str().unwrap(),
        ],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let events: Vec<serde_json::Value> = serde_json::from_slice(&std::fs::read(&trace).unwrap()).unwrap();
    for span in ["internvit", "qwen2", "qwen2-attn"] {
        assert!(events.iter().any(|e| e["name"] == span), "no {span} span in the trace");
    }
}

/// `ask --batch`: one compact `--json` object per request plus its id, in input order, equal to
/// the single call's; bad lines and unreadable images give error lines, the batch goes on and
/// exits 1 at the end.
#[test]
fn ask_batch_matches_single_calls() {
    let img = fixture("images/chelsea.png");
    let portrait = fixture("images/coffee_portrait.png");
    let model = fixture("internvl/tiny-qwen2");
    let m = model.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let batch = [
        serde_json::json!({"id": 1, "image": img, "question": "What is it?"}).to_string(),
        serde_json::json!({"id": 2, "image": dir.path().join("nope.png"), "question": "What is it?"}).to_string(),
        "[1, 2]".to_string(),
        serde_json::json!({"id": "p", "image": portrait, "question": "Describe the image."}).to_string(),
        serde_json::json!({"id": 3, "image": img, "question": "What is it?"}).to_string(),
    ]
    .join("\n");
    let file = dir.path().join("requests.jsonl");
    std::fs::write(&file, &batch).unwrap();
    let common = [
        "--model",
        m,
        "--max-tiles",
        "2",
        "--max-new-tokens",
        "8",
        "--device",
        "cpu",
    ];
    let mut args = vec!["ask", "--batch", file.to_str().unwrap()];
    args.extend_from_slice(&common);
    let o = run(&args, None);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("2 request(s) failed"), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> = stdout(&o).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 5);
    assert_eq!(
        (lines[0]["id"].clone(), lines[1]["id"].clone(), lines[2]["line"].clone()),
        (serde_json::json!(1), serde_json::json!(2), serde_json::json!(3))
    );
    assert!(lines[1]["error"].as_str().unwrap().contains("nope.png"));
    for (got, image, q) in [
        (&lines[0], &img, "What is it?"),
        (&lines[3], &portrait, "Describe the image."),
        (&lines[4], &img, "What is it?"),
    ] {
        let mut a = vec!["ask", image.to_str().unwrap(), q];
        a.extend_from_slice(&common);
        a.push("--json");
        let want = run_json(&a);
        assert_eq!(got["token_ids"], want["token_ids"]);
        assert_eq!(got["answer"], want["answer"]);
    }
}

/// InternViT-6B's switches (Sa2VA-26B's vision tower: RMSNorm, qk-norm over the whole width
/// before the head split, no qkv bias, its own head count) on a tiny random tower against Sa2VA's
/// `InternVisionModel` (tools/gen_internvit6b_goldens.py): every hidden state, same tolerance as
/// the other stages.
#[test]
fn internvit_6b_layout_matches_reference() {
    use perceptio::models::internvl::{config::VisionConfig, vit::InternVit};
    let dir = fixture("internvl/internvit6b");
    let cfg: VisionConfig = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert!(cfg.qk_normalization && !cfg.qkv_bias && cfg.norm_type == "rms_norm");
    let vb = unsafe {
        candle_nn::VarBuilder::from_mmaped_safetensors(&[dir.join("model.safetensors")], DType::F32, &Device::Cpu)
    }
    .unwrap();
    let vit = InternVit::new(&cfg, vb.pp("vision_model")).unwrap();
    let g = candle_core::safetensors::load(dir.join("goldens.safetensors"), &Device::Cpu).unwrap();
    let px = &g["pixel_values"];
    for k in 0..=vit.num_layers() {
        let want = &g[&format!("hidden_states.{k}")];
        assert_close(
            &vit.forward_to(px, k).unwrap(),
            want,
            &format!("internvit6b hidden_states.{k}"),
        );
    }
    // The check can fail: without the qk-norm the last layer is far off.
    let no_qk = VisionConfig {
        qk_normalization: false,
        ..cfg.clone()
    };
    let other = InternVit::new(&no_qk, vb.pp("vision_model")).unwrap();
    let l = vit.num_layers();
    let want = &g[&format!("hidden_states.{l}")];
    let err = max_abs(&(other.forward_to(px, l).unwrap() - want).unwrap());
    assert!(err > 1e-2 * max_abs(want), "{err}");
    // Keys a config leaves out take InternVisionConfig's defaults; an unknown norm is refused.
    let mut j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    for k in [
        "qkv_bias",
        "qk_normalization",
        "norm_type",
        "layer_norm_eps",
        "hidden_act",
    ] {
        j.as_object_mut().unwrap().remove(k);
    }
    let d: VisionConfig = serde_json::from_value(j.clone()).unwrap();
    assert!(
        !d.qkv_bias
            && d.qk_normalization
            && d.norm_type == "rms_norm"
            && d.layer_norm_eps == 1e-6
            && d.hidden_act == "gelu"
    );
    j["norm_type"] = "batch_norm".into();
    let bad: VisionConfig = serde_json::from_value(j).unwrap();
    let e = InternVit::new(&bad, vb.pp("vision_model")).unwrap_err().to_string();
    assert!(e.contains("norm_type") && e.contains("batch_norm"), "{e}");
}
