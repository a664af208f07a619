//! Self-contained HTML reports of benchmark runs, for error analysis by looking: headline numbers
//! with provenance, per-category bars (inline SVG), and per benchmark the IoU histogram and a
//! gallery of the worst and median samples (RefCOCO) or the confusion table and the unparsable
//! answers (MMBench, HardBLINK); two runs of one benchmark side by side with the samples that
//! changed. One HTML file with nothing to fetch: CSS and charts inline, photos as `data:` URIs.
//!
//! A [`Run`] comes from a per-sample file the tools write ([`load`]: `eval refcoco --per-sample`,
//! `eval mmbench --per-question`, `eval hardblink --per-sample`, the `--log-samples` files of
//! `eval ... --model`; the benchmark is told from the fields), or straight from a scorer's report
//! ([`Run::refcoco`], [`Run::mmbench`], [`Run::hardblink`]) by way of the same records, so both
//! paths give the same numbers. [`render`] turns one or two runs into the page.

mod choice;
pub mod html;
mod refcoco;
pub mod svg;

use crate::error::{Error, Result};
use crate::eval;
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};
use std::fmt::Write;
use std::path::{Path, PathBuf};

/// Which benchmark a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Benchmark {
    Refcoco,
    Mmbench,
    Hardblink,
}

impl Benchmark {
    pub fn name(self) -> &'static str {
        match self {
            Benchmark::Refcoco => "RefCOCO/+/g",
            Benchmark::Mmbench => "MMBench",
            Benchmark::Hardblink => "HardBLINK",
        }
    }
}

/// Where a run's numbers come from (shown at the top of its report).
#[derive(Debug, Clone)]
pub struct Provenance {
    /// What the records are, e.g. "eval refcoco --per-sample file".
    pub source: String,
    pub perceptio_version: String,
    /// When the report was built (UTC).
    pub date: String,
    /// (role, path as given, sha256) of every input.
    pub inputs: Vec<(String, String, String)>,
    pub model: Option<String>,
    /// Distinct prompts in order of first use (at most [`MAX_PROMPTS`] kept).
    pub prompts: Vec<String>,
    /// How many distinct prompts there were.
    pub distinct_prompts: usize,
    /// Other settings that shaped the numbers (split, matcher, ...), in order.
    pub settings: Vec<(String, String)>,
    seen_prompts: HashSet<String>,
}

/// Prompts kept for the provenance table.
pub const MAX_PROMPTS: usize = 3;

impl Provenance {
    /// Provenance with this perceptio's version and the current date, and nothing else yet.
    pub fn new(source: impl Into<String>) -> Self {
        Provenance {
            source: source.into(),
            perceptio_version: env!("CARGO_PKG_VERSION").into(),
            date: html::now_utc(),
            inputs: Vec::new(),
            model: None,
            prompts: Vec::new(),
            distinct_prompts: 0,
            settings: Vec::new(),
            seen_prompts: HashSet::new(),
        }
    }

    /// Record an input file with its sha256.
    pub fn input(&mut self, role: &str, path: &Path, shown: &str) -> Result<()> {
        let sha = crate::util::sha256_file(path)?;
        self.inputs.push((role.into(), shown.into(), sha));
        Ok(())
    }

    pub fn setting(&mut self, key: &str, value: impl Into<String>) {
        self.settings.push((key.into(), value.into()));
    }

    /// Note a prompt sent to the model (the first [`MAX_PROMPTS`] distinct ones are kept).
    pub fn add_prompt(&mut self, p: &str) {
        if self.seen_prompts.insert(p.to_string()) {
            self.distinct_prompts += 1;
            if self.prompts.len() < MAX_PROMPTS {
                self.prompts.push(p.to_string());
            }
        }
    }

    /// Take the model and prompts from records that carry them (`model`, `prompt` fields), unless
    /// already known.
    fn take_from_records(&mut self, records: &[Record]) {
        let had_prompts = !self.prompts.is_empty();
        for r in records {
            if self.model.is_none() {
                self.model = r.str("model").map(String::from);
            }
            if !had_prompts {
                if let Some(p) = r.str("prompt") {
                    self.add_prompt(p);
                }
            }
        }
    }
}

/// One headline number: `key` is the scorer's `--json` name (`ciou`, `overall`,
/// `variants/3`, `categories/ocr`, ...); fractions are shown in percent.
#[derive(Debug, Clone)]
pub struct Metric {
    pub key: String,
    pub label: String,
    pub value: f64,
    pub fraction: bool,
}

impl Metric {
    fn frac(key: &str, label: &str, value: f64) -> Self {
        Metric {
            key: key.into(),
            label: label.into(),
            value,
            fraction: true,
        }
    }
    fn count(key: &str, label: &str, value: usize) -> Self {
        Metric {
            key: key.into(),
            label: label.into(),
            value: value as f64,
            fraction: false,
        }
    }
    fn shown(&self) -> String {
        if self.fraction {
            html::pct(self.value)
        } else {
            format!("{}", self.value)
        }
    }
}

/// A per-sample JSON line with its line number and file, with typed field access.
pub(crate) struct Record {
    line: usize,
    file: PathBuf,
    obj: Map<String, Value>,
}

impl Record {
    fn err(&self, msg: impl Into<String>) -> Error {
        Error::at_line(&self.file, self.line, msg)
    }
    fn has(&self, k: &str) -> bool {
        self.obj.contains_key(k)
    }
    fn get(&self, k: &str) -> Option<&Value> {
        self.obj.get(k).filter(|v| !v.is_null())
    }
    fn str(&self, k: &str) -> Option<&str> {
        self.get(k).and_then(Value::as_str)
    }
    fn i64(&self, k: &str) -> Result<i64> {
        match self.get(k) {
            Some(Value::Number(n)) if n.as_i64().is_some() => Ok(n.as_i64().unwrap()),
            Some(Value::String(s)) if s.trim().parse::<i64>().is_ok() => Ok(s.trim().parse().unwrap()),
            _ => Err(self.err(format!("missing integer `{k}`"))),
        }
    }
    fn u64(&self, k: &str) -> Result<u64> {
        self.get(k)
            .and_then(Value::as_u64)
            .ok_or_else(|| self.err(format!("missing non-negative integer `{k}`")))
    }
    fn f64(&self, k: &str) -> Result<f64> {
        self.get(k)
            .and_then(Value::as_f64)
            .ok_or_else(|| self.err(format!("missing number `{k}`")))
    }
    /// A letter field ("A", "(B)", or null).
    fn letter(&self, k: &str) -> Option<char> {
        let s = self.str(k)?.trim().trim_start_matches('(').trim_end_matches(')');
        let mut cs = s.chars();
        match (cs.next(), cs.next()) {
            (Some(c), None) => Some(c),
            _ => None,
        }
    }
    /// Text of a field: strings as they are, numbers as JSON prints them.
    fn text(&self, k: &str) -> Option<String> {
        match self.get(k)? {
            Value::String(s) => Some(s.clone()),
            v => Some(v.to_string()),
        }
    }
}

/// The kinds of per-sample file perceptio writes, told apart by their fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    RefcocoPerSample,
    RefcocoLog,
    MmbenchPerQuestion,
    MmbenchLog,
    HardblinkPerSample,
    HardblinkLog,
}

impl Kind {
    fn detect(r: &Record) -> Option<Kind> {
        if r.has("sent_id") && r.has("iou") {
            return Some(if r.has("output") || r.has("seg_count") {
                Kind::RefcocoLog
            } else {
                Kind::RefcocoPerSample
            });
        }
        if r.has("variant") && r.has("question_id") {
            return Some(if r.has("outcome") {
                Kind::HardblinkPerSample
            } else {
                Kind::HardblinkLog
            });
        }
        if r.has("index") && r.has("outcome") && r.has("hit") {
            return Some(Kind::MmbenchPerQuestion);
        }
        if r.has("index") && r.has("g_index") && r.has("parsed") {
            return Some(Kind::MmbenchLog);
        }
        None
    }
    fn benchmark(self) -> Benchmark {
        match self {
            Kind::RefcocoPerSample | Kind::RefcocoLog => Benchmark::Refcoco,
            Kind::MmbenchPerQuestion | Kind::MmbenchLog => Benchmark::Mmbench,
            Kind::HardblinkPerSample | Kind::HardblinkLog => Benchmark::Hardblink,
        }
    }
    fn describe(self) -> &'static str {
        match self {
            Kind::RefcocoPerSample => "eval refcoco --per-sample file",
            Kind::RefcocoLog => "eval refcoco --model --log-samples file",
            Kind::MmbenchPerQuestion => "eval mmbench --per-question file",
            Kind::MmbenchLog => "eval mmbench --model --log-samples file (per row; CircularEval redone here)",
            Kind::HardblinkPerSample => "eval hardblink --per-sample file",
            Kind::HardblinkLog => "eval hardblink --model --log-samples file",
        }
    }
}

enum Data {
    Refcoco(refcoco::RefRun),
    Choice(choice::ChoiceRun),
}

/// One benchmark run: its samples, its provenance and a short name for comparisons.
pub struct Run {
    pub name: String,
    pub provenance: Provenance,
    data: Data,
}

impl Run {
    pub fn benchmark(&self) -> Benchmark {
        match &self.data {
            Data::Refcoco(_) => Benchmark::Refcoco,
            Data::Choice(c) => c.bench,
        }
    }

    /// The headline numbers, as the scorer's `--json` would give them.
    pub fn headline(&self) -> Vec<Metric> {
        match &self.data {
            Data::Refcoco(r) => r.headline(),
            Data::Choice(c) => c.headline(),
        }
    }

    fn from_records(kind: Kind, name: String, mut prov: Provenance, records: Vec<Record>) -> Result<Run> {
        prov.take_from_records(&records);
        let data = match kind {
            Kind::RefcocoPerSample | Kind::RefcocoLog => Data::Refcoco(refcoco::RefRun::parse(&records)?),
            Kind::MmbenchPerQuestion => Data::Choice(choice::ChoiceRun::mmbench_questions(&records)?),
            Kind::MmbenchLog => Data::Choice(choice::ChoiceRun::mmbench_rows(&records)?),
            Kind::HardblinkPerSample | Kind::HardblinkLog => Data::Choice(choice::ChoiceRun::hardblink(&records)?),
        };
        Ok(Run {
            name,
            provenance: prov,
            data,
        })
    }

    /// A RefCOCO run from the scorer's report (`outputs`: raw model replies by sent_id, from a
    /// `--log-samples` file, when known).
    pub fn refcoco(
        r: &eval::refcoco::Report,
        outputs: &HashMap<i64, String>,
        name: &str,
        prov: Provenance,
    ) -> Result<Run> {
        let recs = in_memory(r.per_sample.iter(), |s, v| {
            if let Some(o) = outputs.get(&s.sent_id) {
                v.insert("output".into(), Value::from(o.as_str()));
            }
        });
        let mut run = Run::from_records(Kind::RefcocoPerSample, name.into(), prov, recs)?;
        if let Data::Refcoco(rr) = &mut run.data {
            rr.other_split = Some(r.other_split_predictions);
        }
        Ok(run)
    }

    /// An MMBench run from the scorer's report (its per-question results with their rows).
    pub fn mmbench(r: &eval::mmbench::Report, name: &str, mut prov: Provenance) -> Result<Run> {
        prov.setting("matcher", format!("{:?}", r.matcher).to_lowercase());
        prov.setting("missing main rows", format!("{:?}", r.missing).to_lowercase());
        prov.setting("judge", r.judge);
        let recs = in_memory(r.results.iter(), |_, _| {});
        let mut run = Run::from_records(Kind::MmbenchPerQuestion, name.into(), prov, recs)?;
        if let Data::Choice(c) = &mut run.data {
            // `--missing vlmevalkit` drops questions; the scorer still counts them.
            c.missing_main = Some(r.missing_main_predictions);
        }
        Ok(run)
    }

    /// A HardBLINK run from the scorer's report (its per-item results, BLINK 2-point included).
    pub fn hardblink(r: &eval::hardblink::Report, name: &str, prov: Provenance) -> Result<Run> {
        let recs = in_memory(r.items(), |_, _| {});
        Run::from_records(Kind::HardblinkPerSample, name.into(), prov, recs)
    }
}

/// Records from in-memory results (serialised as their per-sample lines would be).
fn in_memory<'a, T: serde::Serialize + 'a>(
    items: impl Iterator<Item = &'a T>,
    mut extra: impl FnMut(&T, &mut Map<String, Value>),
) -> Vec<Record> {
    items
        .enumerate()
        .map(|(i, it)| {
            let mut obj = match serde_json::to_value(it).expect("results serialise") {
                Value::Object(m) => m,
                _ => unreachable!("results serialise as objects"),
            };
            extra(it, &mut obj);
            Record {
                line: i + 1,
                file: PathBuf::from("<scorer>"),
                obj,
            }
        })
        .collect()
}

/// Read a per-sample file (see the module docs), telling the benchmark from its fields.
pub fn load(path: &Path, shown: &str) -> Result<Run> {
    let bytes = crate::util::read_file(path)?;
    let mut records = Vec::new();
    crate::util::jsonl::for_each_in::<Value, _>(Path::new(shown), &bytes, |line, v| match v {
        Value::Object(obj) => {
            records.push(Record {
                line,
                file: PathBuf::from(shown),
                obj,
            });
            Ok(())
        }
        _ => Err(Error::at_line(shown, line, "expected a JSON object per line")),
    })?;
    let first = records
        .first()
        .ok_or_else(|| Error::input(shown, "no records: the file is empty"))?;
    let kind = Kind::detect(first).ok_or_else(|| {
        let mut keys: Vec<&str> = first.obj.keys().map(String::as_str).collect();
        keys.sort_unstable();
        first.err(format!(
            "cannot tell which benchmark this is (fields: {}). Expected a per-sample file of \
             `eval refcoco --per-sample` (sent_id, iou), `eval mmbench --per-question` (index, outcome, hit), \
             `eval hardblink --per-sample` (variant, question_id, outcome) or a `--log-samples` file of `eval ... --model`",
            keys.join(", ")
        ))
    })?;
    for r in &records[1..] {
        if Kind::detect(r) != Some(kind) {
            return Err(r.err(format!(
                "this line is not like line {}: the file starts as a {} but this line differs",
                first.line,
                kind.describe()
            )));
        }
    }
    let mut prov = Provenance::new(format!("{} ({})", kind.describe(), kind.benchmark().name()));
    prov.inputs.push((
        "per-sample file".into(),
        shown.into(),
        crate::util::sha256_bytes(&bytes),
    ));
    let name = Path::new(shown)
        .file_name()
        .map_or_else(|| shown.to_string(), |n| n.to_string_lossy().into_owned());
    Run::from_records(kind, name, prov, records)
}

/// Report options.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where the photos of RefCOCO samples are (`file_name` of each sample); `None`: no gallery.
    pub images: Option<PathBuf>,
    /// How many worst and how many median samples the RefCOCO gallery shows.
    pub k: usize,
    /// How many improved and how many worsened samples a comparison lists.
    pub max_changes: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            images: None,
            k: 8,
            max_changes: 50,
        }
    }
}

/// The report of one run, or the comparison of two runs of the same benchmark, as one HTML page.
pub fn render(runs: &[Run], opts: &Options) -> Result<String> {
    match runs {
        [a] => render_one(a, opts),
        [a, b] => {
            if a.benchmark() != b.benchmark() {
                return Err(Error::Usage(format!(
                    "cannot compare {} ({}) with {} ({}): a comparison needs two runs of the same benchmark",
                    a.name,
                    a.benchmark().name(),
                    b.name,
                    b.benchmark().name()
                )));
            }
            render_two(a, b, opts)
        }
        _ => Err(Error::Usage("a report takes one run, or two to compare".into())),
    }
}

fn provenance_table(p: &Provenance) -> String {
    let mut rows: Vec<Vec<String>> = vec![
        vec!["source".into(), html::esc(&p.source)],
        vec!["perceptio".into(), html::esc(&p.perceptio_version)],
        vec!["built".into(), html::esc(&p.date)],
    ];
    for (role, path, sha) in &p.inputs {
        rows.push(vec![
            html::esc(role),
            format!(
                "<code>{}</code><br><span class=\"muted\">sha256 {}</span>",
                html::esc(path),
                html::esc(sha)
            ),
        ]);
    }
    rows.push(vec![
        "model".into(),
        p.model
            .as_deref()
            .map_or_else(|| "<span class=\"muted\">not recorded</span>".into(), html::esc),
    ]);
    if p.prompts.is_empty() {
        rows.push(vec![
            "prompts".into(),
            "<span class=\"muted\">not recorded</span>".into(),
        ]);
    } else {
        let mut s = String::new();
        for q in &p.prompts {
            let _ = write!(
                s,
                "<div class=\"out\" style=\"margin-bottom:4px\">{}</div>",
                html::esc(&html::cut(q, 600))
            );
        }
        if p.distinct_prompts > p.prompts.len() {
            let _ = write!(
                s,
                "<span class=\"muted\">{} distinct prompts; the first {} shown</span>",
                p.distinct_prompts,
                p.prompts.len()
            );
        }
        rows.push(vec!["prompts".into(), s]);
    }
    for (k, v) in &p.settings {
        rows.push(vec![html::esc(k), html::esc(v)]);
    }
    let mut s = String::from("<table class=\"prov\"><tbody>");
    for r in rows {
        let _ = write!(s, "<tr><td>{}</td><td class=\"out\">{}</td></tr>", r[0], r[1]);
    }
    s.push_str("</tbody></table>");
    s
}

/// Headline cards; each value carries its exact number in `data-key` / `data-value`.
fn cards(ms: &[Metric]) -> String {
    let mut s = String::from("<div class=\"cards\">");
    for m in ms {
        let _ = write!(
            s,
            "<div class=\"card\" data-key=\"{}\" data-value=\"{}\" title=\"{}\"><div class=\"v\">{}</div><div class=\"k\">{}</div></div>",
            html::esc(&m.key),
            m.value,
            m.value,
            html::esc(&m.shown()),
            html::esc(&m.label)
        );
    }
    s.push_str("</div>");
    s
}

fn render_one(run: &Run, opts: &Options) -> Result<String> {
    let mut body = String::new();
    let head = run.headline();
    let main: Vec<Metric> = head
        .iter()
        .filter(|m| !m.key.contains('/') || m.key.starts_with("variants/"))
        .cloned()
        .collect();
    html::section(
        &mut body,
        "headline",
        "Headline numbers",
        "The numbers the scorer prints (percent); each card holds the exact fraction.",
        &cards(&main),
    );
    html::section(
        &mut body,
        "provenance",
        "Provenance",
        "What produced these numbers: inputs with their sha256, the model and prompts where the records carry them.",
        &provenance_table(&run.provenance),
    );
    match &run.data {
        Data::Refcoco(r) => r.sections(&mut body, opts)?,
        Data::Choice(c) => c.sections(&mut body),
    }
    let title = format!("{} report: {}", run.benchmark().name(), run.name);
    Ok(html::page(&title, &subtitle(run), &body))
}

fn subtitle(run: &Run) -> String {
    format!("{} · built {}", run.provenance.source, run.provenance.date)
}

fn render_two(a: &Run, b: &Run, opts: &Options) -> Result<String> {
    let mut body = String::new();
    let (ha, hb) = (a.headline(), b.headline());
    let vb: HashMap<&str, &Metric> = hb.iter().map(|m| (m.key.as_str(), m)).collect();
    let mut rows = Vec::new();
    let mut keys_seen = HashSet::new();
    for m in ha.iter().chain(hb.iter()) {
        if !keys_seen.insert(m.key.clone()) {
            continue;
        }
        let x = ha.iter().find(|x| x.key == m.key);
        let y = vb.get(m.key.as_str()).copied();
        let cell = |side: &str, v: Option<&Metric>| match v {
            Some(v) => format!(
                "<span data-side=\"{side}\" data-key=\"{}\" data-value=\"{}\" title=\"{}\">{}</span>",
                html::esc(&v.key),
                v.value,
                v.value,
                html::esc(&v.shown())
            ),
            None => "–".into(),
        };
        let d = match (x, y) {
            (Some(x), Some(y)) if m.fraction => {
                let d = y.value - x.value;
                let class = if d > 0.0 {
                    "good"
                } else if d < 0.0 {
                    "bad"
                } else {
                    ""
                };
                format!("<span class=\"{class}\">{}</span>", html::delta_pp(d))
            }
            (Some(x), Some(y)) if y.value == x.value => "0".into(),
            (Some(x), Some(y)) => format!("{:+}", y.value - x.value),
            _ => "–".into(),
        };
        rows.push(vec![html::esc(&m.label), cell("a", x), cell("b", y), d]);
    }
    html::section(
        &mut body,
        "headline",
        "Headline numbers",
        "A and B side by side; Δ = B − A (percentage points for fractions).",
        &html::table(
            "cmp",
            &["metric", &format!("A: {}", a.name), &format!("B: {}", b.name), "Δ"],
            &rows,
        ),
    );
    let prov = format!(
        "<div class=\"cols\"><div><h3>A: {}</h3>{}</div><div><h3>B: {}</h3>{}</div></div>",
        html::esc(&a.name),
        provenance_table(&a.provenance),
        html::esc(&b.name),
        provenance_table(&b.provenance)
    );
    html::section(&mut body, "provenance", "Provenance", "", &prov);
    match (&a.data, &b.data) {
        (Data::Refcoco(x), Data::Refcoco(y)) => refcoco::compare(&mut body, (&a.name, x), (&b.name, y), opts),
        (Data::Choice(x), Data::Choice(y)) => {
            choice::compare(&mut body, (&a.name, x), (&b.name, y), opts);
            Ok(())
        }
        _ => unreachable!("same benchmark checked"),
    }?;
    let title = format!("{} comparison: {} vs {}", a.benchmark().name(), a.name, b.name);
    let sub = format!(
        "A = {} · B = {} · built {}",
        a.provenance.source, b.provenance.source, a.provenance.date
    );
    Ok(html::page(&title, &sub, &body))
}
