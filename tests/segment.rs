//! End-to-end referring segmentation on a tiny random Sa2VA-layout checkpoint (InternVL from
//! fixtures/internvl/tiny-qwen2 + SAM2 from fixtures/sam2 + fixtures/sa2va's text_hidden_fcs),
//! assembled here as a sharded checkpoint exactly as fixtures/sa2va/README.md describes.
//! Goldens: tools/gen_sa2va_e2e_goldens.py (Sa2VA's own Sa2VAChatModel + Meta's sam2).

mod common;
#[path = "common/sa2va.rs"]
mod sa2va;
use candle_core::{DType, Device, Tensor};
use common::{assert_fails, f32s, fixture, i64s, run, stderr, stdout};
use perceptio::models::checkpoint::Checkpoint;
use perceptio::models::generate::GenerateOptions;
use perceptio::models::perceptio::{Grounder, LoadOptions, SegmentOptions};
use sa2va::assemble;
use std::collections::HashMap;
use std::path::Path;

fn goldens() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture("sa2va/goldens.safetensors"), &Device::Cpu).unwrap()
}

fn unpack(packed: &Tensor, n: usize) -> Vec<u8> {
    let p: Vec<u8> = packed.to_vec1().unwrap();
    (0..n).map(|i| (p[i / 8] >> (7 - i % 8)) & 1).collect()
}

/// At most a handful of pixels may flip, and only where the reference logit is near 0.
fn assert_mask(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len());
    let flips = got.iter().zip(want).filter(|(a, b)| a != b).count();
    assert!(flips <= 8, "{what}: {flips} pixels differ from the reference mask");
}

fn opts(force: bool) -> SegmentOptions {
    SegmentOptions {
        max_tiles: 6,
        force_seg: force,
        generation: GenerateOptions {
            max_new_tokens: 24,
            ..Default::default()
        },
    }
}

#[test]
fn sa2va_grounding_matches_the_reference_on_two_photos() {
    let dir = tempfile::tempdir().unwrap();
    assemble(dir.path());
    let g = goldens();
    let mut m = Grounder::load(
        &Checkpoint::open(dir.path(), DType::F32, &Device::Cpu).unwrap(),
        &LoadOptions {
            require_grounding: true,
            ..Default::default()
        },
    )
    .unwrap();
    for (name, file, expr) in [
        ("chelsea", "images/chelsea.png", "the cat"),
        ("portrait", "images/coffee_portrait.png", "the cup"),
    ] {
        let img = perceptio::preprocess::load_rgb(&fixture(file)).unwrap();
        let vision = m.vision(&img, 6).unwrap();
        // Teacher-forced "Sure, [SEG].": one [SEG], the reference's mask.
        let r = m.segment(&img, &vision, expr, &opts(true)).unwrap();
        let ids = i64s(&g[&format!("{name}.force.input_ids")]);
        let forced: Vec<i64> = r.token_ids.iter().map(|&x| x as i64).collect();
        assert_eq!(
            &ids[ids.len() - forced.len()..],
            forced.as_slice(),
            "{name}: forced reply tokens"
        );
        assert_eq!(r.seg_count, 1);
        let iou = f32s(&g[&format!("{name}.force.iou")]);
        let best = i64s(&g[&format!("{name}.force.best_idx")])[0] as usize;
        assert!(
            (r.scores[0] - iou[best]).abs() < 1e-4,
            "{name}: score {} vs {}",
            r.scores[0],
            iou[best]
        );
        let obj = f32s(&g[&format!("{name}.force.obj_score")])[0];
        assert!(
            (r.object_scores[0] - obj).abs() < 1e-4,
            "{name}: object score {} vs {obj}",
            r.object_scores[0]
        );
        let want = unpack(
            &g[&format!("{name}.force.final_mask_bits")],
            (img.width() * img.height()) as usize,
        );
        assert_mask(&r.mask.data, &want, name);
        assert!(r.timings.sam2_encode_s > 0.0 && !r.timings.sam2_cached);
        // Greedy generation: the reference's 24 tokens, no [SEG], so an empty mask.
        let r = m.segment(&img, &vision, expr, &opts(false)).unwrap();
        let want_ids: Vec<u32> = i64s(&g[&format!("{name}.gen.generated_ids")])
            .iter()
            .map(|&x| x as u32)
            .collect();
        assert_eq!(r.token_ids, want_ids, "{name}: greedy tokens");
        assert_eq!((r.seg_count, r.mask.area()), (0, 0));
    }
}

/// The Sa2VA-InternVL3 layout (fixtures/sa2va_internvl3: Qwen2.5 with its own lm_head, other
/// head counts than the 1B's, a sliding_window shorter than the prompt that is switched off)
/// against Sa2VA's own classes: greedy tokens with a generated `[SEG]`, teacher-forced masks.
/// Every object score there is negative, so these masks also pin down that Sa2VA does not gate
/// by the object score (Meta's gating would empty all three).
#[test]
fn sa2va_internvl3_layout_matches_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    sa2va::assemble_internvl3(dir.path());
    let g = candle_core::safetensors::load(fixture("sa2va_internvl3/goldens.safetensors"), &Device::Cpu).unwrap();
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("sa2va_internvl3/goldens.json")).unwrap()).unwrap();
    let stops: Vec<i64> = serde_json::from_value(meta["summary"]["stop_token_ids"].clone()).unwrap();
    let ck = Checkpoint::open(dir.path(), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(ck.config["llm_config"]["tie_word_embeddings"], false);
    assert!(ck.shapes.contains_key("language_model.lm_head.weight"));
    let mut m = Grounder::load(
        &ck,
        &LoadOptions {
            require_grounding: true,
            ..Default::default()
        },
    )
    .unwrap();
    let mut generated_segs = 0;
    for (name, file, expr) in [
        ("chelsea", "images/chelsea.png", "the cat"),
        ("portrait", "images/coffee_portrait.png", "the cup"),
    ] {
        let img = perceptio::preprocess::load_rgb(&fixture(file)).unwrap();
        let n = (img.width() * img.height()) as usize;
        let vision = m.vision(&img, 6).unwrap();
        let check = |r: &perceptio::models::perceptio::SegmentResult, p: &str| {
            let iou = f32s(&g[&format!("{p}.iou")]);
            let best = i64s(&g[&format!("{p}.best_idx")])[0] as usize;
            assert!(
                (r.scores[0] - iou[best]).abs() < 1e-4,
                "{p}: score {} vs {}",
                r.scores[0],
                iou[best]
            );
            let obj = f32s(&g[&format!("{p}.obj_score")])[0];
            assert!(
                (r.object_scores[0] - obj).abs() < 1e-4,
                "{p}: object score {} vs {obj}",
                r.object_scores[0]
            );
            let want = unpack(&g[&format!("{p}.final_mask_bits")], n);
            // the golden must be one where gating would have emptied the mask
            assert!(obj < 0.0 && want.contains(&1), "{p}: golden does not test the gating");
            assert_mask(&r.mask.data, &want, p);
        };
        let r = m.segment(&img, &vision, expr, &opts(true)).unwrap();
        let ids = i64s(&g[&format!("{name}.force.input_ids")]);
        let forced: Vec<i64> = r.token_ids.iter().map(|&x| x as i64).collect();
        assert_eq!(
            &ids[ids.len() - forced.len()..],
            forced.as_slice(),
            "{name}: forced reply tokens"
        );
        assert_eq!(r.seg_count, 1);
        check(&r, &format!("{name}.force"));
        // Greedy: the reference's tokens (the stop token, if any, is not part of the reply).
        let r = m.segment(&img, &vision, expr, &opts(false)).unwrap();
        let mut want_ids = i64s(&g[&format!("{name}.gen.generated_ids")]);
        if want_ids.last().is_some_and(|t| stops.contains(t)) {
            want_ids.pop();
        }
        let got: Vec<i64> = r.token_ids.iter().map(|&x| x as i64).collect();
        assert_eq!(got, want_ids, "{name}: greedy tokens");
        let segs = meta["summary"]["per_image"][name]["gen"]["seg_positions_in_generated"]
            .as_array()
            .unwrap()
            .len();
        assert_eq!(r.seg_count, segs, "{name}: [SEG]s in the greedy reply");
        if segs == 1 {
            check(&r, &format!("{name}.gen.seg0"));
        } else {
            assert_eq!((segs, r.mask.area()), (0, 0));
        }
        generated_segs += segs;
    }
    assert!(generated_segs > 0, "no greedy reply of the golden holds a [SEG]");
}

/// The Sa2VA-26B layout (fixtures/sa2va_26b: a vision tower with InternViT-6B's switches —
/// RMSNorm, qk-normalization over the whole width, no qkv bias, 3 heads, eps 1e-6 — + mlp1 + an
/// InternLM2 LLM with its own `output` head, template internlm2_chat, and InternLM2's slow
/// SentencePiece tokenizer, whose `<s>` leads the prompt) against Sa2VA's own classes: greedy
/// tokens (24, no `[SEG]`), teacher-forced masks (Sa2VA's, not gated by the object score).
#[test]
fn sa2va_26b_layout_matches_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    sa2va::assemble_26b(dir.path());
    let g = candle_core::safetensors::load(fixture("sa2va_26b/goldens.safetensors"), &Device::Cpu).unwrap();
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("sa2va_26b/goldens.json")).unwrap()).unwrap();
    let stops: Vec<i64> = serde_json::from_value(meta["summary"]["stop_token_ids"].clone()).unwrap();
    let ck = Checkpoint::open(dir.path(), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(ck.config["template"], "internlm2_chat");
    assert_eq!(ck.config["llm_config"]["architectures"][0], "InternLM2ForCausalLM");
    assert_eq!(ck.config["vision_config"]["norm_type"], "rms_norm");
    assert_eq!(ck.config["vision_config"]["qk_normalization"], true);
    assert!(ck.shapes.contains_key("language_model.output.weight"));
    assert!(!dir.path().join("tokenizer.json").exists());
    let mut m = Grounder::load(
        &ck,
        &LoadOptions {
            require_grounding: true,
            ..Default::default()
        },
    )
    .unwrap();
    for (name, file, expr) in [
        ("chelsea", "images/chelsea.png", "the cat"),
        ("portrait", "images/coffee_portrait.png", "the cup"),
    ] {
        let img = perceptio::preprocess::load_rgb(&fixture(file)).unwrap();
        let n = (img.width() * img.height()) as usize;
        let vision = m.vision(&img, 6).unwrap();
        let check = |r: &perceptio::models::perceptio::SegmentResult, p: &str| {
            let iou = f32s(&g[&format!("{p}.iou")]);
            let best = i64s(&g[&format!("{p}.best_idx")])[0] as usize;
            assert!(
                (r.scores[0] - iou[best]).abs() < 1e-4,
                "{p}: score {} vs {}",
                r.scores[0],
                iou[best]
            );
            let obj = f32s(&g[&format!("{p}.obj_score")])[0];
            assert!(
                (r.object_scores[0] - obj).abs() < 1e-4,
                "{p}: object score {} vs {obj}",
                r.object_scores[0]
            );
            let want = unpack(&g[&format!("{p}.final_mask_bits")], n);
            assert!(want.contains(&1), "{p}: empty golden mask");
            assert_mask(&r.mask.data, &want, p);
        };
        let r = m.segment(&img, &vision, expr, &opts(true)).unwrap();
        let ids = i64s(&g[&format!("{name}.force.input_ids")]);
        assert_eq!(ids[0], 1, "{name}: the golden prompt starts with <s>");
        let forced: Vec<i64> = r.token_ids.iter().map(|&x| x as i64).collect();
        assert_eq!(
            &ids[ids.len() - forced.len()..],
            forced.as_slice(),
            "{name}: forced reply tokens"
        );
        assert_eq!(r.seg_count, 1);
        check(&r, &format!("{name}.force"));
        // Greedy: the reference's tokens (the stop token, if any, is not part of the reply).
        let r = m.segment(&img, &vision, expr, &opts(false)).unwrap();
        let mut want_ids = i64s(&g[&format!("{name}.gen.generated_ids")]);
        if want_ids.last().is_some_and(|t| stops.contains(t)) {
            want_ids.pop();
        }
        let got: Vec<i64> = r.token_ids.iter().map(|&x| x as i64).collect();
        assert_eq!(got, want_ids, "{name}: greedy tokens");
        let segs = meta["summary"]["per_image"][name]["gen"]["seg_positions_in_generated"]
            .as_array()
            .unwrap()
            .len();
        assert_eq!(r.seg_count, segs, "{name}: [SEG]s in the greedy reply");
        // A random 3k-piece LLM does not emit [SEG] greedily (no seed of 0..32 did): no mask.
        assert_eq!((segs, r.mask.area()), (0, 0));
    }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// `segment_batch` (batched InternViT, padded LLM prefill, SAM2 encoder over two photos along the
/// batch, one mask-decoder forward over every `[SEG]`) against the same samples one at a time.
#[test]
fn segment_batch_equals_one_sample_at_a_time() {
    use perceptio::models::perceptio::BatchItem;
    use perceptio::models::sam2::Preprocess;
    let dir = tempfile::tempdir().unwrap();
    assemble(dir.path());
    let mut m = Grounder::load(
        &Checkpoint::open(dir.path(), DType::F32, &Device::Cpu).unwrap(),
        &LoadOptions {
            require_grounding: true,
            ..Default::default()
        },
    )
    .unwrap();
    let cat = perceptio::preprocess::load_rgb(&fixture("images/chelsea.png")).unwrap();
    let cup = perceptio::preprocess::load_rgb(&fixture("images/coffee_portrait.png")).unwrap();
    // InternViT over both photos' tiles at once (2 + 3 tiles with the thumbnail) = each alone.
    let vs = m.chat.vision_batch(&[&cat, &cup], 2).unwrap();
    for (v, img) in vs.iter().zip([&cat, &cup]) {
        let one = m.vision(img, 2).unwrap();
        assert_eq!((v.n_tiles, v.grid), (one.n_tiles, one.grid));
        let e = max_abs_diff(&v.feats, &one.feats);
        assert!(e < 1e-5, "batched InternViT features differ by {e}");
    }
    // SAM2's image encoder with b = 2 (and a repeated photo encoded once) = two b = 1 runs.
    let sam2 = m.sam2.as_ref().unwrap();
    sam2.clear_cache();
    let fb = sam2.features_batch(&[&cat, &cup, &cat], Preprocess::Sa2va).unwrap();
    assert_eq!(fb.iter().map(|f| f.1).collect::<Vec<_>>(), [false; 3]);
    assert!(std::sync::Arc::ptr_eq(&fb[0].0, &fb[2].0));
    sam2.clear_cache();
    for (f, img) in fb.iter().zip([&cat, &cup]) {
        let (one, hit) = sam2.features(img, Preprocess::Sa2va).unwrap();
        assert!(!hit);
        let e = max_abs_diff(&f.0.image_embed, &one.image_embed);
        let (a, b) = (f.0.high_res_cl.as_ref().unwrap(), one.high_res_cl.as_ref().unwrap());
        let e = e.max(max_abs_diff(&a.0, &b.0)).max(max_abs_diff(&a.1, &b.1));
        assert!(e < 1e-4, "batched SAM2 features differ by {e}");
    }
    assert!(
        sam2.features_batch(&[&cup], Preprocess::Sa2va).unwrap()[0].1,
        "a cache hit"
    );
    // The padded prefill: each row's forced hidden states = its lone prefill's.
    let turns = [
        (&vs[0], "<image>\nthe cat"),
        (&vs[1], "<image>\n a much longer turn about the cup on the table"),
    ];
    let (ids, hs) = m.chat.force_reply_batch(&turns, "Sure, [SEG].").unwrap();
    for ((v, user), h) in turns.iter().zip(&hs) {
        let (one_ids, one) = m.chat.force_reply(v, user, "Sure, [SEG].").unwrap();
        assert_eq!(ids, one_ids);
        let e = max_abs_diff(h, &one);
        assert!(e < 1e-4, "padded prefill hidden states differ by {e}");
    }
    // Three samples on two photos, expressions of different lengths (so the prefill pads).
    let samples = [
        (&cat, &vs[0], "the cat"),
        (&cup, &vs[1], "the cup on the wooden table"),
        (&cat, &vs[0], "ear"),
    ];
    for force in [true, false] {
        let mut o = opts(force);
        o.max_tiles = 2;
        o.generation.max_new_tokens = 20;
        let mut stop_at = None;
        if !force {
            // Batched greedy decoding with a row stopping early: the stop token is the first new
            // token from step 2 on of the first sample's lone reply, so that row stops there
            // while the others may run on.
            let t = m
                .segment(samples[0].0, samples[0].1, samples[0].2, &o)
                .unwrap()
                .token_ids;
            let j = (2..t.len()).find(|&j| !t[..j].contains(&t[j])).unwrap();
            o.generation.stop_ids = vec![t[j]];
            stop_at = Some(j + 1);
        }
        let items: Vec<BatchItem> = samples
            .iter()
            .map(|&(img, vision, expression)| BatchItem {
                img,
                vision,
                expression,
            })
            .collect();
        let batch = m.segment_batch(&items, &o).unwrap();
        assert_eq!(batch.len(), 3);
        for ((img, vision, expr), b) in samples.iter().zip(&batch) {
            let one = m.segment(img, vision, expr, &o).unwrap();
            let what = format!("force {force}, {expr:?}");
            assert_eq!(
                (&b.token_ids, &b.text, &b.prompt),
                (&one.token_ids, &one.text, &one.prompt),
                "{what}"
            );
            assert_eq!(b.seg_count, one.seg_count, "{what}");
            let flips = b.mask.data.iter().zip(&one.mask.data).filter(|(x, y)| x != y).count();
            let iou = if one.mask.area() == 0 && b.mask.area() == 0 {
                1.0
            } else {
                let inter = b
                    .mask
                    .data
                    .iter()
                    .zip(&one.mask.data)
                    .filter(|(x, y)| **x == 1 && **y == 1)
                    .count();
                inter as f64 / ((b.mask.area() + one.mask.area()) as f64 - inter as f64)
            };
            assert!(iou >= 0.999, "{what}: mask IoU {iou} ({flips} pixels differ)");
            for (x, y) in b
                .scores
                .iter()
                .zip(&one.scores)
                .chain(b.object_scores.iter().zip(&one.object_scores))
            {
                assert!((x - y).abs() < 1e-4, "{what}: score {x} vs {y}");
            }
            if expr == &samples[0].2 {
                if let Some(n) = stop_at {
                    assert_eq!(b.token_ids.len(), n, "{what}: stops early, {:?}", b.token_ids);
                }
            }
            if force {
                assert_eq!(b.seg_count, 1, "{what}");
                assert!(
                    one.mask.area() > 0,
                    "{what}: an empty mask would make the check vacuous"
                );
            }
        }
    }
}

#[test]
fn segment_cli_writes_mask_rle_overlay_and_json() {
    let dir = tempfile::tempdir().unwrap();
    assemble(dir.path());
    let out = tempfile::tempdir().unwrap();
    let o = |f: &str| out.path().join(f).to_str().unwrap().to_string();
    let img = fixture("images/chelsea.png");
    let args = [
        "segment",
        img.to_str().unwrap(),
        "the cat",
        "the whiskers",
        "--model",
        dir.path().to_str().unwrap(),
        "--force-seg",
        "--max-tiles",
        "6",
        "-o",
        &o("mask.png"),
        "--rle",
        &o("mask.json"),
        "--overlay",
        &o("overlay.png"),
        "--json",
    ];
    let r = run(&args, None);
    assert!(r.status.success(), "{}", stderr(&r));
    let lines: Vec<serde_json::Value> = stdout(&r).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2, "one JSON line per expression");
    let want = unpack(&goldens()["chelsea.force.final_mask_bits"], 451 * 300);
    let v = &lines[0];
    assert_eq!(v["expression"], "the cat");
    assert_eq!(v["prompt"], "<image>\n Please segment the cat in this image.");
    assert_eq!(v["seg_count"], 1);
    assert_eq!(v["mask"]["size"], serde_json::json!([300, 451]));
    let rle = perceptio::mask::Rle::from_compressed(v["mask"]["counts"].as_str().unwrap(), 300, 451).unwrap();
    assert_mask(&rle.decode_row_major(), &want, "CLI RLE");
    assert_eq!(v["area"].as_u64().unwrap(), rle.area());
    assert_eq!(v["timings"]["sam2_cached"], false);
    assert_eq!(
        lines[1]["timings"]["sam2_cached"], true,
        "the second expression reuses the SAM2 embedding"
    );
    // Files: numbered per expression; the PNG and the RLE file hold the same mask.
    let png = image::open(o("mask-1.png")).unwrap().to_luma8();
    assert_eq!(png.dimensions(), (451, 300));
    let png_bits: Vec<u8> = png.pixels().map(|p| u8::from(p.0[0] == 255)).collect();
    assert_eq!(png_bits, rle.decode_row_major());
    let f: serde_json::Value = serde_json::from_slice(&std::fs::read(o("mask-1.json")).unwrap()).unwrap();
    assert_eq!(f["counts"], v["mask"]["counts"]);
    assert!(Path::new(&o("mask-2.png")).is_file() && Path::new(&o("overlay-2.png")).is_file());
    let ov = image::open(o("overlay-1.png")).unwrap().to_rgb8();
    assert_eq!(ov.dimensions(), (451, 300));
    let photo = image::open(&img).unwrap().to_rgb8();
    let changed = ov.pixels().zip(photo.pixels()).filter(|(a, b)| a != b).count() as u64;
    assert!(
        changed >= rle.area() * 9 / 10,
        "the overlay tints the mask ({changed} of {} pixels)",
        rle.area()
    );
    // No stray temp files from the atomic writes.
    assert!(std::fs::read_dir(out.path()).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .ends_with(".tmp")));
}

#[test]
fn no_seg_token_gives_an_empty_mask_and_exit_3() {
    let dir = tempfile::tempdir().unwrap();
    assemble(dir.path());
    let out = tempfile::tempdir().unwrap();
    let m = out.path().join("m.png");
    let img = fixture("images/chelsea.png");
    let r = run(
        &[
            "segment",
            img.to_str().unwrap(),
            "the cat",
            "--model",
            dir.path().to_str().unwrap(),
            "--max-tiles",
            "6",
            "--max-new-tokens",
            "24",
            "-o",
            m.to_str().unwrap(),
            "--json",
        ],
        None,
    );
    assert_eq!(r.status.code(), Some(3), "{}", stderr(&r));
    assert!(stderr(&r).contains("no [SEG]"), "{}", stderr(&r));
    let v: serde_json::Value = serde_json::from_str(stdout(&r).trim()).unwrap();
    assert_eq!((v["seg_count"].as_u64(), v["area"].as_u64()), (Some(0), Some(0)));
    assert!(v["bbox"].is_null());
    let png = image::open(&m).unwrap().to_luma8();
    assert!(png.pixels().all(|p| p.0[0] == 0));
}

/// A checkpoint converted from InternVL2-1B (the Sa2VA-1B the hub repo held before Sept 2025)
/// still runs (same architecture), with a warning naming what perceptio targets.
#[test]
fn the_pre_september_2025_sa2va_1b_runs_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    assemble(dir.path());
    let cfg_path = dir.path().join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    cfg["_name_or_path"] = serde_json::json!("./pretrained/InternVL2-1B/");
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let img = fixture("images/chelsea.png");
    let model = dir.path().to_str().unwrap();
    let args = [
        "segment",
        img.to_str().unwrap(),
        "the cat",
        "--model",
        model,
        "--force-seg",
        "--max-tiles",
        "6",
        "--json",
    ];
    let r = run(&args, None);
    assert!(r.status.success(), "{}", stderr(&r));
    let e = stderr(&r);
    assert!(
        e.contains("warning") && e.contains("pre-September-2025") && e.contains("Qwen2.5-0.5B"),
        "{e}"
    );
}

fn tiny_sam2_block(dir: &Path) -> String {
    let p = dir.join("sam2.json");
    std::fs::write(&p, r#"{"sam2": {"trunk": {"num_heads": 1, "global_att_blocks": [3], "window_spec": [8, 4, 4, 2]}, "decoder": {"num_heads": 2}}}"#).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn plain_sam2_point_and_box_prompts() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_sam2_block(dir.path());
    let pt = fixture("sam2/tiny_sam2.pt");
    let img = fixture("images/chelsea.png");
    let g = candle_core::safetensors::load(fixture("sam2/goldens.safetensors"), &Device::Cpu).unwrap();
    let base = [
        "segment",
        img.to_str().unwrap(),
        "--sam2",
        pt.to_str().unwrap(),
        "--sam2-config",
        &cfg,
    ];
    // One point: multimask, best by predicted IoU (as the reference predictor recommends).
    let r = run(&[&base[..], &["--point", "225,150"]].concat(), None);
    assert!(r.status.success(), "{}", stderr(&r));
    let v: serde_json::Value = serde_json::from_str(stdout(&r).trim()).unwrap();
    let want = f32s(&g["point.multi.iou"]);
    let got: Vec<f32> = v["scores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    for (a, b) in got.iter().zip(&want) {
        assert!((a - b).abs() < 1e-4, "{got:?} vs {want:?}");
    }
    assert_eq!(v["multimask"], true);
    assert!(v["area"].as_u64().unwrap() > 0);
    // A box: single mask.
    let r = run(&[&base[..], &["--box", "100,50,350,250"]].concat(), None);
    assert!(r.status.success(), "{}", stderr(&r));
    let v: serde_json::Value = serde_json::from_str(stdout(&r).trim()).unwrap();
    assert!((v["score"].as_f64().unwrap() as f32 - f32s(&g["box.single.iou"])[0]).abs() < 1e-4);
    // The Sa2VA safetensors layout works the same way.
    let st = fixture("sam2/tiny_sa2va_sam2.safetensors");
    let r = run(
        &[
            "segment",
            img.to_str().unwrap(),
            "--sam2",
            st.to_str().unwrap(),
            "--sam2-config",
            &cfg,
            "--point",
            "225,150",
            "--json",
        ],
        None,
    );
    let v2: serde_json::Value = serde_json::from_str(stdout(&r).trim()).unwrap();
    assert!((v2["scores"][0].as_f64().unwrap() - want[0] as f64).abs() < 1e-4);
}

#[test]
fn bad_inputs_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_sam2_block(dir.path());
    let pt = fixture("sam2/tiny_sam2.pt");
    let img = fixture("images/chelsea.png");
    let (i, p) = (img.to_str().unwrap(), pt.to_str().unwrap());
    let usage = |args: &[&str], needle: &str| {
        let r = run(args, None);
        assert_eq!(r.status.code(), Some(2), "{args:?}: {}", stderr(&r));
        assert!(stderr(&r).contains(needle), "{}", stderr(&r));
    };
    usage(
        &["segment", i, "--sam2", p, "--point", "500,10"],
        "outside the 451x300 image",
    );
    usage(&["segment", i, "--sam2", p, "--box", "300,10,100,200"], "x1 >= x0");
    usage(&["segment", i, "  "], "expression 1 is empty");
    usage(&["segment", i, "the cat", "--point", "1,1"], "not both");
    usage(&["segment", i], "nothing to segment");
    // Geometry that the weights cannot tell, and no block given.
    assert_fails(&["segment", i, "--sam2", p, "--point", "10,10"], "trunk.num_heads");
    // A config that does not match the weights.
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"trunk": {"num_heads": 1, "global_att_blocks": [3], "window_spec": [8, 4, 4, 2]}, "decoder": {"num_heads": 3}}"#).unwrap();
    assert_fails(
        &[
            "segment",
            i,
            "--sam2",
            p,
            "--sam2-config",
            bad.to_str().unwrap(),
            "--point",
            "10,10",
        ],
        "num_heads 3",
    );
    // Missing and corrupt files.
    assert_fails(
        &[
            "segment",
            "nope.png",
            "--sam2",
            p,
            "--sam2-config",
            &cfg,
            "--point",
            "1,1",
        ],
        "nope.png",
    );
    assert_fails(
        &[
            "segment",
            i,
            "--sam2",
            "missing.pt",
            "--sam2-config",
            &cfg,
            "--point",
            "1,1",
        ],
        "missing.pt",
    );
    let trunc = dir.path().join("t.safetensors");
    let bytes = std::fs::read(fixture("sam2/tiny_sa2va_sam2.safetensors")).unwrap();
    std::fs::write(&trunc, &bytes[..bytes.len() / 2]).unwrap();
    assert_fails(
        &[
            "segment",
            i,
            "--sam2",
            trunc.to_str().unwrap(),
            "--sam2-config",
            &cfg,
            "--point",
            "1,1",
        ],
        "truncated",
    );
    let junk = dir.path().join("j.pt");
    std::fs::write(&junk, b"not a checkpoint").unwrap();
    assert_fails(
        &["segment", i, "--sam2", junk.to_str().unwrap(), "--point", "1,1"],
        "j.pt",
    );
    // A model directory without SAM2 / [SEG] projection.
    assert_fails(
        &[
            "segment",
            i,
            "the cat",
            "--model",
            fixture("internvl/tiny-qwen2").to_str().unwrap(),
        ],
        "tiny-qwen2",
    );
}

/// A directory holding only Meta's `.pt` (as the facebook/sam2.1-hiera-* hub repos do).
#[test]
fn sam2_directory_with_a_meta_pt() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("sam2/tiny_sam2.pt"), dir.path().join("sam2.1_hiera_tiny.pt")).unwrap();
    std::fs::write(dir.path().join("config.json"), r#"{"sam2": {"trunk": {"num_heads": 1, "global_att_blocks": [3], "window_spec": [8, 4, 4, 2]}, "decoder": {"num_heads": 2}}}"#).unwrap();
    let img = fixture("images/chelsea.png");
    let r = run(
        &[
            "segment",
            img.to_str().unwrap(),
            "--sam2",
            dir.path().to_str().unwrap(),
            "--point",
            "225,150",
        ],
        None,
    );
    assert!(r.status.success(), "{}", stderr(&r));
    let v: serde_json::Value = serde_json::from_str(stdout(&r).trim()).unwrap();
    assert!(v["area"].as_u64().unwrap() > 0);
}

/// `segment --batch`: the model loads once; each expression's line equals the single call's
/// (plus `id`), in input order; a malformed line, a missing image and a corrupt image give their
/// error lines while the rest succeed; `{id}` names the output files; exit 1 when any failed.
#[test]
fn batch_mode_matches_single_calls_and_keeps_going() {
    let dir = tempfile::tempdir().unwrap();
    assemble(dir.path());
    let out = tempfile::tempdir().unwrap();
    let m = dir.path().to_str().unwrap();
    let chelsea = fixture("images/chelsea.png");
    let portrait = fixture("images/coffee_portrait.png");
    let corrupt = out.path().join("corrupt.png");
    std::fs::write(&corrupt, b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let batch = [
        serde_json::json!({"id": "a", "image": chelsea, "expressions": ["the cat", "the whiskers"]}).to_string(),
        "{not json".to_string(),
        serde_json::json!({"id": 7, "image": out.path().join("missing.png"), "expressions": ["x"]}).to_string(),
        serde_json::json!({"id": "c", "image": corrupt, "expressions": ["x"]}).to_string(),
        serde_json::json!({"id": "b", "image": portrait, "expressions": ["the cup"]}).to_string(),
        serde_json::json!({"id": "a2", "image": chelsea, "expressions": ["the cat"]}).to_string(),
    ]
    .join("\n");
    let mask = out.path().join("{id}.png").to_str().unwrap().to_string();
    let args = [
        "segment",
        "--batch",
        "-",
        "--model",
        m,
        "--force-seg",
        "--max-tiles",
        "6",
        "-o",
        &mask,
        "--json",
    ];
    let r = run(&args, Some(batch.as_bytes()));
    assert_eq!(r.status.code(), Some(1), "{}", stderr(&r));
    let lines: Vec<serde_json::Value> = stdout(&r).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let ids: Vec<String> = lines
        .iter()
        .map(|v| {
            v.get("id")
                .map(|i| i.to_string())
                .unwrap_or_else(|| format!("line {}", v["line"]))
        })
        .collect();
    assert_eq!(ids, ["\"a\"", "\"a\"", "line 2", "7", "\"c\"", "\"b\"", "\"a2\""]);
    assert!(lines[2]["error"].as_str().unwrap().contains(":2:"));
    assert!(lines[3]["error"].as_str().unwrap().contains("missing.png"));
    assert!(lines[4]["error"].as_str().unwrap().contains("corrupt.png"));
    // The same as one call per image, mask for mask.
    let single = |img: &Path, exprs: &[&str]| -> Vec<serde_json::Value> {
        let mut a = vec!["segment", img.to_str().unwrap()];
        a.extend_from_slice(exprs);
        a.extend_from_slice(&["--model", m, "--force-seg", "--max-tiles", "6", "--json"]);
        let r = run(&a, None);
        assert!(r.status.success(), "{}", stderr(&r));
        stdout(&r).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let want_a = single(&chelsea, &["the cat", "the whiskers"]);
    let want_b = single(&portrait, &["the cup"]);
    for (got, want) in [
        (&lines[0], &want_a[0]),
        (&lines[1], &want_a[1]),
        (&lines[5], &want_b[0]),
        (&lines[6], &want_a[0]),
    ] {
        for k in ["mask", "area", "bbox", "token_ids", "scores", "text", "expression"] {
            assert_eq!(got[k], want[k], "{k}");
        }
    }
    // {id} in the file names, numbered per expression when a request has several.
    for f in ["a-1.png", "a-2.png", "b.png", "a2.png"] {
        assert!(out.path().join(f).is_file(), "{f} missing");
    }
    // The second request on chelsea.png reused its SAM2 features.
    assert_eq!(lines[6]["timings"]["sam2_cached"], true);
}
