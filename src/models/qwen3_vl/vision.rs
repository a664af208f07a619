//! Qwen3-VL's vision tower (transformers 4.57 `Qwen3VLVisionModel`): a Conv3d patch embedding (a
//! linear map of each flattened C·T·P·P patch), learned position embeddings bilinearly interpolated
//! to the patch grid, 2-D rotary attention over the whole image, the 2×2 patch merger, and the
//! DeepStack mergers that tap intermediate blocks for the LLM's first layers.

use super::config::VisionConfig;
use crate::models::nn::{LayerNorm, Linear};
use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

#[derive(Debug, Clone)]
struct Block {
    norm1: LayerNorm,
    norm2: LayerNorm,
    qkv: Linear,
    proj: Linear,
    fc1: Linear,
    fc2: Linear,
    act: candle_nn::Activation,
    heads: usize,
    span: tracing::Span,
}

impl Block {
    fn new(c: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let h = c.hidden_size;
        Ok(Self {
            norm1: LayerNorm::new(h, 1e-6, vb.pp("norm1"))?,
            norm2: LayerNorm::new(h, 1e-6, vb.pp("norm2"))?,
            qkv: Linear::new(h, 3 * h, true, vb.pp("attn").pp("qkv"))?,
            proj: Linear::new(h, h, true, vb.pp("attn").pp("proj"))?,
            fc1: Linear::new(h, c.intermediate_size, true, vb.pp("mlp").pp("linear_fc1"))?,
            fc2: Linear::new(c.intermediate_size, h, true, vb.pp("mlp").pp("linear_fc2"))?,
            act: c.hidden_act,
            heads: c.num_heads,
            span: tracing::span!(tracing::Level::TRACE, "qwen3vl-vit-block"),
        })
    }

    /// x (n, h); cos/sin (n, head_dim/2): one image, full (non-causal) attention.
    fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let _g = self.span.enter();
        let (n, h) = x.dims2()?;
        let d = h / self.heads;
        let qkv = self
            .qkv
            .forward(&self.norm1.forward(x)?)?
            .reshape((n, 3, self.heads, d))?;
        // RoPE in f32 whatever the dtype, as apply_rotary_pos_emb_vision upcasts.
        let dt = x.dtype();
        let rot = |i: usize| -> Result<Tensor> {
            let t = qkv.narrow(1, i, 1)?.squeeze(1)?.transpose(0, 1)?.unsqueeze(0)?;
            let t = t.to_dtype(DType::F32)?.contiguous()?;
            candle_nn::rotary_emb::rope(&t, cos, sin)?.to_dtype(dt)?.transpose(1, 2)
        };
        let (q, k) = (rot(0)?, rot(1)?);
        let v = qkv.narrow(1, 2, 1)?.squeeze(1)?.unsqueeze(0)?;
        let a = crate::models::attention::attention(&q, &k, &v, 1.0 / (d as f64).sqrt(), None)?;
        let x = (x + self.proj.forward(&a.reshape((n, h))?)?)?;
        let m = crate::models::nn::activation(&self.fc1.forward(&self.norm2.forward(&x)?)?, self.act)?;
        x + self.fc2.forward(&m)?
    }
}

/// `Qwen3VLVisionPatchMerger`: LayerNorm (per patch, or over the merged 4·h with
/// `postshuffle`), Linear, GELU (erf), Linear.
#[derive(Debug, Clone)]
struct Merger {
    norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    postshuffle: bool,
    merged: usize,
}

impl Merger {
    fn new(c: &VisionConfig, postshuffle: bool, vb: VarBuilder) -> Result<Self> {
        let merged = c.hidden_size * c.spatial_merge_size * c.spatial_merge_size;
        Ok(Self {
            norm: LayerNorm::new(if postshuffle { merged } else { c.hidden_size }, 1e-6, vb.pp("norm"))?,
            fc1: Linear::new(merged, merged, true, vb.pp("linear_fc1"))?,
            fc2: Linear::new(merged, c.out_hidden_size, true, vb.pp("linear_fc2"))?,
            postshuffle,
            merged,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = if self.postshuffle {
            self.norm.forward(&x.reshape(((), self.merged))?)?
        } else {
            self.norm.forward(x)?.reshape(((), self.merged))?
        };
        self.fc2.forward(&self.fc1.forward_gelu(&x)?)
    }
}

/// torch.linspace in f32 (the second half counted back from the end, as ATen does).
fn linspace(start: f32, end: f32, steps: usize) -> Vec<f32> {
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / (steps - 1) as f32;
    (0..steps)
        .map(|i| {
            if i < steps / 2 {
                start + step * i as f32
            } else {
                end - step * (steps - 1 - i) as f32
            }
        })
        .collect()
}

#[derive(Debug, Clone)]
pub struct VisionModel {
    pub config: VisionConfig,
    patch_embed: Linear,
    pos_embed: Tensor,
    blocks: Vec<Block>,
    merger: Merger,
    deepstack: Vec<Merger>,
    span: tracing::Span,
}

impl VisionModel {
    pub fn new(c: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let k = c.in_channels * c.temporal_patch_size * c.patch_size * c.patch_size;
        let pe = vb.pp("patch_embed").pp("proj");
        let w = pe.get(
            (
                c.hidden_size,
                c.in_channels,
                c.temporal_patch_size,
                c.patch_size,
                c.patch_size,
            ),
            "weight",
        )?;
        let patch_embed = Linear::from_weights(w.reshape((c.hidden_size, k))?, Some(pe.get(c.hidden_size, "bias")?));
        let side = (c.num_position_embeddings as f64).sqrt() as usize;
        if side * side != c.num_position_embeddings {
            candle_core::bail!(
                "vision_config.num_position_embeddings {} is not a square",
                c.num_position_embeddings
            );
        }
        let pos_embed = vb
            .pp("pos_embed")
            .get((c.num_position_embeddings, c.hidden_size), "weight")?;
        let blocks = (0..c.depth)
            .map(|i| Block::new(c, vb.pp("blocks").pp(i)))
            .collect::<Result<_>>()?;
        if let Some(&i) = c.deepstack_visual_indexes.iter().find(|&&i| i >= c.depth) {
            candle_core::bail!("vision_config.deepstack_visual_indexes names block {i} of {}", c.depth);
        }
        let deepstack = (0..c.deepstack_visual_indexes.len())
            .map(|i| Merger::new(c, true, vb.pp("deepstack_merger_list").pp(i)))
            .collect::<Result<_>>()?;
        Ok(Self {
            config: c.clone(),
            patch_embed,
            pos_embed,
            blocks,
            merger: Merger::new(c, false, vb.pp("merger"))?,
            deepstack,
            span: tracing::span!(tracing::Level::TRACE, "qwen3vl-vit"),
        })
    }

    /// Patch (row, col) of each token, in the processor's order (2×2 merge blocks row-major).
    fn coords(&self, gh: usize, gw: usize) -> Vec<(usize, usize)> {
        let m = self.config.spatial_merge_size;
        let mut v = Vec::with_capacity(gh * gw);
        for bh in 0..gh / m {
            for bw in 0..gw / m {
                for ih in 0..m {
                    for iw in 0..m {
                        v.push((bh * m + ih, bw * m + iw));
                    }
                }
            }
        }
        v
    }

    /// `fast_pos_embed_interpolate`: the learned side×side grid sampled bilinearly (corners aligned).
    fn pos_embeds(&self, coords: &[(usize, usize)], gh: usize, gw: usize) -> Result<Tensor> {
        let side = (self.config.num_position_embeddings as f64).sqrt() as usize;
        let (hs, ws) = (
            linspace(0.0, (side - 1) as f32, gh),
            linspace(0.0, (side - 1) as f32, gw),
        );
        let mut idx: Vec<Vec<u32>> = (0..4).map(|_| Vec::with_capacity(coords.len())).collect();
        let mut wts: Vec<Vec<f32>> = (0..4).map(|_| Vec::with_capacity(coords.len())).collect();
        for &(r, c) in coords {
            let (y, x) = (hs[r], ws[c]);
            let (y0, x0) = (y as usize, x as usize);
            let (y1, x1) = ((y0 + 1).min(side - 1), (x0 + 1).min(side - 1));
            let (dy, dx) = (y - y0 as f32, x - x0 as f32);
            let cand = [
                (y0 * side + x0, (1.0 - dy) * (1.0 - dx)),
                (y0 * side + x1, (1.0 - dy) * dx),
                (y1 * side + x0, dy * (1.0 - dx)),
                (y1 * side + x1, dy * dx),
            ];
            for (k, (i, w)) in cand.into_iter().enumerate() {
                idx[k].push(i as u32);
                wts[k].push(w);
            }
        }
        let dev = self.pos_embed.device();
        let mut acc: Option<Tensor> = None;
        for (i, w) in idx.into_iter().zip(wts) {
            let n = w.len();
            let rows = self.pos_embed.index_select(&Tensor::new(i, dev)?, 0)?;
            let t = rows.broadcast_mul(&Tensor::from_vec(w, (n, 1), dev)?.to_dtype(rows.dtype())?)?;
            acc = Some(match acc {
                None => t,
                Some(a) => (a + t)?,
            });
        }
        acc.ok_or_else(|| candle_core::Error::msg("empty position grid"))
    }

    /// (cos, sin) of the 2-D rotary embedding: the first half of each head's frequencies follow
    /// the patch row, the second half the column.
    fn rotary(&self, coords: &[(usize, usize)]) -> Result<(Tensor, Tensor)> {
        let dim = self.config.hidden_size / self.config.num_heads / 2;
        let inv: Vec<f32> = (0..dim)
            .step_by(2)
            .map(|i| 1.0 / 10000f32.powf(i as f32 / dim as f32))
            .collect();
        let mut f = Vec::with_capacity(coords.len() * dim);
        for &(r, c) in coords {
            f.extend(inv.iter().map(|w| r as f32 * w));
            f.extend(inv.iter().map(|w| c as f32 * w));
        }
        let t = Tensor::from_vec(f, (coords.len(), dim), self.pos_embed.device())?;
        Ok((t.cos()?, t.sin()?))
    }

    /// pixel_values (t·h·w, C·T·P·P) of one image with its grid → (merged tokens (t·h·w/4, out),
    /// the DeepStack features in `deepstack_visual_indexes` order).
    pub fn forward(&self, pixel_values: &Tensor, grid_thw: [usize; 3]) -> Result<(Tensor, Vec<Tensor>)> {
        let _g = self.span.enter();
        let [t, gh, gw] = grid_thw;
        let m = self.config.spatial_merge_size;
        if t != 1 || gh % m != 0 || gw % m != 0 || pixel_values.dim(0)? != gh * gw {
            candle_core::bail!(
                "vision tower: grid {grid_thw:?} does not fit {} patches of one image",
                pixel_values.dim(0)?
            );
        }
        let x = self
            .patch_embed
            .forward(&pixel_values.to_dtype(self.pos_embed.dtype())?)?;
        let coords = self.coords(gh, gw);
        let mut x = (x + self.pos_embeds(&coords, gh, gw)?)?;
        let (cos, sin) = self.rotary(&coords)?;
        let mut deep = Vec::new();
        for (i, b) in self.blocks.iter().enumerate() {
            x = b.forward(&x, &cos, &sin)?;
            if let Some(k) = self.config.deepstack_visual_indexes.iter().position(|&j| j == i) {
                deep.push(self.deepstack[k].forward(&x)?);
            }
        }
        Ok((self.merger.forward(&x)?, deep))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn linspace_counts_the_second_half_from_the_end() {
        let v = super::linspace(0.0, 7.0, 34);
        assert_eq!(v[0], 0.0);
        assert_eq!(v[33], 7.0);
        assert_eq!(v.len(), 34);
    }
}
