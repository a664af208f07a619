//! Qwen3-VL's language model (transformers 4.57 `Qwen3VLTextModel` + `lm_head`): a Qwen3 decoder
//! (q/k RMSNorm per head, no biases) whose rotary angles come from 3-D (t, h, w) positions with the
//! frequencies interleaved T,H,W,T,H,W,… (`apply_interleaved_mrope`), and whose first layers get the
//! DeepStack visual features added at the image-token positions of the prefill.
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

#[derive(Debug, Clone)]
struct Layer {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    q_norm: RmsNorm,
    k_norm: RmsNorm,
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
    fn new(c: &TextConfig, vb: VarBuilder) -> Result<Self> {
        let (h, hd, nh, nkv) = (c.hidden_size, c.head_dim, c.num_attention_heads, c.num_key_value_heads);
        let a = vb.pp("self_attn");
        let m = vb.pp("mlp");
        let b = c.attention_bias;
        Ok(Self {
            q_proj: Linear::new(h, nh * hd, b, a.pp("q_proj"))?,
            k_proj: Linear::new(h, nkv * hd, b, a.pp("k_proj"))?,
            v_proj: Linear::new(h, nkv * hd, b, a.pp("v_proj"))?,
            o_proj: Linear::new(nh * hd, h, b, a.pp("o_proj"))?,
            q_norm: RmsNorm::new(hd, c.rms_norm_eps, a.pp("q_norm"))?,
            k_norm: RmsNorm::new(hd, c.rms_norm_eps, a.pp("k_norm"))?,
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
        let q = self
            .q_norm
            .forward(&self.q_proj.forward(&h)?.reshape((b, s, self.heads, self.hd))?)?;
        let k = self
            .k_norm
            .forward(&self.k_proj.forward(&h)?.reshape((b, s, self.kv, self.hd))?)?;
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
        let m = crate::models::nn::activation(&self.gate.forward(&h)?, self.act)? * self.up.forward(&h)?;
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
            prompt: Mutex::new(self.prompt.lock().map(|p| p.clone()).unwrap_or_default()),
            span: self.span.clone(),
        }
    }
}

impl TextModel {
    /// `vb` at the checkpoint's `model.language_model`; `lm_head` at its own prefix.
    pub fn new(c: &TextConfig, vb: VarBuilder, lm_head: VarBuilder) -> Result<Self> {
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
                .map(|i| Layer::new(c, vb.pp("layers").pp(i)))
                .collect::<Result<_>>()?,
            norm: RmsNorm::new(c.hidden_size, c.rms_norm_eps, vb.pp("norm"))?,
            lm_head,
            inv_freq,
            section,
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

    /// (cos, sin) (s, head_dim/2) in f32 for positions offset..offset+s: the H and W axes take the
    /// frequencies 1, 4, 7, … and 2, 5, 8, … below 3·section, T the rest.
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
                let axis = if j % 3 == 1 && j < 3 * self.section[1] {
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
    /// norm: that is what transformers 4.57 (Sa2VA's pin) reports as `hidden_states[-1]` for
    /// Qwen3-VL, so what Sa2VA feeds `[SEG]` from; [`TextModel::logits`] applies the norm (5.x
    /// reports the normed state instead).
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
        Ok(x)
    }

    /// Logits of pre-norm hidden states (final RMSNorm, then `lm_head`), in f32.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.lm_head.forward(&self.norm.forward(hidden)?)?.to_dtype(DType::F32)
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
