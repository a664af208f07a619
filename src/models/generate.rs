//! The decoding loop shared by `ask`, `segment` and `depth`: greedy by default, optional
//! temperature / top-p sampling with a seed, stop tokens, and the last-layer hidden state at
//! each generated token's position (what Sa2VA reads `[SEG]` embeddings from).

use super::internvl::InternVl;
use candle_core::{IndexOp, Result, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    /// 0 = greedy.
    pub temperature: f64,
    pub top_p: Option<f64>,
    pub seed: u64,
    pub stop_ids: Vec<u32>,
    /// Stop words that are not one token of this tokenizer (e.g. phi3_chat's `<|end|>` with a
    /// Qwen2.5 vocabulary), matched on the decoded reply as Sa2VA's `StopWordStoppingCriteria`.
    pub stop_text: Option<StopText>,
}

/// Text-level stop words: generation ends once the decoded reply, with `\r` and `\n` removed,
/// ends with one of them.
#[derive(Debug, Clone)]
pub struct StopText {
    pub tokenizer: std::sync::Arc<crate::models::tokenizer::Tokenizer>,
    pub words: Vec<String>,
}

impl StopText {
    /// Whether the reply `ids` now ends with a stop word.
    pub fn hit(&self, ids: &[u32]) -> bool {
        let Ok(text) = self.tokenizer.decode(ids, false) else {
            return false;
        };
        let text: String = text.chars().filter(|&c| c != '\r' && c != '\n').collect();
        self.words.iter().any(|w| text.ends_with(w.as_str()))
    }
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 512,
            temperature: 0.0,
            top_p: None,
            seed: 299792458,
            stop_ids: vec![],
            stop_text: None,
        }
    }
}

#[derive(Debug)]
pub struct Generation {
    /// Generated ids, including a final stop token if one was produced.
    pub ids: Vec<u32>,
    /// Last-layer hidden state (h) at the position of `ids[j]` when it was fed back
    /// (every id but a final one that ended generation).
    pub hidden: Vec<Tensor>,
    pub stopped: bool,
    pub prompt_tokens: usize,
    pub prefill_secs: f64,
    pub decode_secs: f64,
}

/// Restricts which token may come next (e.g. Perceptio's depth block: after the start marker only
/// code tokens, exactly grid h·w of them, then the end marker).
pub trait LogitsConstraint {
    /// Mask the next-token logits (1-d, vocab) of disallowed tokens with −∞.
    fn apply(&self, logits: &Tensor) -> Result<Tensor>;
    /// Record the token that was chosen.
    fn advance(&mut self, id: u32);
}

/// A decoder that generation drives: token embeddings, a cached forward over embeddings at
/// positions offset.., logits of last-layer hidden states.
pub trait CausalLm {
    fn embed(&self, ids: &Tensor) -> Result<Tensor>;
    /// Last-layer hidden states (1, s, h) of embeddings at positions offset..offset+s: what the
    /// reference reports as `hidden_states[-1]` (final-normed for InternVL's LLMs, pre-norm for
    /// Qwen3-VL on transformers 4.57).
    fn forward_embeds(&mut self, xs: &Tensor, offset: usize) -> Result<Tensor>;
    /// [`Self::forward_embeds`]'s states for the last `keep` rows only (1, keep, h); every row
    /// is still cached. A decoder may skip its last layer's work for the other rows.
    fn forward_embeds_tail(&mut self, xs: &Tensor, offset: usize, keep: usize) -> Result<Tensor> {
        let s = xs.dim(1)?;
        self.forward_embeds(xs, offset)?.narrow(1, s - keep.min(s), keep.min(s))
    }
    fn logits(&self, hidden: &Tensor) -> Result<Tensor>;
    fn clear_kv_cache(&mut self);
}

impl CausalLm for InternVl {
    fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        self.llm.embed(ids)
    }
    fn forward_embeds(&mut self, xs: &Tensor, offset: usize) -> Result<Tensor> {
        self.llm.forward_embeds(xs, offset)
    }
    fn forward_embeds_tail(&mut self, xs: &Tensor, offset: usize, keep: usize) -> Result<Tensor> {
        self.llm.forward_embeds_tail(xs, offset, keep)
    }
    fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.llm.logits(hidden)
    }
    fn clear_kv_cache(&mut self) {
        self.llm.clear_kv_cache()
    }
}

/// Generate from prompt embeddings (1, L, h). `on_token` sees each id as it is produced.
pub fn generate<M: CausalLm + ?Sized>(
    model: &mut M,
    embeds: &Tensor,
    opts: &GenerateOptions,
    on_token: impl FnMut(u32),
) -> Result<Generation> {
    generate_constrained(model, embeds, opts, None, on_token)
}

/// [`generate`] with an optional constraint on every step.
pub fn generate_constrained<M: CausalLm + ?Sized>(
    model: &mut M,
    embeds: &Tensor,
    opts: &GenerateOptions,
    mut constraint: Option<&mut dyn LogitsConstraint>,
    mut on_token: impl FnMut(u32),
) -> Result<Generation> {
    let sampling = match (opts.temperature, opts.top_p) {
        (t, _) if t <= 0.0 => Sampling::ArgMax,
        (t, Some(p)) => Sampling::TopP { p, temperature: t },
        (t, None) => Sampling::All { temperature: t },
    };
    let greedy = matches!(sampling, Sampling::ArgMax);
    let mut proc = LogitsProcessor::from_sampling(opts.seed, sampling);
    model.clear_kv_cache();
    let prompt_tokens = embeds.dim(1)?;
    let t0 = Instant::now();
    // Only the last prompt row is read: the last layer skips the others.
    let h = model.forward_embeds_tail(embeds, 0, 1)?;
    let mut last = h.i((0, 0))?;
    // Stage times are the device's: wait for an asynchronous GPU before reading the clock.
    embeds.device().synchronize()?;
    let prefill_secs = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let mut ids = Vec::new();
    let mut hidden = Vec::new();
    let mut stopped = false;
    let mut pos = prompt_tokens;
    while ids.len() < opts.max_new_tokens {
        let mut logits = model.logits(&last.unsqueeze(0)?)?.squeeze(0)?;
        if let Some(c) = constraint.as_deref() {
            logits = c.apply(&logits.to_dtype(candle_core::DType::F32)?)?;
        }
        // Greedy on a GPU picks the id on the device, so only it crosses to the host; the CPU
        // keeps LogitsProcessor's argmax (its tie rule is what the goldens were made with).
        let next = if greedy && !logits.device().is_cpu() {
            logits.argmax(candle_core::D::Minus1)?.to_scalar::<u32>()?
        } else {
            proc.sample(&logits)?
        };
        if let Some(c) = constraint.as_deref_mut() {
            c.advance(next);
        }
        ids.push(next);
        on_token(next);
        if opts.stop_ids.contains(&next) || opts.stop_text.as_ref().is_some_and(|st| st.hit(&ids)) {
            stopped = true;
            break;
        }
        if ids.len() == opts.max_new_tokens {
            break;
        }
        let x = model.embed(&Tensor::new(&[[next]], embeds.device())?)?;
        let h = model.forward_embeds(&x, pos)?;
        pos += 1;
        last = h.i((0, 0))?;
        hidden.push(last.clone());
    }
    embeds.device().synchronize()?;
    Ok(Generation {
        ids,
        hidden,
        stopped,
        prompt_tokens,
        prefill_secs,
        decode_secs: t1.elapsed().as_secs_f64(),
    })
}

/// [`generate`] for several prompts (1, Lᵢ, h) at once, without a constraint: the prompts are
/// left-padded to the longest (the pads are never attended and each row's positions start at its
/// first real token, see [`crate::models::nn::CausalAttention::set_left_padding`]), prefilled
/// together, then every decode step feeds one token per row. A row stops on its own stop token,
/// stop text or budget, exactly as alone; rows that stopped are fed a filler token whose outputs
/// are dropped until every row has stopped. Each row samples with its own processor seeded as a
/// lone run. The tokens are those of lone runs unless two logits of a row are within float
/// rounding of each other (the batched products sum in another order than one-row products).
/// Times are the batch's shared equally among the rows.
pub fn generate_batch(model: &mut InternVl, embeds: &[Tensor], opts: &GenerateOptions) -> Result<Vec<Generation>> {
    let n = embeds.len();
    let Some(first) = embeds.first() else {
        return Ok(vec![]);
    };
    let dev = first.device().clone();
    let sampling = match (opts.temperature, opts.top_p) {
        (t, _) if t <= 0.0 => Sampling::ArgMax,
        (t, Some(p)) => Sampling::TopP { p, temperature: t },
        (t, None) => Sampling::All { temperature: t },
    };
    let greedy = matches!(sampling, Sampling::ArgMax);
    let mut procs: Vec<LogitsProcessor> = (0..n)
        .map(|_| LogitsProcessor::from_sampling(opts.seed, sampling.clone()))
        .collect();
    let lens: Vec<usize> = embeds.iter().map(|e| e.dim(1)).collect::<Result<_>>()?;
    let width = lens.iter().max().copied().unwrap_or(0);
    let pads: Vec<usize> = lens.iter().map(|l| width - l).collect();
    let rows = embeds
        .iter()
        .zip(&pads)
        .map(|(e, &p)| e.pad_with_zeros(1, p, 0))
        .collect::<Result<Vec<_>>>()?;
    model.llm.clear_kv_cache();
    model.llm.set_left_padding(&pads);
    let t0 = Instant::now();
    let h = model.llm.forward_embeds_tail(&Tensor::cat(&rows, 0)?, 0, 1)?;
    let mut last = h.i((.., 0))?; // (n, h)
    dev.synchronize()?;
    let prefill_secs = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let mut ids: Vec<Vec<u32>> = vec![Vec::new(); n];
    let mut hidden: Vec<Vec<Tensor>> = vec![Vec::new(); n];
    let mut stopped = vec![false; n];
    let mut done = vec![opts.max_new_tokens == 0; n];
    let mut pos = width;
    while done.iter().any(|d| !d) {
        let logits = model.llm.logits(&last)?; // (n, vocab), f32
        let mut next = vec![0u32; n];
        for i in 0..n {
            if done[i] {
                continue;
            }
            let row = logits.i(i)?;
            let t = if greedy && !dev.is_cpu() {
                row.argmax(candle_core::D::Minus1)?.to_scalar::<u32>()?
            } else {
                procs[i].sample(&row)?
            };
            ids[i].push(t);
            next[i] = t;
            if opts.stop_ids.contains(&t) || opts.stop_text.as_ref().is_some_and(|st| st.hit(&ids[i])) {
                stopped[i] = true;
                done[i] = true;
            } else if ids[i].len() == opts.max_new_tokens {
                done[i] = true;
            }
        }
        if done.iter().all(|&d| d) {
            break;
        }
        let x = model.llm.embed(&Tensor::new(next.as_slice(), &dev)?.unsqueeze(1)?)?;
        let h = model.llm.forward_embeds(&x, pos)?;
        pos += 1;
        last = h.i((.., 0))?;
        for i in (0..n).filter(|&i| !done[i]) {
            hidden[i].push(last.i(i)?);
        }
    }
    dev.synchronize()?;
    model.llm.clear_kv_cache();
    let decode_secs = t1.elapsed().as_secs_f64();
    Ok(ids
        .into_iter()
        .zip(hidden)
        .zip(stopped)
        .zip(lens)
        .map(|(((ids, hidden), stopped), prompt_tokens)| Generation {
            ids,
            hidden,
            stopped,
            prompt_tokens,
            prefill_secs: prefill_secs / n as f64,
            decode_secs: decode_secs / n as f64,
        })
        .collect())
}

/// Run a teacher-forced continuation (e.g. "Sure, [SEG].") after the prompt and return the
/// last-layer hidden states of those tokens (n, h).
pub fn teacher_force<M: CausalLm + ?Sized>(model: &mut M, embeds: &Tensor, forced: &[u32]) -> Result<Tensor> {
    model.clear_kv_cache();
    let f = model.embed(&Tensor::new(forced, embeds.device())?.unsqueeze(0)?)?;
    let all = Tensor::cat(&[embeds, &f], 1)?;
    let keep = forced.len().max(1);
    let h = model.forward_embeds_tail(&all, 0, keep)?;
    h.i((0, keep - forced.len()..))
}

/// [`teacher_force`] for several prompts in one forward: each row is `embeds[i]` (1, Lᵢ, h)
/// followed by `forced`, right-padded with zero embeddings to the longest row. Right padding
/// needs no attention mask: every real token sits at the same position as in a lone run (so
/// RoPE is unchanged) and the causal mask already hides the trailing pads from it; the pad
/// rows' own outputs are finite and dropped. Returns each row's (n, h) forced hidden states.
pub fn teacher_force_batch(model: &mut InternVl, embeds: &[Tensor], forced: &[u32]) -> Result<Vec<Tensor>> {
    let Some(first) = embeds.first() else {
        return Ok(vec![]);
    };
    model.llm.clear_kv_cache();
    let dev = first.device();
    let f = model.llm.embed(&Tensor::new(forced, dev)?.unsqueeze(0)?)?;
    let lens: Vec<usize> = embeds.iter().map(|e| e.dim(1)).collect::<Result<_>>()?;
    let width = lens.iter().max().copied().unwrap_or(0) + forced.len();
    let rows = embeds
        .iter()
        .zip(&lens)
        .map(|(e, &l)| {
            let row = Tensor::cat(&[e, &f.to_dtype(e.dtype())?], 1)?;
            row.pad_with_zeros(1, 0, width - l - forced.len())
        })
        .collect::<Result<Vec<_>>>()?;
    // Only the forced rows are read: the last layer computes from the shortest row's first.
    let first = lens.iter().min().copied().unwrap_or(0);
    let h = model
        .llm
        .forward_embeds_tail(&Tensor::cat(&rows, 0)?, 0, width - first)?;
    lens.iter()
        .enumerate()
        .map(|(i, &l)| h.i((i, l - first..l - first + forced.len())))
        .collect()
}
