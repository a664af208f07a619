//! Qwen2.5-VL's vision tower (transformers 4.57 `Qwen2_5_VisionTransformerPretrainedModel`): a
//! bias-free Conv3d patch embedding (a linear map of each flattened C·T·P·P patch), 2-D rotary
//! attention, RMSNorm blocks with a gated SiLU MLP, window attention in all blocks but
//! `fullatt_block_indexes`, and the 2×2 patch merger (`ln_q` RMSNorm, Linear, GELU, Linear).
//! No learned position table and no DeepStack (unlike Qwen3-VL's).

use super::config::VisionConfig;
use crate::models::nn::{Linear, RmsNorm};
use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

#[derive(Debug, Clone)]
struct Block {
    norm1: RmsNorm,
    norm2: RmsNorm,
    qkv: Linear,
    proj: Linear,
    gate: Linear,
    up: Linear,
    down: Linear,
    act: candle_nn::Activation,
    heads: usize,
    span: tracing::Span,
}

impl Block {
    fn new(c: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let (h, i) = (c.hidden_size, c.intermediate_size);
        let m = vb.pp("mlp");
        Ok(Self {
            norm1: RmsNorm::new(h, 1e-6, vb.pp("norm1"))?,
            norm2: RmsNorm::new(h, 1e-6, vb.pp("norm2"))?,
            qkv: Linear::new(h, 3 * h, true, vb.pp("attn").pp("qkv"))?,
            proj: Linear::new(h, h, true, vb.pp("attn").pp("proj"))?,
            gate: Linear::new(h, i, true, m.pp("gate_proj"))?,
            up: Linear::new(h, i, true, m.pp("up_proj"))?,
            down: Linear::new(i, h, true, m.pp("down_proj"))?,
            act: c.hidden_act,
            heads: c.num_heads,
            span: tracing::span!(tracing::Level::TRACE, "qwen25vl-vit-block"),
        })
    }

    /// x (n, h) in window order; cos/sin (n, head_dim/2); attention within each [a, b) of `segments`.
    fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, segments: &[(usize, usize)]) -> Result<Tensor> {
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
        let scale = 1.0 / (d as f64).sqrt();
        // Runs of consecutive equal-length windows go through attention as one batch.
        let mut parts = Vec::new();
        let mut i = 0;
        while i < segments.len() {
            let (a, b) = segments[i];
            let len = b - a;
            let mut k_end = i + 1;
            while k_end < segments.len() && segments[k_end].1 - segments[k_end].0 == len {
                k_end += 1;
            }
            let cnt = k_end - i;
            let s = |t: &Tensor| t.narrow(1, a, cnt * len)?.reshape((cnt, len, self.heads, d));
            let o = crate::models::attention::attention(&s(&q)?, &s(&k)?, &s(&v)?, scale, None)?;
            parts.push(o.reshape((1, cnt * len, self.heads, d))?);
            i = k_end;
        }
        let a = Tensor::cat(&parts, 1)?;
        let x = (x + self.proj.forward(&a.reshape((n, h))?)?)?;
        let y = self.norm2.forward(&x)?;
        let m = crate::models::nn::gated(&self.gate.forward(&y)?, &self.up.forward(&y)?, self.act)?;
        x + self.down.forward(&m)?
    }
}

/// `get_window_index` for one image of (t, gh, gw) patches: the merged-token order that groups
/// each window (`ws` merged tokens a side, partial at the right and bottom edges) together, and the
/// windows' patch bounds [a, b) in that order (empty windows dropped, as `unique_consecutive` does).
pub fn window_index(grid_thw: [usize; 3], merge: usize, ws: usize) -> (Vec<u32>, Vec<(usize, usize)>) {
    let [t, gh, gw] = grid_thw;
    let (lh, lw) = (gh / merge, gw / merge);
    let unit = merge * merge;
    let (nwh, nww) = (lh.div_ceil(ws), lw.div_ceil(ws));
    let mut index = Vec::with_capacity(t * lh * lw);
    let mut bounds = Vec::new();
    let mut start = 0;
    for f in 0..t {
        for wh in 0..nwh {
            for ww in 0..nww {
                let before = index.len();
                for r in wh * ws..((wh + 1) * ws).min(lh) {
                    for c in ww * ws..((ww + 1) * ws).min(lw) {
                        index.push((f * lh * lw + r * lw + c) as u32);
                    }
                }
                let len = (index.len() - before) * unit;
                if len > 0 {
                    bounds.push((start, start + len));
                    start += len;
                }
            }
        }
    }
    (index, bounds)
}

#[derive(Debug, Clone)]
pub struct VisionModel {
    pub config: VisionConfig,
    patch_embed: Linear,
    blocks: Vec<Block>,
    ln_q: RmsNorm,
    fc1: Linear,
    fc2: Linear,
    span: tracing::Span,
}

impl VisionModel {
    /// `vb` at the checkpoint's `model.model.visual`.
    pub fn new(c: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let k = c.in_channels * c.temporal_patch_size * c.patch_size * c.patch_size;
        let w = vb.pp("patch_embed").pp("proj").get(
            (
                c.hidden_size,
                c.in_channels,
                c.temporal_patch_size,
                c.patch_size,
                c.patch_size,
            ),
            "weight",
        )?;
        let patch_embed = Linear::from_weights(w.reshape((c.hidden_size, k))?, None);
        let blocks = (0..c.depth)
            .map(|i| Block::new(c, vb.pp("blocks").pp(i)))
            .collect::<Result<_>>()?;
        let merged = c.hidden_size * c.spatial_merge_size * c.spatial_merge_size;
        let mg = vb.pp("merger");
        Ok(Self {
            config: c.clone(),
            patch_embed,
            blocks,
            ln_q: RmsNorm::new(c.hidden_size, 1e-6, mg.pp("ln_q"))?,
            fc1: Linear::new(merged, merged, true, mg.pp("mlp").pp("0"))?,
            fc2: Linear::new(merged, c.out_hidden_size, true, mg.pp("mlp").pp("2"))?,
            span: tracing::span!(tracing::Level::TRACE, "qwen25vl-vit"),
        })
    }

    /// (cos, sin) (n, head_dim/2) of the 2-D rotary embedding for the patches in processor order
    /// (2×2 merge blocks row-major): the first half of the frequencies follow the row, the rest the column.
    fn rotary(&self, gh: usize, gw: usize, dev: &candle_core::Device) -> Result<(Tensor, Tensor)> {
        let m = self.config.spatial_merge_size;
        let dim = self.config.hidden_size / self.config.num_heads / 2;
        let inv: Vec<f32> = (0..dim)
            .step_by(2)
            .map(|i| 1.0 / 10000f32.powf(i as f32 / dim as f32))
            .collect();
        let mut f = Vec::with_capacity(gh * gw * dim);
        for bh in 0..gh / m {
            for bw in 0..gw / m {
                for ih in 0..m {
                    for iw in 0..m {
                        let (r, c) = ((bh * m + ih) as f32, (bw * m + iw) as f32);
                        f.extend(inv.iter().map(|w| r * w));
                        f.extend(inv.iter().map(|w| c * w));
                    }
                }
            }
        }
        let t = Tensor::from_vec(f, (gh * gw, dim), dev)?;
        Ok((t.cos()?, t.sin()?))
    }

    /// pixel_values (h·w, C·T·P·P) of one image with its grid → merged tokens (h·w/4, out) in
    /// processor order. The DeepStack list is empty (the shared prompt code takes one).
    pub fn forward(&self, pixel_values: &Tensor, grid_thw: [usize; 3]) -> Result<(Tensor, Vec<Tensor>)> {
        let _g = self.span.enter();
        let [t, gh, gw] = grid_thw;
        let m = self.config.spatial_merge_size;
        let n = pixel_values.dim(0)?;
        if t != 1 || gh % m != 0 || gw % m != 0 || n != gh * gw {
            candle_core::bail!("vision tower: grid {grid_thw:?} does not fit {n} patches of one image");
        }
        let dt = self.patch_embed.weight().dtype();
        let dev = pixel_values.device().clone();
        let x = self.patch_embed.forward(&pixel_values.to_dtype(dt)?)?;
        let (cos, sin) = self.rotary(gh, gw, &dev)?;
        let unit = m * m;
        let ws = self.config.window_size / m / self.config.patch_size;
        let (widx, windows) = window_index(grid_thw, m, ws);
        let idx = Tensor::new(widx.as_slice(), &dev)?;
        // Reorder whole merge units into window order (tokens, cos and sin alike).
        let reorder = |a: &Tensor| -> Result<Tensor> {
            let c = a.dim(1)?;
            a.reshape((n / unit, unit * c))?.index_select(&idx, 0)?.reshape((n, c))
        };
        let mut x = reorder(&x)?;
        let (cos, sin) = (reorder(&cos)?, reorder(&sin)?);
        let full = [(0, n)];
        for (i, b) in self.blocks.iter().enumerate() {
            let seg: &[(usize, usize)] = if self.config.fullatt_block_indexes.contains(&i) {
                &full
            } else {
                &windows
            };
            x = b.forward(&x, &cos, &sin, seg)?;
        }
        let merged = self.ln_q.forward(&x)?.reshape((n / unit, ()))?;
        let y = self.fc2.forward(&self.fc1.forward_gelu(&merged)?)?;
        // Back to processor order: row widx[j] of the output is row j of y.
        let mut rev = vec![0u32; widx.len()];
        for (j, &w) in widx.iter().enumerate() {
            rev[w as usize] = j as u32;
        }
        Ok((y.index_select(&Tensor::new(rev, &dev)?, 0)?, vec![]))
    }
}

#[cfg(test)]
mod tests {
    /// Sa2VA-Qwen2.5-VL-3B's geometry at small depth: vision head_dim 80 (1280 / 16), windows of
    /// 112 px = 4 merged tokens, one full-attention block; it builds and runs on a grid with partial windows.
    #[test]
    fn the_3b_vision_geometry_builds_and_runs() {
        let c: super::VisionConfig = serde_json::from_value(serde_json::json!({
            "depth": 2, "hidden_size": 1280, "intermediate_size": 64, "num_heads": 16,
            "out_hidden_size": 64, "fullatt_block_indexes": [1]
        }))
        .unwrap();
        assert_eq!(c.window_size, 112);
        let dev = candle_core::Device::Cpu;
        let vm = candle_nn::VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(&vm, candle_core::DType::F32, &dev);
        let m = super::VisionModel::new(&c, vb).unwrap();
        let px = candle_core::Tensor::zeros((10 * 12, 3 * 2 * 14 * 14), candle_core::DType::F32, &dev).unwrap();
        let (y, deep) = m.forward(&px, [1, 10, 12]).unwrap();
        assert_eq!(y.dims(), &[30, 64]);
        assert!(deep.is_empty());
        assert!(m.forward(&px, [1, 10, 10]).is_err());
    }

    #[test]
    fn windows_cover_the_grid_with_partial_edges() {
        // 3x5 merged tokens, windows of 2: rows {0,1},{2} x cols {0,1},{2,3},{4}
        let (idx, b) = super::window_index([1, 6, 10], 2, 2);
        assert_eq!(idx.len(), 15);
        assert_eq!(&idx[..4], &[0, 1, 5, 6]);
        assert_eq!(b.len(), 6);
        assert_eq!(b[0], (0, 16));
        assert_eq!(b[2], (32, 40)); // the 2x1 window at the right edge
        assert_eq!(b.last(), Some(&(56, 60)));
        let mut s = idx.clone();
        s.sort();
        assert_eq!(s, (0..15).collect::<Vec<u32>>());
    }
}
