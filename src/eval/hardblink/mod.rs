//! HardBLINK (AURORA) relative-depth accuracy: 3-, 4- and 5-point variants of 124 items each.
//! There is no official scorer; the parse rules are perceptio's documented protocol.

use crate::error::{Error, Result};
use regex::Regex;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

/// The variants and their number of points.
pub const VARIANTS: [usize; 3] = [3, 4, 5];

static PAREN: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\(([A-E])\)").unwrap());
static PHRASE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)answer is (?:that )?point ([a-e])|point ([a-e]) is (?:the )?(?:closest|closer)").unwrap()
});

/// Extract the chosen letter from a free-form answer: (1) the last `(X)`; else (2) the last
/// "answer is (that )?point X" / "point X is (the )?closest|closer" (case-insensitive, the
/// letter read as uppercase); else (3) the only standalone token that is a single valid
/// uppercase letter (after stripping `.,:;!()[]`). `None` = unparsable.
pub fn parse_answer(text: &str, n_points: usize) -> Option<char> {
    if let Some(c) = PAREN.captures_iter(text).last() {
        return c[1].chars().next();
    }
    if let Some(c) = PHRASE.captures_iter(text).last() {
        let m = c.get(1).or_else(|| c.get(2)).expect("one group matches");
        return m.as_str().chars().next().map(|c| c.to_ascii_uppercase());
    }
    let valid = |c: char| c.is_ascii_uppercase() && ((c as u8 - b'A') as usize) < n_points;
    let mut found: Vec<char> = text
        .split_whitespace()
        .map(|t| t.trim_matches(|c: char| ".,:;!()[]".contains(c)))
        .filter_map(|t| {
            let mut it = t.chars();
            match (it.next(), it.next()) {
                (Some(c), None) if valid(c) => Some(c),
                _ => None,
            }
        })
        .collect();
    if found.len() == 1 {
        found.pop()
    } else {
        None
    }
}

#[derive(Deserialize)]
struct AnswerLine {
    question_id: serde_json::Value,
    text: String,
    #[serde(default)]
    prompt: Option<serde_json::Value>,
    #[serde(default)]
    model_id: Option<serde_json::Value>,
}

/// One line of an answers file: line number, question id, text, and LLaVA's `prompt` and
/// `model_id` when present (shown as provenance in reports).
struct Answer {
    line: usize,
    id: String,
    text: String,
    prompt: Option<String>,
    model: Option<String>,
}

/// Question ids appear as ints in AURORA's files; accept strings of digits as well.
fn qid(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::String(s) => Some(s.trim().to_string()),
        _ => None,
    }
}

fn read_answers(path: &Path) -> Result<Vec<Answer>> {
    let mut out = Vec::new();
    let text_of = |v: Option<serde_json::Value>| match v {
        Some(serde_json::Value::String(s)) if !s.is_empty() => Some(s),
        _ => None,
    };
    crate::util::jsonl::for_each::<AnswerLine, _>(path, |line, a| {
        let id = qid(&a.question_id)
            .ok_or_else(|| Error::at_line(path, line, "`question_id` must be an integer or a string"))?;
        out.push(Answer {
            line,
            id,
            text: a.text,
            prompt: text_of(a.prompt),
            model: text_of(a.model_id),
        });
        Ok(())
    })?;
    Ok(out)
}

/// How one item was judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemOutcome {
    Correct,
    Wrong,
    /// No parse rule found a letter.
    Unparsable,
    /// A letter beyond the variant's points (e.g. "(E)" on 4 points).
    OutOfRange,
    /// No prediction line for the question.
    Missing,
}

/// Per-item record (`eval hardblink --per-sample`): what was answered, read and expected.
#[derive(Debug, Clone, Serialize)]
pub struct ItemResult {
    /// Number of points (2 for BLINK Relative_Depth items of `--blink2`).
    pub variant: usize,
    /// The question id as in the files (an integer when it is one).
    pub question_id: serde_json::Value,
    /// The raw prediction text (`null` when missing).
    pub output: Option<String>,
    pub parsed: Option<char>,
    pub gold: char,
    pub correct: bool,
    pub outcome: ItemOutcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

fn id_json(id: &str) -> serde_json::Value {
    match id.parse::<i64>() {
        Ok(n) => serde_json::Value::from(n),
        Err(_) => serde_json::Value::from(id),
    }
}

/// Judge one answer against the gold letter of an n-point item.
fn judge(text: Option<&str>, gold: char, n: usize) -> (Option<char>, ItemOutcome) {
    let Some(text) = text else {
        return (None, ItemOutcome::Missing);
    };
    let parsed = parse_answer(text, n);
    let outcome = match parsed {
        None => ItemOutcome::Unparsable,
        Some(c) if ((c as u8 - b'A') as usize) >= n => ItemOutcome::OutOfRange,
        Some(c) if c == gold => ItemOutcome::Correct,
        Some(_) => ItemOutcome::Wrong,
    };
    (parsed, outcome)
}

/// Per-variant result.
#[derive(Debug, Clone, Serialize)]
pub struct VariantScore {
    pub points: usize,
    pub items: usize,
    pub correct: usize,
    pub accuracy: f64,
    pub unparsable: usize,
    pub missing: usize,
    pub out_of_range: usize,
    pub predictions_file: PathBuf,
    /// Every item in gold order (written by `--per-sample`).
    #[serde(skip)]
    pub results: Vec<ItemResult>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Accuracy per variant, keyed "3", "4", "5".
    pub variants: BTreeMap<String, f64>,
    /// Mean of the three variants.
    pub mean: f64,
    /// Unparsable answers over all variants.
    pub unparsable: usize,
    /// Mean of BLINK 2-point and the three variants, as AURORA's table averages (with `--blink2`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aurora_mean: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blink2: Option<VariantScore>,
    pub details: Vec<VariantScore>,
}

impl Report {
    /// All items: the 3/4/5-point variants in order, then the BLINK 2-point items.
    pub fn items(&self) -> impl Iterator<Item = &ItemResult> {
        self.details
            .iter()
            .chain(self.blink2.as_ref())
            .flat_map(|d| d.results.iter())
    }
}

/// The predictions file for one variant: exactly one `blink_{N}pointscenter*.jsonl` in `dir`.
pub fn find_predictions(dir: &Path, n: usize) -> Result<PathBuf> {
    let prefix = format!("blink_{n}pointscenter");
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut found: Vec<PathBuf> = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) && name.ends_with(".jsonl") {
            found.push(entry.path());
        }
    }
    found.sort();
    match found.len() {
        1 => Ok(found.pop().unwrap()),
        0 => Err(Error::input(
            dir,
            format!("no predictions file {prefix}*.jsonl for the {n}-point variant"),
        )),
        _ => Err(Error::input(
            dir,
            format!(
                "several predictions files for the {n}-point variant: {}",
                found
                    .iter()
                    .map(|p| p.file_name().unwrap().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

/// Ground-truth letters from an answers file (`"text": "(A)"`).
fn read_gold(path: &Path, n: usize) -> Result<Vec<(String, char)>> {
    let mut gold = Vec::new();
    let mut seen = HashMap::new();
    for Answer { line, id, text, .. } in read_answers(path)? {
        let t = text.trim();
        let letter = t.strip_prefix('(').and_then(|s| s.strip_suffix(')')).unwrap_or(t);
        let mut cs = letter.chars();
        let c = match (cs.next(), cs.next()) {
            (Some(c), None) if c.is_ascii_uppercase() && ((c as u8 - b'A') as usize) < n => c,
            _ => {
                return Err(Error::at_line(
                    path,
                    line,
                    format!(
                        "gold answer {text:?} is not one of (A)..({})",
                        (b'A' + n as u8 - 1) as char
                    ),
                ))
            }
        };
        if let Some(prev) = seen.insert(id.clone(), line) {
            return Err(Error::at_line(
                path,
                line,
                format!("question_id {id} already on line {prev}"),
            ));
        }
        gold.push((id, c));
    }
    if gold.is_empty() {
        return Err(Error::input(path, "no answers"));
    }
    Ok(gold)
}

/// Score one variant: gold from `gold_path`, predictions from `pred_path` (LLaVA answers form).
pub fn score_variant(gold_path: &Path, pred_path: &Path, n: usize) -> Result<VariantScore> {
    let gold = read_gold(gold_path, n)?;
    let gold_ids: HashMap<&str, char> = gold.iter().map(|(id, c)| (id.as_str(), *c)).collect();
    let mut preds: HashMap<String, Answer> = HashMap::new();
    for a in read_answers(pred_path)? {
        if !gold_ids.contains_key(a.id.as_str()) {
            return Err(Error::at_line(
                pred_path,
                a.line,
                format!("question_id {} is not in {}", a.id, gold_path.display()),
            ));
        }
        let (line, id) = (a.line, a.id.clone());
        if let Some(prev) = preds.insert(id.clone(), a) {
            return Err(Error::at_line(
                pred_path,
                line,
                format!("question_id {id} already answered on line {}", prev.line),
            ));
        }
    }
    let items: Vec<ItemResult> = gold
        .iter()
        .map(|(id, g)| {
            let a = preds.get(id);
            let (parsed, outcome) = judge(a.map(|a| a.text.as_str()), *g, n);
            ItemResult {
                variant: n,
                question_id: id_json(id),
                output: a.map(|a| a.text.clone()),
                parsed,
                gold: *g,
                correct: outcome == ItemOutcome::Correct,
                outcome,
                prompt: a.and_then(|a| a.prompt.clone()),
                model: a.and_then(|a| a.model.clone()),
            }
        })
        .collect();
    Ok(tally(n, items, pred_path))
}

/// Count the outcomes of one variant's items.
fn tally(n: usize, items: Vec<ItemResult>, pred_path: &Path) -> VariantScore {
    let count = |o: ItemOutcome| items.iter().filter(|i| i.outcome == o).count();
    let correct = count(ItemOutcome::Correct);
    VariantScore {
        points: n,
        items: items.len(),
        correct,
        accuracy: correct as f64 / items.len() as f64,
        unparsable: count(ItemOutcome::Unparsable),
        missing: count(ItemOutcome::Missing),
        out_of_range: count(ItemOutcome::OutOfRange),
        predictions_file: pred_path.to_path_buf(),
        results: items,
    }
}

/// Score the AURORA layout `root/answers/blink_{N}pointscenter_answers.jsonl` against the
/// predictions in `pred_dir`; `blink2` is an optional JSONL of BLINK 2-point items carrying
/// both the gold `answer` and the prediction `text` (see docs/formats.md).
pub fn score(root: &Path, pred_dir: &Path, blink2: Option<&Path>) -> Result<Report> {
    let mut details = Vec::new();
    for n in VARIANTS {
        let gold = root
            .join("answers")
            .join(format!("blink_{n}pointscenter_answers.jsonl"));
        if !gold.is_file() {
            return Err(Error::input(&gold, "missing HardBLINK answers file (expected the AURORA layout answers/blink_{3,4,5}pointscenter_answers.jsonl)"));
        }
        let pred = find_predictions(pred_dir, n)?;
        details.push(score_variant(&gold, &pred, n)?);
    }
    let variants = details.iter().map(|d| (d.points.to_string(), d.accuracy)).collect();
    let mean = details.iter().map(|d| d.accuracy).sum::<f64>() / details.len() as f64;
    let unparsable = details.iter().map(|d| d.unparsable).sum();
    let blink2 = blink2.map(score_blink2).transpose()?;
    let aurora_mean = blink2
        .as_ref()
        .map(|b| (b.accuracy + details.iter().map(|d| d.accuracy).sum::<f64>()) / 4.0);
    Ok(Report {
        variants,
        mean,
        unparsable,
        aurora_mean,
        blink2,
        details,
    })
}

#[derive(Deserialize)]
struct Blink2Line {
    #[serde(alias = "idx")]
    question_id: serde_json::Value,
    answer: String,
    #[serde(alias = "prediction")]
    text: String,
}

/// BLINK Relative_Depth (2 points): each line `{"question_id"|"idx", "answer": "(A)", "text"|"prediction"}`.
pub fn score_blink2(path: &Path) -> Result<VariantScore> {
    let mut items = Vec::new();
    let mut seen = HashMap::new();
    crate::util::jsonl::for_each::<Blink2Line, _>(path, |line, b| {
        let id = qid(&b.question_id).ok_or_else(|| Error::at_line(path, line, "bad `question_id`/`idx`"))?;
        if let Some(prev) = seen.insert(id.clone(), line) {
            return Err(Error::at_line(path, line, format!("item {id} already on line {prev}")));
        }
        let g = b
            .answer
            .trim()
            .trim_start_matches('(')
            .trim_end_matches(')')
            .to_string();
        if g != "A" && g != "B" {
            return Err(Error::at_line(
                path,
                line,
                format!("gold answer {:?} is not (A) or (B)", b.answer),
            ));
        }
        let gold = g.chars().next().expect("A or B");
        let (parsed, outcome) = judge(Some(&b.text), gold, 2);
        items.push(ItemResult {
            variant: 2,
            question_id: id_json(&id),
            output: Some(b.text),
            parsed,
            gold,
            correct: outcome == ItemOutcome::Correct,
            outcome,
            prompt: None,
            model: None,
        });
        Ok(())
    })?;
    if items.is_empty() {
        return Err(Error::input(path, "no BLINK items"));
    }
    Ok(tally(2, items, path))
}
