//! Layers with tracing spans (the candle-transformers `with_tracing` pattern) and shared helpers.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::VarBuilder;

/// Serde defaults shared by the decoders' `llm_config` structs (transformers' defaults).
pub fn default_rope_theta() -> f64 {
    10000.0
}
pub fn default_rms_eps() -> f64 {
    1e-6
}
pub fn default_max_positions() -> usize {
    32768
}

/// A linear layer that records a tracing span.
#[derive(Debug, Clone)]
pub struct Linear {
    inner: candle_nn::Linear,
    /// A quantized copy of the weight that one-row inputs (decode steps) use instead, when asked
    /// for with [`Linear::quantize_for_decode`]; every other input keeps the full weight.
    decode: Option<std::sync::Arc<crate::models::q8_0::Q8Weight>>,
    /// Inputs of a few rows in any layout take the streaming GEMV ([`Linear::few_rows`]).
    few_rows: bool,
    span: tracing::Span,
}

impl Linear {
    pub fn new(in_dim: usize, out_dim: usize, bias: bool, vb: VarBuilder) -> Result<Self> {
        let inner = candle_nn::linear_b(in_dim, out_dim, bias, vb)?;
        Ok(Self {
            inner,
            decode: None,
            few_rows: false,
            span: tracing::span!(tracing::Level::TRACE, "linear"),
        })
    }

    pub fn from_weights(w: Tensor, b: Option<Tensor>) -> Self {
        Self {
            inner: candle_nn::Linear::new(w, b),
            decode: None,
            few_rows: false,
            span: tracing::span!(tracing::Level::TRACE, "linear"),
        }
    }

    /// Send f32 CPU inputs of up to [`crate::models::fastops::GEMV_FEW_ROWS`] rows, whatever their
    /// leading dims, through the streaming GEMV instead of a GEMM: for layers that see a handful of
    /// token rows on every call (SAM2's mask decoder), where a GEMM's fixed cost is most of the time.
    pub fn few_rows(mut self) -> Self {
        self.few_rows = true;
        self
    }

    pub fn weight(&self) -> &Tensor {
        self.inner.weight()
    }

    /// Keep a `dtype` (e.g. Q8_0) copy of the weight for one-row inputs: a decode step then reads
    /// ~1/4 of the f32 bytes. Prefill and every other multi-row input keep the full weight, so
    /// what a prompt's hidden states are (the `[SEG]` rows) does not change. CPU only.
    pub fn quantize_for_decode(&mut self, dtype: candle_core::quantized::GgmlDType) -> Result<()> {
        let w = self.inner.weight();
        if !w.device().is_cpu() {
            candle_core::bail!("quantized decoding is a CPU path; on a GPU use --dtype bf16");
        }
        if dtype != candle_core::quantized::GgmlDType::Q8_0 {
            candle_core::bail!("quantized decoding supports Q8_0 only, not {dtype:?}");
        }
        let w = w.to_dtype(DType::F32)?;
        self.decode = Some(std::sync::Arc::new(crate::models::q8_0::Q8Weight::quantize(&w)?));
        Ok(())
    }
}

impl Module for Linear {
    /// Leading dimensions are folded into one matmul: candle_nn's Linear would run one small
    /// GEMM per leading index of a 4-d input (e.g. 8192 GEMMs of 8 rows for Hiera's windows).
    /// An input in another float dtype than the weight (an f32 residual stream of a reduced-
    /// precision model) is cast to the weight's dtype first and the output is in that dtype, as a
    /// linear layer under `torch.autocast` computes.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let _g = self.span.enter();
        let cast;
        let xs = if xs.dtype() != self.inner.weight().dtype() {
            cast = xs.to_dtype(self.inner.weight().dtype())?;
            &cast
        } else {
            xs
        };
        // One row (a decode step) takes candle's x·Wᵀ, whose one-row kernel accumulates in f32;
        // converting the weights would cost more than the product (see `cpu_low_precision`).
        if cpu_low_precision(xs) && xs.elem_count() > *xs.dims().last().unwrap_or(&0) {
            return self.forward_f32_accumulate(xs);
        }
        // One f32 row with a Q8_0 copy (`forward` declines anything else).
        if let Some(q) = &self.decode {
            if let Some(y) = q.forward(xs, self.inner.bias())? {
                return Ok(y);
            }
        }
        // One f32 row on the CPU (a decode step), or a few rows of a `few_rows` layer: the streaming
        // GEMV (faster than candle's GEMM there).
        let few = if self.few_rows {
            crate::models::fastops::gemv_few(xs, self.inner.weight())?
        } else {
            crate::models::fastops::gemv(xs, self.inner.weight())?
        };
        if let Some(y) = few {
            return match self.inner.bias() {
                Some(b) => y.broadcast_add(b),
                None => Ok(y),
            };
        }
        // Several f32 rows with a bias: one GEMM accumulating onto the bias rows.
        if let Some(b) = self.inner.bias() {
            if let Some(y) = crate::models::fastops::linear_bias(xs, self.inner.weight(), b)? {
                return Ok(y);
            }
        }
        let dims = xs.dims();
        if dims.len() > 2 && xs.is_contiguous() {
            let k = dims[dims.len() - 1];
            let rows = xs.elem_count() / k.max(1);
            let y = self.inner.forward(&xs.reshape((rows, k))?)?;
            let mut out = dims.to_vec();
            *out.last_mut().expect("rank > 2") = y.dim(1)?;
            return y.reshape(out);
        }
        self.inner.forward(xs)
    }
}

impl Linear {
    /// `gelu_erf(self.forward(xs))`, an MLP's fc1 and its activation: for many f32 CPU rows with a
    /// bias the GELU runs in place on the linear's output inside the same op (the same values,
    /// one tensor less allocated and written).
    pub fn forward_gelu(&self, xs: &Tensor) -> Result<Tensor> {
        let k = *xs.dims().last().unwrap_or(&0);
        let rows = xs.elem_count() / k.max(1);
        // More rows than a decode step's GEMV takes: `forward` would pick the biased GEMM too.
        if let Some(b) = self
            .inner
            .bias()
            .filter(|_| rows > crate::models::fastops::GEMV_MAX_ROWS)
        {
            let _g = self.span.enter();
            if let Some(y) = crate::models::fastops::linear_bias_gelu(xs, self.inner.weight(), b)? {
                return Ok(y);
            }
        }
        crate::models::fastops::gelu_erf(&self.forward(xs)?)
    }

    /// f16/bf16 on the CPU: x·Wᵀ + b accumulated in f32 and rounded once, as PyTorch's addmm
    /// (see [`cpu_low_precision`]).
    fn forward_f32_accumulate(&self, xs: &Tensor) -> Result<Tensor> {
        let dt = xs.dtype();
        let dims = xs.dims().to_vec();
        let k = *dims.last().unwrap_or(&1);
        let rows = xs.elem_count() / k.max(1);
        let w = self.inner.weight().to_dtype(DType::F32)?;
        let mut y = xs.reshape((rows, k))?.to_dtype(DType::F32)?.matmul(&w.t()?)?;
        if let Some(b) = self.inner.bias() {
            y = y.broadcast_add(&b.to_dtype(DType::F32)?)?;
        }
        let mut out = dims;
        *out.last_mut().unwrap_or(&mut 0) = y.dim(1)?;
        y.to_dtype(dt)?.reshape(out)
    }
}

/// Whether `t` is an f16/bf16 tensor on the CPU. There candle's GEMM (the `gemm` crate) does
/// not accumulate in f32 for f16: a one-row product with a contiguous right-hand side (P·V of a
/// decode step) rounds its running sum to f16 after every term — for K = 4096, 38 of 48 outputs
/// were off the exact product by more than 1 ulp plus f32's own error bound — and a GEMM rounds
/// its partial sums to f16 at every K-block (K ≳ 512; for 64 × 4096 · 4096 × 48, 27 % of the
/// outputs were more than 1 ulp from the f32 product). PyTorch (CPU and CUDA) and cuBLAS
/// accumulate in f32, so perceptio's CPU matmuls in these dtypes go through f32 ([`matmul`],
/// [`Linear`] with more than one row, [`conv2d`], [`attend_values`]) and round once. A one-row
/// x·Wᵀ (the linear layers of a decode step) keeps candle's kernel, which accumulates that case
/// in f32 (measured exact to 1 ulp), because converting the weights costs ~30× the product. CUDA
/// keeps candle's ops (cuBLAS accumulates in f32).
pub fn cpu_low_precision(t: &Tensor) -> bool {
    t.device().is_cpu() && matches!(t.dtype(), DType::F16 | DType::BF16)
}

/// `a @ b`, accumulated in f32 and rounded once for f16/bf16 CPU tensors (see
/// [`cpu_low_precision`]); candle's matmul otherwise.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if cpu_low_precision(a) {
        a.to_dtype(DType::F32)?
            .matmul(&b.to_dtype(DType::F32)?)?
            .to_dtype(a.dtype())
    } else {
        a.matmul(b)
    }
}

/// Attention output P·V from softmax weights `w` (f32 when [`score_dtype`] made the scores):
/// on the CPU in f32 for f16/bf16 `v` (see [`cpu_low_precision`]), elsewhere with `w` rounded
/// to v's dtype, as fused attention kernels feed P to the second GEMM. Returns v's dtype.
pub fn attend_values(w: &Tensor, v: &Tensor) -> Result<Tensor> {
    if cpu_low_precision(v) {
        w.to_dtype(DType::F32)?
            .matmul(&v.to_dtype(DType::F32)?)?
            .to_dtype(v.dtype())
    } else {
        w.to_dtype(v.dtype())?.matmul(v)
    }
}

/// A candle `Conv2d` through [`crate::models::conv`]'s f32 CPU kernel, in f32 with a single
/// rounding for f16/bf16 CPU inputs (see [`cpu_low_precision`]).
pub fn conv2d(conv: &candle_nn::Conv2d, x: &Tensor) -> Result<Tensor> {
    conv2d_act(conv, x, false)
}

/// [`conv2d`] then a ReLU when `relu` (fused into the f32 CPU kernel).
pub fn conv2d_act(conv: &candle_nn::Conv2d, x: &Tensor, relu: bool) -> Result<Tensor> {
    if !cpu_low_precision(x) {
        return crate::models::conv::conv2d_act(conv, x, relu);
    }
    let c = candle_nn::Conv2d::new(
        conv.weight().to_dtype(DType::F32)?,
        conv.bias().map(|b| b.to_dtype(DType::F32)).transpose()?,
        *conv.config(),
    );
    crate::models::conv::conv2d_act(&c, &x.to_dtype(DType::F32)?, relu)?.to_dtype(x.dtype())
}

/// A candle `ConvTranspose2d` through [`crate::models::conv`]'s f32 CPU kernel, in f32 with a
/// single rounding for f16/bf16 CPU inputs.
pub fn conv_transpose2d(conv: &candle_nn::ConvTranspose2d, x: &Tensor) -> Result<Tensor> {
    conv_transpose2d_act(conv, x, false)
}

/// [`conv_transpose2d`] then a ReLU when `relu` (fused into the f32 CPU kernel).
pub fn conv_transpose2d_act(conv: &candle_nn::ConvTranspose2d, x: &Tensor, relu: bool) -> Result<Tensor> {
    if !cpu_low_precision(x) {
        return crate::models::conv::conv_transpose2d_act(conv, x, relu);
    }
    let c = candle_nn::ConvTranspose2d::new(
        conv.weight().to_dtype(DType::F32)?,
        conv.bias().map(|b| b.to_dtype(DType::F32)).transpose()?,
        *conv.config(),
    );
    crate::models::conv::conv_transpose2d_act(&c, &x.to_dtype(DType::F32)?, relu)?.to_dtype(x.dtype())
}

/// RMSNorm computed in f32 whatever the activation dtype (as Qwen2/InternLM2 reference code).
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
    span: tracing::Span,
}

impl RmsNorm {
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get(dim, "weight")?,
            eps,
            span: tracing::span!(tracing::Level::TRACE, "rms-norm"),
        })
    }
}

impl Module for RmsNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let _g = self.span.enter();
        let dtype = xs.dtype();
        let x = xs.to_dtype(DType::F32)?;
        let var = x.sqr()?.mean_keepdim(D::Minus1)?;
        let x = x.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        // weight * x.to(input_dtype), as the reference orders it
        x.to_dtype(dtype)?.broadcast_mul(&self.weight.to_dtype(dtype)?)
    }
}

/// LayerNorm with a span.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    inner: candle_nn::LayerNorm,
    eps: f64,
    span: tracing::Span,
}

impl LayerNorm {
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            inner: candle_nn::layer_norm(dim, eps, vb)?,
            eps,
            span: tracing::span!(tracing::Level::TRACE, "layer-norm"),
        })
    }
}

impl Module for LayerNorm {
    /// Statistics in f32 for every dtype (candle's kernels accumulate in f32). An input in another
    /// float dtype than the weights (an f32 residual stream of a reduced-precision model, as
    /// `torch.autocast` makes it) is normalised in its own dtype with the weights cast to it, so
    /// the output keeps the input's dtype, as autocast's f32 `layer_norm`.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let _g = self.span.enter();
        let w = self.inner.weight();
        if xs.dtype() == w.dtype() {
            return self.inner.forward(xs);
        }
        let bias = self.inner.bias().map(|b| b.to_dtype(xs.dtype())).transpose()?;
        let eps = self.eps;
        let ln = match bias {
            Some(b) => candle_nn::LayerNorm::new(w.to_dtype(xs.dtype())?, b, eps),
            None => candle_nn::LayerNorm::new_no_bias(w.to_dtype(xs.dtype())?, eps),
        };
        ln.forward(xs)
    }
}

/// Attention scores are taken in f32 whatever the activation dtype: PyTorch's fused attention
/// (SDPA on the CPU, flash / memory-efficient kernels on the GPU, which SAM2, Depth Anything's
/// DINOv2 and Sa2VA's GPU runs use) accumulates q·kᵀ and the softmax in f32 and never rounds the
/// scores to f16/bf16. Returns `t` widened to f32 when it is f16/bf16, else `t` itself.
pub fn score_dtype(t: &Tensor) -> Result<Tensor> {
    match t.dtype() {
        DType::F16 | DType::BF16 => t.to_dtype(DType::F32),
        _ => Ok(t.clone()),
    }
}

/// An activation computed in f32 for f16/bf16 inputs and rounded once, as PyTorch's kernels do
/// (candle's f16/bf16 SiLU rounds after every step of `x / (1 + exp(-x))`).
pub fn activation(xs: &Tensor, act: candle_nn::Activation) -> Result<Tensor> {
    match xs.dtype() {
        DType::F16 | DType::BF16 => xs.to_dtype(DType::F32)?.apply(&act)?.to_dtype(xs.dtype()),
        _ => xs.apply(&act),
    }
}

/// act(gate)·up, a gated MLP's hidden state: SiLU goes through [`crate::models::fastops::silu_mul`]
/// (one pass on the CPU), other activations through [`activation`] and a product.
pub fn gated(gate: &Tensor, up: &Tensor, act: candle_nn::Activation) -> Result<Tensor> {
    match act {
        candle_nn::Activation::Silu => crate::models::fastops::silu_mul(gate, up),
        act => activation(gate, act)? * up,
    }
}

/// Repeat KV heads for grouped-query attention: (b, kv, s, d) → (b, kv·n_rep, s, d).
pub fn repeat_kv(xs: Tensor, n_rep: usize) -> Result<Tensor> {
    if n_rep == 1 {
        return Ok(xs);
    }
    let (b, kv, s, d) = xs.dims4()?;
    xs.unsqueeze(2)?
        .expand((b, kv, n_rep, s, d))?
        .reshape((b, kv * n_rep, s, d))
}

/// How RoPE positions are scaled (`rope_scaling` of the LLM config).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by the factor everywhere (`type: linear`).
    Linear(f64),
    /// Dynamic NTK (`type: dynamic`): past `max_position_embeddings` the base grows with the
    /// sequence length L as `θ·(f·L/max − (f − 1))^(d/(d−2))`.
    Dynamic(f64),
}

impl RopeScaling {
    /// Parse a config's `rope_scaling` (`null`, or `{"type"|"rope_type": "linear"|"dynamic", "factor"}`).
    pub fn from_config(v: Option<&serde_json::Value>) -> std::result::Result<Self, String> {
        let Some(v) = v.filter(|v| !v.is_null()) else {
            return Ok(RopeScaling::None);
        };
        let kind = v.get("type").or_else(|| v.get("rope_type")).and_then(|t| t.as_str());
        let factor = v.get("factor").and_then(|f| f.as_f64());
        match (kind, factor) {
            (Some("default"), _) => Ok(RopeScaling::None),
            (Some("linear"), Some(f)) if f > 0.0 => Ok(RopeScaling::Linear(f)),
            (Some("dynamic"), Some(f)) if f > 0.0 => Ok(RopeScaling::Dynamic(f)),
            _ => Err(format!(
                "unsupported rope_scaling {v} (supported: linear or dynamic with a positive factor)"
            )),
        }
    }
}

/// RoPE tables computed in f32 (positions beyond 256 lose precision in bf16), then cast.
/// Positions past the table (or, with dynamic NTK, past `max_position_embeddings`) are computed
/// for the chunk at hand, as the references extend their caches.
#[derive(Debug, Clone)]
pub struct Rope {
    pub sin: Tensor,
    pub cos: Tensor,
    head_dim: usize,
    max_pos: usize,
    theta: f64,
    scaling: RopeScaling,
    dtype: DType,
}

/// `1 / base^(2i/d)` for i < d/2.
fn inv_freq(head_dim: usize, base: f64) -> Vec<f32> {
    (0..head_dim)
        .step_by(2)
        .map(|i| (1.0 / base.powf(i as f64 / head_dim as f64)) as f32)
        .collect()
}

/// (sin, cos) of positions `start..start+n` (divided by `div`) against `inv`, in f32.
fn rope_table(inv: &[f32], start: usize, n: usize, div: f64, dev: &candle_core::Device) -> Result<(Tensor, Tensor)> {
    let inv = Tensor::from_vec(inv.to_vec(), (1, inv.len()), dev)?;
    let mut t = Tensor::arange(start as u32, (start + n) as u32, dev)?
        .to_dtype(DType::F32)?
        .reshape((n, 1))?;
    if div != 1.0 {
        t = (t / div)?;
    }
    let freqs = t.matmul(&inv)?;
    Ok((freqs.sin()?, freqs.cos()?))
}

impl Rope {
    pub fn new(head_dim: usize, max_pos: usize, theta: f64, dtype: DType, dev: &candle_core::Device) -> Result<Self> {
        Self::with_scaling(head_dim, max_pos, theta, RopeScaling::None, dtype, dev)
    }

    pub fn with_scaling(
        head_dim: usize,
        max_pos: usize,
        theta: f64,
        scaling: RopeScaling,
        dtype: DType,
        dev: &candle_core::Device,
    ) -> Result<Self> {
        let div = match scaling {
            RopeScaling::Linear(f) => f,
            _ => 1.0,
        };
        let (sin, cos) = rope_table(&inv_freq(head_dim, theta), 0, max_pos, div, dev)?;
        Ok(Self {
            sin: sin.to_dtype(dtype)?,
            cos: cos.to_dtype(dtype)?,
            head_dim,
            max_pos,
            theta,
            scaling,
            dtype,
        })
    }

    /// (cos, sin) for positions offset..offset+s of a sequence that is then offset+s long.
    fn cos_sin(&self, offset: usize, s: usize) -> Result<(Tensor, Tensor)> {
        let total = offset + s;
        let dynamic = matches!(self.scaling, RopeScaling::Dynamic(_)) && total > self.max_pos;
        if !dynamic && total <= self.max_pos {
            return Ok((self.cos.narrow(0, offset, s)?, self.sin.narrow(0, offset, s)?));
        }
        let (base, div) = match self.scaling {
            // The reference recomputes its cache for the current length L when L passes the
            // cached length, so the new positions rotate with the base of L.
            RopeScaling::Dynamic(f) => {
                let d = self.head_dim as f64;
                (
                    self.theta * ((f * total as f64 / self.max_pos as f64) - (f - 1.0)).powf(d / (d - 2.0)),
                    1.0,
                )
            }
            RopeScaling::Linear(f) => (self.theta, f),
            RopeScaling::None => (self.theta, 1.0),
        };
        let (sin, cos) = rope_table(&inv_freq(self.head_dim, base), offset, s, div, self.cos.device())?;
        Ok((cos.to_dtype(self.dtype)?, sin.to_dtype(self.dtype)?))
    }

    /// [`Self::apply`] for a left-padded batch: row i's token at cache slot `offset + j` is at
    /// position `offset + j − pads[i]` (its first real token at 0, as alone); pad slots get 0.
    pub fn apply_padded(&self, q: &Tensor, k: &Tensor, offset: usize, pads: &[usize]) -> Result<(Tensor, Tensor)> {
        let (b, _, s, _) = k.dims4()?;
        if pads.len() != b {
            candle_core::bail!("RoPE: {} pad counts for a batch of {b}", pads.len());
        }
        let (cos, sin) = self.cos_sin(0, offset + s)?;
        let idx: Vec<u32> = pads
            .iter()
            .flat_map(|&p| (offset..offset + s).map(move |j| j.saturating_sub(p) as u32))
            .collect();
        let idx = Tensor::from_vec(idx, b * s, cos.device())?;
        let half = cos.dim(1)?;
        let pick = |t: &Tensor| t.index_select(&idx, 0)?.reshape((b, s, half));
        let (cos, sin) = (pick(&cos)?, pick(&sin)?);
        let sq = Self::query_rows(q, s)?;
        let tail = |t: &Tensor| t.narrow(1, s - sq, sq)?.contiguous();
        Ok((
            candle_nn::rotary_emb::rope(&crate::models::fastops::contiguous(q)?, &tail(&cos)?, &tail(&sin)?)?,
            candle_nn::rotary_emb::rope(&crate::models::fastops::contiguous(k)?, &cos, &sin)?,
        ))
    }

    /// Rotate-half RoPE on (b, h, s, d) at positions offset..offset+s. `q` may hold only the
    /// last rows of those positions (a last layer that computes only the rows read, see
    /// [`DecoderLayer::forward_tail`]).
    pub fn apply(&self, q: &Tensor, k: &Tensor, offset: usize) -> Result<(Tensor, Tensor)> {
        let (_, _, s, _) = k.dims4()?;
        let (cos, sin) = self.cos_sin(offset, s)?;
        let sq = Self::query_rows(q, s)?;
        Ok((
            candle_nn::rotary_emb::rope(
                &crate::models::fastops::contiguous(q)?,
                &cos.narrow(0, s - sq, sq)?,
                &sin.narrow(0, s - sq, sq)?,
            )?,
            candle_nn::rotary_emb::rope(&crate::models::fastops::contiguous(k)?, &cos, &sin)?,
        ))
    }

    /// The query rows of (b, h, sq, d), which must not outnumber the `s` key positions.
    fn query_rows(q: &Tensor, s: usize) -> Result<usize> {
        let (_, _, sq, _) = q.dims4()?;
        if sq > s {
            candle_core::bail!("RoPE: {sq} query rows for {s} key positions");
        }
        Ok(sq)
    }
}

/// The causal self-attention core shared by the decoders: RoPE, the preallocated KV cache,
/// grouped-query expansion and softmax attention. Inputs are (b, s, heads, head_dim).
#[derive(Debug, Clone)]
pub struct CausalAttention {
    rope: std::sync::Arc<Rope>,
    cache: candle_nn::kv_cache::KvCache,
    n_heads: usize,
    n_kv: usize,
    head_dim: usize,
    /// A left-padded batch: per row, the pad slots before its first real token (see
    /// [`Self::set_left_padding`]).
    left_pad: Option<Vec<usize>>,
}

impl CausalAttention {
    pub fn new(rope: std::sync::Arc<Rope>, n_heads: usize, n_kv: usize, head_dim: usize) -> Self {
        Self {
            rope,
            cache: candle_nn::kv_cache::KvCache::new(2, 512),
            n_heads,
            n_kv,
            head_dim,
            left_pad: None,
        }
    }

    /// Treat the batch as left-padded until the next [`Self::reset`]: row i's first `pads[i]`
    /// cache slots are never attended and its positions count from its first real token, so each
    /// row computes what it computes alone.
    pub fn set_left_padding(&mut self, pads: Option<Vec<usize>>) {
        self.left_pad = pads;
    }

    /// Attend new positions offset..offset+s causally to everything cached; returns
    /// (b, s, heads·head_dim). The fused kernel reads the cache and the grouped heads in place.
    pub fn forward(&mut self, q: &Tensor, k: &Tensor, v: &Tensor, offset: usize) -> Result<Tensor> {
        self.forward_tail(q, k, v, offset)
    }

    /// [`Self::forward`] where `q` (b, sq, heads, head_dim) holds only the last sq of the s new
    /// positions that `k` and `v` hold: every key and value is cached, and only those queries
    /// attend (each to the keys up to its own position); returns (b, sq, heads·head_dim).
    pub fn forward_tail(&mut self, q: &Tensor, k: &Tensor, v: &Tensor, offset: usize) -> Result<Tensor> {
        let (b, sq, _, _) = q.dims4()?;
        let s = k.dim(1)?;
        let q = q.transpose(1, 2)?;
        let k = k.transpose(1, 2)?;
        let v = crate::models::fastops::contiguous(&v.transpose(1, 2)?)?;
        let (q, k) = match &self.left_pad {
            Some(p) => self.rope.apply_padded(&q, &k, offset, p)?,
            None => self.rope.apply(&q, &k, offset)?,
        };
        let (k, v) = self.cache.append(&k.contiguous()?, &v)?; // (b, kv, offset + s, d)
        debug_assert_eq!(self.n_heads % self.n_kv, 0);
        let t = |x: &Tensor| x.transpose(1, 2);
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let starts = self.left_pad.as_deref();
        let first = offset + s - sq;
        crate::models::attention::attention_from(&t(&q)?, &t(&k)?, &t(&v)?, scale, Some(first), starts)?.reshape((
            b,
            sq,
            self.n_heads * self.head_dim,
        ))
    }

    /// Empty the KV cache and forget any left padding.
    pub fn reset(&mut self) {
        self.cache.reset();
        self.left_pad = None;
    }
}

/// One layer of a decoder-only transformer with a KV cache.
pub trait DecoderLayer {
    fn forward(&mut self, xs: &Tensor, offset: usize) -> Result<Tensor>;
    /// [`Self::forward`]'s output for the last `keep` of the s rows only (b, keep, h): every row's
    /// keys and values are still computed and cached, but a layer that overrides this computes
    /// its queries, output projection and MLP for the kept rows alone (the last layer of a
    /// prefill whose other rows nobody reads).
    fn forward_tail(&mut self, xs: &Tensor, offset: usize, keep: usize) -> Result<Tensor> {
        let s = xs.dim(1)?;
        self.forward(xs, offset)?.narrow(1, s - keep.min(s), keep.min(s))
    }
    fn reset_cache(&mut self);
    /// Every linear layer of the block (for [`Decoder::quantize_for_decode`]).
    fn linears_mut(&mut self) -> Vec<&mut Linear>;
    /// The block's self-attention core (for [`Decoder::set_left_padding`]).
    fn attention_mut(&mut self) -> &mut CausalAttention;
}

/// Run a decoder stack on embeddings (b, s, h) at positions offset.. (causal attention), then
/// the final norm (the state transformers reports as `hidden_states[-1]`).
pub fn run_decoder<L: DecoderLayer>(layers: &mut [L], norm: &RmsNorm, xs: &Tensor, offset: usize) -> Result<Tensor> {
    run_decoder_tail(layers, norm, xs, offset, xs.dim(1)?)
}

/// [`run_decoder`]'s states for the last `keep` rows only (b, keep, h): the last layer computes
/// only those rows ([`DecoderLayer::forward_tail`]); every row's keys and values are cached.
pub fn run_decoder_tail<L: DecoderLayer>(
    layers: &mut [L],
    norm: &RmsNorm,
    xs: &Tensor,
    offset: usize,
    keep: usize,
) -> Result<Tensor> {
    let s = xs.dim(1)?;
    if keep == 0 || keep > s {
        candle_core::bail!("decoder: keep {keep} of {s} rows");
    }
    let mut xs = xs.clone();
    let n = layers.len();
    for (i, l) in layers.iter_mut().enumerate() {
        xs = if i + 1 == n && keep < s {
            l.forward_tail(&xs, offset, keep)?
        } else {
            l.forward(&xs, offset)?
        };
    }
    if n == 0 {
        xs = xs.narrow(1, s - keep, keep)?;
    }
    norm.forward(&xs)
}

/// A decoder-only LM: token embedding, a stack of layers, the final norm and the LM head.
#[derive(Debug, Clone)]
pub struct Decoder<L> {
    pub embed_tokens: candle_nn::Embedding,
    pub layers: Vec<L>,
    pub norm: RmsNorm,
    pub lm_head: Linear,
    pub span: tracing::Span,
}

impl<L: DecoderLayer> Decoder<L> {
    /// Token embeddings (b, s) → (b, s, h).
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        self.embed_tokens.forward(ids)
    }

    /// Run the decoder on embeddings at positions offset..; returns the final-normed hidden
    /// states (b, s, h) (what transformers reports as `hidden_states[-1]`).
    pub fn forward_embeds(&mut self, xs: &Tensor, offset: usize) -> Result<Tensor> {
        let _g = self.span.enter();
        run_decoder(&mut self.layers, &self.norm, xs, offset)
    }

    /// [`Self::forward_embeds`]'s states for the last `keep` rows only (b, keep, h), the rest of
    /// the last layer left uncomputed; the KV cache holds every row as after `forward_embeds`.
    pub fn forward_embeds_tail(&mut self, xs: &Tensor, offset: usize, keep: usize) -> Result<Tensor> {
        let _g = self.span.enter();
        run_decoder_tail(&mut self.layers, &self.norm, xs, offset, keep)
    }

    /// Logits for hidden states (…, h) → (…, vocab), in f32.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.lm_head.forward(hidden)?.to_dtype(DType::F32)
    }

    pub fn clear_kv_cache(&mut self) {
        self.layers.iter_mut().for_each(DecoderLayer::reset_cache);
    }

    /// Run the next forwards (until [`Self::clear_kv_cache`]) as a left-padded batch, row i
    /// with `pads[i]` leading pad slots (see [`CausalAttention::set_left_padding`]).
    pub fn set_left_padding(&mut self, pads: &[usize]) {
        for l in &mut self.layers {
            l.attention_mut().set_left_padding(Some(pads.to_vec()));
        }
    }

    /// Whether decode steps go through quantized copies of the weights.
    pub fn decode_quantized(&self) -> bool {
        self.lm_head.decode.is_some()
    }

    /// Decode steps through `dtype` copies of every linear layer and the LM head (see
    /// [`Linear::quantize_for_decode`]); the prefill keeps the checkpoint's weights.
    pub fn quantize_for_decode(&mut self, dtype: candle_core::quantized::GgmlDType) -> Result<()> {
        for l in &mut self.layers {
            for lin in l.linears_mut() {
                lin.quantize_for_decode(dtype)?;
            }
        }
        self.lm_head.quantize_for_decode(dtype)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantized_decode_changes_only_one_row_inputs() {
        let dev = candle_core::Device::Cpu;
        let w = Tensor::randn(0f32, 0.05, (96, 64), &dev).unwrap();
        let b = Tensor::randn(0f32, 0.1, 96, &dev).unwrap();
        let full = Linear::from_weights(w.clone(), Some(b.clone()));
        let mut q = Linear::from_weights(w, Some(b));
        q.quantize_for_decode(candle_core::quantized::GgmlDType::Q8_0).unwrap();
        let rows = Tensor::randn(0f32, 1.0, (1, 5, 64), &dev).unwrap();
        let diff = crate::models::max_abs_diff;
        // a prompt (several rows) is untouched
        assert_eq!(diff(&full.forward(&rows).unwrap(), &q.forward(&rows).unwrap()), 0.0);
        // one row goes through Q8_0: close to f32, but not the f32 result
        let one = rows.narrow(1, 2, 1).unwrap();
        let (a, c) = (full.forward(&one).unwrap(), q.forward(&one).unwrap());
        assert_eq!(c.dims(), &[1, 1, 96]);
        let scale = crate::models::max_abs_diff(&a, &a.zeros_like().unwrap());
        let e = diff(&a, &c);
        assert!(e > 0.0 && e < 0.02 * scale, "Q8_0 error {e} against |y| up to {scale}");
    }

    /// Left-padded RoPE: row i's real tokens (slots pads[i]..) get exactly the rotation a lone
    /// run gives them at positions 0.., for a prefill and for a later decode step.
    #[test]
    fn padded_rope_counts_positions_from_each_rows_first_token() {
        let dev = candle_core::Device::Cpu;
        let rope = Rope::new(16, 64, 10000.0, DType::F32, &dev).unwrap();
        let pads = [3usize, 0, 7];
        let (b, h, s) = (3, 2, 9);
        let q = Tensor::randn(0f32, 1.0, (b, h, s, 16), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (b, h, s, 16), &dev).unwrap();
        for offset in [0usize, 12] {
            let (qp, kp) = rope.apply_padded(&q, &k, offset, &pads).unwrap();
            for (i, &p) in pads.iter().enumerate() {
                // the real slots of this chunk and their lone positions
                let first = p.saturating_sub(offset).min(s);
                let n = s - first;
                let one = |t: &Tensor| t.narrow(0, i, 1).unwrap().narrow(2, first, n).unwrap();
                let (ql, kl) = rope.apply(&one(&q), &one(&k), offset + first - p).unwrap();
                assert_eq!(
                    crate::models::max_abs_diff(&one(&qp), &ql),
                    0.0,
                    "offset {offset} row {i} q"
                );
                assert_eq!(
                    crate::models::max_abs_diff(&one(&kp), &kl),
                    0.0,
                    "offset {offset} row {i} k"
                );
            }
        }
        assert!(rope.apply_padded(&q, &k, 0, &pads[..2]).is_err());
    }

    /// InternLM2's plain, linear and dynamic-NTK rotary embeddings against the reference classes
    /// driven through a generation that crosses max_position_embeddings (tools/gen_rope_goldens.py).
    #[test]
    fn rope_scaling_matches_internlm2s_classes() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/internvl/rope_goldens.json");
        let g: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        let dev = candle_core::Device::Cpu;
        for case in g["cases"].as_array().unwrap() {
            let name = case["name"].as_str().unwrap();
            let scaling = match (name, case["factor"].as_f64()) {
                ("linear", Some(f)) => RopeScaling::Linear(f),
                ("dynamic", Some(f)) => RopeScaling::Dynamic(f),
                _ => RopeScaling::None,
            };
            let rope = Rope::with_scaling(
                case["head_dim"].as_u64().unwrap() as usize,
                case["max_position_embeddings"].as_u64().unwrap() as usize,
                case["rope_theta"].as_f64().unwrap(),
                scaling,
                DType::F32,
                &dev,
            )
            .unwrap();
            for call in case["calls"].as_array().unwrap() {
                let (off, n) = (
                    call["offset"].as_u64().unwrap() as usize,
                    call["len"].as_u64().unwrap() as usize,
                );
                let (cos, sin) = rope.cos_sin(off, n).unwrap();
                for (got, key) in [(cos, "cos"), (sin, "sin")] {
                    let got: Vec<Vec<f32>> = got.to_vec2().unwrap();
                    let want: Vec<Vec<f64>> = serde_json::from_value(call[key].clone()).unwrap();
                    for (r, (a, b)) in got.iter().zip(&want).enumerate() {
                        for (c, (x, y)) in a.iter().zip(b).enumerate() {
                            // f32 sin/cos of the same f32 angles; the base's pow in f64 vs torch's f32.
                            assert!(
                                (*x as f64 - y).abs() < 2e-6,
                                "{name} offset {off} row {r} col {c} {key}: {x} vs {y}"
                            );
                        }
                    }
                }
            }
        }
        assert!(RopeScaling::from_config(Some(&serde_json::json!({"type": "yarn", "factor": 4.0}))).is_err());
        assert_eq!(
            RopeScaling::from_config(Some(&serde_json::json!({"type": "dynamic", "factor": 2.0}))),
            Ok(RopeScaling::Dynamic(2.0))
        );
        assert_eq!(
            RopeScaling::from_config(Some(&serde_json::Value::Null)),
            Ok(RopeScaling::None)
        );
    }
}

/// Checks for [`DecoderLayer::forward_tail`] implementations, shared by the decoders' tests.
#[cfg(test)]
pub(crate) mod tail_check {
    use super::{Decoder, DecoderLayer};
    use candle_core::{Device, IndexOp, Tensor};

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    /// A tail forward gives the full forward's last rows, caches every row (the next step's
    /// state is the same as after a full forward), also for a left-padded batch and past the
    /// RoPE table (dynamic scaling recomputes it); random weights from `vm`.
    pub(crate) fn tail_matches_full<L: DecoderLayer>(m: &mut Decoder<L>, h: usize, s: usize) {
        let dev = Device::Cpu;
        for (b, pads) in [(1usize, None), (2, Some(vec![0usize, 3]))] {
            let x = Tensor::randn(0f32, 1.0, (b, s, h), &dev).unwrap();
            let step = Tensor::randn(0f32, 1.0, (b, 1, h), &dev).unwrap();
            let mut run = |keep: Option<usize>| {
                m.clear_kv_cache();
                if let Some(p) = &pads {
                    m.set_left_padding(p);
                }
                let out = match keep {
                    Some(k) => m.forward_embeds_tail(&x, 0, k).unwrap(),
                    None => m.forward_embeds(&x, 0).unwrap(),
                };
                (out, m.forward_embeds(&step, s).unwrap())
            };
            let (full, full_next) = run(None);
            for keep in [1, 3, s] {
                let (tail, next) = run(Some(keep));
                assert_eq!(tail.dims(), &[b, keep, h]);
                let want = full.i((.., s - keep..)).unwrap();
                assert!(
                    max_diff(&tail, &want) < 1e-5,
                    "keep {keep}, batch {b}: {}",
                    max_diff(&tail, &want)
                );
                assert!(
                    max_diff(&next, &full_next) < 1e-5,
                    "next step after keep {keep}, batch {b}"
                );
            }
            m.clear_kv_cache();
            assert!(m.forward_embeds_tail(&x, 0, 0).is_err() && m.forward_embeds_tail(&x, 0, s + 1).is_err());
        }
    }
}
