//! SAM2 at real size on this machine: Meta's hiera-T and hiera-L image encoders at 1024² and the
//! prompt encoder + mask decoder, with random weights made by tools/gen_sam2_realsize.py (Meta's
//! own model, saved as `.pt` with its goldens). Also checks parity with those goldens.
//! Run: `python tools/gen_sam2_realsize.py` once (writes /tmp/perceptio-sam2), then
//! `cargo bench --bench sam2` (f32, CPU). `PERCEPTIO_SAM2_DIR` overrides the directory;
//! `PERCEPTIO_SAM2_MODELS=hiera_t` limits the variants. Figures: docs/performance.md.

use candle_core::{DType, Device, Tensor};
use perceptio::models::sam2::{PointPrompt, Preprocess, Sam2};
use std::path::PathBuf;
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
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

fn maxabs(a: &Tensor) -> f32 {
    a.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// On the compute pool, as the model commands run.
fn main() -> candle_core::Result<()> {
    perceptio::util::on_compute_pool(run)
}

fn run() -> candle_core::Result<()> {
    perceptio::util::tune_allocator();
    let dir = PathBuf::from(std::env::var("PERCEPTIO_SAM2_DIR").unwrap_or_else(|_| "/tmp/perceptio-sam2".into()));
    let models = std::env::var("PERCEPTIO_SAM2_MODELS").unwrap_or_else(|_| "hiera_t,hiera_l".into());
    let dev = Device::Cpu;
    let img =
        perceptio::preprocess::load_rgb(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/images/chelsea.png"))
            .expect("chelsea.png");
    println!(
        "SAM2 image path on chelsea.png (451x300 → 1024²), f32, {} threads",
        candle_core::utils::get_num_threads()
    );
    for name in models.split(',') {
        let ckpt = dir.join(format!("{name}.pt"));
        if !ckpt.is_file() {
            println!(
                "{name}: {} missing; run tools/gen_sam2_realsize.py first",
                ckpt.display()
            );
            continue;
        }
        let t = Instant::now();
        let m = Sam2::load(&ckpt, None, &dev, DType::F32).map_err(candle_core::Error::wrap)?;
        println!(
            "{name} ({:?}): loaded in {:.2} s",
            m.config.variant_name(),
            t.elapsed().as_secs_f64()
        );
        let px = m.preprocess(&img, Preprocess::Sam2)?;
        let runs = if name == "hiera_l" { 2 } else { 3 };
        let t = Instant::now();
        let mut feats = m.encode(&px)?;
        println!("  forward_image warm-up           {:.2} s", t.elapsed().as_secs_f64());
        let mut times = vec![];
        for _ in 0..runs {
            let t = Instant::now();
            feats = m.encode(&px)?;
            times.push(t.elapsed().as_secs_f64());
        }
        println!(
            "  forward_image 1024²             median {:.2} s  {times:.2?}",
            median(times.clone())
        );
        let prompt = PointPrompt {
            points: vec![(225.0, 150.0, 1)],
            bbox: None,
        };
        let mut dec = vec![];
        let mut out = m.predict(&feats, &prompt, (img.width(), img.height()), true)?;
        for _ in 0..10 {
            let t = Instant::now();
            out = m.predict(&feats, &prompt, (img.width(), img.height()), true)?;
            dec.push(t.elapsed().as_secs_f64());
        }
        println!("  prompt enc + mask decoder       median {:.4} s", median(dec));
        let golden = dir.join(format!("{name}_golden.safetensors"));
        if let Ok(g) = candle_core::safetensors::load(&golden, &dev) {
            let (f0, f1) = feats.high_res.as_ref().unwrap();
            for (k, ours) in [
                ("image_embed", &feats.image_embed),
                ("high_res_feat0", f0),
                ("high_res_feat1", f1),
                ("low_res_masks", &out.low_res_masks),
                ("iou", &out.iou),
                ("obj_score", &out.object_score),
            ] {
                if let Some(want) = g.get(k) {
                    println!(
                        "  parity {k:<15} max |diff| {:.2e} (max |ref| {:.2e})",
                        maxdiff(ours, want),
                        maxabs(want)
                    );
                }
            }
            if let Some(want) = g.get("low_res_masks") {
                let a: Vec<f32> = out.low_res_masks.flatten_all()?.to_vec1()?;
                let b: Vec<f32> = want.flatten_all()?.to_vec1()?;
                let flips = a.iter().zip(&b).filter(|(x, y)| (**x > 0.0) != (**y > 0.0)).count();
                println!("  parity low-res mask bits: {flips} of {} differ", a.len());
            }
        }
    }
    Ok(())
}
