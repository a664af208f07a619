//! Perceptio's depth-token objectives (marker, token, count, soft-merge) on teacher-forced
//! logits. The paper names them but publishes no formulas; these are the readings written out
//! in docs/depth-losses.md, differentiable with candle's autograd (`Var` + `backward`).
//!
//! Inputs everywhere: `logits` (B, T, V) where row t predicts `targets[b·T + t]` (already
//! shifted), and `targets` (B·T ids; [`IGNORE`] for padding). Depth blocks are found in the
//! targets with [`DepthTokenIds::parse`], so a malformed target block is an error.

use crate::models::depth_tokens::{DepthBlock, DepthTokenIds};
use crate::models::vqvae::VqVae;
use candle_core::{bail, Result, Tensor, D};
use serde::{Deserialize, Serialize};

/// Target id that no loss looks at (padding, prompt positions).
pub const IGNORE: u32 = u32::MAX;

/// Loss weights and the soft-merge temperature. The defaults are guesses (the paper's values
/// are not public): markers weigh double because one missing marker breaks the whole block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DepthLossConfig {
    pub marker_weight: f64,
    pub token_weight: f64,
    pub count_weight: f64,
    pub soft_merge_weight: f64,
    /// Temperature τ of softmax(z/τ) in the soft merge.
    pub tau: f64,
}

impl Default for DepthLossConfig {
    fn default() -> Self {
        Self {
            marker_weight: 2.0,
            token_weight: 1.0,
            count_weight: 0.1,
            soft_merge_weight: 1.0,
            tau: 1.0,
        }
    }
}

/// The four terms (scalars; 0 when the batch has nothing for a term) and their weighted sum.
#[derive(Debug, Clone)]
pub struct DepthLosses {
    pub marker: Tensor,
    pub token: Tensor,
    pub count: Tensor,
    /// `None` when no decoder/target depth was given.
    pub soft_merge: Option<Tensor>,
    pub total: Tensor,
}

/// Depth blocks of the targets, one per row at most, as (row, block).
pub fn target_blocks(
    targets: &[u32],
    batch: usize,
    seq: usize,
    ids: &DepthTokenIds,
) -> Result<Vec<(usize, DepthBlock)>> {
    if targets.len() != batch * seq {
        bail!("depth loss: {} targets for a ({batch}, {seq}) batch", targets.len())
    }
    let mut out = Vec::new();
    for b in 0..batch {
        match ids.parse(&targets[b * seq..(b + 1) * seq]) {
            Ok(Some(block)) => out.push((b, block)),
            Ok(None) => {}
            Err(e) => bail!("depth loss: target row {b}: {e}"),
        }
    }
    Ok(out)
}

fn dims(logits: &Tensor) -> Result<(usize, usize, usize)> {
    logits.dims3()
}

fn zero(logits: &Tensor) -> Result<Tensor> {
    Tensor::zeros((), logits.dtype(), logits.device())
}

/// Rows `pos` of the flattened (B·T, V) logits.
fn rows(logits: &Tensor, pos: &[u32]) -> Result<Tensor> {
    let (b, t, v) = dims(logits)?;
    let idx = Tensor::from_slice(pos, pos.len(), logits.device())?;
    logits.reshape((b * t, v))?.index_select(&idx, 0)
}

/// Mean of −log softmax(z)[y] over rows of `z` (M, C) and classes `y` (M).
fn cross_entropy(z: &Tensor, y: &[u32]) -> Result<Tensor> {
    let ls = candle_nn::ops::log_softmax(z, D::Minus1)?;
    let y = Tensor::from_slice(y, (y.len(), 1), z.device())?;
    ls.gather(&y, 1)?.mean_all()?.neg()
}

/// log Σ exp over the last axis, stabilised by the (constant) row maximum.
fn logsumexp(z: &Tensor) -> Result<Tensor> {
    let m = z.max_keepdim(D::Minus1)?.detach();
    (z.broadcast_sub(&m)?.exp()?.sum_keepdim(D::Minus1)?.log()? + m)?.squeeze(D::Minus1)
}

/// Marker loss: mean cross-entropy (full vocabulary) at the start- and end-marker targets.
pub fn marker_loss(logits: &Tensor, targets: &[u32], ids: &DepthTokenIds) -> Result<Tensor> {
    let (b, t, _) = dims(logits)?;
    let blocks = target_blocks(targets, b, t, ids)?;
    if blocks.is_empty() {
        return zero(logits);
    }
    let mut pos = Vec::new();
    let mut y = Vec::new();
    for (row, bl) in &blocks {
        pos.extend([(row * t + bl.start_pos) as u32, (row * t + bl.end_pos) as u32]);
        y.extend([ids.start, ids.end]);
    }
    cross_entropy(&rows(logits, &pos)?, &y)
}

/// Flattened positions of the code targets, and their code indices, block by block.
fn code_positions(blocks: &[(usize, DepthBlock)], seq: usize) -> (Vec<u32>, Vec<u32>) {
    let mut pos = Vec::new();
    let mut y = Vec::new();
    for (row, bl) in blocks {
        for (j, &k) in bl.codes.iter().enumerate() {
            pos.push((row * seq + bl.start_pos + 1 + j) as u32);
            y.push(k);
        }
    }
    (pos, y)
}

/// Code logits (M, K) at the given rows: the vocabulary restricted to the code tokens.
fn code_logits(logits: &Tensor, pos: &[u32], ids: &DepthTokenIds) -> Result<Tensor> {
    let codes = Tensor::from_slice(&ids.codes, ids.codes.len(), logits.device())?;
    rows(logits, pos)?.index_select(&codes, 1)
}

/// Token loss: mean cross-entropy over the code sub-vocabulary at every code target.
pub fn token_loss(logits: &Tensor, targets: &[u32], ids: &DepthTokenIds) -> Result<Tensor> {
    let (b, t, _) = dims(logits)?;
    let blocks = target_blocks(targets, b, t, ids)?;
    if blocks.is_empty() {
        return zero(logits);
    }
    let (pos, y) = code_positions(&blocks, t);
    cross_entropy(&code_logits(logits, &pos, ids)?, &y)
}

/// Count loss: with p_t = P(token t is a code) = Σ_k softmax(z_t)[code_k], the expected number
/// of codes over the block's window (after the start marker up to and including the end-marker
/// position) is E = Σ_t p_t; the loss is ((E − G)/G)² averaged over blocks (G = gh·gw).
pub fn count_loss(logits: &Tensor, targets: &[u32], ids: &DepthTokenIds) -> Result<Tensor> {
    let (b, t, _) = dims(logits)?;
    let blocks = target_blocks(targets, b, t, ids)?;
    if blocks.is_empty() {
        return zero(logits);
    }
    let g = ids.num_codes();
    let mut pos = Vec::new();
    for (row, bl) in &blocks {
        pos.extend((bl.start_pos + 1..=bl.end_pos).map(|p| (row * t + p) as u32));
    }
    let z = rows(logits, &pos)?;
    let codes = Tensor::from_slice(&ids.codes, ids.codes.len(), logits.device())?;
    let p_code = (logsumexp(&z.index_select(&codes, 1)?)? - logsumexp(&z)?)?.exp()?;
    let expected = p_code.reshape((blocks.len(), g + 1))?.sum(1)?;
    ((expected - g as f64)? / g as f64)?.sqr()?.mean_all()
}

/// Soft-merge loss: the block's code logits (G, K) → softmax(z/τ)·codebook → the frozen VQ-VAE
/// decoder → MSE against `target_depth` (n_blocks, C, H, W) in the decoder's (normalised)
/// space; target maps are in block order (row order of the batch).
pub fn soft_merge_loss(
    logits: &Tensor,
    targets: &[u32],
    ids: &DepthTokenIds,
    vqvae: &VqVae,
    target_depth: &Tensor,
    tau: f64,
) -> Result<Tensor> {
    let (b, t, _) = dims(logits)?;
    let blocks = target_blocks(targets, b, t, ids)?;
    if blocks.is_empty() {
        return zero(logits);
    }
    let (gh, gw) = ids.grid;
    let k = ids.codes.len();
    if k != vqvae.config().num_tokens {
        bail!(
            "soft merge: {k} code tokens but the VQ-VAE codebook has {} entries",
            vqvae.config().num_tokens
        )
    }
    if target_depth.dim(0)? != blocks.len() {
        bail!(
            "soft merge: {} target depth maps for {} depth blocks",
            target_depth.dim(0)?,
            blocks.len()
        )
    }
    let (pos, _) = code_positions(&blocks, t);
    let z = code_logits(logits, &pos, ids)?.reshape((blocks.len(), gh, gw, k))?;
    let e = vqvae.soft_embeddings(&z, tau)?;
    let out = vqvae.decode_embeddings(&e)?;
    if out.dims() != target_depth.dims() {
        bail!(
            "soft merge: decoder gives {:?}, target depth is {:?}",
            out.dims(),
            target_depth.dims()
        )
    }
    (out - target_depth.to_dtype(logits.dtype())?)?.sqr()?.mean_all()
}

/// All terms and their weighted sum; the soft-merge term needs `(decoder, target depth)`.
pub fn depth_losses(
    logits: &Tensor,
    targets: &[u32],
    ids: &DepthTokenIds,
    cfg: &DepthLossConfig,
    soft: Option<(&VqVae, &Tensor)>,
) -> Result<DepthLosses> {
    let marker = marker_loss(logits, targets, ids)?;
    let token = token_loss(logits, targets, ids)?;
    let count = count_loss(logits, targets, ids)?;
    let soft_merge = match soft {
        Some((v, d)) => Some(soft_merge_loss(logits, targets, ids, v, d, cfg.tau)?),
        None => None,
    };
    let mut total = ((&marker * cfg.marker_weight)? + (&token * cfg.token_weight)?)?;
    total = (total + (&count * cfg.count_weight)?)?;
    if let Some(s) = &soft_merge {
        total = (total + (s * cfg.soft_merge_weight)?)?;
    }
    Ok(DepthLosses {
        marker,
        token,
        count,
        soft_merge,
        total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::depth_tokens::DepthTokenSpec;
    use crate::models::vqvae::{Config, VqVae};
    use candle_core::{DType, Device, Var};
    use candle_nn::VarBuilder;
    use std::collections::HashMap;

    struct Rng(u64);
    impl Rng {
        fn unit(&mut self) -> f64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        }
        fn vec(&mut self, n: usize, scale: f64) -> Vec<f64> {
            (0..n).map(|_| scale * self.unit()).collect()
        }
    }

    /// Vocabulary of 12: text 0..5, start 5, end 6, codes 7..10 (K = 3), grid 2×2.
    fn ids() -> DepthTokenIds {
        let spec = DepthTokenSpec {
            grid: (2, 2),
            codebook_size: 3,
            ..Default::default()
        };
        spec.resolve_with(|s| match s {
            "<DEPTH_START>" => Some(5),
            "<DEPTH_END>" => Some(6),
            _ => s
                .strip_prefix("<DEPTH_")?
                .strip_suffix('>')?
                .parse::<u32>()
                .ok()
                .map(|k| 7 + k),
        })
        .unwrap()
    }

    /// A random f64 VQ-VAE with 8×8 input, stride 4 (grid 2×2), K = 3, D = 4.
    fn tiny_vqvae(rng: &mut Rng) -> VqVae {
        let cfg = Config {
            image_size: 8,
            num_tokens: 3,
            codebook_dim: 4,
            hidden_dim: 2,
            num_resnet_blocks: 1,
            downsample_ratio: 4,
            ..Default::default()
        };
        let mut map = HashMap::new();
        for (name, shape) in cfg.state_dict_shapes() {
            let n = shape.iter().product();
            map.insert(name, Tensor::from_vec(rng.vec(n, 0.5), shape, &Device::Cpu).unwrap());
        }
        VqVae::new(&cfg, VarBuilder::from_tensors(map, DType::F64, &Device::Cpu)).unwrap()
    }

    fn batch() -> Vec<u32> {
        let ig = IGNORE;
        // Row 0: text, block, text; row 1: block at the very start, then padding.
        let mut t = vec![1, 2, 5, 7, 9, 8, 7, 6, 3, 0];
        t.extend([5, 9, 9, 7, 8, 6, 4, ig, ig, ig]);
        t
    }

    fn check_grad(name: &str, f: &dyn Fn(&Tensor) -> Tensor) {
        let mut rng = Rng(0x0123_4567_89AB_CDEF);
        let (b, t, v) = (2, 10, 12);
        let x0 = rng.vec(b * t * v, 2.0);
        let var = Var::from_vec(x0.clone(), (b, t, v), &Device::Cpu).unwrap();
        let loss = f(var.as_tensor());
        let grads = loss.backward().unwrap();
        let g: Vec<f64> = grads
            .get(var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let h = 1e-5;
        let eval = |x: &[f64]| -> f64 {
            f(&Tensor::from_slice(x, (b, t, v), &Device::Cpu).unwrap())
                .to_scalar()
                .unwrap()
        };
        let scale = g.iter().fold(0f64, |m, v| m.max(v.abs()));
        assert!(scale > 1e-6, "{name}: zero gradient");
        let mut worst = 0f64;
        let mut x = x0.clone();
        for i in 0..x.len() {
            x[i] = x0[i] + h;
            let up = eval(&x);
            x[i] = x0[i] - h;
            let down = eval(&x);
            x[i] = x0[i];
            let fd = (up - down) / (2.0 * h);
            worst = worst.max((fd - g[i]).abs() / scale);
        }
        assert!(worst < 1e-6, "{name}: max |fd - autograd| / max|grad| = {worst:e}");
        eprintln!("{name}: max relative gradient error {worst:e} (scale {scale:e})");
    }

    #[test]
    fn gradients_match_central_differences() {
        let ids = ids();
        let targets = batch();
        check_grad("marker", &|z| marker_loss(z, &targets, &ids).unwrap());
        check_grad("token", &|z| token_loss(z, &targets, &ids).unwrap());
        check_grad("count", &|z| count_loss(z, &targets, &ids).unwrap());
        let mut rng = Rng(42);
        let vq = tiny_vqvae(&mut rng);
        let depth = Tensor::from_vec(rng.vec(2 * 64, 1.0), (2, 1, 8, 8), &Device::Cpu).unwrap();
        check_grad("soft_merge", &|z| {
            soft_merge_loss(z, &targets, &ids, &vq, &depth, 0.7).unwrap()
        });
        let cfg = DepthLossConfig::default();
        check_grad("total", &|z| {
            depth_losses(z, &targets, &ids, &cfg, Some((&vq, &depth)))
                .unwrap()
                .total
        });
    }

    #[test]
    fn values_match_hand_computation() {
        let ids = ids();
        let targets = batch();
        // All logits zero: uniform over 12 tokens, over 3 codes.
        let z = Tensor::zeros((2, 10, 12), DType::F64, &Device::Cpu).unwrap();
        let m: f64 = marker_loss(&z, &targets, &ids).unwrap().to_scalar().unwrap();
        assert!((m - 12f64.ln()).abs() < 1e-12);
        let t: f64 = token_loss(&z, &targets, &ids).unwrap().to_scalar().unwrap();
        assert!((t - 3f64.ln()).abs() < 1e-12);
        // p_code = 3/12 at each of the 5 window positions: E = 1.25, G = 4.
        let c: f64 = count_loss(&z, &targets, &ids).unwrap().to_scalar().unwrap();
        assert!((c - ((1.25 - 4.0) / 4.0f64).powi(2)).abs() < 1e-12);
        // No block: every term is zero.
        let none = vec![1u32; 20];
        assert_eq!(count_loss(&z, &none, &ids).unwrap().to_scalar::<f64>().unwrap(), 0.0);
        // A malformed target block is an error, not a silent zero.
        let mut bad = targets.clone();
        bad[7] = 3;
        assert!(token_loss(&z, &bad, &ids)
            .unwrap_err()
            .to_string()
            .contains("target row 0"));
    }

    #[test]
    fn soft_merge_with_hard_logits_equals_decode() {
        let mut rng = Rng(7);
        let vq = tiny_vqvae(&mut rng);
        let codes = Tensor::from_vec(vec![2u32, 0, 1, 2], (1, 2, 2), &Device::Cpu).unwrap();
        let hard = vq.decode(&codes).unwrap();
        let onehot: Vec<f64> = [2usize, 0, 1, 2]
            .iter()
            .flat_map(|&k| (0..3).map(move |j| if j == k { 60.0 } else { 0.0 }))
            .collect();
        let z = Tensor::from_vec(onehot, (1, 2, 2, 3), &Device::Cpu).unwrap();
        let soft = vq.decode_embeddings(&vq.soft_embeddings(&z, 1.0).unwrap()).unwrap();
        let d: f64 = (hard - soft)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(d < 1e-12, "{d}");
    }
}
