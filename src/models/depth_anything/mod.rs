//! Depth Anything V2 (Small/Base/Large, relative or metric) in the transformers layout of the
//! hub repos `depth-anything/Depth-Anything-V2-*-hf`: `config.json` (`model_type:
//! "depth_anything"`), `model.safetensors` with keys `backbone.*` (DINOv2), `neck.*`, `head.*`,
//! and `preprocessor_config.json`. The teacher whose maps become depth-token targets.
//!
//! Checked against transformers 5.24 `DepthAnythingForDepthEstimation` + `DPTImageProcessor`
//! (torchvision backend) on a tiny random checkpoint: tests/depth_anything.rs,
//! tools/gen_depth_anything_goldens.py, fixtures/depth_anything/README.md.
//!
//! Pipeline ([`DepthAnything::predict_depth`]): keep-aspect-ratio resize to a multiple of 14 near
//! 518 (uint8 antialiased bicubic, as torchvision) and ImageNet normalisation → DINOv2 with the
//! position grid bicubically resized to the patch grid → feature maps at `out_indices` through
//! the final LayerNorm → DPT reassemble (×4, ×2, ×1, ×½) + fusion → head (ReLU, or sigmoid ×
//! `max_depth` for metric) → bicubic back to the image size, as `post_process_depth_estimation`.

pub mod config;
pub mod dinov2;
pub mod dpt;
pub mod preprocess;

pub use crate::depthmap::{DepthMap, DepthScale};
pub use config::{BackboneConfig, Config};
pub use preprocess::PreprocessorConfig;

use crate::error::{Error, Result as UserResult};
use crate::models::checkpoint::Checkpoint;
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use image::RgbImage;
use std::path::Path;

/// `DepthAnythingForDepthEstimation` plus its image processor.
#[derive(Debug, Clone)]
pub struct DepthAnything {
    backbone: dinov2::Dinov2Backbone,
    neck: dpt::Neck,
    head: dpt::Head,
    config: Config,
    preprocessor: PreprocessorConfig,
    device: Device,
    dtype: DType,
    span: tracing::Span,
}

impl DepthAnything {
    /// Build from a config and weights in the transformers key layout (root = the checkpoint
    /// root: `backbone.`, `neck.`, `head.`). The preprocessor is the hub default (518, ×14).
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        if let Err(m) = cfg.validate() {
            candle_core::bail!("unsupported Depth Anything config: {m}");
        }
        let outs = cfg
            .backbone_config
            .resolved_out_indices()
            .map_err(candle_core::Error::msg)?;
        if cfg.reassemble_hidden_size != cfg.backbone_config.hidden_size {
            candle_core::bail!(
                "reassemble_hidden_size {} differs from the backbone's hidden_size {}",
                cfg.reassemble_hidden_size,
                cfg.backbone_config.hidden_size
            );
        }
        Ok(Self {
            backbone: dinov2::Dinov2Backbone::new(&cfg.backbone_config, outs, vb.pp("backbone"))?,
            neck: dpt::Neck::new(cfg, vb.pp("neck"))?,
            head: dpt::Head::new(cfg, vb.pp("head"))?,
            config: cfg.clone(),
            preprocessor: PreprocessorConfig::default(),
            device: vb.device().clone(),
            dtype: vb.dtype(),
            span: tracing::span!(tracing::Level::TRACE, "depth-anything"),
        })
    }

    /// Load a model directory (`config.json`, safetensors, optional `preprocessor_config.json`).
    /// Errors name the file, or the tensor key with expected and found shapes.
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> UserResult<Self> {
        let ck = Checkpoint::open(dir, dtype, device)?;
        let cfg: Config = ck.config_as()?;
        cfg.validate().map_err(|m| {
            Error::input(
                dir.join("config.json"),
                format!("unsupported Depth Anything config: {m}"),
            )
        })?;
        let pre_path = dir.join("preprocessor_config.json");
        let preprocessor = if pre_path.is_file() {
            let p: PreprocessorConfig = serde_json::from_slice(&crate::util::read_file(&pre_path)?)
                .map_err(|e| Error::input(&pre_path, format!("unexpected preprocessor config: {e}")))?;
            p.validate().map_err(|m| Error::input(&pre_path, m))?;
            p
        } else {
            PreprocessorConfig::default()
        };
        let model = Self::new(&cfg, ck.vb()).map_err(|e| ck.weight_error(e))?;
        Ok(model.with_preprocessor(preprocessor))
    }

    /// Replace the image-processor settings.
    pub fn with_preprocessor(mut self, p: PreprocessorConfig) -> Self {
        self.preprocessor = p;
        self
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn preprocessor(&self) -> &PreprocessorConfig {
        &self.preprocessor
    }

    /// The network's input size (width, height) for a `w`×`h` image.
    pub fn input_size(&self, w: usize, h: usize) -> (usize, usize) {
        self.preprocessor.input_size(w, h)
    }

    /// `pixel_values` (1, 3, H', W') f32 for an image, as the processor makes them.
    pub fn pixel_values(&self, img: &RgbImage) -> Result<Tensor> {
        self.preprocessor.pixel_values(img, &self.device)
    }

    /// pixel_values (b, 3, H, W) → predicted_depth (b, H/p·p, W/p·p), p = `patch_size`
    /// (= (b, H, W) for the processor's sizes), in the model dtype.
    pub fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let _g = self.span.enter();
        let (_, c, h, w) = pixel_values.dims4()?;
        let p = self.config.patch_size;
        let bp = self.config.backbone_config.patch_size;
        if c != 3 || h < p.max(bp) || w < p.max(bp) {
            candle_core::bail!(
                "Depth Anything takes (b, 3, H, W) with H, W ≥ {}, got {:?}",
                p.max(bp),
                pixel_values.dims()
            );
        }
        let maps = self.backbone.forward(&pixel_values.to_dtype(self.dtype)?)?;
        let (ph, pw) = (h / p, w / p);
        let fused = self.neck.forward(&maps, ph, pw)?;
        self.head.forward(&fused, ph, pw)
    }

    /// The backbone's feature maps (b, 1 + h·w, d) at `out_indices`, for inspection and tests.
    pub fn feature_maps(&self, pixel_values: &Tensor) -> Result<Vec<Tensor>> {
        self.backbone.forward(&pixel_values.to_dtype(self.dtype)?)
    }

    /// `post_process_depth_estimation`: one predicted map (h', w') → (height, width), bicubic
    /// (align_corners=False, no antialias), in f32.
    pub fn post_process(predicted: &Tensor, height: usize, width: usize) -> Result<Tensor> {
        let p = predicted.to_dtype(DType::F32)?;
        preprocess::resize_bicubic(&p, height, width)
    }

    /// Depth for an RGB image at its own size: preprocess, forward, bicubic back.
    pub fn predict_depth(&self, img: &RgbImage) -> Result<DepthMap> {
        let (width, height) = (img.width() as usize, img.height() as usize);
        if width == 0 || height == 0 {
            candle_core::bail!("empty image ({width}x{height})");
        }
        let px = self.pixel_values(img)?;
        let pred = self.forward(&px)?.squeeze(0)?;
        let out = Self::post_process(&pred, height, width)?;
        // Relative models give affine-invariant inverse depth (larger = nearer); metric ones metres.
        Ok(DepthMap::new(
            width,
            height,
            out.flatten_all()?.to_vec1::<f32>()?,
            DepthScale::Float,
        ))
    }
}
