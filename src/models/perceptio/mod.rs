//! The full grounding model: an InternVL/Sa2VA chat model whose `[SEG]` tokens prompt SAM2.
//! `Grounder::segment` mirrors Sa2VA's `predict_forward` for one image: generate the reply,
//! take the last-layer hidden state at each `[SEG]` (the position where `[SEG]` is fed back),
//! project it with `text_hidden_fcs`, decode it with SAM2 on the Sa2VA-preprocessed photo,
//! upsample 256 → 1024 → original size, threshold at 0, and OR the masks of all `[SEG]`s.

use crate::error::{Error, Result};
use crate::models::generate::GenerateOptions;
use crate::models::internvl::chat::{ChatModel, Vision};
use crate::models::sam2::{upscale_logits, Mask, Preprocess, Sam2};
use candle_core::{DType, Device, IndexOp, Tensor};
use image::RgbImage;
use std::path::Path;
use std::time::Instant;

/// The segmentation token Sa2VA adds to the vocabulary.
pub const SEG_TOKEN: &str = "[SEG]";
/// The reply `--force-seg` teacher-forces (LISA/GLaMM evaluation style).
pub const FORCED_REPLY: &str = "Sure, [SEG].";

/// Sa2VA's referring-segmentation user turn (RefCOCO evaluation; note the space after `\n`).
pub fn referring_prompt(expression: &str) -> String {
    format!("<image>\n Please segment {expression} in this image.")
}

#[derive(Debug, Clone)]
pub struct SegmentOptions {
    pub max_tiles: usize,
    /// Teacher-force [`FORCED_REPLY`] instead of generating, so a mask always comes out.
    pub force_seg: bool,
    pub generation: GenerateOptions,
}

/// Timings of one expression, in seconds.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SegmentTimings {
    pub vision_s: f64,
    pub llm_s: f64,
    pub sam2_encode_s: f64,
    pub sam2_cached: bool,
    pub sam2_decode_s: f64,
}

#[derive(Debug, Clone)]
pub struct SegmentResult {
    pub expression: String,
    /// The user turn sent to the model.
    pub prompt: String,
    /// The reply (special tokens such as `[SEG]` kept, stop token dropped).
    pub text: String,
    pub token_ids: Vec<u32>,
    /// Number of `[SEG]` tokens that produced a mask.
    pub seg_count: usize,
    /// OR of all `[SEG]` masks at the photo's size (empty when there is none).
    pub mask: Mask,
    /// Predicted IoU of the chosen mask, per `[SEG]`.
    pub scores: Vec<f32>,
    /// SAM2 object-score logit, per `[SEG]`.
    pub object_scores: Vec<f32>,
    pub timings: SegmentTimings,
}

pub struct Grounder {
    pub chat: ChatModel,
    pub sam2: Sam2,
    pub seg_id: u32,
}

impl Grounder {
    /// Load a Sa2VA-layout directory: the chat model, its SAM2 under
    /// `grounding_encoder.sam2_model.`, `text_hidden_fcs`, and the `[SEG]` token.
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let chat = ChatModel::load(dir, device, dtype)?;
        if chat.model.text_hidden_fcs.is_none() {
            return Err(Error::input(dir, "the checkpoint has no text_hidden_fcs ([SEG] projection): it is not a Sa2VA-style grounding model"));
        }
        let seg_id = chat.tokenizer.token_to_id(SEG_TOKEN).ok_or_else(|| Error::input(dir.join("tokenizer.json"), "the tokenizer has no [SEG] token"))?;
        // SAM2 is always run in f32 on CPU; on CUDA it follows the requested dtype.
        let sam2 = Sam2::load(dir, None, device, dtype)?;
        let proj_out = chat.model.text_hidden_fcs.as_ref().map(|(_, b)| b.weight().dim(0).unwrap_or(0)).unwrap_or(0);
        if proj_out != sam2.config.decoder.transformer_dim {
            return Err(Error::input(dir, format!("text_hidden_fcs projects to {proj_out} but the SAM2 decoder is {} wide", sam2.config.decoder.transformer_dim)));
        }
        Ok(Self { chat, sam2, seg_id })
    }

    /// InternVL features of the photo (reuse them for several expressions).
    pub fn vision(&self, img: &RgbImage, max_tiles: usize) -> Result<Vision> {
        self.chat.vision(img, max_tiles)
    }

    /// Segment what `expression` refers to, with Sa2VA's referring prompt.
    pub fn segment(&mut self, img: &RgbImage, vision: &Vision, expression: &str, opts: &SegmentOptions) -> Result<SegmentResult> {
        let prompt = referring_prompt(expression);
        self.segment_prompt(img, vision, expression, &prompt, opts)
    }

    /// Segment with an arbitrary user turn (must contain `<image>`).
    pub fn segment_prompt(&mut self, img: &RgbImage, vision: &Vision, expression: &str, prompt: &str, opts: &SegmentOptions) -> Result<SegmentResult> {
        let t = Instant::now();
        let (token_ids, text, seg_hidden) = if opts.force_seg {
            let (ids, h) = self.chat.force_reply(vision, prompt, FORCED_REPLY)?;
            let rows: Vec<Tensor> = ids.iter().enumerate().filter(|(_, &id)| id == self.seg_id).map(|(i, _)| h.i(i)).collect::<candle_core::Result<_>>().map_err(cerr)?;
            (ids, FORCED_REPLY.to_string(), rows)
        } else {
            let a = self.chat.reply(vision, prompt, &opts.generation, |_| {})?;
            let g = &a.generation;
            // Sa2VA reads hidden states of output_ids[:-1]: a [SEG] that is the very last token has none.
            let rows = g.ids.iter().zip(&g.hidden).filter(|(&id, _)| id == self.seg_id).map(|(_, h)| h.clone()).collect();
            let stops = &self.chat.stop_ids;
            let kept: Vec<u32> = g.ids.iter().copied().filter(|i| !stops.contains(i)).collect();
            let text = self.chat.tokenizer.decode(&kept, false).map_err(|e| Error::at("tokenizer", e.to_string()))?;
            (g.ids.clone(), text.trim().to_string(), rows)
        };
        let llm_s = t.elapsed().as_secs_f64();
        let (w, h) = (img.width(), img.height());
        let mut timings = SegmentTimings { vision_s: vision.secs, llm_s, ..Default::default() };
        let mut mask = Mask::empty(w, h);
        let (mut scores, mut object_scores) = (vec![], vec![]);
        if !seg_hidden.is_empty() {
            let t = Instant::now();
            let (feats, hit) = self.sam2.features(img, Preprocess::Sa2va).map_err(cerr)?;
            timings.sam2_encode_s = t.elapsed().as_secs_f64();
            timings.sam2_cached = hit;
            let t = Instant::now();
            for hs in &seg_hidden {
                let e = self.chat.model.seg_projection(&hs.unsqueeze(0).map_err(cerr)?).map_err(cerr)?.expect("checked at load");
                let p = self.sam2.predict_seg(&feats, &e.to_device(&self.sam2.device).map_err(cerr)?).map_err(cerr)?;
                let logits = upscale_logits(&p.low_res, (h, w), Some(self.sam2.config.image_size)).map_err(cerr)?;
                mask.or(&Mask::from_logits(&logits.to_device(&Device::Cpu).map_err(cerr)?).map_err(cerr)?);
                scores.push(p.iou[p.best]);
                object_scores.push(p.object_score);
            }
            timings.sam2_decode_s = t.elapsed().as_secs_f64();
        }
        Ok(SegmentResult {
            expression: expression.to_string(),
            prompt: prompt.to_string(),
            text,
            token_ids,
            seg_count: seg_hidden.len(),
            mask,
            scores,
            object_scores,
            timings,
        })
    }
}

fn cerr(e: candle_core::Error) -> Error {
    Error::at("model", crate::error::candle_message(&e))
}
