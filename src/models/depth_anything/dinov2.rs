//! DINOv2 backbone (transformers' `Dinov2Backbone`), hub key names under `backbone.`:
//! `embeddings.{cls_token, position_embeddings, patch_embeddings.projection}`,
//! `encoder.layer.N.{norm1, attention.attention.{query,key,value}, attention.output.dense,
//! layer_scale1.lambda1, norm2, mlp.{fc1,fc2}, layer_scale2.lambda1}`, `layernorm`.
//! (transformers 5 renames the attention keys to `q_proj`/…/`o_proj` in memory only; the files,
//! including what its `save_pretrained` writes, keep these.) Forked from candle-transformers'
//! dinov2.rs, which has the original facebookresearch layout and a fixed 518 input.

use super::config::BackboneConfig;
use super::preprocess::resize_bicubic;
use crate::models::nn::{LayerNorm, Linear};
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

/// Patch + CLS embeddings with the position grid bicubically resized to the input's patch grid.
#[derive(Debug, Clone)]
struct Embeddings {
    cls_token: Tensor,
    position_embeddings: Tensor,
    projection: candle_nn::Conv2d,
    patch_size: usize,
    span: tracing::Span,
}

impl Embeddings {
    fn new(cfg: &BackboneConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        let grid = cfg.image_size / cfg.patch_size;
        let conv = candle_nn::Conv2dConfig {
            stride: cfg.patch_size,
            ..Default::default()
        };
        Ok(Self {
            cls_token: vb.get((1, 1, d), "cls_token")?,
            position_embeddings: vb.get((1, grid * grid + 1, d), "position_embeddings")?,
            projection: candle_nn::conv2d(
                cfg.num_channels,
                d,
                cfg.patch_size,
                conv,
                vb.pp("patch_embeddings").pp("projection"),
            )?,
            patch_size: cfg.patch_size,
            span: tracing::span!(tracing::Level::TRACE, "dinov2-embeddings"),
        })
    }

    /// `interpolate_pos_encoding`: the (√N)² grid resized with `F.interpolate(size=(H/p, W/p),
    /// mode="bicubic", align_corners=False)` in f32 (no antialias, no scale_factor); skipped, as
    /// in the reference, when the patch count matches and the image is square.
    fn positions(&self, n_patches: usize, height: usize, width: usize) -> Result<Tensor> {
        let (_, n_pos, d) = self.position_embeddings.dims3()?;
        let n_pos = n_pos - 1;
        if n_patches == n_pos && height == width {
            return Ok(self.position_embeddings.clone());
        }
        let side = (n_pos as f64).sqrt() as usize;
        if side * side != n_pos {
            candle_core::bail!("position_embeddings hold {n_pos} patches, not a square grid");
        }
        let (nh, nw) = (height / self.patch_size, width / self.patch_size);
        let dtype = self.position_embeddings.dtype();
        let cls = self.position_embeddings.narrow(1, 0, 1)?;
        let grid = self
            .position_embeddings
            .narrow(1, 1, n_pos)?
            .reshape((side, side, d))?
            .permute((2, 0, 1))?;
        let grid = resize_bicubic(&grid.to_dtype(candle_core::DType::F32)?.contiguous()?, nh, nw)?.to_dtype(dtype)?;
        let grid = grid.permute((1, 2, 0))?.reshape((1, nh * nw, d))?;
        Tensor::cat(&[&cls, &grid], 1)
    }

    fn forward(&self, px: &Tensor) -> Result<Tensor> {
        let _g = self.span.enter();
        let (b, _, height, width) = px.dims4()?;
        let x = crate::models::nn::conv2d(&self.projection, &px.to_dtype(self.cls_token.dtype())?)?; // (b, d, h, w)
        let (_, d, _, _) = x.dims4()?;
        let x = x.flatten_from(2)?.transpose(1, 2)?; // (b, h·w, d)
        let n = x.dim(1)?;
        let x = Tensor::cat(&[&self.cls_token.expand((b, 1, d))?, &x], 1)?;
        x.broadcast_add(&self.positions(n, height, width)?)
    }
}

/// Self-attention with q/k/v fused into one matmul at load time.
#[derive(Debug, Clone)]
struct Attention {
    qkv: Linear,
    dense: Linear,
    heads: usize,
    span: tracing::Span,
}

impl Attention {
    fn new(cfg: &BackboneConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        let a = vb.pp("attention");
        let (mut ws, mut bs) = (vec![], vec![]);
        for name in ["query", "key", "value"] {
            ws.push(a.pp(name).get((d, d), "weight")?);
            if cfg.qkv_bias {
                bs.push(a.pp(name).get(d, "bias")?);
            }
        }
        let bias = if cfg.qkv_bias { Some(Tensor::cat(&bs, 0)?) } else { None };
        Ok(Self {
            qkv: Linear::from_weights(Tensor::cat(&ws, 0)?, bias),
            dense: Linear::new(d, d, true, vb.pp("output").pp("dense"))?,
            heads: cfg.num_attention_heads,
            span: tracing::span!(tracing::Level::TRACE, "dinov2-attn"),
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let _g = self.span.enter();
        let (b, n, c) = xs.dims3()?;
        let hd = c / self.heads;
        let qkv = self.qkv.forward(xs)?.reshape((b, n, 3, self.heads, hd))?;
        let part = |i: usize| qkv.narrow(2, i, 1)?.squeeze(2); // (b, n, h, hd) views, no copy
                                                               // fused softmax attention (models::attention; transformers runs DINOv2 with SDPA)
        crate::models::attention::attention(&part(0)?, &part(1)?, &part(2)?, (hd as f64).powf(-0.5), None)?
            .reshape((b, n, c))?
            .apply(&self.dense)
    }
}

/// `Dinov2Layer`: pre-norm attention and MLP, each scaled by a LayerScale `lambda1`.
#[derive(Debug, Clone)]
struct Layer {
    norm1: LayerNorm,
    attention: Attention,
    lambda1: Tensor,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    act: String,
    lambda2: Tensor,
    span: tracing::Span,
}

impl Layer {
    fn new(cfg: &BackboneConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        let inter = cfg.intermediate_size();
        Ok(Self {
            norm1: LayerNorm::new(d, cfg.layer_norm_eps, vb.pp("norm1"))?,
            attention: Attention::new(cfg, vb.pp("attention"))?,
            lambda1: vb.get(d, "layer_scale1.lambda1")?,
            norm2: LayerNorm::new(d, cfg.layer_norm_eps, vb.pp("norm2"))?,
            fc1: Linear::new(d, inter, true, vb.pp("mlp").pp("fc1"))?,
            fc2: Linear::new(inter, d, true, vb.pp("mlp").pp("fc2"))?,
            act: cfg.hidden_act.clone(),
            lambda2: vb.get(d, "layer_scale2.lambda1")?,
            span: tracing::span!(tracing::Level::TRACE, "dinov2-layer"),
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let _g = self.span.enter();
        let h = self.attention.forward(&self.norm1.forward(xs)?)?;
        let xs = crate::models::fastops::add_scaled(xs, &h, &self.lambda1)?;
        let xn = self.norm2.forward(&xs)?;
        let a = match self.act.as_str() {
            "gelu" => self.fc1.forward_gelu(&xn)?,
            "relu" => self.fc1.forward(&xn)?.relu()?,
            // gelu_pytorch_tanh / gelu_new: the tanh approximation
            _ => crate::models::nn::activation(&self.fc1.forward(&xn)?, candle_nn::Activation::GeluPytorchTanh)?,
        };
        crate::models::fastops::add_scaled(&xs, &self.fc2.forward(&a)?, &self.lambda2)
    }
}

/// `Dinov2Backbone`: the feature maps at `out_indices` (0 = embeddings), each through the final
/// `layernorm` when `apply_layernorm`, as (b, 1 + h·w, d) token sequences (CLS first).
#[derive(Debug, Clone)]
pub struct Dinov2Backbone {
    embeddings: Embeddings,
    layers: Vec<Layer>,
    layernorm: Option<LayerNorm>,
    out_indices: Vec<usize>,
    span: tracing::Span,
}

impl Dinov2Backbone {
    pub fn new(cfg: &BackboneConfig, out_indices: Vec<usize>, vb: VarBuilder) -> Result<Self> {
        let enc = vb.pp("encoder").pp("layer");
        let last = out_indices.iter().copied().max().unwrap_or(0);
        Ok(Self {
            embeddings: Embeddings::new(cfg, vb.pp("embeddings"))?,
            // layers after the last output index are never used: not loaded, not run
            layers: (0..last.min(cfg.num_hidden_layers))
                .map(|i| Layer::new(cfg, enc.pp(i)))
                .collect::<Result<_>>()?,
            layernorm: if cfg.apply_layernorm {
                Some(LayerNorm::new(cfg.hidden_size, cfg.layer_norm_eps, vb.pp("layernorm"))?)
            } else {
                None
            },
            out_indices,
            span: tracing::span!(tracing::Level::TRACE, "dinov2"),
        })
    }

    /// pixel_values (b, 3, H, W) → one (b, 1 + (H/p)·(W/p), d) map per out index.
    pub fn forward(&self, px: &Tensor) -> Result<Vec<Tensor>> {
        let _g = self.span.enter();
        let mut x = self.embeddings.forward(px)?;
        let mut hidden = vec![x.clone()];
        for l in &self.layers {
            x = l.forward(&x)?;
            hidden.push(x.clone());
        }
        self.out_indices
            .iter()
            .map(|&i| match &self.layernorm {
                Some(n) => n.forward(&hidden[i]),
                None => Ok(hidden[i].clone()),
            })
            .collect()
    }
}
