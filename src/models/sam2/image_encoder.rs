//! SAM2's image encoder (`image_encoder.*`): the Hiera trunk, the FPN neck (1×1 lateral convs,
//! nearest top-down fusion on `fpn_top_down_levels`, `scalp` lowest levels dropped), then what
//! `SAM2Base.forward_image` + the image predictor add for a single image: `conv_s0`/`conv_s1`
//! on the two high-resolution levels and `no_mem_embed` on the 1/16 level.

use super::config::{NeckConfig, Sam2Config};
use super::hiera::Hiera;
use crate::models::nn::Linear;
use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

/// Image features the mask decoder consumes (all NCHW).
#[derive(Debug, Clone)]
pub struct ImageFeatures {
    /// 1/16 level + `no_mem_embed`: (1, C, 64, 64) for a 1024² input; f32 in an f16/bf16 model
    /// when that level is fused top-down (Meta's FPN sums in f32), as under autocast.
    pub image_embed: Tensor,
    /// `conv_s0`/`conv_s1` of the 1/4 and 1/8 levels: (1, C/8, 256, 256), (1, C/4, 128, 128).
    pub high_res: Option<(Tensor, Tensor)>,
    /// The same two maps channels-last (1, H, W, C), which the mask decoder's upscaler reads.
    pub high_res_cl: Option<(Tensor, Tensor)>,
}

impl ImageFeatures {
    /// The features of image `i` of a batch encoded together, each map (1, …).
    pub fn get(&self, i: usize) -> Result<Self> {
        let one = |t: &Tensor| t.narrow(0, i, 1)?.contiguous();
        let pair = |p: &Option<(Tensor, Tensor)>| -> Result<Option<(Tensor, Tensor)>> {
            p.as_ref().map(|(a, b)| Ok((one(a)?, one(b)?))).transpose()
        };
        Ok(Self {
            image_embed: one(&self.image_embed)?,
            high_res: pair(&self.high_res)?,
            high_res_cl: pair(&self.high_res_cl)?,
        })
    }
}

/// A 1×1 convolution applied channels-last as a matmul (candle's CPU conv2d is far slower here).
#[derive(Debug, Clone)]
struct Conv1x1(Linear);

impl Conv1x1 {
    fn new(cin: usize, cout: usize, vb: VarBuilder) -> Result<Self> {
        let w = vb.get((cout, cin, 1, 1), "weight")?.reshape((cout, cin))?;
        Ok(Self(Linear::from_weights(w, Some(vb.get(cout, "bias")?))))
    }
}

impl Module for Conv1x1 {
    /// (B, H, W, Cin) → (B, H, W, Cout).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.0.forward(x)
    }
}

/// Channels-last → NCHW, contiguous.
fn nchw(x: &Tensor) -> Result<Tensor> {
    crate::models::fastops::contiguous(&x.permute((0, 3, 1, 2))?)
}

#[derive(Debug, Clone)]
struct FpnNeck {
    convs: Vec<Conv1x1>,
    cfg: NeckConfig,
    span: tracing::Span,
}

impl FpnNeck {
    fn new(cfg: &NeckConfig, vb: VarBuilder) -> Result<Self> {
        let convs = cfg
            .backbone_channel_list
            .iter()
            .enumerate()
            .map(|(i, &c)| Conv1x1::new(c, cfg.d_model, vb.pp(format!("convs.{i}.conv"))))
            .collect::<Result<_>>()?;
        Ok(Self {
            convs,
            cfg: cfg.clone(),
            span: tracing::span!(tracing::Level::TRACE, "sam2-fpn-neck"),
        })
    }

    /// Trunk outputs (highest resolution first, channels-last) → neck outputs in the same order
    /// (channels-last).
    fn forward(&self, xs: &[Tensor]) -> Result<Vec<Tensor>> {
        let _g = self.span.enter();
        let n = self.convs.len();
        if xs.len() != n {
            candle_core::bail!("FPN neck has {n} levels but the trunk gave {}", xs.len());
        }
        let mut out: Vec<Option<Tensor>> = vec![None; n];
        let mut prev: Option<Tensor> = None;
        for i in (0..n).rev() {
            let lateral = self.convs[n - 1 - i].forward(&xs[i])?;
            let cur = match (&prev, self.cfg.fpn_top_down_levels.contains(&i)) {
                (Some(p), true) => {
                    // Meta's FpnNeck upsamples `prev_features.to(torch.float32)`, so in a reduced-
                    // precision run (weights f16/bf16, autocast) every fused level is an f32 sum
                    // of the lateral conv and the upsampled coarser level.
                    let p = &p.to_dtype(DType::F32)?;
                    let lateral = lateral.to_dtype(DType::F32)?;
                    let (b, h, w, c) = p.dims4()?;
                    let up = if self.cfg.fpn_interp_model == "nearest" {
                        p.reshape((b, h, 1, w, 1, c))?
                            .expand((b, h, 2, w, 2, c))?
                            .reshape((b, 2 * h, 2 * w, c))?
                    } else {
                        crate::models::fastops::upsample_bilinear2d(&p.permute((0, 3, 1, 2))?, 2 * h, 2 * w, false)?
                            .permute((0, 2, 3, 1))?
                    };
                    let s = (lateral + up)?;
                    if self.cfg.fuse_type == "avg" {
                        (s / 2.0)?
                    } else {
                        s
                    }
                }
                _ => lateral,
            };
            out[i] = Some(cur.clone());
            prev = Some(cur);
        }
        Ok(out.into_iter().map(|t| t.expect("every level set")).collect())
    }
}

/// Hiera + FPN + the single-image extras; `forward` maps a normalised (1, 3, S, S) image to
/// [`ImageFeatures`].
#[derive(Debug, Clone)]
pub struct ImageEncoder {
    trunk: Hiera,
    neck: FpnNeck,
    scalp: usize,
    conv_s: Option<(Conv1x1, Conv1x1)>,
    no_mem_embed: Option<Tensor>,
    span: tracing::Span,
}

impl ImageEncoder {
    /// `vb` is the SAM2 root (it holds `image_encoder.*`, `sam_mask_decoder.conv_s*`, `no_mem_embed`).
    pub fn new(cfg: &Sam2Config, vb: VarBuilder) -> Result<Self> {
        let d = cfg.neck.d_model;
        let conv_s = if cfg.decoder.use_high_res_features {
            let md = vb.pp("sam_mask_decoder");
            let t = cfg.decoder.transformer_dim;
            Some((
                Conv1x1::new(t, t / 8, md.pp("conv_s0"))?,
                Conv1x1::new(t, t / 4, md.pp("conv_s1"))?,
            ))
        } else {
            None
        };
        if cfg.decoder.transformer_dim != d {
            candle_core::bail!(
                "SAM2 mask decoder width {} differs from the neck width {d}",
                cfg.decoder.transformer_dim
            );
        }
        let no_mem_embed = if cfg.directly_add_no_mem_embed {
            Some(vb.get((1, 1, d), "no_mem_embed")?)
        } else {
            None
        };
        Ok(Self {
            trunk: Hiera::new(&cfg.trunk, vb.pp("image_encoder.trunk"))?,
            neck: FpnNeck::new(&cfg.neck, vb.pp("image_encoder.neck"))?,
            scalp: cfg.neck.scalp,
            conv_s,
            no_mem_embed,
            span: tracing::span!(tracing::Level::TRACE, "sam2-image-encoder"),
        })
    }

    pub fn forward(&self, image: &Tensor) -> Result<ImageFeatures> {
        let _g = self.span.enter();
        let feats = self.neck.forward(&self.trunk.forward(image)?)?;
        let keep = feats.len().saturating_sub(self.scalp);
        if keep < 3 && self.conv_s.is_some() {
            candle_core::bail!("SAM2 neck gives {keep} levels after scalp; the decoder needs 3");
        }
        let feats = &feats[..keep];
        // f32 in a reduced-precision run when the level is fused top-down (see FpnNeck), as in
        // Meta's code, where the f16/bf16 `no_mem_embed` is then added in f32 too.
        let mut image_embed = feats[keep - 1].clone();
        if let Some(e) = &self.no_mem_embed {
            image_embed = image_embed.broadcast_add(&e.to_dtype(image_embed.dtype())?)?;
        }
        let image_embed = nchw(&image_embed)?;
        let high_res_cl = match &self.conv_s {
            Some((s0, s1)) => Some((s0.forward(&feats[0])?, s1.forward(&feats[1])?)),
            None => None,
        };
        let high_res = match &high_res_cl {
            Some((a, b)) => Some((nchw(a)?, nchw(b)?)),
            None => None,
        };
        Ok(ImageFeatures {
            image_embed,
            high_res,
            high_res_cl,
        })
    }
}
