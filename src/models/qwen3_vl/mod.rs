//! Qwen3-VL-based Sa2VA (`ByteDance/Sa2VA-Qwen3-VL-*`): Sa2VA's `Sa2VAChatModelQwen` wraps
//! transformers' `Qwen3VLForConditionalGeneration` under `model.` (keys `model.model.visual.*`,
//! `model.model.language_model.*`, `model.lm_head.*`) beside `text_hidden_fcs` and SAM2.
//! Image features replace the `<|image_pad|>` rows, positions come from `get_rope_index`
//! (text 1-D, the image as a (0, row, col) grid), and the DeepStack features are added to the
//! first decoder layers' outputs at the image rows.
//! The same type holds a Qwen2.5-VL-based Sa2VA (same layout and prompt path; its own vision tower
//! from `models::qwen2_5_vl` and the [`text::Flavor::Qwen25`] decoder).

pub mod chat;
pub mod config;
pub mod text;
pub mod vision;

use crate::models::nn::Linear;
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
pub use config::Config;
use text::{PromptState, TextModel};
use vision::VisionModel;

/// The vision tower of either family.
#[derive(Debug, Clone)]
pub enum Visual {
    Qwen3(VisionModel),
    Qwen25(crate::models::qwen2_5_vl::vision::VisionModel),
}

impl Visual {
    /// pixel_values of one image → (merged tokens, DeepStack features; none for Qwen2.5-VL).
    pub fn forward(&self, pixel_values: &Tensor, grid_thw: [usize; 3]) -> Result<(Tensor, Vec<Tensor>)> {
        match self {
            Visual::Qwen3(v) => v.forward(pixel_values, grid_thw),
            Visual::Qwen25(v) => v.forward(pixel_values, grid_thw),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Qwen3Vl {
    /// For Qwen2.5-VL, its config in this shape (`qwen2_5_vl::Config::shared`).
    pub config: Config,
    pub visual: Visual,
    pub text: TextModel,
    pub text_hidden_fcs: Option<(Linear, Linear)>,
}

/// The image part of a prompt: merged features (n, h) and the DeepStack features.
#[derive(Debug, Clone)]
pub struct ImageFeatures {
    pub embeds: Tensor,
    pub deepstack: Vec<Tensor>,
    pub grid_thw: [usize; 3],
}

impl Qwen3Vl {
    /// `vb` at the checkpoint root (Sa2VA's layout).
    pub fn new(config: Config, vb: VarBuilder) -> Result<Self> {
        let m = vb.pp("model");
        let visual = Visual::Qwen3(VisionModel::new(&config.vision_config, m.pp("model").pp("visual"))?);
        let text = TextModel::new(&config.text_config, m.pp("model").pp("language_model"), m.pp("lm_head"))?;
        Self::assemble(config, visual, text, vb)
    }

    /// A Qwen2.5-VL-based Sa2VA checkpoint (the same key layout), `vb` at its root.
    pub fn new_qwen25(config: &crate::models::qwen2_5_vl::Config, vb: VarBuilder) -> Result<Self> {
        let shared = config.shared().map_err(candle_core::Error::msg)?;
        let m = vb.pp("model");
        let visual = Visual::Qwen25(crate::models::qwen2_5_vl::vision::VisionModel::new(
            &config.vision_config,
            m.pp("model").pp("visual"),
        )?);
        let text = TextModel::new_flavor(
            &shared.text_config,
            text::Flavor::Qwen25,
            m.pp("model").pp("language_model"),
            m.pp("lm_head"),
        )?;
        Self::assemble(shared, visual, text, vb)
    }

    fn assemble(config: Config, visual: Visual, text: TextModel, vb: VarBuilder) -> Result<Self> {
        if config.vision_config.out_hidden_size != config.text_config.hidden_size {
            candle_core::bail!(
                "vision_config.out_hidden_size {} differs from text_config.hidden_size {}",
                config.vision_config.out_hidden_size,
                config.text_config.hidden_size
            );
        }
        let hidden = config.text_config.hidden_size;
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
            visual,
            text,
            text_hidden_fcs,
        })
    }

    pub fn image_features(&self, pixel_values: &Tensor, grid_thw: [usize; 3]) -> Result<ImageFeatures> {
        let (embeds, deepstack) = self.visual.forward(pixel_values, grid_thw)?;
        Ok(ImageFeatures {
            embeds,
            deepstack,
            grid_thw,
        })
    }

    /// Prompt embeddings (1, L, h) with the image rows replaced, and the prompt state (positions,
    /// DeepStack rows) the text model needs for the prefill.
    pub fn embed_prompt(&self, ids: &[u32], image: Option<&ImageFeatures>) -> Result<(Tensor, PromptState)> {
        let dev = self.visual_device();
        let emb = self.text.embed(&Tensor::new(ids, &dev)?.unsqueeze(0)?)?.squeeze(0)?;
        let img_id = self.config.image_token_id;
        let positions: Vec<u32> = ids
            .iter()
            .enumerate()
            .filter(|(_, &t)| t == img_id)
            .map(|(i, _)| i as u32)
            .collect();
        let grids: Vec<[usize; 3]> = image.map(|i| vec![i.grid_thw]).unwrap_or_default();
        let (pos, delta) = rope_index(ids, img_id, self.config.vision_start_token_id, &grids, self.merge())
            .map_err(candle_core::Error::msg)?;
        let Some(img) = image else {
            if !positions.is_empty() {
                candle_core::bail!("the prompt has {} image tokens but no image", positions.len());
            }
            return Ok((
                emb.unsqueeze(0)?,
                PromptState {
                    positions: pos,
                    delta,
                    visual: None,
                },
            ));
        };
        let n = img.embeds.dim(0)?;
        if positions.len() != n {
            candle_core::bail!(
                "Image features and image tokens do not match: tokens: {}, features {n}",
                positions.len()
            );
        }
        let idx = Tensor::new(positions.as_slice(), &dev)?;
        // Rows at the image positions become the features (masked_scatter).
        let zeroed = emb.index_add(&idx, &emb.index_select(&idx, 0)?.neg()?, 0)?;
        let e = zeroed.index_add(&idx, &img.embeds.to_dtype(emb.dtype())?, 0)?;
        Ok((
            e.unsqueeze(0)?,
            PromptState {
                positions: pos,
                delta,
                visual: Some((positions, img.deepstack.clone())),
            },
        ))
    }

    fn merge(&self) -> usize {
        self.config.vision_config.spatial_merge_size
    }

    fn visual_device(&self) -> candle_core::Device {
        self.text.lm_head.weight().device().clone()
    }

    /// Sa2VA's `[SEG]` projection (Linear → ReLU → Linear).
    pub fn seg_projection(&self, hidden: &Tensor) -> Result<Option<Tensor>> {
        match &self.text_hidden_fcs {
            Some((a, b)) => Ok(Some(b.forward(&a.forward(hidden)?.relu()?)?)),
            None => Ok(None),
        }
    }
}

/// `Qwen3VLModel.get_rope_index` for one sequence of images: text runs count on from the previous
/// maximum + 1 on all three axes; an image of grid (t, h, w) patches takes positions
/// start + (frame, row, col) over its (t, h/m, w/m) merged grid. Returns the positions and
/// `max + 1 − len` (the delta of later tokens).
pub fn rope_index(
    ids: &[u32],
    image_token: u32,
    vision_start: u32,
    grids: &[[usize; 3]],
    merge: usize,
) -> std::result::Result<(Vec<[i64; 3]>, i64), String> {
    let mut out: Vec<[i64; 3]> = Vec::with_capacity(ids.len());
    let next = |out: &Vec<[i64; 3]>| out.iter().flat_map(|p| p.iter()).max().map(|m| m + 1).unwrap_or(0);
    let mut st = 0usize;
    // Images are the image tokens that follow a vision_start token, in order.
    let starts: Vec<usize> = ids
        .windows(2)
        .enumerate()
        .filter(|(_, w)| w[0] == vision_start && w[1] == image_token)
        .map(|(i, _)| i + 1)
        .collect();
    if starts.len() != grids.len() {
        return Err(format!(
            "the prompt has {} images but {} grids were given",
            starts.len(),
            grids.len()
        ));
    }
    for (&ed, g) in starts.iter().zip(grids) {
        let base = next(&out);
        for k in 0..ed - st {
            let p = base + k as i64;
            out.push([p; 3]);
        }
        let (t, h, w) = (g[0], g[1] / merge, g[2] / merge);
        let base = next(&out);
        for f in 0..t {
            for r in 0..h {
                for c in 0..w {
                    out.push([base + f as i64, base + r as i64, base + c as i64]);
                }
            }
        }
        st = ed + t * h * w;
        if st > ids.len() || ids[ed..st].iter().any(|&x| x != image_token) || ids.get(st) == Some(&image_token) {
            return Err(format!("the image at token {ed} needs {} image tokens", t * h * w));
        }
    }
    let base = next(&out);
    for k in 0..ids.len() - st {
        out.push([base + k as i64; 3]);
    }
    let delta = next(&out) - ids.len() as i64;
    Ok((out, delta))
}

#[cfg(test)]
mod tests {
    use super::rope_index;

    /// Sa2VA-Qwen3-VL-4B's head geometry (vision head_dim 64 over the 48² learned positions, text
    /// head_dim 128 with MRoPE [24, 20, 20] and grouped KV heads) at small widths: it builds and runs.
    #[test]
    fn the_4b_head_geometry_builds_and_runs_a_prefill() {
        let cfg: super::Config = serde_json::from_value(serde_json::json!({
            "image_token_id": 5, "vision_start_token_id": 3, "vision_end_token_id": 4,
            "vision_config": {"depth": 2, "hidden_size": 256, "intermediate_size": 64, "num_heads": 4,
                "out_hidden_size": 512, "deepstack_visual_indexes": [0, 1], "model_type": "qwen3_vl"},
            "text_config": {"vocab_size": 64, "hidden_size": 512, "intermediate_size": 64,
                "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 128,
                "rope_scaling": {"mrope_interleaved": true, "mrope_section": [24, 20, 20], "rope_type": "default"}}
        }))
        .unwrap();
        assert_eq!(cfg.vision_config.num_position_embeddings, 2304);
        let dev = candle_core::Device::Cpu;
        let vm = candle_nn::VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(&vm, candle_core::DType::F32, &dev);
        let mut m = super::Qwen3Vl::new(cfg, vb).unwrap();
        assert!(m.text_hidden_fcs.is_none());
        let px = candle_core::Tensor::zeros((64, 3 * 2 * 16 * 16), candle_core::DType::F32, &dev).unwrap();
        let f = m.image_features(&px, [1, 8, 8]).unwrap();
        assert_eq!(f.embeds.dims(), &[16, 512]);
        assert_eq!(f.deepstack.len(), 2);
        let mut ids = vec![1, 3];
        ids.extend([5; 16]);
        ids.extend([4, 2]);
        let (e, state) = m.embed_prompt(&ids, Some(&f)).unwrap();
        m.text.set_prompt(state);
        let h = m.text.forward_embeds(&e, 0).unwrap();
        assert_eq!(h.dims(), &[1, 20, 512]);
        assert_eq!(m.text.logits(&h).unwrap().dims(), &[1, 20, 64]);
        // a decode step after the prompt
        let x = m
            .text
            .embed(&candle_core::Tensor::new(&[[2u32]], &dev).unwrap())
            .unwrap();
        assert_eq!(m.text.forward_embeds(&x, 20).unwrap().dims(), &[1, 1, 512]);
    }

    #[test]
    fn rope_index_places_the_image_as_a_grid_and_counts_on_after_it() {
        // text(2) <vs> img(2x3 merged from a 4x6 patch grid) <ve> text(1)
        let (vs, img, ve) = (7, 9, 8);
        let mut ids = vec![1, vs];
        ids.extend([img; 6]);
        ids.extend([ve, 3]);
        let (pos, delta) = rope_index(&ids, img, vs, &[[1, 4, 6]], 2).unwrap();
        assert_eq!(pos[..2], [[0; 3], [1; 3]]);
        assert_eq!(pos[2], [2, 2, 2]);
        assert_eq!(pos[7], [2, 3, 4]); // last image token: row 1, col 2
        assert_eq!(pos[8], [5; 3]); // max (4) + 1
        assert_eq!(pos[9], [6; 3]);
        assert_eq!(delta, 7 - 10);
        // the grid must match the image tokens, one grid per image
        assert!(rope_index(&ids, img, vs, &[[1, 4, 4]], 2).is_err());
        assert!(rope_index(&ids, img, vs, &[], 2).is_err());
    }
}
