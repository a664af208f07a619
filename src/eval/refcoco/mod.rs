//! RefCOCO / RefCOCO+ / RefCOCOg referring-expression segmentation scoring: cIoU = ΣI/ΣU and
//! gIoU = mean per-sentence I/U, as computed by LISA, GLaMM and Sa2VA's evaluation scripts.

pub mod refer;

use crate::error::{Error, Result};
use crate::mask::{parse_mask_json, Rle};
use rayon::prelude::*;
use refer::GroundTruth;
use serde::Serialize;
use std::collections::HashMap;
use std::path::Path;

/// How the polygons of one annotation combine into its ground-truth mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GtOverlap {
    /// Pixel-wise OR (what the ground truth means; the default).
    Union,
    /// LISA/GLaMM: the per-pixel polygon count goes to a 2-bin histogram, so pixels covered
    /// by two polygons count as background.
    Lisa,
    /// Sa2VA: the count map is RLE-encoded and decoded again, so runs alternate 0/1 by value change.
    Sa2va,
}

/// One prediction line after parsing.
#[derive(Debug)]
struct PredLine {
    line: usize,
    sent_id: i64,
    mask: crate::mask::MaskJson,
}

/// Read `PRED.jsonl` (`{"sent_id": int, "mask": RLE | {"polygons": ...} | null}` per line),
/// parsing lines in parallel; errors name the line.
fn read_predictions(path: &Path) -> Result<Vec<PredLine>> {
    let bytes = crate::util::read_file(path)?;
    let lines: Vec<(usize, &[u8])> = bytes
        .split(|&b| b == b'\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| l.iter().any(|b| !b.is_ascii_whitespace()))
        .collect();
    lines
        .par_iter()
        .map(|&(line, raw)| {
            let v: serde_json::Value = serde_json::from_slice(raw)
                .map_err(|e| Error::at_line(path, line, format!("malformed JSON line: {e}")))?;
            let obj = v
                .as_object()
                .ok_or_else(|| Error::at_line(path, line, "expected a JSON object"))?;
            let sent_id = obj
                .get("sent_id")
                .and_then(|s| s.as_i64())
                .ok_or_else(|| Error::at_line(path, line, "missing integer `sent_id`"))?;
            let mask_v = obj
                .get("mask")
                .ok_or_else(|| Error::at_line(path, line, "missing `mask` (use null for no mask)"))?;
            let mask = parse_mask_json(mask_v).map_err(|e| Error::at_line(path, line, e.to_string()))?;
            Ok(PredLine { line, sent_id, mask })
        })
        .collect()
}

/// Per-sentence result.
#[derive(Debug, Clone, Serialize)]
pub struct SampleScore {
    pub sent_id: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ref_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_id: Option<i64>,
    pub intersection: u64,
    pub union: u64,
    /// I/U, 1 when both masks are empty.
    pub iou: f64,
    /// "ok", "missing" (no line) or "empty" (null or no pixel).
    pub prediction: &'static str,
    /// The image's `file_name` (instances.json or the GT JSONL), so a report can show the photo.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_name: Option<String>,
    /// The referring sentence, when the ground truth has it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sentence: Option<String>,
    /// The prediction as scored, COCO RLE (`null` when missing or empty): for galleries.
    #[serde(serialize_with = "opt_rle_json")]
    pub mask: Option<Rle>,
    /// The ground-truth mask, COCO RLE.
    #[serde(serialize_with = "rle_json")]
    pub gt_mask: Rle,
}

fn rle_json<S: serde::Serializer>(r: &Rle, s: S) -> std::result::Result<S::Ok, S::Error> {
    r.to_coco_json().serialize(s)
}

fn opt_rle_json<S: serde::Serializer>(r: &Option<Rle>, s: S) -> std::result::Result<S::Ok, S::Error> {
    r.as_ref().map(Rle::to_coco_json).serialize(s)
}

/// The scores of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// ΣI/ΣU over all sentences (0 when ΣU = 0).
    pub ciou: f64,
    /// Mean of per-sentence I/U, empty-vs-empty counting 1.
    pub giou: f64,
    pub samples: usize,
    pub intersection: u64,
    pub union: u64,
    pub missing_predictions: usize,
    pub empty_predictions: usize,
    /// Prediction lines for sentences of other splits of the dataset (ignored).
    pub other_split_predictions: usize,
    #[serde(skip)]
    pub per_sample: Vec<SampleScore>,
}

/// Score prediction lines against the ground truth.
pub fn score(gt: &GroundTruth, pred_path: &Path) -> Result<Report> {
    let preds = read_predictions(pred_path)?;
    let index: HashMap<i64, usize> = gt.samples.iter().enumerate().map(|(i, s)| (s.sent_id, i)).collect();
    let mut by_sample: Vec<Option<&PredLine>> = vec![None; gt.samples.len()];
    let mut other_split = 0usize;
    for p in &preds {
        match index.get(&p.sent_id) {
            Some(&i) => {
                if let Some(prev) = by_sample[i] {
                    return Err(Error::at_line(
                        pred_path,
                        p.line,
                        format!("sent_id {} already predicted on line {}", p.sent_id, prev.line),
                    ));
                }
                by_sample[i] = Some(p);
            }
            None if gt.all_sent_ids.contains(&p.sent_id) => other_split += 1,
            None => {
                return Err(Error::at_line(
                    pred_path,
                    p.line,
                    format!("sent_id {} does not exist in the dataset", p.sent_id),
                ))
            }
        }
    }
    let per_sample: Vec<SampleScore> = gt
        .samples
        .par_iter()
        .zip(by_sample.par_iter())
        .map(|(s, p)| {
            let g = &gt.masks[s.mask];
            let (pred, status) = match p {
                None => (None, "missing"),
                Some(p) => {
                    let m = p
                        .mask
                        .resolve(s.height, s.width)
                        .map_err(|e| Error::at_line(pred_path, p.line, format!("sent_id {}: {e}", s.sent_id)))?;
                    match m {
                        Some(r) if r.area() > 0 => (Some(r), "ok"),
                        _ => (None, "empty"),
                    }
                }
            };
            let (i, u) = match &pred {
                Some(r) => r.intersection_union(g).expect("sizes checked by resolve"),
                None => (0, g.area()),
            };
            let iou = if u == 0 { 1.0 } else { i as f64 / u as f64 };
            Ok(SampleScore {
                sent_id: s.sent_id,
                ref_id: s.ref_id,
                image_id: s.image_id,
                intersection: i,
                union: u,
                iou,
                prediction: status,
                file_name: s.file_name.clone(),
                sentence: s.text.clone(),
                mask: pred,
                gt_mask: g.clone(),
            })
        })
        .collect::<Result<_>>()?;
    let intersection: u64 = per_sample.iter().map(|s| s.intersection).sum();
    let union: u64 = per_sample.iter().map(|s| s.union).sum();
    let n = per_sample.len();
    let giou = per_sample.iter().map(|s| s.iou).sum::<f64>() / n as f64;
    Ok(Report {
        ciou: if union == 0 {
            0.0
        } else {
            intersection as f64 / union as f64
        },
        giou,
        samples: n,
        intersection,
        union,
        missing_predictions: per_sample.iter().filter(|s| s.prediction == "missing").count(),
        empty_predictions: per_sample.iter().filter(|s| s.prediction == "empty").count(),
        other_split_predictions: other_split,
        per_sample,
    })
}
