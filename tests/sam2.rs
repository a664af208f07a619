//! SAM2 parity with Meta's sam2 1.1.0 on a tiny random checkpoint (fixtures/sam2, made by
//! tools/gen_sam2_goldens.py). Prompt encoder, image encoder, mask decoder, Sa2VA [SEG] path.

mod common;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use common::fixture;
use perceptio::models::sam2::prompt_encoder::PromptEncoder;
use std::collections::HashMap;

fn goldens() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture("sam2/goldens.safetensors"), &Device::Cpu).unwrap()
}

fn close(a: &Tensor, b: &Tensor, what: &str) {
    assert_eq!(a.dims(), b.dims(), "{what}: shape");
    let d: f32 = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!(d <= 1e-5, "{what}: max abs diff {d}");
}

fn encoder(vb: VarBuilder) -> PromptEncoder {
    PromptEncoder::new(32, (64, 64), (1024, 1024), vb).unwrap()
}

fn labels(g: &HashMap<String, Tensor>, k: &str) -> Vec<i64> {
    g[k].to_dtype(DType::I64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn check(pe: &PromptEncoder, g: &HashMap<String, Tensor>, layout: &str) {
    for case in ["point", "box"] {
        let coords = &g[&format!("{case}.coords")];
        let l = labels(g, &format!("{case}.labels"));
        let s = pe.sparse(Some((coords, &l)), None).unwrap();
        close(&s, &g[&format!("{case}.sparse")], &format!("{layout} {case} sparse"));
    }
    // Sa2VA: one (0,0) point labelled -1 (+ the automatic padding point), then the [SEG] token.
    let s = pe
        .sparse(
            Some((&Tensor::zeros((1, 1, 2), DType::F32, &Device::Cpu).unwrap(), &[-1])),
            None,
        )
        .unwrap();
    let s = Tensor::cat(&[&s, &g["sa2va.seg_embedding"]], 1).unwrap();
    close(&s, &g["sa2va.sparse"], &format!("{layout} sa2va sparse"));
    let dense = pe.dense_pe().unwrap();
    close(
        &dense
            .narrow(2, 0, 8)
            .unwrap()
            .narrow(3, 0, 8)
            .unwrap()
            .squeeze(0)
            .unwrap(),
        &g["dense_pe.crop_tl"],
        "dense_pe top-left",
    );
    close(
        &dense
            .narrow(2, 28, 8)
            .unwrap()
            .narrow(3, 28, 8)
            .unwrap()
            .squeeze(0)
            .unwrap(),
        &g["dense_pe.crop_c"],
        "dense_pe centre",
    );
    let nm = pe.dense_no_mask(1).unwrap();
    assert_eq!(nm.dims(), &[1, 32, 64, 64]);
    close(
        &nm.narrow(2, 5, 1)
            .unwrap()
            .narrow(3, 7, 1)
            .unwrap()
            .flatten_all()
            .unwrap(),
        &g["no_mask_embed"],
        "no_mask_embed",
    );
}

#[test]
fn prompt_encoder_matches_meta_in_both_key_layouts() {
    let g = goldens();
    let st = fixture("sam2/tiny_sa2va_sam2.safetensors");
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[st], DType::F32, &Device::Cpu) }.unwrap();
    check(
        &encoder(vb.pp("grounding_encoder.sam2_model.sam_prompt_encoder")),
        &g,
        "sa2va safetensors",
    );
    let vb = VarBuilder::from_pth_with_state(fixture("sam2/tiny_sam2.pt"), DType::F32, "model", &Device::Cpu).unwrap();
    check(&encoder(vb.pp("sam_prompt_encoder")), &g, "meta .pt");
}

// ---------------------------------------------------------------------------------------------
// Full model: image encoder (Hiera + FPN + conv_s0/s1 + no_mem_embed), mask decoder, Sa2VA path.
// Tolerances (f32, weights bf16-rounded in both): preprocessing 1e-5 abs; encoder features 5e-5
// abs on crops and 1e-4 relative on per-channel sums; decoder logits 1e-4 abs on crops; IoU and
// object scores 1e-4; masks bit-equal except where |logit| < 1e-3.

use perceptio::models::sam2::{mask_from_logits, upscale_logits, PointPrompt, Preprocess, Sam2};

/// What shapes cannot tell about the tiny checkpoint (fixtures/sam2/tiny_sam2_config.json).
fn tiny_block() -> serde_json::Value {
    serde_json::json!({
        "trunk": {"num_heads": 1, "global_att_blocks": [3], "window_spec": [8, 4, 4, 2]},
        "decoder": {"num_heads": 2}
    })
}

fn maxdiff(a: &Tensor, b: &Tensor) -> f32 {
    (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

fn assert_close(a: &Tensor, b: &Tensor, tol: f32, what: &str) {
    assert_eq!(a.dims(), b.dims(), "{what}: shape");
    let d = maxdiff(a, b);
    if std::env::var("SAM2_DIFFS").is_ok() {
        eprintln!("{what}: {d:e}");
    }
    assert!(d <= tol, "{what}: max abs diff {d} > {tol}");
}

fn f64s(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Spot checks of a (C, H, W) map: two 8×8 crops and per-channel sums.
fn spot(g: &HashMap<String, Tensor>, name: &str, t: &Tensor, tol: f32) {
    let (_, h, w) = t.dims3().unwrap();
    let crop = |y: usize, x: usize, n: usize| t.narrow(1, y, n).unwrap().narrow(2, x, n).unwrap();
    let n = g[&format!("{name}.crop_tl")].dim(1).unwrap();
    assert_close(
        &crop(0, 0, n),
        &g[&format!("{name}.crop_tl")],
        tol,
        &format!("{name} top-left"),
    );
    assert_close(
        &crop(h / 2 - n / 2, w / 2 - n / 2, n),
        &g[&format!("{name}.crop_c")],
        tol,
        &format!("{name} centre"),
    );
    let t64 = t.to_dtype(DType::F64).unwrap();
    for (stat, v) in [
        ("ch_sum", t64.sum((1, 2)).unwrap()),
        ("ch_abssum", t64.abs().unwrap().sum((1, 2)).unwrap()),
        ("ch_sqsum", t64.sqr().unwrap().sum((1, 2)).unwrap()),
    ] {
        let want = f64s(&g[&format!("{name}.{stat}")]);
        let scale = f64s(&g[&format!("{name}.ch_abssum")]);
        for (c, (a, b)) in f64s(&v).iter().zip(&want).enumerate() {
            let s = if stat == "ch_sqsum" {
                b.abs().max(1e-6)
            } else {
                scale[c].max(1e-6)
            };
            assert!((a - b).abs() / s <= 1e-4, "{name}.{stat}[{c}]: {a} vs {b}");
        }
    }
}

/// Compare thresholded logits with packed golden bits, tolerating flips where |logit| is tiny.
fn assert_bits(logits: &Tensor, packed: &Tensor, what: &str) {
    let v: Vec<f32> = logits
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let p: Vec<u8> = packed.flatten_all().unwrap().to_vec1().unwrap();
    let mut flips = 0;
    for (i, x) in v.iter().enumerate() {
        let bit = (p[i / 8] >> (7 - i % 8)) & 1 == 1;
        if (*x > 0.0) != bit {
            assert!(
                x.abs() < 1e-3,
                "{what}: pixel {i} logit {x} disagrees with the reference"
            );
            flips += 1;
        }
    }
    assert!(flips <= 8, "{what}: {flips} boundary flips");
}

fn chelsea() -> image::RgbImage {
    perceptio::preprocess::load_rgb(&fixture("images/chelsea.png")).unwrap()
}

fn load_meta() -> Sam2 {
    Sam2::load(
        &fixture("sam2/tiny_sam2.pt"),
        Some(&tiny_block()),
        &Device::Cpu,
        DType::F32,
    )
    .unwrap()
}

#[test]
fn geometry_is_inferred_from_shapes_and_the_sam2_block() {
    let m = load_meta();
    let c = &m.config;
    assert_eq!(c.trunk.embed_dim, 8);
    assert_eq!(c.trunk.stages, vec![1, 1, 2, 1]);
    assert_eq!(c.trunk.window_pos_embed_bkg_spatial_size, (4, 4));
    assert_eq!(c.neck.backbone_channel_list, vec![64, 32, 16, 8]);
    assert_eq!(
        (
            c.decoder.transformer_dim,
            c.decoder.depth,
            c.decoder.mlp_dim,
            c.decoder.iou_head_hidden_dim
        ),
        (32, 2, 64, 32)
    );
    assert!(c.decoder.pred_obj_scores && c.decoder.pred_obj_scores_mlp && c.decoder.use_high_res_features);
    let windows: Vec<usize> = c.trunk.blocks().iter().map(|b| b.window).collect();
    assert_eq!(windows, vec![8, 8, 4, 0, 4], "windows lag a block, block 3 is global");
    assert_eq!(c.variant_name(), None);
    // Without the block, the unknown stage layout is refused with the field to add.
    let e = Sam2::load(&fixture("sam2/tiny_sam2.pt"), None, &Device::Cpu, DType::F32)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("trunk.num_heads") && e.contains("stages [1, 1, 2, 1]"),
        "{e}"
    );
}

#[test]
fn sam2_predictor_path_matches_meta() {
    let g = goldens();
    let m = load_meta();
    let img = chelsea();
    let px = m.preprocess(&img, Preprocess::Sam2).unwrap();
    let px0 = px.squeeze(0).unwrap();
    assert_close(
        &px0.narrow(1, 0, 32).unwrap().narrow(2, 0, 32).unwrap(),
        &g["sam2tf.image.crop_tl"],
        1e-5,
        "input top-left",
    );
    assert_close(
        &px0.narrow(1, 496, 32).unwrap().narrow(2, 496, 32).unwrap(),
        &g["sam2tf.image.crop_c"],
        1e-5,
        "input centre",
    );
    let f = m.encode(&px).unwrap();
    let (f0, f1) = f.high_res.as_ref().unwrap();
    spot(&g, "sam2tf.high_res_feat0", &f0.squeeze(0).unwrap(), 5e-5);
    spot(&g, "sam2tf.high_res_feat1", &f1.squeeze(0).unwrap(), 5e-5);
    spot(&g, "sam2tf.image_embed", &f.image_embed.squeeze(0).unwrap(), 5e-5);

    let (w, h) = (img.width(), img.height());
    let prompts = [
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
    ];
    for (name, p) in prompts {
        for (mode, multi) in [("multi", true), ("single", false)] {
            let k = format!("{name}.{mode}");
            let out = m.predict(&f, &p, (w, h), multi).unwrap();
            assert_close(&out.iou, &g[&format!("{k}.iou")], 1e-4, &format!("{k} iou"));
            assert_close(
                &out.object_score,
                &g[&format!("{k}.obj_score")],
                1e-4,
                &format!("{k} obj score"),
            );
            assert_close(
                &out.sam_tokens,
                &g[&format!("{k}.tokens")],
                5e-5,
                &format!("{k} tokens"),
            );
            let low = out.low_res_masks.squeeze(0).unwrap();
            assert_close(
                &low.narrow(1, 112, 32).unwrap().narrow(2, 112, 32).unwrap(),
                &g[&format!("{k}.low_res_masks.crop_c")],
                1e-4,
                &k,
            );
            assert_close(
                &low.narrow(1, 0, 16).unwrap().narrow(2, 0, 16).unwrap(),
                &g[&format!("{k}.low_res_masks.crop_tl")],
                1e-4,
                &k,
            );
            assert_bits(&low, &g[&format!("{k}.low_res_masks.bits_gt0")], &k);
        }
    }
}

/// Sa2VA's `[SEG]` path on chelsea.png against goldens under the `sa2va.` keys: the input, the
/// image embedding, IoU / object score / best candidate, the 256→1024 upscale and the final mask
/// bits. Returns the prediction, the final logits and the features for test-specific checks.
fn check_sa2va_seg(
    m: &Sam2,
    g: &HashMap<String, Tensor>,
    what: &str,
) -> (
    perceptio::models::sam2::SegPrediction,
    Tensor,
    std::sync::Arc<perceptio::models::sam2::ImageFeatures>,
) {
    let img = chelsea();
    let px = m.preprocess(&img, Preprocess::Sa2va).unwrap().squeeze(0).unwrap();
    let crop = |t: &Tensor, n: usize| t.narrow(1, 0, n).unwrap().narrow(2, 0, n).unwrap();
    assert_close(
        &crop(&px, 32),
        &g["sa2va.image.crop_tl"],
        1e-5,
        &format!("{what}: sa2va input"),
    );
    let (f, hit) = m.features(&img, Preprocess::Sa2va).unwrap();
    assert!(!hit);
    spot(g, "sa2va.image_embed", &f.image_embed.squeeze(0).unwrap(), 5e-5);
    let p = m.predict_seg(&f, &g["sa2va.seg_embedding"]).unwrap();
    let iou = Tensor::new(p.iou.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    assert_close(&iou, &g["sa2va.iou"], 1e-4, &format!("{what}: iou"));
    let obj = g["sa2va.obj_score"].flatten_all().unwrap().to_vec1::<f32>().unwrap()[0];
    assert!(
        (p.object_score - obj).abs() < 1e-4,
        "{what}: obj score {} vs {obj}",
        p.object_score
    );
    assert_eq!(
        p.best as i64,
        g["sa2va.best_idx"].to_vec1::<i64>().unwrap()[0],
        "{what}: best candidate"
    );
    let hi = upscale_logits(&p.low_res, (1024, 1024), None)
        .unwrap()
        .squeeze(0)
        .unwrap();
    assert_close(
        &crop(&hi, 32),
        &g["sa2va.high_res.crop_tl"],
        1e-4,
        &format!("{what}: 256→1024"),
    );
    let fin = upscale_logits(&p.low_res, (img.height(), img.width()), Some(1024)).unwrap();
    assert_bits(&fin, &g["sa2va.final_mask_bits"], &format!("{what}: final mask"));
    (p, fin, f)
}

#[test]
fn sa2va_seg_path_matches_the_reference() {
    let g = goldens();
    let st = fixture("sam2/tiny_sa2va_sam2.safetensors");
    let m = Sam2::load(&st, Some(&tiny_block()), &Device::Cpu, DType::F32).unwrap();
    let (p, fin, _) = check_sa2va_seg(&m, &g, "sa2va");
    assert_close(
        &p.low_res,
        &g["sa2va.chosen_low_res"],
        1e-4,
        "sa2va chosen low-res logits",
    );
    let mask = mask_from_logits(&fin).unwrap();
    assert!(mask.area() > 0);
    // Same image again: the features come from the cache.
    let (_, hit) = m.features(&chelsea(), Preprocess::Sa2va).unwrap();
    assert!(hit);
    assert_eq!(m.cached_images(), 1);
}

/// The same tiny weights with windows that need padding (64→70, 128→132, pooled 66 and 35,
/// cropped back), goldens from tools/gen_sam2_window_goldens.py.
#[test]
fn padded_windows_match_meta() {
    let g = candle_core::safetensors::load(fixture("sam2/goldens_windows.safetensors"), &Device::Cpu).unwrap();
    let block = serde_json::json!({"trunk": {"num_heads": 1, "global_att_blocks": [], "window_spec": [8, 6, 14, 7]}, "decoder": {"num_heads": 2}});
    let m = Sam2::load(&fixture("sam2/tiny_sam2.pt"), Some(&block), &Device::Cpu, DType::F32).unwrap();
    let windows: Vec<usize> = m.config.trunk.blocks().iter().map(|b| b.window).collect();
    assert_eq!(windows, vec![8, 8, 6, 14, 14]);
    let img = chelsea();
    let f = m.encode(&m.preprocess(&img, Preprocess::Sam2).unwrap()).unwrap();
    spot(&g, "win.image_embed", &f.image_embed.squeeze(0).unwrap(), 5e-5);
    let e = f.image_embed.squeeze(0).unwrap();
    assert_close(
        &e.narrow(1, 56, 8).unwrap().narrow(2, 56, 8).unwrap(),
        &g["win.image_embed.crop_br"],
        5e-5,
        "bottom-right (padded windows)",
    );
    let p = PointPrompt {
        points: vec![(225.0, 150.0, 1)],
        bbox: None,
    };
    let out = m.predict(&f, &p, (img.width(), img.height()), true).unwrap();
    assert_close(&out.iou, &g["win.point.multi.iou"], 1e-4, "iou");
    assert_close(
        &out.low_res_masks
            .squeeze(0)
            .unwrap()
            .narrow(1, 112, 32)
            .unwrap()
            .narrow(2, 112, 32)
            .unwrap(),
        &g["win.point.multi.low_res_masks.crop_c"],
        1e-4,
        "logits",
    );
}

/// A Sa2VA-layout checkpoint (`grounding_encoder.sam2_model.*`) whose trunk has hiera-L's stage
/// depths [2, 6, 36, 4] but embed_dim 4, loaded with no `sam2` block: heads, windows and global
/// blocks must come from hiera-L, picked by the depths alone. Goldens from
/// tools/gen_sam2_hiera_l_depths.py (Meta's sam2 1.1.0, `sam2_hiera_l.yaml`, seed 25).
#[test]
fn sa2va_hiera_l_depths_use_hiera_l_settings() {
    let g = candle_core::safetensors::load(fixture("sam2/goldens_hiera_l_depths.safetensors"), &Device::Cpu).unwrap();
    let m = Sam2::load(
        &fixture("sam2/tiny_sa2va_hiera_l_depths.safetensors"),
        None,
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    let t = &m.config.trunk;
    assert_eq!(t.stages, vec![2, 6, 36, 4]);
    assert_eq!(t.embed_dim, 4);
    assert_eq!(t.num_heads, 2);
    assert_eq!(t.global_att_blocks, vec![23, 33, 43]);
    assert_eq!(t.window_spec, vec![8, 4, 16, 8]);
    assert_eq!(t.window_pos_embed_bkg_spatial_size, (7, 7));
    assert_eq!((t.q_pool, t.dim_mul, t.head_mul, t.mlp_ratio), (3, 2.0, 2.0, 4.0));
    assert_eq!(m.config.variant_name(), Some("hiera_l"));
    assert_eq!(m.config.neck.backbone_channel_list, vec![32, 16, 8, 4]);
    // No block: the decoder gets the 8 heads SAM2Base hardcodes (the generator built it with 8).
    assert_eq!(
        (
            m.config.decoder.transformer_dim,
            m.config.decoder.depth,
            m.config.decoder.num_heads
        ),
        (32, 2, 8)
    );
    // Per-block geometry of Meta's Hiera for these settings (windows lag a block).
    let blocks = t.blocks();
    assert_eq!(blocks.len(), 48);
    let windows: Vec<usize> = blocks.iter().map(|b| b.window).collect();
    let want: Vec<usize> = (0..48)
        .map(|i| match i {
            0..=2 => 8,
            3..=8 => 4,
            23 | 33 | 43 => 0,
            9..=44 => 16,
            _ => 8,
        })
        .collect();
    assert_eq!(windows, want);
    let heads: Vec<usize> = blocks.iter().map(|b| b.heads).collect();
    let want: Vec<usize> = (0..48)
        .map(|i| match i {
            0..=1 => 2,
            2..=7 => 4,
            8..=43 => 8,
            _ => 16,
        })
        .collect();
    assert_eq!(heads, want);
    let pooled: Vec<usize> = (0..48).filter(|&i| blocks[i].q_pool).collect();
    assert_eq!(pooled, vec![2, 8, 44]);

    // The Sa2VA [SEG] path, as in sa2va_seg_path_matches_the_reference.
    let (p, fin, f) = check_sa2va_seg(&m, &g, "hiera-L depths");
    let (f0, f1) = f.high_res.as_ref().unwrap();
    spot(&g, "sa2va.high_res_feat0", &f0.squeeze(0).unwrap(), 5e-5);
    spot(&g, "sa2va.high_res_feat1", &f1.squeeze(0).unwrap(), 5e-5);
    // The chosen (ungated) low-res logits: two crops and the packed signs.
    let low = p.low_res.squeeze(0).unwrap();
    assert_close(
        &low.narrow(1, 112, 32).unwrap().narrow(2, 112, 32).unwrap(),
        &g["sa2va.chosen_low_res.crop_c"],
        1e-4,
        "hiera-L depths: chosen centre",
    );
    assert_close(
        &low.narrow(1, 0, 16).unwrap().narrow(2, 0, 16).unwrap(),
        &g["sa2va.chosen_low_res.crop_tl"],
        1e-4,
        "hiera-L depths: chosen top-left",
    );
    assert_bits(
        &low,
        &g["sa2va.chosen_low_res.bits_gt0"],
        "hiera-L depths: chosen low-res",
    );
    let mask = mask_from_logits(&fin).unwrap();
    let set: u64 = g["sa2va.final_mask_bits"]
        .to_vec1::<u8>()
        .unwrap()
        .iter()
        .map(|b| b.count_ones() as u64)
        .sum();
    assert!(
        mask.area().abs_diff(set) <= 8,
        "hiera-L depths: mask area {} vs {set}",
        mask.area()
    );
    let (_, hit) = m.features(&chelsea(), Preprocess::Sa2va).unwrap();
    assert!(hit);
    assert_eq!(m.cached_images(), 1);
}
