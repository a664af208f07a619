//! Sa2VA-Qwen3-VL on the tiny random checkpoint of fixtures/sa2va-qwen3vl against Sa2VA's own
//! `predict_forward` on transformers 4.57.0's Qwen3-VL classes (tools/gen_sa2va_qwen3vl_goldens.py):
//! both resizes, pixel_values, the vision tower and its DeepStack features, the MRoPE positions,
//! prefill logits, greedy ids, the `[SEG]` hidden states and the masks.

mod common;
use candle_core::{DType, Device, IndexOp, Tensor};
use common::{assert_close_rel, coco_images, f32s, fixture, i64s, run, stderr};
use perceptio::models::chat::Chat;
use perceptio::models::checkpoint::Checkpoint;
use perceptio::models::generate::GenerateOptions;
use perceptio::models::perceptio::{Grounder, LoadOptions, SegmentOptions};
use perceptio::preprocess::qwen_vl::fetch_image;
use std::collections::HashMap;

const IMAGES: [(&str, &str, &str); 2] = [
    (
        "chelsea",
        "images/chelsea.png",
        "<image>\n Please segment the cat in this image.",
    ),
    ("portrait", "images/coffee_portrait.png", "<image>\nWhat is in the cup?"),
];

fn goldens() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture("sa2va-qwen3vl/goldens.safetensors"), &Device::Cpu).unwrap()
}

fn chat() -> Chat {
    let ck = Checkpoint::open(&fixture("sa2va-qwen3vl"), DType::F32, &Device::Cpu).unwrap();
    Chat::from_checkpoint(&ck).unwrap()
}

#[test]
fn preprocessing_resizes_and_patches_as_qwen_vl_utils_and_the_fast_processor() {
    let g = goldens();
    let Chat::Qwen3Vl(c) = chat() else {
        panic!("not read as Qwen3-VL")
    };
    for (name, path, _) in IMAGES {
        let img = perceptio::preprocess::image_io::load_rgb(&fixture(path)).unwrap();
        let fetched = fetch_image(&img).unwrap();
        let rows = |im: &image::RgbImage| -> Vec<i64> {
            im.rows()
                .map(|r| r.map(|p| p.0.iter().map(|&v| v as i64).sum::<i64>()).sum())
                .collect()
        };
        assert_eq!(
            rows(&fetched),
            i64s(&g[&format!("{name}.resize1_u8.row_sums")]),
            "{name}: Pillow resize"
        );
        let p = c.preprocess.pixels(&fetched).unwrap();
        assert_eq!(
            rows(&p.resized),
            i64s(&g[&format!("{name}.resize2_u8.row_sums")]),
            "{name}: torch resize"
        );
        let grid: Vec<i64> = p.grid_thw.iter().map(|&v| v as i64).collect();
        assert_eq!(grid, i64s(&g[&format!("{name}.image_grid_thw")]), "{name}: grid");
        let px = Tensor::from_vec(p.data, (p.rows, p.cols), &Device::Cpu).unwrap();
        let idx = Tensor::new(
            i64s(&g[&format!("{name}.pixel_values.rows_idx")])
                .iter()
                .map(|&i| i as u32)
                .collect::<Vec<_>>(),
            &Device::Cpu,
        )
        .unwrap();
        let got = px.index_select(&idx, 0).unwrap();
        let want = &g[&format!("{name}.pixel_values.rows")];
        let err = f32s(&got)
            .iter()
            .zip(f32s(want))
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(err <= 1e-6, "{name}: pixel_values rows differ by {err}");
    }
}

#[test]
fn vision_tower_positions_and_prefill_match_transformers() {
    let g = goldens();
    let mut chat = chat();
    for (name, path, text) in IMAGES {
        let img = perceptio::preprocess::image_io::load_rgb(&fixture(path)).unwrap();
        let v = chat.vision(&img, 1).unwrap();
        let q = v.qwen.as_ref().unwrap();
        assert_close_rel(
            &q.embeds,
            &g[&format!("{name}.vision.embeds")],
            &format!("{name}: merged tokens"),
        );
        assert_eq!(q.deepstack.len(), 2);
        for (k, d) in q.deepstack.iter().enumerate() {
            assert_close_rel(
                d,
                &g[&format!("{name}.vision.deepstack{k}")],
                &format!("{name}: deepstack {k}"),
            );
        }
        let (ids, embeds) = chat.embed_prompt(&v, text).unwrap();
        let want_ids: Vec<u32> = i64s(&g[&format!("{name}.input_ids")])
            .iter()
            .map(|&i| i as u32)
            .collect();
        assert_eq!(ids, want_ids, "{name}: prompt ids");
        let Chat::Qwen3Vl(c) = &chat else { unreachable!() };
        let cfg = &c.model.config;
        let (pos, delta) = perceptio::models::qwen3_vl::rope_index(
            &ids,
            cfg.image_token_id,
            cfg.vision_start_token_id,
            &[q.grid_thw],
            2,
        )
        .unwrap();
        let want = i64s(&g[&format!("{name}.position_ids")]);
        let l = ids.len();
        for axis in 0..3 {
            let got: Vec<i64> = pos.iter().map(|p| p[axis]).collect();
            assert_eq!(got, want[axis * l..(axis + 1) * l], "{name}: position axis {axis}");
        }
        assert_eq!(delta, i64s(&g[&format!("{name}.rope_delta")])[0], "{name}: rope delta");
        let lm = chat.lm();
        lm.clear_kv_cache();
        let h = lm.forward_embeds(&embeds, 0).unwrap();
        let last = h.i((0, l - 4..l)).unwrap();
        let logits = lm.logits(&last).unwrap();
        assert_close_rel(
            &logits,
            &g[&format!("{name}.prefill.logits_last4")],
            &format!("{name}: prefill logits"),
        );
        assert_close_rel(
            &last,
            &g[&format!("{name}.prefill.hidden_last")],
            &format!("{name}: prefill hidden"),
        );
    }
}

#[test]
fn predict_forward_greedy_ids_seg_states_and_masks_match_sa2va() {
    let g = goldens();
    let ck = Checkpoint::open(&fixture("sa2va-qwen3vl"), DType::F32, &Device::Cpu).unwrap();
    let mut gr = Grounder::load(
        &ck,
        &LoadOptions {
            require_grounding: true,
            ..Default::default()
        },
    )
    .unwrap();
    let opts = SegmentOptions {
        max_tiles: 1,
        force_seg: false,
        generation: GenerateOptions {
            max_new_tokens: 24,
            ..Default::default()
        },
    };
    for (name, path, text) in IMAGES {
        let img = perceptio::preprocess::image_io::load_rgb(&fixture(path)).unwrap();
        let v = gr.vision(&img, 1).unwrap();
        let r = gr.segment_prompt(&img, &v, name, text, &opts).unwrap();
        let want: Vec<u32> = i64s(&g[&format!("{name}.gen.ids")]).iter().map(|&i| i as u32).collect();
        assert_eq!(r.token_ids, want, "{name}: greedy ids");
        let n_seg = g[&format!("{name}.gen.seg_hidden")].dim(0).unwrap();
        assert_eq!(r.seg_count, n_seg, "{name}: [SEG] count");
        let (w, h) = (img.width() as usize, img.height() as usize);
        let packed: Vec<u8> = g[&format!("{name}.mask_bits")].to_vec1().unwrap();
        let want_mask: Vec<u8> = (0..w * h).map(|i| (packed[i / 8] >> (7 - i % 8)) & 1).collect();
        let inter = r
            .mask
            .data
            .iter()
            .zip(&want_mask)
            .filter(|(a, b)| **a != 0 && **b != 0)
            .count();
        let union = r
            .mask
            .data
            .iter()
            .zip(&want_mask)
            .filter(|(a, b)| **a != 0 || **b != 0)
            .count();
        let iou = inter as f64 / union.max(1) as f64;
        eprintln!("{name}: {} [SEG], mask IoU {iou} ({inter}/{union})", r.seg_count);
        assert!(union > 0 && iou >= 0.999, "{name}: mask IoU {iou} ({inter}/{union})");
        // --force-seg: "Sure, [SEG]." teacher-forced in one forward after the prompt.
        let f = gr
            .segment_prompt(
                &img,
                &v,
                name,
                text,
                &SegmentOptions {
                    force_seg: true,
                    ..opts.clone()
                },
            )
            .unwrap();
        let want_ids: Vec<u32> = i64s(&g[&format!("{name}.force.input_ids")])
            .iter()
            .map(|&i| i as u32)
            .collect();
        assert!(want_ids.ends_with(&f.token_ids), "{name}: forced reply ids");
        let packed: Vec<u8> = g[&format!("{name}.force.mask_bits")].to_vec1().unwrap();
        let want_mask: Vec<u8> = (0..w * h).map(|i| (packed[i / 8] >> (7 - i % 8)) & 1).collect();
        let inter = f
            .mask
            .data
            .iter()
            .zip(&want_mask)
            .filter(|(a, b)| **a != 0 && **b != 0)
            .count();
        let union = f
            .mask
            .data
            .iter()
            .zip(&want_mask)
            .filter(|(a, b)| **a != 0 || **b != 0)
            .count();
        let iou = inter as f64 / union.max(1) as f64;
        eprintln!("{name}: forced [SEG] mask IoU {iou} ({inter}/{union})");
        assert!(
            union > 0 && iou >= 0.999,
            "{name}: forced mask IoU {iou} ({inter}/{union})"
        );
    }
}

#[test]
fn seg_hidden_states_and_projection_match() {
    // The hidden state at each generated [SEG] (where it is fed back) and its text_hidden_fcs image.
    let g = goldens();
    let mut chat = chat();
    let (name, path, text) = IMAGES[0];
    let img = perceptio::preprocess::image_io::load_rgb(&fixture(path)).unwrap();
    let v = chat.vision(&img, 1).unwrap();
    let a = chat
        .reply(
            &v,
            text,
            &GenerateOptions {
                max_new_tokens: 24,
                ..Default::default()
            },
            |_| {},
        )
        .unwrap();
    let seg = chat.tokenizer().token_to_id("[SEG]").unwrap();
    let rows: Vec<Tensor> = a
        .generation
        .ids
        .iter()
        .zip(&a.generation.hidden)
        .filter(|(&id, _)| id == seg)
        .map(|(_, h)| h.clone())
        .collect();
    let got = Tensor::stack(&rows, 0).unwrap();
    assert_close_rel(&got, &g[&format!("{name}.gen.seg_hidden")], "seg hidden");
    let e = chat.seg_projection(&got).unwrap().unwrap();
    assert_close_rel(&e, &g[&format!("{name}.gen.seg_embedding")], "seg embedding");
    // predict_forward's `prediction`: batch_decode(skip_special_tokens=False)[0].strip()
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("sa2va-qwen3vl/goldens.json")).unwrap()).unwrap();
    assert_eq!(
        a.text,
        meta["summary"]["per_image"][name]["prediction"].as_str().unwrap()
    );
}

/// `segment` and `eval refcoco --model` run the Qwen3-VL checkpoint as they run InternVL's.
#[test]
fn cli_segment_and_eval_run_the_qwen3_vl_checkpoint() {
    let model = fixture("sa2va-qwen3vl");
    let m = model.to_str().unwrap();
    let img = fixture("images/chelsea.png");
    let o = run(
        &[
            "segment",
            "--model",
            m,
            "--json",
            "--max-new-tokens",
            "24",
            img.to_str().unwrap(),
            "the cat",
        ],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let g = goldens();
    let packed: Vec<u8> = g["chelsea.mask_bits"].to_vec1().unwrap();
    let want: u64 = (0..451 * 300)
        .map(|i| ((packed[i / 8] >> (7 - i % 8)) & 1) as u64)
        .sum();
    let area = j["area"].as_u64().unwrap();
    assert!(
        area.abs_diff(want) <= want / 1000,
        "area {area} vs the reference's {want}"
    );

    let tmp = tempfile::tempdir().unwrap();
    let images = coco_images(tmp.path());
    let pred = tmp.path().join("pred.jsonl");
    let refer = fixture("refcoco");
    // eval refcoco --model over the fixture split into `pred`, with `extra` flags.
    let eval = |pred: &std::path::Path, extra: &[&str]| {
        let mut args = vec![
            "eval",
            "refcoco",
            "--refer-root",
            refer.to_str().unwrap(),
            "--dataset",
            "refcoco",
            "--split",
            "val",
            "--model",
            m,
            "--images",
            images.to_str().unwrap(),
            "--predictions",
            pred.to_str().unwrap(),
            "--force-seg",
            "--json",
        ];
        args.extend_from_slice(extra);
        let o = run(&args, None);
        assert!(o.status.success(), "{}", stderr(&o));
        o
    };
    let o = eval(&pred, &[]);
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(report["samples"].as_u64().unwrap() >= 4, "{report}");
    assert_eq!(report["missing_predictions"], 0);
    // --batch-size 3 on this family (one turn at a time through the LLM, SAM2 batched): the same
    // predictions in the same order.
    let pred3 = tmp.path().join("pred3.jsonl");
    eval(&pred3, &["--batch-size", "3"]);
    let lines = |p: &std::path::Path| -> Vec<(serde_json::Value, serde_json::Value)> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (v["sent_id"].clone(), v["mask"].clone())
            })
            .collect()
    };
    assert_eq!(lines(&pred3), lines(&pred), "--batch-size 3 vs 1");
}

/// The prompt comes from the checkpoint's own chat template: a repo whose template adds a system
/// turn is prompted with it, a `chat_template.json` overrides the `.jinja` (transformers 4.57's
/// order), and a directory without one falls back to Qwen's stock prompt.
#[test]
fn prompt_follows_the_checkpoints_chat_template() {
    use perceptio::models::qwen3_vl::chat::Qwen3VlChat;
    let d = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(fixture("sa2va-qwen3vl")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), d.path().join(e.file_name())).unwrap();
    }
    let stock = std::fs::read_to_string(d.path().join("chat_template.jinja")).unwrap();
    let prompt = |dir: &std::path::Path| {
        let ck = Checkpoint::open(dir, DType::F32, &Device::Cpu).unwrap();
        Qwen3VlChat::from_checkpoint(&ck)
            .unwrap()
            .prompt_text("<image>\nWhere is the cat?", Some(2))
            .unwrap()
    };
    let pads = "<|vision_start|><|image_pad|><|image_pad|><|vision_end|>";
    let plain = format!("<|im_start|>user\n{pads}\nWhere is the cat?<|im_end|>\n<|im_start|>assistant\n");
    assert_eq!(prompt(d.path()), plain);
    std::fs::write(
        d.path().join("chat_template.jinja"),
        format!("{{{{- '<|im_start|>system\\nYou are Sa2VA.<|im_end|>\\n' }}}}{stock}"),
    )
    .unwrap();
    assert_eq!(
        prompt(d.path()),
        format!("<|im_start|>system\nYou are Sa2VA.<|im_end|>\n{plain}")
    );
    let legacy = serde_json::json!({ "chat_template": stock.replace("<|im_start|>assistant\\n", "<|im_start|>assistant\\n<think>\\n") });
    std::fs::write(d.path().join("chat_template.json"), legacy.to_string()).unwrap();
    assert_eq!(prompt(d.path()), format!("{plain}<think>\n"));
    std::fs::remove_file(d.path().join("chat_template.json")).unwrap();
    std::fs::remove_file(d.path().join("chat_template.jinja")).unwrap();
    assert_eq!(prompt(d.path()), plain);
}
