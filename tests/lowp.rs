//! Reduced precision: perceptio in f16 on the CPU against the references' own f16 runs on the
//! tiny checkpoints (fixtures/lowp, made by tools/gen_lowp_goldens.py: Sa2VA's classes with the
//! model and the pixel values in f16, Meta's sam2 with f16 weights under CUDA-style autocast,
//! transformers' Depth Anything in f16; each also run in f32 and bf16). With CUDA built in and a
//! GPU present, `bf16_on_cuda` runs the same checks in bf16 against the bf16 references.
//!
//! Tolerances come from the measured reference noise, the reference's own f32-vs-f16 difference
//! (`noise` in fixtures/lowp/goldens.json, and the f32 goldens of fixtures/{internvl,sa2va,sam2,
//! depth_anything}): a faithful f16 port rounds at other places than the reference, so it lies
//! about one noise away from the reference's f16 result and from its f32 result, never many.
//! Every value is checked against both, within `NOISE_FACTOR` × the noise of that quantity (the
//! larger of its whole-tensor max |f16 − f32| in goldens.json and the max over the compared
//! values), and never tighter than 2 ulp of the output dtype at the reference's magnitude.
//!
//! Measured noise, max |f32 − f16| of the reference (of max |value|), f16 / bf16:
//!
//! | quantity (tiny checkpoints, chelsea) | f16 | bf16 | scale |
//! |---|---|---|---|
//! | InternViT+mlp1 `vit_embeds` | 2.1e-3 | 2.0e-2 | 2.1 |
//! | Qwen2 prefill logits (last 4) | 2.8e-2 | 0.51 | 8.6 |
//! | `[SEG]` hidden state | 8.2e-3 | 5.7e-2 | 2.9 |
//! | SAM2 chosen low-res logits | 1.6e-2 | 0.20 | 2.0 |
//! | SAM2 IoU prediction | 2.2e-4 | 1.0e-3 | 0.59 |
//! | forced `Sure, [SEG].` mask, whole chain | IoU 0.9985 (84 px flip) | IoU 0.938 | 57,777 px |
//! | the same, only SAM2 in f16/bf16 | IoU 0.9945 (320 px) | IoU 0.961 | |
//! | Depth Anything predicted depth | 1.5e-2 | 0.12 | 7.4 |
//!
//! Greedy tokens: the references' own f16 runs leave f32's tokens after 12 (Qwen2 chelsea) to
//! ≥ 40 steps; perceptio's f16 tokens must follow the reference's f16 tokens until a step where
//! the reference's top-1/top-2 logit gap is within twice the logit tolerance.
//!
//! Before the fixes these tests came with, perceptio's f16 forced mask on chelsea had IoU 0.66
//! against the reference's f16 mask (80,825 px instead of 57,821): candle's f16 CPU softmax sums
//! its exponentials in f16 (see src/models/fastops.rs); then IoU 0.9937 and 3 × noise in the logit
//! row sums, from SAM2's decoder rounding its residual streams to f16 where autocast keeps them in
//! f32; then SAM2 image-embedding channel sums 1.6–4 × noise from candle's f16 GEMM not
//! accumulating in f32 (see `cpu_low_precision` in src/models/nn.rs), now 0.1–0.3 × noise.

mod common;
#[path = "common/sa2va.rs"]
mod sa2va;
use candle_core::{DType, Device, IndexOp, Tensor};
use common::{fixture, run, stderr};
use perceptio::models::checkpoint::Checkpoint;
use perceptio::models::depth_anything::DepthAnything;
use perceptio::models::generate::{generate, GenerateOptions};
use perceptio::models::internvl::chat::ChatModel;
use perceptio::models::perceptio::{referring_prompt, Grounder, LoadOptions, SegmentOptions, FORCED_REPLY};
use perceptio::models::sam2::{PointPrompt, Preprocess, Sam2};
use std::collections::HashMap;

/// perceptio's f16 may be this many reference noises away from the reference's f16 (and f32)
/// result: two independent f16 roundings of one computation differ by up to about twice either
/// one's error, and the order of reductions differs too.
const NOISE_FACTOR: f64 = 3.0;

/// Where and in which dtype a check runs, and the golden prefix of that dtype.
struct Setup {
    dev: Device,
    dt: DType,
    tag: &'static str,
}

fn cpu_f16() -> Setup {
    Setup {
        dev: Device::Cpu,
        dt: DType::F16,
        tag: "f16",
    }
}

fn goldens() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture("lowp/goldens.safetensors"), &Device::Cpu).unwrap()
}

fn meta() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(fixture("lowp/goldens.json")).unwrap()).unwrap()
}

fn load(rel: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(rel), &Device::Cpu).unwrap()
}

/// The reference's whole-tensor f32-vs-`tag` max abs difference of `what` under `key`.
fn noise(m: &serde_json::Value, key: &str, tag: &str, what: &str) -> f64 {
    let v = &m["noise"][key][tag][what]["max_abs"];
    v.as_f64()
        .unwrap_or_else(|| panic!("no noise entry {key}.{tag}.{what}"))
}

fn f64s(t: &Tensor) -> Vec<f64> {
    t.to_device(&Device::Cpu)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (f64s(a), f64s(b));
    assert_eq!(a.len(), b.len(), "sizes differ");
    a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

/// 2 ulp of `dt` at magnitude `x` (the least two roundings of one value can differ by).
fn two_ulp(dt: DType, x: f64) -> f64 {
    let mantissa = if dt == DType::BF16 { 7 } else { 10 };
    2.0 * 2f64.powi(x.max(1e-3).log2().floor() as i32 - mantissa)
}

/// `got` (perceptio in reduced precision) against the reference's result in the same dtype and
/// in f32 (either may be missing), both within NOISE_FACTOR × the noise (see the module doc).
fn check(s: &Setup, got: &Tensor, rlow: Option<&Tensor>, r32: Option<&Tensor>, global_noise: f64, what: &str) {
    let local = match (rlow, r32) {
        (Some(a), Some(b)) => max_abs_diff(a, b),
        _ => 0.0,
    };
    let scale = f64s(rlow.or(r32).unwrap()).iter().fold(0.0f64, |m, x| m.max(x.abs()));
    // the 2-ulp floor is for values the model outputs in its dtype, not for f64 sums of them
    let floor = if got.dtype() == s.dt { two_ulp(s.dt, scale) } else { 0.0 };
    let tol = (NOISE_FACTOR * global_noise.max(local)).max(floor);
    let dl = rlow.map(|r| max_abs_diff(got, r));
    let d32 = r32.map(|r| max_abs_diff(got, r));
    let show = |d: Option<f64>| d.map_or("-".to_string(), |d| format!("{d:.3e}"));
    eprintln!(
        "{what}: |p-r{}| {}  |p-r32| {}  noise {:.3e}  tol {tol:.3e}",
        s.tag,
        show(dl),
        show(d32),
        global_noise.max(local)
    );
    for (d, vs) in [(dl, s.tag), (d32, "f32")] {
        if let Some(d) = d {
            assert!(
                d <= tol,
                "{what}: perceptio {} is {d:e} from the reference's {vs} result (tol {tol:e})",
                s.tag
            );
        }
    }
}

fn unpack(packed: &Tensor, n: usize) -> Vec<u8> {
    let p: Vec<u8> = packed.to_vec1().unwrap();
    (0..n).map(|i| (p[i / 8] >> (7 - i % 8)) & 1).collect()
}

fn iou(a: &[u8], b: &[u8]) -> f64 {
    let (mut i, mut u) = (0u64, 0u64);
    for (x, y) in a.iter().zip(b) {
        i += u64::from(*x & *y);
        u += u64::from(*x | *y);
    }
    if u == 0 {
        1.0
    } else {
        i as f64 / u as f64
    }
}

fn image(name: &str) -> image::RgbImage {
    let file = if name == "portrait" { "coffee_portrait" } else { name };
    perceptio::preprocess::load_rgb(&fixture(&format!("images/{file}.png"))).unwrap()
}

// ------------------------------------------------------------------------------------ InternVL

/// ViT features, prefill logits and 40 greedy tokens of the 'Describe' prompt (the prompt of
/// fixtures/internvl's f32 goldens).
fn internvl_case(s: &Setup, model: &str, kind: &str, name: &str) {
    let (g, m) = (goldens(), meta());
    let key = format!("internvl.{kind}.{name}");
    let t = s.tag;
    let g32 = load(&format!("internvl/goldens/{model}_{name}.safetensors"));
    let mut chat = ChatModel::load(&fixture(&format!("internvl/{model}")), &s.dev, s.dt).unwrap();
    let (px, _, n) = chat.pixel_values(&image(name), 6).unwrap();
    let feats = chat.model.extract_feature(&px).unwrap();
    assert_eq!(feats.dtype(), s.dt);
    check(
        s,
        &feats,
        Some(&g[&format!("{t}.{key}.vit_embeds")]),
        Some(&g32["vit_embeds"]),
        noise(&m, &key, t, "vit_embeds"),
        &format!("{key} vit_embeds"),
    );
    let ids = chat.prompt_ids("<image>\nDescribe the image in detail.", n).unwrap();
    let want_ids: Vec<u32> = g32["input_ids"].to_dtype(DType::U32).unwrap().to_vec1().unwrap();
    assert_eq!(ids, want_ids);
    let (embeds, _) = chat.prompt_embeds(&ids, &px).unwrap();
    chat.model.llm.clear_kv_cache();
    let h = chat.model.llm.forward_embeds(&embeds, 0).unwrap();
    let l = ids.len();
    let logits = chat.model.llm.logits(&h.i((0, l - 4..l)).unwrap()).unwrap();
    let logit_noise = noise(&m, &key, t, "prefill_logits_last4");
    check(
        s,
        &logits,
        Some(&g[&format!("{t}.{key}.prefill_logits_last4")]),
        Some(&g32["prefill_logits_last4"]),
        logit_noise,
        &format!("{key} prefill logits"),
    );
    // Greedy: the same tokens as the reference in this dtype until the reference itself had a
    // near-tie (top-1/top-2 gap within 2 × the logit tolerance, where rounding may pick either).
    let want: Vec<u32> = g[&format!("{t}.{key}.generated_ids")]
        .to_dtype(DType::U32)
        .unwrap()
        .to_vec1()
        .unwrap();
    let gaps: Vec<f64> = m["summary"][&key][t]["top1_top2_gaps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let opts = GenerateOptions {
        max_new_tokens: want.len(),
        ..Default::default()
    };
    let out = generate(&mut chat.model, &embeds, &opts, |_| {}).unwrap();
    let first = out.ids.iter().zip(&want).take_while(|(a, b)| a == b).count();
    let tie = 2.0 * NOISE_FACTOR * logit_noise;
    eprintln!(
        "{key}: greedy {t} tokens follow the reference's for {first} of {}",
        want.len()
    );
    assert!(
        first == want.len() || gaps[first] <= tie,
        "{key}: greedy tokens leave the reference's {t} tokens at step {first}, where its top-2 gap {} > {tie}",
        gaps[first]
    );
}

#[test]
fn internvl_qwen2_f16_matches_the_f16_reference() {
    for name in ["chelsea", "portrait"] {
        internvl_case(&cpu_f16(), "tiny-qwen2", "qwen2", name);
    }
}

#[test]
fn internvl_internlm2_f16_matches_the_f16_reference() {
    for name in ["chelsea", "portrait"] {
        internvl_case(&cpu_f16(), "tiny-internlm2", "internlm2", name);
    }
}

// ------------------------------------------------------------------------------------ Sa2VA

/// The reference's own mask noise, as 1 − IoU with its f32 mask: a thresholded map in flat
/// near-zero regions flips pixels very unevenly, so this is the largest over the ways the
/// reference itself can be run in the dtype — the whole chain, only SAM2 or only the LLM in it,
/// SAM2 with f32 weights under autocast (chelsea f16: 0.0015, 0.0055, 0.0012, 0.0023; portrait:
/// 0.0021, 0.0024, 0.0020, 0.0028) — and the flipped pixels of the largest.
fn mask_noise(m: &serde_json::Value, key: &str, tag: &str) -> (f64, u64) {
    let n = &m["noise"][key][tag];
    [
        &n["mask"],
        &n["mask_sam2_only"],
        &n["mask_llm_only"],
        &n["w32_autocast"]["mask"],
    ]
    .iter()
    .map(|v| (1.0 - v["iou"].as_f64().unwrap(), v["flips"].as_u64().unwrap()))
    .fold((0.0, 0), |a, b| if b.0 > a.0 { b } else { a })
}

/// Mask IoU of perceptio's reduced-precision mask with the reference's (same dtype, and f32):
/// 1 − IoU may be NOISE_FACTOR × the reference's mask noise ([`mask_noise`]).
fn check_mask(got: &[u8], want_low: &[u8], want32: &[u8], noise: f64, what: &str) {
    let budget = NOISE_FACTOR * noise;
    let (a, b) = (iou(got, want_low), iou(got, want32));
    eprintln!("{what}: mask IoU {a:.5} with the reference's, {b:.5} with its f32 mask; reference noise 1 - IoU {noise:.5}; allowed {budget:.5}");
    assert!(
        1.0 - a <= budget,
        "{what}: mask IoU {a} with the reference's (1 - IoU allowed {budget})"
    );
    assert!(
        1.0 - b <= budget,
        "{what}: mask IoU {b} with the reference's f32 mask (1 - IoU allowed {budget})"
    );
}

/// Teacher-forced `Sure, [SEG].` after Sa2VA's RES prompt: the [SEG] hidden state and its
/// projection, SAM2's image embedding, low-res logits, scores and the final mask.
fn sa2va_case(s: &Setup) {
    let dir = tempfile::tempdir().unwrap();
    sa2va::assemble(dir.path());
    let (g, m) = (goldens(), meta());
    let t = s.tag;
    let g32 = load("sa2va/goldens.safetensors");
    let mut gr = Grounder::load(
        &Checkpoint::open(dir.path(), s.dt, &s.dev).unwrap(),
        &LoadOptions {
            require_grounding: true,
            ..Default::default()
        },
    )
    .unwrap();
    for (name, expr) in [("chelsea", "the cat"), ("portrait", "the cup")] {
        let key = format!("sa2va.{name}");
        let img = image(name);
        let vision = gr.vision(&img, 6).unwrap();
        let (ids, hid) = gr
            .chat
            .force_reply(&vision, &referring_prompt(expr), FORCED_REPLY)
            .unwrap();
        let pos = ids.iter().position(|&id| Some(id) == gr.seg_id).unwrap();
        let h = hid.i(pos).unwrap().unsqueeze(0).unwrap();
        let f = |k: &str| g[&format!("{t}.{key}.{k}")].clone();
        let f32g = |k: &str| g32[&format!("{name}.{k}")].clone();
        check(
            s,
            &h,
            Some(&f("force.seg_hidden")),
            Some(&f32g("force.seg_hidden")),
            noise(&m, &key, t, "seg_hidden"),
            &format!("{key} [SEG] hidden"),
        );
        let se = gr.chat.seg_projection(&h).unwrap().unwrap();
        check(
            s,
            &se,
            Some(&f("force.seg_embedding")),
            Some(&f32g("force.seg_embedding")),
            noise(&m, &key, t, "seg_embedding"),
            &format!("{key} [SEG] embedding"),
        );
        let sam2 = gr.sam2.as_ref().unwrap();
        let (feats, _) = sam2.features(&img, Preprocess::Sa2va).unwrap();
        let ch_sum = feats
            .image_embed
            .squeeze(0)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .sum((1, 2))
            .unwrap();
        // per-channel sums of 4096 values: the noise of the sums themselves
        check(
            s,
            &ch_sum,
            Some(&f("image_embed.ch_sum")),
            Some(&f32g("sam2.image_embed.ch_sum")),
            0.0,
            &format!("{key} SAM2 image_embed channel sums"),
        );
        let p = sam2.predict_seg(&feats, &se).unwrap();
        let crop = p.low_res.squeeze(0).unwrap().squeeze(0).unwrap();
        let rows = crop.to_dtype(DType::F64).unwrap().sum(1).unwrap();
        let crop = crop.narrow(0, 112, 32).unwrap().narrow(1, 112, 32).unwrap();
        check(
            s,
            &crop,
            Some(&f("force.chosen_low_res.crop_c")),
            Some(&f32g("force.chosen_low_res.crop_c")),
            noise(&m, &key, t, "low_res_chosen"),
            &format!("{key} chosen low-res logits"),
        );
        check(
            s,
            &rows,
            Some(&f("force.chosen_low_res.row_sums")),
            Some(&f32g("force.chosen_low_res.row_sums")),
            0.0,
            &format!("{key} chosen low-res logit row sums"),
        );
        let best = f("force.best_idx").to_vec1::<i64>().unwrap()[0] as usize;
        assert_eq!(p.best, best, "{key}: best mask");
        let score = Tensor::new(&[p.iou[best]], &Device::Cpu).unwrap();
        check(
            s,
            &score,
            Some(&f("force.iou").flatten_all().unwrap().narrow(0, best, 1).unwrap()),
            Some(&f32g("force.iou").flatten_all().unwrap().narrow(0, best, 1).unwrap()),
            noise(&m, &key, t, "iou"),
            &format!("{key} predicted IoU"),
        );
        let obj = Tensor::new(&[p.object_score], &Device::Cpu).unwrap();
        check(
            s,
            &obj,
            Some(&f("force.obj_score").flatten_all().unwrap()),
            Some(&f32g("force.obj_score").flatten_all().unwrap()),
            noise(&m, &key, t, "obj_score"),
            &format!("{key} object score"),
        );
        // The whole chain as `segment --force-seg` runs it.
        let opts = SegmentOptions {
            max_tiles: 6,
            force_seg: true,
            generation: GenerateOptions {
                max_new_tokens: 24,
                ..Default::default()
            },
        };
        let r = gr.segment(&img, &vision, expr, &opts).unwrap();
        let n = (img.width() * img.height()) as usize;
        check_mask(
            &r.mask.data,
            &unpack(&f("force.final_mask_bits"), n),
            &unpack(&f32g("force.final_mask_bits"), n),
            mask_noise(&m, &key, t).0,
            &format!("{key} forced mask"),
        );
    }
}

#[test]
fn sa2va_force_seg_f16_matches_the_f16_reference() {
    sa2va_case(&cpu_f16());
}

/// `segment --force-seg` on chelsea in f32 and in f16: the mask moves no more than the
/// reference's own mask moves between f32 and f16 (whole chain: IoU 0.9985, 84 pixels flip,
/// area 57,777 → 57,821; the largest of its variants, see [`mask_noise`]: 1 − IoU 0.0055, 320
/// pixels): 1 − IoU within NOISE_FACTOR × that, and the area within NOISE_FACTOR × its flipped
/// pixels (an area can change by at most the pixels that flip).
#[test]
fn segment_cli_f16_mask_moves_as_little_as_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    sa2va::assemble(dir.path());
    let img = fixture("images/chelsea.png");
    let mask = |dtype: &str| -> Vec<u8> {
        let r = run(
            &[
                "segment",
                img.to_str().unwrap(),
                "the cat",
                "--model",
                dir.path().to_str().unwrap(),
                "--force-seg",
                "--max-tiles",
                "6",
                "--dtype",
                dtype,
                "--json",
            ],
            None,
        );
        assert!(r.status.success(), "--dtype {dtype}: {}", stderr(&r));
        let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
        let rle = perceptio::mask::Rle::from_compressed(v["mask"]["counts"].as_str().unwrap(), 300, 451).unwrap();
        assert_eq!(v["area"].as_u64().unwrap(), rle.area());
        rle.decode_row_major()
    };
    let (m32, m16) = (mask("f32"), mask("f16"));
    let m = meta();
    let nz = &m["noise"]["sa2va.chelsea"]["f16"]["mask"];
    let (noise, ref_flips) = mask_noise(&m, "sa2va.chelsea", "f16");
    let area = |m: &[u8]| m.iter().map(|&x| u64::from(x)).sum::<u64>();
    let (a32, a16) = (area(&m32), area(&m16));
    let got = iou(&m32, &m16);
    eprintln!(
        "segment --force-seg chelsea: f32 {a32} px, f16 {a16} px, IoU {got:.5}; reference: {} -> {} px, IoU {}; noise 1 - IoU {noise:.5}, {ref_flips} px flip",
        nz["area_ref"], nz["area"], nz["iou"]
    );
    assert!(
        1.0 - got <= NOISE_FACTOR * noise,
        "f32 vs f16 mask IoU {got}, the reference's noise 1 - IoU {noise}"
    );
    assert!(
        a32.abs_diff(a16) as f64 <= NOISE_FACTOR * ref_flips as f64,
        "area {a32} -> {a16}, the reference's flips {ref_flips}"
    );
}

// ------------------------------------------------------------------------------------ SAM2 alone

/// Meta's predictor path of fixtures/sam2 (point and box prompts).
fn sam2_case(s: &Setup) {
    let (g, m) = (goldens(), meta());
    let t = s.tag;
    let block = serde_json::json!({
        "trunk": {"num_heads": 1, "global_att_blocks": [3], "window_spec": [8, 4, 4, 2]},
        "decoder": {"num_heads": 2}
    });
    let g32 = load("sam2/goldens.safetensors");
    let sam = Sam2::load(&fixture("sam2/tiny_sam2.pt"), Some(&block), &s.dev, s.dt).unwrap();
    let img = image("chelsea");
    let f = sam.encode(&sam.preprocess(&img, Preprocess::Sam2).unwrap()).unwrap();
    // A sum of 65,536 logits is a noisy statistic (correlated errors): the reference's own
    // variants (f16 or f32 weights under autocast, fused or plain attention) move it by up to
    // ~190 on box.single where its f16-vs-f32 difference is 26, so its noise is the largest
    // f16-vs-f32 difference over all eight masks of the four prompts.
    let sum_noise = ["point.multi", "point.single", "box.multi", "box.single"]
        .iter()
        .map(|k| {
            max_abs_diff(
                &g[&format!("{t}.sam2.{k}.low_res.m_sum")],
                &g32[&format!("{k}.low_res_masks.m_sum")],
            )
        })
        .fold(0.0, f64::max);
    let e = f.image_embed.squeeze(0).unwrap();
    check(
        s,
        &e.narrow(1, 28, 8).unwrap().narrow(2, 28, 8).unwrap(),
        None,
        Some(&g32["sam2tf.image_embed.crop_c"]),
        noise(&m, "sam2.predictor", t, "image_embed"),
        "sam2 image_embed centre",
    );
    for (name, p) in [
        (
            "point",
            PointPrompt {
                points: vec![(225.0, 150.0, 1)],
                bbox: None,
            },
        ),
        (
            "box",
            PointPrompt {
                points: vec![],
                bbox: Some([100.0, 50.0, 350.0, 250.0]),
            },
        ),
    ] {
        for (mode, multi) in [("multi", true), ("single", false)] {
            let k = format!("{name}.{mode}");
            let out = sam.predict(&f, &p, (img.width(), img.height()), multi).unwrap();
            let nz = &m["noise"]["sam2.predictor"][t][&k];
            check(
                s,
                &out.iou,
                Some(&g[&format!("{t}.sam2.{k}.iou")]),
                Some(&g32[&format!("{k}.iou")]),
                nz["iou"]["max_abs"].as_f64().unwrap(),
                &format!("sam2 {k} iou"),
            );
            let low = out.low_res_masks.squeeze(0).unwrap();
            check(
                s,
                &low.narrow(1, 112, 32).unwrap().narrow(2, 112, 32).unwrap(),
                Some(&g[&format!("{t}.sam2.{k}.low_res.crop_c")]),
                Some(&g32[&format!("{k}.low_res_masks.crop_c")]),
                nz["low_res"]["max_abs"].as_f64().unwrap(),
                &format!("sam2 {k} low-res logits"),
            );
            check(
                s,
                &low.to_dtype(DType::F64).unwrap().sum((1, 2)).unwrap(),
                Some(&g[&format!("{t}.sam2.{k}.low_res.m_sum")]),
                Some(&g32[&format!("{k}.low_res_masks.m_sum")]),
                sum_noise,
                &format!("sam2 {k} low-res logit sums"),
            );
        }
    }
}

#[test]
fn sam2_predictor_f16_matches_the_f16_reference() {
    sam2_case(&cpu_f16());
}

// ------------------------------------------------------------------------------------ Depth Anything

fn depth_anything_case(s: &Setup) {
    let (g, m) = (goldens(), meta());
    let t = s.tag;
    let g32 = load("depth_anything/goldens.safetensors");
    let model = DepthAnything::load(&fixture("depth_anything/tiny"), &s.dev, s.dt).unwrap();
    for tag in ["chelsea", "coffee_portrait"] {
        let img = perceptio::preprocess::load_rgb(&fixture(&format!("images/{tag}.png"))).unwrap();
        let pd = model
            .forward(&model.pixel_values(&img).unwrap())
            .unwrap()
            .squeeze(0)
            .unwrap();
        assert_eq!(pd.dtype(), s.dt);
        let key = format!("depth_anything.{tag}");
        let nz = noise(&m, &key, t, "predicted_depth");
        let (h, w) = pd.dims2().unwrap();
        let k = 6;
        for (c, y, x) in [("tl", 0, 0), ("c", h / 2 - k / 2, w / 2 - k / 2), ("br", h - k, w - k)] {
            check(
                s,
                &pd.narrow(0, y, k).unwrap().narrow(1, x, k).unwrap(),
                Some(&g[&format!("{t}.da.{tag}.predicted_depth.{c}")]),
                Some(&g32[&format!("{tag}.predicted_depth.{c}")]),
                nz,
                &format!("{key} predicted depth {c}"),
            );
        }
        check(
            s,
            &pd.to_dtype(DType::F64).unwrap().sum(1).unwrap(),
            Some(&g[&format!("{t}.da.{tag}.predicted_depth.row_sums")]),
            Some(&g32[&format!("{tag}.predicted_depth.row_sums")]),
            0.0,
            &format!("{key} predicted depth row sums"),
        );
    }
}

#[test]
fn depth_anything_f16_matches_the_f16_reference() {
    depth_anything_case(&cpu_f16());
}

// ------------------------------------------------------------------------------------ fastops

/// The custom CPU kernels only ever see contiguous f32 CPU storage: f16/bf16 go through f32 (and
/// come back in their dtype), a strided input is made contiguous first.
#[test]
fn fastops_take_reduced_precision_and_strided_inputs() {
    use perceptio::models::fastops::{gelu_erf, softmax_last_dim};
    let x = Tensor::randn(0f32, 3.0, (5, 4096), &Device::Cpu).unwrap();
    for dt in [DType::F16, DType::BF16] {
        let xl = x.to_dtype(dt).unwrap();
        let s = softmax_last_dim(&xl).unwrap();
        let g = gelu_erf(&xl).unwrap();
        assert_eq!((s.dtype(), g.dtype()), (dt, dt));
        let x_rounded = xl.to_dtype(DType::F32).unwrap();
        // f32-accumulated: equal to the f32 softmax of the rounded input, rounded once
        let ws = softmax_last_dim(&x_rounded).unwrap().to_dtype(dt).unwrap();
        assert_eq!(max_abs_diff(&s, &ws), 0.0, "{dt:?} softmax");
        // a 4096-wide row still sums to one (candle's f16 kernel would lose the small terms)
        let sums = f64s(&s.to_dtype(DType::F32).unwrap().sum(1).unwrap());
        assert!(sums.iter().all(|v| (v - 1.0).abs() < 0.01), "{dt:?} row sums {sums:?}");
        let wg = gelu_erf(&x_rounded).unwrap().to_dtype(dt).unwrap();
        assert_eq!(max_abs_diff(&g, &wg), 0.0, "{dt:?} gelu");
    }
    // strided f32 input
    let xt = x.reshape((64, 320)).unwrap().t().unwrap();
    assert!(!xt.is_contiguous());
    let d = max_abs_diff(
        &softmax_last_dim(&xt).unwrap(),
        &candle_nn::ops::softmax_last_dim(&xt.contiguous().unwrap()).unwrap(),
    );
    assert!(d < 1e-6);
}

/// f16/bf16 matmuls on the CPU accumulate in f32 and round once. candle's own f16 GEMM rounds
/// partial sums to f16 per K-block, and per term in a one-row product with a contiguous
/// right-hand side (P·V in a decode step: for K = 4096, 38 of 48 outputs off by more than the
/// bound below). Allowed: 1 ulp of the output plus what f32 accumulation itself may lose
/// (4·K·2⁻²⁴·Σ|x·w|).
#[test]
fn cpu_f16_matmuls_accumulate_in_f32() {
    use candle_core::Module;
    use perceptio::models::nn::{matmul, Linear};
    let dev = Device::Cpu;
    let det = |r: usize, c: usize, seed: f32| -> Tensor {
        let v: Vec<f32> = (0..r * c)
            .map(|i| ((i as f32 * 0.7548 + seed).sin() * 43758.547).fract() * 2.0)
            .collect();
        Tensor::from_vec(v, (r, c), &dev).unwrap()
    };
    let f64t = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
    // outputs further from the exact (f64) product than 1 ulp + the f32 accumulation bound
    let off = |got: &Tensor, x: &Tensor, w: &Tensor, b: Option<&Tensor>, dt: DType| -> usize {
        let k = x.dim(1).unwrap() as f64;
        let mut exact = f64t(x).matmul(&f64t(w).t().unwrap()).unwrap();
        if let Some(b) = b {
            exact = exact.broadcast_add(&f64t(b)).unwrap();
        }
        let mag = f64t(x)
            .abs()
            .unwrap()
            .matmul(&f64t(w).abs().unwrap().t().unwrap())
            .unwrap();
        let (g, e, m) = (f64s(got), f64s(&exact), f64s(&mag));
        (0..g.len())
            .filter(|&i| (g[i] - e[i]).abs() > two_ulp(dt, e[i].abs()) / 2.0 + 4.0 * k * 2f64.powi(-24) * m[i])
            .count()
    };
    for dt in [DType::F16, DType::BF16] {
        for (m, k) in [(1usize, 4096usize), (64, 4096), (3, 768)] {
            let x = det(m, k, 1.0).to_dtype(dt).unwrap();
            let w = det(48, k, 2.0).to_dtype(dt).unwrap();
            let b = det(1, 48, 3.0).squeeze(0).unwrap().to_dtype(dt).unwrap();
            let got = matmul(&x, &w.t().unwrap()).unwrap();
            assert_eq!(got.dtype(), dt);
            assert_eq!(off(&got, &x, &w, None, dt), 0, "{dt:?} matmul m {m} k {k}");
            let lin = Linear::from_weights(w.clone(), Some(b.clone()));
            let got = lin.forward(&x.unsqueeze(0).unwrap()).unwrap().squeeze(0).unwrap();
            assert_eq!(off(&got, &x, &w, Some(&b), dt), 0, "{dt:?} linear m {m} k {k}");
            let raw = x.matmul(&w.t().unwrap().contiguous().unwrap()).unwrap();
            eprintln!(
                "{dt:?} m {m} k {k}: candle's own matmul is off in {} of {}",
                off(&raw, &x, &w, None, dt),
                48 * m
            );
        }
    }
}

// ------------------------------------------------------------------------------------ bf16 on CUDA

/// The same checks in bf16 on a GPU against the bf16 references (the default dtype there). Skipped
/// unless perceptio is built with `--features cuda` and a GPU answers.
#[test]
fn bf16_on_cuda() {
    let Ok(dev) = Device::new_cuda(0) else {
        eprintln!("no CUDA device: skipped");
        return;
    };
    let s = Setup {
        dev,
        dt: DType::BF16,
        tag: "bf16",
    };
    for name in ["chelsea", "portrait"] {
        internvl_case(&s, "tiny-qwen2", "qwen2", name);
        internvl_case(&s, "tiny-internlm2", "internlm2", name);
    }
    sa2va_case(&s);
    sam2_case(&s);
    depth_anything_case(&s);
}
