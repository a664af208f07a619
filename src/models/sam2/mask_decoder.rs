//! SAM2's mask decoder (`sam_mask_decoder.*`): SAM's two-way transformer (the same math as
//! candle-transformers' SAM1 one, but SAM2 names its MLP `mlp.layers.{0,1}`, so it is written out
//! here) plus SAM2's additions: the object-score token and head, high-resolution skip features
//! in the upscaler, a sigmoid IoU head, and the dynamic single-mask fallback by stability.
//!
//! Reduced precision follows `torch.autocast` (how Sa2VA and Meta's predictor run SAM2): with
//! f16/bf16 weights the linear layers and convolutions take f16/bf16 inputs and give f16/bf16
//! outputs, while the LayerNorms give f32 and a sum promotes to f32 — so the queries/keys
//! residual streams of the two-way transformer, and the image embedding they start from, stay
//! f32, and only what feeds a matmul is rounded. The mask logits come out in the weights' dtype.

use super::config::DecoderConfig;
use super::hiera::attention;
use crate::models::fastops;
use crate::models::nn::{LayerNorm, Linear};
use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

/// The dtype of residual streams and norms in a model whose weights are `dt` (autocast: f32 for
/// f16/bf16).
fn residual_dtype(dt: DType) -> DType {
    match dt {
        DType::F16 | DType::BF16 => DType::F32,
        d => d,
    }
}

/// `a + b` with PyTorch's type promotion between a float16/bfloat16 and a float32 operand.
fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.dtype() == b.dtype() {
        a + b
    } else {
        a.to_dtype(DType::F32)? + b.to_dtype(DType::F32)?
    }
}

/// A LayerNorm under autocast: f32 in and out for a reduced-precision input.
fn norm(ln: &LayerNorm, x: &Tensor) -> Result<Tensor> {
    ln.forward(&x.to_dtype(residual_dtype(x.dtype()))?)
}

#[derive(Debug, Clone)]
struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
}

impl Attention {
    fn new(dim: usize, heads: usize, downsample: usize, vb: VarBuilder) -> Result<Self> {
        let inner = dim / downsample;
        Ok(Self {
            q: Linear::new(dim, inner, true, vb.pp("q_proj"))?.few_rows(),
            k: Linear::new(dim, inner, true, vb.pp("k_proj"))?.few_rows(),
            v: Linear::new(dim, inner, true, vb.pp("v_proj"))?.few_rows(),
            out: Linear::new(inner, dim, true, vb.pp("out_proj"))?.few_rows(),
            heads,
        })
    }

    fn forward(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let split = |t: Tensor| -> Result<Tensor> {
            let (b, n, c) = t.dims3()?;
            fastops::contiguous(&t.reshape((b, n, self.heads, c / self.heads))?.transpose(1, 2)?)
        };
        let q = split(self.q.forward(q)?)?;
        let k = split(self.k.forward(k)?)?;
        let v = split(self.v.forward(v)?)?;
        let (b, h, n, c) = q.dims4()?;
        let o = fastops::contiguous(&attention(&q, &k, &v)?.transpose(1, 2)?)?.reshape((b, n, h * c))?;
        self.out.forward(&o)
    }
}

/// SAM2's `MLP`: ReLU between layers, optional sigmoid on the output.
#[derive(Debug, Clone)]
struct Mlp {
    layers: Vec<Linear>,
    sigmoid: bool,
}

impl Mlp {
    fn new(input: usize, hidden: usize, output: usize, n: usize, sigmoid: bool, vb: VarBuilder) -> Result<Self> {
        let mut layers = Vec::with_capacity(n);
        for i in 0..n {
            let a = if i == 0 { input } else { hidden };
            let b = if i + 1 == n { output } else { hidden };
            layers.push(Linear::new(a, b, true, vb.pp(format!("layers.{i}")))?.few_rows());
        }
        Ok(Self { layers, sigmoid })
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        for (i, l) in self.layers.iter().enumerate() {
            x = l.forward(&x)?;
            if i + 1 < self.layers.len() {
                x = x.relu()?;
            }
        }
        if self.sigmoid {
            // computed in f32 and rounded once for f16/bf16, as PyTorch's kernel
            x = candle_nn::ops::sigmoid(&x.to_dtype(residual_dtype(x.dtype()))?)?.to_dtype(x.dtype())?;
        }
        Ok(x)
    }
}

#[derive(Debug, Clone)]
struct TwoWayBlock {
    self_attn: Attention,
    norm1: LayerNorm,
    cross_t2i: Attention,
    norm2: LayerNorm,
    mlp: Mlp,
    norm3: LayerNorm,
    norm4: LayerNorm,
    cross_i2t: Attention,
    skip_first_pe: bool,
}

impl TwoWayBlock {
    fn new(cfg: &DecoderConfig, skip_first_pe: bool, vb: VarBuilder) -> Result<Self> {
        let (d, h, r) = (cfg.transformer_dim, cfg.num_heads, cfg.attention_downsample_rate);
        Ok(Self {
            self_attn: Attention::new(d, h, 1, vb.pp("self_attn"))?,
            norm1: LayerNorm::new(d, 1e-5, vb.pp("norm1"))?,
            cross_t2i: Attention::new(d, h, r, vb.pp("cross_attn_token_to_image"))?,
            norm2: LayerNorm::new(d, 1e-5, vb.pp("norm2"))?,
            mlp: Mlp::new(d, cfg.mlp_dim, d, 2, false, vb.pp("mlp"))?,
            norm3: LayerNorm::new(d, 1e-5, vb.pp("norm3"))?,
            norm4: LayerNorm::new(d, 1e-5, vb.pp("norm4"))?,
            cross_i2t: Attention::new(d, h, r, vb.pp("cross_attn_image_to_token"))?,
            skip_first_pe,
        })
    }

    /// Sums promote and norms give f32 in a reduced-precision run (see the module doc); in f32
    /// every cast is a no-op.
    fn forward(&self, queries: &Tensor, keys: &Tensor, query_pe: &Tensor, key_pe: &Tensor) -> Result<(Tensor, Tensor)> {
        let queries = if self.skip_first_pe {
            self.self_attn.forward(queries, queries, queries)?
        } else {
            let q = add(queries, query_pe)?;
            add(queries, &self.self_attn.forward(&q, &q, queries)?)?
        };
        let queries = norm(&self.norm1, &queries)?;
        let q = add(&queries, query_pe)?;
        let k = add(keys, key_pe)?;
        let queries = norm(&self.norm2, &add(&queries, &self.cross_t2i.forward(&q, &k, keys)?)?)?;
        let queries = norm(&self.norm3, &add(&queries, &self.mlp.forward(&queries)?)?)?;
        let q = add(&queries, query_pe)?;
        let keys = norm(&self.norm4, &add(keys, &self.cross_i2t.forward(&k, &q, &queries)?)?)?;
        Ok((queries, keys))
    }
}

#[derive(Debug, Clone)]
struct TwoWayTransformer {
    layers: Vec<TwoWayBlock>,
    final_attn: Attention,
    norm_final: LayerNorm,
}

impl TwoWayTransformer {
    fn new(cfg: &DecoderConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.transformer_dim;
        Ok(Self {
            layers: (0..cfg.depth)
                .map(|i| TwoWayBlock::new(cfg, i == 0, vb.pp(format!("layers.{i}"))))
                .collect::<Result<_>>()?,
            final_attn: Attention::new(
                d,
                cfg.num_heads,
                cfg.attention_downsample_rate,
                vb.pp("final_attn_token_to_image"),
            )?,
            norm_final: LayerNorm::new(d, 1e-5, vb.pp("norm_final_attn"))?,
        })
    }

    /// image (b, c, h, w), image_pe (b, c, h, w), tokens (b, n, c) → (tokens, image tokens (b, hw, c)).
    fn forward(&self, image: &Tensor, image_pe: &Tensor, tokens: &Tensor) -> Result<(Tensor, Tensor)> {
        // (b, c, h, w) → (b, hw, c) by one copy whatever the layout (the dense PE is a
        // channels-last map viewed as (b, c, h, w): the copy is then row by row).
        let tokens_cl = |t: &Tensor| fastops::contiguous(&t.permute((0, 2, 3, 1))?)?.flatten(1, 2);
        let keys0 = tokens_cl(image)?;
        let key_pe = tokens_cl(image_pe)?;
        let (mut queries, mut keys) = (tokens.clone(), keys0);
        for l in &self.layers {
            (queries, keys) = l.forward(&queries, &keys, tokens, &key_pe)?;
        }
        let q = add(&queries, tokens)?;
        let k = add(&keys, &key_pe)?;
        let queries = norm(
            &self.norm_final,
            &add(&queries, &self.final_attn.forward(&q, &k, &keys)?)?,
        )?;
        Ok((queries, keys))
    }
}

/// SAM's `LayerNorm2d` (over channels, eps 1e-6), applied channels-last; f32 out for an f16/bf16
/// input (under autocast its `pow` is an f32 op, so the normalised map is f32).
#[derive(Debug, Clone)]
struct LayerNorm2d {
    weight: Tensor,
    bias: Tensor,
}

impl Module for LayerNorm2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let rd = residual_dtype(x.dtype());
        candle_nn::ops::layer_norm(
            &x.to_dtype(rd)?.contiguous()?,
            &self.weight.to_dtype(rd)?,
            &self.bias.to_dtype(rd)?,
            1e-6,
        )
    }
}

/// A 2×2 stride-2 transposed convolution as one matmul (each input pixel paints a 2×2 block),
/// channels-last: (b, h·w, in) with the grid (h, w) → (b, 2h, 2w, out).
#[derive(Debug, Clone)]
struct Up2 {
    w: Tensor, // (in, 4·out), column = (ky·2 + kx)·out + o
    b: Tensor, // (out)
    out: usize,
}

impl Up2 {
    fn new(cin: usize, cout: usize, vb: VarBuilder) -> Result<Self> {
        let w = vb.get((cin, cout, 2, 2), "weight")?;
        Ok(Self {
            // Output channels innermost, so painting the 2×2 blocks copies rows of 2·out values.
            w: w.permute((0, 2, 3, 1))?.contiguous()?.reshape((cin, 4 * cout))?,
            b: vb.get(cout, "bias")?,
            out: cout,
        })
    }

    /// In the weights' dtype (autocast's conv_transpose2d): an f32 input is rounded first.
    fn forward(&self, x: &Tensor, (h, w): (usize, usize)) -> Result<Tensor> {
        let (b, n, c) = x.dims3()?;
        let x = x.to_dtype(self.w.dtype())?;
        let y = crate::models::nn::matmul(&x.reshape((b * n, c))?, &self.w)?; // (b·hw, 4·out)
        let y = fastops::contiguous(&y.reshape((b, h, w, 2, 2, self.out))?.permute((0, 1, 3, 2, 4, 5))?)?.reshape((
            b,
            2 * h,
            2 * w,
            self.out,
        ))?;
        y.broadcast_add(&self.b)
    }
}

/// Repeat a (1, h, w, c) map over a batch of `b` prompts.
fn rep_cl(t: &Tensor, b: usize) -> Result<Tensor> {
    let (n, h, w, c) = t.dims4()?;
    if n == b {
        Ok(t.clone())
    } else {
        t.expand((b, h, w, c))?.contiguous()
    }
}

/// Everything the decoder predicts for one prompt set.
#[derive(Debug, Clone)]
pub struct DecoderOutput {
    /// Low-resolution mask logits (b, m, 4h, 4w), m = 3 (multimask) or 1.
    pub low_res_masks: Tensor,
    /// Predicted IoU per mask (b, m).
    pub iou: Tensor,
    /// SAM output tokens used for object pointers (b, m', c).
    pub sam_tokens: Tensor,
    /// Object-score logits (b, 1); 10.0 when the model has no object-score head.
    pub object_score: Tensor,
}

#[derive(Debug, Clone)]
pub struct MaskDecoder {
    cfg: DecoderConfig,
    transformer: TwoWayTransformer,
    iou_token: Tensor,
    mask_tokens: Tensor,
    obj_score_token: Option<Tensor>,
    up1: Up2,
    ln1: LayerNorm2d,
    up2: Up2,
    hyper: Vec<Mlp>,
    iou_head: Mlp,
    obj_head: Option<Mlp>,
    span: tracing::Span,
}

impl MaskDecoder {
    pub fn new(cfg: &DecoderConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.transformer_dim;
        let n_masks = cfg.num_multimask_outputs + 1;
        let obj_head = if cfg.pred_obj_scores {
            Some(if cfg.pred_obj_scores_mlp {
                Mlp::new(d, d, 1, 3, false, vb.pp("pred_obj_score_head"))?
            } else {
                Mlp {
                    layers: vec![Linear::new(d, 1, true, vb.pp("pred_obj_score_head"))?.few_rows()],
                    sigmoid: false,
                }
            })
        } else {
            None
        };
        let ln = vb.pp("output_upscaling.1");
        Ok(Self {
            transformer: TwoWayTransformer::new(cfg, vb.pp("transformer"))?,
            iou_token: vb.get((1, d), "iou_token.weight")?,
            mask_tokens: vb.get((n_masks, d), "mask_tokens.weight")?,
            obj_score_token: if cfg.pred_obj_scores {
                Some(vb.get((1, d), "obj_score_token.weight")?)
            } else {
                None
            },
            up1: Up2::new(d, d / 4, vb.pp("output_upscaling.0"))?,
            ln1: LayerNorm2d {
                weight: ln.get(d / 4, "weight")?,
                bias: ln.get(d / 4, "bias")?,
            },
            up2: Up2::new(d / 4, d / 8, vb.pp("output_upscaling.3"))?,
            hyper: (0..n_masks)
                .map(|i| Mlp::new(d, d, d / 8, 3, false, vb.pp(format!("output_hypernetworks_mlps.{i}"))))
                .collect::<Result<_>>()?,
            iou_head: Mlp::new(
                d,
                cfg.iou_head_hidden_dim,
                n_masks,
                cfg.iou_head_depth,
                cfg.iou_prediction_use_sigmoid,
                vb.pp("iou_prediction_head"),
            )?,
            obj_head,
            cfg: cfg.clone(),
            span: tracing::span!(tracing::Level::TRACE, "sam2-mask-decoder"),
        })
    }

    /// `MaskDecoder.forward` with `repeat_image` when the prompt batch exceeds the image batch;
    /// `high_res` are the two `conv_s` maps channels-last.
    pub fn forward(
        &self,
        image_embed: &Tensor,
        image_pe: &Tensor,
        sparse: &Tensor,
        dense: &Tensor,
        multimask: bool,
        high_res: Option<&(Tensor, Tensor)>,
    ) -> Result<DecoderOutput> {
        let _g = self.span.enter();
        // weights' dtype (that of the matmuls) and the residual dtype (f32 for f16/bf16)
        let dt = self.iou_token.dtype();
        let rd = residual_dtype(dt);
        let b = sparse.dim(0)?;
        let mut out_tokens = vec![];
        if let Some(t) = &self.obj_score_token {
            out_tokens.push(t.clone());
        }
        out_tokens.push(self.iou_token.clone());
        out_tokens.push(self.mask_tokens.clone());
        let s = usize::from(self.obj_score_token.is_some());
        let out_tokens = Tensor::cat(&out_tokens, 0)?.to_dtype(rd)?;
        let (nt, d) = out_tokens.dims2()?;
        let tokens = Tensor::cat(
            &[&out_tokens.unsqueeze(0)?.expand((b, nt, d))?, &sparse.to_dtype(rd)?],
            1,
        )?;
        let rep = |t: &Tensor| -> Result<Tensor> {
            if t.dim(0)? == b {
                Ok(t.clone())
            } else {
                let (_, c, h, w) = t.dims4()?;
                t.expand((b, c, h, w))?.contiguous()
            }
        };
        let src = rep(&image_embed.to_dtype(rd)?)?.broadcast_add(&dense.to_dtype(rd)?)?;
        // the dense PE is an f16/bf16 tensor in the reference (its matmul runs under autocast)
        let pos = rep(&image_pe.to_dtype(dt)?.to_dtype(rd)?)?;
        let (_, _, h, w) = src.dims4()?;
        let (hs, src) = self.transformer.forward(&src, &pos, &tokens)?;
        let iou_out = hs.narrow(1, s, 1)?.squeeze(1)?;
        let n_masks = self.mask_tokens.dim(0)?;
        let mask_out = hs.narrow(1, s + 1, n_masks)?;
        let flat = |t: Tensor| -> Result<Tensor> {
            let (b, h, w, c) = t.dims4()?;
            t.reshape((b, h * w, c))
        };
        let up = self.up1.forward(&src.contiguous()?, (h, w))?;
        let up = match high_res {
            Some((f0, f1)) => {
                let x = fastops::gelu_erf(&self.ln1.forward(&add(&up, &rep_cl(f1, b)?)?)?)?;
                fastops::gelu_erf(&add(&self.up2.forward(&flat(x)?, (2 * h, 2 * w))?, &rep_cl(f0, b)?)?)?
            }
            None => {
                let x = fastops::gelu_erf(&self.ln1.forward(&up)?)?;
                fastops::gelu_erf(&self.up2.forward(&flat(x)?, (2 * h, 2 * w))?)?
            }
        };
        let hyper = (0..n_masks)
            .map(|i| self.hyper[i].forward(&mask_out.narrow(1, i, 1)?))
            .collect::<Result<Vec<_>>>()?;
        let hyper = Tensor::cat(&hyper, 1)?; // (b, n_masks, c/8)
        let (_, hu, wu, cu) = up.dims4()?;
        let masks = crate::models::nn::matmul(
            &hyper.to_dtype(dt)?,
            &up.to_dtype(dt)?.reshape((b, hu * wu, cu))?.transpose(1, 2)?,
        )?
        .reshape((b, n_masks, hu, wu))?;
        let iou = self.iou_head.forward(&iou_out)?;
        let object_score = match &self.obj_head {
            Some(hd) => hd.forward(&hs.narrow(1, 0, 1)?.squeeze(1)?)?,
            None => (Tensor::ones((b, 1), dt, hs.device())? * 10.0)?,
        };
        let (masks, iou) = if multimask {
            (masks.narrow(1, 1, n_masks - 1)?, iou.narrow(1, 1, n_masks - 1)?)
        } else if self.cfg.dynamic_multimask_via_stability {
            self.dynamic_single(&masks, &iou)?
        } else {
            (masks.narrow(1, 0, 1)?, iou.narrow(1, 0, 1)?)
        };
        let sam_tokens = if multimask && self.cfg.use_multimask_token_for_obj_ptr {
            mask_out.narrow(1, 1, n_masks - 1)?
        } else {
            mask_out.narrow(1, 0, 1)?
        };
        Ok(DecoderOutput {
            low_res_masks: masks,
            iou,
            sam_tokens,
            object_score,
        })
    }

    /// Keep the single-mask output when it is stable, else the best multimask output by IoU.
    fn dynamic_single(&self, masks: &Tensor, iou: &Tensor) -> Result<(Tensor, Tensor)> {
        let b = masks.dim(0)?;
        let n = masks.dim(1)?;
        let delta = self.cfg.dynamic_multimask_stability_delta;
        let mut ms = Vec::with_capacity(b);
        let mut is = Vec::with_capacity(b);
        for i in 0..b {
            let m = masks.get(i)?;
            let io = iou.get(i)?;
            let single = m.get(0)?.flatten_all()?.to_dtype(DType::F32)?;
            let inter = single.gt(delta)?.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()?;
            let union = single.gt(-delta)?.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()?;
            let stability = if union > 0.0 { inter / union } else { 1.0 };
            if stability as f64 >= self.cfg.dynamic_multimask_stability_thresh {
                ms.push(m.narrow(0, 0, 1)?);
                is.push(io.narrow(0, 0, 1)?);
            } else {
                let best = argmax(&io.narrow(0, 1, n - 1)?)? + 1;
                ms.push(m.narrow(0, best, 1)?);
                is.push(io.narrow(0, best, 1)?);
            }
        }
        Ok((Tensor::stack(&ms, 0)?, Tensor::stack(&is, 0)?))
    }
}

/// Index of the largest value of a 1-d tensor (first one on ties, as torch.argmax).
pub fn argmax(t: &Tensor) -> Result<usize> {
    let v: Vec<f32> = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    Ok(best)
}
