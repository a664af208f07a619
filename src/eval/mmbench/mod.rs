//! MMBench CircularEval scoring, reproducing VLMEvalKit's `mcq_circular_eval` + `report_acc`
//! with exact matching (no LLM judge: an answer no rule can read counts as wrong).

pub mod matching;
pub mod pyfmt;
pub mod table;

use crate::error::{Error, Result};
use matching::{can_infer, Choices, Matcher};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use table::Table;

/// Rotations of a question are stored at `index + k·1e6`.
pub const CIRCULAR_OFFSET: i64 = 1_000_000;

/// What a question whose main (unrotated) row has no prediction counts as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MissingPolicy {
    /// Wrong, and kept in the denominator.
    Strict,
    /// Dropped from the denominator, as VLMEvalKit does.
    Vlmevalkit,
}

/// VLMEvalKit's abbreviations of MMBench's L2 categories (used in the `_acc.csv` table).
pub fn l2_abbreviation(name: &str) -> &str {
    match name {
        "coarse_perception" => "CP",
        "finegrained_perception (instance-level)" => "FP-S",
        "finegrained_perception (cross-instance)" => "FP-C",
        "logic_reasoning" => "LR",
        "relation_reasoning" => "RR",
        "attribute_reasoning" => "AR",
        other => other,
    }
}

/// One row of the annotation TSV, as the scorer needs it.
#[derive(Debug, Clone)]
pub struct Row {
    pub index: i64,
    /// The question this row is a rotation of: the `g_index` column when the TSV has one
    /// (VLMEvalKit's `circular` tool writes it), else `index mod 1e6`.
    pub g_index: i64,
    pub answer: Option<String>,
    pub choices: Choices,
    pub category: Option<String>,
    pub l2_category: Option<String>,
    pub split: Option<String>,
}

/// The annotation file: rows by index.
pub struct Annotations {
    pub rows: BTreeMap<i64, Row>,
    pub has_category: bool,
    pub has_l2: bool,
}

/// Read MMBench's TSV (`index`, `answer`, option columns `A`..`Z`, `category`,
/// `l2-category`/`L2-category`, `split`; images are ignored).
pub fn read_annotations(path: &Path) -> Result<Annotations> {
    let t = table::read_tsv(path)?;
    if t.is_empty() {
        return Err(Error::input(path, "no rows"));
    }
    let idx = t.indices(path)?;
    let answer = t.column("answer").ok_or_else(|| {
        Error::input(path, "missing column `answer`: MMBench TEST files carry no answers and can only be scored by the OpenCompass server")
    })?;
    let letters: Vec<(char, &[Option<String>])> = ('A'..='Z')
        .filter_map(|c| t.column(&c.to_string()).map(|col| (c, col)))
        .collect();
    if letters.is_empty() {
        return Err(Error::input(path, "missing option columns `A`, `B`, ..."));
    }
    let category = t.column("category");
    let l2 = t.column("l2-category");
    let split = t.column("split");
    let g_index: Option<Vec<i64>> = match t.column("g_index") {
        Some(col) => Some(
            col.iter()
                .zip(&t.lines)
                .map(|(v, &line)| {
                    v.as_deref()
                        .and_then(|s| s.parse::<f64>().ok())
                        .filter(|f| f.fract() == 0.0)
                        .map(|f| f as i64)
                        .ok_or_else(|| Error::at_line(path, line, "`g_index` is not an integer"))
                })
                .collect::<Result<_>>()?,
        ),
        None => None,
    };
    let mut rows = BTreeMap::new();
    for i in 0..t.len() {
        let choices: Choices = letters
            .iter()
            .filter_map(|(c, col)| col[i].clone().map(|v| (*c, v)))
            .collect();
        let row = Row {
            index: idx[i],
            // Python's % is non-negative for a positive divisor
            g_index: g_index.as_ref().map_or(idx[i].rem_euclid(CIRCULAR_OFFSET), |g| g[i]),
            answer: answer[i].clone(),
            choices,
            category: category.and_then(|c| c[i].clone()),
            l2_category: l2.and_then(|c| c[i].clone()),
            split: split.and_then(|c| c[i].clone()),
        };
        if rows.insert(idx[i], row).is_some() {
            return Err(Error::at_line(
                path,
                t.lines[i],
                format!("index {} appears twice", idx[i]),
            ));
        }
    }
    Ok(Annotations {
        rows,
        has_category: category.is_some(),
        has_l2: l2.is_some(),
    })
}

/// Read predictions: JSONL `{"index": int, "prediction": str}`, or VLMEvalKit's own `.tsv` /
/// `.xlsx` with `index` and `prediction` columns. Values are as `str(x)` gives them
/// (a NaN prediction is the text "nan", as in VLMEvalKit).
pub fn read_predictions(path: &Path) -> Result<HashMap<i64, String>> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let put = |index: i64, pred: String, line: usize, out: &mut HashMap<i64, (usize, String)>| -> Result<()> {
        if let Some((prev, _)) = out.insert(index, (line, pred)) {
            return Err(Error::at_line(
                path,
                line,
                format!("index {index} already predicted on line {prev}"),
            ));
        }
        Ok(())
    };
    let mut with_lines: HashMap<i64, (usize, String)> = HashMap::new();
    match ext.as_str() {
        "tsv" | "xlsx" | "xls" | "xlsm" | "ods" => {
            let t: Table = if ext == "tsv" {
                table::read_tsv(path)?
            } else {
                table::read_xlsx(path)?
            };
            let idx = t.indices(path)?;
            let pred = t.require("prediction", path)?;
            for i in 0..t.len() {
                put(
                    idx[i],
                    pred[i].clone().unwrap_or_else(|| "nan".into()),
                    t.lines[i],
                    &mut with_lines,
                )?;
            }
        }
        _ => {
            crate::util::jsonl::for_each::<serde_json::Value, _>(path, |line, v| {
                let index = match v.get("index") {
                    Some(serde_json::Value::Number(n)) if n.as_i64().is_some() => n.as_i64().unwrap(),
                    Some(serde_json::Value::String(s)) if s.trim().parse::<i64>().is_ok() => s.trim().parse().unwrap(),
                    _ => return Err(Error::at_line(path, line, "missing integer `index`")),
                };
                let pred = match v.get("prediction") {
                    Some(serde_json::Value::String(s)) => s.clone(),
                    Some(serde_json::Value::Null) => "nan".into(),
                    Some(serde_json::Value::Number(n)) => n.to_string(),
                    _ => return Err(Error::at_line(path, line, "missing string `prediction`")),
                };
                put(index, pred, line, &mut with_lines)
            })?;
        }
    }
    Ok(with_lines.into_iter().map(|(k, (_, v))| (k, v)).collect())
}

/// How one question was judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every prediction row of the group resolved to its answer.
    Correct,
    /// Some row resolved to a wrong letter (or a refusal).
    Wrong,
    /// No wrong letter, but some row could not be read (a judge would be asked; here: wrong).
    Unresolved,
    /// The main row has no prediction (`--missing strict`).
    Missing,
}

/// Per-question record (for `--log-samples`-style analysis).
#[derive(Debug, Clone, Serialize)]
pub struct QuestionResult {
    pub index: i64,
    pub outcome: Outcome,
    pub hit: u8,
    /// Rows of the group that had predictions.
    pub rows: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub l2_category: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub split: Option<String>,
    /// Each predicted row of the group (main row and circular copies): the raw prediction, the
    /// letter the matcher read (`null` = unresolved) and the gold letter, for error analysis.
    pub answers: Vec<RowAnswer>,
}

/// One row's answer inside a [`QuestionResult`].
#[derive(Debug, Clone, Serialize)]
pub struct RowAnswer {
    pub index: i64,
    pub prediction: String,
    pub parsed: Option<char>,
    pub gold: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub overall: f64,
    /// Main questions in the denominator.
    pub questions: usize,
    pub l2_categories: BTreeMap<String, f64>,
    pub categories: BTreeMap<String, f64>,
    pub correct: usize,
    pub unresolved: usize,
    pub missing_main_predictions: usize,
    pub matcher: Matcher,
    pub missing: MissingPolicy,
    pub judge: &'static str,
    #[serde(skip)]
    pub results: Vec<QuestionResult>,
}

/// CircularEval: a question counts only if every rotation that has a prediction is answered
/// correctly. Predictions for indices not in the annotations are an error (VLMEvalKit asserts).
pub fn evaluate(
    ann: &Annotations,
    preds: &HashMap<i64, String>,
    matcher: Matcher,
    missing: MissingPolicy,
    pred_path: &Path,
) -> Result<Report> {
    let mut unknown: Vec<i64> = preds.keys().filter(|k| !ann.rows.contains_key(k)).copied().collect();
    if !unknown.is_empty() {
        unknown.sort_unstable();
        let shown: Vec<String> = unknown.iter().take(5).map(|i| i.to_string()).collect();
        return Err(Error::input(
            pred_path,
            format!(
                "{} prediction(s) for indices not in the annotations: {}{}",
                unknown.len(),
                shown.join(", "),
                if unknown.len() > 5 { ", ..." } else { "" }
            ),
        ));
    }
    let mut groups: BTreeMap<i64, Vec<&Row>> = BTreeMap::new();
    for r in ann.rows.values() {
        groups.entry(r.g_index).or_default().push(r);
    }
    let mut results = Vec::new();
    for (g, rows) in &groups {
        let Some(main) = ann.rows.get(g).filter(|m| m.g_index == *g) else {
            continue;
        }; // rotations without a main row
        let base = QuestionResult {
            index: *g,
            outcome: Outcome::Missing,
            hit: 0,
            rows: 0,
            category: main.category.clone(),
            l2_category: main.l2_category.clone(),
            split: main.split.clone(),
            answers: Vec::new(),
        };
        if !preds.contains_key(g) {
            if missing == MissingPolicy::Strict {
                results.push(base);
            }
            continue;
        }
        // Wrong if any row reads as a wrong letter, else unresolved if any row cannot be read.
        let mut outcome = Outcome::Correct;
        let mut answers = Vec::new();
        for r in rows.iter().filter(|r| preds.contains_key(&r.index)) {
            let got = can_infer(matcher, &preds[&r.index], &r.choices);
            let gt = r.answer.as_deref(); // a NaN answer matches nothing, as in VLMEvalKit
            match got {
                Some(c) if Some(c.to_string().as_str()) != gt => outcome = Outcome::Wrong,
                Some(_) => {}
                None if outcome == Outcome::Correct => outcome = Outcome::Unresolved,
                None => {}
            }
            answers.push(RowAnswer {
                index: r.index,
                prediction: preds[&r.index].clone(),
                parsed: got,
                gold: r.answer.clone(),
            });
        }
        let hit = u8::from(outcome == Outcome::Correct);
        results.push(QuestionResult {
            outcome,
            hit,
            rows: answers.len(),
            answers,
            ..base
        });
    }
    let mean = |it: &mut dyn Iterator<Item = &QuestionResult>| -> f64 {
        let (s, c) = it.fold((0u64, 0u64), |(s, c), r| (s + r.hit as u64, c + 1));
        if c == 0 {
            f64::NAN
        } else {
            s as f64 / c as f64
        }
    };
    let questions = results.len();
    if questions == 0 {
        return Err(Error::input(
            pred_path,
            "no question to score (no prediction matches a main question)",
        ));
    }
    let overall = mean(&mut results.iter());
    let mut l2_categories = BTreeMap::new();
    let mut categories = BTreeMap::new();
    if ann.has_l2 {
        let names: BTreeSet<String> = results.iter().filter_map(|r| r.l2_category.clone()).collect();
        for n in names {
            l2_categories.insert(
                n.clone(),
                mean(&mut results.iter().filter(|r| r.l2_category.as_deref() == Some(&n))),
            );
        }
    }
    if ann.has_category {
        let names: BTreeSet<String> = results.iter().filter_map(|r| r.category.clone()).collect();
        for n in names {
            categories.insert(
                n.clone(),
                mean(&mut results.iter().filter(|r| r.category.as_deref() == Some(&n))),
            );
        }
    }
    Ok(Report {
        overall,
        questions,
        l2_categories,
        categories,
        correct: results.iter().filter(|r| r.hit == 1).count(),
        unresolved: results.iter().filter(|r| r.outcome == Outcome::Unresolved).count(),
        missing_main_predictions: results.iter().filter(|r| r.outcome == Outcome::Missing).count()
            + if missing == MissingPolicy::Vlmevalkit {
                dropped_mains(ann, preds)
            } else {
                0
            },
        matcher,
        missing,
        judge: "none: exact matching only; answers no rule can read count as wrong",
        results,
    })
}

fn dropped_mains(ann: &Annotations, preds: &HashMap<i64, String>) -> usize {
    ann.rows
        .values()
        .filter(|r| r.g_index == r.index && !preds.contains_key(&r.index))
        .count()
}

/// The `_acc.csv` table of VLMEvalKit's `report_acc`: one row per split; columns `split`,
/// `Overall`, L2 categories (sorted by full name, abbreviated), leaf categories (sorted);
/// every field quoted, floats as Python prints them, NaN as an empty field.
pub fn acc_csv(report: &Report) -> Vec<u8> {
    let splits: BTreeSet<String> = report
        .results
        .iter()
        .map(|r| r.split.clone().unwrap_or_else(|| "none".into()))
        .collect();
    let l2: BTreeSet<&str> = report.results.iter().filter_map(|r| r.l2_category.as_deref()).collect();
    let cats: BTreeSet<&str> = report.results.iter().filter_map(|r| r.category.as_deref()).collect();
    let mut header = vec!["split".to_string(), "Overall".to_string()];
    header.extend(l2.iter().map(|n| l2_abbreviation(n).to_string()));
    header.extend(cats.iter().map(|n| n.to_string()));
    let fmt = |hits: Vec<u8>| -> String {
        if hits.is_empty() {
            String::new()
        } else {
            pyfmt::py_float_repr(hits.iter().map(|&h| h as u64).sum::<u64>() as f64 / hits.len() as f64)
        }
    };
    let mut w = csv::WriterBuilder::new()
        .quote_style(csv::QuoteStyle::Always)
        .from_writer(Vec::new());
    w.write_record(&header).expect("in-memory write");
    for sp in &splits {
        let in_split: Vec<&QuestionResult> = report
            .results
            .iter()
            .filter(|r| r.split.as_deref().unwrap_or("none") == sp)
            .collect();
        let mut rec = vec![sp.clone(), fmt(in_split.iter().map(|r| r.hit).collect())];
        for n in &l2 {
            rec.push(fmt(in_split
                .iter()
                .filter(|r| r.l2_category.as_deref() == Some(n))
                .map(|r| r.hit)
                .collect()));
        }
        for n in &cats {
            rec.push(fmt(in_split
                .iter()
                .filter(|r| r.category.as_deref() == Some(n))
                .map(|r| r.hit)
                .collect()));
        }
        w.write_record(&rec).expect("in-memory write");
    }
    w.into_inner().expect("in-memory flush")
}
