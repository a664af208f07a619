//! Depth Anything V2 parity with transformers 5.24 (`DepthAnythingForDepthEstimation` +
//! `DPTImageProcessor`, torchvision backend) on a tiny random checkpoint in the hub layout
//! (fixtures/depth_anything, made by tools/gen_depth_anything_goldens.py).
//!
//! Tolerances (f32 compute from bf16-rounded weights on both sides): the uint8 resize is
//! bit-exact (sha256); pixel values, feature-map tokens and depth crops within 1e-4 absolute;
//! row/column/token sums within 1e-4 × the number of summed values.

mod common;
use candle_core::{DType, Device, Tensor};
use common::fixture;
use perceptio::models::depth_anything::{preprocess, DepthAnything, PreprocessorConfig};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;

const TOL: f32 = 1e-4;

fn goldens() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture("depth_anything/goldens.safetensors"), &Device::Cpu).unwrap()
}

fn meta() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(fixture("depth_anything/goldens.json")).unwrap()).unwrap()
}

fn maxdiff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
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

/// Crops (tl/c/br, 6×6 over the last two dims) and, when present, row and column sums, after
/// dividing both sides by `unit` (metric depth is compared as depth / max_depth).
fn check_scaled(x: &Tensor, g: &HashMap<String, Tensor>, key: &str, unit: f64, worst: &mut f32) {
    let x = &(x / unit).unwrap();
    let g: HashMap<String, Tensor> = g
        .iter()
        .filter(|(k, _)| k.starts_with(key))
        .map(|(k, v)| (k.clone(), (v / unit).unwrap()))
        .collect();
    let g = &g;
    let r = x.rank();
    let (h, w) = (x.dim(r - 2).unwrap(), x.dim(r - 1).unwrap());
    let k = 6;
    for (name, y, xx) in [("tl", 0, 0), ("c", h / 2 - k / 2, w / 2 - k / 2), ("br", h - k, w - k)] {
        let crop = x.narrow(r - 2, y, k).unwrap().narrow(r - 1, xx, k).unwrap();
        let d = maxdiff(&crop, &g[&format!("{key}.{name}")]);
        assert!(d <= TOL, "{key}.{name}: max abs diff {d}");
        eprintln!("{key}.{name}: max abs diff {d:e}");
        *worst = worst.max(d);
    }
    let rows = if r == 3 {
        x.sum(0).unwrap().sum(1).unwrap()
    } else {
        x.sum(1).unwrap()
    };
    let d = maxdiff(&rows, &g[&format!("{key}.row_sums")]);
    eprintln!("{key}: row sums max abs diff {d:e}");
    assert!(
        d <= TOL * w as f32 * if r == 3 { 3.0 } else { 1.0 },
        "{key}.row_sums: max abs diff {d}"
    );
    if let Some(cols) = g.get(&format!("{key}.col_sums")) {
        let d = maxdiff(&x.sum(0).unwrap(), cols);
        assert!(d <= TOL * h as f32, "{key}.col_sums: max abs diff {d}");
    }
}

fn check_map(x: &Tensor, g: &HashMap<String, Tensor>, key: &str, worst: &mut f32) {
    check_scaled(x, g, key, 1.0, worst)
}

fn image(name: &str) -> image::RgbImage {
    perceptio::preprocess::image_io::load_rgb(&fixture(&format!("images/{name}.png"))).unwrap()
}

fn model() -> DepthAnything {
    DepthAnything::load(&fixture("depth_anything/tiny"), &Device::Cpu, DType::F32).unwrap()
}

#[test]
fn preprocessing_matches_the_torchvision_processor() {
    let g = goldens();
    let m = meta();
    let model = model();
    for name in ["chelsea", "coffee_portrait"] {
        let img = image(name);
        let (w, h) = (img.width() as usize, img.height() as usize);
        for (tag, p) in [
            (name.to_string(), model.preprocessor().clone()),
            (
                format!("{name}.s98"),
                PreprocessorConfig {
                    size: preprocess::Size { height: 98, width: 98 },
                    ..model.preprocessor().clone()
                },
            ),
        ] {
            let (nw, nh) = p.input_size(w, h);
            let shape: Vec<usize> = serde_json::from_value(m[format!("{tag}.pixel_values_shape")].clone()).unwrap();
            assert_eq!(shape, vec![1, 3, nh, nw], "{tag}: input size");
            let resized = preprocess::resize_u8_bicubic_aa(img.as_raw(), w, h, nw, nh);
            let sha = format!("{:x}", Sha256::digest(&resized));
            assert_eq!(
                sha,
                m[format!("{tag}.resized_sha256")].as_str().unwrap(),
                "{tag}: uint8 resize differs from torchvision"
            );
            let px = p.pixel_values(&img, &Device::Cpu).unwrap();
            let mut worst = 0f32;
            check_map(&px.squeeze(0).unwrap(), &g, &format!("{tag}.pixel_values"), &mut worst);
        }
    }
    assert_eq!(model.input_size(451, 300), (518, 350));
}

#[test]
fn tiny_model_matches_transformers() {
    let g = goldens();
    let model = model();
    let mut worst = 0f32;
    for name in ["chelsea", "coffee_portrait"] {
        let img = image(name);
        let px = model.pixel_values(&img).unwrap();
        for (i, f) in model.feature_maps(&px).unwrap().iter().enumerate() {
            let f = f.squeeze(0).unwrap();
            let d = maxdiff(
                &f.narrow(0, 0, 5).unwrap(),
                &g[&format!("{name}.feature_map{i}.first_tokens")],
            );
            eprintln!("{name}.feature_map{i}: first tokens max abs diff {d:e}");
            assert!(d <= TOL, "{name} feature map {i}: first tokens max abs diff {d}");
            worst = worst.max(d);
            let d = maxdiff(&f.sum(1).unwrap(), &g[&format!("{name}.feature_map{i}.token_sums")]);
            assert!(
                d <= TOL * f.dim(1).unwrap() as f32,
                "{name} feature map {i}: token sums max abs diff {d}"
            );
        }
        let pred = model.forward(&px).unwrap().squeeze(0).unwrap();
        check_map(&pred, &g, &format!("{name}.predicted_depth"), &mut worst);
        let depth = model.predict_depth(&img).unwrap();
        assert_eq!(
            (depth.width, depth.height),
            (img.width() as usize, img.height() as usize)
        );
        let post = Tensor::from_vec(depth.data, (depth.height, depth.width), &Device::Cpu).unwrap();
        check_map(&post, &g, &format!("{name}.post"), &mut worst);
    }
    eprintln!("worst crop/token abs diff: {worst:e}");
}

/// A copy of the tiny checkpoint with `edit` applied to its config.json.
fn edited_checkpoint(edit: impl FnOnce(&mut serde_json::Value)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("depth_anything/tiny");
    for f in ["model.safetensors", "preprocessor_config.json"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(src.join("config.json")).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(dir.path().join("config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
    dir
}

#[test]
fn metric_head_is_sigmoid_times_max_depth() {
    let g = goldens();
    let dir = edited_checkpoint(|c| {
        c["depth_estimation_type"] = "metric".into();
        c["max_depth"] = 20.into();
    });
    let model = DepthAnything::load(dir.path(), &Device::Cpu, DType::F32).unwrap();
    let px = model.pixel_values(&image("chelsea")).unwrap();
    let pred = model.forward(&px).unwrap().squeeze(0).unwrap();
    let mut worst = 0f32;
    check_scaled(&pred, &g, "metric.predicted_depth", 20.0, &mut worst);
}

fn load_err(dir: &Path) -> String {
    match DepthAnything::load(dir, &Device::Cpu, DType::F32) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn config_weight_mismatches_name_the_key() {
    // a wider fusion stage than the weights: the first tensor read with the wrong shape is named
    let dir = edited_checkpoint(|c| c["fusion_hidden_size"] = 12.into());
    let e = load_err(dir.path());
    assert!(
        e.contains("weights do not match the config")
            && e.contains("neck.convs.0.weight")
            && e.contains("[12, 8, 3, 3]"),
        "{e}"
    );
    // more layers than the checkpoint has
    let dir = edited_checkpoint(|c| {
        c["backbone_config"]["num_hidden_layers"] = 6.into();
        c["backbone_config"]["out_indices"] = serde_json::json!([1, 3, 4, 6]);
        c["backbone_config"]["out_features"] = serde_json::json!(["stage1", "stage3", "stage4", "stage6"]);
    });
    let e = load_err(dir.path());
    assert!(e.contains("backbone.encoder.layer.5."), "{e}");
    // a config transformers itself refuses
    let dir = edited_checkpoint(|c| c["depth_estimation_type"] = "absolute".into());
    let e = load_err(dir.path());
    assert!(e.contains("config.json") && e.contains("depth_estimation_type"), "{e}");
    let dir = edited_checkpoint(|c| c["neck_hidden_sizes"] = serde_json::json!([8, 16, 24]));
    let e = load_err(dir.path());
    assert!(e.contains("neck_hidden_sizes"), "{e}");
}

#[test]
fn degenerate_inputs_are_errors_not_panics() {
    let model = model();
    // 5000×2 resizes to 518×0 under keep_aspect_ratio + multiple of 14
    let img = image::RgbImage::new(5000, 2);
    assert!(model.predict_depth(&img).is_err());
    let px = Tensor::zeros((1, 3, 10, 10), DType::F32, &Device::Cpu).unwrap();
    assert!(model.forward(&px).is_err());
    let px = Tensor::zeros((1, 1, 28, 28), DType::F32, &Device::Cpu).unwrap();
    assert!(model.forward(&px).is_err());
    // non-multiple-of-14 input: the reference floors the patch grid; so does the port
    let px = Tensor::zeros((1, 3, 30, 45), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(model.forward(&px).unwrap().dims(), &[1, 28, 42]);
}
