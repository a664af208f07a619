//! SAM2 (Meta's facebookresearch/sam2), single-image path: [`image_encoder`] (Hiera + FPN +
//! high-res convs + `no_mem_embed`), [`prompt_encoder`], [`mask_decoder`]; [`Sam2`] ties them
//! to a checkpoint (Meta `.pt`, safetensors, or a Sa2VA model directory whose SAM2 lives under
//! `grounding_encoder.sam2_model.`) and adds the two prompting modes: classic points/boxes (as
//! `SAM2ImagePredictor`) and Sa2VA's `[SEG]` embedding (as Sa2VA's `_forward_sam_heads`).
//! Memory-attention / memory-encoder tensors (video tracking) are present in checkpoints and ignored.

pub mod config;
pub mod hiera;
pub mod image_encoder;
pub mod mask_decoder;
pub mod prompt_encoder;

use crate::error::{Error, Result};
use crate::mask::Mask;
use crate::models::checkpoint::Checkpoint;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use config::{Sam2Config, Sam2Overrides, ShapeIndex};
use image::RgbImage;
pub use image_encoder::ImageFeatures;
use mask_decoder::{argmax, DecoderOutput, MaskDecoder};
use prompt_encoder::PromptEncoder;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Key prefix of SAM2 inside a Sa2VA checkpoint.
pub const SA2VA_PREFIX: &str = "grounding_encoder.sam2_model.";

/// How the photo becomes the 1024² encoder input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Preprocess {
    /// Meta's predictor: bilinear (antialiased) on float.
    Sam2,
    /// Sa2VA: Pillow bicubic on uint8.
    Sa2va,
}

/// A classic prompt: points (x, y, label) in original-image pixels and/or one box.
#[derive(Debug, Clone, Default)]
pub struct PointPrompt {
    pub points: Vec<(f32, f32, i64)>,
    pub bbox: Option<[f32; 4]>,
}

/// Result of Sa2VA's `[SEG]` decoding for one embedding.
#[derive(Debug, Clone)]
pub struct SegPrediction {
    /// Chosen low-res logits (1, 1, 256, 256), not gated by the object score (as Sa2VA).
    pub low_res: Tensor,
    /// IoU predictions of the candidate masks.
    pub iou: Vec<f32>,
    pub object_score: f32,
    pub best: usize,
}

const CACHE_CAPACITY: usize = 4;

/// Recently encoded photos: (content hash, preprocessing, features), oldest first.
type FeatureCache = Vec<([u8; 32], Preprocess, Arc<ImageFeatures>)>;

pub struct Sam2 {
    pub config: Sam2Config,
    encoder: image_encoder::ImageEncoder,
    pub prompt: PromptEncoder,
    decoder: MaskDecoder,
    pub device: Device,
    pub dtype: DType,
    cache: Mutex<FeatureCache>,
    span: tracing::Span,
}

impl Sam2 {
    /// Build from a var builder rooted at SAM2 (keys `image_encoder.*`, `sam_mask_decoder.*`, ...).
    pub fn new(config: Sam2Config, vb: VarBuilder) -> candle_core::Result<Self> {
        let e = config.embedding_size();
        let d = config.decoder.transformer_dim;
        let s = config.image_size;
        Ok(Self {
            encoder: image_encoder::ImageEncoder::new(&config, vb.clone())?,
            prompt: PromptEncoder::new(d, (e, e), (s, s), vb.pp("sam_prompt_encoder"))?,
            decoder: MaskDecoder::new(&config.decoder, vb.pp("sam_mask_decoder"))?,
            device: vb.device().clone(),
            dtype: vb.dtype(),
            config,
            cache: Mutex::new(Vec::new()),
            span: tracing::span!(tracing::Level::TRACE, "sam2"),
        })
    }

    /// Load from a Meta `.pt`, a `.safetensors` file, or a model directory (Sa2VA layout or plain
    /// SAM2 keys; `config.json`'s optional `sam2` block applies). `overrides` (a `sam2` block from
    /// a separate file) wins over the directory's.
    pub fn load(path: &Path, overrides: Option<&serde_json::Value>, device: &Device, dtype: DType) -> Result<Self> {
        let name = path.display().to_string();
        if path.is_dir() {
            // Meta's hub repos (facebook/sam2.1-hiera-*) hold one `.pt` and no safetensors.
            let has_st = std::fs::read_dir(path)
                .map_err(|e| Error::io(path, e))?
                .flatten()
                .any(|e| e.path().extension().is_some_and(|x| x == "safetensors"));
            if !has_st {
                let pts: Vec<std::path::PathBuf> = std::fs::read_dir(path)
                    .map_err(|e| Error::io(path, e))?
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "pt" || x == "pth"))
                    .collect();
                if pts.len() == 1 {
                    let cfg: Option<serde_json::Value> = std::fs::read(path.join("config.json"))
                        .ok()
                        .and_then(|b| serde_json::from_slice(&b).ok());
                    let block = overrides.cloned().or_else(|| cfg.and_then(|c| c.get("sam2").cloned()));
                    return Self::load(&pts[0], block.as_ref(), device, dtype);
                }
            }
            let ck = Checkpoint::open(path, dtype, device)?;
            return Self::from_checkpoint(&ck, overrides);
        }
        if !path.is_file() {
            return Err(Error::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            ));
        }
        let is_st = path.extension().is_some_and(|e| e == "safetensors");
        let (idx, vb) = if is_st {
            let idx = crate::models::checkpoint::safetensors_header(path)?;
            let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[path], dtype, device) }.map_err(|e| {
                Error::input(
                    path,
                    format!("cannot load weights: {}", crate::error::candle_message(&e)),
                )
            })?;
            (idx, vb)
        } else {
            let (idx, key) = config::pth_shapes(path)?;
            let vb = match key {
                Some(k) => VarBuilder::from_pth_with_state(path, dtype, k, device),
                None => VarBuilder::from_pth(path, dtype, device),
            }
            .map_err(|e| {
                Error::input(
                    path,
                    format!("cannot load weights: {}", crate::error::candle_message(&e)),
                )
            })?;
            (idx, vb)
        };
        Self::from_index(&idx, overrides, vb, &name)?
            .ok_or_else(|| Error::input(path, "not a SAM2 checkpoint (no image_encoder.* tensors)"))
    }

    /// The SAM2 of an opened model directory (Sa2VA layout or plain SAM2 keys; `config.json`'s
    /// optional `sam2` block applies unless `overrides` is given).
    pub fn from_checkpoint(ck: &Checkpoint, overrides: Option<&serde_json::Value>) -> Result<Self> {
        let _g = tracing::span!(tracing::Level::TRACE, "load-sam2").entered();
        let block = overrides.or_else(|| ck.config.get("sam2"));
        Self::from_index(&ck.shapes, block, ck.vb(), &ck.dir.display().to_string())?.ok_or_else(|| {
            Error::input(
                &ck.dir,
                "the checkpoint holds no SAM2 (no image_encoder.* or grounding_encoder.sam2_model.* tensors)",
            )
        })
    }

    /// Whether an opened checkpoint carries a SAM2 (either layout).
    pub fn present_in(ck: &Checkpoint) -> bool {
        ck.shapes
            .contains_key(&format!("{SA2VA_PREFIX}image_encoder.trunk.patch_embed.proj.weight"))
            || ck.shapes.contains_key("image_encoder.trunk.patch_embed.proj.weight")
    }

    /// Build from a tensor index and a var builder over the same files, finding the SAM2 root
    /// (plain or Sa2VA-prefixed). `Ok(None)` when there is no SAM2 in the files.
    pub fn from_index(
        idx: &ShapeIndex,
        block: Option<&serde_json::Value>,
        vb: VarBuilder,
        src: &str,
    ) -> Result<Option<Self>> {
        let (sub, vb, layout) = if idx.keys().any(|k| k.starts_with(SA2VA_PREFIX)) {
            (
                config::strip_prefix(idx, SA2VA_PREFIX),
                vb.pp(SA2VA_PREFIX.trim_end_matches('.')),
                config::Layout::Sa2va,
            )
        } else if idx.contains_key("image_encoder.trunk.patch_embed.proj.weight") {
            (idx.clone(), vb, config::Layout::Meta)
        } else {
            return Ok(None);
        };
        let ov: Sam2Overrides = match block {
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|e| Error::at(src, format!("invalid `sam2` config block: {e}")))?,
            None => Sam2Overrides::default(),
        };
        let cfg = Sam2Config::infer(&sub, &ov, layout, src)?;
        let m = Self::new(cfg, vb).map_err(|e| {
            Error::at(
                src,
                format!(
                    "SAM2 weights do not match the config: {}",
                    crate::error::candle_message(&e)
                ),
            )
        })?;
        Ok(Some(m))
    }

    /// The normalised (1, 3, S, S) encoder input for a photo.
    pub fn preprocess(&self, img: &RgbImage, mode: Preprocess) -> candle_core::Result<Tensor> {
        let s = self.config.image_size;
        let data = match mode {
            Preprocess::Sam2 => crate::preprocess::sam2::sam2_transforms(img, s),
            Preprocess::Sa2va => crate::preprocess::sam2::sa2va_direct_resize(img, s),
        };
        Tensor::from_vec(data, (1, 3, s, s), &self.device)?.to_dtype(self.dtype)
    }

    /// Run the image encoder on a preprocessed (1, 3, S, S) input.
    pub fn encode(&self, pixels: &Tensor) -> candle_core::Result<ImageFeatures> {
        let _g = self.span.enter();
        self.encoder.forward(pixels)
    }

    /// Encode a photo, reusing the features of an identical image (same pixels, same
    /// preprocessing) seen recently by this process. Returns whether it was a cache hit.
    pub fn features(&self, img: &RgbImage, mode: Preprocess) -> candle_core::Result<(Arc<ImageFeatures>, bool)> {
        let key = image_key(img);
        if let Some((_, _, f)) = self
            .cache
            .lock()
            .expect("cache lock")
            .iter()
            .find(|(k, m, _)| *k == key && *m == mode)
        {
            return Ok((f.clone(), true));
        }
        let f = Arc::new(self.encode(&self.preprocess(img, mode)?)?);
        let mut c = self.cache.lock().expect("cache lock");
        if c.len() >= CACHE_CAPACITY {
            c.remove(0);
        }
        c.push((key, mode, f.clone()));
        Ok((f, false))
    }

    /// [`Self::features`] for several photos: the ones not cached are encoded together along
    /// the batch dimension (Hiera, FPN and the convs are per image), then split and cached.
    /// Returns, per photo in order, its features and whether they were a cache hit.
    pub fn features_batch(
        &self,
        imgs: &[&RgbImage],
        mode: Preprocess,
    ) -> candle_core::Result<Vec<(Arc<ImageFeatures>, bool)>> {
        let keys: Vec<[u8; 32]> = imgs.iter().map(|i| image_key(i)).collect();
        let mut out: Vec<Option<(Arc<ImageFeatures>, bool)>> = {
            let c = self.cache.lock().expect("cache lock");
            keys.iter()
                .map(|k| {
                    c.iter()
                        .find(|(ck, m, _)| ck == k && *m == mode)
                        .map(|(_, _, f)| (f.clone(), true))
                })
                .collect()
        };
        // Distinct uncached photos, each encoded once.
        let mut todo: Vec<usize> = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            if out[i].is_none() && !todo.iter().any(|&j| keys[j] == *k) {
                todo.push(i);
            }
        }
        if !todo.is_empty() {
            let px = todo
                .iter()
                .map(|&i| self.preprocess(imgs[i], mode))
                .collect::<candle_core::Result<Vec<_>>>()?;
            let f = self.encode(&Tensor::cat(&px, 0)?)?;
            let mut c = self.cache.lock().expect("cache lock");
            for (n, &i) in todo.iter().enumerate() {
                let one = Arc::new(f.get(n)?);
                for (j, k) in keys.iter().enumerate() {
                    if *k == keys[i] && out[j].is_none() {
                        out[j] = Some((one.clone(), false));
                    }
                }
                if c.len() >= CACHE_CAPACITY {
                    c.remove(0);
                }
                c.push((keys[i], mode, one));
            }
        }
        Ok(out.into_iter().map(|o| o.expect("every photo set")).collect())
    }

    /// Decode sparse prompt tokens against image features.
    pub fn decode(
        &self,
        feats: &ImageFeatures,
        sparse: &Tensor,
        multimask: bool,
    ) -> candle_core::Result<DecoderOutput> {
        let dense = self.prompt.dense_no_mask(sparse.dim(0)?)?;
        let pe = self.prompt.dense_pe()?;
        self.decoder.forward(
            &feats.image_embed,
            &pe,
            sparse,
            &dense,
            multimask,
            feats.high_res_cl.as_ref(),
        )
    }

    /// `SAM2ImagePredictor.predict` for points / a box given in pixels of a (w, h) photo.
    pub fn predict(
        &self,
        feats: &ImageFeatures,
        prompt: &PointPrompt,
        (w, h): (u32, u32),
        multimask: bool,
    ) -> candle_core::Result<DecoderOutput> {
        let s = self.config.image_size as f32;
        let mut xy = Vec::new();
        let mut labels = Vec::new();
        if let Some([x0, y0, x1, y1]) = prompt.bbox {
            xy.extend([
                x0 / w as f32 * s,
                y0 / h as f32 * s,
                x1 / w as f32 * s,
                y1 / h as f32 * s,
            ]);
            labels.extend([2, 3]);
        }
        for &(x, y, l) in &prompt.points {
            xy.extend([x / w as f32 * s, y / h as f32 * s]);
            labels.push(l);
        }
        if labels.is_empty() {
            candle_core::bail!("a SAM2 prompt needs at least one point or a box");
        }
        let coords = Tensor::from_vec(xy, (1, labels.len(), 2), &self.device)?.to_dtype(DType::F32)?;
        let sparse = self.prompt.sparse(Some((&coords, &labels)), None)?;
        self.decode(feats, &sparse, multimask)
    }

    /// Sa2VA's `[SEG]` path: sparse = [not-a-point, padding, seg] (seg: (1, C) or (1, 1, C)),
    /// dense = `no_mask_embed`, multimask, and the mask with the best predicted IoU is kept.
    /// Unlike Meta's `SAM2Base`, Sa2VA's `_forward_sam_heads` override does not replace the
    /// logits by −1024 when the object score is negative (those lines are commented out in
    /// `projects/sa2va/hf/models/sam2.py`), so neither does this; the score is reported.
    pub fn predict_seg(&self, feats: &ImageFeatures, seg: &Tensor) -> candle_core::Result<SegPrediction> {
        let c = self.config.decoder.transformer_dim;
        let seg = seg.reshape((1, 1, c))?.to_dtype(DType::F32)?;
        let empty = self.prompt.sparse(
            Some((
                &Tensor::zeros((1, 1, 2), DType::F32, &self.device)?,
                &[prompt_encoder::LABEL_PAD],
            )),
            None,
        )?;
        let sparse = Tensor::cat(&[&empty, &seg], 1)?;
        let out = self.decode(feats, &sparse, true)?;
        let obj: f32 = out
            .object_score
            .to_dtype(DType::F32)?
            .flatten_all()?
            .get(0)?
            .to_scalar()?;
        let iou: Vec<f32> = out.iou.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let best = argmax(&out.iou.flatten_all()?)?;
        let low_res = out.low_res_masks.narrow(1, best, 1)?.to_dtype(DType::F32)?;
        Ok(SegPrediction {
            low_res,
            iou,
            object_score: obj,
            best,
        })
    }
}

/// The cache key of a photo: SHA-256 of its size and pixels.
fn image_key(img: &RgbImage) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(img.width().to_le_bytes());
    h.update(img.height().to_le_bytes());
    h.update(img.as_raw());
    h.finalize().into()
}

/// What a SAM2 prompt is: classic points/box (`SAM2ImagePredictor`) or a projected `[SEG]`
/// hidden state (Sa2VA).
#[derive(Debug, Clone, Copy)]
pub enum Prompt<'a> {
    Points { prompt: &'a PointPrompt, multimask: bool },
    Seg(&'a Tensor),
}

/// The kept mask of one prompt at the photo's size.
#[derive(Debug, Clone)]
pub struct MaskPrediction {
    pub mask: Mask,
    /// Predicted IoU of every candidate; `best` is the kept one.
    pub scores: Vec<f32>,
    pub best: usize,
    pub object_score: f32,
}

impl Sam2 {
    /// Decode a prompt and post-process as its reference does: the candidate with the best
    /// predicted IoU, logits upsampled bilinearly to the (w, h) photo (Sa2VA via S×S, Meta
    /// directly), thresholded at 0 on the device; only the bits come back to the host.
    pub fn predict_mask(
        &self,
        feats: &ImageFeatures,
        prompt: Prompt,
        (w, h): (u32, u32),
    ) -> candle_core::Result<MaskPrediction> {
        let (low, via, scores, best, object_score) = match prompt {
            Prompt::Points { prompt, multimask } => {
                let out = self.predict(feats, prompt, (w, h), multimask)?;
                let scores: Vec<f32> = out.iou.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
                let best = argmax(&out.iou.flatten_all()?)?;
                let obj: f32 = out
                    .object_score
                    .to_dtype(DType::F32)?
                    .flatten_all()?
                    .get(0)?
                    .to_scalar()?;
                (out.low_res_masks.narrow(1, best, 1)?, None, scores, best, obj)
            }
            Prompt::Seg(seg) => {
                let p = self.predict_seg(feats, seg)?;
                (p.low_res, Some(self.config.image_size), p.iou, p.best, p.object_score)
            }
        };
        let mask = mask_from_logits(&upscale_logits(&low, (h, w), via)?)?;
        Ok(MaskPrediction {
            mask,
            scores,
            best,
            object_score,
        })
    }
}

impl Sam2 {
    /// [`Self::predict_mask`] for many `[SEG]` prompts at once: `segs[i]` (C) on `feats[i]` at
    /// photo size `sizes[i]`. One mask-decoder forward over all of them (the image features
    /// stacked along the batch, as the decoder takes one image per prompt), then each prompt's
    /// best mask is upsampled to its photo.
    pub fn predict_seg_masks(
        &self,
        feats: &[&ImageFeatures],
        segs: &[Tensor],
        sizes: &[(u32, u32)],
    ) -> candle_core::Result<Vec<MaskPrediction>> {
        let n = segs.len();
        if feats.len() != n || sizes.len() != n {
            candle_core::bail!(
                "predict_seg_masks: {n} prompts, {} feature sets, {} sizes",
                feats.len(),
                sizes.len()
            );
        }
        if n == 0 {
            return Ok(vec![]);
        }
        let c = self.config.decoder.transformer_dim;
        let seg = Tensor::cat(
            &segs
                .iter()
                .map(|s| s.reshape((1, 1, c)))
                .collect::<candle_core::Result<Vec<_>>>()?,
            0,
        )?
        .to_dtype(DType::F32)?;
        let empty = self.prompt.sparse(
            Some((
                &Tensor::zeros((n, 1, 2), DType::F32, &self.device)?,
                &[prompt_encoder::LABEL_PAD],
            )),
            None,
        )?;
        let sparse = Tensor::cat(&[&empty, &seg], 1)?;
        let cat =
            |f: &dyn Fn(&ImageFeatures) -> Tensor| Tensor::cat(&feats.iter().map(|x| f(x)).collect::<Vec<_>>(), 0);
        let image_embed = cat(&|x| x.image_embed.clone())?;
        let high_res = match feats[0].high_res_cl {
            Some(_) => {
                let part = |k: usize| {
                    feats
                        .iter()
                        .map(|x| {
                            let (a, b) = x
                                .high_res_cl
                                .as_ref()
                                .ok_or_else(|| candle_core::Error::msg("features without high-res maps"))?;
                            Ok(if k == 0 { a.clone() } else { b.clone() })
                        })
                        .collect::<candle_core::Result<Vec<_>>>()
                };
                Some((Tensor::cat(&part(0)?, 0)?, Tensor::cat(&part(1)?, 0)?))
            }
            None => None,
        };
        let dense = self.prompt.dense_no_mask(n)?;
        let pe = self.prompt.dense_pe()?;
        let out = self
            .decoder
            .forward(&image_embed, &pe, &sparse, &dense, true, high_res.as_ref())?;
        let iou = out.iou.to_dtype(DType::F32)?;
        let obj = out.object_score.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        (0..n)
            .map(|i| {
                let scores: Vec<f32> = iou.get(i)?.to_vec1()?;
                let best = argmax(&iou.get(i)?)?;
                let low = out.low_res_masks.narrow(0, i, 1)?.narrow(1, best, 1)?;
                let (w, h) = sizes[i];
                let mask = mask_from_logits(&upscale_logits(&low, (h, w), Some(self.config.image_size))?)?;
                Ok(MaskPrediction {
                    mask,
                    scores,
                    best,
                    object_score: obj[i],
                })
            })
            .collect()
    }
}

/// Low-res logits (1, 1, h', w') → logits at (h, w) by bilinear (align_corners=False); with
/// `via` = Some(S) first to S×S, as Sa2VA does (256 → 1024 → original size).
pub fn upscale_logits(low: &Tensor, (h, w): (u32, u32), via: Option<usize>) -> candle_core::Result<Tensor> {
    let mut x = low.to_dtype(DType::F32)?;
    if let Some(s) = via {
        x = crate::models::fastops::upsample_bilinear2d(&x, s, s, false)?;
    }
    crate::models::fastops::upsample_bilinear2d(&x, h as usize, w as usize, false)
}

/// Threshold (1, 1, h, w) logits at 0 on their device, then copy the bits to the host.
pub fn mask_from_logits(logits: &Tensor) -> candle_core::Result<Mask> {
    let (_, _, h, w) = logits.dims4()?;
    let bits: Vec<u8> = logits.gt(0f64)?.to_dtype(DType::U8)?.flatten_all()?.to_vec1()?;
    Ok(Mask {
        width: w as u32,
        height: h as u32,
        data: bits,
    })
}

impl Sam2 {
    /// Forget the cached image features.
    pub fn clear_cache(&self) {
        if let Ok(mut c) = self.cache.lock() {
            c.clear();
        }
    }

    /// Number of images whose features are cached.
    pub fn cached_images(&self) -> usize {
        self.cache.lock().map(|c| c.len()).unwrap_or(0)
    }
}
