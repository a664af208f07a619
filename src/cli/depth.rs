//! `perceptio depth IMAGE`: a depth map from the model's depth tokens (default), from the Depth
//! Anything V2 teacher (`--source teacher`), or the teacher's map as VQ-VAE depth tokens
//! (`--tokens`, for a file or a folder of images: how Perceptio-style training targets are made).

use crate::error::{exit, Error, Result};
use crate::hub::{self, HubConfig};
use crate::models::depth_anything::DepthAnything;
use super::runtime::RuntimeArgs;
use crate::models::generate::GenerateOptions;
use crate::models::perceptio::depth::{token_string, DepthConfig, DepthHead, PerceptioBlock};
use crate::models::perceptio::{Grounder, RespondOptions};
use crate::models::vqvae::{self, io as dio, VqVae};
use clap::{Args, ValueEnum};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Source {
    /// The model's own depth tokens, decoded by its VQ-VAE.
    Model,
    /// Depth Anything V2 (relative depth, larger = nearer).
    Teacher,
}

#[derive(Args, Debug)]
pub struct DepthArgs {
    /// Image file (PNG/JPEG), `-` for stdin; with --tokens also a directory of images.
    pub image: PathBuf,
    #[arg(long, value_enum, default_value = "model")]
    pub source: Source,
    /// The model (hub repo or directory) for --source model, and the VQ-VAE for --tokens.
    #[arg(long, default_value = "ByteDance/Sa2VA-1B")]
    pub model: String,
    /// The teacher (hub repo or directory in the transformers layout).
    #[arg(long, default_value = "depth-anything/Depth-Anything-V2-Small-hf")]
    pub teacher: String,
    /// Print the teacher map's VQ-VAE depth tokens (one JSON line per image) instead of a map.
    #[arg(long)]
    pub tokens: bool,
    /// VQ-VAE checkpoint for --tokens (AiT `.pt` or safetensors); default: the one --model's
    /// `perceptio.depth` block names.
    #[arg(long, value_name = "FILE")]
    pub vqvae: Option<PathBuf>,
    /// JSON `perceptio.depth` block (tokens + vqvae_config) to go with --vqvae (default: AURORA's).
    #[arg(long, value_name = "FILE")]
    pub depth_config: Option<PathBuf>,
    /// Write the depth map as a 16-bit grayscale PNG (brighter = nearer).
    #[arg(short = 'o', long = "output", value_name = "DEPTH.png")]
    pub output: Option<PathBuf>,
    /// Write a turbo-coloured PNG of the map (red = near).
    #[arg(long, value_name = "FILE.png")]
    pub colormap: Option<PathBuf>,
    /// Write the raw map as .npy (f32, height × width).
    #[arg(long, value_name = "FILE.npy")]
    pub npy: Option<PathBuf>,
    /// With --tokens: write the JSON lines to this file instead of stdout.
    #[arg(long, value_name = "FILE.jsonl")]
    pub out: Option<PathBuf>,
    /// Print a JSON summary (tokens, min/max, timings); also printed when no output file is asked for.
    #[arg(long)]
    pub json: bool,
    /// Decode without keeping the depth block well-formed (for diagnosis).
    #[arg(long)]
    pub no_constrain: bool,
    /// Start the reply with the depth start marker, so the model must write a depth block.
    #[arg(long)]
    pub force_depth: bool,
    #[command(flatten)]
    pub rt: RuntimeArgs,
}

/// min, max of the finite values.
fn range(d: &[f32]) -> (f32, f32) {
    d.iter().filter(|v| v.is_finite()).fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)))
}

/// Min-max to [0, 1] (a constant map becomes 0).
fn unit(d: &[f32]) -> Vec<f32> {
    let (lo, hi) = range(d);
    let s = if hi > lo { 1.0 / (hi - lo) } else { 0.0 };
    d.iter().map(|&v| if v.is_finite() { (v - lo) * s } else { 0.0 }).collect()
}

/// Write the requested files; `in_unit` is the map already in [0, 1] (else min-max is applied
/// for the PNGs; the .npy always holds the raw values).
fn write_outputs(a: &DepthArgs, raw: &[f32], w: usize, h: usize, in_unit: bool) -> Result<serde_json::Value> {
    let shown = if in_unit { raw.to_vec() } else { unit(raw) };
    let mut files = serde_json::Map::new();
    if let Some(p) = &a.output {
        dio::write_png16(p, &shown, w, h)?;
        files.insert("depth".into(), p.display().to_string().into());
    }
    if let Some(p) = &a.colormap {
        dio::write_turbo_png(p, &shown, w, h)?;
        files.insert("colormap".into(), p.display().to_string().into());
    }
    if let Some(p) = &a.npy {
        dio::write_npy(p, raw, w, h)?;
        files.insert("npy".into(), p.display().to_string().into());
    }
    Ok(files.into())
}



/// Images of a directory (PNG/JPEG by extension), sorted; a file is itself.
fn inputs(p: &Path) -> Result<Vec<PathBuf>> {
    if !p.is_dir() {
        return Ok(vec![p.to_path_buf()]);
    }
    let mut v: Vec<PathBuf> = std::fs::read_dir(p)
        .map_err(|e| Error::io(p, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|f| f.extension().and_then(|x| x.to_str()).is_some_and(|x| matches!(x.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg")))
        .collect();
    v.sort();
    if v.is_empty() {
        return Err(Error::input(p, "no .png/.jpg images in the directory"));
    }
    Ok(v)
}

/// The VQ-VAE and token spec for --tokens: --vqvae (+ --depth-config), else --model's block.
fn tokens_vqvae(a: &DepthArgs, hub_cfg: &HubConfig, device: &candle_core::Device) -> Result<(DepthConfig, VqVae)> {
    let read_block = |p: &Path| -> Result<serde_json::Value> {
        let v: serde_json::Value = serde_json::from_slice(&crate::util::read_file(p)?).map_err(|e| Error::input(p, format!("not valid JSON: {e}")))?;
        Ok(v.get("perceptio").and_then(|x| x.get("depth")).or_else(|| v.get("depth")).cloned().unwrap_or(v))
    };
    if let Some(file) = &a.vqvae {
        let mut block = match &a.depth_config {
            Some(p) => read_block(p)?,
            None => serde_json::json!({}),
        };
        block["vqvae"] = serde_json::json!({"file": file});
        let d: DepthConfig = serde_json::from_value(block).map_err(|e| Error::Usage(format!("--depth-config: {e}")))?;
        let vq = vqvae::load(file, &d.vqvae_config, candle_core::DType::F32, device)?;
        return Ok((d, vq));
    }
    let dir = hub::resolve_model(&a.model, hub_cfg)?;
    let cfg_path = dir.join("config.json");
    let cfg: serde_json::Value = serde_json::from_slice(&crate::util::read_file(&cfg_path)?).map_err(|e| Error::input(&cfg_path, format!("not valid JSON: {e}")))?;
    let b: PerceptioBlock = match cfg.get("perceptio") {
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| Error::input(&cfg_path, format!("invalid `perceptio` block: {e}")))?,
        None => PerceptioBlock::default(),
    };
    let d = b.depth.ok_or_else(|| Error::input(&cfg_path, "has no `perceptio.depth` block: give the VQ-VAE with --vqvae FILE"))?;
    let tok = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).map_err(|e| Error::input(dir.join("tokenizer.json"), e.to_string()))?;
    let head = DepthHead::load(&dir, &cfg, &tok, device, hub_cfg)?.expect("block present");
    Ok((d, head.vqvae))
}

pub fn run(a: DepthArgs) -> Result<i32> {
    let (device, dtype) = a.rt.device_dtype()?;
    let hub_cfg = a.rt.hub();
    let any_file = a.output.is_some() || a.colormap.is_some() || a.npy.is_some();
    if a.tokens && (any_file || a.force_depth) {
        return Err(Error::Usage("--tokens prints depth tokens; it takes no -o/--colormap/--npy/--force-depth".into()));
    }
    if !a.tokens && a.image.is_dir() {
        return Err(Error::Usage(format!("{} is a directory: only --tokens handles folders", a.image.display())));
    }

    if a.tokens || a.source == Source::Teacher {
        let t = Instant::now();
        let teacher = DepthAnything::load(&hub::resolve_model(&a.teacher, &hub_cfg)?, &device, dtype)?;
        let load_s = t.elapsed().as_secs_f64();
        if a.tokens {
            let (d, vq) = tokens_vqvae(&a, &hub_cfg, &device)?;
            let files = inputs(&a.image)?;
            let pb = crate::eval::predict::progress(files.len() as u64, "depth tokens");
            let mut lines = String::new();
            let mut stdout = std::io::stdout().lock();
            for f in &files {
                let img = crate::preprocess::load_rgb(f)?;
                let m = teacher.predict_depth(&img).map_err(crate::error::model_error)?;
                let map = vqvae::preprocess::DepthMap::Float { width: m.width, height: m.height, data: m.data };
                let codes = DepthHead::encode_map(&vq, &map)?;
                let v = serde_json::json!({
                    "image": f.display().to_string(),
                    "grid": [d.tokens.grid.0, d.tokens.grid.1],
                    "codes": codes,
                    "tokens": token_string(&d.tokens, &codes),
                });
                if a.out.is_some() {
                    lines.push_str(&format!("{v}\n"));
                } else {
                    writeln!(stdout, "{v}").map_err(|e| Error::io("<stdout>", e))?;
                }
                pb.inc(1);
            }
            pb.finish_and_clear();
            if let Some(p) = &a.out {
                crate::util::atomic::write(p, lines.as_bytes())?;
            }
            return Ok(exit::OK);
        }
        let img = crate::preprocess::load_rgb(&a.image)?;
        let t = Instant::now();
        let m = teacher.predict_depth(&img).map_err(crate::error::model_error)?;
        let infer_s = t.elapsed().as_secs_f64();
        let files = write_outputs(&a, &m.data, m.width, m.height, false)?;
        if a.json || !any_file {
            let (lo, hi) = range(&m.data);
            super::print_json_line(&serde_json::json!({
                "image": a.image.display().to_string(), "source": "teacher", "teacher": a.teacher,
                "width": m.width, "height": m.height, "min": lo, "max": hi,
                "convention": "relative inverse depth (larger = nearer); PNGs are min-max scaled",
                "files": files, "timings": {"load_s": load_s, "infer_s": infer_s},
            }))?;
        }
        return Ok(exit::OK);
    }

    // --source model
    let img = crate::preprocess::load_rgb(&a.image)?;
    let dir = hub::resolve_model(&a.model, &hub_cfg)?;
    let t = Instant::now();
    let mut g = Grounder::load_any(&dir, &device, dtype, &hub_cfg)?;
    let load_s = t.elapsed().as_secs_f64();
    let Some(head) = &g.depth else {
        return Err(Error::input(&dir, "this model has no depth tokens (no `perceptio.depth` block in config.json); use --source teacher for a Depth Anything V2 map"));
    };
    let prompt = head.prompt.clone();
    let max_tiles = a.rt.tiles(&device, g.chat.config().default_max_tiles());
    let vision = g.vision(&img, max_tiles)?;
    let o = RespondOptions {
        generation: GenerateOptions { max_new_tokens: a.rt.max_new_tokens, ..Default::default() },
        constrain: !a.no_constrain,
        force_depth: a.force_depth,
    };
    let r = g.respond(&img, &vision, &prompt, &o, |_| {})?;
    let Some(outcome) = r.depth else {
        eprintln!(
            "perceptio: the model wrote no depth block (reply: {:?}); try --force-depth, or --source teacher for a Depth Anything V2 map",
            r.text_with_spatial_tokens
        );
        if a.json || !any_file {
            super::print_json_line(&serde_json::json!({"image": a.image.display().to_string(), "source": "model", "depth": null, "text_with_spatial_tokens": r.text_with_spatial_tokens}))?;
        }
        return Ok(exit::NO_MASK);
    };
    let block = match outcome.block {
        Ok(b) => b,
        Err(e) => {
            eprintln!("perceptio: the model's depth block is malformed: {e} (reply: {:?})", r.text_with_spatial_tokens);
            return Ok(exit::NO_MASK);
        }
    };
    let map = outcome.map.expect("decoded with the block");
    let files = write_outputs(&a, &map.data, map.width as usize, map.height as usize, true)?;
    if a.json || !any_file {
        let (lo, hi) = range(&map.data);
        super::print_json_line(&serde_json::json!({
            "image": a.image.display().to_string(), "source": "model", "model": dir,
            "prompt": prompt, "grid": [block.grid.0, block.grid.1], "tokens": block.codes,
            "width": map.width, "height": map.height, "min": lo, "max": hi,
            "convention": "AURORA disparity scale in [0, 1] (brighter = nearer)",
            "answer": r.answer, "text_with_spatial_tokens": r.text_with_spatial_tokens,
            "constrained": !a.no_constrain, "forced_start": a.force_depth,
            "files": files, "timings": {"load_s": load_s, "vision_s": vision.secs, "llm_s": r.llm_s},
        }))?;
    }
    Ok(exit::OK)
}
