//! Qwen3-VL's language model (transformers 4.57 `Qwen3VLTextModel` + `lm_head`): a Qwen3 decoder
//! (q/k RMSNorm per head, no biases) whose rotary angles come from 3-D (t, h, w) positions with the
//! frequencies interleaved T,H,W,T,H,W,… (`apply_interleaved_mrope`), and whose first layers get the
//! DeepStack visual features added at the image-token positions of the prefill.
//! The same type runs Qwen2.5-VL's decoder ([`Flavor::Qwen25`]): a Qwen2 decoder (q/k/v biases, no
//! q/k norms) with the MRoPE frequencies in contiguous T | H | W sections.
//! candle-transformers' `qwen3_vl` text model rotates every token by its 1-D index (no MRoPE), so
//! image tokens would be placed differently from the reference; this is a separate port.

use super::config::TextConfig;
use crate::models::nn::{Linear, RmsNorm};
use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;
use std::sync::Mutex;

/// Positions and DeepStack features of the prompt that the next prefill runs on.
#[derive(Debug, Clone, Default)]
pub struct PromptState {
    /// (t, h, w) position of each prompt token (`get_rope_index`).
    pub positions: Vec<[i64; 3]>,
    /// Later tokens i sit at i + delta on all three axes (`rope_deltas`).
    pub delta: i64,
    /// Prompt indices of the image tokens and, per DeepStack layer, their features (n, h).
    pub visual: Option<(Vec<u32>, Vec<Tensor>)>,
}

/// Which decoder: Qwen3-VL's or Qwen2.5-VL's (the differences are listed in the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Qwen3,
    Qwen25,
}

#[derive(Debug, Clone)]
struct Layer {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    gate: Linear,
    up: Linear,
    down: Linear,
    ln1: RmsNorm,
    ln2: RmsNorm,
    cache: candle_nn::kv_cache::KvCache,
    act: candle_nn::Activation,
    heads: usize,
    kv: usize,
    hd: usize,
    span: tracing::Span,
}

impl Layer {
    fn new(c: &TextConfig, flavor: Flavor, vb: VarBuilder) -> Result<Self> {
        let (h, hd, nh, nkv) = (c.hidden_size, c.head_dim, c.num_attention_heads, c.num_key_value_heads);
        let a = vb.pp("self_attn");
        let m = vb.pp("mlp");
        // Qwen3: attention_bias on all four projections; Qwen2.5: q/k/v biased, o not.
        let (b, bo) = match flavor {
            Flavor::Qwen3 => (c.attention_bias, c.attention_bias),
            Flavor::Qwen25 => (true, false),
        };
        let norm = |name: &str| -> Result<Option<RmsNorm>> {
            match flavor {
                Flavor::Qwen3 => Ok(Some(RmsNorm::new(hd, c.rms_norm_eps, a.pp(name))?)),
                Flavor::Qwen25 => Ok(None),
            }
        };
        Ok(Self {
            q_proj: Linear::new(h, nh * hd, b, a.pp("q_proj"))?,
            k_proj: Linear::new(h, nkv * hd, b, a.pp("k_proj"))?,
            v_proj: Linear::new(h, nkv * hd, b, a.pp("v_proj"))?,
            o_proj: Linear::new(nh * hd, h, bo, a.pp("o_proj"))?,
            q_norm: norm("q_norm")?,
            k_norm: norm("k_norm")?,
            gate: Linear::new(h, c.intermediate_size, false, m.pp("gate_proj"))?,
            up: Linear::new(h, c.intermediate_size, false, m.pp("up_proj"))?,
            down: Linear::new(c.intermediate_size, h, false, m.pp("down_proj"))?,
            ln1: RmsNorm::new(h, c.rms_norm_eps, vb.pp("input_layernorm"))?,
            ln2: RmsNorm::new(h, c.rms_norm_eps, vb.pp("post_attention_layernorm"))?,
            cache: candle_nn::kv_cache::KvCache::new(2, 512),
            act: c.hidden_act,
            heads: nh,
            kv: nkv,
            hd,
            span: tracing::span!(tracing::Level::TRACE, "qwen3vl-layer"),
        })
    }

    fn forward(&mut self, x: &Tensor, cos: &Tensor, sin: &Tensor, offset: usize) -> Result<Tensor> {
        let _g = self.span.enter();
        let (b, s, _) = x.dims3()?;
        let h = self.ln1.forward(x)?;
        let opt_norm = |n: &Option<RmsNorm>, t: Tensor| match n {
            Some(n) => n.forward(&t),
            None => Ok(t),
        };
        let q = opt_norm(
            &self.q_norm,
            self.q_proj.forward(&h)?.reshape((b, s, self.heads, self.hd))?,
        )?;
        let k = opt_norm(
            &self.k_norm,
            self.k_proj.forward(&h)?.reshape((b, s, self.kv, self.hd))?,
        )?;
        let v = self.v_proj.forward(&h)?.reshape((b, s, self.kv, self.hd))?;
        let rope = |t: Tensor| -> Result<Tensor> {
            let dt = t.dtype();
            let t = t.transpose(1, 2)?.to_dtype(DType::F32)?.contiguous()?;
            candle_nn::rotary_emb::rope(&t, cos, sin)?.to_dtype(dt)
        };
        let (q, k) = (rope(q)?, rope(k)?);
        let v = v.transpose(1, 2)?.contiguous()?;
        let (k, v) = self.cache.append(&k.contiguous()?, &v)?;
        let t = |x: &Tensor| x.transpose(1, 2);
        let scale = 1.0 / (self.hd as f64).sqrt();
        let a = crate::models::attention::attention(&t(&q)?, &t(&k)?, &t(&v)?, scale, Some(offset))?.reshape((
            b,
            s,
            self.heads * self.hd,
        ))?;
        let x = (x + self.o_proj.forward(&a)?)?;
        let h = self.ln2.forward(&x)?;
        let m = crate::models::nn::gated(&self.gate.forward(&h)?, &self.up.forward(&h)?, self.act);
        x + self.down.forward(&m?)?
    }
}

#[derive(Debug)]
pub struct TextModel {
    embed_tokens: candle_nn::Embedding,
    layers: Vec<Layer>,
    norm: RmsNorm,
    pub lm_head: Linear,
    inv_freq: Vec<f32>,
    section: [usize; 3],
    flavor: Flavor,
    /// Set by [`TextModel::set_prompt`] before a prefill (behind a lock so `embed_prompt` can stay `&self`).
    prompt: Mutex<PromptState>,
    span: tracing::Span,
}

impl Clone for TextModel {
    fn clone(&self) -> Self {
        Self {
            embed_tokens: self.embed_tokens.clone(),
            layers: self.layers.clone(),
            norm: self.norm.clone(),
            lm_head: self.lm_head.clone(),
            inv_freq: self.inv_freq.clone(),
            section: self.section,
            flavor: self.flavor,
            prompt: Mutex::new(self.prompt.lock().map(|p| p.clone()).unwrap_or_default()),
            span: self.span.clone(),
        }
    }
}

impl TextModel {
    /// `vb` at the checkpoint's `model.language_model`; `lm_head` at its own prefix.
    pub fn new(c: &TextConfig, vb: VarBuilder, lm_head: VarBuilder) -> Result<Self> {
        Self::new_flavor(c, Flavor::Qwen3, vb, lm_head)
    }

    /// [`TextModel::new`] for either decoder.
    pub fn new_flavor(c: &TextConfig, flavor: Flavor, vb: VarBuilder, lm_head: VarBuilder) -> Result<Self> {
        let section = c.mrope_section().map_err(candle_core::Error::msg)?;
        let d = c.head_dim;
        // transformers' default rope init: 1 / base^(2i/d) in f32.
        let inv_freq = (0..d)
            .step_by(2)
            .map(|i| 1.0 / (c.rope_theta as f32).powf(i as f32 / d as f32))
            .collect();
        let embed_tokens = candle_nn::embedding(c.vocab_size, c.hidden_size, vb.pp("embed_tokens"))?;
        let lm_head = if lm_head.contains_tensor("weight") || !c.tie_word_embeddings {
            Linear::new(c.hidden_size, c.vocab_size, false, lm_head)?
        } else {
            Linear::from_weights(embed_tokens.embeddings().clone(), None)
        };
        Ok(Self {
            embed_tokens,
            layers: (0..c.num_hidden_layers)
                .map(|i| Layer::new(c, flavor, vb.pp("layers").pp(i)))
                .collect::<Result<_>>()?,
            norm: RmsNorm::new(c.hidden_size, c.rms_norm_eps, vb.pp("norm"))?,
            lm_head,
            inv_freq,
            section,
            flavor,
            prompt: Mutex::new(PromptState::default()),
            span: tracing::span!(tracing::Level::TRACE, "qwen3vl-text"),
        })
    }

    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        self.embed_tokens.forward(ids)
    }

    /// Positions (and DeepStack features) for the next prefill.
    pub fn set_prompt(&self, p: PromptState) {
        if let Ok(mut g) = self.prompt.lock() {
            *g = p;
        }
    }

    /// (cos, sin) (s, head_dim/2) in f32 for positions offset..offset+s. Qwen3: the H and W axes
    /// take the frequencies 1, 4, 7, … and 2, 5, 8, … below 3·section, T the rest; Qwen2.5: the
    /// first section[0] frequencies follow T, the next section[1] H, the rest W.
    fn cos_sin(&self, offset: usize, s: usize, dev: &candle_core::Device) -> Result<(Tensor, Tensor)> {
        let p = self
            .prompt
            .lock()
            .map_err(|_| candle_core::Error::msg("prompt state poisoned"))?;
        let half = self.inv_freq.len();
        let mut f = Vec::with_capacity(s * half);
        for i in offset..offset + s {
            let pos = p.positions.get(i).copied().unwrap_or([i as i64 + p.delta; 3]);
            for (j, w) in self.inv_freq.iter().enumerate() {
                let axis = if self.flavor == Flavor::Qwen25 {
                    if j < self.section[0] {
                        0
                    } else if j < self.section[0] + self.section[1] {
                        1
                    } else {
                        2
                    }
                } else if j % 3 == 1 && j < 3 * self.section[1] {
                    1
                } else if j % 3 == 2 && j < 3 * self.section[2] {
                    2
                } else {
                    0
                };
                f.push(pos[axis] as f32 * w);
            }
        }
        let t = Tensor::from_vec(f, (s, half), dev)?;
        Ok((t.cos()?, t.sin()?))
    }

    /// Run the decoder on embeddings (1, s, h) at positions offset..; a prefill (offset 0) adds the
    /// DeepStack features after the first layers. Returns the last layer's output BEFORE the final
    /// norm for Qwen3-VL and AFTER it for Qwen2.5-VL: that is what transformers 4.57 (Sa2VA's pin)
    /// reports as `hidden_states[-1]` for each, so what Sa2VA feeds `[SEG]` from;
    /// [`TextModel::logits`] applies the norm where it is still due (5.x reports the normed state
    /// for Qwen3-VL too).
    pub fn forward_embeds(&mut self, xs: &Tensor, offset: usize) -> Result<Tensor> {
        let _g = self.span.enter();
        let (_, s, _) = xs.dims3()?;
        let (cos, sin) = self.cos_sin(offset, s, xs.device())?;
        let visual = if offset == 0 {
            self.prompt.lock().ok().and_then(|p| p.visual.clone())
        } else {
            None
        };
        let mut x = xs.clone();
        for (i, l) in self.layers.iter_mut().enumerate() {
            x = l.forward(&x, &cos, &sin, offset)?;
            if let Some((pos, feats)) = &visual {
                if let Some(f) = feats.get(i) {
                    if pos.iter().any(|&p| p as usize >= s) {
                        candle_core::bail!("DeepStack positions run past the prefill of {s} tokens");
                    }
                    let idx = Tensor::new(pos.as_slice(), x.device())?;
                    x = x.index_add(&idx, &f.to_dtype(x.dtype())?.unsqueeze(0)?, 1)?;
                }
            }
        }
        match self.flavor {
            Flavor::Qwen3 => Ok(x),
            Flavor::Qwen25 => self.norm.forward(&x),
        }
    }

    /// Logits of [`TextModel::forward_embeds`]'s states (the final RMSNorm where not yet applied,
    /// then `lm_head`), in f32.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let h = match self.flavor {
            Flavor::Qwen3 => self.norm.forward(hidden)?,
            Flavor::Qwen25 => hidden.clone(),
        };
        self.lm_head.forward(&h)?.to_dtype(DType::F32)
    }

    pub fn clear_kv_cache(&mut self) {
        self.layers.iter_mut().for_each(|l| l.cache.reset());
    }

    /// Decode steps through `dtype` copies of the linear layers (see `Linear::quantize_for_decode`).
    pub fn quantize_for_decode(&mut self, dtype: candle_core::quantized::GgmlDType) -> Result<()> {
        for l in &mut self.layers {
            for lin in [
                &mut l.q_proj,
                &mut l.k_proj,
                &mut l.v_proj,
                &mut l.o_proj,
                &mut l.gate,
                &mut l.up,
                &mut l.down,
            ] {
                lin.quantize_for_decode(dtype)?;
            }
        }
        self.lm_head.quantize_for_decode(dtype)
    }
}

impl crate::models::generate::CausalLm for TextModel {
    fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        TextModel::embed(self, ids)
    }
    fn forward_embeds(&mut self, xs: &Tensor, offset: usize) -> Result<Tensor> {
        TextModel::forward_embeds(self, xs, offset)
    }
    fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        TextModel::logits(self, hidden)
    }
    fn clear_kv_cache(&mut self) {
        TextModel::clear_kv_cache(self)
    }
}
