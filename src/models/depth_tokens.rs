//! Depth perception tokens in the generated stream: `<DEPTH_START>`, exactly gh·gw code tokens
//! `<DEPTH_k>` (row-major over the VQ-VAE grid), `<DEPTH_END>` (AURORA's format; Perceptio's
//! strings are not public, so everything is driven by [`DepthTokenSpec`]).
//!
//! [`DepthTokenIds::parse`] extracts the one block of a finished answer; [`DepthConstraint`]
//! keeps a decoder on that grammar while it generates.
//!
//! Decisions: a stream holds at most one block (AURORA and Perceptio emit one depth map per
//! answer; a second block is an error rather than a silent choice). Code or end-marker tokens
//! outside a block are errors too, and the constraint therefore bans them outside a block: it
//! never lets the stream become unparseable.

use candle_core::{Tensor, D};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Token strings and geometry of a depth block; defaults are AURORA's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DepthTokenSpec {
    pub start: String,
    pub end: String,
    /// Code token with `{}` standing for the code index.
    pub code_format: String,
    /// (rows, cols) of the code grid.
    pub grid: (usize, usize),
    pub codebook_size: usize,
}

impl Default for DepthTokenSpec {
    fn default() -> Self {
        Self {
            start: "<DEPTH_START>".into(),
            end: "<DEPTH_END>".into(),
            code_format: "<DEPTH_{}>".into(),
            grid: (10, 10),
            codebook_size: 128,
        }
    }
}

impl DepthTokenSpec {
    /// The token string of code `k`.
    pub fn code_token(&self, k: usize) -> String {
        self.code_format.replacen("{}", &k.to_string(), 1)
    }

    /// Codes per block (gh·gw).
    pub fn num_codes(&self) -> usize {
        self.grid.0 * self.grid.1
    }

    /// Resolve every token against a tokenizer's vocabulary (added tokens included).
    pub fn resolve(&self, tok: &crate::models::tokenizer::Tokenizer) -> crate::Result<DepthTokenIds> {
        self.resolve_with(|s| tok.token_to_id(s))
    }

    /// Resolve with any string → id lookup; errors name the missing tokens and the spec problem.
    pub fn resolve_with(&self, lookup: impl Fn(&str) -> Option<u32>) -> crate::Result<DepthTokenIds> {
        let bad = |m: String| Err(crate::Error::at("depth tokens", m));
        if self.code_format.matches("{}").count() != 1 {
            return bad(format!(
                "code_format {:?} must contain `{{}}` exactly once",
                self.code_format
            ));
        }
        if self.grid.0 == 0 || self.grid.1 == 0 || self.codebook_size == 0 {
            return bad(format!(
                "grid {:?} and codebook_size {} must be positive",
                self.grid, self.codebook_size
            ));
        }
        let mut missing = Vec::new();
        let mut get = |s: &str| {
            let id = lookup(s);
            if id.is_none() {
                missing.push(s.to_string());
            }
            id.unwrap_or(u32::MAX)
        };
        let start = get(&self.start);
        let end = get(&self.end);
        let codes: Vec<u32> = (0..self.codebook_size).map(|k| get(&self.code_token(k))).collect();
        if !missing.is_empty() {
            let n = missing.len();
            let shown: Vec<_> = missing.into_iter().take(5).collect();
            return bad(format!(
                "the tokenizer has no {} ({n} missing{}); is this a depth-token model?",
                shown.join(", "),
                if n > 5 { ", first 5 shown" } else { "" }
            ));
        }
        let mut code_of = HashMap::with_capacity(codes.len());
        for (k, &id) in codes.iter().enumerate() {
            if id == start || id == end || code_of.insert(id, k as u32).is_some() {
                return bad(format!("token id {id} is used by more than one depth token (code {k})"));
            }
        }
        if start == end {
            return bad(format!("start and end markers are the same token id {start}"));
        }
        Ok(DepthTokenIds {
            start,
            end,
            codes,
            code_of,
            grid: self.grid,
        })
    }
}

/// A [`DepthTokenSpec`] resolved to token ids.
#[derive(Debug, Clone, PartialEq)]
pub struct DepthTokenIds {
    pub start: u32,
    pub end: u32,
    /// Token id of code k at index k.
    pub codes: Vec<u32>,
    code_of: HashMap<u32, u32>,
    pub grid: (usize, usize),
}

/// One parsed block: positions of its markers in the stream and the row-major code grid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DepthBlock {
    pub start_pos: usize,
    pub end_pos: usize,
    /// gh·gw code indices (not token ids), row-major.
    pub codes: Vec<u32>,
    pub grid: (usize, usize),
}

impl DepthBlock {
    /// The codes as a (1, gh, gw) u32 tensor for [`crate::models::vqvae::VqVae::decode`].
    pub fn to_tensor(&self, device: &candle_core::Device) -> candle_core::Result<Tensor> {
        Tensor::from_vec(self.codes.clone(), (1, self.grid.0, self.grid.1), device)
    }
}

/// Why a generated stream does not hold a well-formed depth block (`at` = stream position).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DepthParseError {
    #[error("depth block opened at {start} closes at {at} after {found} code tokens; {expected} expected")]
    TooFewCodes {
        start: usize,
        at: usize,
        found: usize,
        expected: usize,
    },
    #[error("depth block opened at {start} has more than {expected} code tokens (extra one at {at})")]
    TooManyCodes { start: usize, at: usize, expected: usize },
    #[error("token id {id} at {at} is not a depth code, inside the depth block opened at {start}")]
    NonCodeToken { start: usize, at: usize, id: u32 },
    #[error("depth start marker at {at} inside the block opened at {start}")]
    NestedStart { start: usize, at: usize },
    #[error("depth block opened at {start} is never closed ({found} code tokens before the stream ends)")]
    Unterminated { start: usize, found: usize },
    #[error("depth end marker at {at} without a start marker")]
    EndWithoutStart { at: usize },
    #[error("depth code token at {at} outside a depth block")]
    CodeOutsideBlock { at: usize },
    #[error("second depth block at {at}; the first one opened at {first} (one block per answer)")]
    SecondBlock { first: usize, at: usize },
}

impl DepthTokenIds {
    /// Codes per block (gh·gw).
    pub fn num_codes(&self) -> usize {
        self.grid.0 * self.grid.1
    }

    /// Code index of a token id, if it is a code token.
    pub fn code_index(&self, id: u32) -> Option<u32> {
        self.code_of.get(&id).copied()
    }

    /// Find the depth block of a generated stream: `Ok(None)` when there is none, the block when
    /// there is exactly one well-formed block, an error naming the first violation otherwise.
    pub fn parse(&self, ids: &[u32]) -> Result<Option<DepthBlock>, DepthParseError> {
        let n = self.num_codes();
        let mut found: Option<DepthBlock> = None;
        let mut open: Option<(usize, Vec<u32>)> = None;
        for (at, &id) in ids.iter().enumerate() {
            match open.as_mut() {
                None => {
                    if id == self.start {
                        if let Some(b) = &found {
                            return Err(DepthParseError::SecondBlock { first: b.start_pos, at });
                        }
                        open = Some((at, Vec::with_capacity(n)));
                    } else if id == self.end {
                        return Err(DepthParseError::EndWithoutStart { at });
                    } else if self.code_of.contains_key(&id) {
                        return Err(DepthParseError::CodeOutsideBlock { at });
                    }
                }
                Some((start, codes)) => {
                    let start = *start;
                    if let Some(k) = self.code_index(id) {
                        if codes.len() == n {
                            return Err(DepthParseError::TooManyCodes { start, at, expected: n });
                        }
                        codes.push(k);
                    } else if id == self.end {
                        if codes.len() < n {
                            return Err(DepthParseError::TooFewCodes {
                                start,
                                at,
                                found: codes.len(),
                                expected: n,
                            });
                        }
                        let codes = std::mem::take(codes);
                        found = Some(DepthBlock {
                            start_pos: start,
                            end_pos: at,
                            codes,
                            grid: self.grid,
                        });
                        open = None;
                    } else if id == self.start {
                        return Err(DepthParseError::NestedStart { start, at });
                    } else {
                        return Err(DepthParseError::NonCodeToken { start, at, id });
                    }
                }
            }
        }
        if let Some((start, codes)) = open {
            return Err(DepthParseError::Unterminated {
                start,
                found: codes.len(),
            });
        }
        Ok(found)
    }
}

/// What the next token may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allowed<'a> {
    Any,
    Only(&'a [u32]),
    AllExcept(&'a [u32]),
}

impl Allowed<'_> {
    pub fn permits(&self, id: u32) -> bool {
        match self {
            Allowed::Any => true,
            Allowed::Only(s) => s.contains(&id),
            Allowed::AllExcept(s) => !s.contains(&id),
        }
    }

    /// Additive mask over a vocabulary: 0 where allowed, −inf elsewhere (ids ≥ vocab ignored).
    pub fn mask(&self, vocab: usize) -> Vec<f32> {
        let (base, mark, ids) = match self {
            Allowed::Any => return vec![0.0; vocab],
            Allowed::Only(s) => (f32::NEG_INFINITY, 0.0, *s),
            Allowed::AllExcept(s) => (0.0, f32::NEG_INFINITY, *s),
        };
        let mut m = vec![base; vocab];
        for &id in ids {
            if let Some(v) = m.get_mut(id as usize) {
                *v = mark;
            }
        }
        m
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Free text before the block: anything but code tokens and the end marker.
    Before,
    /// Inside the block with this many codes emitted.
    Codes(usize),
    /// All codes emitted: only the end marker.
    End,
    /// Free text after the block: anything but depth tokens (one block per answer).
    After,
}

/// Constrained decoding for depth blocks: after the start marker exactly gh·gw code tokens,
/// then the end marker, then free text again.
#[derive(Debug, Clone)]
pub struct DepthConstraint {
    ids: DepthTokenIds,
    state: State,
    end_only: [u32; 1],
    banned_before: Vec<u32>,
    banned_after: Vec<u32>,
    /// The additive mask of each state kind (before, codes, end, after), built once on the
    /// logits' device so a decode step uploads nothing.
    masks: std::cell::RefCell<[Option<Tensor>; 4]>,
}

impl DepthConstraint {
    pub fn new(ids: DepthTokenIds) -> Self {
        let mut banned_before = ids.codes.clone();
        banned_before.push(ids.end);
        let mut banned_after = banned_before.clone();
        banned_after.push(ids.start);
        banned_before.sort_unstable();
        banned_after.sort_unstable();
        Self {
            end_only: [ids.end],
            state: State::Before,
            ids,
            banned_before,
            banned_after,
            masks: Default::default(),
        }
    }

    /// Tokens permitted at the next step.
    pub fn allowed(&self) -> Allowed<'_> {
        match self.state {
            State::Before => Allowed::AllExcept(&self.banned_before),
            State::Codes(_) => Allowed::Only(&self.ids.codes),
            State::End => Allowed::Only(&self.end_only),
            State::After => Allowed::AllExcept(&self.banned_after),
        }
    }

    /// True while a block is open (the decoder must not stop here).
    pub fn in_block(&self) -> bool {
        matches!(self.state, State::Codes(_) | State::End)
    }

    /// True once a complete block has been emitted.
    pub fn block_done(&self) -> bool {
        self.state == State::After
    }

    /// Record the emitted token; an id the constraint did not allow is refused (state unchanged).
    pub fn step(&mut self, id: u32) -> Result<(), String> {
        if !self.allowed().permits(id) {
            return Err(format!(
                "token id {id} is not allowed in depth-decoding state {:?}",
                self.state
            ));
        }
        let n = self.ids.num_codes();
        self.state = match self.state {
            State::Before if id == self.ids.start => State::Codes(0),
            State::Codes(k) if k + 1 == n => State::End,
            State::Codes(k) => State::Codes(k + 1),
            State::End => State::After,
            s => s,
        };
        Ok(())
    }
}

/// Constrained decoding plugs the constraint into the generation loop directly.
impl crate::models::generate::LogitsConstraint for DepthConstraint {
    /// Logits with every token the constraint forbids set to −inf; logits are (…, vocab).
    fn apply(&self, logits: &Tensor) -> candle_core::Result<Tensor> {
        let allowed = self.allowed();
        if allowed == Allowed::Any {
            return Ok(logits.clone());
        }
        let kind = match self.state {
            State::Before => 0,
            State::Codes(_) => 1,
            State::End => 2,
            State::After => 3,
        };
        let vocab = logits.dim(D::Minus1)?;
        let cached = self.masks.borrow()[kind]
            .as_ref()
            .filter(|m| {
                m.dim(0).ok() == Some(vocab) && m.dtype() == logits.dtype() && m.device().same_device(logits.device())
            })
            .cloned();
        let mask = match cached {
            Some(m) => m,
            None => {
                let m = allowed_mask(vocab, &allowed, logits)?;
                self.masks.borrow_mut()[kind] = Some(m.clone());
                m
            }
        };
        logits.broadcast_add(&mask)
    }

    /// The loop only feeds tokens `apply` allowed; anything else leaves the state unchanged.
    fn advance(&mut self, id: u32) {
        let _ = self.step(id);
    }
}

/// Mask `logits` (…, vocab) to `allowed`; an `Only` set that names no id inside the vocabulary
/// is an error (the step would have no valid token).
pub fn apply_allowed(logits: &Tensor, allowed: &Allowed) -> candle_core::Result<Tensor> {
    if *allowed == Allowed::Any {
        return Ok(logits.clone());
    }
    let vocab = logits.dim(D::Minus1)?;
    logits.broadcast_add(&allowed_mask(vocab, allowed, logits)?)
}

/// The additive (vocab,) mask of `allowed` on the device and in the dtype of `like`.
fn allowed_mask(vocab: usize, allowed: &Allowed, like: &Tensor) -> candle_core::Result<Tensor> {
    if let Allowed::Only(s) = allowed {
        if !s.iter().any(|&id| (id as usize) < vocab) {
            candle_core::bail!("depth constraint: no allowed token id is below the vocabulary size {vocab}")
        }
    }
    Tensor::from_vec(allowed.mask(vocab), vocab, like.device())?.to_dtype(like.dtype())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::generate::LogitsConstraint;

    /// Vocabulary: 0..10 text, 10 start, 11 end, 12.. codes (K = 5), grid 2×3.
    fn ids() -> DepthTokenIds {
        let spec = DepthTokenSpec {
            grid: (2, 3),
            codebook_size: 5,
            ..Default::default()
        };
        spec.resolve_with(|s| match s {
            "<DEPTH_START>" => Some(10),
            "<DEPTH_END>" => Some(11),
            _ => s
                .strip_prefix("<DEPTH_")?
                .strip_suffix('>')?
                .parse::<u32>()
                .ok()
                .filter(|&k| k < 5)
                .map(|k| 12 + k),
        })
        .unwrap()
    }

    #[test]
    fn parses_one_block_row_major() {
        let t = ids();
        let s = [1, 2, 10, 12, 13, 14, 15, 16, 12, 11, 3];
        let b = t.parse(&s).unwrap().unwrap();
        assert_eq!((b.start_pos, b.end_pos, b.grid), (2, 9, (2, 3)));
        assert_eq!(b.codes, vec![0, 1, 2, 3, 4, 0]);
        assert_eq!(t.parse(&[1, 2, 3]).unwrap(), None);
    }

    #[test]
    fn parse_errors_are_specific() {
        let t = ids();
        use DepthParseError::*;
        let e = |s: &[u32]| t.parse(s).unwrap_err();
        assert_eq!(
            e(&[10, 12, 12, 11]),
            TooFewCodes {
                start: 0,
                at: 3,
                found: 2,
                expected: 6
            }
        );
        assert_eq!(
            e(&[10, 12, 12, 12, 12, 12, 12, 12, 11]),
            TooManyCodes {
                start: 0,
                at: 7,
                expected: 6
            }
        );
        assert_eq!(e(&[0, 10, 12, 3, 11]), NonCodeToken { start: 1, at: 3, id: 3 });
        assert_eq!(e(&[10, 12, 10]), NestedStart { start: 0, at: 2 });
        assert_eq!(e(&[0, 10, 12, 12]), Unterminated { start: 1, found: 2 });
        assert_eq!(e(&[0, 11]), EndWithoutStart { at: 1 });
        assert_eq!(e(&[0, 13]), CodeOutsideBlock { at: 1 });
        let two = [10, 12, 12, 12, 12, 12, 12, 11, 0, 10];
        assert_eq!(e(&two), SecondBlock { first: 0, at: 9 });
        assert!(e(&two).to_string().contains("second depth block"));
    }

    #[test]
    fn resolve_names_missing_tokens_and_checks_spec() {
        let spec = DepthTokenSpec::default();
        let err = spec
            .resolve_with(|s| (s == "<DEPTH_START>").then_some(1))
            .unwrap_err()
            .to_string();
        assert!(err.contains("<DEPTH_END>") && err.contains("129 missing"), "{err}");
        let bad = DepthTokenSpec {
            code_format: "<D>".into(),
            ..Default::default()
        };
        assert!(bad
            .resolve_with(|_| Some(0))
            .unwrap_err()
            .to_string()
            .contains("code_format"));
        let dup = spec.resolve_with(|_| Some(7)).unwrap_err().to_string();
        assert!(dup.contains("more than one"), "{dup}");
    }

    #[test]
    fn resolves_against_a_tokenizer() {
        use tokenizers::models::wordlevel::WordLevel;
        let spec = DepthTokenSpec {
            codebook_size: 3,
            grid: (1, 2),
            ..Default::default()
        };
        let mut vocab: HashMap<String, u32> = HashMap::new();
        for (i, t) in [
            "<unk>",
            "<DEPTH_START>",
            "<DEPTH_END>",
            "<DEPTH_0>",
            "<DEPTH_1>",
            "<DEPTH_2>",
        ]
        .iter()
        .enumerate()
        {
            vocab.insert(t.to_string(), i as u32);
        }
        let model = WordLevel::builder()
            .vocab(vocab.into_iter().collect())
            .unk_token("<unk>".into())
            .build()
            .unwrap();
        let tok: crate::models::tokenizer::Tokenizer = tokenizers::Tokenizer::new(model).into();
        let r = spec.resolve(&tok).unwrap();
        assert_eq!((r.start, r.end, r.codes.clone()), (1, 2, vec![3, 4, 5]));
        let more = DepthTokenSpec {
            codebook_size: 4,
            ..spec
        };
        assert!(more.resolve(&tok).unwrap_err().to_string().contains("<DEPTH_3>"));
    }

    /// xorshift64*: deterministic pseudo-random numbers for the tests.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn unit(&mut self) -> f32 {
            (self.next() >> 40) as f32 / (1u64 << 24) as f32
        }
    }

    #[test]
    fn random_logits_under_the_constraint_make_a_well_formed_block() {
        let t = ids();
        let vocab = 20;
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut blocks = 0;
        for trial in 0..300 {
            let mut c = DepthConstraint::new(t.clone());
            let mut stream = Vec::new();
            for step in 0..40 {
                // Bias towards the depth tokens so most trials open a block early.
                let raw: Vec<f32> = (0..vocab)
                    .map(|i| 4.0 * rng.unit() + if i >= 10 { 1.5 } else { 0.0 })
                    .collect();
                let logits = Tensor::from_vec(raw, (1, vocab), &candle_core::Device::Cpu).unwrap();
                let masked = c.apply(&logits).unwrap();
                let id = masked
                    .argmax(D::Minus1)
                    .unwrap()
                    .squeeze(0)
                    .unwrap()
                    .to_scalar::<u32>()
                    .unwrap();
                c.step(id).unwrap_or_else(|e| panic!("trial {trial} step {step}: {e}"));
                stream.push(id);
                // The decoder may stop at any step outside the block (EOS is free text).
                if !c.in_block() && rng.unit() < 0.02 {
                    break;
                }
            }
            while c.in_block() {
                let id = match c.allowed() {
                    Allowed::Only(s) => s[(rng.next() % s.len() as u64) as usize],
                    _ => unreachable!(),
                };
                c.step(id).unwrap();
                stream.push(id);
            }
            match t.parse(&stream) {
                Ok(Some(b)) => {
                    blocks += 1;
                    assert_eq!(b.codes.len(), 6);
                    assert!(c.block_done());
                }
                Ok(None) => assert!(!c.block_done()),
                Err(e) => panic!("trial {trial}: {e} in {stream:?}"),
            }
        }
        assert!(blocks > 200, "only {blocks} trials produced a block");
    }

    #[test]
    fn constraint_refuses_disallowed_ids_and_masks_logits() {
        let t = ids();
        let mut c = DepthConstraint::new(t);
        assert!(c.step(11).is_err() && c.step(12).is_err());
        c.step(10).unwrap();
        assert!(c.in_block());
        assert!(c.step(3).is_err());
        let l = Tensor::zeros((2, 20), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
        let m: Vec<Vec<f32>> = c.apply(&l).unwrap().to_vec2().unwrap();
        for row in m {
            for (i, v) in row.iter().enumerate() {
                assert_eq!(v.is_finite(), (12..17).contains(&i), "id {i}");
            }
        }
        let tiny = Tensor::zeros(5, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
        assert!(c.apply(&tiny).is_err());
    }
}
