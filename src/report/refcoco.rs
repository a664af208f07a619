//! The RefCOCO part of a report: cIoU vs gIoU, the IoU histogram, precision at IoU thresholds,
//! empty and missing predictions, the worst and median samples (a gallery of photos with the
//! predicted and ground-truth masks outlined when `--images` is given), and for two runs the
//! sentences whose IoU changed most.

use super::html::{self, esc};
use super::{svg, Metric, Options, Record};
use crate::error::{Error, Result};
use crate::mask::{parse_mask_json, Mask};
use crate::render::{self, Outline};
use base64::Engine;
use rayon::prelude::*;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::fmt::Write;
use std::path::Path;

/// Bins of the IoU histogram.
const BINS: usize = 20;
/// Longest side of a gallery photo, in pixels.
pub const THUMB: u32 = 320;
/// Prediction (tinted and outlined) and ground truth (outlined) colours in the gallery.
const PRED_COLOR: [u8; 3] = [255, 120, 20];
const GT_COLOR: [u8; 3] = [30, 144, 255];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Ok,
    Empty,
    Missing,
}

impl Status {
    fn name(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Empty => "empty",
            Status::Missing => "missing",
        }
    }
}

/// One sentence as a per-sample line gives it.
struct Sample {
    sent_id: i64,
    /// "file:line" of the record, for errors.
    origin: String,
    intersection: u64,
    union: u64,
    iou: f64,
    status: Status,
    sentence: Option<String>,
    file_name: Option<String>,
    output: Option<String>,
    mask: Option<Value>,
    gt_mask: Option<Value>,
}

/// The sentences of one RefCOCO run.
pub(super) struct RefRun {
    samples: Vec<Sample>,
    /// Prediction lines for other splits (known only when scored in-process).
    pub other_split: Option<usize>,
}

impl RefRun {
    pub fn parse(records: &[Record]) -> Result<Self> {
        let mut seen: HashMap<i64, usize> = HashMap::new();
        let mut samples = Vec::with_capacity(records.len());
        for r in records {
            let sent_id = r.i64("sent_id")?;
            if let Some(prev) = seen.insert(sent_id, r.line) {
                return Err(r.err(format!("sent_id {sent_id} already on line {prev}")));
            }
            let mask = r.get("mask").cloned();
            let status = match r.str("prediction") {
                Some("ok") => Status::Ok,
                Some("empty") => Status::Empty,
                Some("missing") => Status::Missing,
                Some(other) => {
                    return Err(r.err(format!(
                        "`prediction` is {other:?}, expected \"ok\", \"empty\" or \"missing\""
                    )))
                }
                // A log line: no mask (no [SEG]) or an all-zero one is an empty prediction.
                None => match &mask {
                    None => Status::Empty,
                    Some(v) => match parse_mask_json(v) {
                        Ok(crate::mask::MaskJson::Rle(m)) if m.area() == 0 => Status::Empty,
                        Ok(_) => Status::Ok,
                        Err(e) => return Err(r.err(format!("`mask`: {e}"))),
                    },
                },
            };
            samples.push(Sample {
                sent_id,
                origin: format!("{}:{}", r.file.display(), r.line),
                intersection: r.u64("intersection")?,
                union: r.u64("union")?,
                iou: r.f64("iou")?,
                status,
                sentence: r.text("sentence"),
                file_name: r.text("file_name").or_else(|| r.text("image")),
                output: r.text("output"),
                mask,
                gt_mask: r.get("gt_mask").cloned(),
            });
        }
        Ok(RefRun {
            samples,
            other_split: None,
        })
    }

    fn count(&self, st: Status) -> usize {
        self.samples.iter().filter(|s| s.status == st).count()
    }

    /// As `eval refcoco --json`: cIoU = ΣI/ΣU (0 when ΣU = 0), gIoU = mean IoU in file order.
    pub fn headline(&self) -> Vec<Metric> {
        let i: u64 = self.samples.iter().map(|s| s.intersection).sum();
        let u: u64 = self.samples.iter().map(|s| s.union).sum();
        let n = self.samples.len();
        let giou = self.samples.iter().map(|s| s.iou).sum::<f64>() / n as f64;
        let mut v = vec![
            Metric::frac("ciou", "cIoU (ΣI/ΣU)", if u == 0 { 0.0 } else { i as f64 / u as f64 }),
            Metric::frac("giou", "gIoU (mean IoU)", giou),
            Metric::count("samples", "sentences", n),
            Metric::count(
                "missing_predictions",
                "missing predictions",
                self.count(Status::Missing),
            ),
            Metric::count("empty_predictions", "empty predictions", self.count(Status::Empty)),
        ];
        if let Some(o) = self.other_split {
            v.push(Metric::count(
                "other_split_predictions",
                "other-split lines (ignored)",
                o,
            ));
        }
        v.push(Metric::count("intersection", "ΣI (pixels)", i as usize));
        v.push(Metric::count("union", "ΣU (pixels)", u as usize));
        v
    }

    fn histogram(&self) -> Vec<u64> {
        let mut h = vec![0u64; BINS];
        for s in &self.samples {
            let b = ((s.iou * BINS as f64).floor().max(0.0) as usize).min(BINS - 1);
            h[b] += 1;
        }
        h
    }

    fn precision_at(&self, t: f64) -> f64 {
        self.samples.iter().filter(|s| s.iou >= t).count() as f64 / self.samples.len() as f64
    }

    /// Indices of the k worst samples (lowest IoU, then sent_id) and of the k around the median
    /// of the rest (fewer when the run has fewer than 2k samples).
    fn worst_and_median(&self, k: usize) -> (Vec<usize>, Vec<usize>) {
        let mut order: Vec<usize> = (0..self.samples.len()).collect();
        order.sort_by(|&a, &b| {
            let (x, y) = (&self.samples[a], &self.samples[b]);
            x.iou.total_cmp(&y.iou).then(x.sent_id.cmp(&y.sent_id))
        });
        let n = order.len();
        let worst: Vec<usize> = order[..k.min(n)].to_vec();
        let rest = n.saturating_sub(k);
        let take = k.min(rest);
        let mid = n / 2;
        let start = mid.saturating_sub(take / 2).clamp(k.min(n), n - take);
        (worst, order[start..start + take].to_vec())
    }

    pub fn sections(&self, body: &mut String, opts: &Options) -> Result<()> {
        let h = self.headline();
        let get = |k: &str| h.iter().find(|m| m.key == k).map_or(f64::NAN, |m| m.value);
        html::section(
            body,
            "ciou-giou",
            "cIoU vs gIoU",
            "cIoU pools pixels over all sentences, so large objects weigh more; gIoU averages per-sentence IoU, so \
             every sentence counts the same. A gIoU well below cIoU means many small objects are missed.",
            &svg::hbars(
                &["cIoU".into(), "gIoU".into()],
                &[],
                &[vec![Some(get("ciou"))], vec![Some(get("giou"))]],
                &["run"],
            ),
        );
        let s = format!(
            "<div class=\"row\"><div>{}</div><div>{}</div></div>",
            svg::histogram(
                &[self.histogram()],
                &["run"],
                "IoU per sentence (20 bins; the last includes 1.0)"
            ),
            self.counts_table()
        );
        html::section(
            body,
            "iou",
            "IoU distribution",
            "How many sentences reach each IoU. Missing and empty predictions score IoU 0 (1 when the ground \
             truth is empty too).",
            &s,
        );
        let (worst, median) = self.worst_and_median(opts.k);
        let mut g = String::new();
        if opts.images.is_some() {
            g.push_str(&format!(
                "<p>Photos with the <span class=\"sw\" style=\"background:{}\"></span>prediction (tinted) and the \
                 <span class=\"sw\" style=\"background:{}\"></span>ground truth (outline).</p>",
                css(PRED_COLOR),
                css(GT_COLOR)
            ));
        }
        for (id, title, idx) in [("worst", "Worst", &worst), ("median", "Around the median", &median)] {
            let _ = write!(g, "<h3>{title} ({} sentences)</h3>", idx.len());
            match &opts.images {
                Some(dir) => g.push_str(&self.gallery(id, idx, dir)?),
                None => g.push_str(&self.sample_table(id, idx)),
            }
        }
        html::section(
            body,
            "samples",
            "Worst and median samples",
            &format!(
                "The {} lowest-IoU sentences and {} sentences around the median IoU{}.",
                opts.k,
                opts.k,
                if opts.images.is_some() {
                    ""
                } else {
                    " (give --images DIR to see them on the photos)"
                }
            ),
            &g,
        );
        Ok(())
    }

    fn counts_table(&self) -> String {
        let n = self.samples.len();
        let zero = self.samples.iter().filter(|s| s.iou == 0.0).count();
        let one = self.samples.iter().filter(|s| s.iou == 1.0).count();
        let mut rows = vec![
            vec!["predicted (non-empty)".into(), self.count(Status::Ok).to_string()],
            vec!["empty predictions".into(), self.count(Status::Empty).to_string()],
            vec!["missing sentences".into(), self.count(Status::Missing).to_string()],
            vec!["IoU = 0".into(), zero.to_string()],
            vec!["IoU = 1".into(), one.to_string()],
        ];
        if let Some(o) = self.other_split {
            rows.push(vec!["other-split lines (ignored)".into(), o.to_string()]);
        }
        let mut s = html::table("counts", &["sentences", &format!("of {n}")], &rows);
        let pr: Vec<Vec<String>> = [0.5, 0.6, 0.7, 0.8, 0.9]
            .iter()
            .map(|&t| {
                vec![
                    format!("Pr@{t}"),
                    format!(
                        "<span data-key=\"pr@{t}\" data-value=\"{}\">{}</span>",
                        self.precision_at(t),
                        html::pct(self.precision_at(t))
                    ),
                ]
            })
            .collect();
        s.push_str(&html::table("pr", &["IoU ≥ t", "sentences (%)"], &pr));
        s
    }

    fn sample_table(&self, id: &str, idx: &[usize]) -> String {
        let mut s = format!(
            "<table class=\"samples\" id=\"{id}\"><thead><tr><th>sent_id</th><th>sentence</th><th class=\"n\">IoU</th>\
             <th>prediction</th><th>model output</th></tr></thead><tbody>"
        );
        for &i in idx {
            let x = &self.samples[i];
            let _ = write!(
                s,
                "<tr class=\"sample\" data-sent-id=\"{}\"><td>{}</td><td>{}</td><td class=\"n\">{:.3}</td><td>{}</td><td class=\"out\">{}</td></tr>",
                x.sent_id,
                x.sent_id,
                esc(x.sentence.as_deref().unwrap_or("")),
                x.iou,
                x.status.name(),
                esc(&html::cut(x.output.as_deref().unwrap_or(""), 300))
            );
        }
        s.push_str("</tbody></table>");
        s
    }

    fn gallery(&self, id: &str, idx: &[usize], dir: &Path) -> Result<String> {
        let thumbs: Vec<String> = idx
            .par_iter()
            .map(|&i| thumbnail(&self.samples[i], dir))
            .collect::<Result<_>>()?;
        let mut s = format!("<div class=\"gallery\" id=\"{id}\">");
        for (&i, t) in idx.iter().zip(thumbs) {
            let x = &self.samples[i];
            let _ = write!(
                s,
                "<figure class=\"item\" data-sent-id=\"{}\"><img alt=\"sent_id {}\" src=\"{t}\"><figcaption>\
                 <b>{}</b><br>IoU <b>{:.3}</b> · {} · sent_id {} · <span class=\"muted\">{}</span>{}</figcaption></figure>",
                x.sent_id,
                x.sent_id,
                esc(x.sentence.as_deref().unwrap_or("(no sentence recorded)")),
                x.iou,
                x.status.name(),
                x.sent_id,
                esc(x.file_name.as_deref().unwrap_or("")),
                x.output
                    .as_deref()
                    .map(|o| format!("<span class=\"out\">{}</span>", esc(&html::cut(o, 400))))
                    .unwrap_or_default()
            );
        }
        s.push_str("</div>");
        Ok(s)
    }
}

fn css(c: [u8; 3]) -> String {
    format!("rgb({},{},{})", c[0], c[1], c[2])
}

/// A mask field at the photo's size as a bitmap (`None` for null).
fn decode(v: &Value, h: u32, w: u32) -> std::result::Result<Option<Mask>, String> {
    let m = parse_mask_json(v)
        .and_then(|m| m.resolve(h, w))
        .map_err(|e| e.to_string())?;
    Ok(m.map(|r| Mask {
        width: w,
        height: h,
        data: r.decode_row_major(),
    }))
}

/// Nearest-neighbour resize of a mask (keeps it binary).
fn resize_mask(m: &Mask, nw: u32, nh: u32) -> Mask {
    let (w, h) = (m.width as u64, m.height as u64);
    let mut data = vec![0u8; nw as usize * nh as usize];
    for y in 0..nh as u64 {
        let sy = ((2 * y + 1) * h / (2 * nh as u64)).min(h - 1);
        for x in 0..nw as u64 {
            let sx = ((2 * x + 1) * w / (2 * nw as u64)).min(w - 1);
            data[(y * nw as u64 + x) as usize] = m.data[(sy * w + sx) as usize];
        }
    }
    Mask {
        width: nw,
        height: nh,
        data,
    }
}

/// Thumbnail size: longest side scaled down to [`THUMB`], or small photos scaled up by a whole
/// factor (at most 8) so that thin outlines stay visible.
fn fit(w: u32, h: u32) -> (u32, u32) {
    let longest = w.max(h).max(1);
    if longest > THUMB {
        let s = THUMB as f64 / longest as f64;
        (
            ((w as f64 * s).round() as u32).clamp(1, THUMB),
            ((h as f64 * s).round() as u32).clamp(1, THUMB),
        )
    } else {
        let f = (THUMB / longest).clamp(1, 8);
        (w * f, h * f)
    }
}

/// The sample's photo (from `dir/file_name`) with its prediction tinted and both masks outlined,
/// at most [`THUMB`] px on its longest side, as a JPEG `data:` URI.
fn thumbnail(s: &Sample, dir: &Path) -> Result<String> {
    let name = s.file_name.as_deref().ok_or_else(|| {
        Error::at(
            &s.origin,
            "no `file_name` (or `image`) field, so the photo cannot be found under --images; per-sample files \
             written by this perceptio's `eval refcoco --per-sample` carry it",
        )
    })?;
    let gt_v = s.gt_mask.as_ref().ok_or_else(|| {
        Error::at(
            &s.origin,
            "no `gt_mask` field to draw; per-sample files written by this perceptio's `eval refcoco --per-sample` \
             (or `--log-samples`) carry it",
        )
    })?;
    let path = dir.join(name);
    let img = crate::preprocess::load_rgb(&path)?;
    let (w, h) = img.dimensions();
    let bad = |what: &str, e: String| Error::at(&s.origin, format!("{what} does not fit {}: {e}", path.display()));
    let gt = decode(gt_v, h, w).map_err(|e| bad("`gt_mask`", e))?;
    let pred = match &s.mask {
        Some(v) => decode(v, h, w).map_err(|e| bad("`mask`", e))?,
        None => None,
    };
    let (nw, nh) = fit(w, h);
    let filter = if nw < w {
        image::imageops::FilterType::Triangle
    } else {
        image::imageops::FilterType::Nearest
    };
    let small = image::imageops::resize(&img, nw, nh, filter);
    let masks: Vec<Mask> = [pred, gt]
        .into_iter()
        .map(|m| {
            m.map(|m| resize_mask(&m, nw, nh))
                .unwrap_or_else(|| Mask::empty(nw, nh))
        })
        .collect();
    let drawn = render::outlines(
        &small,
        &[
            Outline {
                mask: &masks[0],
                color: PRED_COLOR,
                tint: true,
            },
            Outline {
                mask: &masks[1],
                color: GT_COLOR,
                tint: false,
            },
        ],
        2,
    );
    let jpeg = render::jpeg(&drawn, 85)?;
    Ok(format!(
        "data:image/jpeg;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(jpeg)
    ))
}

/// The RefCOCO part of a comparison: cIoU/gIoU and histograms of both runs, and the sentences
/// whose IoU rose or fell most (with photos of the first k of each when --images is given).
pub(super) fn compare(
    body: &mut String,
    (na, a): (&str, &RefRun),
    (nb, b): (&str, &RefRun),
    opts: &Options,
) -> Result<()> {
    let (ha, hb) = (a.headline(), b.headline());
    let get = |h: &[Metric], k: &str| h.iter().find(|m| m.key == k).map(|m| m.value);
    html::section(
        body,
        "ciou-giou",
        "cIoU vs gIoU",
        "",
        &svg::hbars(
            &["cIoU".into(), "gIoU".into()],
            &[],
            &[
                vec![get(&ha, "ciou"), get(&hb, "ciou")],
                vec![get(&ha, "giou"), get(&hb, "giou")],
            ],
            &[&format!("A: {na}"), &format!("B: {nb}")],
        ),
    );
    html::section(
        body,
        "iou",
        "IoU distribution",
        "",
        &svg::histogram(
            &[a.histogram(), b.histogram()],
            &[&format!("A: {na}"), &format!("B: {nb}")],
            "IoU per sentence (20 bins)",
        ),
    );
    let by_id: HashMap<i64, usize> = b.samples.iter().enumerate().map(|(i, s)| (s.sent_id, i)).collect();
    let ids_a: HashSet<i64> = a.samples.iter().map(|s| s.sent_id).collect();
    let mut pairs: Vec<(usize, usize, f64)> = a
        .samples
        .iter()
        .enumerate()
        .filter_map(|(i, s)| by_id.get(&s.sent_id).map(|&j| (i, j, b.samples[j].iou - s.iou)))
        .collect();
    let only_a = a.samples.len() - pairs.len();
    let only_b = b.samples.iter().filter(|s| !ids_a.contains(&s.sent_id)).count();
    let mut better: Vec<(usize, usize, f64)> = pairs.iter().copied().filter(|p| p.2 > 0.0).collect();
    let mut worse: Vec<(usize, usize, f64)> = pairs.iter().copied().filter(|p| p.2 < 0.0).collect();
    better.sort_by(|x, y| {
        y.2.total_cmp(&x.2)
            .then(a.samples[x.0].sent_id.cmp(&a.samples[y.0].sent_id))
    });
    worse.sort_by(|x, y| {
        x.2.total_cmp(&y.2)
            .then(a.samples[x.0].sent_id.cmp(&a.samples[y.0].sent_id))
    });
    pairs.retain(|p| p.2 == 0.0);
    let mut s = html::table(
        "counts",
        &["sentences", "count"],
        &[
            vec![
                "in both runs".into(),
                (better.len() + worse.len() + pairs.len()).to_string(),
            ],
            vec![
                "IoU higher in B".into(),
                format!("<span class=\"good\">{}</span>", better.len()),
            ],
            vec![
                "IoU lower in B".into(),
                format!("<span class=\"bad\">{}</span>", worse.len()),
            ],
            vec!["unchanged".into(), pairs.len().to_string()],
            vec!["only in A".into(), only_a.to_string()],
            vec!["only in B".into(), only_b.to_string()],
        ],
    );
    for (id, title, list) in [("better", "Better in B", &better), ("worse", "Worse in B", &worse)] {
        let shown = &list[..list.len().min(opts.max_changes)];
        let _ = write!(
            s,
            "<h3>{title}: {} sentences{}</h3>",
            list.len(),
            if shown.len() < list.len() {
                format!(", the {} largest changes shown", shown.len())
            } else {
                String::new()
            }
        );
        if list.is_empty() {
            s.push_str("<p class=\"muted\">None.</p>");
            continue;
        }
        let with_photos = opts.images.as_deref().map(|d| (d, opts.k.min(shown.len())));
        let photos: Vec<(String, String)> = match with_photos {
            Some((dir, n)) => shown[..n]
                .par_iter()
                .map(|&(i, j, _)| Ok((thumbnail(&a.samples[i], dir)?, thumbnail(&b.samples[j], dir)?)))
                .collect::<Result<_>>()?,
            None => Vec::new(),
        };
        let _ = write!(
            s,
            "<table class=\"changes\" id=\"{id}\"><thead><tr><th>sent_id</th><th>sentence</th><th class=\"n\">IoU A</th>\
             <th class=\"n\">IoU B</th><th class=\"n\">Δ</th><th>A</th><th>B</th></tr></thead><tbody>"
        );
        for (r, &(i, j, d)) in shown.iter().enumerate() {
            let (x, y) = (&a.samples[i], &b.samples[j]);
            let side = |z: &Sample, photo: Option<&String>| {
                let mut c = z.status.name().to_string();
                if let Some(p) = photo {
                    let _ = write!(
                        c,
                        "<br><img alt=\"sent_id {}\" src=\"{p}\" style=\"max-width:200px\">",
                        z.sent_id
                    );
                }
                if let Some(o) = &z.output {
                    let _ = write!(c, "<div class=\"out\">{}</div>", esc(&html::cut(o, 200)));
                }
                c
            };
            let p = photos.get(r);
            let _ = write!(
                s,
                "<tr class=\"change\" data-change=\"{id}\" data-sent-id=\"{}\"><td>{}</td><td>{}</td><td class=\"n\">{:.3}</td>\
                 <td class=\"n\">{:.3}</td><td class=\"n {}\">{:+.3}</td><td>{}</td><td>{}</td></tr>",
                x.sent_id,
                x.sent_id,
                esc(x.sentence.as_deref().or(y.sentence.as_deref()).unwrap_or("")),
                x.iou,
                y.iou,
                if d > 0.0 { "good" } else { "bad" },
                d,
                side(x, p.map(|p| &p.0)),
                side(y, p.map(|p| &p.1))
            );
        }
        s.push_str("</tbody></table>");
    }
    html::section(
        body,
        "changes",
        "Per-sentence changes",
        "Sentences in both runs whose IoU changed, sorted by the change (B − A).",
        &s,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbnails_fit_and_masks_stay_binary() {
        assert_eq!(fit(640, 480), (320, 240));
        assert_eq!(fit(480, 640), (240, 320));
        assert_eq!(fit(64, 48), (320, 240));
        assert_eq!(fit(25, 25), (200, 200));
        let mut m = Mask::empty(4, 2);
        m.data[1] = 1;
        let r = resize_mask(&m, 8, 4);
        assert_eq!(r.data.iter().filter(|&&v| v == 1).count(), 4);
    }
}
