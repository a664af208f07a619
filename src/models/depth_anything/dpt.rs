//! The DPT neck and depth head of transformers' `DepthAnythingForDepthEstimation`, keys
//! `neck.reassemble_stage.layers.N.{projection, resize}`, `neck.convs.N`,
//! `neck.fusion_stage.layers.N.{projection, residual_layer{1,2}.convolution{1,2}}`,
//! `head.conv{1,2,3}`.

use super::config::Config;
use crate::models::nn::{conv2d, matmul};
use candle_core::{Result, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, VarBuilder};

fn conv3x3(c_in: usize, c_out: usize, bias: bool, vb: VarBuilder) -> Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding: 1,
        ..Default::default()
    };
    if bias {
        candle_nn::conv2d(c_in, c_out, 3, cfg, vb)
    } else {
        candle_nn::conv2d_no_bias(c_in, c_out, 3, cfg, vb)
    }
}

/// How a reassemble layer changes the resolution.
#[derive(Debug, Clone)]
enum Resize {
    /// `ConvTranspose2d(kernel=f, stride=f)`: weight (c, c, f, f) as a (c, c·f·f) matrix.
    Up {
        weight: Tensor,
        bias: Tensor,
        factor: usize,
    },
    Identity,
    /// `Conv2d(kernel=3, stride=1/f, padding=1)`.
    Down(Conv2d),
}

/// `DepthAnythingReassembleLayer`: tokens → (b, c, h', w') feature map.
#[derive(Debug, Clone)]
struct Reassemble {
    proj_w: Tensor,
    proj_b: Tensor,
    resize: Resize,
    span: tracing::Span,
}

impl Reassemble {
    fn new(d: usize, c: usize, factor: f64, vb: VarBuilder) -> Result<Self> {
        let resize = if factor > 1.0 {
            let f = factor as usize;
            let r = vb.pp("resize");
            Resize::Up {
                weight: r.get((c, c, f, f), "weight")?.reshape((c, c * f * f))?,
                bias: r.get(c, "bias")?,
                factor: f,
            }
        } else if factor == 1.0 {
            Resize::Identity
        } else {
            let cfg = Conv2dConfig {
                padding: 1,
                stride: (1.0 / factor) as usize,
                ..Default::default()
            };
            Resize::Down(candle_nn::conv2d(c, c, 3, cfg, vb.pp("resize"))?)
        };
        let p = vb.pp("projection");
        Ok(Self {
            proj_w: p.get((c, d, 1, 1), "weight")?.reshape((c, d))?,
            proj_b: p.get(c, "bias")?,
            resize,
            span: tracing::span!(tracing::Level::TRACE, "da-reassemble"),
        })
    }

    /// tokens (b, 1 + h·w, d) with CLS first → (b, c, h', w'). The 1×1 projection runs on the
    /// token matrix (the same arithmetic as the conv), the stride-f transposed conv as one matmul.
    fn forward(&self, tokens: &Tensor, ph: usize, pw: usize) -> Result<Tensor> {
        let _g = self.span.enter();
        let (b, n, d) = tokens.dims3()?;
        if n != ph * pw + 1 {
            candle_core::bail!("reassemble: {n} tokens for a {ph}x{pw} patch grid");
        }
        let x = tokens.narrow(1, 1, ph * pw)?.reshape((b * ph * pw, d))?;
        let x = matmul(&x, &self.proj_w.t()?)?.broadcast_add(&self.proj_b)?; // (b·h·w, c)
        let c = self.proj_b.dim(0)?;
        match &self.resize {
            Resize::Up {
                weight,
                bias,
                factor: f,
            } => {
                let y = matmul(&x, weight)?.reshape((b, ph, pw, c, *f, *f))?;
                let y = y.permute((0, 3, 1, 4, 2, 5))?.reshape((b, c, ph * f, pw * f))?;
                y.broadcast_add(&bias.reshape((1, c, 1, 1))?)
            }
            Resize::Identity => x.reshape((b, ph, pw, c))?.permute((0, 3, 1, 2))?.contiguous(),
            Resize::Down(conv) => conv2d(conv, &x.reshape((b, ph, pw, c))?.permute((0, 3, 1, 2))?.contiguous()?),
        }
    }
}

/// `DepthAnythingPreActResidualLayer`: x + conv(relu(conv(relu(x)))).
#[derive(Debug, Clone)]
struct PreActResidual {
    conv1: Conv2d,
    conv2: Conv2d,
}

impl PreActResidual {
    fn new(f: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv1: conv3x3(f, f, true, vb.pp("convolution1"))?,
            conv2: conv3x3(f, f, true, vb.pp("convolution2"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // The ReLU before conv2 fused into conv1 (rayon's pool, not candle's elementwise one).
        let h = crate::models::nn::conv2d_act(&self.conv1, &x.relu()?, true)?;
        let h = conv2d(&self.conv2, &h)?;
        h + x
    }
}

/// `DepthAnythingFeatureFusionLayer`.
#[derive(Debug, Clone)]
struct FusionLayer {
    projection: Conv2d,
    residual1: PreActResidual,
    residual2: PreActResidual,
    span: tracing::Span,
}

impl FusionLayer {
    fn new(f: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            projection: candle_nn::conv2d(f, f, 1, Default::default(), vb.pp("projection"))?,
            residual1: PreActResidual::new(f, vb.pp("residual_layer1"))?,
            residual2: PreActResidual::new(f, vb.pp("residual_layer2"))?,
            span: tracing::span!(tracing::Level::TRACE, "da-fusion"),
        })
    }

    /// `hidden (+ residual_layer1(residual))` → residual_layer2 → bilinear (align_corners=True)
    /// to `size`, or ×2 when `size` is None → 1×1 projection.
    fn forward(&self, hidden: &Tensor, residual: Option<&Tensor>, size: Option<(usize, usize)>) -> Result<Tensor> {
        let _g = self.span.enter();
        let (_, _, h, w) = hidden.dims4()?;
        let mut x = hidden.clone();
        if let Some(r) = residual {
            let (_, _, rh, rw) = r.dims4()?;
            let r = if (rh, rw) != (h, w) {
                crate::models::fastops::upsample_bilinear2d(r, h, w, false)?
            } else {
                r.clone()
            };
            x = (x + self.residual1.forward(&r)?)?;
        }
        let x = self.residual2.forward(&x)?;
        // scale_factor=2 with align_corners=True: output floor(2·h), scale (h−1)/(2h−1)
        let (th, tw) = size.unwrap_or((2 * h, 2 * w));
        let x = crate::models::fastops::upsample_bilinear2d(&x, th, tw, true)?;
        conv2d(&self.projection, &x)
    }
}

/// `DepthAnythingNeck`: reassemble, 3×3 convs to the fusion width, fusion from coarse to fine.
#[derive(Debug, Clone)]
pub struct Neck {
    reassemble: Vec<Reassemble>,
    convs: Vec<Conv2d>,
    fusion: Vec<FusionLayer>,
}

impl Neck {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let f = cfg.fusion_hidden_size;
        let ra = vb.pp("reassemble_stage").pp("layers");
        let reassemble = cfg
            .neck_hidden_sizes
            .iter()
            .zip(&cfg.reassemble_factors)
            .enumerate()
            .map(|(i, (&c, &fac))| Reassemble::new(cfg.reassemble_hidden_size, c, fac, ra.pp(i)))
            .collect::<Result<_>>()?;
        let convs = cfg
            .neck_hidden_sizes
            .iter()
            .enumerate()
            .map(|(i, &c)| conv3x3(c, f, false, vb.pp("convs").pp(i)))
            .collect::<Result<_>>()?;
        let fl = vb.pp("fusion_stage").pp("layers");
        let fusion = (0..cfg.neck_hidden_sizes.len())
            .map(|i| FusionLayer::new(f, fl.pp(i)))
            .collect::<Result<_>>()?;
        Ok(Self {
            reassemble,
            convs,
            fusion,
        })
    }

    /// Backbone maps (finest level first) → fused maps, coarsest-derived first (as the reference's
    /// `fused_hidden_states`; the last one is the finest).
    pub fn forward(&self, maps: &[Tensor], ph: usize, pw: usize) -> Result<Vec<Tensor>> {
        if maps.len() != self.reassemble.len() {
            candle_core::bail!(
                "the neck takes {} feature maps, got {}",
                self.reassemble.len(),
                maps.len()
            );
        }
        let feats: Vec<Tensor> = maps
            .iter()
            .zip(&self.reassemble)
            .zip(&self.convs)
            .map(|((m, r), c)| conv2d(c, &r.forward(m, ph, pw)?))
            .collect::<Result<_>>()?;
        let rev: Vec<&Tensor> = feats.iter().rev().collect();
        let mut fused: Vec<Tensor> = Vec::with_capacity(rev.len());
        for (i, (feat, layer)) in rev.iter().zip(&self.fusion).enumerate() {
            let size = match rev.get(i + 1) {
                Some(next) => {
                    let (_, _, h, w) = next.dims4()?;
                    Some((h, w))
                }
                None => None,
            };
            let out = match fused.last() {
                None => layer.forward(feat, None, size)?,
                Some(prev) => layer.forward(prev, Some(feat), size)?,
            };
            fused.push(out);
        }
        Ok(fused)
    }
}

/// `DepthAnythingDepthEstimationHead`: conv, bilinear to the patch-grid resolution, conv, ReLU,
/// 1×1 conv, ReLU (relative) or sigmoid (metric), × max_depth.
#[derive(Debug, Clone)]
pub struct Head {
    conv1: Conv2d,
    conv2: Conv2d,
    conv3: Conv2d,
    in_index: i64,
    patch_size: usize,
    metric: bool,
    max_depth: f64,
    span: tracing::Span,
}

impl Head {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let f = cfg.fusion_hidden_size;
        Ok(Self {
            conv1: conv3x3(f, f / 2, true, vb.pp("conv1"))?,
            conv2: conv3x3(f / 2, cfg.head_hidden_size, true, vb.pp("conv2"))?,
            conv3: candle_nn::conv2d(cfg.head_hidden_size, 1, 1, Default::default(), vb.pp("conv3"))?,
            in_index: cfg.head_in_index,
            patch_size: cfg.patch_size,
            metric: cfg.depth_estimation_type == "metric",
            max_depth: cfg.max_depth(),
            span: tracing::span!(tracing::Level::TRACE, "da-head"),
        })
    }

    /// fused maps → predicted depth (b, ph·patch, pw·patch).
    pub fn forward(&self, fused: &[Tensor], ph: usize, pw: usize) -> Result<Tensor> {
        let _g = self.span.enter();
        let n = fused.len() as i64;
        let i = if self.in_index < 0 {
            self.in_index + n
        } else {
            self.in_index
        };
        let Some(x) = usize::try_from(i).ok().and_then(|i| fused.get(i)) else {
            candle_core::bail!("head_in_index {} is out of range for {n} fused maps", self.in_index)
        };
        let x = conv2d(&self.conv1, x)?;
        let x = crate::models::fastops::upsample_bilinear2d(&x, ph * self.patch_size, pw * self.patch_size, true)?;
        let x = crate::models::nn::conv2d_act(&self.conv2, &x, true)?;
        let x = conv2d(&self.conv3, &x)?;
        let x = if self.metric {
            candle_nn::ops::sigmoid(&x)?
        } else {
            x.relu()?
        };
        let x = if self.max_depth != 1.0 {
            (x * self.max_depth)?
        } else {
            x
        };
        x.squeeze(1)
    }
}
