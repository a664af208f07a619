//! The refer layout (lichengunc/refer): `DIR/<dataset>/refs(<split_by>).p` (a Python pickle of
//! ref dicts) and `DIR/<dataset>/instances.json` (COCO images and annotations), and the
//! alternative `--annotations GT.jsonl` form.

use super::GtOverlap;
use crate::error::{Error, Result};
use crate::mask::{from_polygon, parse_mask_json, MaskJson, Rle};
use rayon::prelude::*;
use serde::Deserialize;
use serde_pickle::{HashableValue, Value as Pv};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// One evaluation unit: a sentence of a ref, with the ref's ground-truth mask.
#[derive(Debug, Clone)]
pub struct Sample {
    pub sent_id: i64,
    pub ref_id: Option<i64>,
    pub image_id: Option<i64>,
    pub height: u32,
    pub width: u32,
    /// Index into [`GroundTruth::masks`] (sentences of one ref share a mask).
    pub mask: usize,
    /// The referring sentence (`sent` of the refs pickle, as Sa2VA's RES dataset reads it).
    pub text: Option<String>,
    /// The image's `file_name` in instances.json (to run a model on the split).
    pub file_name: Option<String>,
}

/// The samples of one split plus every sentence id of the whole dataset.
#[derive(Debug)]
pub struct GroundTruth {
    pub samples: Vec<Sample>,
    pub masks: Vec<Rle>,
    /// All sentence ids of the dataset, in any split (to tell "other split" from "unknown").
    pub all_sent_ids: HashSet<i64>,
    /// Files the ground truth was read from (for provenance).
    pub sources: Vec<PathBuf>,
}

/// A ref as stored in `refs(*).p`.
#[derive(Debug, Clone)]
pub struct Ref {
    pub ref_id: i64,
    pub ann_id: i64,
    pub image_id: i64,
    pub split: String,
    pub sent_ids: Vec<i64>,
    /// `sent` of each sentence (empty string when absent).
    pub sents: Vec<String>,
}

#[derive(Deserialize)]
struct Instances {
    images: Vec<ImageInfo>,
    annotations: Vec<Annotation>,
}

#[derive(Deserialize)]
struct ImageInfo {
    id: i64,
    height: u32,
    width: u32,
    #[serde(default)]
    file_name: Option<String>,
}

#[derive(Deserialize)]
struct Annotation {
    id: i64,
    #[serde(default)]
    segmentation: serde_json::Value,
}

/// The file name of the refs pickle for a split scheme: `refs(unc).p`, `refs(umd).p`, `refs(google).p`.
pub fn refs_path(root: &Path, dataset: &str, split_by: &str) -> PathBuf {
    root.join(dataset).join(format!("refs({split_by}).p"))
}

/// Which refs belong to `split`, with the refer API's `getRefIds` rules: `testA`/`testB`/`testC`
/// match any ref split containing that letter ("testAB" too), `test` matches every split
/// containing "test", `train`/`val` match exactly.
pub fn split_matches(split: &str, ref_split: &str) -> bool {
    match split {
        "testA" | "testB" | "testC" => ref_split.contains(&split[4..]),
        "test" => ref_split.contains("test"),
        other => ref_split == other,
    }
}

fn key(s: &str) -> HashableValue {
    HashableValue::String(s.to_string())
}

fn pint(v: &Pv) -> Option<i64> {
    match v {
        Pv::I64(i) => Some(*i),
        Pv::Int(b) => i64::try_from(b.clone()).ok(),
        _ => None,
    }
}

fn pstr(v: &Pv) -> Option<String> {
    match v {
        Pv::String(s) => Some(s.clone()),
        Pv::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
        _ => None,
    }
}

#[derive(Deserialize)]
struct RefRaw {
    ref_id: i64,
    ann_id: i64,
    image_id: i64,
    split: String,
    sentences: Vec<SentRaw>,
}

#[derive(Deserialize)]
struct SentRaw {
    sent_id: i64,
    #[serde(default)]
    sent: Option<String>,
}

/// Parse the refs pickle (Python 2 era, protocol 0–2; Python 3 protocols also load).
pub fn load_refs(path: &Path) -> Result<Vec<Ref>> {
    let bytes = crate::util::read_file(path)?;
    // Fast path: straight into typed records. On any surprise, the generic walk below
    // either copes (e.g. ids stored as Python longs) or names the offending ref.
    if let Ok(raw) = serde_pickle::from_slice::<Vec<RefRaw>>(&bytes, serde_pickle::DeOptions::new().decode_strings()) {
        return Ok(raw
            .into_iter()
            .map(|r| Ref {
                ref_id: r.ref_id,
                ann_id: r.ann_id,
                image_id: r.image_id,
                split: r.split,
                sent_ids: r.sentences.iter().map(|s| s.sent_id).collect(),
                sents: r.sentences.into_iter().map(|s| s.sent.unwrap_or_default()).collect(),
            })
            .collect());
    }
    let value = serde_pickle::value_from_slice(&bytes, serde_pickle::DeOptions::new().decode_strings())
        .map_err(|e| Error::input(path, format!("not a readable refs pickle: {e}")))?;
    let list = match value {
        Pv::List(l) | Pv::Tuple(l) => l,
        _ => return Err(Error::input(path, "expected a pickled list of refs")),
    };
    let mut refs = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let bad = |what: &str| Error::at(format!("{} ref #{i}", path.display()), what.to_string());
        let Pv::Dict(d) = item else {
            return Err(bad("is not a dict"));
        };
        let get_int = |k: &str| {
            d.get(&key(k))
                .and_then(pint)
                .ok_or_else(|| bad(&format!("has no integer `{k}`")))
        };
        let ref_id = get_int("ref_id")?;
        let ann_id = get_int("ann_id")?;
        let image_id = get_int("image_id")?;
        let split = d
            .get(&key("split"))
            .and_then(pstr)
            .ok_or_else(|| bad("has no string `split`"))?;
        let sents = match d.get(&key("sentences")) {
            Some(Pv::List(s)) | Some(Pv::Tuple(s)) => s,
            _ => return Err(bad("has no `sentences` list")),
        };
        let mut sent_ids = Vec::with_capacity(sents.len());
        let mut texts = Vec::with_capacity(sents.len());
        for s in sents {
            let Pv::Dict(sd) = s else {
                return Err(bad("has a sentence that is not a dict"));
            };
            let id = sd
                .get(&key("sent_id"))
                .and_then(pint)
                .ok_or_else(|| bad("has a sentence without `sent_id`"))?;
            sent_ids.push(id);
            texts.push(sd.get(&key("sent")).and_then(pstr).unwrap_or_default());
        }
        refs.push(Ref {
            ref_id,
            ann_id,
            image_id,
            split,
            sent_ids,
            sents: texts,
        });
    }
    Ok(refs)
}

/// Rasterise a COCO `segmentation` (polygon list or RLE) into one mask, combining parts per `overlap`.
pub fn segmentation_mask(
    seg: &serde_json::Value,
    h: u32,
    w: u32,
    overlap: GtOverlap,
) -> std::result::Result<Rle, String> {
    crate::mask::check_size(h, w).map_err(|e| e.to_string())?;
    let parts: Vec<Rle> = match seg {
        serde_json::Value::Null => vec![],
        serde_json::Value::Array(items) if items.is_empty() => vec![],
        serde_json::Value::Array(items) if items[0].is_array() => {
            // Polygons. pycocotools would read a list whose first polygon has exactly 4 numbers
            // as boxes (and 2.0.11 then raises a TypeError); every list is a polygon here.
            let mut out = Vec::with_capacity(items.len());
            for (i, p) in items.iter().enumerate() {
                let xy = p
                    .as_array()
                    .and_then(|a| a.iter().map(|v| v.as_f64()).collect::<Option<Vec<f64>>>())
                    .ok_or_else(|| format!("polygon {i} is not a list of numbers"))?;
                out.push(from_polygon(&xy, h, w).map_err(|e| e.to_string())?);
            }
            out
        }
        serde_json::Value::Array(items) => items
            .iter()
            .map(|v| match parse_mask_json(v) {
                Ok(MaskJson::Rle(r)) => Ok(r),
                Ok(_) => Err("unsupported segmentation entry".to_string()),
                Err(e) => Err(e.to_string()),
            })
            .collect::<std::result::Result<Vec<_>, _>>()?,
        obj @ serde_json::Value::Object(_) => match parse_mask_json(obj).map_err(|e| e.to_string())? {
            MaskJson::Rle(r) => vec![r],
            _ => return Err("unsupported segmentation object".into()),
        },
        other => return Err(format!("unsupported segmentation {other}")),
    };
    if parts.is_empty() {
        return Ok(Rle::empty(h, w));
    }
    if let Some(p) = parts.iter().find(|p| p.size() != (h, w)) {
        return Err(format!(
            "segmentation RLE size {}x{} differs from the image size {h}x{w}",
            p.height(),
            p.width()
        ));
    }
    if parts.len() == 1 {
        // One part: every convention reads it as is (count 1 where set).
        return Ok(parts.into_iter().next().unwrap());
    }
    let r = match overlap {
        GtOverlap::Union => Rle::union(&parts),
        GtOverlap::Lisa => Rle::combine(&parts, |k| k == 1),
        GtOverlap::Sa2va => Rle::sum_reencoded(&parts),
    };
    r.map_err(|e| e.to_string())
}

/// Load the refer layout and build the ground truth of one split.
pub fn load_refer(root: &Path, dataset: &str, split_by: &str, split: &str, overlap: GtOverlap) -> Result<GroundTruth> {
    let refs_file = refs_path(root, dataset, split_by);
    let inst_file = root.join(dataset).join("instances.json");
    let refs = load_refs(&refs_file)?;
    let inst_bytes = crate::util::read_file(&inst_file)?;
    let inst: Instances = serde_json::from_slice(&inst_bytes)
        .map_err(|e| Error::input(&inst_file, format!("not a COCO instances file: {e}")))?;
    drop(inst_bytes);
    let images: HashMap<i64, &ImageInfo> = inst.images.iter().map(|i| (i.id, i)).collect();
    let anns: HashMap<i64, &Annotation> = inst.annotations.iter().map(|a| (a.id, a)).collect();

    let mut all_sent_ids = HashSet::new();
    for r in &refs {
        all_sent_ids.extend(r.sent_ids.iter().copied());
    }
    let chosen: Vec<&Ref> = refs.iter().filter(|r| split_matches(split, &r.split)).collect();
    if chosen.is_empty() {
        let mut splits: Vec<&str> = refs.iter().map(|r| r.split.as_str()).collect();
        splits.sort_unstable();
        splits.dedup();
        return Err(Error::input(
            &refs_file,
            format!("no refs in split `{split}` (splits present: {})", splits.join(", ")),
        ));
    }
    // Rasterise each chosen ref's annotation once, in parallel.
    let masks: Vec<(Rle, u32, u32, Option<String>)> = chosen
        .par_iter()
        .map(|r| {
            let img = images.get(&r.image_id).ok_or_else(|| {
                Error::input(
                    &inst_file,
                    format!("image {} of ref {} is not in `images`", r.image_id, r.ref_id),
                )
            })?;
            let ann = anns.get(&r.ann_id).ok_or_else(|| {
                Error::input(
                    &inst_file,
                    format!("annotation {} of ref {} is not in `annotations`", r.ann_id, r.ref_id),
                )
            })?;
            let m = segmentation_mask(&ann.segmentation, img.height, img.width, overlap)
                .map_err(|e| Error::at(format!("{} annotation {}", inst_file.display(), ann.id), e))?;
            Ok((m, img.height, img.width, img.file_name.clone()))
        })
        .collect::<Result<_>>()?;
    let mut samples = Vec::new();
    let mut out_masks = Vec::with_capacity(masks.len());
    for (i, (r, (m, h, w, file_name))) in chosen.iter().zip(masks).enumerate() {
        out_masks.push(m);
        for (j, &sent_id) in r.sent_ids.iter().enumerate() {
            let text = r.sents.get(j).filter(|t| !t.is_empty()).cloned();
            samples.push(Sample {
                sent_id,
                ref_id: Some(r.ref_id),
                image_id: Some(r.image_id),
                height: h,
                width: w,
                mask: i,
                text,
                file_name: file_name.clone(),
            });
        }
    }
    check_unique(&samples, &refs_file)?;
    Ok(GroundTruth {
        samples,
        masks: out_masks,
        all_sent_ids,
        sources: vec![refs_file, inst_file],
    })
}

fn check_unique(samples: &[Sample], path: &Path) -> Result<()> {
    let mut seen = HashSet::with_capacity(samples.len());
    for s in samples {
        if !seen.insert(s.sent_id) {
            return Err(Error::input(
                path,
                format!("sent_id {} appears twice in the split", s.sent_id),
            ));
        }
    }
    Ok(())
}

#[derive(Deserialize)]
struct GtLine {
    sent_id: i64,
    height: u32,
    width: u32,
    mask: serde_json::Value,
    #[serde(default)]
    ref_id: Option<i64>,
    #[serde(default)]
    image_id: Option<i64>,
    #[serde(default)]
    sentence: Option<String>,
    #[serde(default)]
    file_name: Option<String>,
}

/// Load `--annotations GT.jsonl`: one line per sentence, `{"sent_id", "height", "width", "mask"}`
/// (mask in any form the predictions accept; `null` = empty), optional `ref_id`, `image_id`,
/// and, to run a model on it, `sentence` and `file_name`.
pub fn load_gt_jsonl(path: &Path) -> Result<GroundTruth> {
    let mut samples = Vec::new();
    let mut masks = Vec::new();
    let mut seen: HashMap<i64, usize> = HashMap::new();
    crate::util::jsonl::for_each::<GtLine, _>(path, |line, g| {
        if let Some(prev) = seen.insert(g.sent_id, line) {
            return Err(Error::at_line(
                path,
                line,
                format!("sent_id {} already given on line {prev}", g.sent_id),
            ));
        }
        crate::mask::check_size(g.height, g.width).map_err(|e| Error::at_line(path, line, e.to_string()))?;
        let m = parse_mask_json(&g.mask)
            .and_then(|m| m.resolve(g.height, g.width))
            .map_err(|e| Error::at_line(path, line, e.to_string()))?
            .unwrap_or_else(|| Rle::empty(g.height, g.width));
        masks.push(m);
        samples.push(Sample {
            sent_id: g.sent_id,
            ref_id: g.ref_id,
            image_id: g.image_id,
            height: g.height,
            width: g.width,
            mask: masks.len() - 1,
            text: g.sentence,
            file_name: g.file_name,
        });
        Ok(())
    })?;
    if samples.is_empty() {
        return Err(Error::input(path, "no annotation lines"));
    }
    let all_sent_ids = samples.iter().map(|s| s.sent_id).collect();
    Ok(GroundTruth {
        samples,
        masks,
        all_sent_ids,
        sources: vec![path.to_path_buf()],
    })
}
