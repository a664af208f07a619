//! Answer extraction for multiple-choice predictions without an LLM judge.
//!
//! `vlmevalkit` is VLMEvalKit's `can_infer` (vlmeval/utils/matching_util.py) as of 2026-08
//! (punctuation stripping, letter only within the last 4 tokens, refusal phrases → 'Z',
//! "answer is X" regex, option-text match with a length cap). `legacy` is lmms-eval's
//! `MMBench_Evaluator.can_infer` (the older OpenCompass rules: bare letter tokens or
//! prefix/suffix forms such as "(A)" and "A.", option text without a cap).

use super::pyfmt::py_split;
use regex::Regex;
use std::collections::BTreeMap;
use std::sync::LazyLock;

/// Which matching rules to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Matcher {
    /// VLMEvalKit `can_infer` (2026-08).
    Vlmevalkit,
    /// lmms-eval's older OpenCompass rules.
    Legacy,
}

/// Options of one question: letter → option text, only the non-NaN ones, in letter order.
pub type Choices = BTreeMap<char, String>;

const REFUSALS: [&str; 4] = [
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
];

static VERBOSE_ANSWER: LazyLock<Regex> = LazyLock::new(|| {
    // `\s` widened to Python's str whitespace (adds U+001C..U+001F).
    Regex::new(r"(?i)(?:correct[\s\x1c-\x1f]+)?answer[\s\x1c-\x1f]+is[\s\x1c-\x1f]+\**([ABCD])\**").unwrap()
});

/// The letter a prediction names, or `None` when it cannot be inferred.
/// 'Z' means the model refused (always wrong).
pub fn can_infer(matcher: Matcher, answer: &str, choices: &Choices) -> Option<char> {
    match matcher {
        Matcher::Vlmevalkit => can_infer_option(answer, choices).or_else(|| can_infer_text(answer, choices, true)),
        Matcher::Legacy => legacy_option(answer).or_else(|| {
            let abcd: Choices = choices
                .iter()
                .filter(|(k, _)| ('A'..='D').contains(k))
                .map(|(k, v)| (*k, v.clone()))
                .collect();
            can_infer_text(answer, &abcd, false)
        }),
    }
}

fn can_infer_option(answer: &str, choices: &Choices) -> Option<char> {
    if answer.contains("Failed to obtain answer via API") {
        return None;
    }
    if REFUSALS.iter().any(|r| answer.contains(r)) {
        return Some('Z');
    }
    let stripped: String = answer
        .chars()
        .map(|c| if ".()[],:;!*#{}".contains(c) { ' ' } else { c })
        .collect();
    let splits = py_split(&stripped);
    let has = |tok: &str| splits.contains(&tok);
    let mut buf = [0u8; 4];
    let count = choices.keys().filter(|c| has(c.encode_utf8(&mut buf))).count();
    if count == 1 {
        for c in choices.keys() {
            let tok: &str = c.encode_utf8(&mut buf);
            if let Some(pos) = splits.iter().position(|t| *t == tok) {
                // Python: splits.index(ch) > len(splits) - 5
                if pos as i64 > splits.len() as i64 - 5 {
                    return Some(*c);
                }
            }
        }
    } else if count == 0 && has("Z") {
        return Some('Z');
    }
    if let Some(m) = VERBOSE_ANSWER.captures(answer) {
        let l = m[1].chars().next().unwrap().to_ascii_uppercase();
        if choices.contains_key(&l) {
            return Some(l);
        }
    }
    None
}

fn legacy_option(answer: &str) -> Option<char> {
    const LETTERS: [char; 5] = ['A', 'B', 'C', 'D', 'E'];
    if answer.contains("Failed to obtain answer via API") {
        return None;
    }
    let splits = py_split(answer);
    let count = |pre: &str, suf: &str| {
        LETTERS
            .iter()
            .filter(|c| splits.contains(&format!("{pre}{c}{suf}").as_str()))
            .count()
    };
    if count("", "") == 1 {
        for c in LETTERS {
            if splits.contains(&"A") && splits.len() > 3 {
                break; // "A" may be a quantifier
            }
            if splits.contains(&c.to_string().as_str()) {
                return Some(c);
            }
        }
    }
    const TUPS: [(&str, &str); 12] = [
        ("", "."),
        ("", ","),
        ("", ":"),
        ("", ")"),
        ("", ")."),
        ("(", ")"),
        ("(", ")."),
        (":", ""),
        (":", ","),
        (":", "."),
        (":", ")"),
        (":", ")."),
    ];
    for (pre, suf) in TUPS {
        if count(pre, suf) == 1 {
            for c in LETTERS {
                if splits.contains(&format!("{pre}{c}{suf}").as_str()) {
                    return Some(c);
                }
            }
        }
    }
    None
}

/// Option text contained in the answer (case-insensitive), when exactly one option matches.
/// With `cap`, answers longer than twice the total option length are not matched (VLMEvalKit).
fn can_infer_text(answer: &str, choices: &Choices, cap: bool) -> Option<char> {
    let answer = answer.to_lowercase();
    if cap {
        let total: usize = choices.values().map(|v| v.chars().count()).sum();
        if answer.chars().count() > 2 * total {
            return None;
        }
    }
    let mut cands = choices
        .iter()
        .filter(|(_, v)| answer.contains(&v.to_lowercase()))
        .map(|(k, _)| *k);
    match (cands.next(), cands.next()) {
        (Some(k), None) => Some(k),
        _ => None,
    }
}
