//! `perceptio eval ...`: read files, call the scorers, print a table or JSON.

use crate::error::{Error, Result};
use crate::eval::{hardblink, mmbench, refcoco};
use crate::models::chat::Chat;
use crate::models::checkpoint::Checkpoint;
use crate::models::perceptio::{Grounder, LoadOptions};
use crate::report;
use crate::run;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(subcommand)]
    pub bench: Bench,
}

#[derive(Subcommand, Debug)]
pub enum Bench {
    /// Referring-expression segmentation: cIoU (ΣI/ΣU) and gIoU over the sentences of a split.
    Refcoco(RefcocoArgs),
    /// MMBench CircularEval accuracy, VLMEvalKit's exact matching (no LLM judge).
    Mmbench(MmbenchArgs),
    /// HardBLINK relative depth (AURORA): accuracy on the 3/4/5-point variants.
    Hardblink(HardblinkArgs),
    /// Combine the prediction files of all shards of a `--model --shard K/N` run into one.
    Merge(MergeArgs),
}

/// Options of `--model` runs (producing the predictions file with a model, then scoring it).
#[derive(Args, Debug, Clone)]
pub struct ModelRunArgs {
    /// Run this model (hub repo or directory) over the dataset, writing --predictions (resumable:
    /// samples already in the file are skipped), then score it.
    #[arg(long)]
    pub model: Option<String>,
    /// Process a deterministic 1/N of the images (K = 1..N); combine with `eval merge`.
    #[arg(long, value_name = "K/N", requires = "model")]
    pub shard: Option<String>,
    /// Predict at most N samples (of this shard) for a quick look.
    #[arg(long, value_name = "N", requires = "model")]
    pub limit: Option<usize>,
    /// Append one JSON line per sample: prompt, raw output, parsed answer or mask, correctness/IoU.
    #[arg(long, value_name = "FILE.jsonl", requires = "model")]
    pub log_samples: Option<PathBuf>,
    /// RefCOCO: run N samples through the model together (InternViT over their photos' tiles,
    /// the LLM as one padded batch, SAM2 over all their `[SEG]`s); same predictions as 1. See
    /// docs/eval.md.
    #[arg(long, value_name = "N", default_value_t = 1, requires = "model",
          value_parser = clap::value_parser!(u16).range(1..))]
    pub batch_size: u16,
    #[command(flatten)]
    pub rt: super::runtime::RuntimeArgs,
    /// Recompute an image's features for every sample (only to measure what reuse saves).
    #[arg(long, hide = true)]
    pub no_feature_reuse: bool,
}

#[derive(Args, Debug)]
pub struct MergeArgs {
    /// The merged predictions file (HardBLINK: a directory).
    #[arg(long, value_name = "OUT")]
    pub out: PathBuf,
    /// The shard prediction files (HardBLINK: the shard directories), each with its `.done.json`.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Dataset {
    Refcoco,
    #[value(name = "refcoco+")]
    RefcocoPlus,
    Refcocog,
}

impl Dataset {
    fn dir(self) -> &'static str {
        match self {
            Dataset::Refcoco => "refcoco",
            Dataset::RefcocoPlus => "refcoco+",
            Dataset::Refcocog => "refcocog",
        }
    }
    fn default_split_by(self) -> SplitBy {
        match self {
            Dataset::Refcocog => SplitBy::Umd,
            _ => SplitBy::Unc,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SplitBy {
    Unc,
    Umd,
    Google,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Split {
    Val,
    #[value(name = "testA")]
    TestA,
    #[value(name = "testB")]
    TestB,
    Test,
    Train,
}

impl Split {
    fn name(self) -> &'static str {
        match self {
            Split::Val => "val",
            Split::TestA => "testA",
            Split::TestB => "testB",
            Split::Test => "test",
            Split::Train => "train",
        }
    }
}

#[derive(Args, Debug)]
pub struct RefcocoArgs {
    /// Root of the refer layout: DIR/<dataset>/refs(unc).p and DIR/<dataset>/instances.json.
    #[arg(long, value_name = "DIR", required_unless_present = "annotations")]
    pub refer_root: Option<PathBuf>,
    #[arg(long, value_enum, required_unless_present = "annotations")]
    pub dataset: Option<Dataset>,
    /// Split; `test` on unc is testA ∪ testB, as in the refer API.
    #[arg(long, value_enum, required_unless_present = "annotations")]
    pub split: Option<Split>,
    /// Split scheme (default: unc for refcoco/refcoco+, umd for refcocog).
    #[arg(long, value_enum)]
    pub split_by: Option<SplitBy>,
    /// Ground truth as JSONL instead of the refer layout: one line per sentence,
    /// {"sent_id", "height", "width", "mask"} (see docs/formats.md).
    #[arg(long, value_name = "GT.jsonl", conflicts_with_all = ["refer_root", "dataset", "split", "split_by"])]
    pub annotations: Option<PathBuf>,
    /// Predictions: one JSON line per sentence {"sent_id", "mask": RLE | {"polygons"} | null}; `-` reads stdin.
    #[arg(long, value_name = "PRED.jsonl")]
    pub predictions: PathBuf,
    /// How an annotation's overlapping polygons combine: union (default), or the lisa / sa2va
    /// evaluation scripts' behaviour, to reproduce their numbers exactly.
    #[arg(long, value_enum, default_value = "union")]
    pub gt_overlap: refcoco::GtOverlap,
    /// Write per-sentence intersection, union and IoU as JSONL.
    #[arg(long, value_name = "FILE.jsonl")]
    pub per_sample: Option<PathBuf>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// The COCO image directory (train2014) holding the instances' file_name: what --model runs
    /// on, and the photos of the --report gallery.
    #[arg(long, value_name = "DIR")]
    pub images: Option<PathBuf>,
    /// Write a self-contained HTML report (numbers, IoU histogram, worst and median sentences; with
    /// --images, on the photos). See docs/report.md.
    #[arg(long, value_name = "FILE.html")]
    pub report: Option<PathBuf>,
    /// With --report: how many worst and how many median sentences to show.
    #[arg(long, value_name = "N", default_value_t = 8, requires = "report")]
    pub report_k: usize,
    /// With --model: teacher-force "Sure, [SEG]." (LISA/GLaMM style) instead of generating.
    #[arg(long, requires = "model")]
    pub force_seg: bool,
    #[command(flatten)]
    pub run: ModelRunArgs,
}

#[derive(Args, Debug)]
pub struct MmbenchArgs {
    /// The benchmark TSV as VLMEvalKit ships it (e.g. MMBench_DEV_EN.tsv).
    #[arg(long, value_name = "TSV")]
    pub annotations: PathBuf,
    /// Predictions: JSONL {"index", "prediction"}, or VLMEvalKit's .xlsx/.tsv; `-` reads JSONL from stdin.
    #[arg(long, value_name = "PRED")]
    pub predictions: PathBuf,
    /// A question whose main row has no prediction: `strict` counts it wrong, `vlmevalkit` drops it.
    #[arg(long, value_enum, default_value = "strict")]
    pub missing: mmbench::MissingPolicy,
    /// Answer-matching rules: VLMEvalKit's current `can_infer`, or lmms-eval's older rules.
    #[arg(long, value_enum, default_value = "vlmevalkit")]
    pub matcher: mmbench::matching::Matcher,
    /// Also write VLMEvalKit's `_acc.csv` table.
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
    /// Write one JSON line per question (outcome, rows, category, each row's answer).
    #[arg(long, value_name = "FILE.jsonl")]
    pub per_question: Option<PathBuf>,
    /// Write a self-contained HTML report (numbers, per-category bars, confusion table, unresolved
    /// answers). See docs/report.md.
    #[arg(long, value_name = "FILE.html")]
    pub report: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub run: ModelRunArgs,
}

#[derive(Args, Debug)]
pub struct HardblinkArgs {
    /// HardBLINK in the AURORA layout (answers/blink_{3,4,5}pointscenter_answers.jsonl).
    #[arg(long, value_name = "DIR")]
    pub annotations: PathBuf,
    /// Directory with one LLaVA-style answers JSONL per variant, named blink_{N}pointscenter*.jsonl.
    #[arg(long, value_name = "PRED_DIR")]
    pub predictions: PathBuf,
    /// BLINK Relative_Depth (2-point) items with gold and prediction, for AURORA's 4-column mean.
    #[arg(long, value_name = "FILE")]
    pub blink2: Option<PathBuf>,
    /// Write one JSON line per item (variant, question_id, answer, parsed and gold letter, outcome).
    #[arg(long, value_name = "FILE.jsonl")]
    pub per_sample: Option<PathBuf>,
    /// Write a self-contained HTML report (numbers, per-variant bars, confusion tables, unparsable
    /// answers). See docs/report.md.
    #[arg(long, value_name = "FILE.html")]
    pub report: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
    /// With --model: the images root (default: ANNOTATIONS/images), holding blink{N}pointscenter/.
    #[arg(long, value_name = "DIR", requires = "model")]
    pub images: Option<PathBuf>,
    #[command(flatten)]
    pub run: ModelRunArgs,
}

pub fn run(args: EvalArgs) -> Result<()> {
    match args.bench {
        Bench::Refcoco(a) => run_refcoco(a),
        Bench::Mmbench(a) => run_mmbench(a),
        Bench::Hardblink(a) => run_hardblink(a),
        Bench::Merge(a) => run_merge(a),
    }
}

/// Load what `--model` runs need and translate the shared options.
fn model_setup(
    r: &ModelRunArgs,
    predictions: &Path,
) -> Result<(
    Checkpoint,
    LoadOptions,
    candle_core::Device,
    run::benchmarks::RunOptions,
)> {
    if predictions.as_os_str() == "-" {
        return Err(Error::Usage(
            "--model writes --predictions: give a file, not `-`".into(),
        ));
    }
    let spec = r.model.as_deref().expect("called with --model");
    let (device, dtype) = r.rt.device_dtype()?;
    let (ck, lo) = r.rt.open_model(spec, &device, dtype)?;
    let shard = match &r.shard {
        Some(s) => run::Shard::parse(s)?,
        None => run::Shard::ALL,
    };
    let opts = run::benchmarks::RunOptions {
        shard,
        limit: r.limit,
        log_samples: r.log_samples.clone(),
        max_tiles: 0, // set once the model's default is known
        generation: crate::models::generate::GenerateOptions {
            max_new_tokens: r.rt.max_new_tokens,
            ..Default::default()
        },
        force_seg: false,
        reuse_features: !r.no_feature_reuse,
        batch_size: r.batch_size as usize,
        model_id: spec.to_string(),
    };
    Ok((ck, lo, device, opts))
}

/// Refuse `--batch-size` above 1 where the benchmark's loop runs one sample at a time.
fn unbatched(r: &ModelRunArgs, bench: &str) -> Result<()> {
    if r.batch_size > 1 {
        return Err(Error::Usage(format!(
            "--batch-size is supported by `eval refcoco --model` only; `eval {bench}` runs one sample at a time (drop --batch-size)"
        )));
    }
    Ok(())
}

fn report_run(s: &run::benchmarks::RunSummary, o: &run::benchmarks::RunOptions, out: &Path) {
    eprintln!(
        "perceptio: {} of {} samples predicted now, {} resumed from {} ({:.2} samples/s){}",
        s.predicted,
        s.planned,
        s.resumed,
        out.display(),
        s.samples_per_second(),
        if o.shard.n > 1 {
            format!("; shard {}/{}", o.shard.k, o.shard.n)
        } else {
            String::new()
        }
    );
}

/// After a model run: whether to go on and score (a shard alone is not scored).
fn should_score(s: &run::benchmarks::RunSummary, o: &run::benchmarks::RunOptions, out: &Path) -> Result<bool> {
    if o.shard.n > 1 {
        print_text(&format!(
            "shard {}/{} {}: {}; combine all shards with `perceptio eval merge --out MERGED {}...` and score the merged file\n",
            o.shard.k,
            o.shard.n,
            if s.complete { "complete" } else { "incomplete" },
            out.display(),
            out.display()
        ))?;
        return Ok(false);
    }
    Ok(true)
}

fn run_merge(a: MergeArgs) -> Result<()> {
    if a.inputs.iter().all(|p| p.is_dir()) {
        std::fs::create_dir_all(&a.out).map_err(|e| Error::io(&a.out, e))?;
        for n in hardblink::VARIANTS {
            let files: Vec<PathBuf> = a
                .inputs
                .iter()
                .map(|d| run::benchmarks::hardblink_output(d, n))
                .collect();
            let k = run::merge(&files, &run::benchmarks::hardblink_output(&a.out, n))?;
            print_text(&format!(
                "{}: {k} lines\n",
                run::benchmarks::hardblink_output(&a.out, n).display()
            ))?;
        }
        return Ok(());
    }
    let k = run::merge(&a.inputs, &a.out)?;
    print_text(&format!(
        "{}: {k} lines from {} shards\n",
        a.out.display(),
        a.inputs.len()
    ))?;
    Ok(())
}

/// A predictions path, spooling `-` (stdin) into a temp file so every reader takes a path.
pub(super) struct Input {
    pub path: PathBuf,
    pub shown: String,
    _tmp: Option<tempfile::NamedTempFile>,
}

pub(super) fn input(p: &Path, suffix: &str) -> Result<Input> {
    if p.as_os_str() != "-" {
        return Ok(Input {
            path: p.to_path_buf(),
            shown: p.display().to_string(),
            _tmp: None,
        });
    }
    let mut tmp = tempfile::Builder::new()
        .suffix(suffix)
        .tempfile()
        .map_err(|e| Error::io("<stdin>", e))?;
    std::io::copy(&mut std::io::stdin().lock(), tmp.as_file_mut()).map_err(|e| Error::io("<stdin>", e))?;
    Ok(Input {
        path: tmp.path().to_path_buf(),
        shown: "<stdin>".into(),
        _tmp: Some(tmp),
    })
}

/// (role, path as shown, sha256) of every input, computed once for --json and --report.
fn hashed(files: &[(&str, &Path, &str)]) -> Result<Vec<(String, String, String)>> {
    files
        .iter()
        .map(|(role, path, shown)| Ok((role.to_string(), shown.to_string(), crate::util::sha256_file(path)?)))
        .collect()
}

fn provenance(inputs: &[(String, String, String)]) -> Value {
    let mut m = serde_json::Map::new();
    for (role, shown, sha) in inputs {
        m.insert(role.clone(), json!({"path": shown, "sha256": sha}));
    }
    json!({"perceptio_version": env!("CARGO_PKG_VERSION"), "inputs": m})
}

/// The report's provenance: the scorer's inputs, the model of a `--model` run, settings.
fn report_provenance(what: &str, inputs: &[(String, String, String)], model: Option<&str>) -> report::Provenance {
    let mut p = report::Provenance::new(format!("perceptio {what}, scored in this run"));
    p.inputs = inputs.to_vec();
    p.model = model.map(String::from);
    p
}

/// Refuse `--report -`: stdout already carries the scores.
fn report_target(path: &Path) -> Result<()> {
    if path.as_os_str() == "-" {
        return Err(Error::Usage(
            "--report - would mix the report with the scores on stdout: give a file (or use `perceptio report`)".into(),
        ));
    }
    Ok(())
}

/// The raw outputs (by `key`) and the prompts of a `--log-samples` file, for a report.
fn log_extras(path: &Path, key: &str) -> Result<(HashMap<i64, String>, Vec<String>)> {
    let mut outputs = HashMap::new();
    let mut prompts = Vec::new();
    if !path.is_file() {
        return Ok((outputs, prompts));
    }
    crate::util::jsonl::for_each::<Value, _>(path, |_, v| {
        if let (Some(k), Some(o)) = (
            v.get(key).and_then(Value::as_i64),
            v.get("output").and_then(Value::as_str),
        ) {
            outputs.insert(k, o.to_string());
        }
        if let Some(p) = v.get("prompt").and_then(Value::as_str) {
            prompts.push(p.to_string());
        }
        Ok(())
    })?;
    Ok((outputs, prompts))
}

fn run_name(shown: &str) -> String {
    Path::new(shown)
        .file_name()
        .map_or_else(|| shown.to_string(), |n| n.to_string_lossy().into_owned())
}

fn print_json(v: &Value) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v).map_err(|e| Error::io("<stdout>", e.into()))?;
    writeln!(out).map_err(|e| Error::io("<stdout>", e))
}

fn print_text(s: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(s.as_bytes()).map_err(|e| Error::io("<stdout>", e))
}

fn write_jsonl<T: serde::Serialize>(path: &Path, items: &[T]) -> Result<()> {
    crate::util::atomic::write_with(path, |w| {
        for it in items {
            serde_json::to_writer(&mut *w, it)?;
            w.write_all(b"\n")?;
        }
        Ok(())
    })
}

fn pct(x: f64) -> String {
    if x.is_nan() {
        "-".into()
    } else {
        format!("{:.1}", x * 100.0)
    }
}

fn run_refcoco(a: RefcocoArgs) -> Result<()> {
    if a.run.model.is_some() && a.images.is_none() {
        return Err(Error::Usage(
            "--model needs --images DIR (the COCO train2014 images)".into(),
        ));
    }
    if a.images.is_some() && a.run.model.is_none() && a.report.is_none() {
        return Err(Error::Usage(
            "--images is for --model (the photos to run on) or --report (its gallery)".into(),
        ));
    }
    if let Some(r) = &a.report {
        report_target(r)?;
    }
    let (mut gt, label, meta) = if let Some(gt_path) = &a.annotations {
        let gt = refcoco::refer::load_gt_jsonl(gt_path)?;
        (gt, format!("{}", gt_path.display()), json!({"annotations": gt_path}))
    } else {
        let (root, dataset, split) = (a.refer_root.as_ref().unwrap(), a.dataset.unwrap(), a.split.unwrap());
        let split_by = a.split_by.unwrap_or(dataset.default_split_by());
        let sb = format!("{split_by:?}").to_lowercase();
        let gt = refcoco::refer::load_refer(root, dataset.dir(), &sb, split.name(), a.gt_overlap)?;
        let label = format!("{} ({sb}) {}", dataset.dir(), split.name());
        (
            gt,
            label,
            json!({"dataset": dataset.dir(), "split": split.name(), "split_by": sb}),
        )
    };
    if a.run.model.is_some() {
        if a.run.batch_size > 1 && a.run.no_feature_reuse {
            return Err(Error::Usage(
                "--batch-size above 1 always reuses an image's features; drop --no-feature-reuse".into(),
            ));
        }
        let (ck, lo, device, mut o) = model_setup(&a.run, &a.predictions)?;
        let mut g = Grounder::load(
            &ck,
            &LoadOptions {
                require_grounding: true,
                ..lo
            },
        )?;
        drop(ck);
        o.max_tiles = a.run.rt.tiles(&device, g.chat.default_max_tiles());
        o.force_seg = a.force_seg;
        let mut run = meta.clone();
        run["model"] = json!(o.model_id);
        run["force_seg"] = json!(a.force_seg);
        run["max_tiles"] = json!(o.max_tiles);
        run["max_new_tokens"] = json!(a.run.rt.max_new_tokens);
        let s = run::benchmarks::refcoco(
            &mut g,
            &gt,
            a.images.as_deref().expect("checked"),
            &a.predictions,
            &run,
            &o,
        )?;
        report_run(&s, &o, &a.predictions);
        if !should_score(&s, &o, &a.predictions)? {
            return Ok(());
        }
        if o.limit.is_some() {
            // A quick look: score the sentences predicted so far.
            let done = run::PredictionFile::open(&a.predictions, "sent_id")?.done;
            gt.samples.retain(|x| done.contains(&x.sent_id));
        }
    }
    let pred = input(&a.predictions, ".jsonl")?;
    let report = refcoco::score(&gt, &pred.path)?;
    if let Some(p) = &a.per_sample {
        write_jsonl(p, &report.per_sample)?;
    }
    let inputs = if a.json || a.report.is_some() {
        let mut files: Vec<(&str, &Path, &str)> = vec![("predictions", &pred.path, &pred.shown)];
        let shown: Vec<String> = gt.sources.iter().map(|p| p.display().to_string()).collect();
        let roles = if a.annotations.is_some() {
            vec!["annotations"]
        } else {
            vec!["refs", "instances"]
        };
        for ((role, p), s) in roles.iter().zip(&gt.sources).zip(&shown) {
            files.push((role, p, s));
        }
        hashed(&files)?
    } else {
        Vec::new()
    };
    if let Some(out) = &a.report {
        let mut prov = report_provenance("eval refcoco", &inputs, a.run.model.as_deref());
        if let Value::Object(m) = &meta {
            for (k, v) in m {
                prov.setting(k, v.as_str().map_or_else(|| v.to_string(), String::from));
            }
        }
        prov.setting("gt_overlap", format!("{:?}", a.gt_overlap).to_lowercase());
        let (outputs, prompts) = match (&a.run.model, &a.run.log_samples) {
            (Some(_), Some(log)) => log_extras(log, "sent_id")?,
            _ => (HashMap::new(), Vec::new()),
        };
        if a.run.model.is_some() {
            prov.setting(
                "prompt template",
                crate::models::perceptio::referring_prompt("{sentence}"),
            );
        }
        for p in &prompts {
            prov.add_prompt(p);
        }
        let run = report::Run::refcoco(&report, &outputs, &run_name(&pred.shown), prov)?;
        let opts = report::Options {
            images: a.images.clone(),
            k: a.report_k,
            ..Default::default()
        };
        super::report::write_html(out, &report::render(&[run], &opts)?)?;
    }
    if a.json {
        let mut v = serde_json::to_value(&report).expect("report serialises");
        let obj = v.as_object_mut().unwrap();
        if let Value::Object(m) = meta {
            obj.extend(m);
        }
        obj.insert("gt_overlap".into(), serde_json::to_value(a.gt_overlap).unwrap());
        obj.insert("provenance".into(), provenance(&inputs));
        print_json(&v)
    } else {
        print_text(&format!(
            "RefCOCO-style segmentation: {label}\n  sentences            {}\n  cIoU                 {}\n  gIoU                 {}\n  missing predictions  {}\n  empty predictions    {}\n  other-split lines    {} (ignored)\n",
            report.samples,
            pct(report.ciou),
            pct(report.giou),
            report.missing_predictions,
            report.empty_predictions,
            report.other_split_predictions
        ))
    }
}

fn run_mmbench(a: MmbenchArgs) -> Result<()> {
    if let Some(r) = &a.report {
        report_target(r)?;
    }
    if a.run.model.is_some() {
        unbatched(&a.run, "mmbench")?;
        let (ck, _, device, mut o) = model_setup(&a.run, &a.predictions)?;
        let mut chat = Chat::from_checkpoint(&ck)?;
        drop(ck);
        o.max_tiles = a.run.rt.tiles(&device, chat.default_max_tiles());
        let run = json!({"annotations": crate::util::sha256_file(&a.annotations)?, "model": o.model_id, "max_tiles": o.max_tiles, "max_new_tokens": a.run.rt.max_new_tokens});
        let s = run::benchmarks::mmbench(&mut chat, &a.annotations, &a.predictions, &run, &o)?;
        report_run(&s, &o, &a.predictions);
        if !should_score(&s, &o, &a.predictions)? {
            return Ok(());
        }
    }
    let pred = input(&a.predictions, ".jsonl")?;
    let ann = mmbench::read_annotations(&a.annotations)?;
    let preds = mmbench::read_predictions(&pred.path)?;
    let report = mmbench::evaluate(&ann, &preds, a.matcher, a.missing, &pred.path)?;
    if let Some(p) = &a.csv {
        crate::util::atomic::write(p, &mmbench::acc_csv(&report))?;
    }
    if let Some(p) = &a.per_question {
        write_jsonl(p, &report.results)?;
    }
    let inputs = if a.json || a.report.is_some() {
        let shown_ann = a.annotations.display().to_string();
        hashed(&[
            ("annotations", &a.annotations, &shown_ann),
            ("predictions", &pred.path, &pred.shown),
        ])?
    } else {
        Vec::new()
    };
    if let Some(out) = &a.report {
        let mut prov = report_provenance("eval mmbench", &inputs, a.run.model.as_deref());
        if let (Some(_), Some(log)) = (&a.run.model, &a.run.log_samples) {
            for p in log_extras(log, "index")?.1 {
                prov.add_prompt(&p);
            }
        }
        let run = report::Run::mmbench(&report, &run_name(&pred.shown), prov)?;
        super::report::write_html(out, &report::render(&[run], &Default::default())?)?;
    }
    if a.json {
        let mut v = serde_json::to_value(&report).expect("report serialises");
        v.as_object_mut()
            .unwrap()
            .insert("provenance".into(), provenance(&inputs));
        print_json(&v)
    } else {
        let mut s = format!(
            "MMBench CircularEval ({} matcher, no LLM judge: unreadable answers count as wrong)\n  questions  {}\n  Overall    {}\n",
            format!("{:?}", a.matcher).to_lowercase(),
            report.questions,
            pct(report.overall)
        );
        for (k, v) in &report.l2_categories {
            s.push_str(&format!("  {:<9}  {}\n", mmbench::l2_abbreviation(k), pct(*v)));
        }
        s.push_str(&format!(
            "  unresolved answers {}, questions without a main prediction {} ({})\n",
            report.unresolved,
            report.missing_main_predictions,
            if a.missing == mmbench::MissingPolicy::Strict {
                "counted wrong"
            } else {
                "dropped"
            }
        ));
        print_text(&s)
    }
}

fn run_hardblink(a: HardblinkArgs) -> Result<()> {
    if let Some(r) = &a.report {
        report_target(r)?;
    }
    if a.run.model.is_some() {
        unbatched(&a.run, "hardblink")?;
        let (ck, _, device, mut o) = model_setup(&a.run, &a.predictions)?;
        let mut chat = Chat::from_checkpoint(&ck)?;
        drop(ck);
        o.max_tiles = a.run.rt.tiles(&device, chat.default_max_tiles());
        let images = a.images.clone().unwrap_or_else(|| a.annotations.join("images"));
        let run = json!({"model": o.model_id, "max_tiles": o.max_tiles, "max_new_tokens": a.run.rt.max_new_tokens});
        let s = run::benchmarks::hardblink(&mut chat, &a.annotations, &images, &a.predictions, &run, &o)?;
        report_run(&s, &o, &a.predictions);
        if !should_score(&s, &o, &a.predictions)? {
            return Ok(());
        }
    }
    let report = hardblink::score(&a.annotations, &a.predictions, a.blink2.as_deref())?;
    if let Some(p) = &a.per_sample {
        write_jsonl(p, &report.items().collect::<Vec<_>>())?;
    }
    let inputs = if a.json || a.report.is_some() {
        let mut files: Vec<(String, PathBuf)> = report
            .details
            .iter()
            .map(|d| (format!("predictions_{}", d.points), d.predictions_file.clone()))
            .collect();
        if let Some(b) = &a.blink2 {
            files.push(("blink2".into(), b.clone()));
        }
        let shown: Vec<String> = files.iter().map(|(_, p)| p.display().to_string()).collect();
        let refs: Vec<(&str, &Path, &str)> = files
            .iter()
            .zip(&shown)
            .map(|((r, p), s)| (r.as_str(), p.as_path(), s.as_str()))
            .collect();
        hashed(&refs)?
    } else {
        Vec::new()
    };
    if let Some(out) = &a.report {
        let prov = report_provenance("eval hardblink", &inputs, a.run.model.as_deref());
        let run = report::Run::hardblink(&report, &run_name(&a.predictions.display().to_string()), prov)?;
        super::report::write_html(out, &report::render(&[run], &Default::default())?)?;
    }
    if a.json {
        let mut v = serde_json::to_value(&report).expect("report serialises");
        v.as_object_mut()
            .unwrap()
            .insert("provenance".into(), provenance(&inputs));
        print_json(&v)
    } else {
        let mut s = String::from("HardBLINK (relative depth, unparsable answers count as wrong)\n");
        for d in &report.details {
            s.push_str(&format!(
                "  {}-point  {:>5}   ({}/{}; unparsable {}, missing {})\n",
                d.points,
                pct(d.accuracy),
                d.correct,
                d.items,
                d.unparsable,
                d.missing
            ));
        }
        s.push_str(&format!("  mean     {:>5}   (3/4/5)\n", pct(report.mean)));
        if let Some(m) = report.aurora_mean {
            s.push_str(&format!(
                "  AURORA   {:>5}   (mean of BLINK 2-point and 3/4/5)\n",
                pct(m)
            ));
        }
        print_text(&s)
    }
}
