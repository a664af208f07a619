//! Depth VQ-VAE parity with AiT's own `VQVAE` class on a tiny random checkpoint in AURORA's
//! real key layout (fixtures/depth, made by tools/gen_vqvae_goldens.py), AURORA's depth-map
//! preprocessing on the Middlebury motorcycle disparity, and the depth-map writers.

mod common;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use common::fixture;
use perceptio::depthmap::{DepthMap, DepthScale};
use perceptio::models::vqvae::{self, preprocess, Config, VqVae};
use perceptio::preprocess::load_depth_image;
use perceptio::render::depth as io;
use sha2::{Digest, Sha256};
use std::collections::HashMap;

fn goldens() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture("depth/goldens.safetensors"), &Device::Cpu).unwrap()
}

fn meta() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(fixture("depth/goldens.json")).unwrap()).unwrap()
}

fn tiny_config() -> Config {
    // The reference's own config dict (`residul_type`, extra keys such as `loss_type`) parses.
    serde_json::from_value(meta()["tiny_config"].clone()).unwrap()
}

fn tiny() -> VqVae {
    vqvae::load(
        &fixture("depth/tiny_vqvae.pt"),
        &tiny_config(),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap()
}

fn max_abs(a: &Tensor, b: &Tensor, what: &str) -> f32 {
    assert_eq!(a.dims(), b.dims(), "{what}: shape");
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

fn close(a: &Tensor, b: &Tensor, tol: f32, what: &str) {
    let d = max_abs(a, b, what);
    eprintln!("{what}: max abs diff {d:e}");
    assert!(d <= tol, "{what}: max abs diff {d}");
}

fn codes(t: &Tensor) -> Vec<u32> {
    t.to_dtype(DType::U32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn sha(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn config_defaults_are_auroras_and_keys_match_the_reference() {
    let m = meta();
    let aurora: Config = serde_json::from_value(m["aurora_config"].clone()).unwrap();
    assert_eq!(aurora, Config::default());
    assert_eq!(aurora.grid(), (10, 10));
    for (cfg, key) in [(aurora, "keys_aurora"), (tiny_config(), "keys_tiny")] {
        let want: Vec<(String, Vec<usize>)> = m[key]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| {
                (
                    k.strip_prefix("module.").unwrap().to_string(),
                    serde_json::from_value(v.clone()).unwrap(),
                )
            })
            .collect();
        let mut got = cfg.state_dict_shapes();
        let mut want = want;
        got.sort();
        want.sort();
        assert_eq!(got, want, "{key}");
    }
}

#[test]
fn encoder_codes_and_decoder_match_ait() {
    let g = goldens();
    let vq = tiny();
    for case in ["syn", "real"] {
        let x = &g[&format!("{case}.input")];
        let lat = vq.encode_latents(x).unwrap();
        close(&lat, &g[&format!("{case}.latents")], 1e-4, &format!("{case} latents"));
        let c = vq.encode(x).unwrap();
        assert_eq!(c.dtype(), DType::U32);
        assert_eq!(codes(&c), codes(&g[&format!("{case}.codes")]), "{case} codes");
        let dec = vq.decode(&c).unwrap();
        close(&dec, &g[&format!("{case}.decoded")], 1e-4, &format!("{case} decoded"));
    }
    // The synthetic map is 64×96: a 2×3 grid, row-major as the reference flattens it.
    assert_eq!(vq.encode(&g["syn.input"]).unwrap().dims(), &[1, 2, 3]);
    let m = meta();
    let flat: Vec<u32> = serde_json::from_value(m["real_codes_flat"].clone()).unwrap();
    assert_eq!(codes(&vq.encode(&g["real.input"]).unwrap()), flat);
}

#[test]
fn soft_merge_decode_matches_ait() {
    let g = goldens();
    let vq = tiny();
    let tau = meta()["tau"].as_f64().unwrap();
    let e = vq.soft_embeddings(&g["syn.soft_logits"], tau).unwrap();
    let out = vq.decode_embeddings(&e).unwrap();
    close(&out, &g["syn.soft_decoded"], 1e-4, "syn soft-merge decode");
}

#[test]
fn aurora_preprocessing_of_the_middlebury_map_is_exact() {
    let g = goldens();
    let m = meta();
    let map = load_depth_image(&fixture("depth/motorcycle_disp_80x120.png")).unwrap();
    assert_eq!((map.width, map.height), (120, 80));
    assert_eq!(map.scale, DepthScale::Float);
    let u8map = preprocess::to_gray8(&map).unwrap();
    assert_eq!(
        sha(&u8map),
        m["real_map"]["u8_sha256"].as_str().unwrap(),
        "Depth Anything min-max to 8 bits"
    );
    let r96 = preprocess::resize_nearest(&u8map, 120, 80, 96, 96);
    assert_eq!(
        sha(&r96),
        m["real_map"]["resized_sha256"].as_str().unwrap(),
        "Pillow NEAREST to 96²"
    );
    let r320 = preprocess::resize_nearest(&u8map, 120, 80, 320, 320);
    assert_eq!(
        sha(&r320),
        m["real_map"]["resized320_sha256"].as_str().unwrap(),
        "Pillow NEAREST to 320²"
    );
    let x = preprocess::normalize_depth(&map, 96, &Device::Cpu).unwrap();
    assert_eq!(
        max_abs(&x, &g["real.input"], "input"),
        0.0,
        "ToTensor + Normalize must be bit-exact"
    );
    let x320 = preprocess::normalize_depth(&map, 320, &Device::Cpu).unwrap();
    let s: f64 = x320
        .to_dtype(DType::F64)
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!((s - m["real_map"]["x320_sum"].as_f64().unwrap()).abs() < 1e-6);
}

#[test]
fn encode_decode_round_trip_on_the_real_map() {
    let g = goldens();
    let vq = tiny();
    let x = &g["real.input"];
    let y = vq.decode(&vq.encode(x).unwrap()).unwrap();
    let rmse: f32 = (&y - x)
        .unwrap()
        .sqr()
        .unwrap()
        .mean_all()
        .unwrap()
        .sqrt()
        .unwrap()
        .to_scalar()
        .unwrap();
    let want = meta()["real_roundtrip_rmse_normalised"].as_f64().unwrap() as f32;
    eprintln!("round trip RMSE (normalised space, random weights): {rmse} (AiT {want})");
    assert!((rmse - want).abs() < 1e-5, "{rmse} vs {want}");
    let unit = preprocess::denormalize(&y).unwrap();
    let (lo, hi): (f32, f32) = (
        unit.min_all().unwrap().to_scalar().unwrap(),
        unit.max_all().unwrap().to_scalar().unwrap(),
    );
    assert!((0.0..=1.0).contains(&lo) && (0.0..=1.0).contains(&hi));
}

#[test]
fn safetensors_and_bare_state_dicts_load_too() {
    let g = goldens();
    let cfg = tiny_config();
    let tensors = candle_core::pickle::read_all_with_key(fixture("depth/tiny_vqvae.pt"), Some("weights")).unwrap();
    assert!(
        tensors.iter().all(|(k, _)| k.starts_with("module.")),
        "AiT saves the DDP wrapper's state_dict"
    );
    let dir = tempfile::tempdir().unwrap();
    // Without the prefix and without the EMA statistics (they are training state).
    let plain: HashMap<String, Tensor> = tensors
        .into_iter()
        .filter(|(k, _)| !k.contains("_ema_"))
        .map(|(k, v)| (k.trim_start_matches("module.").to_string(), v))
        .collect();
    let st = dir.path().join("vq.safetensors");
    candle_core::safetensors::save(&plain, &st).unwrap();
    let vq = vqvae::load(&st, &cfg, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(codes(&vq.encode(&g["real.input"]).unwrap()), codes(&g["real.codes"]));
    // Non-EMA quantiser layout (`_vq_vae._embedding.weight`) is accepted as well.
    let mut emb = plain.clone();
    let cb = emb.remove("_vq_vae._embedding").unwrap();
    emb.insert("_vq_vae._embedding.weight".into(), cb);
    let vq = VqVae::new(&cfg, VarBuilder::from_tensors(emb, DType::F32, &Device::Cpu)).unwrap();
    assert_eq!(codes(&vq.encode(&g["syn.input"]).unwrap()), codes(&g["syn.codes"]));
}

#[test]
fn bad_checkpoints_and_configs_are_clear_errors() {
    let wrong = Config {
        codebook_dim: 16,
        ..tiny_config()
    };
    let e = vqvae::load(&fixture("depth/tiny_vqvae.pt"), &wrong, DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("tiny_vqvae.pt") && e.contains("depth VQ-VAE"), "{e}");
    let e = vqvae::load(&fixture("depth/nope.pt"), &tiny_config(), DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope.pt"), "{e}");
    let e = vqvae::load(&fixture("depth/goldens.json"), &tiny_config(), DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("goldens.json"), "{e}");
    let odd = Config {
        downsample_ratio: 24,
        ..Config::default()
    };
    assert!(odd.validate().unwrap_err().to_string().contains("power of two"));
    let vq = tiny();
    let big = Tensor::from_vec(vec![16u32], (1, 1, 1), &Device::Cpu).unwrap();
    assert!(vq.decode(&big).unwrap_err().to_string().contains("out of range"));
    let flat = DepthMap::new(2, 1, vec![f32::NAN, f32::INFINITY], DepthScale::Float);
    assert!(preprocess::normalize_depth(&flat, 8, &Device::Cpu).is_err());
    let short = DepthMap::new(3, 3, vec![0.0; 4], DepthScale::Gray8);
    assert!(preprocess::normalize_depth(&short, 8, &Device::Cpu).is_err());
}

#[test]
fn real_aurora_size_runs_the_same_path() {
    // Zero weights at AURORA's size: 320² → 10×10 codes; every distance ties, so code 0 wins
    // (torch.argmin's first index); decode gives 320² back.
    let cfg = Config::default();
    let vq = VqVae::new(&cfg, VarBuilder::zeros(DType::F32, &Device::Cpu)).unwrap();
    let map = load_depth_image(&fixture("depth/motorcycle_disp_80x120.png")).unwrap();
    let x = preprocess::normalize_depth(&map, cfg.image_size, &Device::Cpu).unwrap();
    let c = vq.encode(&x).unwrap();
    assert_eq!(c.dims(), &[1, 10, 10]);
    assert!(codes(&c).iter().all(|&k| k == 0));
    assert_eq!(vq.decode(&c).unwrap().dims(), &[1, 1, 320, 320]);
}

#[test]
fn depth_writers_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let (w, h) = (7, 3);
    let data: Vec<f32> = (0..w * h).map(|i| i as f32 / (w * h - 1) as f32).collect();
    // 16-bit PNG: read back with the same loader, and by the image crate as Luma16.
    let p = dir.path().join("d.png");
    io::write_png16(&p, &data, w, h).unwrap();
    let img = image::open(&p).unwrap();
    assert_eq!(img.color(), image::ColorType::L16);
    let raw = img.into_luma16().into_raw();
    assert_eq!(
        raw.iter().map(|&v| v as u32).collect::<Vec<_>>(),
        data.iter().map(|&v| (v * 65535.0).round() as u32).collect::<Vec<_>>()
    );
    assert_eq!((raw[0], raw[w * h - 1]), (0, 65535));
    match load_depth_image(&p).unwrap() {
        DepthMap {
            width,
            height,
            data: back,
            scale: DepthScale::Float,
        } => {
            assert_eq!((width, height), (w, h));
            assert!(back
                .iter()
                .zip(&data)
                .all(|(a, b)| (a - b).abs() <= 0.5 / 65535.0 + 1e-7));
        }
        other => panic!("{other:?}"),
    }
    // Turbo: blue for far (0.1), dark red for near (1).
    let t = dir.path().join("t.png");
    io::write_turbo_png(&t, &data, w, h).unwrap();
    let rgb = image::open(&t).unwrap().into_rgb8();
    let (far, near) = (rgb.get_pixel(2, 0).0, rgb.get_pixel(w as u32 - 1, h as u32 - 1).0);
    assert!(far[2] > far[0] && near[0] > near[2], "{far:?} {near:?}");
    assert_eq!(io::turbo(f32::NAN), io::turbo(0.0));
    // .npy: header as numpy writes it, then little-endian f32 data.
    let n = dir.path().join("d.npy");
    io::write_npy(&n, &data, w, h).unwrap();
    let bytes = std::fs::read(&n).unwrap();
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
    let hl = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    assert_eq!((10 + hl) % 64, 0);
    let header = std::str::from_utf8(&bytes[10..10 + hl]).unwrap();
    assert!(
        header.contains("'shape': (3, 7)") && header.contains("'<f4'") && header.ends_with('\n'),
        "{header}"
    );
    let vals: Vec<f32> = bytes[10 + hl..]
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(vals, data);
    // Bad shapes are errors, not panics.
    assert!(io::png16(&data, 5, 5).is_err() && io::npy_f32(&data, 0, 21).is_err());
}
