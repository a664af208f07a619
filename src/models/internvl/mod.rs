//! InternVL2.5 / Sa2VA: InternViT → pixel shuffle → `mlp1` projector → LLM (Qwen2 or InternLM2),
//! with image features spliced in at the `<IMG_CONTEXT>` positions.

pub mod chat;
pub mod config;
pub mod vit;

use crate::models::nn::{LayerNorm, Linear};
use crate::models::{internlm2, qwen2};
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
pub use config::{Config, LlmArch};
use vit::InternVit;

/// The decoder behind the projector.
#[derive(Debug, Clone)]
pub enum Llm {
    Qwen2(qwen2::Model),
    InternLm2(internlm2::Model),
}

impl Llm {
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        match self {
            Llm::Qwen2(m) => m.embed(ids),
            Llm::InternLm2(m) => m.embed(ids),
        }
    }
    pub fn forward_embeds(&mut self, xs: &Tensor, offset: usize) -> Result<Tensor> {
        match self {
            Llm::Qwen2(m) => m.forward_embeds(xs, offset),
            Llm::InternLm2(m) => m.forward_embeds(xs, offset),
        }
    }
    /// See [`crate::models::nn::Decoder::forward_embeds_tail`].
    pub fn forward_embeds_tail(&mut self, xs: &Tensor, offset: usize, keep: usize) -> Result<Tensor> {
        match self {
            Llm::Qwen2(m) => m.forward_embeds_tail(xs, offset, keep),
            Llm::InternLm2(m) => m.forward_embeds_tail(xs, offset, keep),
        }
    }
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        match self {
            Llm::Qwen2(m) => m.logits(hidden),
            Llm::InternLm2(m) => m.logits(hidden),
        }
    }
    pub fn clear_kv_cache(&mut self) {
        match self {
            Llm::Qwen2(m) => m.clear_kv_cache(),
            Llm::InternLm2(m) => m.clear_kv_cache(),
        }
    }
    /// See [`crate::models::nn::Decoder::set_left_padding`].
    pub fn set_left_padding(&mut self, pads: &[usize]) {
        match self {
            Llm::Qwen2(m) => m.set_left_padding(pads),
            Llm::InternLm2(m) => m.set_left_padding(pads),
        }
    }
    /// Whether decode steps go through quantized weights (`--quantize`).
    pub fn decode_quantized(&self) -> bool {
        match self {
            Llm::Qwen2(m) => m.decode_quantized(),
            Llm::InternLm2(m) => m.decode_quantized(),
        }
    }
    /// Decode steps through quantized copies of the linear layers (the prefill keeps f32).
    pub fn quantize_for_decode(&mut self, q: DecodeQuant) -> Result<()> {
        let dtype = match q {
            DecodeQuant::Q8_0 => candle_core::quantized::GgmlDType::Q8_0,
        };
        match self {
            Llm::Qwen2(m) => m.quantize_for_decode(dtype),
            Llm::InternLm2(m) => m.quantize_for_decode(dtype),
        }
    }
}

/// A quantized weight format for the LLM's decode steps (`--quantize`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeQuant {
    /// GGML's Q8_0: blocks of 32 int8 weights with one f16 scale (8.5 bits per weight).
    Q8_0,
}

impl std::str::FromStr for DecodeQuant {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "q8_0" | "q8" => Ok(DecodeQuant::Q8_0),
            other => Err(format!("unknown quantization {other:?}: the one supported is q8_0")),
        }
    }
}

/// `mlp1`: LayerNorm(C·4) → Linear → GELU → Linear (keys `mlp1.0`, `mlp1.1`, `mlp1.3`).
#[derive(Debug, Clone)]
pub struct Projector {
    norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    span: tracing::Span,
}

impl Projector {
    pub fn new(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm: LayerNorm::new(in_dim, 1e-5, vb.pp("0"))?,
            fc1: Linear::new(in_dim, out_dim, true, vb.pp("1"))?,
            fc2: Linear::new(out_dim, out_dim, true, vb.pp("3"))?,
            span: tracing::span!(tracing::Level::TRACE, "mlp1"),
        })
    }
}

impl Module for Projector {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let _g = self.span.enter();
        self.fc2.forward(&self.fc1.forward_gelu(&self.norm.forward(xs)?)?)
    }
}

/// InternVL's pixel shuffle, following its exact view/permute sequence (not torch's
/// PixelUnshuffle channel order): (n, w, h, c) → (n, h·r, w·r, c/r²), transposed back for v2.
pub fn pixel_shuffle(x: &Tensor, ratio: f64, v2: bool) -> Result<Tensor> {
    let (n, w, h, c) = x.dims4()?;
    let hs = (h as f64 * ratio) as usize;
    let ws = (w as f64 * ratio) as usize;
    let x = x.reshape((n, w, hs, (c as f64 / ratio) as usize))?;
    let x = x.permute((0, 2, 1, 3))?.contiguous()?;
    let x = x.reshape((n, hs, ws, (c as f64 / (ratio * ratio)) as usize))?;
    if v2 {
        x.permute((0, 2, 1, 3))?.contiguous()
    } else {
        Ok(x)
    }
}

/// The whole InternVL chat model (vision part, projector, decoder).
#[derive(Debug, Clone)]
pub struct InternVl {
    pub config: Config,
    pub vision: InternVit,
    pub mlp1: Projector,
    pub llm: Llm,
    /// Sa2VA's `[SEG]` projection (Linear → ReLU → Linear), when the checkpoint has it.
    pub text_hidden_fcs: Option<(Linear, Linear)>,
    span: tracing::Span,
}

impl InternVl {
    pub fn new(config: Config, vb: VarBuilder) -> Result<Self> {
        let vision = InternVit::new(&config.vision_config, vb.pp("vision_model"))?;
        let arch = config.llm_arch().map_err(candle_core::Error::msg)?;
        let (llm, hidden) = match arch {
            LlmArch::Qwen2 => {
                let c: qwen2::Config = serde_json::from_value(config.llm_config.clone())
                    .map_err(|e| candle_core::Error::msg(format!("llm_config: {e}")))?;
                (
                    Llm::Qwen2(qwen2::Model::new(&c, vb.pp("language_model"))?),
                    c.hidden_size,
                )
            }
            LlmArch::InternLm2 => {
                let c: internlm2::Config = serde_json::from_value(config.llm_config.clone())
                    .map_err(|e| candle_core::Error::msg(format!("llm_config: {e}")))?;
                (
                    Llm::InternLm2(internlm2::Model::new(&c, vb.pp("language_model"))?),
                    c.hidden_size,
                )
            }
        };
        let r = (1.0 / config.downsample_ratio).round() as usize;
        let mlp1 = Projector::new(config.vision_config.hidden_size * r * r, hidden, vb.pp("mlp1"))?;
        let text_hidden_fcs = if vb.contains_tensor("text_hidden_fcs.0.weight") {
            let t = vb.pp("text_hidden_fcs");
            let out = t.pp("2").get_unchecked("weight")?.dims2()?.0;
            Some((
                Linear::new(hidden, hidden, true, t.pp("0"))?,
                Linear::new(hidden, out, true, t.pp("2"))?,
            ))
        } else {
            None
        };
        Ok(Self {
            config,
            vision,
            mlp1,
            llm,
            text_hidden_fcs,
            span: tracing::span!(tracing::Level::TRACE, "internvl"),
        })
    }

    /// ViT hidden states at `select_layer` (CLS included), as the reference's `extract_feature` reads them.
    pub fn vit_hidden(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let l = self.vision.num_layers() as i64;
        let k = if self.config.select_layer < 0 {
            l + 1 + self.config.select_layer
        } else {
            self.config.select_layer
        };
        if !(0..=l).contains(&k) {
            candle_core::bail!(
                "select_layer {} is outside the ViT's {} layers",
                self.config.select_layer,
                l
            );
        }
        self.vision.forward_to(pixel_values, k as usize)
    }

    /// Image tokens for the LLM: (n_tiles, num_image_token, hidden).
    pub fn extract_feature(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let _g = self.span.enter();
        let h = self.vit_hidden(pixel_values)?;
        let (n, t, c) = h.dims3()?;
        let x = h.narrow(1, 1, t - 1)?;
        let side = ((t - 1) as f64).sqrt() as usize;
        let x = x.reshape((n, side, side, c))?;
        let x = pixel_shuffle(&x, self.config.downsample_ratio, self.config.ps_version != "v1")?;
        let (n, a, b, c2) = x.dims4()?;
        self.mlp1.forward(&x.reshape((n, a * b, c2))?)
    }

    /// Token embeddings with the rows at `image_positions` replaced by `image_tokens`
    /// (flattened (N, h)), as InternVL does for `<IMG_CONTEXT>`.
    pub fn embed_with_images(&self, ids: &[u32], image_token_id: u32, image_tokens: Option<&Tensor>) -> Result<Tensor> {
        let dev = self.mlp1_device();
        let ids_t = Tensor::new(ids, &dev)?.unsqueeze(0)?;
        let emb = self.llm.embed(&ids_t)?.squeeze(0)?; // (L, h)
        let Some(img) = image_tokens else {
            return emb.unsqueeze(0);
        };
        let img = img.flatten_to(1)?.to_dtype(emb.dtype())?; // (N, h)
        let n_img = img.dim(0)?;
        let positions: Vec<usize> = ids
            .iter()
            .enumerate()
            .filter(|(_, &t)| t == image_token_id)
            .map(|(i, _)| i)
            .collect();
        if positions.len() != n_img {
            candle_core::bail!(
                "the prompt has {} <IMG_CONTEXT> tokens but the image gives {n_img} features",
                positions.len()
            );
        }
        // Splice contiguous runs of image positions.
        let mut pieces = Vec::new();
        let (mut cur, mut k) = (0usize, 0usize);
        while k < positions.len() {
            let start = positions[k];
            let mut end = start + 1;
            let k0 = k;
            while k + 1 < positions.len() && positions[k + 1] == end {
                end += 1;
                k += 1;
            }
            k += 1;
            if start > cur {
                pieces.push(emb.narrow(0, cur, start - cur)?);
            }
            pieces.push(img.narrow(0, k0, end - start)?);
            cur = end;
        }
        if cur < ids.len() {
            pieces.push(emb.narrow(0, cur, ids.len() - cur)?);
        }
        Tensor::cat(&pieces, 0)?.unsqueeze(0)
    }

    fn mlp1_device(&self) -> candle_core::Device {
        self.mlp1.fc1.weight().device().clone()
    }

    /// Sa2VA's `[SEG]` projection of last-layer hidden states (…, h) → (…, 256).
    pub fn seg_projection(&self, hidden: &Tensor) -> Result<Option<Tensor>> {
        match &self.text_hidden_fcs {
            Some((a, b)) => Ok(Some(b.forward(&a.forward(hidden)?.relu()?)?)),
            None => Ok(None),
        }
    }
}
