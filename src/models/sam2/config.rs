//! SAM2 geometry. Sa2VA's `config.json` has no SAM2 section and Meta's `.pt` files carry no
//! config, so the geometry is read from the checkpoint itself (widths from tensor shapes, stage
//! depths from the block keys, stage and MLP growth from the `proj`/`mlp` shapes); what shapes
//! cannot show (attention heads, window sizes after the first stage, global-attention blocks)
//! comes from the known Meta variant with those stage depths (Sa2VA always builds hiera-L), and
//! an explicit `sam2` block in `config.json` (all fields optional) overrides both.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

pub use crate::models::checkpoint::ShapeIndex;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HieraConfig {
    pub embed_dim: usize,
    pub num_heads: usize,
    pub stages: Vec<usize>,
    pub global_att_blocks: Vec<usize>,
    pub window_spec: Vec<usize>,
    pub window_pos_embed_bkg_spatial_size: (usize, usize),
    pub q_pool: usize,
    pub q_stride: (usize, usize),
    pub dim_mul: f64,
    pub head_mul: f64,
    pub mlp_ratio: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NeckConfig {
    pub d_model: usize,
    pub backbone_channel_list: Vec<usize>,
    pub fpn_top_down_levels: Vec<usize>,
    /// `nearest` (every released SAM2) or `bilinear`.
    pub fpn_interp_model: String,
    /// `sum` or `avg`.
    pub fuse_type: String,
    pub scalp: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecoderConfig {
    pub transformer_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    pub mlp_dim: usize,
    pub attention_downsample_rate: usize,
    pub num_multimask_outputs: usize,
    pub iou_head_depth: usize,
    pub iou_head_hidden_dim: usize,
    pub iou_prediction_use_sigmoid: bool,
    pub pred_obj_scores: bool,
    pub pred_obj_scores_mlp: bool,
    pub use_high_res_features: bool,
    pub use_multimask_token_for_obj_ptr: bool,
    pub dynamic_multimask_via_stability: bool,
    pub dynamic_multimask_stability_delta: f64,
    pub dynamic_multimask_stability_thresh: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sam2Config {
    pub image_size: usize,
    pub trunk: HieraConfig,
    pub neck: NeckConfig,
    pub decoder: DecoderConfig,
    pub directly_add_no_mem_embed: bool,
}

/// Per-block geometry derived from [`HieraConfig`] exactly as `Hiera.__init__` derives it.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockSpec {
    pub dim: usize,
    pub dim_out: usize,
    pub heads: usize,
    pub window: usize,
    pub q_pool: bool,
}

impl HieraConfig {
    /// Index of the last block of each stage.
    pub fn stage_ends(&self) -> Vec<usize> {
        let mut acc = 0;
        self.stages
            .iter()
            .map(|s| {
                acc += s;
                acc - 1
            })
            .collect()
    }

    /// The window size lags a block: a stage's first block still uses the previous stage's window.
    pub fn blocks(&self) -> Vec<BlockSpec> {
        let ends = self.stage_ends();
        let q_pool_blocks: Vec<usize> = ends[..ends.len() - 1].iter().map(|e| e + 1).take(self.q_pool).collect();
        let (mut dim, mut heads, mut stage) = (self.embed_dim, self.num_heads, 1usize);
        let depth: usize = self.stages.iter().sum();
        let mut out = Vec::with_capacity(depth);
        for i in 0..depth {
            let mut dim_out = dim;
            let mut window = self.window_spec[stage - 1];
            if self.global_att_blocks.contains(&i) {
                window = 0;
            }
            if i > 0 && ends.contains(&(i - 1)) {
                dim_out = (dim as f64 * self.dim_mul) as usize;
                heads = (heads as f64 * self.head_mul) as usize;
                stage += 1;
            }
            out.push(BlockSpec {
                dim,
                dim_out,
                heads,
                window,
                q_pool: q_pool_blocks.contains(&i),
            });
            dim = dim_out;
        }
        out
    }

    /// Output channels per stage, lowest resolution first (the neck's `backbone_channel_list`).
    pub fn channel_list(&self) -> Vec<usize> {
        let b = self.blocks();
        self.stage_ends().iter().rev().map(|&e| b[e].dim_out).collect()
    }
}

/// Settings of Meta's released Hiera variants that shapes cannot reveal.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    pub name: &'static str,
    pub stages: [usize; 4],
    pub num_heads: usize,
    pub global_att_blocks: &'static [usize],
    pub window_spec: [usize; 4],
}

/// Meta's Hiera variants (SAM2 and SAM2.1 share them), told apart by their stage depths alone,
/// so a checkpoint with a variant's depths but other widths still gets its heads and windows.
pub const VARIANTS: [Variant; 4] = [
    Variant {
        name: "hiera_t",
        stages: [1, 2, 7, 2],
        num_heads: 1,
        global_att_blocks: &[5, 7, 9],
        window_spec: [8, 4, 14, 7],
    },
    Variant {
        name: "hiera_s",
        stages: [1, 2, 11, 2],
        num_heads: 1,
        global_att_blocks: &[7, 10, 13],
        window_spec: [8, 4, 14, 7],
    },
    Variant {
        name: "hiera_b+",
        stages: [2, 3, 16, 3],
        num_heads: 2,
        global_att_blocks: &[12, 16, 20],
        window_spec: [8, 4, 14, 7],
    },
    Variant {
        name: "hiera_l",
        stages: [2, 6, 36, 4],
        num_heads: 2,
        global_att_blocks: &[23, 33, 43],
        window_spec: [8, 4, 16, 8],
    },
];

/// The variant Sa2VA builds for every checkpoint (`SAM2_HIERA_L` in its `sam2.py`, SAM2 not 2.1).
pub const SA2VA_VARIANT: &Variant = &VARIANTS[3];

/// The known variant with these stage depths.
pub fn variant_by_stages(stages: &[usize]) -> Option<&'static Variant> {
    VARIANTS.iter().find(|v| v.stages.as_slice() == stages)
}

/// Where the SAM2 tensors came from: it decides the default variant when the depths match none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Meta's checkpoints (`.pt` or converted safetensors).
    Meta,
    /// A Sa2VA model directory (`grounding_encoder.sam2_model.*`), always hiera-L in Sa2VA's code.
    Sa2va,
}

/// The optional `sam2` block of `config.json` (or a standalone JSON file): any field given wins.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sam2Overrides {
    pub image_size: Option<usize>,
    #[serde(default)]
    pub trunk: TrunkOverrides,
    #[serde(default)]
    pub neck: NeckOverrides,
    #[serde(default)]
    pub decoder: DecoderOverrides,
    pub directly_add_no_mem_embed: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrunkOverrides {
    pub embed_dim: Option<usize>,
    pub num_heads: Option<usize>,
    pub stages: Option<Vec<usize>>,
    pub global_att_blocks: Option<Vec<usize>>,
    pub window_spec: Option<Vec<usize>>,
    pub window_pos_embed_bkg_spatial_size: Option<(usize, usize)>,
    pub q_pool: Option<usize>,
    pub q_stride: Option<(usize, usize)>,
    pub dim_mul: Option<f64>,
    pub head_mul: Option<f64>,
    pub mlp_ratio: Option<f64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NeckOverrides {
    pub d_model: Option<usize>,
    pub backbone_channel_list: Option<Vec<usize>>,
    pub fpn_top_down_levels: Option<Vec<usize>>,
    pub fpn_interp_model: Option<String>,
    pub fuse_type: Option<String>,
    pub scalp: Option<usize>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecoderOverrides {
    pub transformer_dim: Option<usize>,
    pub depth: Option<usize>,
    pub num_heads: Option<usize>,
    pub mlp_dim: Option<usize>,
    pub attention_downsample_rate: Option<usize>,
    pub num_multimask_outputs: Option<usize>,
    pub iou_head_depth: Option<usize>,
    pub iou_head_hidden_dim: Option<usize>,
    pub iou_prediction_use_sigmoid: Option<bool>,
    pub pred_obj_scores: Option<bool>,
    pub pred_obj_scores_mlp: Option<bool>,
    pub use_high_res_features: Option<bool>,
    pub use_multimask_token_for_obj_ptr: Option<bool>,
    pub dynamic_multimask_via_stability: Option<bool>,
    pub dynamic_multimask_stability_delta: Option<f64>,
    pub dynamic_multimask_stability_thresh: Option<f64>,
}

fn count_indexed(idx: &ShapeIndex, prefix: &str) -> usize {
    let mut n = 0;
    while idx.keys().any(|k| k.starts_with(&format!("{prefix}{n}."))) {
        n += 1;
    }
    n
}

impl Sam2Config {
    /// Resolve the geometry of the SAM2 whose tensors (names relative to the SAM2 root, e.g.
    /// `image_encoder.trunk.pos_embed`) are in `idx`. `src` names the checkpoint in errors.
    pub fn infer(idx: &ShapeIndex, ov: &Sam2Overrides, layout: Layout, src: &str) -> Result<Self> {
        let shape = |k: &str| -> Result<&Vec<usize>> {
            idx.get(k)
                .ok_or_else(|| Error::at(src, format!("not a SAM2 checkpoint: tensor `{k}` is missing")))
        };
        let dim = |k: &str, i: usize| -> Result<usize> {
            let s = shape(k)?;
            s.get(i).copied().ok_or_else(|| {
                Error::at(
                    src,
                    format!("tensor `{k}` has shape {s:?}, expected at least {} dims", i + 1),
                )
            })
        };
        let t = &ov.trunk;
        // Trunk: widths and depths from the weights.
        let embed_dim = dim("image_encoder.trunk.patch_embed.proj.weight", 0)?;
        let depth = count_indexed(idx, "image_encoder.trunk.blocks.");
        if depth == 0 {
            return Err(Error::at(src, "not a SAM2 checkpoint: no image_encoder.trunk.blocks.*"));
        }
        let mut starts = vec![0];
        starts.extend((1..depth).filter(|i| idx.contains_key(&format!("image_encoder.trunk.blocks.{i}.proj.weight"))));
        let mut stages: Vec<usize> = starts.windows(2).map(|w| w[1] - w[0]).collect();
        stages.push(depth - starts.last().unwrap());
        let stages = t.stages.clone().unwrap_or(stages);
        let pe = shape("image_encoder.trunk.pos_embed")?;
        let pew = shape("image_encoder.trunk.pos_embed_window")?;
        if pe.len() != 4 || pew.len() != 4 {
            return Err(Error::at(
                src,
                format!("trunk.pos_embed{pe:?} / pos_embed_window{pew:?} must be 4-d"),
            ));
        }
        // Stage widths grow by `dim_mul` at each `proj`, the MLP by `mlp_ratio`: both read off the shapes.
        let dim_mul = match starts.get(1) {
            Some(&b) => {
                dim(&format!("image_encoder.trunk.blocks.{b}.proj.weight"), 0)? as f64
                    / dim(&format!("image_encoder.trunk.blocks.{b}.proj.weight"), 1)?.max(1) as f64
            }
            None => 2.0,
        };
        let mlp_ratio = dim("image_encoder.trunk.blocks.0.mlp.layers.0.weight", 0)? as f64 / embed_dim.max(1) as f64;
        let known = variant_by_stages(&stages);
        let need = |what: &str| {
            let why = match layout {
                Layout::Sa2va => format!(
                    "Sa2VA builds SAM2 hiera-L (stages {:?}) but this checkpoint's trunk has stages {stages:?} (embed_dim {embed_dim})",
                    SA2VA_VARIANT.stages
                ),
                Layout::Meta => format!(
                    "SAM2 trunk with embed_dim {embed_dim} and stages {stages:?} is not one of Meta's variants (tiny, small, base+, large: \
                     stages [1, 2, 7, 2], [1, 2, 11, 2], [2, 3, 16, 3], [2, 6, 36, 4])"
                ),
            };
            Error::at(
                src,
                format!("{why}; give `{what}` in a `sam2` block of config.json (see docs/formats.md)"),
            )
        };
        let num_heads = match (t.num_heads, known) {
            (Some(h), _) => h,
            (None, Some(k)) => k.num_heads,
            (None, None) => return Err(need("trunk.num_heads")),
        };
        let global_att_blocks = match (&t.global_att_blocks, known) {
            (Some(g), _) => g.clone(),
            (None, Some(k)) => k.global_att_blocks.to_vec(),
            (None, None) => return Err(need("trunk.global_att_blocks")),
        };
        let mut window_spec = match (&t.window_spec, known) {
            (Some(w), _) => w.clone(),
            (None, Some(k)) => k.window_spec.to_vec(),
            (None, None) => return Err(need("trunk.window_spec")),
        };
        if t.window_spec.is_none() {
            window_spec[0] = pew[2];
        }
        if window_spec.len() != stages.len() {
            return Err(Error::at(
                src,
                format!(
                    "sam2.trunk.window_spec {window_spec:?} needs one entry per stage ({} stages)",
                    stages.len()
                ),
            ));
        }
        let trunk = HieraConfig {
            embed_dim: t.embed_dim.unwrap_or(embed_dim),
            num_heads,
            stages,
            global_att_blocks,
            window_spec,
            window_pos_embed_bkg_spatial_size: t.window_pos_embed_bkg_spatial_size.unwrap_or((pe[2], pe[3])),
            q_pool: t.q_pool.unwrap_or(3),
            q_stride: t.q_stride.unwrap_or((2, 2)),
            dim_mul: t.dim_mul.unwrap_or(dim_mul),
            head_mul: t.head_mul.unwrap_or(2.0),
            mlp_ratio: t.mlp_ratio.unwrap_or(mlp_ratio),
        };
        let n_blocks: usize = trunk.stages.iter().sum();
        if let Some(b) = trunk.global_att_blocks.iter().find(|&&b| b >= n_blocks) {
            return Err(Error::at(
                src,
                format!("sam2.trunk.global_att_blocks names block {b} but the trunk has {n_blocks} blocks"),
            ));
        }
        for (i, b) in trunk.blocks().iter().enumerate() {
            if b.heads == 0 || b.dim_out % b.heads != 0 {
                return Err(Error::at(
                    src,
                    format!(
                        "Hiera block {i}: {} heads do not divide its width {}; set sam2.trunk.num_heads",
                        b.heads, b.dim_out
                    ),
                ));
            }
        }
        if trunk.stages.is_empty() || trunk.q_pool > trunk.stages.len() - 1 {
            return Err(Error::at(
                src,
                format!(
                    "sam2.trunk.q_pool {} is larger than the number of stage changes",
                    trunk.q_pool
                ),
            ));
        }
        // Neck.
        let n = &ov.neck;
        let levels = count_indexed(idx, "image_encoder.neck.convs.");
        let mut chans = Vec::with_capacity(levels);
        for i in 0..levels {
            chans.push(dim(&format!("image_encoder.neck.convs.{i}.conv.weight"), 1)?);
        }
        let neck = NeckConfig {
            d_model: n.d_model.unwrap_or(dim("image_encoder.neck.convs.0.conv.weight", 0)?),
            backbone_channel_list: n.backbone_channel_list.clone().unwrap_or(chans),
            fpn_top_down_levels: n.fpn_top_down_levels.clone().unwrap_or(vec![2, 3]),
            fpn_interp_model: n.fpn_interp_model.clone().unwrap_or_else(|| "nearest".into()),
            fuse_type: n.fuse_type.clone().unwrap_or_else(|| "sum".into()),
            scalp: n.scalp.unwrap_or(1),
        };
        if neck.backbone_channel_list != trunk.channel_list() {
            return Err(Error::at(
                src,
                format!(
                    "the FPN neck expects channels {:?} but the Hiera trunk gives {:?}",
                    neck.backbone_channel_list,
                    trunk.channel_list()
                ),
            ));
        }
        if !matches!(neck.fpn_interp_model.as_str(), "nearest" | "bilinear")
            || !matches!(neck.fuse_type.as_str(), "sum" | "avg")
        {
            return Err(Error::at(
                src,
                "sam2.neck: fpn_interp_model must be nearest|bilinear and fuse_type sum|avg",
            ));
        }
        // Mask decoder.
        let d = &ov.decoder;
        let md = "sam_mask_decoder.";
        let transformer_dim = dim(&format!("{md}iou_token.weight"), 1)?;
        let q_out = dim(
            &format!("{md}transformer.layers.0.cross_attn_token_to_image.q_proj.weight"),
            0,
        )?;
        let decoder = DecoderConfig {
            transformer_dim: d.transformer_dim.unwrap_or(transformer_dim),
            depth: d
                .depth
                .unwrap_or(count_indexed(idx, &format!("{md}transformer.layers."))),
            num_heads: d.num_heads.unwrap_or(8),
            mlp_dim: d
                .mlp_dim
                .unwrap_or(dim(&format!("{md}transformer.layers.0.mlp.layers.0.weight"), 0)?),
            attention_downsample_rate: d.attention_downsample_rate.unwrap_or(transformer_dim / q_out.max(1)),
            num_multimask_outputs: d
                .num_multimask_outputs
                .unwrap_or(dim(&format!("{md}mask_tokens.weight"), 0)?.saturating_sub(1)),
            iou_head_depth: d
                .iou_head_depth
                .unwrap_or(count_indexed(idx, &format!("{md}iou_prediction_head.layers."))),
            iou_head_hidden_dim: d
                .iou_head_hidden_dim
                .unwrap_or(dim(&format!("{md}iou_prediction_head.layers.0.weight"), 0)?),
            iou_prediction_use_sigmoid: d.iou_prediction_use_sigmoid.unwrap_or(true),
            pred_obj_scores: d
                .pred_obj_scores
                .unwrap_or(idx.contains_key(&format!("{md}obj_score_token.weight"))),
            pred_obj_scores_mlp: d
                .pred_obj_scores_mlp
                .unwrap_or(idx.contains_key(&format!("{md}pred_obj_score_head.layers.0.weight"))),
            use_high_res_features: d
                .use_high_res_features
                .unwrap_or(idx.contains_key(&format!("{md}conv_s0.weight"))),
            use_multimask_token_for_obj_ptr: d.use_multimask_token_for_obj_ptr.unwrap_or(true),
            dynamic_multimask_via_stability: d.dynamic_multimask_via_stability.unwrap_or(true),
            dynamic_multimask_stability_delta: d.dynamic_multimask_stability_delta.unwrap_or(0.05),
            dynamic_multimask_stability_thresh: d.dynamic_multimask_stability_thresh.unwrap_or(0.98),
        };
        if decoder.depth == 0 || decoder.iou_head_depth == 0 {
            return Err(Error::at(
                src,
                "not a SAM2 checkpoint: the mask decoder has no transformer layers or IoU head",
            ));
        }
        let internal = decoder.transformer_dim / decoder.attention_downsample_rate.max(1);
        if decoder.num_heads == 0
            || !decoder.transformer_dim.is_multiple_of(decoder.num_heads)
            || !internal.is_multiple_of(decoder.num_heads)
        {
            return Err(Error::at(
                src,
                format!(
                    "sam2.decoder.num_heads {} does not divide the attention widths {} / {internal}",
                    decoder.num_heads, decoder.transformer_dim
                ),
            ));
        }
        let cfg = Sam2Config {
            image_size: ov.image_size.unwrap_or(1024),
            trunk,
            neck,
            decoder,
            directly_add_no_mem_embed: ov.directly_add_no_mem_embed.unwrap_or(true),
        };
        if !cfg.image_size.is_multiple_of(32) || cfg.image_size == 0 {
            return Err(Error::at(
                src,
                format!("sam2.image_size {} must be a positive multiple of 32", cfg.image_size),
            ));
        }
        Ok(cfg)
    }

    /// Name of the Meta variant these settings correspond to, if any.
    pub fn variant_name(&self) -> Option<&'static str> {
        variant_by_stages(&self.trunk.stages).map(|k| k.name)
    }

    /// (H, W) of the image embedding (backbone stride 16).
    pub fn embedding_size(&self) -> usize {
        self.image_size / 16
    }
}

/// Shapes of the tensors of a PyTorch checkpoint (`torch.save({"model": state_dict})`, Meta's layout,
/// or a bare state dict).
pub fn pth_shapes(path: &Path) -> Result<(ShapeIndex, Option<&'static str>)> {
    let err = |e: candle_core::Error| {
        Error::input(
            path,
            format!(
                "not a readable PyTorch checkpoint: {}",
                crate::error::candle_message(&e)
            ),
        )
    };
    for key in [Some("model"), None] {
        let t = candle_core::pickle::PthTensors::new(path, key).map_err(err)?;
        let infos = t.tensor_infos();
        if !infos.is_empty() {
            let idx = infos
                .iter()
                .map(|(k, v)| (k.clone(), v.layout.shape().dims().to_vec()))
                .collect();
            return Ok((idx, key));
        }
    }
    Err(Error::input(
        path,
        "the PyTorch checkpoint holds no tensors (expected Meta's {\"model\": state_dict})",
    ))
}

/// Keep the tensors under `prefix` (e.g. `grounding_encoder.sam2_model.`), with the prefix removed.
pub fn strip_prefix(idx: &ShapeIndex, prefix: &str) -> ShapeIndex {
    idx.iter()
        .filter_map(|(k, v)| k.strip_prefix(prefix).map(|s| (s.to_string(), v.clone())))
        .collect()
}
