//! The chat model of a checkpoint, whichever family it is: InternVL (InternViT + Qwen2/InternLM2)
//! Qwen3-VL or Qwen2.5-VL (the last two share one chat type). The grounding chain, `ask`, `segment` and `eval --model` go through this type.

use crate::error::{Error, Result};
use crate::models::checkpoint::Checkpoint;
use crate::models::generate::{generate, teacher_force, CausalLm, GenerateOptions, StopText};
use crate::models::internvl::chat::{Answer, ChatModel, Vision};
use crate::models::qwen3_vl::chat::Qwen3VlChat;
use crate::models::tokenizer::Tokenizer;
use candle_core::Tensor;

#[allow(clippy::large_enum_variant)] // one per process; boxing the common case buys nothing
pub enum Chat {
    InternVl(ChatModel),
    Qwen3Vl(Qwen3VlChat),
    Qwen25Vl(Qwen3VlChat),
}

impl Chat {
    /// Build the family the config names (the Qwen-VL ones by their `vision_config.model_type`).
    pub fn from_checkpoint(ck: &Checkpoint) -> Result<Self> {
        if crate::models::qwen2_5_vl::is_qwen2_5_vl(&ck.config) {
            Ok(Chat::Qwen25Vl(Qwen3VlChat::from_checkpoint_qwen25(ck)?))
        } else if crate::models::qwen3_vl::config::is_qwen3_vl(&ck.config) {
            Ok(Chat::Qwen3Vl(Qwen3VlChat::from_checkpoint(ck)?))
        } else {
            Ok(Chat::InternVl(ChatModel::from_checkpoint(ck)?))
        }
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        match self {
            Chat::InternVl(c) => &c.tokenizer,
            Chat::Qwen3Vl(c) | Chat::Qwen25Vl(c) => &c.tokenizer,
        }
    }

    pub fn stop_ids(&self) -> &[u32] {
        match self {
            Chat::InternVl(c) => &c.stop_ids,
            Chat::Qwen3Vl(c) | Chat::Qwen25Vl(c) => &c.stop_ids,
        }
    }

    fn stop_text(&self) -> Option<StopText> {
        match self {
            Chat::InternVl(c) => c.stop_text.clone(),
            Chat::Qwen3Vl(_) | Chat::Qwen25Vl(_) => None,
        }
    }

    /// The tile budget when none is given (Qwen3-VL has no tiles: its pixel range is fixed).
    pub fn default_max_tiles(&self) -> usize {
        match self {
            Chat::InternVl(c) => c.config().default_max_tiles(),
            Chat::Qwen3Vl(_) | Chat::Qwen25Vl(_) => 1,
        }
    }

    /// The decoder that generation drives.
    pub fn lm(&mut self) -> &mut dyn CausalLm {
        match self {
            Chat::InternVl(c) => &mut c.model,
            Chat::Qwen3Vl(c) | Chat::Qwen25Vl(c) => &mut c.model.text,
        }
    }

    /// Token embeddings (b, s) → (b, s, h).
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Chat::InternVl(c) => c.model.llm.embed(ids)?,
            Chat::Qwen3Vl(c) | Chat::Qwen25Vl(c) => c.model.text.embed(ids)?,
        })
    }

    /// The vision features of a photo (reused for several prompts); `max_tiles` is InternVL's.
    pub fn vision(&self, img: &image::RgbImage, max_tiles: usize) -> Result<Vision> {
        match self {
            Chat::InternVl(c) => c.vision(img, max_tiles),
            Chat::Qwen3Vl(c) | Chat::Qwen25Vl(c) => c.vision(img),
        }
    }

    /// Prompt ids and embeddings of a user turn (containing `<image>`) over `vision`.
    pub fn embed_prompt(&self, vision: &Vision, user: &str) -> Result<(Vec<u32>, Tensor)> {
        match self {
            Chat::InternVl(c) => c.embed_prompt(vision, user),
            Chat::Qwen3Vl(c) | Chat::Qwen25Vl(c) => c.embed_prompt(vision, user),
        }
    }

    /// `opts` with this model's stops unless the caller gave its own stop ids.
    pub fn with_stops(&self, opts: &GenerateOptions) -> GenerateOptions {
        let mut o = opts.clone();
        if o.stop_ids.is_empty() {
            o.stop_ids = self.stop_ids().to_vec();
            o.stop_text = o.stop_text.or_else(|| self.stop_text());
        }
        o
    }

    /// The text of generated ids (stop tokens dropped, special tokens kept, trimmed).
    pub fn decode_reply(&self, ids: &[u32], stop_ids: &[u32]) -> Result<String> {
        match self {
            Chat::InternVl(c) => c.decode_reply(ids, stop_ids),
            Chat::Qwen3Vl(c) | Chat::Qwen25Vl(c) => {
                let kept: Vec<u32> = ids.iter().copied().filter(|i| !stop_ids.contains(i)).collect();
                let t = c
                    .tokenizer
                    .decode(&kept, false)
                    .map_err(|e| Error::at("tokenizer", e.to_string()))?;
                Ok(t.trim().to_string())
            }
        }
    }

    /// Generate the assistant reply to the user turn `user` over `vision`.
    pub fn reply(
        &mut self,
        vision: &Vision,
        user: &str,
        opts: &GenerateOptions,
        on_token: impl FnMut(u32),
    ) -> Result<Answer> {
        if let Chat::InternVl(c) = self {
            return c.reply(vision, user, opts, on_token);
        }
        let (prompt_ids, embeds) = self.embed_prompt(vision, user)?;
        let opts = self.with_stops(opts);
        let generation = generate(self.lm(), &embeds, &opts, on_token)?;
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

    /// Teacher-force `reply` after the user turn: its ids and last-layer hidden states (n, h).
    pub fn force_reply(&mut self, vision: &Vision, user: &str, reply: &str) -> Result<(Vec<u32>, Tensor)> {
        if let Chat::InternVl(c) = self {
            return c.force_reply(vision, user, reply);
        }
        let (_, embeds) = self.embed_prompt(vision, user)?;
        let enc = self
            .tokenizer()
            .encode(reply, false)
            .map_err(|e| Error::at("tokenizer", e.to_string()))?;
        let ids = enc.get_ids().to_vec();
        if ids.is_empty() {
            return Err(Error::Usage("the forced reply is empty".into()));
        }
        let h = teacher_force(self.lm(), &embeds, &ids)?;
        Ok((ids, h))
    }

    /// [`Self::force_reply`] for several (features, user turn) pairs: one padded prefill for
    /// InternVL, one prefill per turn for the Qwen-VL families; the reply's ids and each turn's hidden states.
    pub fn force_reply_batch(&mut self, turns: &[(&Vision, &str)], reply: &str) -> Result<(Vec<u32>, Vec<Tensor>)> {
        if let Chat::InternVl(c) = self {
            return c.force_reply_batch(turns, reply);
        }
        let (mut ids, mut hs) = (Vec::new(), Vec::with_capacity(turns.len()));
        for (v, user) in turns {
            let (i, h) = self.force_reply(v, user, reply)?;
            ids = i;
            hs.push(h);
        }
        Ok((ids, hs))
    }

    /// The decoder that batched greedy/sampled decoding drives: InternVL's f32 decoder (not a
    /// quantized one); `None` for the other families, which decode one reply at a time.
    pub fn batch_decoder(&mut self) -> Option<&mut crate::models::internvl::InternVl> {
        match self {
            Chat::InternVl(c) if !c.model.llm.decode_quantized() => Some(&mut c.model),
            _ => None,
        }
    }

    /// The vision features of several photos, through one InternViT forward for InternVL.
    pub fn vision_batch(&self, imgs: &[&image::RgbImage], max_tiles: usize) -> Result<Vec<Vision>> {
        match self {
            Chat::InternVl(c) => c.vision_batch(imgs, max_tiles),
            Chat::Qwen3Vl(c) | Chat::Qwen25Vl(c) => imgs.iter().map(|i| c.vision(i)).collect(),
        }
    }

    /// Sa2VA's `[SEG]` projection of last-layer hidden states, when the checkpoint has it.
    pub fn seg_projection(&self, hidden: &Tensor) -> Result<Option<Tensor>> {
        Ok(match self {
            Chat::InternVl(c) => c.model.seg_projection(hidden)?,
            Chat::Qwen3Vl(c) | Chat::Qwen25Vl(c) => c.model.seg_projection(hidden)?,
        })
    }

    /// The width `text_hidden_fcs` projects to (None without it).
    pub fn seg_width(&self) -> Option<usize> {
        let fcs = match self {
            Chat::InternVl(c) => c.model.text_hidden_fcs.as_ref(),
            Chat::Qwen3Vl(c) | Chat::Qwen25Vl(c) => c.model.text_hidden_fcs.as_ref(),
        };
        fcs.map(|(_, b)| b.weight().dim(0).unwrap_or(0))
    }

    /// Decode through quantized copies of the LLM's linear layers.
    pub fn quantize_for_decode(&mut self, q: crate::models::internvl::DecodeQuant) -> Result<()> {
        let dtype = match q {
            crate::models::internvl::DecodeQuant::Q8_0 => candle_core::quantized::GgmlDType::Q8_0,
        };
        match self {
            Chat::InternVl(c) => c.model.llm.quantize_for_decode(q)?,
            Chat::Qwen3Vl(c) | Chat::Qwen25Vl(c) => c.model.text.quantize_for_decode(dtype)?,
        }
        Ok(())
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
