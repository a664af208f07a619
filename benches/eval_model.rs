//! `eval refcoco --model` throughput on the fixture RefCOCO val split with the tiny Sa2VA-layout
//! checkpoint (tests/common/sa2va.rs), with and without reusing an image's InternViT and SAM2
//! features across its sentences. Run: `cargo bench --bench eval_model`. Figures: docs/performance.md.

#[path = "../tests/common/sa2va.rs"]
mod sa2va;

use candle_core::{DType, Device};
use perceptio::models::checkpoint::Checkpoint;
use perceptio::models::generate::GenerateOptions;
use perceptio::models::perceptio::{Grounder, LoadOptions};
use perceptio::run::benchmarks::{refcoco, RunOptions};
use perceptio::run::Shard;
use std::path::Path;

fn main() {
    perceptio::util::tune_allocator();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    std::fs::create_dir(&model).unwrap();
    sa2va::assemble(&model);
    // The fixture's COCO images, made from a real photo at the annotated sizes.
    let inst: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("refcoco/refcoco/instances.json")).unwrap()).unwrap();
    let photo = image::open(root.join("images/chelsea.png")).unwrap().to_rgb8();
    for im in inst["images"].as_array().unwrap() {
        let (w, h) = (
            im["width"].as_u64().unwrap() as u32,
            im["height"].as_u64().unwrap() as u32,
        );
        let p = tmp.path().join("coco").join(im["file_name"].as_str().unwrap());
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        image::imageops::resize(&photo, w, h, image::imageops::FilterType::Triangle)
            .save(&p)
            .unwrap();
    }
    let gt = perceptio::eval::refcoco::refer::load_refer(
        &root.join("refcoco"),
        "refcoco",
        "unc",
        "val",
        perceptio::eval::refcoco::GtOverlap::Union,
    )
    .unwrap();
    let mut g = Grounder::load(
        &Checkpoint::open(&model, DType::F32, &Device::Cpu).unwrap(),
        &LoadOptions {
            require_grounding: true,
            ..Default::default()
        },
    )
    .unwrap();
    let images: std::collections::HashSet<_> = gt.samples.iter().map(|s| s.image_id).collect();
    println!(
        "fixture RefCOCO val: {} sentences on {} images, tiny Sa2VA (SAM2 at 1024², InternViT 2 tiles), {} threads",
        gt.samples.len(),
        images.len(),
        candle_core::utils::get_num_threads()
    );
    for reuse in [true, false, true, false] {
        let out = tmp.path().join(format!("pred-{reuse}-{}.jsonl", rand_suffix()));
        let o = RunOptions {
            shard: Shard::ALL,
            limit: None,
            log_samples: None,
            max_tiles: 2,
            generation: GenerateOptions {
                max_new_tokens: 8,
                ..Default::default()
            },
            force_seg: true,
            reuse_features: reuse,
            model_id: "tiny".into(),
        };
        if let Some(s) = &g.sam2 {
            s.clear_cache();
        }
        let s = refcoco(&mut g, &gt, &tmp.path().join("coco"), &out, &serde_json::json!({}), &o).unwrap();
        println!(
            "  feature reuse {:<5}  {:>5.2} samples/s  ({} samples in {:.2} s)",
            reuse,
            s.samples_per_second(),
            s.predicted,
            s.seconds
        );
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}
