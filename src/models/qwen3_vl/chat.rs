//! A loaded Sa2VA-Qwen3-VL checkpoint with its tokenizer: image + question → reply, as Sa2VA's
//! `predict_forward` builds it (the checkpoint's own chat template rendered over one user turn,
//! the image first, `<image>` removed from the text; Qwen's two smart resizes at
//! 512·28²..2048·28² pixels). Qwen2.5-VL-based checkpoints load through
//! [`Qwen3VlChat::from_checkpoint_qwen25`]: the same `predict_forward`.

use super::{Config, Qwen3Vl};
use crate::error::{Error, Result};
use crate::models::chat_template::ChatTemplate;
use crate::models::checkpoint::Checkpoint;
use crate::models::internvl::chat::Vision;
use crate::models::tokenizer::Tokenizer;
use crate::preprocess::internvl::TileGrid;
use crate::preprocess::qwen_vl::{fetch_image, QwenVlPreprocess};
use candle_core::{DType, Device, Tensor};

/// `predict_forward`'s pixel range (`Sa2VAChatModelQwen.__init__`: 512·28² and 2048·28²).
pub const MIN_PIXELS: usize = 512 * 28 * 28;
pub const MAX_PIXELS: usize = 2048 * 28 * 28;

pub struct Qwen3VlChat {
    pub model: Qwen3Vl,
    pub tokenizer: Tokenizer,
    pub preprocess: QwenVlPreprocess,
    /// `text_config.eos_token_id` (what `generate` stops on) and the tokenizer's `eos_token`.
    pub stop_ids: Vec<u32>,
    pub device: Device,
    pub dtype: DType,
    /// The checkpoint's chat template (chat_template.json / .jinja / processor_config.json).
    pub template: Option<ChatTemplate>,
    /// Without a template: the system turn the stock template inserts (Qwen2.5-VL's), if any.
    pub default_system: Option<&'static str>,
}

/// Qwen2.5-VL-Instruct's chat template's system message when none is given.
pub const QWEN25_DEFAULT_SYSTEM: &str = "You are a helpful assistant.";

/// The token the processor expands to one per merged vision token.
const IMAGE_PAD: &str = "<|image_pad|>";

#[derive(serde::Deserialize)]
struct PreprocessorConfig {
    #[serde(default = "p16")]
    patch_size: usize,
    #[serde(default = "two")]
    merge_size: usize,
    #[serde(default = "two")]
    temporal_patch_size: usize,
    #[serde(default = "half")]
    image_mean: [f32; 3],
    #[serde(default = "half")]
    image_std: [f32; 3],
}
fn p16() -> usize {
    16
}
fn two() -> usize {
    2
}
fn half() -> [f32; 3] {
    [0.5; 3]
}

impl Qwen3VlChat {
    pub fn from_checkpoint(ck: &Checkpoint) -> Result<Self> {
        let config: Config = ck.config_as()?;
        Self::load(ck, config, None)
    }

    /// A Qwen2.5-VL-based Sa2VA checkpoint.
    pub fn from_checkpoint_qwen25(ck: &Checkpoint) -> Result<Self> {
        let c25 = crate::models::qwen2_5_vl::Config::from_value(&ck.config)
            .map_err(|m| Error::input(ck.dir.join("config.json"), m))?;
        let shared = c25.shared().map_err(|m| Error::input(ck.dir.join("config.json"), m))?;
        Self::load(ck, shared, Some(c25))
    }

    fn load(ck: &Checkpoint, config: Config, qwen25: Option<crate::models::qwen2_5_vl::Config>) -> Result<Self> {
        let _g = tracing::span!(tracing::Level::TRACE, "load-qwen-vl-chat").entered();
        let dir = ck.dir.as_path();
        let pp = dir.join("preprocessor_config.json");
        let pc: PreprocessorConfig = if pp.is_file() {
            serde_json::from_slice(&crate::util::read_file(&pp)?)
                .map_err(|e| Error::input(&pp, format!("unexpected preprocessor config: {e}")))?
        } else {
            serde_json::from_str("{}").map_err(|e| Error::at("preprocessor", e.to_string()))?
        };
        let v = &config.vision_config;
        if (pc.patch_size, pc.merge_size, pc.temporal_patch_size)
            != (v.patch_size, v.spatial_merge_size, v.temporal_patch_size)
        {
            return Err(Error::input(
                &pp,
                format!(
                    "patch/merge/temporal sizes {:?} differ from config.json's vision_config {:?}",
                    (pc.patch_size, pc.merge_size, pc.temporal_patch_size),
                    (v.patch_size, v.spatial_merge_size, v.temporal_patch_size)
                ),
            ));
        }
        let preprocess = QwenVlPreprocess {
            patch_size: pc.patch_size,
            temporal_patch_size: pc.temporal_patch_size,
            merge_size: pc.merge_size,
            mean: pc.image_mean,
            std: pc.image_std,
            min_pixels: MIN_PIXELS,
            max_pixels: MAX_PIXELS,
        };
        let mut stop_ids = config.text_config.eos_ids();
        let (tokenizer, model) = std::thread::scope(|s| {
            let tok = s.spawn(|| crate::models::tokenizer::load(dir).map(|t| t.0));
            let model = match &qwen25 {
                Some(c) => Qwen3Vl::new_qwen25(c, ck.vb()),
                None => Qwen3Vl::new(config, ck.vb()),
            }
            .map_err(|e| ck.weight_error(e));
            let tok = tok
                .join()
                .unwrap_or_else(|_| Err(Error::at("tokenizer", "the tokenizer thread panicked")));
            Ok::<_, Error>((tok?, model?))
        })?;
        for (name, id) in [
            ("<|image_pad|>", model.config.image_token_id),
            ("<|vision_start|>", model.config.vision_start_token_id),
            ("<|vision_end|>", model.config.vision_end_token_id),
        ] {
            if tokenizer.token_to_id(name) != Some(id) {
                return Err(Error::input(
                    dir,
                    format!(
                        "config.json gives {name} id {id} but the tokenizer has {:?}",
                        tokenizer.token_to_id(name)
                    ),
                ));
            }
        }
        if let Some(eos) = super::super::internvl::chat::eos_token(dir)?.and_then(|t| tokenizer.token_to_id(&t)) {
            if !stop_ids.contains(&eos) {
                stop_ids.push(eos);
            }
        }
        let template = ChatTemplate::from_dir(dir)?;
        if template.is_none() {
            // transformers' processor refuses to build a prompt here; the stock Qwen template is
            // the one every published Sa2VA-Qwen checkpoint ships, so use it and say so
            crate::models::tokenizer::note_once(&format!(
                "{} has no chat template (chat_template.jinja or chat_template.json); using Qwen's stock one",
                dir.display()
            ));
        }
        Ok(Self {
            model,
            tokenizer,
            preprocess,
            stop_ids,
            device: ck.device().clone(),
            dtype: ck.dtype(),
            template,
            default_system: qwen25.as_ref().map(|_| QWEN25_DEFAULT_SYSTEM),
        })
    }

    /// pixel_values (rows, C·T·P·P) in the model dtype and the grid of one photo.
    pub fn pixel_values(&self, img: &image::RgbImage) -> Result<(Tensor, [usize; 3])> {
        let fetched = fetch_image(img).map_err(|m| Error::at("image", m))?;
        let p = self.preprocess.pixels(&fetched).map_err(|m| Error::at("image", m))?;
        let t = Tensor::from_vec(p.data, (p.rows, p.cols), &self.device)?.to_dtype(self.dtype)?;
        Ok((t, p.grid_thw))
    }

    /// Run the vision tower once for a photo.
    pub fn vision(&self, img: &image::RgbImage) -> Result<Vision> {
        let (px, grid) = self.pixel_values(img)?;
        let t = std::time::Instant::now();
        let f = self.model.image_features(&px, grid)?;
        self.device.synchronize()?;
        Ok(Vision {
            feats: f.embeds.clone(),
            grid: TileGrid { cols: 1, rows: 1 },
            n_tiles: 1,
            secs: t.elapsed().as_secs_f64(),
            qwen: Some(f),
        })
    }

    /// The prompt text of a user turn: the checkpoint's chat template over `predict_forward`'s
    /// message (the image, then the text with `<image>` removed), then, as the processor does,
    /// the template's one `<|image_pad|>` expanded to the merged token count.
    pub fn prompt_text(&self, user: &str, n_image_tokens: Option<usize>) -> Result<String> {
        let text = user.replace("<image>", "");
        let Some(t) = &self.template else {
            let image = n_image_tokens
                .map(|n| format!("<|vision_start|>{}<|vision_end|>", IMAGE_PAD.repeat(n)))
                .unwrap_or_default();
            let system = self
                .default_system
                .map(|s| format!("<|im_start|>system\n{s}<|im_end|>\n"))
                .unwrap_or_default();
            return Ok(format!(
                "{system}<|im_start|>user\n{image}{text}<|im_end|>\n<|im_start|>assistant\n"
            ));
        };
        let rendered = t.sa2va_turn(&text, n_image_tokens.is_some())?;
        expand_image_pad(&rendered, n_image_tokens.unwrap_or(0)).map_err(|m| Error::input(&t.origin, m))
    }

    /// Prompt ids and embeddings of a user turn over `vision`; the text model keeps the prompt's
    /// positions and DeepStack rows for the next prefill.
    pub fn embed_prompt(&self, vision: &Vision, user: &str) -> Result<(Vec<u32>, Tensor)> {
        let img = vision.qwen.as_ref().ok_or_else(|| {
            Error::at(
                "model",
                "these image features are InternVL's, not from this Qwen-VL vision tower",
            )
        })?;
        let n = img.embeds.dim(0)?;
        let prompt = self.prompt_text(user, Some(n))?;
        let enc = self
            .tokenizer
            .encode(prompt, false)
            .map_err(|e| Error::at("tokenizer", e.to_string()))?;
        let ids = enc.get_ids().to_vec();
        let (e, state) = self.model.embed_prompt(&ids, Some(img))?;
        self.model.text.set_prompt(state);
        Ok((ids, e))
    }
}

/// The processor's expansion: the one image's `<|image_pad|>` becomes `n` of them. A template
/// that places no pad, or more pads than images, is refused (the processor fails on both).
fn expand_image_pad(prompt: &str, n: usize) -> std::result::Result<String, String> {
    let found = prompt.matches(IMAGE_PAD).count();
    let want = usize::from(n > 0);
    if found != want {
        return Err(format!(
            "the chat template placed {found} {IMAGE_PAD} for {want} image(s) (rendered prompt: {prompt:?})"
        ));
    }
    Ok(prompt.replacen(IMAGE_PAD, &IMAGE_PAD.repeat(n), 1))
}

#[cfg(test)]
mod tests {
    #[test]
    fn image_pad_expansion() {
        let p = "<|vision_start|><|image_pad|><|vision_end|>hi";
        assert_eq!(
            super::expand_image_pad(p, 3).unwrap(),
            "<|vision_start|><|image_pad|><|image_pad|><|image_pad|><|vision_end|>hi"
        );
        assert!(super::expand_image_pad("no pad", 3).unwrap_err().contains("placed 0"));
        assert!(super::expand_image_pad(&p.repeat(2), 3)
            .unwrap_err()
            .contains("placed 2"));
        assert_eq!(super::expand_image_pad("text only", 0).unwrap(), "text only");
    }
}
