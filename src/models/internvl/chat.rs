//! A loaded InternVL/Sa2VA checkpoint with its tokenizer and template: image + question → reply.

use super::{Config, InternVl};
use crate::error::{Error, Result};
use crate::models::checkpoint::Checkpoint;
use crate::models::generate::{generate, teacher_force, GenerateOptions, Generation, StopText};
use crate::models::template::{expand_image, Template, IMG_CONTEXT};
use crate::models::tokenizer::Tokenizer;
use crate::preprocess::internvl::{dynamic_tiles, normalize_tiles, TileGrid};
use candle_core::{DType, Device, Tensor};
use std::path::Path;

pub struct ChatModel {
    pub model: InternVl,
    pub tokenizer: Tokenizer,
    pub template: &'static Template,
    pub image_token_id: u32,
    /// Ids that end a reply: the template's stop words that are single tokens, and the
    /// tokenizer's eos token (the reference's `eos_token_id`).
    pub stop_ids: Vec<u32>,
    /// The template's stop words that are not single tokens of this vocabulary.
    pub stop_text: Option<StopText>,
    pub device: Device,
    pub dtype: DType,
}

/// What a question about an image produced.
pub struct Answer {
    pub text: String,
    pub generation: Generation,
    pub n_tiles: usize,
    pub grid: TileGrid,
    pub prompt_ids: Vec<u32>,
    pub vision_secs: f64,
}

impl ChatModel {
    /// Open the model directory and build the chat model from it.
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        Self::from_checkpoint(&Checkpoint::open(dir, dtype, device)?)
    }

    /// Build from an opened checkpoint: the InternVL weights, `tokenizer.json` beside them, the
    /// template the config names.
    pub fn from_checkpoint(ck: &Checkpoint) -> Result<Self> {
        let _g = tracing::span!(tracing::Level::TRACE, "load-chat-model").entered();
        let dir = ck.dir.as_path();
        let (device, dtype) = (ck.device(), ck.dtype());
        super::config::check_family(&ck.config).map_err(|m| Error::input(dir.join("config.json"), m))?;
        let config: Config = ck.config_as()?;
        config
            .llm_arch()
            .map_err(|m| Error::input(dir.join("config.json"), m))?;
        let template = Template::by_name(&config.template).ok_or_else(|| {
            Error::input(
                dir.join("config.json"),
                format!(
                    "unknown template {:?} (supported: qwen_chat, internlm2_chat, phi3_chat)",
                    config.template
                ),
            )
        })?;
        // The tokenizer (~0.5 s for a 150k vocabulary) is read on a second thread while the
        // weights are copied out of the mapping on this one.
        let (tokenizer, model) = std::thread::scope(|s| {
            let tok = s.spawn(|| {
                let _g = tracing::span!(tracing::Level::TRACE, "load-tokenizer").entered();
                Self::load_tokenizer(dir)
            });
            let model = InternVl::new(config, ck.vb()).map_err(|e| ck.weight_error(e));
            let tok = tok
                .join()
                .unwrap_or_else(|_| Err(Error::at("tokenizer", "the tokenizer thread panicked")));
            Ok::<_, Error>((tok?, model?))
        })?;
        let image_token_id = tokenizer
            .token_to_id(IMG_CONTEXT)
            .ok_or_else(|| Error::input(dir, "the tokenizer has no <IMG_CONTEXT> token"))?;
        let mut stop_ids: Vec<u32> = template
            .stop_words
            .iter()
            .filter_map(|w| tokenizer.token_to_id(w))
            .collect();
        if let Some(eos) = eos_token(dir)?.and_then(|t| tokenizer.token_to_id(&t)) {
            if !stop_ids.contains(&eos) {
                stop_ids.push(eos);
            }
        }
        let words: Vec<String> = template
            .stop_words
            .iter()
            .filter(|w| tokenizer.token_to_id(w).is_none())
            .map(|w| w.to_string())
            .collect();
        let stop_text = (!words.is_empty()).then(|| StopText {
            tokenizer: std::sync::Arc::new(tokenizer.clone()),
            words,
        });
        Ok(Self {
            model,
            tokenizer,
            template,
            image_token_id,
            stop_ids,
            stop_text,
            device: device.clone(),
            dtype,
        })
    }

    /// The tokenizer of a model directory (`tokenizer.json`, Qwen2's vocab.json + merges.txt, or
    /// InternLM2's SentencePiece `tokenizer.model`; see `models::tokenizer::load`).
    pub fn load_tokenizer(dir: &Path) -> Result<Tokenizer> {
        Ok(crate::models::tokenizer::load(dir)?.0)
    }

    pub fn config(&self) -> &Config {
        &self.model.config
    }

    /// Tiles → pixel values (n, 3, S, S) in the model dtype.
    pub fn pixel_values(&self, img: &image::RgbImage, max_tiles: usize) -> Result<(Tensor, TileGrid, usize)> {
        let cfg = self.config();
        let s = cfg.image_size();
        let (dynamic, min_tiles, thumbnail) = cfg.tiling();
        let max = if dynamic { max_tiles.max(1) } else { 1 };
        let (tiles, grid) = dynamic_tiles(img, s, min_tiles.min(max), max, thumbnail);
        let n = tiles.len();
        let data = normalize_tiles(&tiles);
        let t = Tensor::from_vec(data, (n, 3, s, s), &self.device).and_then(|t| t.to_dtype(self.dtype))?;
        Ok((t, grid, n))
    }

    /// Token ids of the single-turn prompt for `text` (containing `<image>`), `n_tiles` tiles.
    pub fn prompt_ids(&self, text: &str, n_tiles: usize) -> Result<Vec<u32>> {
        let n = n_tiles * self.config().num_image_token();
        let prompt = self.template.prompt(&expand_image(text, n));
        let enc = self
            .tokenizer
            .encode(prompt, true)
            .map_err(|e| Error::at("tokenizer", e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Embeddings of the prompt with the image features spliced in, plus timing of the ViT.
    pub fn prompt_embeds(&self, ids: &[u32], pixel_values: &Tensor) -> Result<(Tensor, f64)> {
        let t = std::time::Instant::now();
        let feats = self.model.extract_feature(pixel_values)?;
        let secs = t.elapsed().as_secs_f64();
        let e = self.model.embed_with_images(ids, self.image_token_id, Some(&feats))?;
        Ok((e, secs))
    }

    /// Run the ViT + projector once for a photo; the result serves any number of prompts.
    pub fn vision(&self, img: &image::RgbImage, max_tiles: usize) -> Result<Vision> {
        let (px, grid, n_tiles) = self.pixel_values(img, max_tiles)?;
        let t = std::time::Instant::now();
        let feats = self.model.extract_feature(&px)?;
        // A GPU runs asynchronously: wait for it so the time is the ViT's, not the next stage's.
        self.device.synchronize()?;
        Ok(Vision {
            feats,
            grid,
            n_tiles,
            secs: t.elapsed().as_secs_f64(),
            qwen: None,
        })
    }

    /// [`Self::vision`] for several photos in one ViT + projector forward over all their tiles
    /// (tiles are independent, so each photo's features are its lone run's up to summation
    /// order). Each `secs` is the batch's time shared in proportion to the photo's tiles.
    pub fn vision_batch(&self, imgs: &[&image::RgbImage], max_tiles: usize) -> Result<Vec<Vision>> {
        if imgs.is_empty() {
            return Ok(vec![]);
        }
        let mut px = Vec::with_capacity(imgs.len());
        let mut grids = Vec::with_capacity(imgs.len());
        for img in imgs {
            let (p, grid, n) = self.pixel_values(img, max_tiles)?;
            px.push(p);
            grids.push((grid, n));
        }
        let t = std::time::Instant::now();
        let feats = self.model.extract_feature(&Tensor::cat(&px, 0)?)?;
        self.device.synchronize()?;
        let secs = t.elapsed().as_secs_f64();
        let total: usize = grids.iter().map(|(_, n)| n).sum();
        let mut start = 0;
        grids
            .into_iter()
            .map(|(grid, n_tiles)| {
                let f = feats.narrow(0, start, n_tiles)?;
                start += n_tiles;
                Ok(Vision {
                    feats: f,
                    grid,
                    n_tiles,
                    secs: secs * n_tiles as f64 / total as f64,
                    qwen: None,
                })
            })
            .collect()
    }

    /// Prompt ids and embeddings of a user turn (containing `<image>`) over `vision`.
    pub fn embed_prompt(&self, vision: &Vision, user: &str) -> Result<(Vec<u32>, Tensor)> {
        let ids = self.prompt_ids(user, vision.n_tiles)?;
        let e = self
            .model
            .embed_with_images(&ids, self.image_token_id, Some(&vision.feats))?;
        Ok((ids, e))
    }

    /// Generate the assistant reply to the user turn `user` (e.g. `<image>\n{question}`).
    pub fn reply(
        &mut self,
        vision: &Vision,
        user: &str,
        opts: &GenerateOptions,
        on_token: impl FnMut(u32),
    ) -> Result<Answer> {
        let (prompt_ids, embeds) = self.embed_prompt(vision, user)?;
        let opts = self.with_stops(opts);
        let generation = generate(&mut self.model, &embeds, &opts, on_token)?;
        let text = self.decode_reply(&generation.ids, &opts.stop_ids)?;
        Ok(Answer {
            text,
            generation,
            n_tiles: vision.n_tiles,
            grid: vision.grid,
            prompt_ids,
            vision_secs: vision.secs,
        })
    }

    /// `opts` with this model's stops unless the caller gave its own stop ids.
    pub fn with_stops(&self, opts: &GenerateOptions) -> GenerateOptions {
        let mut o = opts.clone();
        if o.stop_ids.is_empty() {
            o.stop_ids = self.stop_ids.clone();
            o.stop_text = o.stop_text.or_else(|| self.stop_text.clone());
        }
        o
    }

    /// The text of generated ids: stop tokens dropped, special tokens such as `[SEG]` kept,
    /// surrounding whitespace trimmed (as Sa2VA's `predict_forward` returns it).
    pub fn decode_reply(&self, ids: &[u32], stop_ids: &[u32]) -> Result<String> {
        let kept: Vec<u32> = ids.iter().copied().filter(|i| !stop_ids.contains(i)).collect();
        let text = self
            .tokenizer
            .decode(&kept, false)
            .map_err(|e| Error::at("tokenizer", e.to_string()))?;
        let mut text = text.trim();
        // A stop word made of several tokens ends the text like a stop token would.
        for w in self.stop_text.iter().flat_map(|s| &s.words) {
            text = text.strip_suffix(w.as_str()).unwrap_or(text).trim_end();
        }
        Ok(text.to_string())
    }

    /// Teacher-force the assistant reply `reply` after the user turn and return its token ids
    /// and their last-layer hidden states (n, h) — LISA/GLaMM-style `Sure, [SEG].` evaluation.
    pub fn force_reply(&mut self, vision: &Vision, user: &str, reply: &str) -> Result<(Vec<u32>, Tensor)> {
        let (_, embeds) = self.embed_prompt(vision, user)?;
        let enc = self
            .tokenizer
            .encode(reply, false)
            .map_err(|e| Error::at("tokenizer", e.to_string()))?;
        let ids = enc.get_ids().to_vec();
        if ids.is_empty() {
            return Err(Error::Usage("the forced reply is empty".into()));
        }
        let h = teacher_force(&mut self.model, &embeds, &ids)?;
        Ok((ids, h))
    }

    /// [`Self::force_reply`] for several (features, user turn) pairs in one padded prefill (see
    /// [`crate::models::generate::teacher_force_batch`]); the reply's ids and each pair's hidden states.
    pub fn force_reply_batch(&mut self, turns: &[(&Vision, &str)], reply: &str) -> Result<(Vec<u32>, Vec<Tensor>)> {
        let embeds = turns
            .iter()
            .map(|(v, user)| Ok(self.embed_prompt(v, user)?.1))
            .collect::<Result<Vec<_>>>()?;
        let enc = self
            .tokenizer
            .encode(reply, false)
            .map_err(|e| Error::at("tokenizer", e.to_string()))?;
        let ids = enc.get_ids().to_vec();
        if ids.is_empty() {
            return Err(Error::Usage("the forced reply is empty".into()));
        }
        let h = crate::models::generate::teacher_force_batch(&mut self.model, &embeds, &ids)?;
        Ok((ids, h))
    }

    /// Ask `question` about `img` (Sa2VA's user turn `<image>\n{question}`).
    pub fn ask(
        &mut self,
        img: &image::RgbImage,
        question: &str,
        max_tiles: usize,
        opts: &GenerateOptions,
        on_token: impl FnMut(u32),
    ) -> Result<Answer> {
        let vision = self.vision(img, max_tiles)?;
        self.reply(&vision, &format!("<image>\n{question}"), opts, on_token)
    }
}

/// The `eos_token` of `tokenizer_config.json` (a string or `{"content": ...}`), if any.
pub(crate) fn eos_token(dir: &Path) -> Result<Option<String>> {
    let p = dir.join("tokenizer_config.json");
    if !p.is_file() {
        return Ok(None);
    }
    let v: serde_json::Value = serde_json::from_slice(&crate::util::read_file(&p)?)
        .map_err(|e| Error::input(&p, format!("not valid JSON: {e}")))?;
    Ok(match v.get("eos_token") {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(o) => o.get("content").and_then(|c| c.as_str()).map(String::from),
        None => None,
    })
}

/// Image features of one photo (InternVL's after mlp1, or Qwen3-VL's / Qwen2.5-VL's), reusable across prompts.
pub struct Vision {
    pub feats: Tensor,
    pub grid: TileGrid,
    pub n_tiles: usize,
    pub secs: f64,
    /// Qwen-VL features (merged tokens, DeepStack (none for Qwen2.5-VL), grid); `None` for InternVL.
    pub qwen: Option<crate::models::qwen3_vl::ImageFeatures>,
}
