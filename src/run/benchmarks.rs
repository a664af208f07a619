//! The model loops of `eval ... --model`, one per benchmark, with the reference prompts:
//! - RefCOCO: Sa2VA's RES prompt `<image>\n Please segment {sent} in this image.` and its
//!   post-processing (OR of the `[SEG]` masks; no `[SEG]` → `null`, an empty mask);
//! - HardBLINK: the question text of AURORA's questions file as the user turn `<image>\n{text}`;
//! - MMBench: Sa2VA's VLMEvalKit wrapper (`build_multi_choice_prompt`): hint, question, `X. option`
//!   lines and "Answer with the option's letter from the given choices directly." (Chinese
//!   instruction when the prompt has CJK characters).
//!
//! Samples are grouped by image (an image's sentences / circular copies run back to back, so
//! its features are computed once) and groups are sharded round-robin. RefCOCO with
//! `batch_size` > 1 cuts the remaining samples into chunks that go through
//! [`Grounder::segment_batch`] together, writing the same lines in the same order.

use super::{progress, Manifest, PredictionFile, Shard};
use crate::error::{Error, Result};
use crate::eval::mmbench::matching::{can_infer, Choices, Matcher};
use crate::eval::refcoco::refer::GroundTruth;
use crate::eval::{hardblink, mmbench};
use crate::models::chat::Chat;
use crate::models::generate::GenerateOptions;
use crate::models::internvl::chat::Vision;
use crate::models::perceptio::{BatchItem, Grounder, SegmentOptions, SegmentResult};
use image::RgbImage;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub shard: Shard,
    /// Predict at most this many samples of the shard (in canonical order).
    pub limit: Option<usize>,
    pub log_samples: Option<PathBuf>,
    pub max_tiles: usize,
    pub generation: GenerateOptions,
    /// RefCOCO: teacher-force "Sure, [SEG]." (LISA/GLaMM style) instead of generating.
    pub force_seg: bool,
    /// Reuse an image's InternViT and SAM2 features across its samples (default). Off only to
    /// measure what the reuse saves.
    pub reuse_features: bool,
    /// RefCOCO: samples run through the model together (1: one at a time). Predictions are the
    /// same either way; see [`Grounder::segment_batch`].
    pub batch_size: usize,
    /// Recorded in the manifest and the prediction lines that carry a model id.
    pub model_id: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RunSummary {
    /// Samples in this shard (after --limit).
    pub planned: usize,
    /// Samples found already predicted (resume).
    pub resumed: usize,
    /// Samples predicted by this run.
    pub predicted: usize,
    /// Every sample of the shard is predicted (a manifest was written).
    pub complete: bool,
    pub seconds: f64,
}

impl RunSummary {
    pub fn samples_per_second(&self) -> f64 {
        self.predicted as f64 / self.seconds.max(1e-9)
    }
}

/// Plan: indices of samples (grouped; `group_of[i]` is the 0-based group) owned by the shard,
/// cut to `limit`.
fn plan(group_of: &[usize], o: &RunOptions) -> Vec<usize> {
    let mut v: Vec<usize> = (0..group_of.len()).filter(|&i| o.shard.owns(group_of[i])).collect();
    // An image's samples back to back, images in first-appearance order.
    v.sort_by_key(|&i| (group_of[i], i));
    if let Some(l) = o.limit {
        v.truncate(l);
    }
    v
}

/// Group indices in first-appearance order of `keys`.
fn groups<K: std::hash::Hash + Eq + Clone>(keys: &[K]) -> Vec<usize> {
    let mut ids: HashMap<K, usize> = HashMap::new();
    keys.iter()
        .map(|k| {
            let n = ids.len();
            *ids.entry(k.clone()).or_insert(n)
        })
        .collect()
}

fn open_log(o: &RunOptions, key: &'static str) -> Result<Option<PredictionFile>> {
    o.log_samples
        .as_deref()
        .map(|p| PredictionFile::open(p, key))
        .transpose()
}

/// A predictions file opened for resuming, saying so when a torn last line was dropped.
fn open_output(path: &Path, key: &'static str) -> Result<PredictionFile> {
    let f = PredictionFile::open(path, key)?;
    if f.repaired {
        eprintln!(
            "perceptio: {}: dropped an incomplete last line (interrupted run); redoing that sample",
            path.display()
        );
    }
    Ok(f)
}

/// What every benchmark loop shares: the clock, the progress bar (resumed samples already
/// counted) and the tallies of the summary.
struct Progress {
    t0: Instant,
    pb: indicatif::ProgressBar,
    planned: usize,
    resumed: usize,
    predicted: usize,
}

impl Progress {
    fn start(what: &str, planned: usize, resumed: usize) -> Self {
        let pb = progress(planned as u64, what);
        pb.inc(resumed as u64);
        Self {
            t0: Instant::now(),
            pb,
            planned,
            resumed,
            predicted: 0,
        }
    }

    fn one_done(&mut self) {
        self.predicted += 1;
        self.pb.inc(1);
    }

    fn finish(self, complete: bool) -> RunSummary {
        self.pb.finish_and_clear();
        RunSummary {
            planned: self.planned,
            resumed: self.resumed,
            predicted: self.predicted,
            complete,
            seconds: self.t0.elapsed().as_secs_f64(),
        }
    }
}

fn finish(file: &PredictionFile, benchmark: &str, run: &Value, o: &RunOptions, planned: &[i64]) -> Result<bool> {
    file.sync()?;
    let complete = o.limit.is_none() && planned.iter().all(|k| file.done.contains(k));
    if complete {
        Manifest {
            benchmark: benchmark.into(),
            run: run.clone(),
            shard: o.shard,
            samples: file.done.len(),
            perceptio_version: env!("CARGO_PKG_VERSION").into(),
        }
        .write(&file.path)?;
    }
    Ok(complete)
}

/// RefCOCO/+/g: one `{"sent_id", "mask"}` line per sentence of the split.
pub fn refcoco(
    g: &mut Grounder,
    gt: &GroundTruth,
    images: &Path,
    out: &Path,
    run: &Value,
    o: &RunOptions,
) -> Result<RunSummary> {
    let image_keys: Vec<String> = gt
        .samples
        .iter()
        .map(|s| {
            s.file_name
                .clone()
                .or(s.image_id.map(|i| i.to_string()))
                .unwrap_or_default()
        })
        .collect();
    let group_of = groups(&image_keys);
    let planned = plan(&group_of, o);
    let mut file = open_output(out, "sent_id")?;
    let mut log = open_log(o, "sent_id")?;
    let resumed = planned
        .iter()
        .filter(|&&i| file.done.contains(&gt.samples[i].sent_id))
        .count();
    let mut prog = Progress::start("refcoco", planned.len(), resumed);
    let sopts = SegmentOptions {
        max_tiles: o.max_tiles,
        force_seg: o.force_seg,
        generation: o.generation.clone(),
    };
    if o.batch_size > 1 {
        if !o.reuse_features {
            return Err(Error::Usage(
                "--batch-size above 1 always reuses an image's features; drop --no-feature-reuse".into(),
            ));
        }
        let todo: Vec<usize> = planned
            .iter()
            .copied()
            .filter(|&k| !file.done.contains(&gt.samples[k].sent_id))
            .collect();
        // The previous batch's last photo with its features: an image's sentences may straddle
        // two batches, and its features are then reused, not recomputed.
        let mut carry: Option<(usize, RgbImage, Vision)> = None;
        for batch in todo.chunks(o.batch_size) {
            let texts = batch.iter().map(|&k| sample_text(gt, k)).collect::<Result<Vec<_>>>()?;
            // The batch's distinct photos in order, with the features already at hand.
            let mut photos: Vec<(usize, RgbImage, Option<Vision>)> = Vec::new();
            for &k in batch {
                let grp = group_of[k];
                if photos.iter().any(|p| p.0 == grp) {
                    continue;
                }
                photos.push(match carry.take() {
                    Some((g0, img, v)) if g0 == grp => (grp, img, Some(v)),
                    c => {
                        carry = c;
                        (grp, load_sample_image(gt, k, images)?, None)
                    }
                });
            }
            let need: Vec<&RgbImage> = photos.iter().filter(|p| p.2.is_none()).map(|p| &p.1).collect();
            let mut fresh = g.chat.vision_batch(&need, o.max_tiles)?.into_iter();
            for p in photos.iter_mut().filter(|p| p.2.is_none()) {
                p.2 = fresh.next();
            }
            let results = {
                let items: Vec<BatchItem> = batch
                    .iter()
                    .zip(&texts)
                    .map(|(&k, t)| {
                        let p = photos.iter().find(|p| p.0 == group_of[k]).expect("added above");
                        BatchItem {
                            img: &p.1,
                            vision: p.2.as_ref().expect("computed above"),
                            expression: t,
                        }
                    })
                    .collect();
                g.segment_batch(&items, &sopts)?
            };
            for (&k, r) in batch.iter().zip(&results) {
                write_refcoco(gt, k, r, &mut file, log.as_mut(), o)?;
                prog.one_done();
            }
            let last = group_of[*batch.last().expect("chunks are not empty")];
            carry = photos
                .into_iter()
                .find(|p| p.0 == last)
                .and_then(|(g0, img, v)| Some((g0, img, v?)));
        }
        let keys: Vec<i64> = planned.iter().map(|&k| gt.samples[k].sent_id).collect();
        let complete = finish(&file, "refcoco", run, o, &keys)?;
        return Ok(prog.finish(complete));
    }
    let mut i = 0;
    while i < planned.len() {
        let grp = group_of[planned[i]];
        let mut j = i;
        while j < planned.len() && group_of[planned[j]] == grp {
            j += 1;
        }
        let todo: Vec<usize> = planned[i..j]
            .iter()
            .copied()
            .filter(|&k| !file.done.contains(&gt.samples[k].sent_id))
            .collect();
        i = j;
        if todo.is_empty() {
            continue;
        }
        let img = load_sample_image(gt, todo[0], images)?;
        let mut vision = if o.reuse_features {
            Some(g.vision(&img, o.max_tiles)?)
        } else {
            None
        };
        for k in todo {
            let text = sample_text(gt, k)?;
            if !o.reuse_features {
                if let Some(s) = &g.sam2 {
                    s.clear_cache();
                }
                vision = Some(g.vision(&img, o.max_tiles)?);
            }
            let r = g.segment(&img, vision.as_ref().expect("set above"), text, &sopts)?;
            write_refcoco(gt, k, &r, &mut file, log.as_mut(), o)?;
            prog.one_done();
        }
    }
    let keys: Vec<i64> = planned.iter().map(|&k| gt.samples[k].sent_id).collect();
    let complete = finish(&file, "refcoco", run, o, &keys)?;
    Ok(prog.finish(complete))
}

/// The sentence of sample `k`, or why it has none.
fn sample_text(gt: &GroundTruth, k: usize) -> Result<&str> {
    let s = &gt.samples[k];
    s.text.as_deref().filter(|t| !t.trim().is_empty()).ok_or_else(|| {
        Error::at(
            format!("sent_id {}", s.sent_id),
            "has no sentence text (`sent` in the refs pickle)",
        )
    })
}

/// The photo of sample `k` under `images`, checked against the annotated size.
fn load_sample_image(gt: &GroundTruth, k: usize, images: &Path) -> Result<RgbImage> {
    let s0 = &gt.samples[k];
    let name = s0.file_name.as_deref().ok_or_else(|| {
        Error::at(
            format!("sent_id {}", s0.sent_id),
            "the image has no file_name in the annotations, so it cannot be found under --images",
        )
    })?;
    let path = images.join(name);
    let img = crate::preprocess::load_rgb(&path)?;
    if (img.width(), img.height()) != (s0.width, s0.height) {
        return Err(Error::input(
            &path,
            format!(
                "is {}x{} but the annotations say {}x{}",
                img.width(),
                img.height(),
                s0.width,
                s0.height
            ),
        ));
    }
    Ok(img)
}

/// Append sample `k`'s prediction line (and its log line).
fn write_refcoco(
    gt: &GroundTruth,
    k: usize,
    r: &SegmentResult,
    file: &mut PredictionFile,
    log: Option<&mut PredictionFile>,
    o: &RunOptions,
) -> Result<()> {
    let s = &gt.samples[k];
    let pred = r
        .mask
        .to_rle()
        .map_err(|e| Error::at(format!("sent_id {}", s.sent_id), e.0))?;
    let mask = if r.seg_count > 0 {
        pred.to_coco_json()
    } else {
        Value::Null
    };
    file.append(&json!({"sent_id": s.sent_id, "mask": mask}))?;
    if let Some(l) = log {
        let (inter, union) = pred
            .intersection_union(&gt.masks[s.mask])
            .map_err(|e| Error::at(format!("sent_id {}", s.sent_id), e.0))?;
        l.append(&json!({
            "sent_id": s.sent_id, "image": s.file_name, "sentence": r.expression, "prompt": r.prompt, "output": r.text,
            "token_ids": r.token_ids, "seg_count": r.seg_count, "mask": mask, "intersection": inter, "union": union,
            "iou": if union > 0 { inter as f64 / union as f64 } else { 1.0 },
            "scores": r.scores, "timings": r.timings,
            "gt_mask": gt.masks[s.mask].to_coco_json(), "model": o.model_id,
        }))?;
    }
    Ok(())
}

#[derive(serde::Deserialize)]
struct BlinkQuestion {
    question_id: Value,
    image: String,
    text: String,
}

/// Strip the end-of-turn markers Sa2VA's VLMEvalKit wrapper strips, then whitespace.
fn clean_response(s: &str) -> String {
    s.replace("<|end|>", "")
        .replace("<|endoftext|>", "")
        .replace("<|im_end|>", "")
        .trim()
        .to_string()
}

fn int_id(v: &Value, path: &Path, line: usize, what: &str) -> Result<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .ok_or_else(|| Error::at_line(path, line, format!("{what} {v} is not an integer")))
}

/// The HardBLINK answers file a model run writes for an n-point variant.
pub fn hardblink_output(dir: &Path, n: usize) -> PathBuf {
    dir.join(format!("blink_{n}pointscenter_answers.jsonl"))
}

/// HardBLINK: LLaVA-style answers files (`{"question_id", "prompt", "text", "answer_id",
/// "model_id", "metadata"}`) per variant in `out_dir`.
pub fn hardblink(
    chat: &mut Chat,
    root: &Path,
    images: &Path,
    out_dir: &Path,
    run: &Value,
    o: &RunOptions,
) -> Result<RunSummary> {
    // All items of the three variants, in file order; each item is its own image group.
    let mut items: Vec<(usize, i64, String, String)> = Vec::new();
    let mut gold: HashMap<(usize, i64), char> = HashMap::new();
    for n in hardblink::VARIANTS {
        let q = root
            .join("questions")
            .join(format!("blink_{n}pointscenter_questions.jsonl"));
        crate::util::jsonl::for_each::<BlinkQuestion, _>(&q, |line, b| {
            let id = int_id(&b.question_id, &q, line, "question_id")?;
            items.push((n, id, b.image, b.text));
            Ok(())
        })?;
        let a = root
            .join("answers")
            .join(format!("blink_{n}pointscenter_answers.jsonl"));
        if a.is_file() {
            crate::util::jsonl::for_each::<Value, _>(&a, |line, v| {
                let id = int_id(v.get("question_id").unwrap_or(&Value::Null), &a, line, "question_id")?;
                if let Some(c) = v
                    .get("text")
                    .and_then(Value::as_str)
                    .and_then(|t| t.trim().trim_start_matches('(').chars().next())
                {
                    gold.insert((n, id), c);
                }
                Ok(())
            })?;
        }
    }
    let group_of: Vec<usize> = (0..items.len()).collect();
    let planned = plan(&group_of, o);
    let mut files: HashMap<usize, PredictionFile> = HashMap::new();
    for n in hardblink::VARIANTS {
        files.insert(n, open_output(&hardblink_output(out_dir, n), "question_id")?);
    }
    let mut log = open_log(o, "log_id")?;
    let resumed = planned
        .iter()
        .filter(|&&i| files[&items[i].0].done.contains(&items[i].1))
        .count();
    let mut prog = Progress::start("hardblink", planned.len(), resumed);
    for &i in &planned {
        let (n, id, image, text) = &items[i];
        if files[n].done.contains(id) {
            continue;
        }
        let path = images.join(format!("blink{n}pointscenter")).join(image);
        let img = crate::preprocess::load_rgb(&path)?;
        let vision = chat.vision(&img, o.max_tiles)?;
        let a = chat.reply(&vision, &format!("<image>\n{text}"), &o.generation, |_| {})?;
        let answer = clean_response(&a.text);
        files.get_mut(n).expect("opened").append(&json!({
            "question_id": id, "prompt": text, "text": answer, "answer_id": "", "model_id": o.model_id, "metadata": {},
        }))?;
        if let Some(l) = log.as_mut() {
            let parsed = hardblink::parse_answer(&answer, *n);
            let g = gold.get(&(*n, *id)).copied();
            l.append(&json!({
                "log_id": (*n as i64) * 1_000_000 + id, "variant": n, "question_id": id, "image": image,
                "prompt": format!("<image>\n{text}"), "output": answer, "parsed": parsed.map(String::from),
                "gold": g.map(String::from), "correct": g.is_some() && parsed == g, "model": o.model_id,
            }))?;
        }
        prog.one_done();
    }
    let mut complete = true;
    for n in hardblink::VARIANTS {
        let keys: Vec<i64> = planned
            .iter()
            .filter(|&&i| items[i].0 == n)
            .map(|&i| items[i].1)
            .collect();
        let mut r = run.clone();
        r["variant"] = json!(n);
        complete &= finish(&files[&n], &format!("hardblink{n}"), &r, o, &keys)?;
    }
    Ok(prog.finish(complete))
}

/// VLMEvalKit's `cn_string`: any CJK unified ideograph.
fn cn_string(s: &str) -> bool {
    s.chars().any(|c| ('\u{4e00}'..='\u{9fff}').contains(&c))
}

/// Sa2VA's VLMEvalKit `build_multi_choice_prompt` (without the `<image>\n` the wrapper prepends).
pub fn mmbench_prompt(question: &str, hint: Option<&str>, options: &Choices) -> String {
    let mut q = match hint {
        Some(h) => format!("{h}\n{question}"),
        None => question.to_string(),
    };
    for (k, v) in options {
        q.push_str(&format!("\n{k}. {v}"));
    }
    let zh = cn_string(&q);
    if !options.is_empty() {
        q.push_str(if zh {
            "\n请直接回答选项字母。"
        } else {
            "\nAnswer with the option's letter from the given choices directly."
        });
    } else {
        q.push_str(if zh {
            "\n请直接回答问题。"
        } else {
            "\nAnswer the question directly."
        });
    }
    q
}

/// MMBench: `{"index", "prediction"}` lines for every row of the TSV (circular copies included).
pub fn mmbench(chat: &mut Chat, tsv: &Path, out: &Path, run: &Value, o: &RunOptions) -> Result<RunSummary> {
    use base64::Engine;
    let t = mmbench::table::read_tsv_opts(tsv, true)?;
    let idx = t.indices(tsv)?;
    let question = t.require("question", tsv)?;
    let hint = t.column("hint");
    let image = t.require("image", tsv)?;
    let answer = t.column("answer");
    let g_col = t.column("g_index");
    let (category, l2, split) = (t.column("category"), t.column("l2-category"), t.column("split"));
    let letters: Vec<(char, &[Option<String>])> = ('A'..='Z')
        .filter_map(|c| t.column(&c.to_string()).map(|col| (c, col)))
        .collect();
    let row_of: HashMap<i64, usize> = idx.iter().enumerate().map(|(r, &i)| (i, r)).collect();
    let g_index: Vec<i64> = (0..idx.len())
        .map(|r| {
            g_col
                .and_then(|c| c[r].as_deref())
                .and_then(|s| s.trim().parse::<f64>().ok())
                .map(|f| f as i64)
                .unwrap_or(idx[r] % 1_000_000)
        })
        .collect();
    let group_of = groups(&g_index);
    let planned = plan(&group_of, o);
    let mut file = open_output(out, "index")?;
    let mut log = open_log(o, "index")?;
    let resumed = planned.iter().filter(|&&r| file.done.contains(&idx[r])).count();
    let mut prog = Progress::start("mmbench", planned.len(), resumed);
    let mut vision_cache: Option<(usize, Vision)> = None;
    for &r in &planned {
        if file.done.contains(&idx[r]) {
            continue;
        }
        let line = t.lines.get(r).copied().unwrap_or(0);
        // The image: base64, or (≤ 64 chars) the index of the row holding it.
        let raw = image[r]
            .as_deref()
            .ok_or_else(|| Error::at_line(tsv, line, "no image"))?;
        let src = if raw.len() <= 64 {
            let j: i64 = raw
                .trim()
                .parse::<f64>()
                .map(|f| f as i64)
                .map_err(|_| Error::at_line(tsv, line, format!("image reference {raw:?} is not an index")))?;
            *row_of
                .get(&j)
                .ok_or_else(|| Error::at_line(tsv, line, format!("image reference {j} is not an index of the TSV")))?
        } else {
            r
        };
        let cached = o.reuse_features && vision_cache.as_ref().is_some_and(|(s, _)| *s == src);
        if !cached {
            let b64 = image[src].as_deref().unwrap_or("");
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|e| Error::at_line(tsv, line, format!("image is not base64: {e}")))?;
            let img = crate::preprocess::image_io::decode_rgb_bytes(
                &bytes,
                Path::new(&format!("{}:{line} image", tsv.display())),
            )?;
            vision_cache = Some((src, chat.vision(&img, o.max_tiles)?));
        }
        let options: Choices = letters
            .iter()
            .filter_map(|(c, col)| col[r].clone().map(|v| (*c, v)))
            .collect();
        let q = question[r].as_deref().unwrap_or("");
        let h = hint.and_then(|c| c[r].as_deref());
        let prompt = format!("<image>\n{}", mmbench_prompt(q, h, &options));
        let a = chat.reply(&vision_cache.as_ref().expect("set").1, &prompt, &o.generation, |_| {})?;
        let prediction = clean_response(&a.text);
        file.append(&json!({"index": idx[r], "prediction": prediction}))?;
        if let Some(l) = log.as_mut() {
            let parsed = can_infer(Matcher::Vlmevalkit, &prediction, &options);
            let gold = answer.and_then(|c| c[r].clone());
            l.append(&json!({
                "index": idx[r], "g_index": g_index[r], "prompt": prompt, "output": prediction,
                "parsed": parsed.map(String::from), "answer": gold,
                "correct": gold.as_deref().is_some_and(|g| parsed.map(String::from).as_deref() == Some(g.trim())),
                "category": category.and_then(|c| c[r].clone()), "l2_category": l2.and_then(|c| c[r].clone()),
                "split": split.and_then(|c| c[r].clone()), "model": o.model_id,
            }))?;
        }
        prog.one_done();
    }
    let keys: Vec<i64> = planned.iter().map(|&r| idx[r]).collect();
    let complete = finish(&file, "mmbench", run, o, &keys)?;
    Ok(prog.finish(complete))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::perceptio::referring_prompt;

    #[test]
    fn mmbench_prompt_is_sa2va_vlmevalkit_build_multi_choice_prompt() {
        let opts: Choices = [('A', "cat".to_string()), ('B', "dog".to_string())]
            .into_iter()
            .collect();
        assert_eq!(
            mmbench_prompt("What animal is shown?", Some("Look closely."), &opts),
            "Look closely.\nWhat animal is shown?\nA. cat\nB. dog\nAnswer with the option's letter from the given choices directly."
        );
        assert_eq!(
            mmbench_prompt("图中是什么？", None, &opts),
            "图中是什么？\nA. cat\nB. dog\n请直接回答选项字母。"
        );
        assert_eq!(
            mmbench_prompt("Q?", None, &Choices::new()),
            "Q?\nAnswer the question directly."
        );
        assert_eq!(
            referring_prompt("the left man"),
            "<image>\n Please segment the left man in this image."
        );
    }

    #[test]
    fn groups_follow_first_appearance() {
        assert_eq!(groups(&["b", "b", "a", "b", "c"]), vec![0, 0, 1, 0, 2]);
    }
}
