//! The full model: an InternVL/Sa2VA chat model whose `[SEG]` tokens prompt SAM2 and whose depth
//! tokens (Perceptio's spatial chain of thought) decode to a depth map through a VQ-VAE.
//! `Grounder::segment` mirrors Sa2VA's `predict_forward` for one image: generate the reply,
//! take the last-layer hidden state at each `[SEG]` (the position where `[SEG]` is fed back),
//! project it with `text_hidden_fcs`, decode it with SAM2 on the Sa2VA-preprocessed photo,
//! upsample 256 → 1024 → original size, threshold at 0, and OR the masks of all `[SEG]`s.
//! `Grounder::respond` is the general chain (depth block, masks, answer) that `ask` and
//! `depth` use.

pub mod depth;

use crate::depthmap::DepthMap;
use crate::error::{Error, Result};
use crate::mask::{Mask, Segment};
use crate::models::chat::Chat;
use crate::models::checkpoint::Checkpoint;
use crate::models::depth_tokens::{DepthBlock, DepthParseError};
use crate::models::generate::{generate_batch, generate_constrained, GenerateOptions, LogitsConstraint};
use crate::models::internvl::chat::Vision;
use crate::models::sam2::{Preprocess, Prompt, Sam2};
use candle_core::{IndexOp, Tensor};
use depth::DepthHead;
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
    pub chat: Chat,
    pub sam2: Option<Sam2>,
    pub seg_id: Option<u32>,
    pub depth: Option<DepthHead>,
}

/// What [`Grounder::load`] must find and where the parts outside the checkpoint are.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Fail unless the checkpoint can ground `[SEG]` (`text_hidden_fcs`, SAM2, the token).
    pub require_grounding: bool,
    /// The resolved directory of a VQ-VAE that the depth block places in another repo.
    pub vqvae_dir: Option<std::path::PathBuf>,
    /// Decode through quantized copies of the LLM's linear layers (CPU; opt-in).
    pub quantize_decode: Option<crate::models::internvl::DecodeQuant>,
}

/// How `respond` decodes.
#[derive(Debug, Clone)]
pub struct RespondOptions {
    pub generation: GenerateOptions,
    /// Keep a depth block well-formed while decoding (exactly gh·gw codes, then the end marker).
    pub constrain: bool,
    /// Start the reply with the depth start marker, so the model must write a depth block.
    pub force_depth: bool,
}

/// What a depth block in the reply gave.
#[derive(Debug, Clone)]
pub struct DepthOutcome {
    /// The parsed block, or why the token stream is not a well-formed block.
    pub block: std::result::Result<DepthBlock, DepthParseError>,
    /// The decoded map at the photo's size (when the block parsed).
    pub map: Option<DepthMap>,
}

/// The whole spatial chain of one reply.
#[derive(Debug, Clone)]
pub struct SpatialAnswer {
    /// The reply with the depth block and `[SEG]` tokens removed.
    pub answer: String,
    pub text_with_spatial_tokens: String,
    pub token_ids: Vec<u32>,
    /// One mask per `[SEG]` with its predicted IoU and object score.
    pub segments: Vec<Segment>,
    /// `None` when the reply has no depth block (or the model has no depth tokens).
    pub depth: Option<DepthOutcome>,
    pub prompt_tokens: usize,
    /// Embedding the prompt, prefill and decoding together.
    pub llm_s: f64,
    /// The prefill forward alone, and the decode loop alone (every generated token).
    pub prefill_s: f64,
    pub decode_s: f64,
    /// VQ-VAE decode of the depth block to the photo's size (0 without a block).
    pub vqvae_s: f64,
    pub sam2_s: f64,
}

impl Grounder {
    /// Build whatever an opened checkpoint has: the chat model always; SAM2 + `[SEG]` when it
    /// has `text_hidden_fcs`, SAM2 tensors and the token (required with
    /// `require_grounding`); the depth head when `config.json` has a `perceptio.depth` block.
    pub fn load(ck: &Checkpoint, o: &LoadOptions) -> Result<Self> {
        let dir = ck.dir.as_path();
        // SAM2 is built on a second thread while the chat model loads: both are mostly copies
        // out of the mapped file, and two threads take the page faults twice as fast.
        let (mut chat, sam2) = std::thread::scope(|s| {
            let sam2 = Sam2::present_in(ck).then(|| s.spawn(|| Sam2::from_checkpoint(ck, None)));
            let chat = Chat::from_checkpoint(ck);
            let sam2 = sam2.map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::at("sam2", "the SAM2 loading thread panicked")))
            });
            Ok::<_, Error>((chat?, sam2))
        })?;
        if let Some(q) = o.quantize_decode {
            chat.quantize_for_decode(q)?;
        }
        let seg_id = chat.tokenizer().token_to_id(SEG_TOKEN);
        let has_fcs = chat.seg_width().is_some();
        // Only a model that can ground [SEG] uses (and so must have a sound) SAM2.
        let sam2 = sam2.filter(|_| has_fcs && seg_id.is_some()).transpose()?;
        let sam2 = if let Some(m) = sam2 {
            check_projection(&chat, &m, dir)?;
            Some(m)
        } else if o.require_grounding {
            return Err(if !has_fcs {
                Error::input(
                    dir,
                    "the checkpoint has no text_hidden_fcs ([SEG] projection): it is not a Sa2VA-style grounding model",
                )
            } else if seg_id.is_none() {
                Error::input(dir, "the tokenizer has no [SEG] token")
            } else {
                Error::input(
                    dir,
                    "the checkpoint holds no SAM2 (no grounding_encoder.sam2_model.* tensors)",
                )
            });
        } else {
            None
        };
        let depth = DepthHead::from_checkpoint(ck, chat.tokenizer(), o.vqvae_dir.as_deref())?;
        let seg_id = if sam2.is_some() { seg_id } else { None };
        Ok(Self {
            chat,
            sam2,
            seg_id,
            depth,
        })
    }

    fn sam2(&self) -> Result<&Sam2> {
        self.sam2
            .as_ref()
            .ok_or_else(|| Error::at("model", "this checkpoint has no SAM2 grounding head"))
    }

    /// Masks of `[SEG]` hidden states on `img` (SAM2 features cached per image).
    fn masks(&self, img: &RgbImage, seg_hidden: &[Tensor], timings: &mut SegmentTimings) -> Result<Vec<Segment>> {
        let mut out = Vec::new();
        if seg_hidden.is_empty() {
            return Ok(out);
        }
        let sam2 = self.sam2()?;
        let (w, h) = (img.width(), img.height());
        let t = Instant::now();
        let (feats, hit) = sam2.features(img, Preprocess::Sa2va)?;
        sam2.device.synchronize()?;
        timings.sam2_encode_s = t.elapsed().as_secs_f64();
        timings.sam2_cached = hit;
        let t = Instant::now();
        for hs in seg_hidden {
            let e = self
                .chat
                .seg_projection(&hs.unsqueeze(0)?)?
                .ok_or_else(|| Error::at("model", "the checkpoint has no text_hidden_fcs"))?;
            let p = sam2.predict_mask(&feats, Prompt::Seg(&e.to_device(&sam2.device)?), (w, h))?;
            out.push(Segment {
                mask: p.mask,
                score: p.scores[p.best],
                object_score: p.object_score,
            });
        }
        timings.sam2_decode_s = t.elapsed().as_secs_f64();
        Ok(out)
    }

    /// The general chain for one user turn: generate (depth block kept well-formed when
    /// `constrain`), decode the depth block with the VQ-VAE, `[SEG]`s with SAM2, and the answer.
    pub fn respond(
        &mut self,
        img: &RgbImage,
        vision: &Vision,
        user: &str,
        o: &RespondOptions,
        on_token: impl FnMut(u32),
    ) -> Result<SpatialAnswer> {
        let t = Instant::now();
        let (_, mut embeds) = self.chat.embed_prompt(vision, user)?;
        let opts = self.chat.with_stops(&o.generation);
        let mut guard = self.depth.as_ref().map(|d| d.constraint());
        let mut prefix: Vec<u32> = Vec::new();
        if o.force_depth {
            let d = self.depth.as_ref().ok_or_else(|| {
                Error::at(
                    "model",
                    "this checkpoint has no depth tokens (no `perceptio.depth` block in config.json)",
                )
            })?;
            let start = d.ids.start;
            let e = self.chat.embed(&Tensor::new(&[[start]], embeds.device())?)?;
            embeds = Tensor::cat(&[&embeds, &e], 1)?;
            if let Some(g) = guard.as_mut() {
                g.advance(start);
            }
            prefix.push(start);
        }
        let c: Option<&mut dyn LogitsConstraint> = if o.constrain {
            guard.as_mut().map(|g| g as &mut dyn LogitsConstraint)
        } else {
            None
        };
        let g = generate_constrained(self.chat.lm(), &embeds, &opts, c, on_token)?;
        let llm_s = t.elapsed().as_secs_f64();
        let seg_hidden: Vec<Tensor> = match self.seg_id {
            Some(sid) => seg_rows(&g, sid),
            None => vec![],
        };
        let mut ids: Vec<u32> = prefix;
        ids.extend(g.ids.iter().copied().filter(|i| !opts.stop_ids.contains(i)));
        let text_with_spatial_tokens = self.chat.decode_reply(&ids, &opts.stop_ids)?;
        let (w, h) = (img.width(), img.height());
        let mut depth = None;
        let mut spatial: Vec<bool> = vec![false; ids.len()];
        let mut vqvae_s = 0.0;
        if let Some(d) = &self.depth {
            match d.ids.parse(&ids) {
                Ok(Some(block)) => {
                    spatial[block.start_pos..=block.end_pos]
                        .iter_mut()
                        .for_each(|x| *x = true);
                    let t = Instant::now();
                    let map = d.decode(&block, (w, h))?;
                    vqvae_s = t.elapsed().as_secs_f64();
                    depth = Some(DepthOutcome {
                        block: Ok(block),
                        map: Some(map),
                    });
                }
                Ok(None) => {}
                Err(e) => {
                    depth = Some(DepthOutcome {
                        block: Err(e),
                        map: None,
                    })
                }
            }
        }
        if let Some(sid) = self.seg_id {
            ids.iter().zip(spatial.iter_mut()).for_each(|(&id, s)| *s |= id == sid);
        }
        let plain: Vec<u32> = ids
            .iter()
            .zip(&spatial)
            .filter(|(_, s)| !**s)
            .map(|(&i, _)| i)
            .collect();
        let answer = self.chat.decode_reply(&plain, &opts.stop_ids)?;
        let mut timings = SegmentTimings::default();
        let segments = self.masks(img, &seg_hidden, &mut timings)?;
        Ok(SpatialAnswer {
            answer,
            text_with_spatial_tokens,
            token_ids: g.ids,
            segments,
            depth,
            prompt_tokens: g.prompt_tokens,
            llm_s,
            prefill_s: g.prefill_secs,
            decode_s: g.decode_secs,
            vqvae_s,
            sam2_s: timings.sam2_encode_s + timings.sam2_decode_s,
        })
    }

    /// InternVL features of the photo (reuse them for several expressions).
    pub fn vision(&self, img: &RgbImage, max_tiles: usize) -> Result<Vision> {
        self.chat.vision(img, max_tiles)
    }

    /// Segment what `expression` refers to, with Sa2VA's referring prompt.
    pub fn segment(
        &mut self,
        img: &RgbImage,
        vision: &Vision,
        expression: &str,
        opts: &SegmentOptions,
    ) -> Result<SegmentResult> {
        let prompt = referring_prompt(expression);
        self.segment_prompt(img, vision, expression, &prompt, opts)
    }

    /// Segment with an arbitrary user turn (must contain `<image>`).
    pub fn segment_prompt(
        &mut self,
        img: &RgbImage,
        vision: &Vision,
        expression: &str,
        prompt: &str,
        opts: &SegmentOptions,
    ) -> Result<SegmentResult> {
        let t = Instant::now();
        let (token_ids, text, seg_hidden) = if opts.force_seg {
            let (ids, h) = self.chat.force_reply(vision, prompt, FORCED_REPLY)?;
            let rows = self.forced_seg_rows(&ids, &h)?;
            (ids, FORCED_REPLY.to_string(), rows)
        } else {
            self.generate_reply(vision, prompt, opts)?
        };
        let llm_s = t.elapsed().as_secs_f64();
        let mut timings = SegmentTimings {
            vision_s: vision.secs,
            llm_s,
            ..Default::default()
        };
        let segs = self.masks(img, &seg_hidden, &mut timings)?;
        Ok(segment_result(img, expression, prompt, text, token_ids, &segs, timings))
    }

    /// [`Self::segment`] for several (photo, features, expression) samples at once, each
    /// result as its lone run gives it (up to float summation order): with `force_seg` one
    /// right-padded LLM prefill for all, else batched decoding ([`generate_batch`]; a model with
    /// a depth head or quantized decode steps generates each reply alone), then SAM2 encodes the
    /// distinct uncached photos together and its mask decoder takes every `[SEG]` of the batch in
    /// one forward. Timings are the batch's stage times shared equally among its samples.
    pub fn segment_batch(&mut self, items: &[BatchItem], opts: &SegmentOptions) -> Result<Vec<SegmentResult>> {
        let n = items.len().max(1) as f64;
        let prompts: Vec<String> = items.iter().map(|it| referring_prompt(it.expression)).collect();
        let t = Instant::now();
        let replies: Vec<(Vec<u32>, String, Vec<Tensor>)> = if opts.force_seg {
            let turns: Vec<(&Vision, &str)> = items
                .iter()
                .zip(&prompts)
                .map(|(it, p)| (it.vision, p.as_str()))
                .collect();
            let (ids, hs) = self.chat.force_reply_batch(&turns, FORCED_REPLY)?;
            hs.iter()
                .map(|h| Ok((ids.clone(), FORCED_REPLY.to_string(), self.forced_seg_rows(&ids, h)?)))
                .collect::<Result<_>>()?
        } else if items.len() > 1 && self.depth.is_none() && self.chat.batch_decoder().is_some() {
            // Batched decoding (InternVL decoders); a depth head's constraint, quantized decode
            // steps (one-row products only) and other families keep the one-reply-at-a-time path.
            let embeds = items
                .iter()
                .zip(&prompts)
                .map(|(it, p)| Ok(self.chat.embed_prompt(it.vision, p)?.1))
                .collect::<Result<Vec<_>>>()?;
            let gen = self.chat.with_stops(&opts.generation);
            let lm = self
                .chat
                .batch_decoder()
                .ok_or_else(|| Error::at("model", "no batched decoder"))?;
            let gens = generate_batch(lm, &embeds, &gen)?;
            let sid = self
                .seg_id
                .ok_or_else(|| Error::at("model", "this checkpoint has no [SEG] grounding"))?;
            gens.into_iter()
                .map(|g| {
                    let rows = seg_rows(&g, sid);
                    let text = self.chat.decode_reply(&g.ids, &gen.stop_ids)?;
                    Ok((g.ids, text, rows))
                })
                .collect::<Result<_>>()?
        } else {
            items
                .iter()
                .zip(&prompts)
                .map(|(it, p)| self.generate_reply(it.vision, p, opts))
                .collect::<Result<_>>()?
        };
        let llm_s = t.elapsed().as_secs_f64() / n;
        // Every [SEG] of the batch, with the sample it belongs to.
        let owners: Vec<usize> = replies
            .iter()
            .enumerate()
            .flat_map(|(i, r)| std::iter::repeat_n(i, r.2.len()))
            .collect();
        let mut segs: Vec<Vec<Segment>> = vec![Vec::new(); items.len()];
        let (mut enc_s, mut dec_s) = (0.0, 0.0);
        let mut cached = vec![false; items.len()];
        if !owners.is_empty() {
            let sam2 = self.sam2()?;
            let hidden: Vec<&Tensor> = replies.iter().flat_map(|r| &r.2).collect();
            let t = Instant::now();
            let imgs: Vec<&RgbImage> = owners.iter().map(|&i| items[i].img).collect();
            let feats = sam2.features_batch(&imgs, Preprocess::Sa2va)?;
            sam2.device.synchronize()?;
            enc_s = t.elapsed().as_secs_f64() / n;
            let t = Instant::now();
            let e = self
                .chat
                .seg_projection(&Tensor::stack(&hidden, 0)?)?
                .ok_or_else(|| Error::at("model", "the checkpoint has no text_hidden_fcs"))?
                .to_device(&sam2.device)?;
            let rows: Vec<Tensor> = (0..owners.len()).map(|j| e.i(j)).collect::<candle_core::Result<_>>()?;
            let fs: Vec<&crate::models::sam2::ImageFeatures> = feats.iter().map(|(f, _)| f.as_ref()).collect();
            let sizes: Vec<(u32, u32)> = imgs.iter().map(|i| (i.width(), i.height())).collect();
            let preds = sam2.predict_seg_masks(&fs, &rows, &sizes)?;
            dec_s = t.elapsed().as_secs_f64() / n;
            for ((p, &i), (_, hit)) in preds.into_iter().zip(&owners).zip(&feats) {
                cached[i] = *hit;
                segs[i].push(Segment {
                    mask: p.mask,
                    score: p.scores[p.best],
                    object_score: p.object_score,
                });
            }
        }
        Ok(items
            .iter()
            .zip(prompts)
            .zip(replies)
            .enumerate()
            .map(|(i, ((it, prompt), (ids, text, hidden)))| {
                let timings = SegmentTimings {
                    vision_s: it.vision.secs,
                    llm_s,
                    sam2_encode_s: if hidden.is_empty() { 0.0 } else { enc_s },
                    sam2_cached: cached[i],
                    sam2_decode_s: if hidden.is_empty() { 0.0 } else { dec_s },
                };
                segment_result(it.img, it.expression, &prompt, text, ids, &segs[i], timings)
            })
            .collect())
    }

    /// The `[SEG]` rows of a teacher-forced reply's hidden states.
    fn forced_seg_rows(&self, ids: &[u32], h: &Tensor) -> Result<Vec<Tensor>> {
        let sid = self
            .seg_id
            .ok_or_else(|| Error::at("model", "this checkpoint has no [SEG] grounding"))?;
        Ok(ids
            .iter()
            .enumerate()
            .filter(|(_, &id)| id == sid)
            .map(|(i, _)| h.i(i))
            .collect::<candle_core::Result<_>>()?)
    }

    /// Generate the reply to `prompt`: its ids, text and the hidden states at its `[SEG]`s.
    /// Same decoding as `respond`: a model with depth tokens keeps any depth block it writes
    /// well-formed, so the chain before the answer is never cut or malformed.
    fn generate_reply(
        &mut self,
        vision: &Vision,
        prompt: &str,
        opts: &SegmentOptions,
    ) -> Result<(Vec<u32>, String, Vec<Tensor>)> {
        let (_, embeds) = self.chat.embed_prompt(vision, prompt)?;
        let gen = self.chat.with_stops(&opts.generation);
        let mut guard = self.depth.as_ref().map(|d| d.constraint());
        let c = guard.as_mut().map(|g| g as &mut dyn LogitsConstraint);
        let g = generate_constrained(self.chat.lm(), &embeds, &gen, c, |_| {})?;
        let sid = self
            .seg_id
            .ok_or_else(|| Error::at("model", "this checkpoint has no [SEG] grounding"))?;
        let rows = seg_rows(&g, sid);
        let text = self.chat.decode_reply(&g.ids, &gen.stop_ids)?;
        Ok((g.ids, text, rows))
    }
}

/// One sample of [`Grounder::segment_batch`]: the photo, its InternVL features, the expression.
#[derive(Clone, Copy)]
pub struct BatchItem<'a> {
    pub img: &'a RgbImage,
    pub vision: &'a Vision,
    pub expression: &'a str,
}

/// A [`SegmentResult`] from the reply and the masks of its `[SEG]`s (OR-ed at the photo's size).
fn segment_result(
    img: &RgbImage,
    expression: &str,
    prompt: &str,
    text: String,
    token_ids: Vec<u32>,
    segs: &[Segment],
    timings: SegmentTimings,
) -> SegmentResult {
    let mut mask = Mask::empty(img.width(), img.height());
    for s in segs {
        mask.or(&s.mask);
    }
    SegmentResult {
        expression: expression.to_string(),
        prompt: prompt.to_string(),
        text,
        token_ids,
        seg_count: segs.len(),
        mask,
        scores: segs.iter().map(|s| s.score).collect(),
        object_scores: segs.iter().map(|s| s.object_score).collect(),
        timings,
    }
}

/// Hidden states at the generated `[SEG]`s (where each is fed back; Sa2VA reads output_ids[:-1],
/// so a `[SEG]` that is the very last token has none).
fn seg_rows(g: &crate::models::generate::Generation, sid: u32) -> Vec<Tensor> {
    g.ids
        .iter()
        .zip(&g.hidden)
        .filter(|(&id, _)| id == sid)
        .map(|(_, h)| h.clone())
        .collect()
}

fn check_projection(chat: &Chat, sam2: &Sam2, dir: &Path) -> Result<()> {
    let proj_out = chat.seg_width().unwrap_or(0);
    if proj_out != sam2.config.decoder.transformer_dim {
        return Err(Error::input(
            dir,
            format!(
                "text_hidden_fcs projects to {proj_out} but the SAM2 decoder is {} wide",
                sam2.config.decoder.transformer_dim
            ),
        ));
    }
    Ok(())
}
