//! AURORA's depth VQ-VAE (AiT `vae/models/VQVAE.py`, config `vae/configs/depth/ait_depth_vqvae.py`):
//! a strided-conv encoder to a (H/32, W/32) grid of `codebook_dim` latents, nearest-code
//! quantisation against a `num_tokens` codebook, and a transposed-conv decoder back to a depth
//! map. `<DEPTH_k>` tokens are these code indices, row-major over the grid.
//!
//! Checkpoint keys are the reference's own: `encoder.{i}.*` / `decoder.{i}.*` are indices into
//! its `nn.Sequential` (ReLUs take indices too; a ResBlock is `{i}.net.{0,2,4}`), and the codebook
//! is the EMA quantiser's buffer `_vq_vae._embedding` (`_vq_vae._embedding.weight` for the
//! non-EMA quantiser). The EMA statistics `_vq_vae._ema_cluster_size` / `_vq_vae._ema_w` are
//! training state and are ignored. AiT saves `{'weights': state_dict}` of the DDP wrapper, so
//! [`load`] also strips a `module.` prefix.

pub mod config;
pub mod preprocess;

pub use config::Config;

use crate::models::nn::{conv2d, conv2d_act, conv_transpose2d_act};
use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig, VarBuilder};
use std::collections::HashMap;
use std::path::Path;

/// AiT's `ResBlock_v1`: x + conv1(relu(conv3(relu(conv3(x))))), keys `net.0`, `net.2`, `net.4`.
#[derive(Debug, Clone)]
struct ResBlock {
    c0: Conv2d,
    c1: Conv2d,
    c2: Conv2d,
    span: tracing::Span,
}

impl ResBlock {
    fn new(chan: usize, vb: VarBuilder) -> Result<Self> {
        let p1 = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        Ok(Self {
            c0: candle_nn::conv2d(chan, chan, 3, p1, vb.pp("net.0"))?,
            c1: candle_nn::conv2d(chan, chan, 3, p1, vb.pp("net.2"))?,
            c2: candle_nn::conv2d(chan, chan, 1, Default::default(), vb.pp("net.4"))?,
            span: tracing::span!(tracing::Level::TRACE, "vqvae-resblock"),
        })
    }
}

impl Module for ResBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let _g = self.span.enter();
        let h = conv2d_act(&self.c0, x, true)?;
        let h = conv2d_act(&self.c1, &h, true)?;
        conv2d(&self.c2, &h)? + x
    }
}

/// Conv4s2+ReLU, `layer_num` × (Conv4s2 doubling + ReLU), ResBlocks, 1×1 to `codebook_dim`.
#[derive(Debug, Clone)]
pub struct Encoder {
    down: Vec<Conv2d>,
    res: Vec<ResBlock>,
    out: Conv2d,
    span: tracing::Span,
}

impl Encoder {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let s2 = Conv2dConfig {
            padding: 1,
            stride: 2,
            ..Default::default()
        };
        let (mut dim, mut idx) = (cfg.hidden_dim, 0);
        let mut down = vec![candle_nn::conv2d(cfg.channels, dim, 4, s2, vb.pp(idx))?];
        idx += 2;
        for _ in 0..cfg.layer_num() {
            down.push(candle_nn::conv2d(dim, dim * 2, 4, s2, vb.pp(idx))?);
            dim *= 2;
            idx += 2;
        }
        let mut res = Vec::with_capacity(cfg.num_resnet_blocks);
        for _ in 0..cfg.num_resnet_blocks {
            res.push(ResBlock::new(dim, vb.pp(idx))?);
            idx += 1;
        }
        let out = candle_nn::conv2d(dim, cfg.codebook_dim, 1, Default::default(), vb.pp(idx))?;
        Ok(Self {
            down,
            res,
            out,
            span: tracing::span!(tracing::Level::TRACE, "vqvae-encoder"),
        })
    }
}

impl Module for Encoder {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let _g = self.span.enter();
        let mut h = x.clone();
        for c in &self.down {
            h = conv2d_act(c, &h, true)?;
        }
        for r in &self.res {
            h = r.forward(&h)?;
        }
        conv2d(&self.out, &h)
    }
}

/// 1×1 from `codebook_dim`+ReLU, ResBlocks, ConvT4s2+ReLU, `layer_num` × (ConvT4s2 halving +
/// ReLU), 1×1 to `channels`.
#[derive(Debug, Clone)]
pub struct Decoder {
    inp: Conv2d,
    res: Vec<ResBlock>,
    up: Vec<ConvTranspose2d>,
    out: Conv2d,
    span: tracing::Span,
}

impl Decoder {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let mut dim = cfg.hidden_dim * cfg.downsample_ratio / 2;
        let inp = candle_nn::conv2d(cfg.codebook_dim, dim, 1, Default::default(), vb.pp(0))?;
        let mut idx = 2;
        let mut res = Vec::with_capacity(cfg.num_resnet_blocks);
        for _ in 0..cfg.num_resnet_blocks {
            res.push(ResBlock::new(dim, vb.pp(idx))?);
            idx += 1;
        }
        let s2 = ConvTranspose2dConfig {
            padding: 1,
            stride: 2,
            output_padding: 0,
            dilation: 1,
        };
        let mut up = vec![candle_nn::conv_transpose2d(dim, dim, 4, s2, vb.pp(idx))?];
        idx += 2;
        for _ in 0..cfg.layer_num() {
            up.push(candle_nn::conv_transpose2d(dim, dim / 2, 4, s2, vb.pp(idx))?);
            dim /= 2;
            idx += 2;
        }
        let out = candle_nn::conv2d(dim, cfg.channels, 1, Default::default(), vb.pp(idx))?;
        Ok(Self {
            inp,
            res,
            up,
            out,
            span: tracing::span!(tracing::Level::TRACE, "vqvae-decoder"),
        })
    }
}

impl Module for Decoder {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let _g = self.span.enter();
        let mut h = conv2d_act(&self.inp, x, true)?;
        for r in &self.res {
            h = r.forward(&h)?;
        }
        for c in &self.up {
            h = conv_transpose2d_act(c, &h, true)?;
        }
        conv2d(&self.out, &h)
    }
}

/// The depth VQ-VAE: encoder, codebook (K, D) and decoder.
#[derive(Debug, Clone)]
pub struct VqVae {
    pub encoder: Encoder,
    pub decoder: Decoder,
    codebook: Tensor,
    /// The codebook transposed to (D, K), contiguous f32, and its squared norms ‖e‖² (K): made
    /// once, not per [`VqVae::quantize`] call (the product with a transposed view took twice as long).
    nearest: (Tensor, Vec<f32>),
    cfg: Config,
    span: tracing::Span,
}

impl VqVae {
    /// Build from a `VarBuilder` rooted at the model (keys `encoder.*`, `decoder.*`, `_vq_vae.*`).
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let cb = vb.pp("_vq_vae");
        let shape = (cfg.num_tokens, cfg.codebook_dim);
        // EMA quantiser: a buffer; plain VectorQuantizer: an nn.Embedding. Whichever the file
        // has wins; with neither, the error names the one the config implies.
        let codebook = if cb.contains_tensor("_embedding") {
            cb.get(shape, "_embedding")?
        } else if cb.contains_tensor("_embedding.weight") || cfg.ema_decay <= 0.0 {
            cb.get(shape, "_embedding.weight")?
        } else {
            cb.get(shape, "_embedding")?
        };
        let e = codebook.to_dtype(DType::F32)?;
        let nearest = (e.t()?.contiguous()?, e.sqr()?.sum(1)?.to_vec1()?);
        Ok(Self {
            nearest,
            encoder: Encoder::new(cfg, vb.pp("encoder"))?,
            decoder: Decoder::new(cfg, vb.pp("decoder"))?,
            codebook,
            cfg: cfg.clone(),
            span: tracing::span!(tracing::Level::TRACE, "vqvae"),
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The codebook, (num_tokens, codebook_dim).
    pub fn codebook(&self) -> &Tensor {
        &self.codebook
    }

    /// Encoder latents before quantisation: (b, C, H, W) → (b, codebook_dim, H/32, W/32).
    /// With AURORA's config (`use_norm` false) the input is the [−1, 1] map of
    /// [`preprocess::normalize_depth`]; with `use_norm` it is the raw map, as in AiT's `forward`.
    pub fn encode_latents(&self, x: &Tensor) -> Result<Tensor> {
        let _g = self.span.enter();
        let x = if self.cfg.use_norm {
            ((x / self.cfg.max_value)? - 0.5)?.affine(2.0, 0.0)?
        } else {
            x.clone()
        };
        self.encoder.forward(&x)
    }

    /// Nearest code per latent, (b, D, gh, gw) → (b, gh, gw) u32, with the reference's distance
    /// `‖x‖² + ‖e‖² − 2·x·e` (f32) and `torch.argmin`'s tie rule (first index).
    pub fn quantize(&self, latents: &Tensor) -> Result<Tensor> {
        let _g = self.span.enter();
        let (b, d, gh, gw) = latents.dims4()?;
        if d != self.cfg.codebook_dim {
            candle_core::bail!(
                "vqvae quantize: latents have {d} channels, the codebook {}",
                self.cfg.codebook_dim
            )
        }
        let flat = latents
            .permute((0, 2, 3, 1))?
            .reshape((b * gh * gw, d))?
            .to_dtype(DType::F32)?;
        let (e_t, e2) = &self.nearest;
        let x2: Vec<f32> = flat.sqr()?.sum(1)?.to_vec1()?;
        let xe = flat.matmul(e_t)?.flatten_all()?.to_vec1::<f32>()?;
        // (x2 + e2) − 2·xe per row, in the f32 order of the reference's broadcast ops, and the
        // first minimum; one pass instead of three tensor ops and a Vec per row.
        let mut row = vec![0f32; e2.len()];
        let codes: Vec<u32> = xe
            .chunks_exact(e2.len().max(1))
            .zip(&x2)
            .map(|(xe, &x2)| {
                for ((d, &e2), &xe) in row.iter_mut().zip(e2.iter()).zip(xe) {
                    *d = (x2 + e2) - xe * 2.0;
                }
                argmin_first(&row)
            })
            .collect();
        Tensor::from_vec(codes, (b, gh, gw), latents.device())
    }

    /// Depth map → code grid: (b, C, H, W) → (b, H/32, W/32) u32 (`get_codes.py`).
    pub fn encode(&self, x: &Tensor) -> Result<Tensor> {
        self.quantize(&self.encode_latents(x)?)
    }

    /// Codebook vectors of a code grid: (b, gh, gw) integer → (b, gh, gw, D).
    pub fn embed_codes(&self, codes: &Tensor) -> Result<Tensor> {
        let (b, gh, gw) = codes.dims3()?;
        if b * gh * gw == 0 {
            candle_core::bail!("vqvae: empty code grid {:?}", codes.dims())
        }
        let idx = codes.flatten_all()?.to_dtype(DType::U32)?;
        let max = idx.max(0)?.to_scalar::<u32>()? as usize;
        if max >= self.cfg.num_tokens {
            candle_core::bail!(
                "vqvae: code {max} is out of range for a {}-entry codebook",
                self.cfg.num_tokens
            )
        }
        self.codebook
            .index_select(&idx, 0)?
            .reshape((b, gh, gw, self.cfg.codebook_dim))
    }

    /// Code grid → depth map: (b, gh, gw) → (b, C, 32·gh, 32·gw) (AiT `decode`; in [−1, 1] for
    /// AURORA, see [`preprocess::denormalize`]).
    pub fn decode(&self, codes: &Tensor) -> Result<Tensor> {
        self.decode_embeddings(&self.embed_codes(codes)?)
    }

    /// Decoder on arbitrary (e.g. soft-merged) embeddings: (b, gh, gw, D) → (b, C, H, W).
    pub fn decode_embeddings(&self, e: &Tensor) -> Result<Tensor> {
        let _g = self.span.enter();
        let x = e.permute((0, 3, 1, 2))?.contiguous()?;
        let out = self.decoder.forward(&x)?;
        if self.cfg.use_norm {
            (out * 0.5)?.affine(self.cfg.max_value, 0.5 * self.cfg.max_value)
        } else {
            Ok(out)
        }
    }

    /// Soft merge: softmax(z/τ) over the code axis times the codebook, (b, gh, gw, K) →
    /// (b, gh, gw, D); differentiable in z, so a reconstruction loss can reach the logits.
    pub fn soft_embeddings(&self, code_logits: &Tensor, tau: f64) -> Result<Tensor> {
        soft_merge(code_logits, &self.codebook, tau)
    }
}

/// softmax(z/τ)·C over the last axis: (…, K) × (K, D) → (…, D).
pub fn soft_merge(code_logits: &Tensor, codebook: &Tensor, tau: f64) -> Result<Tensor> {
    if !(tau.is_finite() && tau > 0.0) {
        candle_core::bail!("soft merge: temperature must be finite and > 0, got {tau}")
    }
    let w = candle_nn::ops::softmax(&(code_logits / tau)?, D::Minus1)?;
    w.broadcast_matmul(&codebook.to_dtype(w.dtype())?)
}

/// Index of the smallest value, first on ties (torch.argmin); NaN compares as "not smaller".
fn argmin_first(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v < row[best] || row[best].is_nan() && !v.is_nan() {
            best = i;
        }
    }
    best as u32
}

/// Load an AURORA/AiT VQ-VAE checkpoint: AiT's `.pt` (`{'weights': state_dict}`, a bare
/// state_dict also accepted) or `.safetensors`; a DDP `module.` prefix is stripped.
pub fn load(path: &Path, cfg: &Config, dtype: DType, device: &Device) -> crate::Result<VqVae> {
    cfg.validate()?;
    let fail = |e: candle_core::Error| crate::Error::input(path, crate::error::candle_message(&e));
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    if !path.is_file() {
        return Err(crate::Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        ));
    }
    let tensors: Vec<(String, Tensor)> = if ext == "safetensors" {
        candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(fail)?
            .into_iter()
            .collect()
    } else {
        match candle_core::pickle::read_all_with_key(path, Some("weights")) {
            Ok(t) if !t.is_empty() => t,
            _ => candle_core::pickle::read_all(path).map_err(fail)?,
        }
    };
    let map: HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(k, v)| (k.strip_prefix("module.").map(str::to_string).unwrap_or(k), v))
        .collect();
    let vb = VarBuilder::from_tensors(map, dtype, device);
    VqVae::new(cfg, vb).map_err(|e| {
        crate::Error::input(
            path,
            format!(
                "not a depth VQ-VAE checkpoint for this config: {}",
                crate::error::candle_message(&e)
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmin_takes_the_first_of_ties_like_torch() {
        assert_eq!(argmin_first(&[3.0, 1.0, 1.0, 2.0]), 1);
        assert_eq!(argmin_first(&[0.0, 0.0]), 0);
        assert_eq!(argmin_first(&[f32::NAN, 1.0]), 1);
    }

    #[test]
    fn aurora_geometry() {
        let c = Config::default();
        assert_eq!((c.layer_num(), c.grid()), (4, (10, 10)));
        c.validate().unwrap();
        let bad = Config {
            residual_type: "v2".into(),
            ..Config::default()
        };
        assert!(bad.validate().unwrap_err().to_string().contains("v2"));
        let bad = Config {
            downsample_ratio: 1,
            ..Config::default()
        };
        assert!(VqVae::new(&bad, VarBuilder::zeros(DType::F32, &Device::Cpu)).is_err());
    }
}
