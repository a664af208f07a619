//! Build a `tokenizers` BPE tokenizer from tiktoken rank files (Qwen's `qwen.tiktoken`), the
//! way transformers' `TikTokenConverter` does: byte-level vocab, merges = every split of a
//! token into two tokens ordered by the merged token's rank, the pre-tokenizer regex split
//! (isolated) then byte-level, an NFC normaliser as Qwen2's tokenizer.json has, and special
//! tokens appended in order.

use crate::error::{Error, Result};
use base64::Engine;
use std::collections::HashMap;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

/// GPT-2's reversible byte → printable-char map used by byte-level BPE vocabularies.
fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut n = 0u32;
    for b in 0u32..256 {
        table[b as usize] = if printable(b) {
            char::from_u32(b).unwrap()
        } else {
            n += 1;
            char::from_u32(255 + n).unwrap()
        };
    }
    table
}

/// Parse a tiktoken ranks file ("base64 rank" per line).
pub fn parse_ranks(text: &str) -> Result<Vec<(Vec<u8>, u32)>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let mut it = line.split_whitespace();
        let (Some(b64), Some(rank)) = (it.next(), it.next()) else {
            return Err(Error::at(
                format!("tiktoken ranks line {}", i + 1),
                "expected `base64 rank`",
            ));
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| Error::at(format!("tiktoken ranks line {}", i + 1), e.to_string()))?;
        let rank: u32 = rank
            .parse()
            .map_err(|_| Error::at(format!("tiktoken ranks line {}", i + 1), "bad rank"))?;
        out.push((bytes, rank));
    }
    Ok(out)
}

/// A tokenizer from ranks, the pre-tokenizer `pattern`, and special tokens (ids follow the ranks).
pub fn tokenizer_from_ranks(ranks: &[(Vec<u8>, u32)], pattern: &str, specials: &[&str]) -> Result<Tokenizer> {
    let table = bytes_to_unicode();
    let to_str = |b: &[u8]| -> String { b.iter().map(|&x| table[x as usize]).collect() };
    let by_bytes: HashMap<&[u8], u32> = ranks.iter().map(|(b, r)| (b.as_slice(), *r)).collect();
    let mut vocab = Vocab::default();
    let mut merges: Vec<(u32, u32, u32, usize, usize)> = Vec::new(); // (rank, rank_l, rank_r, token index, split)
    for (idx, (tok, rank)) in ranks.iter().enumerate() {
        vocab.insert(to_str(tok), *rank);
        for i in 1..tok.len() {
            if let (Some(&rl), Some(&rr)) = (by_bytes.get(&tok[..i]), by_bytes.get(&tok[i..])) {
                merges.push((*rank, rl, rr, idx, i));
            }
        }
    }
    merges.sort_unstable();
    let merges: Vec<(String, String)> = merges
        .iter()
        .map(|&(_, _, _, idx, i)| (to_str(&ranks[idx].0[..i]), to_str(&ranks[idx].0[i..])))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .fuse_unk(false)
        .ignore_merges(true)
        .build()
        .map_err(|e| Error::at("tiktoken", format!("cannot build BPE: {e}")))?;
    let mut tk = Tokenizer::new(bpe);
    let split = Split::new(
        SplitPattern::Regex(pattern.to_string()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(|e| Error::at("tiktoken", format!("bad pattern: {e}")))?;
    tk.with_pre_tokenizer(Some(Sequence::new(vec![
        split.into(),
        ByteLevel::new(false, false, false).into(),
    ])));
    tk.with_normalizer(Some(NFC))
        .map_err(|e| Error::at("tiktoken", e.to_string()))?;
    tk.with_decoder(Some(ByteLevelDecoder::default()));
    let added: Vec<AddedToken> = specials.iter().map(|s| AddedToken::from(s.to_string(), true)).collect();
    tk.add_special_tokens(added)
        .map_err(|e| Error::at("tiktoken", e.to_string()))?;
    Ok(tk)
}
