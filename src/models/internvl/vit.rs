//! InternViT (InternViT-300M-448px-V2_5; the 6B variant's RMSNorm + qk-norm too), original key
//! names under `vision_model.`: `embeddings.{class_embedding, patch_embedding, position_embedding}`,
//! `encoder.layers.N.{norm1, attn.{qkv, proj, q_norm, k_norm}, ls1, norm2, mlp.{fc1, fc2}, ls2}`.

use super::config::VisionConfig;
use crate::models::nn::{LayerNorm, Linear, RmsNorm};
use candle_core::{Module, Result, Tensor};
use candle_nn::{Activation, VarBuilder};

#[derive(Debug, Clone)]
enum Norm {
    Layer(LayerNorm),
    Rms(RmsNorm),
}

impl Norm {
    fn new(cfg: &VisionConfig, dim: usize, vb: VarBuilder) -> Result<Self> {
        // The reference's NORM2FN has exactly these two.
        Ok(match cfg.norm_type.as_str() {
            "layer_norm" => Norm::Layer(LayerNorm::new(dim, cfg.layer_norm_eps, vb)?),
            "rms_norm" => Norm::Rms(RmsNorm::new(dim, cfg.layer_norm_eps, vb)?),
            other => candle_core::bail!("vision_config.norm_type {other:?}: InternViT has layer_norm or rms_norm"),
        })
    }
}

impl Module for Norm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Norm::Layer(n) => n.forward(xs),
            Norm::Rms(n) => n.forward(xs),
        }
    }
}

#[derive(Debug, Clone)]
struct Embeddings {
    class_embedding: Tensor,
    patch_embedding: candle_nn::Conv2d,
    position_embedding: Tensor,
}

impl Embeddings {
    fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        let n_pos = (cfg.image_size / cfg.patch_size).pow(2) + 1;
        let conv_cfg = candle_nn::Conv2dConfig {
            stride: cfg.patch_size,
            ..Default::default()
        };
        Ok(Self {
            class_embedding: vb.get((1, 1, d), "class_embedding")?,
            patch_embedding: candle_nn::conv2d(3, d, cfg.patch_size, conv_cfg, vb.pp("patch_embedding"))?,
            position_embedding: vb.get((1, n_pos, d), "position_embedding")?,
        })
    }

    fn forward(&self, px: &Tensor) -> Result<Tensor> {
        let p = crate::models::nn::conv2d(&self.patch_embedding, px)?; // (n, d, h, w)
        let (n, d, h, w) = p.dims4()?;
        let p = p.flatten_from(2)?.transpose(1, 2)?; // (n, h·w, d)
        let cls = self.class_embedding.expand((n, 1, d))?;
        let x = Tensor::cat(&[&cls, &p], 1)?;
        let (_, n_pos, _) = self.position_embedding.dims3()?;
        if n_pos != h * w + 1 {
            // The reference bicubically resizes the position grid; at the trained size that is
            // the identity, and checkpoints are only ever run at their trained tile size.
            candle_core::bail!("InternViT position embedding has {} patches but the input gives {h}x{w}; run at the checkpoint's image_size", n_pos - 1);
        }
        x.broadcast_add(&self.position_embedding)
    }
}

#[derive(Debug, Clone)]
struct Attention {
    qkv: Linear,
    proj: Linear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    heads: usize,
    span: tracing::Span,
}

impl Attention {
    fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        let (q_norm, k_norm) = if cfg.qk_normalization {
            (
                Some(RmsNorm::new(d, cfg.layer_norm_eps, vb.pp("q_norm"))?),
                Some(RmsNorm::new(d, cfg.layer_norm_eps, vb.pp("k_norm"))?),
            )
        } else {
            (None, None)
        };
        Ok(Self {
            qkv: Linear::new(d, 3 * d, cfg.qkv_bias, vb.pp("qkv"))?,
            proj: Linear::new(d, d, true, vb.pp("proj"))?,
            q_norm,
            k_norm,
            heads: cfg.num_attention_heads,
            span: tracing::span!(tracing::Level::TRACE, "internvit-attn"),
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let _g = self.span.enter();
        let (b, n, c) = xs.dims3()?;
        let hd = c / self.heads;
        // (b, n, 3, heads, hd) → three (b, n, heads, hd)
        let qkv = self.qkv.forward(xs)?.reshape((b, n, 3, self.heads, hd))?;
        let mut q = qkv.narrow(2, 0, 1)?.squeeze(2)?;
        let mut k = qkv.narrow(2, 1, 1)?.squeeze(2)?;
        let v = qkv.narrow(2, 2, 1)?.squeeze(2)?;
        if let (Some(qn), Some(kn)) = (&self.q_norm, &self.k_norm) {
            q = qn.forward(&q.reshape((b, n, c))?)?.reshape((b, n, self.heads, hd))?;
            k = kn.forward(&k.reshape((b, n, c))?)?.reshape((b, n, self.heads, hd))?;
        }
        // fused softmax attention straight from the qkv projection's layout (models::attention)
        crate::models::attention::attention(&q, &k, &v, (hd as f64).powf(-0.5), None)?
            .reshape((b, n, c))?
            .apply(&self.proj)
    }
}

#[derive(Debug, Clone)]
struct Layer {
    norm1: Norm,
    attn: Attention,
    ls1: Tensor,
    norm2: Norm,
    fc1: Linear,
    fc2: Linear,
    act: Activation,
    ls2: Tensor,
    span: tracing::Span,
}

impl Layer {
    fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        let act = match cfg.hidden_act.as_str() {
            "gelu" => Activation::Gelu, // erf GELU, as nn.GELU / ACT2FN["gelu"]
            "gelu_pytorch_tanh" => Activation::GeluPytorchTanh,
            other => candle_core::bail!("unsupported InternViT hidden_act {other:?}"),
        };
        Ok(Self {
            norm1: Norm::new(cfg, d, vb.pp("norm1"))?,
            attn: Attention::new(cfg, vb.pp("attn"))?,
            ls1: vb.get(d, "ls1")?,
            norm2: Norm::new(cfg, d, vb.pp("norm2"))?,
            fc1: Linear::new(d, cfg.intermediate_size, true, vb.pp("mlp").pp("fc1"))?,
            fc2: Linear::new(cfg.intermediate_size, d, true, vb.pp("mlp").pp("fc2"))?,
            act,
            ls2: vb.get(d, "ls2")?,
            span: tracing::span!(tracing::Level::TRACE, "internvit-layer"),
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let _g = self.span.enter();
        let h = self.attn.forward(&self.norm1.forward(xs)?)?;
        let xs = crate::models::fastops::add_scaled(xs, &h, &self.ls1)?;
        let xn = self.norm2.forward(&xs)?;
        let a = if matches!(self.act, Activation::Gelu) {
            self.fc1.forward_gelu(&xn)?
        } else {
            crate::models::nn::activation(&self.fc1.forward(&xn)?, self.act)?
        };
        crate::models::fastops::add_scaled(&xs, &self.fc2.forward(&a)?, &self.ls2)
    }
}

/// InternVisionModel: embeddings + encoder; returns the hidden states after `layers` layers.
#[derive(Debug, Clone)]
pub struct InternVit {
    embeddings: Embeddings,
    layers: Vec<Layer>,
    span: tracing::Span,
}

impl InternVit {
    pub fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let enc = vb.pp("encoder").pp("layers");
        Ok(Self {
            embeddings: Embeddings::new(cfg, vb.pp("embeddings"))?,
            layers: (0..cfg.num_hidden_layers)
                .map(|i| Layer::new(cfg, enc.pp(i)))
                .collect::<Result<_>>()?,
            span: tracing::span!(tracing::Level::TRACE, "internvit"),
        })
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// `hidden_states[k]` of the reference: k = 0 is the embeddings, k = L the last layer.
    pub fn forward_to(&self, pixel_values: &Tensor, k: usize) -> Result<Tensor> {
        let _g = self.span.enter();
        let mut x = self.embeddings.forward(pixel_values)?;
        for l in self.layers.iter().take(k) {
            x = l.forward(&x)?;
        }
        Ok(x)
    }
}
