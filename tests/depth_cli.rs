//! `perceptio depth` and the spatial chain of `ask` on a tiny random Perceptio-layout checkpoint
//! (the tiny Sa2VA of fixtures/sa2va + depth tokens + the tiny VQ-VAE of fixtures/depth), and the
//! Depth Anything V2 teacher path on the tiny teacher of fixtures/depth_anything.

mod common;
#[path = "common/sa2va.rs"]
mod sa2va;
use candle_core::{DType, Device};
use common::{assert_fails, fixture, run, stderr, stdout};
use perceptio::models::checkpoint::Checkpoint;
use perceptio::models::generate::GenerateOptions;
use perceptio::models::perceptio::{Grounder, LoadOptions, RespondOptions};
use std::path::Path;

fn perceptio_model(dir: &Path) {
    sa2va::assemble(dir);
    sa2va::add_depth_tokens(dir);
}

#[test]
fn constrained_decoding_always_yields_a_full_block() {
    let dir = tempfile::tempdir().unwrap();
    perceptio_model(dir.path());
    let mut g = Grounder::load(
        &Checkpoint::open(dir.path(), DType::F32, &Device::Cpu).unwrap(),
        &LoadOptions::default(),
    )
    .unwrap();
    assert!(g.depth.is_some() && g.sam2.is_some());
    for file in ["images/chelsea.png", "images/coffee_portrait.png"] {
        let img = perceptio::preprocess::load_rgb(&fixture(file)).unwrap();
        let vision = g.vision(&img, 2).unwrap();
        for (temperature, seed) in [(0.0, 0), (1.5, 1), (1.5, 2), (3.0, 3)] {
            let o = RespondOptions {
                generation: GenerateOptions {
                    max_new_tokens: 16,
                    temperature,
                    seed,
                    top_p: None,
                    stop_ids: vec![],
                    stop_text: None,
                },
                constrain: true,
                force_depth: true,
            };
            let r = g
                .respond(
                    &img,
                    &vision,
                    "<image>\nWhat is the depth map for the image?",
                    &o,
                    |_| {},
                )
                .unwrap();
            let d = r.depth.expect("a block");
            let b = d.block.expect("well-formed");
            assert_eq!(b.codes.len(), 9);
            assert!(b.codes.iter().all(|&c| c < 16));
            let m = d.map.unwrap();
            assert_eq!((m.width, m.height), (img.width() as usize, img.height() as usize));
            assert!(m.data.iter().all(|v| (0.0..=1.0).contains(v)));
            assert!(
                r.text_with_spatial_tokens.starts_with("<DEPTH_START>"),
                "{}",
                r.text_with_spatial_tokens
            );
            assert!(!r.answer.contains("<DEPTH_"), "{}", r.answer);
        }
    }
}

#[test]
fn depth_cli_from_model_tokens() {
    let dir = tempfile::tempdir().unwrap();
    perceptio_model(dir.path());
    let out = tempfile::tempdir().unwrap();
    let o = |f: &str| out.path().join(f).to_str().unwrap().to_string();
    let img = fixture("images/chelsea.png");
    let m = dir.path().to_str().unwrap();
    let r = run(
        &[
            "depth",
            img.to_str().unwrap(),
            "--model",
            m,
            "--force-depth",
            "--max-tiles",
            "2",
            "--max-new-tokens",
            "12",
            "-o",
            &o("d.png"),
            "--colormap",
            &o("c.png"),
            "--npy",
            &o("d.npy"),
            "--json",
        ],
        None,
    );
    assert!(r.status.success(), "{}", stderr(&r));
    let v: serde_json::Value = serde_json::from_str(stdout(&r).trim()).unwrap();
    assert_eq!(v["grid"], serde_json::json!([3, 3]));
    assert_eq!(v["tokens"].as_array().unwrap().len(), 9);
    assert!(v["text_with_spatial_tokens"].as_str().unwrap().contains("<DEPTH_END>"));
    // The generated ids (the forced start marker is prompt, not among them: 9 codes + the end
    // marker first) and the per-stage split tools/bench_e2e.sh compares with PyTorch.
    let ids = v["token_ids"].as_array().unwrap();
    assert!(ids.len() >= 10 && ids.len() <= 12, "{ids:?}");
    assert_eq!(v["tokens_generated"].as_u64(), Some(ids.len() as u64));
    assert!(v["prompt_tokens"].as_u64().unwrap() > 0);
    for k in [
        "vision_s",
        "llm_s",
        "prefill_s",
        "decode_s",
        "decode_tok_per_s",
        "vqvae_s",
    ] {
        assert!(v["timings"][k].as_f64().is_some_and(|x| x > 0.0), "timings.{k}: {v}");
    }
    let png = image::open(o("d.png")).unwrap();
    assert!(matches!(png, image::DynamicImage::ImageLuma16(_)), "16-bit grayscale");
    assert_eq!((png.width(), png.height()), (451, 300));
    assert_eq!(image::open(o("c.png")).unwrap().to_rgb8().dimensions(), (451, 300));
    let npy = std::fs::read(o("d.npy")).unwrap();
    assert!(npy.starts_with(b"\x93NUMPY") && String::from_utf8_lossy(&npy[10..80]).contains("(300, 451)"));
    assert_eq!(npy.len() % 64, (451 * 300 * 4) % 64);
    // Without forcing, a random model rarely opens a block: then exit 3 and a hint.
    let r = run(
        &[
            "depth",
            img.to_str().unwrap(),
            "--model",
            m,
            "--max-tiles",
            "2",
            "--max-new-tokens",
            "12",
        ],
        None,
    );
    match r.status.code() {
        Some(3) => assert!(
            stderr(&r).contains("no depth block") && stderr(&r).contains("--source teacher"),
            "{}",
            stderr(&r)
        ),
        Some(0) => {}
        c => panic!("exit {c:?}: {}", stderr(&r)),
    }
    // The full chain through `ask`: answer, segments, depth, files.
    let save = out.path().join("save");
    let r = run(
        &[
            "ask",
            img.to_str().unwrap(),
            "Where is the cat?",
            "--model",
            m,
            "--max-tiles",
            "2",
            "--max-new-tokens",
            "12",
            "--json",
            "--save-dir",
            save.to_str().unwrap(),
        ],
        None,
    );
    assert!(r.status.success(), "{}", stderr(&r));
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    for k in ["answer", "segments", "depth", "text_with_spatial_tokens"] {
        assert!(v.get(k).is_some(), "{k} missing: {v}");
    }
    assert!(save.join("answer.json").is_file());
}

#[test]
fn depth_bad_inputs() {
    let img = fixture("images/chelsea.png");
    let i = img.to_str().unwrap();
    // A Sa2VA checkpoint without depth tokens: a clear error that suggests the teacher.
    let dir = tempfile::tempdir().unwrap();
    sa2va::assemble(dir.path());
    assert_fails(
        &["depth", i, "--model", dir.path().to_str().unwrap()],
        "--source teacher",
    );
    let r = run(&["depth", i, "--tokens", "-o", "x.png"], None);
    assert_eq!(r.status.code(), Some(2));
    let r = run(&["depth", fixture("images").to_str().unwrap()], None);
    assert_eq!(r.status.code(), Some(2));
    assert!(stderr(&r).contains("directory"));
}

#[test]
fn teacher_maps_and_tokens_for_a_folder() {
    let out = tempfile::tempdir().unwrap();
    let teacher = fixture("depth_anything/tiny");
    let t = teacher.to_str().unwrap();
    let img = fixture("images/chelsea.png");
    let png = out.path().join("t.png");
    let r = run(
        &[
            "depth",
            img.to_str().unwrap(),
            "--source",
            "teacher",
            "--teacher",
            t,
            "-o",
            png.to_str().unwrap(),
            "--json",
        ],
        None,
    );
    assert!(r.status.success(), "{}", stderr(&r));
    let v: serde_json::Value = serde_json::from_str(stdout(&r).trim()).unwrap();
    assert_eq!((v["width"].as_u64(), v["height"].as_u64()), (Some(451), Some(300)));
    assert!(v["max"].as_f64().unwrap() > v["min"].as_f64().unwrap());
    let p = image::open(&png).unwrap().to_luma16();
    assert_eq!(p.dimensions(), (451, 300));
    // min-max scaled: both ends are used
    assert_eq!(p.pixels().map(|x| x.0[0]).max(), Some(65535));
    assert_eq!(p.pixels().map(|x| x.0[0]).min(), Some(0));
    // Tokens for a folder of two photos with the tiny VQ-VAE (3×3 grid, 16 codes).
    let folder = out.path().join("photos");
    std::fs::create_dir(&folder).unwrap();
    std::fs::copy(&img, folder.join("a.png")).unwrap();
    std::fs::copy(fixture("images/coffee_portrait.png"), folder.join("b.png")).unwrap();
    let vq: serde_json::Value = serde_json::from_slice(&std::fs::read(fixture("depth/goldens.json")).unwrap()).unwrap();
    let cfg = out.path().join("depth.json");
    std::fs::write(
        &cfg,
        serde_json::json!({"tokens": {"grid": [3, 3], "codebook_size": 16}, "vqvae_config": vq["tiny_config"]})
            .to_string(),
    )
    .unwrap();
    let jsonl = out.path().join("tokens.jsonl");
    let r = run(
        &[
            "depth",
            folder.to_str().unwrap(),
            "--tokens",
            "--teacher",
            t,
            "--vqvae",
            fixture("depth/tiny_vqvae.pt").to_str().unwrap(),
            "--depth-config",
            cfg.to_str().unwrap(),
            "--out",
            jsonl.to_str().unwrap(),
        ],
        None,
    );
    assert!(r.status.success(), "{}", stderr(&r));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    for l in &lines {
        let codes = l["codes"].as_array().unwrap();
        assert_eq!(codes.len(), 9);
        let s = l["tokens"].as_str().unwrap();
        assert!(s.starts_with("<DEPTH_START><DEPTH_") && s.ends_with("<DEPTH_END>"));
        assert_eq!(s.matches("<DEPTH_").count(), 11);
    }
    // The same codes as encoding the teacher's map through the library directly.
    let ta = perceptio::models::depth_anything::DepthAnything::load(&teacher, &Device::Cpu, DType::F32).unwrap();
    let m = ta
        .predict_depth(&perceptio::preprocess::load_rgb(&img).unwrap())
        .unwrap();
    let c: perceptio::models::vqvae::Config = serde_json::from_value(vq["tiny_config"].clone()).unwrap();
    let v = perceptio::models::vqvae::load(&fixture("depth/tiny_vqvae.pt"), &c, DType::F32, &Device::Cpu).unwrap();
    let map = m;
    let codes = perceptio::models::perceptio::depth::DepthHead::encode_map(&v, &map).unwrap();
    let got: Vec<u32> = lines[0]["codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(got, codes);
}

/// `segment` decodes like `respond`: on a model with depth tokens, sampled replies (temperature 3
/// on a 435-token vocabulary draws depth tokens often) never hold a code outside a block, a stray
/// end marker or a malformed block.
#[test]
fn segment_keeps_depth_blocks_well_formed() {
    use perceptio::models::depth_tokens::DepthParseError;
    use perceptio::models::perceptio::SegmentOptions;
    let dir = tempfile::tempdir().unwrap();
    perceptio_model(dir.path());
    let mut g = Grounder::load(
        &Checkpoint::open(dir.path(), DType::F32, &Device::Cpu).unwrap(),
        &LoadOptions::default(),
    )
    .unwrap();
    let img = perceptio::preprocess::load_rgb(&fixture("images/chelsea.png")).unwrap();
    let vision = g.vision(&img, 2).unwrap();
    let max_new_tokens = 24;
    let mut unconstrained_malformed = 0;
    for seed in 1..=6 {
        let opts = SegmentOptions {
            max_tiles: 2,
            force_seg: false,
            generation: GenerateOptions {
                max_new_tokens,
                temperature: 3.0,
                seed,
                top_p: None,
                stop_ids: vec![],
                stop_text: None,
            },
        };
        let r = g.segment(&img, &vision, "the cat", &opts).unwrap();
        // The same sampling without the constraint does write malformed depth tokens.
        let o = RespondOptions {
            generation: opts.generation.clone(),
            constrain: false,
            force_depth: false,
        };
        let free = g
            .respond(
                &img,
                &vision,
                &perceptio::models::perceptio::referring_prompt("the cat"),
                &o,
                |_| {},
            )
            .unwrap();
        unconstrained_malformed += free.depth.is_some_and(|d| d.block.is_err()) as usize;
        let ids = &g.depth.as_ref().unwrap().ids;
        match ids.parse(&r.token_ids) {
            Ok(_) => {}
            // Only the token budget may cut a block short.
            Err(DepthParseError::Unterminated { .. }) if r.token_ids.len() == max_new_tokens => {}
            Err(e) => panic!("seed {seed}: malformed depth tokens in {:?}: {e:?}", r.text),
        }
    }
    assert!(
        unconstrained_malformed > 0,
        "unconstrained sampling never went wrong either: the test proves nothing"
    );
}

/// `depth --batch`: the model loads once; each request's line is the single call's `--json`
/// object plus its id, `{id}` names the files, a missing image is an error line, exit 1.
#[test]
fn depth_batch_matches_single_calls() {
    let dir = tempfile::tempdir().unwrap();
    perceptio_model(dir.path());
    let out = tempfile::tempdir().unwrap();
    let m = dir.path().to_str().unwrap();
    let chelsea = fixture("images/chelsea.png");
    let portrait = fixture("images/coffee_portrait.png");
    let batch = [
        serde_json::json!({"id": "c", "image": chelsea}).to_string(),
        serde_json::json!({"id": "x", "image": out.path().join("missing.png")}).to_string(),
        serde_json::json!({"id": "p", "image": portrait}).to_string(),
    ]
    .join("\n");
    let png = out.path().join("{id}.png").to_str().unwrap().to_string();
    let common = [
        "--model",
        m,
        "--force-depth",
        "--max-tiles",
        "2",
        "--max-new-tokens",
        "12",
        "--json",
    ];
    let mut args = vec!["depth", "--batch", "-", "-o", &png];
    args.extend_from_slice(&common);
    let r = run(&args, Some(batch.as_bytes()));
    assert_eq!(r.status.code(), Some(1), "{}", stderr(&r));
    let lines: Vec<serde_json::Value> = stdout(&r).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[1]["error"].as_str().unwrap().contains("missing.png"));
    for (got, img, id) in [(&lines[0], &chelsea, "c"), (&lines[2], &portrait, "p")] {
        assert_eq!(got["id"], id);
        let mut a = vec!["depth", img.to_str().unwrap()];
        a.extend_from_slice(&common);
        let one = run(&a, None);
        assert!(one.status.success(), "{}", stderr(&one));
        let want: serde_json::Value = serde_json::from_str(stdout(&one).trim()).unwrap();
        assert_eq!(got["tokens"], want["tokens"]);
        assert!(out.path().join(format!("{id}.png")).is_file());
    }
}
