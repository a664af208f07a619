//! InternLM2 / InternLM2.5 decoder (Sa2VA-8B, InternVL2.5-2B/8B) with InternLM2's own key
//! names: `model.tok_embeddings`, `model.layers.N.{attention.{wqkv, wo}, feed_forward.{w1, w2, w3},
//! attention_norm, ffn_norm}`, `model.norm`, `output`. `wqkv` is grouped per KV head:
//! rows are [q_0 … q_{g-1}, k, v] × head_dim for each of the KV heads (g = heads / kv_heads).

use super::nn::{CausalAttention, Decoder, DecoderLayer, Linear, RmsNorm, Rope, RopeScaling};
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use std::sync::Arc;

/// `llm_config` of an InternLM2 checkpoint (InternLM2Config fields).
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
    #[serde(default = "crate::models::nn::default_rope_theta")]
    pub rope_theta: f64,
    #[serde(default = "crate::models::nn::default_rms_eps")]
    pub rms_norm_eps: f64,
    /// Bias on wqkv / wo (false in released checkpoints).
    #[serde(default)]
    pub bias: bool,
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
}

#[derive(Debug, Clone)]
pub struct Layer {
    wqkv: Linear,
    wo: Linear,
    core: CausalAttention,
    w1: Linear,
    w2: Linear,
    w3: Linear,
    attention_norm: RmsNorm,
    ffn_norm: RmsNorm,
    n_kv: usize,
    groups: usize,
    head_dim: usize,
    span: tracing::Span,
}

impl Layer {
    fn new(rope: Arc<Rope>, cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        let (nh, nkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        let head_dim = h / nh;
        let groups = nh / nkv;
        let a = vb.pp("attention");
        let f = vb.pp("feed_forward");
        Ok(Self {
            wqkv: Linear::new(h, (nh + 2 * nkv) * head_dim, cfg.bias, a.pp("wqkv"))?,
            wo: Linear::new(nh * head_dim, h, cfg.bias, a.pp("wo"))?,
            core: CausalAttention::new(rope, nh, nkv, head_dim),
            w1: Linear::new(h, cfg.intermediate_size, false, f.pp("w1"))?,
            w2: Linear::new(cfg.intermediate_size, h, false, f.pp("w2"))?,
            w3: Linear::new(h, cfg.intermediate_size, false, f.pp("w3"))?,
            attention_norm: RmsNorm::new(h, cfg.rms_norm_eps, vb.pp("attention_norm"))?,
            ffn_norm: RmsNorm::new(h, cfg.rms_norm_eps, vb.pp("ffn_norm"))?,
            n_kv: nkv,
            groups,
            head_dim,
            span: tracing::span!(tracing::Level::TRACE, "internlm2-layer"),
        })
    }
}

impl DecoderLayer for Layer {
    fn linears_mut(&mut self) -> Vec<&mut Linear> {
        vec![&mut self.wqkv, &mut self.wo, &mut self.w1, &mut self.w2, &mut self.w3]
    }

    fn forward(&mut self, xs: &Tensor, offset: usize) -> Result<Tensor> {
        self.forward_tail(xs, offset, xs.dim(1)?)
    }

    /// The fused wqkv runs on every row (all keys and values are cached); wo and the MLP on the
    /// kept rows only.
    fn forward_tail(&mut self, xs: &Tensor, offset: usize, keep: usize) -> Result<Tensor> {
        let _g = self.span.enter();
        let (b, s, _) = xs.dims3()?;
        let keep = keep.min(s);
        let x = self.attention_norm.forward(xs)?;
        // (b, s, kv, groups + 2, d): queries are the first `groups` slots, then k, then v.
        let qkv = self
            .wqkv
            .forward(&x)?
            .reshape((b, s, self.n_kv, self.groups + 2, self.head_dim))?;
        let q = qkv.narrow(1, s - keep, keep)?.narrow(3, 0, self.groups)?.reshape((
            b,
            keep,
            self.n_kv * self.groups,
            self.head_dim,
        ))?;
        let k = qkv.narrow(3, self.groups, 1)?.squeeze(3)?;
        let v = qkv.narrow(3, self.groups + 1, 1)?.squeeze(3)?;
        let a = self.core.forward_tail(&q, &k, &v, offset)?.apply(&self.wo)?;
        let xs = if keep < s {
            xs.narrow(1, s - keep, keep)?
        } else {
            xs.clone()
        };
        let xs = (xs + a)?;
        let x = self.ffn_norm.forward(&xs)?;
        let f = self
            .w2
            .forward(&super::fastops::silu_mul(&self.w1.forward(&x)?, &self.w3.forward(&x)?)?)?;
        xs + f
    }

    fn reset_cache(&mut self) {
        self.core.reset();
    }

    fn attention_mut(&mut self) -> &mut CausalAttention {
        &mut self.core
    }
}

/// InternLM2ForCausalLM under a prefix such as `language_model` (`model.*`, `output`).
pub type Model = Decoder<Layer>;

impl Decoder<Layer> {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let scaling = RopeScaling::from_config(cfg.rope_scaling.as_ref()).map_err(candle_core::Error::msg)?;
        let m = vb.pp("model");
        let head_dim = cfg.hidden_size / cfg.num_attention_heads;
        let rope = Arc::new(Rope::with_scaling(
            head_dim,
            cfg.max_position_embeddings,
            cfg.rope_theta,
            scaling,
            vb.dtype(),
            vb.device(),
        )?);
        Ok(Decoder {
            embed_tokens: candle_nn::embedding(cfg.vocab_size, cfg.hidden_size, m.pp("tok_embeddings"))?,
            layers: (0..cfg.num_hidden_layers)
                .map(|i| Layer::new(rope.clone(), cfg, m.pp("layers").pp(i)))
                .collect::<Result<_>>()?,
            norm: RmsNorm::new(cfg.hidden_size, cfg.rms_norm_eps, m.pp("norm"))?,
            lm_head: Linear::new(cfg.hidden_size, cfg.vocab_size, false, vb.pp("output"))?,
            span: tracing::span!(tracing::Level::TRACE, "internlm2"),
        })
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
        let cfg: Config = serde_json::from_value(serde_json::json!({
            "vocab_size": 16, "hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 32,
        }))
        .unwrap();
        let mut m = Model::new(&cfg, vb).unwrap();
        for v in vm.all_vars() {
            v.set(&Tensor::randn(0f32, 0.5, v.shape(), &dev).unwrap()).unwrap();
        }
        crate::models::nn::tail_check::tail_matches_full(&mut m, 16, 11);
    }
}
