//! `perceptio ask IMAGE QUESTION`: answer a question about an image with an InternVL/Sa2VA model.

use super::runtime::RuntimeArgs;
use crate::error::{Error, Result};
use crate::models::generate::GenerateOptions;
use crate::models::perceptio::{Grounder, RespondOptions};
use clap::Args;
use std::io::Write;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct AskArgs {
    /// Image file (PNG/JPEG), or `-` for stdin.
    #[arg(required_unless_present = "batch")]
    pub image: Option<PathBuf>,
    /// The question.
    #[arg(required_unless_present = "batch")]
    pub question: Option<String>,
    /// Hub repo (`org/name[@rev]`) or a local model directory.
    #[arg(long, default_value = "ByteDance/Sa2VA-1B")]
    pub model: String,
    #[command(flatten)]
    pub rt: RuntimeArgs,
    /// Sampling temperature; 0 (default) is greedy and deterministic.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Nucleus sampling threshold (with --temperature > 0).
    #[arg(long)]
    pub top_p: Option<f64>,
    #[arg(long, default_value_t = DEFAULT_SEED)]
    pub seed: u64,
    /// Print one JSON object (answer, token ids, timings) instead of streaming text.
    #[arg(long)]
    pub json: bool,
    /// Decode without keeping a depth block well-formed (for diagnosis).
    #[arg(long)]
    pub no_constrain: bool,
    /// Write the spatial outputs here: mask-N.png per [SEG], overlay.png, depth.png (16-bit),
    /// depth_color.png, answer.json.
    #[arg(long, value_name = "DIR")]
    pub save_dir: Option<PathBuf>,
    /// Many questions with the model loaded once: a JSONL file (`-` = stdin) of
    /// `{"id": ANY, "image": PATH, "question": STR}`; one `--json` object per request on stdout
    /// (compact, one line, plus `id`), in input order; `{id}` in --save-dir is the request id.
    #[arg(long, value_name = "FILE.jsonl", conflicts_with_all = ["image", "question"])]
    pub batch: Option<PathBuf>,
}

/// The seed of `--seed`'s default (only sampling with --temperature > 0 uses it).
pub(super) const DEFAULT_SEED: u64 = 299792458;

/// What one answered request needs besides the model's reply.
pub(super) struct Context<'a> {
    pub dir: &'a std::path::Path,
    pub device: &'a candle_core::Device,
    pub dtype: candle_core::DType,
    pub load_s: f64,
}

/// A question must say something (the same rule for the CLI, `--batch` and `serve`).
pub(super) fn check_question(q: &str) -> Result<()> {
    if q.trim().is_empty() {
        return Err(Error::Usage("the question is empty".into()));
    }
    Ok(())
}

/// Answer `question` about the photo and return the `--json` object, which `ask --json`,
/// `ask --batch` and `serve` all answer; `on_token` sees every generated id (for streaming).
#[allow(clippy::too_many_arguments)]
pub(super) fn ask_json(
    g: &mut Grounder,
    img: &image::RgbImage,
    vision: &crate::models::internvl::chat::Vision,
    question: &str,
    ro: &RespondOptions,
    on_token: impl FnMut(u32),
    save_dir: Option<&std::path::Path>,
    c: &Context,
) -> Result<serde_json::Value> {
    check_question(question)?;
    let r = g.respond(img, vision, &format!("<image>\n{question}"), ro, on_token)?;
    answer_json(&r, vision, img, save_dir, c)
}

/// The `--json` object of one reply; the spatial files go to `save_dir` when given.
fn answer_json(
    r: &crate::models::perceptio::SpatialAnswer,
    vision: &crate::models::internvl::chat::Vision,
    img: &image::RgbImage,
    save_dir: Option<&std::path::Path>,
    c: &Context,
) -> Result<serde_json::Value> {
    let segments: Vec<serde_json::Value> = r
        .segments
        .iter()
        .map(|s| -> Result<serde_json::Value> {
            let mut v = super::segment::mask_summary(&s.mask)?;
            v["score"] = serde_json::json!(s.score);
            v["object_score"] = serde_json::json!(s.object_score);
            Ok(v)
        })
        .collect::<Result<_>>()?;
    let depth = match &r.depth {
        Some(d) => match &d.block {
            Ok(b) => serde_json::json!({"tokens": b.codes, "grid": [b.grid.0, b.grid.1]}),
            Err(e) => serde_json::json!({"error": e.to_string()}),
        },
        None => serde_json::Value::Null,
    };
    if let Some(dir) = save_dir {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        for (i, s) in r.segments.iter().enumerate() {
            crate::util::atomic::write(
                &dir.join(format!("mask-{}.png", i + 1)),
                &crate::render::mask_png(&s.mask)?,
            )?;
        }
        if !r.segments.is_empty() {
            let ms: Vec<&crate::mask::Mask> = r.segments.iter().map(|s| &s.mask).collect();
            crate::util::atomic::write(&dir.join("overlay.png"), &crate::render::overlay_png(img, &ms)?)?;
        }
        if let Some(map) = r.depth.as_ref().and_then(|d| d.map.as_ref()) {
            let unit = map.to_unit();
            crate::render::depth::write_png16(&dir.join("depth.png"), &unit, map.width, map.height)?;
            crate::render::depth::write_turbo_png(&dir.join("depth_color.png"), &unit, map.width, map.height)?;
        }
    }
    let v = serde_json::json!({
        "answer": r.answer,
        "segments": segments,
        "depth": depth,
        "text_with_spatial_tokens": r.text_with_spatial_tokens,
        "token_ids": r.token_ids,
        "tokens_generated": r.token_ids.len(),
        "prompt_tokens": r.prompt_tokens,
        "tiles": vision.n_tiles,
        "grid": [vision.grid.cols, vision.grid.rows],
        "model": c.dir,
        "device": format!("{:?}", c.device),
        "dtype": format!("{:?}", c.dtype).to_lowercase(),
        "timings": {
            "load_s": c.load_s,
            "vision_s": vision.secs,
            "llm_s": r.llm_s,
            "sam2_s": r.sam2_s,
            "prefill_s": r.prefill_s,
            "prefill_tok_per_s": r.prompt_tokens as f64 / r.prefill_s.max(1e-9),
            "decode_s": r.decode_s,
            "decode_tok_per_s": r.token_ids.len() as f64 / r.decode_s.max(1e-9),
        },
    });
    if let Some(dir) = save_dir {
        crate::util::atomic::write(
            &dir.join("answer.json"),
            serde_json::to_string_pretty(&v).unwrap_or_default().as_bytes(),
        )?;
    }
    Ok(v)
}

pub fn run(a: AskArgs) -> Result<()> {
    if let Some(b) = &a.batch {
        return run_batch(&a, b);
    }
    let question = a.question.as_deref().unwrap_or_default();
    check_question(question)?;
    let _trace = a.rt.start_trace()?;
    let (device, dtype) = a.rt.device_dtype()?;
    let img = crate::preprocess::image_io::load_rgb(a.image.as_deref().unwrap_or(std::path::Path::new("-")))?;
    let t_load = std::time::Instant::now();
    let (ck, lo) = a.rt.open_model(&a.model, &device, dtype)?;
    let dir = ck.dir.clone();
    let mut g = Grounder::load(&ck, &lo)?;
    drop(ck);
    let c = Context {
        dir: &dir,
        device: &device,
        dtype,
        load_s: t_load.elapsed().as_secs_f64(),
    };
    let max_tiles = a.rt.tiles(&device, g.chat.default_max_tiles());
    let stream = !a.json;
    let tokenizer = g.chat.tokenizer().clone();
    let stops = g.chat.stop_ids().to_vec();
    let mut out = std::io::stdout().lock();
    let mut shown = String::new();
    let mut ids: Vec<u32> = Vec::new();
    let vision = g.vision(&img, max_tiles)?;
    let v = ask_json(
        &mut g,
        &img,
        &vision,
        question,
        &respond_options(&a),
        |id| {
            if !stream || stops.contains(&id) {
                return;
            }
            ids.push(id);
            if let Ok(text) = tokenizer.decode(&ids, false) {
                if text.len() > shown.len() && !text.ends_with('\u{fffd}') && text.starts_with(&shown) {
                    let _ = out.write_all(&text.as_bytes()[shown.len()..]);
                    let _ = out.flush();
                    shown = text;
                }
            }
        },
        a.save_dir.as_deref(),
        &c,
    )?;
    let w = |e: std::io::Error| Error::io("<stdout>", e);
    if a.json {
        serde_json::to_writer_pretty(&mut out, &v).map_err(|e| w(e.into()))?;
        writeln!(out).map_err(w)?;
    } else {
        // Anything the stream held back (an incomplete UTF-8 tail) goes out now.
        let full = tokenizer.decode(&ids, false).unwrap_or_default();
        if full.len() > shown.len() && full.starts_with(&shown) {
            out.write_all(&full.as_bytes()[shown.len()..]).map_err(w)?;
        }
        writeln!(out).map_err(w)?;
    }
    Ok(())
}

fn respond_options(a: &AskArgs) -> RespondOptions {
    ask_options(a.rt.max_new_tokens, a.temperature, a.top_p, a.seed, !a.no_constrain)
}

/// How `ask` decodes (the server passes the CLI's defaults: greedy, constrained).
pub(super) fn ask_options(
    max_new_tokens: usize,
    temperature: f64,
    top_p: Option<f64>,
    seed: u64,
    constrain: bool,
) -> RespondOptions {
    let generation = GenerateOptions {
        max_new_tokens,
        temperature,
        top_p,
        seed,
        stop_ids: vec![],
        stop_text: None,
    };
    RespondOptions {
        generation,
        constrain,
        force_depth: false,
    }
}

/// One request line of `--batch`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchRequest {
    id: serde_json::Value,
    image: PathBuf,
    question: String,
}

/// `--batch`: every request through one loaded model, in input order; a failing request becomes
/// an error line and the batch goes on; the run fails (exit 1) at the end if any did.
fn run_batch(a: &AskArgs, batch: &std::path::Path) -> Result<()> {
    let _trace = a.rt.start_trace()?;
    let (device, dtype) = a.rt.device_dtype()?;
    let lines = super::batch::read_lines(batch)?;
    let t_load = std::time::Instant::now();
    let (ck, lo) = a.rt.open_model(&a.model, &device, dtype)?;
    let dir = ck.dir.clone();
    let mut g = Grounder::load(&ck, &lo)?;
    drop(ck);
    let load_s = t_load.elapsed().as_secs_f64();
    let max_tiles = a.rt.tiles(&device, g.chat.default_max_tiles());
    let ro = respond_options(a);
    let mut visions = super::batch::VisionCache::default();
    let failed = super::batch::for_each(batch, &lines, "ask", |k, req: BatchRequest| {
        check_question(&req.question)?;
        let e = visions.get(&req.image, |img| g.vision(img, max_tiles))?;
        let (img, vision) = (&e.0, &e.1);
        let save = a.save_dir.as_deref().map(|d| super::batch::with_id(d, &req.id));
        let c = Context {
            dir: &dir,
            device: &device,
            dtype,
            load_s: if k == 0 { load_s } else { 0.0 },
        };
        let mut v = ask_json(&mut g, img, vision, &req.question, &ro, |_| {}, save.as_deref(), &c)?;
        v["id"] = req.id.clone();
        Ok(vec![v])
    })?;
    if failed > 0 {
        return Err(Error::at(
            batch.display().to_string(),
            format!("{failed} request(s) failed (see their error lines)"),
        ));
    }
    Ok(())
}
