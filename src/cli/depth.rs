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
    #[arg(required_unless_present = "batch")]
    pub image: Option<PathBuf>,
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
    /// Many photos with the model loaded once: a JSONL file (`-` = stdin) of
    /// `{"id": ANY, "image": PATH}`; one `--json` object per request plus `id`, in input order;
    /// `{id}` in -o/--colormap/--npy is the request id (not with --tokens).
    #[arg(long, value_name = "FILE.jsonl", conflicts_with_all = ["image", "tokens"])]
    pub batch: Option<PathBuf>,
    #[command(flatten)]
    pub rt: RuntimeArgs,
}

/// Write the requested files: the PNGs get the map in [0, 1] (see `DepthMap::to_unit`), the
/// .npy the raw values.
fn write_outputs(a: &DepthArgs, map: &DepthMap, id: Option<&serde_json::Value>) -> Result<serde_json::Value> {
    let (w, h) = (map.width, map.height);
    let shown = map.to_unit();
    let name = |p: &Path| match id {
        Some(id) => super::batch::with_id(p, id),
        None => p.to_path_buf(),
    };
    let mut files = serde_json::Map::new();
    if let Some(p) = a.output.as_deref().map(name) {
        dio::write_png16(&p, &shown, w, h)?;
        files.insert("depth".into(), p.display().to_string().into());
    }
    if let Some(p) = a.colormap.as_deref().map(name) {
        dio::write_turbo_png(&p, &shown, w, h)?;
        files.insert("colormap".into(), p.display().to_string().into());
    }
    if let Some(p) = a.npy.as_deref().map(name) {
        dio::write_npy(&p, &map.data, w, h)?;
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
    let image = a.image.clone().unwrap_or_default();
    if !a.tokens && image.is_dir() {
        return Err(Error::Usage(format!(
            "{} is a directory: only --tokens handles folders",
            image.display()
        )));
    }
    if a.tokens || a.source == Source::Teacher {
        let t = Instant::now();
        let teacher = DepthAnything::load(&hub::resolve_model(&a.teacher, &a.rt.hub())?, &device, dtype)?;
        let load_s = t.elapsed().as_secs_f64();
        if a.tokens {
            return run_tokens(&a, &image, &teacher, &device);
        }
        if let Some(b) = &a.batch {
            let text = super::batch::read_lines(b)?;
            let failed = super::batch::for_each(b, &text, "depth", |k, req: BatchRequest| {
                let img = crate::preprocess::load_rgb(&req.image)?;
                let mut v = teacher_one(
                    &a,
                    &teacher,
                    &img,
                    &req.image,
                    Some(&req.id),
                    if k == 0 { load_s } else { 0.0 },
                )?;
                v["id"] = req.id.clone();
                Ok(vec![v])
            })?;
            return Ok(if failed > 0 { exit::FAILURE } else { exit::OK });
        }
        let img = crate::preprocess::load_rgb(&image)?;
        let v = teacher_one(&a, &teacher, &img, &image, None, load_s)?;
        if a.json || !any_file {
            super::print_json_line(&v)?;
        }
        return Ok(exit::OK);
    }
    let mut s = ModelSession::open(&a, &device, dtype)?;
    if let Some(b) = &a.batch {
        let text = super::batch::read_lines(b)?;
        let mut no_block = false;
        let failed = super::batch::for_each(b, &text, "depth", |k, req: BatchRequest| {
            let img = crate::preprocess::load_rgb(&req.image)?;
            let (mut v, nb) = s.one(&a, &img, &req.image, Some(&req.id), k == 0)?;
            no_block |= nb;
            v["id"] = req.id.clone();
            Ok(vec![v])
        })?;
        return Ok(if failed > 0 {
            exit::FAILURE
        } else if no_block {
            exit::NO_MASK
        } else {
            exit::OK
        });
    }
    let img = crate::preprocess::load_rgb(&image)?;
    let (v, no_block) = s.one(&a, &img, &image, None, true)?;
    if a.json || !any_file {
        super::print_json_line(&v)?;
    }
    Ok(if no_block { exit::NO_MASK } else { exit::OK })
}

/// One request line of `--batch`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchRequest {
    id: serde_json::Value,
    image: PathBuf,
}

/// `--tokens`: the teacher's map of each image as VQ-VAE depth tokens, one JSON line each.
fn run_tokens(a: &DepthArgs, image: &Path, teacher: &DepthAnything, device: &candle_core::Device) -> Result<i32> {
    let (d, vq) = tokens_vqvae(a, device)?;
    let files = inputs(image)?;
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

/// `--source teacher`: the Depth Anything V2 map of one photo, its files written.
fn teacher_one(
    a: &DepthArgs,
    teacher: &DepthAnything,
    img: &image::RgbImage,
    image: &Path,
    id: Option<&serde_json::Value>,
    load_s: f64,
) -> Result<serde_json::Value> {
    let t = Instant::now();
    let m = teacher.predict_depth(img)?;
    let infer_s = t.elapsed().as_secs_f64();
    let files = write_outputs(a, &m, id)?;
    let (lo, hi) = m.range();
    Ok(serde_json::json!({
        "image": image.display().to_string(), "source": "teacher", "teacher": a.teacher,
        "width": m.width, "height": m.height, "min": lo, "max": hi,
        "convention": "relative inverse depth (larger = nearer); PNGs are min-max scaled",
        "files": files, "timings": {"load_s": load_s, "infer_s": infer_s},
    }))
}

/// `--source model`: the model loaded once, its depth prompt and decoding options.
struct ModelSession {
    g: Grounder,
    dir: PathBuf,
    prompt: String,
    max_tiles: usize,
    load_s: f64,
    o: RespondOptions,
}

impl ModelSession {
    fn open(a: &DepthArgs, device: &candle_core::Device, dtype: candle_core::DType) -> Result<Self> {
        let t = Instant::now();
        let (ck, lo) = a.rt.open_model(&a.model, device, dtype)?;
        let dir = ck.dir.clone();
        let g = Grounder::load(&ck, &lo)?;
        drop(ck);
        let prompt = depth_prompt(&g, &dir)?;
        let max_tiles = a.rt.tiles(device, g.chat.default_max_tiles());
        let o = depth_options(a.rt.max_new_tokens, !a.no_constrain, a.force_depth);
        Ok(Self {
            g,
            dir,
            prompt,
            max_tiles,
            load_s: t.elapsed().as_secs_f64(),
            o,
        })
    }

    /// The model's depth map of one photo (files written) and whether it wrote no usable block.
    fn one(
        &mut self,
        a: &DepthArgs,
        img: &image::RgbImage,
        image: &Path,
        id: Option<&serde_json::Value>,
        first: bool,
    ) -> Result<(serde_json::Value, bool)> {
        let vision = self.g.vision(img, self.max_tiles)?;
        let name = image.display().to_string();
        let job = DepthJob {
            prompt: &self.prompt,
            opts: &self.o,
            model_dir: &self.dir,
            image: &name,
            load_s: if first { self.load_s } else { 0.0 },
        };
        let (v, no_block) = depth_json(&mut self.g, img, &vision, &job, |map| write_outputs(a, map, id))?;
        if no_block {
            eprintln!(
                "perceptio: {name}: {} (reply: {:?}); try --force-depth, or --source teacher for a Depth Anything V2 map",
                v["error"].as_str().unwrap_or_default(),
                v["text_with_spatial_tokens"].as_str().unwrap_or_default()
            );
        }
        Ok((v, no_block))
    }
}

/// How `depth --source model` decodes (the server passes the CLI's defaults).
pub(super) fn depth_options(max_new_tokens: usize, constrain: bool, force_depth: bool) -> RespondOptions {
    let generation = GenerateOptions {
        max_new_tokens,
        ..Default::default()
    };
    RespondOptions {
        generation,
        constrain,
        force_depth,
    }
}

/// The model's depth prompt, or why this model cannot answer one.
pub(super) fn depth_prompt(g: &Grounder, dir: &Path) -> Result<String> {
    match &g.depth {
        Some(head) => Ok(head.prompt.clone()),
        None => Err(Error::input(dir, "this model has no depth tokens (no `perceptio.depth` block in config.json); use --source teacher for a Depth Anything V2 map")),
    }
}

/// What one depth request needs besides the model and the photo.
pub(super) struct DepthJob<'a> {
    pub prompt: &'a str,
    pub opts: &'a RespondOptions,
    pub model_dir: &'a Path,
    /// How the photo is named in the answer (its path as given, `-` for bytes).
    pub image: &'a str,
    pub load_s: f64,
}

/// The `--json` object of the model's depth map of one photo, which `depth --json`,
/// `depth --batch` and `serve` all answer; `files` writes the caller's outputs for the map and
/// names them. The flag is true when the model wrote no usable block (the object then has
/// `"depth": null` and an `"error"`).
pub(super) fn depth_json(
    g: &mut Grounder,
    img: &image::RgbImage,
    vision: &crate::models::internvl::chat::Vision,
    job: &DepthJob,
    files: impl FnOnce(&DepthMap) -> Result<serde_json::Value>,
) -> Result<(serde_json::Value, bool)> {
    let r = g.respond(img, vision, job.prompt, job.opts, |_| {})?;
    let name = job.image;
    let no_block = |why: String| {
        (
            serde_json::json!({"image": name, "source": "model", "depth": null, "error": why, "text_with_spatial_tokens": r.text_with_spatial_tokens}),
            true,
        )
    };
    let Some(outcome) = &r.depth else {
        return Ok(no_block("the model wrote no depth block".into()));
    };
    let block = match &outcome.block {
        Ok(b) => b,
        Err(e) => return Ok(no_block(format!("the model's depth block is malformed: {e}"))),
    };
    let map = outcome
        .map
        .as_ref()
        .ok_or_else(|| Error::at("model", "the depth block parsed but was not decoded"))?;
    let files = files(map)?;
    let (lo, hi) = map.range();
    Ok((
        serde_json::json!({
            "image": name, "source": "model", "model": job.model_dir,
            "prompt": job.prompt, "grid": [block.grid.0, block.grid.1], "tokens": block.codes,
            "width": map.width, "height": map.height, "min": lo, "max": hi,
            "convention": "AURORA disparity scale in [0, 1] (brighter = nearer)",
            "answer": r.answer, "text_with_spatial_tokens": r.text_with_spatial_tokens,
            "constrained": job.opts.constrain, "forced_start": job.opts.force_depth,
            "token_ids": r.token_ids, "prompt_tokens": r.prompt_tokens, "tokens_generated": r.token_ids.len(),
            "files": files, "timings": {
                "load_s": job.load_s, "vision_s": vision.secs, "llm_s": r.llm_s,
                "prefill_s": r.prefill_s, "decode_s": r.decode_s,
                "decode_tok_per_s": r.token_ids.len() as f64 / r.decode_s.max(1e-9),
                "vqvae_s": r.vqvae_s,
            },
        }),
        false,
    ))
}
