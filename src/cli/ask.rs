//! `perceptio ask IMAGE QUESTION`: answer a question about an image with an InternVL/Sa2VA model.

use crate::error::{Error, Result};
use crate::hub::{self, HubConfig};
use crate::models::device::{parse_device, parse_dtype};
use crate::models::generate::GenerateOptions;
use crate::models::internvl::chat::ChatModel;
use clap::Args;
use std::io::Write;
use std::path::PathBuf;

/// CPU default tile budget: fewer tiles keep a laptop responsive (the reference uses 12).
const CPU_DEFAULT_TILES: usize = 6;

#[derive(Args, Debug)]
pub struct AskArgs {
    /// Image file (PNG/JPEG), or `-` for stdin.
    pub image: PathBuf,
    /// The question.
    pub question: String,
    /// Hub repo (`org/name[@rev]`) or a local model directory.
    #[arg(long, default_value = "ByteDance/Sa2VA-1B")]
    pub model: String,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// auto (f32 on CPU, bf16 on CUDA), f32, f16 or bf16.
    #[arg(long, default_value = "auto")]
    pub dtype: String,
    /// Maximum image tiles (default: the reference's budget — 12 for Sa2VA, max_dynamic_patch
    /// for InternVL — on CUDA, and 6 on CPU to trade a little accuracy for speed).
    #[arg(long)]
    pub max_tiles: Option<usize>,
    #[arg(long, default_value_t = 512)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 (default) is greedy and deterministic.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Nucleus sampling threshold (with --temperature > 0).
    #[arg(long)]
    pub top_p: Option<f64>,
    #[arg(long, default_value_t = 299792458)]
    pub seed: u64,
    /// Print one JSON object (answer, token ids, timings) instead of streaming text.
    #[arg(long)]
    pub json: bool,
    /// Use only the local cache for hub models.
    #[arg(long)]
    pub offline: bool,
}

pub fn run(a: AskArgs) -> Result<()> {
    if a.question.trim().is_empty() {
        return Err(Error::Usage("the question is empty".into()));
    }
    crate::util::tune_allocator();
    let device = parse_device(&a.device)?;
    let dtype = parse_dtype(&a.dtype, &device)?;
    let img = crate::preprocess::image_io::load_rgb(&a.image)?;
    let mut hub_cfg = HubConfig::from_env();
    hub_cfg.offline |= a.offline;
    let dir = hub::resolve_model(&a.model, &hub_cfg)?;
    let t_load = std::time::Instant::now();
    let mut chat = ChatModel::load(&dir, &device, dtype)?;
    let load_secs = t_load.elapsed().as_secs_f64();
    let max_tiles = a.max_tiles.unwrap_or(if device.is_cpu() { CPU_DEFAULT_TILES.min(chat.config().default_max_tiles()) } else { chat.config().default_max_tiles() });
    let opts = GenerateOptions { max_new_tokens: a.max_new_tokens, temperature: a.temperature, top_p: a.top_p, seed: a.seed, stop_ids: vec![] };
    let stream = !a.json;
    let tokenizer = chat.tokenizer.clone();
    let stops = chat.stop_ids.clone();
    let mut out = std::io::stdout().lock();
    let mut shown = String::new();
    let mut ids: Vec<u32> = Vec::new();
    let answer = chat.ask(&img, &a.question, max_tiles, &opts, |id| {
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
    })?;
    let w = |e: std::io::Error| Error::io("<stdout>", e);
    if a.json {
        let g = &answer.generation;
        let v = serde_json::json!({
            "answer": answer.text,
            "token_ids": g.ids,
            "tokens_generated": g.ids.len(),
            "stopped": g.stopped,
            "prompt_tokens": g.prompt_tokens,
            "tiles": answer.n_tiles,
            "grid": [answer.grid.cols, answer.grid.rows],
            "model": dir,
            "device": format!("{:?}", device),
            "dtype": format!("{dtype:?}").to_lowercase(),
            "timings": {
                "load_s": load_secs,
                "vision_s": answer.vision_secs,
                "prefill_s": g.prefill_secs,
                "decode_s": g.decode_secs,
                "prefill_tok_per_s": g.prompt_tokens as f64 / g.prefill_secs.max(1e-9),
                "decode_tok_per_s": g.ids.len() as f64 / g.decode_secs.max(1e-9),
            },
        });
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
