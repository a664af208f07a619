//! Qwen2 / Qwen2.5 decoder (Sa2VA-1B/4B, InternVL2.5-1B/4B), forked from candle-transformers'
//! qwen2.rs for what a VLM needs: an embedding-level entry point (`forward_embeds`) so image
//! features can replace `<IMG_CONTEXT>` rows, a preallocated KV cache, RoPE tables in f32, and
//! the last-layer hidden states (for `[SEG]` and depth tokens).

use super::nn::{CausalAttention, Decoder, DecoderLayer, Linear, RmsNorm, Rope, RopeScaling};
use candle_core::{Module, Result, Tensor};
use candle_nn::{Activation, VarBuilder};
use std::sync::Arc;

fn default_act() -> Activation {
    Activation::Silu
}

/// The `llm_config` of a Qwen2 InternVL/Sa2VA checkpoint (transformers' Qwen2Config fields).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    #[serde(default = "crate::models::nn::default_max_positions")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default = "crate::models::nn::default_rope_theta")]
    pub rope_theta: f64,
    #[serde(default = "crate::models::nn::default_rms_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_act")]
    pub hidden_act: Activation,
    /// `null`, linear or dynamic (NTK) scaling as transformers' Qwen2 rotary embedding; other
    /// types are refused by name rather than ignored.
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    /// Sliding-window attention (transformers' Qwen2 windows the layers from `max_window_layers`
    /// on only when this is set; Qwen2/2.5 ship it false). Not implemented, so refused when true.
    #[serde(default)]
    pub use_sliding_window: bool,
}

#[derive(Debug, Clone)]
struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
    act: Activation,
}

impl Mlp {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            gate_proj: Linear::new(h, i, false, vb.pp("gate_proj"))?,
            up_proj: Linear::new(h, i, false, vb.pp("up_proj"))?,
            down_proj: Linear::new(i, h, false, vb.pp("down_proj"))?,
            act: cfg.hidden_act,
        })
    }
}

impl Module for Mlp {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (gate, up) = (xs.apply(&self.gate_proj)?, xs.apply(&self.up_proj)?);
        self.down_proj.forward(&super::nn::gated(&gate, &up, self.act)?)
    }
}

#[derive(Debug, Clone)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    core: CausalAttention,
    n_heads: usize,
    n_kv: usize,
    head_dim: usize,
    span: tracing::Span,
}

impl Attention {
    fn new(rope: Arc<Rope>, cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        let head_dim = h / cfg.num_attention_heads;
        let (nh, nkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        Ok(Self {
            q_proj: Linear::new(h, nh * head_dim, true, vb.pp("q_proj"))?,
            k_proj: Linear::new(h, nkv * head_dim, true, vb.pp("k_proj"))?,
            v_proj: Linear::new(h, nkv * head_dim, true, vb.pp("v_proj"))?,
            o_proj: Linear::new(nh * head_dim, h, false, vb.pp("o_proj"))?,
            core: CausalAttention::new(rope, nh, nkv, head_dim),
            n_heads: nh,
            n_kv: nkv,
            head_dim,
            span: tracing::span!(tracing::Level::TRACE, "qwen2-attn"),
        })
    }

    /// Attention for the last `keep` rows of `xs` (all of them when `keep` is s); keys and values
    /// of every row are cached.
    fn forward(&mut self, xs: &Tensor, offset: usize, keep: usize) -> Result<Tensor> {
        let _g = self.span.enter();
        let (b, s, _) = xs.dims3()?;
        let tail = if keep < s {
            xs.narrow(1, s - keep, keep)?
        } else {
            xs.clone()
        };
        let q = self
            .q_proj
            .forward(&tail)?
            .reshape((b, keep, self.n_heads, self.head_dim))?;
        let k = self.k_proj.forward(xs)?.reshape((b, s, self.n_kv, self.head_dim))?;
        let v = self.v_proj.forward(xs)?.reshape((b, s, self.n_kv, self.head_dim))?;
        self.core.forward_tail(&q, &k, &v, offset)?.apply(&self.o_proj)
    }
}

#[derive(Debug, Clone)]
pub struct Layer {
    self_attn: Attention,
    mlp: Mlp,
    input_layernorm: RmsNorm,
    post_attention_layernorm: RmsNorm,
}

impl Layer {
    fn new(rope: Arc<Rope>, cfg: &Config, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            self_attn: Attention::new(rope, cfg, vb.pp("self_attn"))?,
            mlp: Mlp::new(cfg, vb.pp("mlp"))?,
            input_layernorm: RmsNorm::new(cfg.hidden_size, cfg.rms_norm_eps, vb.pp("input_layernorm"))?,
            post_attention_layernorm: RmsNorm::new(
                cfg.hidden_size,
                cfg.rms_norm_eps,
                vb.pp("post_attention_layernorm"),
            )?,
        })
    }
}

impl DecoderLayer for Layer {
    fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let (a, m) = (&mut self.self_attn, &mut self.mlp);
        vec![
            &mut a.q_proj,
            &mut a.k_proj,
            &mut a.v_proj,
            &mut a.o_proj,
            &mut m.gate_proj,
            &mut m.up_proj,
            &mut m.down_proj,
        ]
    }

    fn forward(&mut self, xs: &Tensor, offset: usize) -> Result<Tensor> {
        self.forward_tail(xs, offset, xs.dim(1)?)
    }

    fn forward_tail(&mut self, xs: &Tensor, offset: usize, keep: usize) -> Result<Tensor> {
        let s = xs.dim(1)?;
        let keep = keep.min(s);
        let h = self
            .self_attn
            .forward(&self.input_layernorm.forward(xs)?, offset, keep)?;
        let xs = if keep < s {
            xs.narrow(1, s - keep, keep)?
        } else {
            xs.clone()
        };
        let xs = (xs + h)?;
        let h = self.mlp.forward(&self.post_attention_layernorm.forward(&xs)?)?;
        xs + h
    }

    fn attention_mut(&mut self) -> &mut CausalAttention {
        &mut self.self_attn.core
    }

    fn reset_cache(&mut self) {
        self.self_attn.core.reset();
    }
}

/// Qwen2ForCausalLM under a prefix such as `language_model` (keys `model.*` and `lm_head`).
pub type Model = Decoder<Layer>;

impl Decoder<Layer> {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        if cfg.use_sliding_window {
            candle_core::bail!(
                "llm_config.use_sliding_window is true: sliding-window attention is not implemented (Qwen2/2.5 checkpoints set it false)"
            );
        }
        let m = vb.pp("model");
        let embed_tokens = candle_nn::embedding(cfg.vocab_size, cfg.hidden_size, m.pp("embed_tokens"))?;
        let head_dim = cfg.hidden_size / cfg.num_attention_heads;
        let scaling = RopeScaling::from_config(cfg.rope_scaling.as_ref()).map_err(candle_core::Error::msg)?;
        let rope = Arc::new(Rope::with_scaling(
            head_dim,
            cfg.max_position_embeddings,
            cfg.rope_theta,
            scaling,
            vb.dtype(),
            vb.device(),
        )?);
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Layer::new(rope.clone(), cfg, m.pp("layers").pp(i)))
            .collect::<Result<_>>()?;
        let norm = RmsNorm::new(cfg.hidden_size, cfg.rms_norm_eps, m.pp("norm"))?;
        // Tied embeddings (Qwen2.5-0.5B) store no lm_head; use it when present either way.
        let lm_head = if vb.contains_tensor("lm_head.weight") || !cfg.tie_word_embeddings {
            Linear::new(cfg.hidden_size, cfg.vocab_size, false, vb.pp("lm_head"))?
        } else {
            Linear::from_weights(embed_tokens.embeddings().clone(), None)
        };
        Ok(Decoder {
            embed_tokens,
            layers,
            norm,
            lm_head,
            span: tracing::span!(tracing::Level::TRACE, "qwen2"),
        })
    }
}

#[cfg(test)]
mod rope_config_tests {
    use super::*;

    fn cfg(rope_scaling: serde_json::Value) -> Config {
        serde_json::from_value(serde_json::json!({
            "vocab_size": 16, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
            "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 8,
            "rope_scaling": rope_scaling,
        }))
        .unwrap()
    }

    #[test]
    fn rope_scaling_is_honoured_or_refused_by_name() {
        let vb = VarBuilder::zeros(candle_core::DType::F32, &candle_core::Device::Cpu);
        for ok in [
            serde_json::Value::Null,
            serde_json::json!({"type": "dynamic", "factor": 2.0}),
            serde_json::json!({"rope_type": "linear", "factor": 4.0}),
        ] {
            let mut m = Model::new(&cfg(ok.clone()), vb.clone()).unwrap_or_else(|e| panic!("{ok}: {e}"));
            // Past max_position_embeddings (8) the chunk's RoPE is computed, not an error.
            let x = Tensor::zeros((1, 12, 8), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
            assert_eq!(m.forward_embeds(&x, 0).unwrap().dims(), &[1, 12, 8]);
        }
        let e = Model::new(&cfg(serde_json::json!({"type": "yarn", "factor": 4.0})), vb)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("yarn") && e.contains("rope_scaling"), "{e}");
    }
}

#[cfg(test)]
mod sliding_window_tests {
    use super::*;

    #[test]
    fn sliding_window_is_ignored_when_off_and_refused_when_on() {
        let vb = VarBuilder::zeros(candle_core::DType::F32, &candle_core::Device::Cpu);
        let mut c: Config = serde_json::from_value(serde_json::json!({
            "vocab_size": 16, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
            "num_attention_heads": 2, "num_key_value_heads": 1,
            "use_sliding_window": false, "sliding_window": 2, "max_window_layers": 0,
        }))
        .unwrap();
        assert!(Model::new(&c, vb.clone()).is_ok());
        c.use_sliding_window = true;
        let e = Model::new(&c, vb).err().unwrap().to_string();
        assert!(e.contains("use_sliding_window"), "{e}");
    }
}

#[cfg(test)]
mod tail_tests {
    use super::*;

    #[test]
    fn last_layer_tail_gives_the_full_forwards_rows_and_cache() {
        let dev = candle_core::Device::Cpu;
        let vm = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, candle_core::DType::F32, &dev);
        // Past max_position_embeddings (8) with dynamic scaling: the table is recomputed.
        let cfg: Config = serde_json::from_value(serde_json::json!({
            "vocab_size": 16, "hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 8,
            "rope_scaling": {"type": "dynamic", "factor": 2.0},
        }))
        .unwrap();
        let mut m = Model::new(&cfg, vb).unwrap();
        for v in vm.all_vars() {
            v.set(&Tensor::randn(0f32, 0.5, v.shape(), &dev).unwrap()).unwrap();
        }
        crate::models::nn::tail_check::tail_matches_full(&mut m, 16, 11);
    }
}
