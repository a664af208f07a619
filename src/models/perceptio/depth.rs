//! Perceptio's depth tokens in a checkpoint: the `perceptio.depth` block of `config.json` (token
//! strings and grid, where the VQ-VAE weights are, the depth prompt), the resolved token ids, the
//! VQ-VAE, and code grid → depth map at the photo's size.

use crate::depthmap::{DepthMap, DepthScale};
use crate::error::{Error, Result};
use crate::models::checkpoint::Checkpoint;
use crate::models::depth_tokens::{DepthBlock, DepthConstraint, DepthTokenIds, DepthTokenSpec};
use crate::models::vqvae::{self, VqVae};
use candle_core::{DType, Device};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The default depth request: AURORA's CoT asks "what is the depth map for the image?".
pub const DEFAULT_DEPTH_PROMPT: &str = "<image>\nWhat is the depth map for the image?";

/// `config.json` → `"perceptio": {"depth": {...}}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerceptioBlock {
    pub depth: Option<DepthConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DepthConfig {
    /// Token strings and grid (AURORA defaults).
    #[serde(default)]
    pub tokens: DepthTokenSpec,
    /// Where the VQ-VAE weights are.
    pub vqvae: VqvaeSource,
    /// VQ-VAE geometry (AURORA defaults: 320², 128 codes of dim 512).
    #[serde(default)]
    pub vqvae_config: vqvae::Config,
    /// User turn `perceptio depth` sends.
    #[serde(default = "default_prompt")]
    pub prompt: String,
}

fn default_prompt() -> String {
    DEFAULT_DEPTH_PROMPT.into()
}

/// VQ-VAE weights: inside the model's safetensors under a key prefix, a file in the model
/// directory (AiT `.pt` or safetensors), or a file of another hub repo.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VqvaeSource {
    pub prefix: Option<String>,
    pub file: Option<String>,
    pub repo: Option<String>,
}

/// The resolved depth path of a model.
pub struct DepthHead {
    pub ids: DepthTokenIds,
    pub vqvae: VqVae,
    pub prompt: String,
}

impl DepthConfig {
    /// The `perceptio.depth` block of a model's `config.json` (`cfg_path` names it in errors);
    /// `Ok(None)` when there is none.
    pub fn from_model_config(config: &serde_json::Value, cfg_path: &Path) -> Result<Option<Self>> {
        let Some(block) = config.get("perceptio") else {
            return Ok(None);
        };
        let b: PerceptioBlock = serde_json::from_value(block.clone())
            .map_err(|e| Error::input(cfg_path, format!("invalid `perceptio` block: {e}")))?;
        Ok(b.depth)
    }

    /// The hub repo holding the VQ-VAE, when the block names one: the caller resolves it (the
    /// models never touch the hub) and passes the directory to [`DepthHead::from_checkpoint`].
    pub fn vqvae_repo(&self) -> Option<&str> {
        self.vqvae.repo.as_deref()
    }
}

impl DepthHead {
    /// The depth head of an opened checkpoint, from its `perceptio.depth` block; `Ok(None)` when
    /// there is none. `vqvae_dir` is the resolved directory of the block's `vqvae.repo`.
    pub fn from_checkpoint(
        ck: &Checkpoint,
        tokenizer: &crate::models::tokenizer::Tokenizer,
        vqvae_dir: Option<&Path>,
    ) -> Result<Option<Self>> {
        let cfg_path = ck.dir.join("config.json");
        let Some(d) = DepthConfig::from_model_config(&ck.config, &cfg_path)? else {
            return Ok(None);
        };
        let ids = d.tokens.resolve(tokenizer)?;
        if d.vqvae_config.grid() != d.tokens.grid || d.vqvae_config.num_tokens != d.tokens.codebook_size {
            return Err(Error::input(
                &cfg_path,
                format!(
                    "perceptio.depth: the tokens describe a {:?} grid of {} codes but the VQ-VAE config gives {:?} and {}",
                    d.tokens.grid,
                    d.tokens.codebook_size,
                    d.vqvae_config.grid(),
                    d.vqvae_config.num_tokens
                ),
            ));
        }
        d.vqvae_config.validate()?;
        // The VQ-VAE runs in f32 whatever the LLM's dtype (its codebook distances decide codes).
        let vqvae = match (&d.vqvae.prefix, &d.vqvae.file, &d.vqvae.repo) {
            (Some(prefix), None, None) => VqVae::new(
                &d.vqvae_config,
                ck.vb().set_dtype(DType::F32).pp(prefix.trim_end_matches('.')),
            )
            .map_err(|e| {
                Error::input(
                    &cfg_path,
                    format!("VQ-VAE under `{prefix}`: {}", crate::error::candle_message(&e)),
                )
            })?,
            (None, Some(file), repo) => {
                let base: PathBuf = match (repo, vqvae_dir) {
                    (None, _) => ck.dir.clone(),
                    (Some(_), Some(d)) => d.to_path_buf(),
                    (Some(r), None) => {
                        return Err(Error::input(
                            &cfg_path,
                            format!("perceptio.depth.vqvae names the repo {r:?}: resolve it and pass its directory"),
                        ))
                    }
                };
                vqvae::load(&base.join(file), &d.vqvae_config, DType::F32, ck.device())?
            }
            _ => {
                return Err(Error::input(
                    &cfg_path,
                    "perceptio.depth.vqvae: give either {\"prefix\"} or {\"file\"[, \"repo\"]}",
                ))
            }
        };
        Ok(Some(Self {
            ids,
            vqvae,
            prompt: d.prompt,
        }))
    }

    pub fn constraint(&self) -> DepthConstraint {
        DepthConstraint::new(self.ids.clone())
    }

    /// Code grid → depth map at (w, h): VQ-VAE decode (its `image_size`²), back to [0, 1],
    /// bilinear (half-pixel) to the photo's size.
    pub fn decode(&self, block: &DepthBlock, (w, h): (u32, u32)) -> candle_core::Result<DepthMap> {
        let dev = self.vqvae.codebook().device();
        let codes = block.to_tensor(dev)?;
        let x = vqvae::preprocess::denormalize(&self.vqvae.decode(&codes)?.to_dtype(DType::F32)?)?;
        let x = crate::models::fastops::upsample_bilinear2d(&x, h as usize, w as usize, false)?.clamp(0f32, 1f32)?;
        let data: Vec<f32> = x.flatten_all()?.to_device(&Device::Cpu)?.to_vec1()?;
        Ok(DepthMap::new(w as usize, h as usize, data, DepthScale::Unit))
    }

    /// A depth map (disparity-like, brighter = closer) → its code grid, as AURORA made training
    /// targets (8-bit min-max, NEAREST to the VQ-VAE size, nearest code).
    pub fn encode_map(vq: &VqVae, map: &vqvae::preprocess::DepthMap) -> Result<Vec<u32>> {
        let dev = vq.codebook().device().clone();
        let x = vqvae::preprocess::normalize_depth(map, vq.config().image_size, &dev)?;
        let c = vq
            .encode(&x)
            .and_then(|c| c.flatten_all())
            .and_then(|c| c.to_dtype(DType::U32))
            .and_then(|c| c.to_vec1::<u32>());
        c.map_err(|e| Error::at("vqvae", crate::error::candle_message(&e)))
    }
}

/// The token string of a code grid: `<DEPTH_START><DEPTH_i>…<DEPTH_END>`.
pub fn token_string(spec: &DepthTokenSpec, codes: &[u32]) -> String {
    let mut s = spec.start.clone();
    for &c in codes {
        s.push_str(&spec.code_token(c as usize));
    }
    s.push_str(&spec.end);
    s
}
