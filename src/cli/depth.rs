//! `perceptio depth IMAGE`: a depth map from the model's depth tokens (default), from the Depth
//! Anything V2 teacher (`--source teacher`), or the teacher's map as VQ-VAE depth tokens
//! (`--tokens`, for a file or a folder of images: how Perceptio-style training targets are made).

use super::runtime::RuntimeArgs;
use crate::depthmap::DepthMap;
use crate::error::{exit, Error, Result};
use crate::hub;
use crate::models::depth_anything::DepthAnything;
use crate::models::generate::GenerateOptions;
use crate::models::internvl::chat::ChatModel;
use crate::models::perceptio::depth::{token_string, DepthConfig, DepthHead};
use crate::models::perceptio::{Grounder, RespondOptions};
use crate::models::vqvae::{self, VqVae};
use crate::render::depth as dio;
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

/// Write the requested files: the PNGs get the map in [0, 1] (see `DepthMap::to_unit`), the
/// .npy the raw values.
fn write_outputs(a: &DepthArgs, map: &DepthMap) -> Result<serde_json::Value> {
    let (w, h) = (map.width, map.height);
    let shown = map.to_unit();
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
        dio::write_npy(p, &map.data, w, h)?;
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
        .filter(|f| {
            f.extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| matches!(x.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
        })
        .collect();
    v.sort();
    if v.is_empty() {
        return Err(Error::input(p, "no .png/.jpg images in the directory"));
    }
    Ok(v)
}

/// The VQ-VAE and token spec for --tokens: --vqvae (+ --depth-config), else --model's block.
fn tokens_vqvae(a: &DepthArgs, device: &candle_core::Device) -> Result<(DepthConfig, VqVae)> {
    let read_block = |p: &Path| -> Result<serde_json::Value> {
        let v: serde_json::Value = serde_json::from_slice(&crate::util::read_file(p)?)
            .map_err(|e| Error::input(p, format!("not valid JSON: {e}")))?;
        Ok(v.get("perceptio")
            .and_then(|x| x.get("depth"))
            .or_else(|| v.get("depth"))
            .cloned()
            .unwrap_or(v))
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
    let (ck, lo) = a.rt.open_model(&a.model, device, candle_core::DType::F32)?;
    let cfg_path = ck.dir.join("config.json");
    let d = DepthConfig::from_model_config(&ck.config, &cfg_path)?.ok_or_else(|| {
        Error::input(
            &cfg_path,
            "has no `perceptio.depth` block: give the VQ-VAE with --vqvae FILE",
        )
    })?;
    let tok = ChatModel::load_tokenizer(&ck.dir)?;
    let head = DepthHead::from_checkpoint(&ck, &tok, lo.vqvae_dir.as_deref())?.ok_or_else(|| {
        Error::input(
            &cfg_path,
            "has no `perceptio.depth` block: give the VQ-VAE with --vqvae FILE",
        )
    })?;
    Ok((d, head.vqvae))
}

pub fn run(a: DepthArgs) -> Result<i32> {
    let _trace = a.rt.start_trace()?;
    let (device, dtype) = a.rt.device_dtype()?;
    let any_file = a.output.is_some() || a.colormap.is_some() || a.npy.is_some();
    if a.tokens && (any_file || a.force_depth) {
        return Err(Error::Usage(
            "--tokens prints depth tokens; it takes no -o/--colormap/--npy/--force-depth".into(),
        ));
    }
    if !a.tokens && a.image.is_dir() {
        return Err(Error::Usage(format!(
            "{} is a directory: only --tokens handles folders",
            a.image.display()
        )));
    }
    if a.tokens || a.source == Source::Teacher {
        let t = Instant::now();
        let teacher = DepthAnything::load(&hub::resolve_model(&a.teacher, &a.rt.hub())?, &device, dtype)?;
        let load_s = t.elapsed().as_secs_f64();
        return if a.tokens {
            run_tokens(&a, &teacher, &device)
        } else {
            run_teacher(&a, &teacher, load_s, any_file)
        };
    }
    run_model(&a, &device, dtype, any_file)
}

/// `--tokens`: the teacher's map of each image as VQ-VAE depth tokens, one JSON line each.
fn run_tokens(a: &DepthArgs, teacher: &DepthAnything, device: &candle_core::Device) -> Result<i32> {
    let (d, vq) = tokens_vqvae(a, device)?;
    let files = inputs(&a.image)?;
    let pb = crate::run::progress(files.len() as u64, "depth tokens");
    let mut lines = String::new();
    let mut stdout = std::io::stdout().lock();
    for f in &files {
        let img = crate::preprocess::load_rgb(f)?;
        let map = teacher.predict_depth(&img)?;
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
    Ok(exit::OK)
}

/// `--source teacher`: the Depth Anything V2 map.
fn run_teacher(a: &DepthArgs, teacher: &DepthAnything, load_s: f64, any_file: bool) -> Result<i32> {
    let img = crate::preprocess::load_rgb(&a.image)?;
    let t = Instant::now();
    let m = teacher.predict_depth(&img)?;
    let infer_s = t.elapsed().as_secs_f64();
    let files = write_outputs(a, &m)?;
    if a.json || !any_file {
        let (lo, hi) = m.range();
        super::print_json_line(&serde_json::json!({
            "image": a.image.display().to_string(), "source": "teacher", "teacher": a.teacher,
            "width": m.width, "height": m.height, "min": lo, "max": hi,
            "convention": "relative inverse depth (larger = nearer); PNGs are min-max scaled",
            "files": files, "timings": {"load_s": load_s, "infer_s": infer_s},
        }))?;
    }
    Ok(exit::OK)
}

/// `--source model`: the model's own depth block, decoded by its VQ-VAE.
fn run_model(a: &DepthArgs, device: &candle_core::Device, dtype: candle_core::DType, any_file: bool) -> Result<i32> {
    let img = crate::preprocess::load_rgb(&a.image)?;
    let t = Instant::now();
    let (ck, lo) = a.rt.open_model(&a.model, device, dtype)?;
    let dir = ck.dir.clone();
    let mut g = Grounder::load(&ck, &lo)?;
    drop(ck);
    let load_s = t.elapsed().as_secs_f64();
    let Some(head) = &g.depth else {
        return Err(Error::input(&dir, "this model has no depth tokens (no `perceptio.depth` block in config.json); use --source teacher for a Depth Anything V2 map"));
    };
    let prompt = head.prompt.clone();
    let max_tiles = a.rt.tiles(device, g.chat.config().default_max_tiles());
    let vision = g.vision(&img, max_tiles)?;
    let o = RespondOptions {
        generation: GenerateOptions {
            max_new_tokens: a.rt.max_new_tokens,
            ..Default::default()
        },
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
            super::print_json_line(
                &serde_json::json!({"image": a.image.display().to_string(), "source": "model", "depth": null, "text_with_spatial_tokens": r.text_with_spatial_tokens}),
            )?;
        }
        return Ok(exit::NO_MASK);
    };
    let block = match outcome.block {
        Ok(b) => b,
        Err(e) => {
            eprintln!(
                "perceptio: the model's depth block is malformed: {e} (reply: {:?})",
                r.text_with_spatial_tokens
            );
            return Ok(exit::NO_MASK);
        }
    };
    let map = outcome
        .map
        .ok_or_else(|| Error::at("model", "the depth block parsed but was not decoded"))?;
    let files = write_outputs(a, &map)?;
    if a.json || !any_file {
        let (lo, hi) = map.range();
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
