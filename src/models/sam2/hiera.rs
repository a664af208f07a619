//! Hiera trunk of SAM2's image encoder (`image_encoder.trunk.*`, Meta's `hieradet.py`): a 7×7/4
//! patch embedding, windowed + background positional embeddings (the background grid is resized
//! with PyTorch's bicubic), then multi-scale blocks with windowed or global attention and 2×2 max
//! pooling of the queries where a stage starts. Activations are channels-last (B, H, W, C).

use super::config::{BlockSpec, HieraConfig};
use crate::models::nn::{LayerNorm, Linear};
use crate::preprocess::resize::bicubic_matrix;
use candle_core::{Module, Result, Tensor, D};
use candle_nn::VarBuilder;

/// Pad (B, H, W, C) to multiples of `ws` and cut into (B·nW, ws, ws, C) windows.
fn window_partition(x: &Tensor, ws: usize) -> Result<(Tensor, (usize, usize))> {
    let (b, h, w, c) = x.dims4()?;
    let (ph, pw) = ((ws - h % ws) % ws, (ws - w % ws) % ws);
    let mut x = x.clone();
    if ph > 0 {
        x = x.pad_with_zeros(1, 0, ph)?;
    }
    if pw > 0 {
        x = x.pad_with_zeros(2, 0, pw)?;
    }
    let (hp, wp) = (h + ph, w + pw);
    let x = crate::models::fastops::contiguous(
        &x.reshape((b, hp / ws, ws, wp / ws, ws, c))?
            .permute((0, 1, 3, 2, 4, 5))?,
    )?
    .reshape((b * (hp / ws) * (wp / ws), ws, ws, c))?;
    Ok((x, (hp, wp)))
}

/// Inverse of [`window_partition`], dropping the padding.
fn window_unpartition(x: &Tensor, ws: usize, (hp, wp): (usize, usize), (h, w): (usize, usize)) -> Result<Tensor> {
    let c = x.dim(D::Minus1)?;
    let b = x.dim(0)? / ((hp / ws) * (wp / ws));
    let mut x = crate::models::fastops::contiguous(
        &x.reshape((b, hp / ws, wp / ws, ws, ws, c))?
            .permute((0, 1, 3, 2, 4, 5))?,
    )?
    .reshape((b, hp, wp, c))?;
    if hp > h || wp > w {
        x = x.narrow(1, 0, h)?.narrow(2, 0, w)?;
    }
    Ok(x)
}

/// 2×2 (stride 2, floor) max pooling of (B, H, W, C), as Meta's `do_pool` with `nn.MaxPool2d`.
fn max_pool2(x: &Tensor) -> Result<Tensor> {
    let (b, h, w, c) = x.dims4()?;
    crate::models::fastops::max_pool2_pixels(&x.reshape((b, h * w, c))?, h, w)?.reshape((b, h / 2, w / 2, c))
}

/// Softmax attention of (N, heads, Lq, hd) queries against (N, heads, Lk, hd) keys/values, as
/// PyTorch's `scaled_dot_product_attention` (which Meta's SAM2 calls): the fused kernel of
/// `models::attention` (scores and softmax in f32 for f16/bf16 inputs). Returns (N, heads, Lq, hd).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let hd = q.dim(3)?;
    let t = |x: &Tensor| x.transpose(1, 2);
    crate::models::attention::attention(&t(q)?, &t(k)?, &t(v)?, (hd as f64).powf(-0.5), None)?.transpose(1, 2)
}

#[derive(Debug, Clone)]
struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    fn new(dim: usize, hidden: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            fc1: Linear::new(dim, hidden, true, vb.pp("layers.0"))?,
            fc2: Linear::new(hidden, dim, true, vb.pp("layers.1"))?,
        })
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.fc2.forward(&self.fc1.forward_gelu(x)?)
    }
}

#[derive(Debug, Clone)]
struct Block {
    spec: BlockSpec,
    norm1: LayerNorm,
    qkv: Linear,
    attn_proj: Linear,
    proj: Option<Linear>,
    norm2: LayerNorm,
    mlp: Mlp,
    span: tracing::Span,
}

impl Block {
    fn new(spec: BlockSpec, mlp_ratio: f64, vb: VarBuilder) -> Result<Self> {
        let (d, o) = (spec.dim, spec.dim_out);
        Ok(Self {
            norm1: LayerNorm::new(d, 1e-6, vb.pp("norm1"))?,
            qkv: Linear::new(d, 3 * o, true, vb.pp("attn.qkv"))?,
            attn_proj: Linear::new(o, o, true, vb.pp("attn.proj"))?,
            proj: if d != o {
                Some(Linear::new(d, o, true, vb.pp("proj"))?)
            } else {
                None
            },
            norm2: LayerNorm::new(o, 1e-6, vb.pp("norm2"))?,
            mlp: Mlp::new(o, (o as f64 * mlp_ratio) as usize, vb.pp("mlp"))?,
            span: tracing::span!(tracing::Level::TRACE, "hiera-block"),
            spec,
        })
    }

    /// MultiScaleAttention on (B, h, w, dim) → (B, h', w', dim_out). One copy puts q, k, v
    /// head-major; q is max-pooled per head when the block pools.
    fn attn(&self, x: &Tensor) -> Result<Tensor> {
        let (b, h, w, _) = x.dims4()?;
        let (o, heads) = (self.spec.dim_out, self.spec.heads);
        let hd = o / heads;
        let qkv = self.qkv.forward(x)?.reshape((b, h * w, 3, heads, hd))?;
        // (b, n, heads, hd) views of the projection: the fused attention reads them in place
        let part = |i: usize| qkv.narrow(2, i, 1)?.squeeze(2);
        let (mut q, mut hq, mut wq) = (part(0)?, h, w);
        if self.spec.q_pool {
            (hq, wq) = (h / 2, w / 2);
            // pooled straight from the strided view of the projection
            q = crate::models::fastops::max_pool2_pixels(&q, h, w)?;
        }
        let y = crate::models::attention::attention(&q, &part(1)?, &part(2)?, (hd as f64).powf(-0.5), None)?
            .reshape((b, hq, wq, o))?;
        self.attn_proj.forward(&y)
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let _g = self.span.enter();
        let xn = self.norm1.forward(x)?;
        let shortcut = match &self.proj {
            Some(p) => {
                let s = p.forward(&xn)?;
                if self.spec.q_pool {
                    max_pool2(&s)?
                } else {
                    s
                }
            }
            None => x.clone(),
        };
        let ws = self.spec.window;
        let y = if ws > 0 {
            let (win, _) = window_partition(&xn, ws)?;
            let y = self.attn(&win)?;
            let (h, w) = (shortcut.dim(1)?, shortcut.dim(2)?);
            let ws2 = if self.spec.q_pool { ws / 2 } else { ws };
            let pad = (h + (ws2 - h % ws2) % ws2, w + (ws2 - w % ws2) % ws2);
            window_unpartition(&y, ws2, pad, (h, w))?
        } else {
            self.attn(&xn)?
        };
        let x = (shortcut + y)?;
        let m = self.mlp.forward(&self.norm2.forward(&x)?)?;
        x + m
    }
}

/// The Hiera trunk; `forward` returns the feature map at the end of every stage, channels-last
/// (B, H, W, C), highest resolution first.
#[derive(Debug, Clone)]
pub struct Hiera {
    patch_embed: candle_nn::Conv2d,
    pos_embed: Tensor,        // (1, C, bh, bw)
    pos_embed_window: Tensor, // (1, C, w0, w0)
    blocks: Vec<Block>,
    stage_ends: Vec<usize>,
    span: tracing::Span,
}

impl Hiera {
    pub fn new(cfg: &HieraConfig, vb: VarBuilder) -> Result<Self> {
        let c = cfg.embed_dim;
        let conv = candle_nn::Conv2dConfig {
            stride: 4,
            padding: 3,
            ..Default::default()
        };
        let (bh, bw) = cfg.window_pos_embed_bkg_spatial_size;
        let specs = cfg.blocks();
        for (i, s) in specs.iter().enumerate() {
            if s.heads == 0 || s.dim_out % s.heads != 0 {
                candle_core::bail!("Hiera block {i}: {} heads do not divide width {}", s.heads, s.dim_out);
            }
            if s.q_pool && s.window > 0 && s.window % 2 != 0 {
                candle_core::bail!("Hiera block {i}: window {} cannot be q-pooled by 2", s.window);
            }
        }
        let bvb = vb.pp("blocks");
        Ok(Self {
            patch_embed: candle_nn::conv2d(3, c, 7, conv, vb.pp("patch_embed.proj"))?,
            pos_embed: vb.get((1, c, bh, bw), "pos_embed")?,
            pos_embed_window: vb.get((1, c, cfg.window_spec[0], cfg.window_spec[0]), "pos_embed_window")?,
            blocks: specs
                .into_iter()
                .enumerate()
                .map(|(i, s)| Block::new(s, cfg.mlp_ratio, bvb.pp(i)))
                .collect::<Result<_>>()?,
            stage_ends: cfg.stage_ends(),
            span: tracing::span!(tracing::Level::TRACE, "hiera"),
        })
    }

    /// Background embedding bicubically resized to (h, w) plus the window embedding tiled: (1, h, w, C).
    fn pos_embed(&self, h: usize, w: usize) -> Result<Tensor> {
        let (_, c, bh, bw) = self.pos_embed.dims4()?;
        let dev = self.pos_embed.device();
        let my = Tensor::from_vec(bicubic_matrix::<f64>(bh, h), (h, bh), dev)?;
        let mx = Tensor::from_vec(bicubic_matrix::<f64>(bw, w), (w, bw), dev)?;
        let p = self.pos_embed.squeeze(0)?.to_dtype(candle_core::DType::F32)?; // (c, bh, bw)
        let p = my
            .unsqueeze(0)?
            .broadcast_matmul(&p)?
            .broadcast_matmul(&mx.t()?.unsqueeze(0)?)?; // (c, h, w)
        let ws = self.pos_embed_window.dim(2)?;
        if !h.is_multiple_of(ws) || !w.is_multiple_of(ws) {
            candle_core::bail!("Hiera: the {h}x{w} patch grid is not a multiple of the {ws}x{ws} window embedding");
        }
        let win = self
            .pos_embed_window
            .squeeze(0)?
            .to_dtype(candle_core::DType::F32)?
            .repeat((1, h / ws, w / ws))?;
        (p + win)?
            .permute((1, 2, 0))?
            .unsqueeze(0)?
            .reshape((1, h, w, c))?
            .to_dtype(self.pos_embed.dtype())
    }

    pub fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        let _g = self.span.enter();
        let x = crate::models::nn::conv2d(&self.patch_embed, x)?.permute((0, 2, 3, 1))?; // (b, h, w, c)
        let (_, h, w, _) = x.dims4()?;
        let mut x = x.broadcast_add(&self.pos_embed(h, w)?)?.contiguous()?;
        let mut outs = Vec::with_capacity(self.stage_ends.len());
        for (i, blk) in self.blocks.iter().enumerate() {
            x = blk.forward(&x)?;
            if self.stage_ends.contains(&i) {
                outs.push(x.clone());
            }
        }
        Ok(outs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bicubic_rows_sum_to_one_and_identity_at_same_size() {
        let m = bicubic_matrix::<f64>(7, 256);
        for r in m.chunks(7) {
            assert!((r.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
        let m = bicubic_matrix::<f64>(5, 5);
        for (i, r) in m.chunks(5).enumerate() {
            for (j, v) in r.iter().enumerate() {
                assert!((v - if i == j { 1.0 } else { 0.0 }).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn window_round_trip_with_padding() {
        let dev = candle_core::Device::Cpu;
        let x = Tensor::arange(0f32, 2.0 * 10.0 * 9.0 * 3.0, &dev)
            .unwrap()
            .reshape((2, 10, 9, 3))
            .unwrap();
        let (w, pad) = window_partition(&x, 4).unwrap();
        assert_eq!(w.dims(), &[2 * 3 * 3, 4, 4, 3]);
        let y = window_unpartition(&w, 4, pad, (10, 9)).unwrap();
        let d: f32 = (x - y).unwrap().abs().unwrap().max_all().unwrap().to_scalar().unwrap();
        assert_eq!(d, 0.0);
    }
}
