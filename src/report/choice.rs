//! The multiple-choice part of a report (MMBench, HardBLINK): accuracy per category / variant,
//! outcome counts, the confusion table of predicted × gold letter, the answers no rule could read,
//! and for two runs the questions that became right or wrong.

use super::html::{self, esc};
use super::{svg, Benchmark, Metric, Options, Record};
use crate::error::Result;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write;

/// Unparsable answers listed at most.
const MAX_UNPARSABLE: usize = 500;

/// How a question (MMBench, all its circular rows) or an item (HardBLINK) was judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Correct,
    Wrong,
    /// No rule could read the answer (MMBench: "unresolved").
    Unparsable,
    /// HardBLINK: a letter beyond the variant's points.
    OutOfRange,
    Missing,
}

impl Outcome {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "correct" => Outcome::Correct,
            "wrong" => Outcome::Wrong,
            "unresolved" | "unparsable" => Outcome::Unparsable,
            "out_of_range" => Outcome::OutOfRange,
            "missing" => Outcome::Missing,
            _ => return None,
        })
    }
    fn name(self, bench: Benchmark) -> &'static str {
        match self {
            Outcome::Correct => "correct",
            Outcome::Wrong => "wrong",
            Outcome::Unparsable if bench == Benchmark::Mmbench => "unresolved",
            Outcome::Unparsable => "unparsable",
            Outcome::OutOfRange => "out of range",
            Outcome::Missing => "missing",
        }
    }
}

/// One answered row: the raw answer, the letter read from it and the gold letter.
struct Row {
    index: String,
    output: Option<String>,
    parsed: Option<char>,
    gold: Option<char>,
}

struct Item {
    /// Join key of comparisons: the MMBench main index, or "variant/question_id".
    key: String,
    label: String,
    /// HardBLINK: points (2 for BLINK); MMBench: 0.
    variant: usize,
    category: Option<String>,
    l2: Option<String>,
    split: Option<String>,
    outcome: Outcome,
    rows: Vec<Row>,
}

impl Item {
    fn hit(&self) -> bool {
        self.outcome == Outcome::Correct
    }
    fn answers(&self) -> String {
        let mut s = String::new();
        for r in &self.rows {
            let _ = write!(
                s,
                "<div><b>{}</b> ← <span class=\"out\">{}</span></div>",
                r.parsed.map_or_else(|| "?".to_string(), String::from),
                esc(&html::cut(r.output.as_deref().unwrap_or("(no answer)"), 160))
            );
        }
        s
    }
    fn gold(&self) -> String {
        let g: BTreeSet<String> = self
            .rows
            .iter()
            .map(|r| r.gold.map_or_else(|| "?".to_string(), String::from))
            .collect();
        g.into_iter().collect::<Vec<_>>().join(" / ")
    }
}

/// The judged questions / items of one run.
pub(super) struct ChoiceRun {
    pub bench: Benchmark,
    items: Vec<Item>,
    /// Whether the records carry per-row answers (older `--per-question` files do not).
    has_rows: bool,
    /// MMBench: questions without a main-row prediction as the scorer counts them (known when
    /// scored in-process; `--missing vlmevalkit` drops them from the items).
    pub missing_main: Option<usize>,
    /// HardBLINK log lines without a gold letter (the answers file was absent): not scored.
    no_gold: usize,
}

fn letter_of(v: &serde_json::Value) -> Option<char> {
    let s = v.as_str()?.trim().trim_start_matches('(').trim_end_matches(')');
    let mut cs = s.chars();
    match (cs.next(), cs.next()) {
        (Some(c), None) => Some(c),
        _ => None,
    }
}

impl ChoiceRun {
    /// `eval mmbench --per-question` lines: one per question with its outcome and rows.
    pub fn mmbench_questions(records: &[Record]) -> Result<Self> {
        let mut items = Vec::with_capacity(records.len());
        let mut seen = HashMap::new();
        let mut has_rows = false;
        for r in records {
            let index = r.i64("index")?;
            if let Some(prev) = seen.insert(index, r.line) {
                return Err(r.err(format!("index {index} already on line {prev}")));
            }
            let o = r.str("outcome").unwrap_or("");
            let mut outcome = Outcome::parse(o).ok_or_else(|| {
                r.err(format!(
                    "`outcome` is {o:?}, expected correct, wrong, unresolved or missing"
                ))
            })?;
            if r.u64("hit")? == 1 {
                outcome = Outcome::Correct;
            } else if outcome == Outcome::Correct {
                outcome = Outcome::Wrong;
            }
            let mut rows = Vec::new();
            if let Some(list) = r.get("answers").and_then(|v| v.as_array()) {
                has_rows = true;
                for a in list {
                    rows.push(Row {
                        index: a.get("index").map_or_else(String::new, |v| v.to_string()),
                        output: a.get("prediction").and_then(|v| v.as_str()).map(String::from),
                        parsed: a.get("parsed").and_then(letter_of),
                        gold: a.get("gold").and_then(letter_of),
                    });
                }
            }
            items.push(Item {
                key: index.to_string(),
                label: format!("question {index}"),
                variant: 0,
                category: r.text("category"),
                l2: r.text("l2_category"),
                split: r.text("split"),
                outcome,
                rows,
            });
        }
        Ok(ChoiceRun {
            bench: Benchmark::Mmbench,
            items,
            has_rows,
            missing_main: None,
            no_gold: 0,
        })
    }

    /// MMBench `--log-samples` lines (one per row, circular copies included): CircularEval over
    /// each `g_index` group with a main row, as the scorer does it.
    pub fn mmbench_rows(records: &[Record]) -> Result<Self> {
        let mut groups: BTreeMap<i64, Vec<&Record>> = BTreeMap::new();
        let mut seen = HashMap::new();
        for r in records {
            let index = r.i64("index")?;
            if let Some(prev) = seen.insert(index, r.line) {
                return Err(r.err(format!("index {index} already on line {prev}")));
            }
            groups.entry(r.i64("g_index")?).or_default().push(r);
        }
        let mut items = Vec::new();
        for (g, rs) in groups {
            let mut main = None;
            for r in &rs {
                if r.i64("index")? == g {
                    main = Some(*r);
                }
            }
            let Some(main) = main else { continue };
            let mut outcome = Outcome::Correct;
            let mut rows = Vec::new();
            for r in &rs {
                let parsed = r.letter("parsed");
                let gold = r.letter("answer");
                match parsed {
                    Some(c) if Some(c) != gold => outcome = Outcome::Wrong,
                    Some(_) => {}
                    None if outcome == Outcome::Correct => outcome = Outcome::Unparsable,
                    None => {}
                }
                rows.push(Row {
                    index: r.i64("index")?.to_string(),
                    output: r.text("output"),
                    parsed,
                    gold,
                });
            }
            rows.sort_by_key(|r| r.index.parse::<i64>().unwrap_or(0));
            items.push(Item {
                key: g.to_string(),
                label: format!("question {g}"),
                variant: 0,
                category: main.text("category"),
                l2: main.text("l2_category"),
                split: main.text("split"),
                outcome,
                rows,
            });
        }
        if items.is_empty() {
            return Err(records[0].err("no main row (index = g_index) in the file, so no question can be scored"));
        }
        Ok(ChoiceRun {
            bench: Benchmark::Mmbench,
            items,
            has_rows: true,
            missing_main: None,
            no_gold: 0,
        })
    }

    /// HardBLINK per-item lines (`eval hardblink --per-sample` or `--log-samples`).
    pub fn hardblink(records: &[Record]) -> Result<Self> {
        let mut items = Vec::with_capacity(records.len());
        let mut seen = HashMap::new();
        let mut no_gold = 0;
        for r in records {
            let n = r.u64("variant")? as usize;
            if !(2..=5).contains(&n) {
                return Err(r.err(format!("`variant` is {n}, expected 2 (BLINK) or 3, 4, 5 points")));
            }
            let qid = r.text("question_id").ok_or_else(|| r.err("missing `question_id`"))?;
            let key = format!("{n}/{qid}");
            if let Some(prev) = seen.insert(key.clone(), r.line) {
                return Err(r.err(format!("{n}-point question {qid} already on line {prev}")));
            }
            let output = r.text("output");
            let parsed = r.letter("parsed");
            let Some(gold) = r.letter("gold") else {
                no_gold += 1;
                continue;
            };
            let outcome = match r.str("outcome") {
                Some(o) => Outcome::parse(o).ok_or_else(|| {
                    r.err(format!(
                        "`outcome` is {o:?}, expected correct, wrong, unparsable, out_of_range or missing"
                    ))
                })?,
                None => match (&output, parsed) {
                    (None, _) => Outcome::Missing,
                    (_, None) => Outcome::Unparsable,
                    (_, Some(c)) if !c.is_ascii_uppercase() || ((c as u8 - b'A') as usize) >= n => Outcome::OutOfRange,
                    (_, Some(c)) if c == gold => Outcome::Correct,
                    _ => Outcome::Wrong,
                },
            };
            items.push(Item {
                key,
                label: if n == 2 {
                    format!("BLINK #{qid}")
                } else {
                    format!("{n}-point #{qid}")
                },
                variant: n,
                category: Some(variant_name(n)),
                l2: None,
                split: None,
                outcome,
                rows: vec![Row {
                    index: qid,
                    output,
                    parsed,
                    gold: Some(gold),
                }],
            });
        }
        if items.is_empty() {
            return Err(records[0].err("no item with a gold answer (`gold`) to score"));
        }
        Ok(ChoiceRun {
            bench: Benchmark::Hardblink,
            items,
            has_rows: true,
            missing_main: None,
            no_gold,
        })
    }

    fn count(&self, o: Outcome) -> usize {
        self.items.iter().filter(|i| i.outcome == o).count()
    }

    /// Mean hit of the items `keep` selects (NaN for none), as the scorers compute it.
    fn mean(&self, keep: impl Fn(&Item) -> bool) -> (f64, usize) {
        let (s, c) = self
            .items
            .iter()
            .filter(|i| keep(i))
            .fold((0u64, 0u64), |(s, c), i| (s + u64::from(i.hit()), c + 1));
        (if c == 0 { f64::NAN } else { s as f64 / c as f64 }, c as usize)
    }

    fn variants(&self) -> Vec<usize> {
        let v: BTreeSet<usize> = self.items.iter().map(|i| i.variant).collect();
        v.into_iter().collect()
    }

    /// Names of a grouping field, sorted, with their accuracy and size.
    fn by(&self, field: impl Fn(&Item) -> Option<&String>) -> Vec<(String, f64, usize)> {
        let names: BTreeSet<&String> = self.items.iter().filter_map(&field).collect();
        names
            .into_iter()
            .map(|n| {
                let (m, c) = self.mean(|i| field(i) == Some(n));
                (n.clone(), m, c)
            })
            .collect()
    }

    pub fn headline(&self) -> Vec<Metric> {
        match self.bench {
            Benchmark::Mmbench => {
                let mut v = vec![
                    Metric::frac("overall", "Overall (CircularEval)", self.mean(|_| true).0),
                    Metric::count("questions", "questions", self.items.len()),
                    Metric::count("correct", "correct", self.count(Outcome::Correct)),
                    Metric::count(
                        "unresolved",
                        "unresolved (count as wrong)",
                        self.count(Outcome::Unparsable),
                    ),
                    Metric::count(
                        "missing_main_predictions",
                        "questions without a main prediction",
                        self.missing_main.unwrap_or_else(|| self.count(Outcome::Missing)),
                    ),
                ];
                for (n, m, _) in self.by(|i| i.l2.as_ref()) {
                    v.push(Metric::frac(&format!("l2_categories/{n}"), &n, m));
                }
                for (n, m, _) in self.by(|i| i.category.as_ref()) {
                    v.push(Metric::frac(&format!("categories/{n}"), &n, m));
                }
                v
            }
            _ => {
                let mut v = Vec::new();
                let acc: Vec<(usize, f64)> = [3, 4, 5]
                    .into_iter()
                    .filter(|n| self.items.iter().any(|i| i.variant == *n))
                    .map(|n| (n, self.mean(|i| i.variant == n).0))
                    .collect();
                for (n, a) in &acc {
                    v.push(Metric::frac(&format!("variants/{n}"), &variant_name(*n), *a));
                }
                let mean = acc.iter().map(|(_, a)| *a).sum::<f64>() / acc.len() as f64;
                v.push(Metric::frac(
                    "mean",
                    if acc.len() == 3 {
                        "mean (3/4/5)".into()
                    } else {
                        format!("mean ({} variants)", acc.len())
                    }
                    .as_str(),
                    mean,
                ));
                if self.items.iter().any(|i| i.variant == 2) {
                    let b = self.mean(|i| i.variant == 2).0;
                    v.push(Metric::frac("blink2", "BLINK 2-point", b));
                    let aurora = (b + acc.iter().map(|(_, a)| *a).sum::<f64>()) / 4.0;
                    v.push(Metric::frac("aurora_mean", "AURORA mean (2/3/4/5)", aurora));
                }
                let unparsable = self
                    .items
                    .iter()
                    .filter(|i| i.variant >= 3 && i.outcome == Outcome::Unparsable)
                    .count();
                v.push(Metric::count("unparsable", "unparsable (3/4/5)", unparsable));
                v.push(Metric::count("items", "items", self.items.len()));
                v
            }
        }
    }

    pub fn sections(&self, body: &mut String) {
        self.bars(body, None);
        html::section(
            body,
            "outcomes",
            "Outcomes",
            self.outcome_note(),
            &outcome_table(&[self], self.bench),
        );
        if self.no_gold > 0 {
            body.push_str(&format!(
                "<p class=\"note\">{} lines had no gold answer and are not scored.</p>",
                self.no_gold
            ));
        }
        let mut conf = String::new();
        if !self.has_rows {
            conf.push_str(
                "<p class=\"note\">These records carry no per-row answers (written by an older perceptio), so there \
                 is no confusion table or list of unparsable answers.</p>",
            );
        } else if self.bench == Benchmark::Hardblink {
            for n in self.variants() {
                let _ = write!(conf, "<h3>{}</h3>", esc(&variant_name(n)));
                conf.push_str(&confusion(self.items.iter().filter(|i| i.variant == n)));
            }
        } else {
            conf.push_str(&confusion(self.items.iter()));
        }
        html::section(
            body,
            "confusion",
            "Predicted × gold letter",
            match self.bench {
                Benchmark::Mmbench => {
                    "Every answered row (circular copies included): rows are the gold letter, columns the letter the \
                     matcher read (Z = refusal; ? = unresolved). The diagonal is outlined."
                }
                _ => "Rows are the gold letter, columns the letter parsed from the answer (? = unparsable). The diagonal is outlined.",
            },
            &conf,
        );
        if self.has_rows {
            html::section(
                body,
                "unparsable",
                if self.bench == Benchmark::Mmbench {
                    "Unresolved answers"
                } else {
                    "Unparsable answers"
                },
                if self.bench == Benchmark::Mmbench {
                    "Answers no matching rule could read: they count as wrong (VLMEvalKit would ask an LLM judge)."
                } else {
                    "Answers none of the parse rules could read (docs/eval.md): they count as wrong."
                },
                &self.unparsable_table(),
            );
        }
    }

    fn outcome_note(&self) -> &'static str {
        match self.bench {
            Benchmark::Mmbench => {
                "A question is correct only if every circular copy with a prediction is; wrong if any copy reads as a \
                 wrong letter; else unresolved if some copy could not be read."
            }
            _ => "Unparsable and out-of-range answers and missing items count as wrong.",
        }
    }

    /// Per-category (MMBench) or per-variant (HardBLINK) bars of one run, or of two side by side.
    fn bars(&self, body: &mut String, other: Option<(&ChoiceRun, [&str; 2])>) {
        let runs: Vec<&ChoiceRun> = std::iter::once(self).chain(other.map(|o| o.0)).collect();
        let names: Vec<&str> = match other {
            Some((_, n)) => n.to_vec(),
            None => vec!["run"],
        };
        let chart = |field: &dyn Fn(&Item) -> Option<&String>| -> String {
            let mut labels: BTreeSet<String> = BTreeSet::new();
            for r in &runs {
                labels.extend(r.by(field).into_iter().map(|x| x.0));
            }
            let labels: Vec<String> = labels.into_iter().collect();
            let per: Vec<HashMap<String, (f64, usize)>> = runs
                .iter()
                .map(|r| r.by(field).into_iter().map(|(n, m, c)| (n, (m, c))).collect())
                .collect();
            let values: Vec<Vec<Option<f64>>> = labels
                .iter()
                .map(|l| per.iter().map(|p| p.get(l).map(|x| x.0)).collect())
                .collect();
            let notes: Vec<String> = labels
                .iter()
                .map(|l| {
                    format!(
                        "n={}",
                        per[0].get(l).or(per.get(1).and_then(|p| p.get(l))).map_or(0, |x| x.1)
                    )
                })
                .collect();
            let shown: Vec<String> = labels
                .iter()
                .map(|l| {
                    let a = crate::eval::mmbench::l2_abbreviation(l);
                    if a != l {
                        format!("{a}: {l}")
                    } else {
                        l.clone()
                    }
                })
                .collect();
            svg::hbars(&shown, &notes, &values, &names)
        };
        match self.bench {
            Benchmark::Mmbench => {
                let mut s = String::new();
                if runs.iter().any(|r| r.items.iter().any(|i| i.l2.is_some())) {
                    s.push_str("<h3>L2 categories</h3>");
                    s.push_str(&chart(&|i: &Item| i.l2.as_ref()));
                }
                if runs.iter().any(|r| r.items.iter().any(|i| i.category.is_some())) {
                    s.push_str("<h3>Categories</h3>");
                    s.push_str(&chart(&|i: &Item| i.category.as_ref()));
                }
                let splits: BTreeSet<&String> = runs
                    .iter()
                    .flat_map(|r| r.items.iter().filter_map(|i| i.split.as_ref()))
                    .collect();
                if splits.len() > 1 {
                    s.push_str("<h3>Splits</h3>");
                    s.push_str(&chart(&|i: &Item| i.split.as_ref()));
                }
                if s.is_empty() {
                    s.push_str("<p class=\"note\">The records carry no categories.</p>");
                } else if other.is_none() {
                    s.push_str(&self.category_table());
                }
                html::section(
                    body,
                    "categories",
                    "Accuracy per category",
                    "CircularEval accuracy of the questions in each L2 category and leaf category (n = questions).",
                    &s,
                );
            }
            _ => {
                html::section(
                    body,
                    "variants",
                    "Accuracy per variant",
                    "Accuracy of each HardBLINK variant (n = items); BLINK 2-point when the run has it.",
                    &chart(&|i: &Item| i.category.as_ref()),
                );
            }
        }
    }

    /// The exact per-category accuracies behind the bars (one run).
    fn category_table(&self) -> String {
        let mut rows = Vec::new();
        fn l2(i: &Item) -> Option<&String> {
            i.l2.as_ref()
        }
        fn leaf(i: &Item) -> Option<&String> {
            i.category.as_ref()
        }
        for (group, key, field) in [
            ("L2", "l2_categories", l2 as fn(&Item) -> Option<&String>),
            ("leaf", "categories", leaf),
        ] {
            for (name, m, n) in self.by(field) {
                rows.push(vec![
                    group.to_string(),
                    esc(&name),
                    n.to_string(),
                    format!(
                        "<span data-key=\"{}/{}\" data-value=\"{m}\">{}</span>",
                        key,
                        esc(&name),
                        html::pct(m)
                    ),
                ]);
            }
        }
        html::table("cats", &["level", "category", "questions", "accuracy (%)"], &rows)
    }

    fn unparsable_table(&self) -> String {
        let mut rows = Vec::new();
        let mut total = 0;
        for it in &self.items {
            for r in &it.rows {
                if r.parsed.is_some() || r.output.is_none() {
                    continue;
                }
                total += 1;
                if rows.len() < MAX_UNPARSABLE {
                    rows.push(vec![
                        esc(&it.label),
                        esc(&r.index),
                        esc(it.category.as_deref().unwrap_or("")),
                        r.gold.map_or_else(|| "?".to_string(), String::from),
                        format!(
                            "<div class=\"out\">{}</div>",
                            esc(&html::cut(r.output.as_deref().unwrap_or(""), 600))
                        ),
                    ]);
                }
            }
        }
        if total == 0 {
            return "<p>None: every answer was read.</p>".into();
        }
        let mut s = format!("<p><b data-key=\"unparsable_rows\" data-value=\"{total}\">{total}</b> answers.</p>");
        let id = if self.bench == Benchmark::Mmbench {
            "row index"
        } else {
            "question_id"
        };
        s.push_str(&html::table(
            "unparsable",
            &[
                "item",
                id,
                if self.bench == Benchmark::Mmbench {
                    "category"
                } else {
                    "variant"
                },
                "gold",
                "answer",
            ],
            &rows,
        ));
        if total > rows.len() {
            let _ = write!(s, "<p class=\"muted\">… and {} more not shown.</p>", total - rows.len());
        }
        s
    }
}

fn variant_name(n: usize) -> String {
    if n == 2 {
        "BLINK 2-point".into()
    } else {
        format!("{n}-point")
    }
}

/// Outcome counts per variant (HardBLINK) or overall (MMBench), for one or two runs.
fn outcome_table(runs: &[&ChoiceRun], bench: Benchmark) -> String {
    let outcomes = [
        Outcome::Correct,
        Outcome::Wrong,
        Outcome::Unparsable,
        Outcome::OutOfRange,
        Outcome::Missing,
    ];
    let shown: Vec<Outcome> = outcomes
        .into_iter()
        .filter(|o| bench == Benchmark::Hardblink || *o != Outcome::OutOfRange)
        .collect();
    let mut header: Vec<String> = vec!["".into(), "items".into()];
    header.extend(shown.iter().map(|o| o.name(bench).to_string()));
    let mut rows = Vec::new();
    let names = ["A", "B"];
    for (k, r) in runs.iter().enumerate() {
        // (row name, the variant it keeps; None = every item)
        let groups: Vec<(String, Option<usize>)> = if bench == Benchmark::Hardblink {
            r.variants().into_iter().map(|n| (variant_name(n), Some(n))).collect()
        } else {
            vec![("all questions".into(), None)]
        };
        for (name, keep) in groups {
            let sel: Vec<&Item> = r.items.iter().filter(|i| keep.is_none_or(|n| i.variant == n)).collect();
            let mut row = vec![
                if runs.len() > 1 {
                    format!("{}: {}", names[k], esc(&name))
                } else {
                    esc(&name)
                },
                sel.len().to_string(),
            ];
            for o in &shown {
                row.push(sel.iter().filter(|i| i.outcome == *o).count().to_string());
            }
            rows.push(row);
        }
    }
    let h: Vec<&str> = header.iter().map(String::as_str).collect();
    html::table("outcomes", &h, &rows)
}

/// The confusion table of the rows of `items`: gold letter × letter read.
fn confusion<'a>(items: impl Iterator<Item = &'a Item>) -> String {
    const NONE: char = '?';
    const MISSING: char = '∅';
    let mut counts: BTreeMap<(char, char), usize> = BTreeMap::new();
    let (mut golds, mut preds) = (BTreeSet::new(), BTreeSet::new());
    for it in items {
        for r in &it.rows {
            let g = r.gold.unwrap_or(NONE);
            let p = match (&r.output, r.parsed) {
                (None, _) => MISSING,
                (_, None) => NONE,
                (_, Some(c)) => c,
            };
            golds.insert(g);
            preds.insert(p);
            *counts.entry((g, p)).or_default() += 1;
        }
    }
    if counts.is_empty() {
        return "<p>No answers.</p>".into();
    }
    // Letters first (gold letters always get a column), then "?" and "∅".
    let mut cols: Vec<char> = preds
        .iter()
        .chain(golds.iter())
        .copied()
        .filter(|c| *c != NONE && *c != MISSING)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    for c in [NONE, MISSING] {
        if preds.contains(&c) {
            cols.push(c);
        }
    }
    let mut s = String::from("<table class=\"conf\"><thead><tr><th>gold \\ read</th>");
    for c in &cols {
        let _ = write!(
            s,
            "<th class=\"n\">{}</th>",
            match *c {
                NONE => "? (not read)".to_string(),
                MISSING => "missing".to_string(),
                c => c.to_string(),
            }
        );
    }
    s.push_str("<th class=\"n\">total</th></tr></thead><tbody>");
    for g in &golds {
        let total: usize = cols.iter().map(|p| counts.get(&(*g, *p)).copied().unwrap_or(0)).sum();
        let _ = write!(
            s,
            "<tr><th>{}</th>",
            if *g == NONE { "?".to_string() } else { g.to_string() }
        );
        for p in &cols {
            let n = counts.get(&(*g, *p)).copied().unwrap_or(0);
            let diag = g == p && *g != NONE;
            let alpha = if total == 0 {
                0.0
            } else {
                0.08 + 0.6 * n as f64 / total as f64
            };
            let bg = if n == 0 {
                String::new()
            } else if diag {
                format!(" style=\"background:rgba(31,138,76,{alpha:.2})\"")
            } else {
                format!(" style=\"background:rgba(192,57,43,{alpha:.2})\"")
            };
            let _ = write!(
                s,
                "<td class=\"{}\" data-gold=\"{g}\" data-read=\"{p}\"{bg}>{}</td>",
                if diag { "diag" } else { "" },
                if n == 0 { String::new() } else { n.to_string() }
            );
        }
        let _ = write!(s, "<td>{total}</td></tr>");
    }
    s.push_str("</tbody></table>");
    s
}

/// The multiple-choice part of a comparison: bars and outcomes of both runs, and the items
/// that became right (better) or wrong (worse) in B.
pub(super) fn compare(body: &mut String, (na, a): (&str, &ChoiceRun), (nb, b): (&str, &ChoiceRun), opts: &Options) {
    let (la, lb) = (format!("A: {na}"), format!("B: {nb}"));
    a.bars(body, Some((b, [&la, &lb])));
    html::section(
        body,
        "outcomes",
        "Outcomes",
        a.outcome_note(),
        &outcome_table(&[a, b], a.bench),
    );
    let by_key: HashMap<&str, &Item> = b.items.iter().map(|i| (i.key.as_str(), i)).collect();
    let a_keys: BTreeSet<&str> = a.items.iter().map(|i| i.key.as_str()).collect();
    let pairs: Vec<(&Item, &Item)> = a
        .items
        .iter()
        .filter_map(|x| by_key.get(x.key.as_str()).map(|y| (x, *y)))
        .collect();
    let better: Vec<&(&Item, &Item)> = pairs.iter().filter(|(x, y)| !x.hit() && y.hit()).collect();
    let worse: Vec<&(&Item, &Item)> = pairs.iter().filter(|(x, y)| x.hit() && !y.hit()).collect();
    let reread = pairs
        .iter()
        .filter(|(x, y)| x.hit() == y.hit() && x.rows.iter().map(|r| r.parsed).ne(y.rows.iter().map(|r| r.parsed)))
        .count();
    let only_b = b.items.iter().filter(|i| !a_keys.contains(i.key.as_str())).count();
    let mut s = html::table(
        "counts",
        &["items", "count"],
        &[
            vec!["in both runs".into(), pairs.len().to_string()],
            vec![
                "wrong in A, correct in B".into(),
                format!("<span class=\"good\">{}</span>", better.len()),
            ],
            vec![
                "correct in A, wrong in B".into(),
                format!("<span class=\"bad\">{}</span>", worse.len()),
            ],
            vec!["other answer, same result".into(), reread.to_string()],
            vec!["only in A".into(), (a.items.len() - pairs.len()).to_string()],
            vec!["only in B".into(), only_b.to_string()],
        ],
    );
    for (id, title, list) in [("better", "Better in B", &better), ("worse", "Worse in B", &worse)] {
        let shown = &list[..list.len().min(opts.max_changes)];
        let _ = write!(
            s,
            "<h3>{title}: {}{}</h3>",
            list.len(),
            if shown.len() < list.len() {
                format!(" (first {} shown)", shown.len())
            } else {
                String::new()
            }
        );
        if list.is_empty() {
            s.push_str("<p class=\"muted\">None.</p>");
            continue;
        }
        let _ = write!(
            s,
            "<table class=\"changes\" id=\"{id}\"><thead><tr><th>item</th><th>{}</th><th>gold</th>\
             <th>A</th><th>B</th></tr></thead><tbody>",
            if a.bench == Benchmark::Mmbench {
                "category"
            } else {
                "variant"
            }
        );
        for (x, y) in shown.iter().map(|p| (p.0, p.1)) {
            let _ = write!(
                s,
                "<tr class=\"change\" data-change=\"{id}\" data-key=\"{}\"><td>{}</td><td>{}</td><td>{}</td>\
                 <td><span class=\"{}\">{}</span>{}</td><td><span class=\"{}\">{}</span>{}</td></tr>",
                esc(&x.key),
                esc(&x.label),
                esc(x.category.as_deref().unwrap_or("")),
                esc(&x.gold()),
                if x.hit() { "good" } else { "bad" },
                x.outcome.name(a.bench),
                x.answers(),
                if y.hit() { "good" } else { "bad" },
                y.outcome.name(b.bench),
                y.answers()
            );
        }
        s.push_str("</tbody></table>");
    }
    html::section(
        body,
        "changes",
        "Per-item changes",
        "Items in both runs whose result changed (the change is ±1 item; listed in file order).",
        &s,
    );
}
