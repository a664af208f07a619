//! Options every model-running command shares (`ask`, `segment`, `depth`, `eval --model`).

use crate::error::Result;
use crate::hub::HubConfig;
use crate::models::checkpoint::Checkpoint;
use crate::models::device::{parse_device, parse_dtype};
use crate::models::perceptio::depth::DepthConfig;
use crate::models::perceptio::LoadOptions;
use candle_core::{DType, Device};
use clap::Args;

/// CPU default tile budget: fewer tiles keep a laptop responsive (the reference uses 12).
const CPU_DEFAULT_TILES: usize = 6;

#[derive(Args, Debug, Clone)]
pub struct RuntimeArgs {
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
    /// Use only the local cache for hub models.
    #[arg(long)]
    pub offline: bool,
    /// Write the run's tracing spans (one per model module) as a Chrome trace to FILE.
    #[arg(long, value_name = "FILE")]
    pub trace: Option<std::path::PathBuf>,
    /// Decode with Q8_0 copies of the LLM's linear layers (CPU only; ~3x less memory traffic per
    /// token; the prompt, and so every [SEG] mask, stays f32). Agreement with f32:
    /// docs/performance.md.
    #[arg(long, value_name = "q8_0")]
    pub quantize: Option<crate::models::internvl::DecodeQuant>,
}

impl RuntimeArgs {
    /// Start `--trace` if asked; keep the value alive for the whole run.
    pub fn start_trace(&self) -> Result<Option<super::trace::Trace>> {
        self.trace.as_deref().map(super::trace::Trace::start).transpose()
    }

    /// The device and dtype asked for.
    pub fn device_dtype(&self) -> Result<(Device, DType)> {
        let device = parse_device(&self.device)?;
        let dtype = parse_dtype(&self.dtype, &device)?;
        Ok((device, dtype))
    }

    /// Hub settings from the environment, with --offline.
    pub fn hub(&self) -> HubConfig {
        let mut c = HubConfig::from_env();
        c.offline |= self.offline;
        c
    }

    /// Resolve `--model` (a directory, or a hub repo fetched or found in the cache with these
    /// settings), open it once, and resolve a VQ-VAE its `perceptio.depth` block places in another
    /// repo with the same settings, so `--offline` and the cache location hold for both.
    pub fn open_model(&self, spec: &str, device: &Device, dtype: DType) -> Result<(Checkpoint, LoadOptions)> {
        let hub = self.hub();
        let dir = crate::hub::resolve_model(spec, &hub)?;
        let ck = Checkpoint::open(&dir, dtype, device)?;
        if let Some(note) = crate::models::internvl::config::superseded_note(&ck.config) {
            eprintln!("perceptio: warning: {note}");
        }
        let vqvae_dir = match DepthConfig::from_model_config(&ck.config, &dir.join("config.json"))? {
            Some(d) => d.vqvae_repo().map(|r| crate::hub::resolve_model(r, &hub)).transpose()?,
            None => None,
        };
        Ok((
            ck,
            LoadOptions {
                require_grounding: false,
                vqvae_dir,
                quantize_decode: self.quantize,
            },
        ))
    }

    /// --max-tiles, else the model's default (capped at 6 on CPU).
    pub fn tiles(&self, device: &Device, model_default: usize) -> usize {
        self.max_tiles.unwrap_or(if device.is_cpu() {
            CPU_DEFAULT_TILES.min(model_default)
        } else {
            model_default
        })
    }
}
