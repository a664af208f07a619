//! `eval refcoco --model` throughput with the tiny Sa2VA-layout checkpoint (tests/common/sa2va.rs),
//! 2 tiles: with and without reusing an image's InternViT and SAM2 features across its sentences
//! (`--force-seg`, the fixture RefCOCO val split), and `--batch-size` 1 vs 4 vs 8 (with
//! `--force-seg`, then generating up to 32 tokens) on that split replicated onto four times as many
//! photos (each copy a different crop, so no copy hits another's SAM2 cache), interleaved round by
//! round, with every batched file and its logged token ids checked against batch 1's.
//! Run: `cargo bench --bench eval_model` (`-- generate`: only the generating runs;
//! `PERCEPTIO_BENCH_MODEL=DIR`: a real-size Sa2VA directory instead, generating runs on the first 8
//! sentences). Figures: docs/performance.md.

#[path = "../tests/common/sa2va.rs"]
mod sa2va;

use candle_core::{DType, Device};
use perceptio::eval::refcoco::refer::GroundTruth;
use perceptio::mask::Rle;
use perceptio::models::checkpoint::Checkpoint;
use perceptio::models::generate::GenerateOptions;
use perceptio::models::perceptio::{Grounder, LoadOptions};
use perceptio::run::benchmarks::{refcoco, RunOptions, RunSummary};
use perceptio::run::Shard;
use std::path::{Path, PathBuf};

/// Copies of the split (batch-size rows), and rounds of each setting (medians reported).
const COPIES: usize = 4;
const ROUNDS: usize = 3;

/// What the runs use: the tiny checkpoint, or with `PERCEPTIO_BENCH_MODEL=DIR` a real-size one
/// (then only the generating runs, on the first 8 sentences, 1 tile, 16 tokens, 2 rounds).
struct Setup {
    limit: Option<usize>,
    max_tiles: usize,
    /// New tokens and rounds of the generating runs (much shorter than the SAM2-bound ones).
    gen_tokens: usize,
    gen_rounds: usize,
}

/// On the compute pool, as the model commands run.
fn main() {
    perceptio::util::on_compute_pool(bench)
}

fn bench() {
    perceptio::util::tune_allocator();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let tmp = tempfile::tempdir().unwrap();
    let real = std::env::var_os("PERCEPTIO_BENCH_MODEL").map(PathBuf::from);
    let model = match &real {
        Some(dir) => dir.clone(),
        None => {
            let m = tmp.path().join("model");
            std::fs::create_dir(&m).unwrap();
            sa2va::assemble(&m);
            m
        }
    };
    let setup = match real {
        Some(_) => Setup {
            limit: Some(8),
            max_tiles: 1,
            gen_tokens: 16,
            gen_rounds: 2,
        },
        None => Setup {
            limit: None,
            max_tiles: 2,
            gen_tokens: 32,
            gen_rounds: 7,
        },
    };
    let coco = tmp.path().join("coco");
    // The fixture's COCO images at the annotated sizes, copy c cut from chelsea.png at offset c.
    let inst: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("refcoco/refcoco/instances.json")).unwrap()).unwrap();
    let photo = image::open(root.join("images/chelsea.png")).unwrap().to_rgb8();
    for c in 0..COPIES {
        for im in inst["images"].as_array().unwrap() {
            let (w, h) = (
                im["width"].as_u64().unwrap() as u32,
                im["height"].as_u64().unwrap() as u32,
            );
            let crop = image::imageops::crop_imm(&photo, 40 * c as u32, 10 * c as u32, 300, 250).to_image();
            let p = coco.join(copy_name(c, im["file_name"].as_str().unwrap()));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            image::imageops::resize(&crop, w, h, image::imageops::FilterType::Triangle)
                .save(&p)
                .unwrap();
        }
    }
    let gt = perceptio::eval::refcoco::refer::load_refer(
        &root.join("refcoco"),
        "refcoco",
        "unc",
        "val",
        perceptio::eval::refcoco::GtOverlap::Union,
    )
    .unwrap();
    let gt_one = replicate(&gt, 1);
    let gt_many = replicate(&gt, COPIES);
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
        "fixture RefCOCO val: {} sentences on {} images, {}, InternViT {} tiles, {} threads",
        gt.samples.len(),
        images.len(),
        model.display(),
        setup.max_tiles,
        candle_core::utils::get_num_threads()
    );
    // `cargo bench --bench eval_model -- generate`: only the generating --batch-size runs.
    let only_generate = std::env::args().any(|a| a == "generate") || setup.limit.is_some();
    for reuse in [true, false, true, false].into_iter().filter(|_| !only_generate) {
        let (s, _) = run(&mut g, &setup, &gt_one, &coco, tmp.path(), reuse, 1, true);
        println!(
            "  feature reuse {:<5}  {:>5.2} samples/s  ({} samples in {:.2} s)",
            reuse,
            s.samples_per_second(),
            s.predicted,
            s.seconds
        );
    }
    for force_seg in [true, false].into_iter().filter(|&f| !(f && only_generate)) {
        let rounds = if force_seg { ROUNDS } else { setup.gen_rounds };
        println!(
            "--batch-size, {}, the split on {COPIES}× the photos: {} sentences on {} images (limit {:?}), {rounds} rounds",
            if force_seg {
                "--force-seg".to_string()
            } else {
                format!("generating (greedy, up to {} new tokens)", setup.gen_tokens)
            },
            gt_many.samples.len(),
            images.len() * COPIES,
            setup.limit
        );
        let sizes = [1usize, 4, 8];
        let mut rates: Vec<Vec<f64>> = vec![vec![]; sizes.len()];
        // Batch 1's file of the first round that has run it, for comparing batched files against.
        let mut base: Option<PathBuf> = None;
        let mut unchecked: Vec<PathBuf> = Vec::new();
        for round in 0..rounds {
            // Rotate the order each round so no setting always runs first (warm caches, load).
            for j in 0..sizes.len() {
                let k = (j + round) % sizes.len();
                let (s, out) = run(&mut g, &setup, &gt_many, &coco, tmp.path(), true, sizes[k], force_seg);
                rates[k].push(s.samples_per_second());
                println!(
                    "  round {round} batch {:>2}  {:>5.2} samples/s  ({} samples in {:.2} s)",
                    sizes[k],
                    s.samples_per_second(),
                    s.predicted,
                    s.seconds
                );
                if sizes[k] == 1 {
                    base.get_or_insert(out);
                } else {
                    unchecked.push(out);
                }
            }
        }
        let base = base.expect("batch 1 ran");
        let masks = std::fs::read_to_string(&base)
            .unwrap()
            .lines()
            .filter(|l| !serde_json::from_str::<serde_json::Value>(l).unwrap()["mask"].is_null())
            .count();
        println!("  batch 1: {masks} of the replies have a [SEG] (a mask)");
        for out in &unchecked {
            let c = compare(&base, out);
            println!(
                "  {}: {}/{n} lines identical to batch 1's, {}/{n} same token ids, min mask IoU {:.5}",
                out.file_name().unwrap().to_string_lossy(),
                c.same_lines,
                c.same_tokens,
                c.min_iou,
                n = c.lines
            );
        }
        for (k, r) in rates.iter_mut().enumerate() {
            r.sort_by(f64::total_cmp);
            println!(
                "batch {:>2}: median {:.2} samples/s (runs: {})",
                sizes[k],
                r[r.len() / 2],
                r.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(", ")
            );
        }
    }
}

fn copy_name(c: usize, name: &str) -> String {
    format!("c{c}/{name}")
}

/// The split `copies` times, copy c on its own photos (`c{c}/…`) with sent ids offset by c·10⁶.
fn replicate(gt: &GroundTruth, copies: usize) -> GroundTruth {
    let mut out = GroundTruth {
        samples: vec![],
        masks: gt.masks.clone(),
        all_sent_ids: Default::default(),
        sources: gt.sources.clone(),
    };
    for c in 0..copies {
        for s in &gt.samples {
            let mut s = s.clone();
            s.sent_id += (c * 1_000_000) as i64;
            s.image_id = s.image_id.map(|i| i + (c * 1_000_000) as i64);
            s.file_name = s.file_name.as_deref().map(|n| copy_name(c, n));
            out.all_sent_ids.insert(s.sent_id);
            out.samples.push(s);
        }
    }
    out
}

/// One run into a fresh file (and a log beside it, `FILE.log`), SAM2's feature cache cleared first.
#[allow(clippy::too_many_arguments)]
fn run(
    g: &mut Grounder,
    setup: &Setup,
    gt: &GroundTruth,
    images: &Path,
    tmp: &Path,
    reuse: bool,
    batch: usize,
    force_seg: bool,
) -> (RunSummary, PathBuf) {
    let out = tmp.join(format!(
        "pred-force{force_seg}-reuse{reuse}-batch{batch}-{}.jsonl",
        rand_suffix()
    ));
    let o = RunOptions {
        shard: Shard::ALL,
        limit: setup.limit,
        log_samples: Some(log_of(&out)),
        max_tiles: setup.max_tiles,
        generation: GenerateOptions {
            max_new_tokens: if force_seg { 8 } else { setup.gen_tokens },
            ..Default::default()
        },
        force_seg,
        reuse_features: reuse,
        batch_size: batch,
        model_id: "tiny".into(),
    };
    if let Some(s) = &g.sam2 {
        s.clear_cache();
    }
    let s = refcoco(g, gt, images, &out, &serde_json::json!({}), &o).unwrap();
    (s, out)
}

fn log_of(p: &Path) -> PathBuf {
    p.with_extension("log")
}

/// How a batched run's file compares with batch 1's, line by line.
struct Comparison {
    lines: usize,
    same_lines: usize,
    same_tokens: usize,
    min_iou: f64,
}

/// Compare two prediction files (same order required) and their logs' token ids.
fn compare(a: &Path, b: &Path) -> Comparison {
    let read = |p: &Path| -> Vec<String> { std::fs::read_to_string(p).unwrap().lines().map(String::from).collect() };
    let json = |l: &String| -> serde_json::Value { serde_json::from_str(l).unwrap() };
    let (la, lb) = (read(a), read(b));
    assert_eq!(la.len(), lb.len(), "same number of predictions");
    let mut c = Comparison {
        lines: la.len(),
        same_lines: 0,
        same_tokens: 0,
        min_iou: 1.0,
    };
    for (x, y) in la.iter().zip(&lb) {
        c.same_lines += usize::from(x == y);
        let (x, y) = (json(x), json(y));
        assert_eq!(x["sent_id"], y["sent_id"], "same order");
        let rle = |m: &serde_json::Value| {
            let (h, w) = (
                m["size"][0].as_u64().unwrap() as u32,
                m["size"][1].as_u64().unwrap() as u32,
            );
            Rle::from_compressed(m["counts"].as_str().unwrap(), h, w).unwrap()
        };
        let iou = match (x["mask"].is_null(), y["mask"].is_null()) {
            (true, true) => 1.0,
            (false, false) => {
                let (i, u) = rle(&x["mask"]).intersection_union(&rle(&y["mask"])).unwrap();
                if u > 0 {
                    i as f64 / u as f64
                } else {
                    1.0
                }
            }
            _ => 0.0,
        };
        c.min_iou = c.min_iou.min(iou);
    }
    for (x, y) in read(&log_of(a)).iter().zip(&read(&log_of(b))) {
        c.same_tokens += usize::from(json(x)["token_ids"] == json(y)["token_ids"]);
    }
    c
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}
