//! `perceptio segment IMAGE EXPR...` (referring segmentation with a Sa2VA-style model) and
//! `perceptio segment IMAGE --point x,y[,label] | --box x0,y0,x1,y1` (plain SAM2).

use super::runtime::RuntimeArgs;
use crate::error::{exit, Error, Result};
use crate::hub;
use crate::mask::Mask;
use crate::models::generate::GenerateOptions;
use crate::models::perceptio::{Grounder, LoadOptions, SegmentOptions};
use crate::models::sam2::{PointPrompt, Preprocess, Prompt, Sam2};
use crate::render;
use candle_core::{DType, Device};
use clap::Args;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Args, Debug)]
pub struct SegmentArgs {
    /// Image file (PNG/JPEG), or `-` for stdin.
    #[arg(required_unless_present = "batch")]
    pub image: Option<PathBuf>,
    /// Referring expressions ("the red cup"); each gets its own mask. The image is encoded once.
    pub expressions: Vec<String>,
    /// Hub repo (`org/name[@rev]`) or local directory of a Sa2VA-style model (InternVL + SAM2).
    #[arg(long, default_value = "ByteDance/Sa2VA-1B")]
    pub model: String,
    /// Plain SAM2 checkpoint for --point/--box: Meta `.pt`, `.safetensors`, a directory, or a hub
    /// repo. Default: the SAM2 inside --model.
    #[arg(long)]
    pub sam2: Option<String>,
    /// JSON file with a `sam2` geometry block, for checkpoints whose geometry the weights cannot
    /// reveal (see docs/formats.md).
    #[arg(long)]
    pub sam2_config: Option<PathBuf>,
    /// A point prompt in image pixels, label 1 (foreground, default) or 0 (background). Repeatable.
    #[arg(long = "point", value_name = "X,Y[,LABEL]")]
    pub points: Vec<String>,
    /// A box prompt in image pixels.
    #[arg(long = "box", value_name = "X0,Y0,X1,Y1")]
    pub bbox: Option<String>,
    /// With --point/--box: always (true) or never (false) ask SAM2 for three candidates and keep
    /// the best by predicted IoU. Default: only for a single point, as SAM2 recommends.
    #[arg(long)]
    pub multimask: Option<bool>,
    /// Teacher-force the reply "Sure, [SEG]." (LISA/GLaMM evaluation style) so a mask always
    /// comes out, instead of letting the model generate.
    #[arg(long)]
    pub force_seg: bool,
    /// Write the mask as a binary PNG (0/255) of the image's size. With several expressions,
    /// `{}` in the name is replaced by 1, 2, … (else `-1`, `-2`, … is added before the extension).
    #[arg(short = 'o', long = "output", value_name = "MASK.png")]
    pub output: Option<PathBuf>,
    /// Write the mask as COCO RLE JSON `{"size": [h, w], "counts": "..."}`.
    #[arg(long, value_name = "FILE.json")]
    pub rle: Option<PathBuf>,
    /// Write the photo with the mask tinted and outlined.
    #[arg(long, value_name = "FILE.png")]
    pub overlay: Option<PathBuf>,
    /// Print one JSON object per expression (RLE, area, bbox, score, text, timings). This is also
    /// what is printed when no output file is asked for.
    #[arg(long)]
    pub json: bool,
    /// Many requests with the model loaded once: a JSONL file (`-` = stdin) of
    /// `{"id": ANY, "image": PATH, "expressions": [STR, ...]}`; one JSON line per expression on
    /// stdout, in input order, with its `id`; `{id}` in -o/--rle/--overlay names is the request id.
    #[arg(long, value_name = "FILE.jsonl", conflicts_with_all = ["image", "points", "bbox"])]
    pub batch: Option<PathBuf>,
    #[command(flatten)]
    pub rt: RuntimeArgs,
}

fn parse_floats(s: &str, what: &str, n: &[usize]) -> Result<Vec<f32>> {
    let v: Vec<f32> = s
        .split(',')
        .map(|p| p.trim().parse::<f32>().ok().filter(|x| x.is_finite()))
        .collect::<Option<_>>()
        .ok_or_else(|| Error::Usage(format!("{what} {s:?}: expected comma-separated numbers")))?;
    if !n.contains(&v.len()) {
        return Err(Error::Usage(format!(
            "{what} {s:?}: expected {} numbers",
            n.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(" or ")
        )));
    }
    Ok(v)
}

/// Parse and validate --point/--box against the photo's size.
pub fn parse_prompt(points: &[String], bbox: Option<&str>, (w, h): (u32, u32)) -> Result<PointPrompt> {
    let inside = |x: f32, y: f32| x >= 0.0 && y >= 0.0 && x <= w as f32 && y <= h as f32;
    let mut p = PointPrompt::default();
    for s in points {
        let v = parse_floats(s, "--point", &[2, 3])?;
        let label = if v.len() == 3 { v[2] } else { 1.0 };
        if label != 0.0 && label != 1.0 {
            return Err(Error::Usage(format!(
                "--point {s:?}: the label must be 1 (foreground) or 0 (background)"
            )));
        }
        if !inside(v[0], v[1]) {
            return Err(Error::Usage(format!("--point {s:?} is outside the {w}x{h} image")));
        }
        p.points.push((v[0], v[1], label as i64));
    }
    if let Some(s) = bbox {
        let v = parse_floats(s, "--box", &[4])?;
        if v[2] < v[0] || v[3] < v[1] {
            return Err(Error::Usage(format!(
                "--box {s:?}: expected x0,y0,x1,y1 with x1 >= x0 and y1 >= y0"
            )));
        }
        if !inside(v[0], v[1]) || !inside(v[2], v[3]) {
            return Err(Error::Usage(format!("--box {s:?} is outside the {w}x{h} image")));
        }
        p.bbox = Some([v[0], v[1], v[2], v[3]]);
    }
    Ok(p)
}

/// The output path of result `i` (0-based) of `n`.
pub fn numbered(path: &Path, i: usize, n: usize) -> PathBuf {
    if n <= 1 {
        return path.to_path_buf();
    }
    let s = path.to_string_lossy();
    if s.contains("{}") {
        return PathBuf::from(s.replace("{}", &(i + 1).to_string()));
    }
    let stem = path
        .file_stem()
        .map(|x| x.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match path.extension() {
        Some(e) => format!("{stem}-{}.{}", i + 1, e.to_string_lossy()),
        None => format!("{stem}-{}", i + 1),
    };
    path.with_file_name(name)
}

struct Outputs<'a> {
    a: &'a SegmentArgs,
    n: usize,
    /// The batch request id, substituted for `{id}` in the output names.
    id: Option<serde_json::Value>,
}

impl Outputs<'_> {
    fn path(&self, p: &Path, i: usize) -> PathBuf {
        let p = match &self.id {
            Some(id) => super::batch::with_id(p, id),
            None => p.to_path_buf(),
        };
        numbered(&p, i, self.n)
    }

    fn any_file(&self) -> bool {
        self.a.output.is_some() || self.a.rle.is_some() || self.a.overlay.is_some()
    }

    /// Write the files asked for result `i`; returns their paths for the JSON summary.
    fn write(&self, i: usize, img: &image::RgbImage, mask: &Mask) -> Result<serde_json::Value> {
        let mut files = serde_json::Map::new();
        if let Some(p) = &self.a.output {
            let p = self.path(p, i);
            crate::util::atomic::write(&p, &render::mask_png(mask)?)?;
            files.insert("mask".into(), p.display().to_string().into());
        }
        if let Some(p) = &self.a.rle {
            let p = self.path(p, i);
            let v = mask.to_rle().map_err(|e| Error::at("mask", e.0))?.to_coco_json();
            crate::util::atomic::write(&p, format!("{v}\n").as_bytes())?;
            files.insert("rle".into(), p.display().to_string().into());
        }
        if let Some(p) = &self.a.overlay {
            let p = self.path(p, i);
            crate::util::atomic::write(&p, &render::overlay_png(img, &[mask])?)?;
            files.insert("overlay".into(), p.display().to_string().into());
        }
        Ok(files.into())
    }
}

pub(super) fn mask_summary(mask: &Mask) -> Result<serde_json::Value> {
    mask.summary_json().map_err(|e| Error::at("mask", e.0))
}

fn merge(mut a: serde_json::Value, b: serde_json::Value) -> serde_json::Value {
    if let (Some(a), serde_json::Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
}

/// Run `segment`; returns the exit code (3 when the model produced no `[SEG]` for some expression).
pub fn run(a: SegmentArgs) -> Result<i32> {
    if let Some(b) = &a.batch {
        if !a.expressions.is_empty() {
            return Err(Error::Usage(
                "--batch takes its expressions from the file, not the command line".into(),
            ));
        }
        let _trace = a.rt.start_trace()?;
        let (device, dtype) = a.rt.device_dtype()?;
        return run_batch(&a, b, &device, dtype);
    }
    let classic = !a.points.is_empty() || a.bbox.is_some();
    if classic && !a.expressions.is_empty() {
        return Err(Error::Usage(
            "give either referring expressions or --point/--box prompts, not both".into(),
        ));
    }
    if !classic && a.expressions.is_empty() {
        return Err(Error::Usage(
            "nothing to segment: give a referring expression (e.g. \"the red cup\") or --point/--box".into(),
        ));
    }
    check_expressions(&a.expressions)?;
    if classic && a.force_seg {
        return Err(Error::Usage(
            "--force-seg applies to referring expressions, not to --point/--box".into(),
        ));
    }
    let _trace = a.rt.start_trace()?;
    let (device, dtype) = a.rt.device_dtype()?;
    let image = a.image.as_deref().expect("clap requires IMAGE without --batch");
    let img = crate::preprocess::image_io::load_rgb(image)?;
    if classic {
        let prompt = parse_prompt(&a.points, a.bbox.as_deref(), (img.width(), img.height()))?;
        run_points(&a, &img, &prompt, &device, dtype)
    } else {
        run_expressions(&a, &img, &device, dtype)
    }
}

/// Plain SAM2 with `--point`/`--box` (as `SAM2ImagePredictor`).
fn run_points(
    a: &SegmentArgs,
    img: &image::RgbImage,
    prompt: &PointPrompt,
    device: &Device,
    dtype: DType,
) -> Result<i32> {
    let overrides = match &a.sam2_config {
        Some(p) => {
            let v: serde_json::Value = serde_json::from_slice(&crate::util::read_file(p)?)
                .map_err(|e| Error::input(p, format!("not valid JSON: {e}")))?;
            Some(v.get("sam2").cloned().unwrap_or(v))
        }
        None => None,
    };
    let outs = Outputs { a, n: 1, id: None };
    let src = a.sam2.clone().unwrap_or_else(|| a.model.clone());
    let path = PathBuf::from(&src);
    let path = if path.is_file() {
        path
    } else {
        hub::resolve_model(&src, &a.rt.hub())?
    };
    let t = Instant::now();
    let sam = Sam2::load(&path, overrides.as_ref(), device, dtype)?;
    let load_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let (feats, _) = sam.features(img, Preprocess::Sam2)?;
    let encode_s = t.elapsed().as_secs_f64();
    let multimask = a.multimask.unwrap_or(prompt.points.len() == 1 && prompt.bbox.is_none());
    let t = Instant::now();
    let p = sam.predict_mask(
        &feats,
        Prompt::Points { prompt, multimask },
        (img.width(), img.height()),
    )?;
    let decode_s = t.elapsed().as_secs_f64();
    let files = outs.write(0, img, &p.mask)?;
    if a.json || !outs.any_file() {
        let v = serde_json::json!({
            "image": image_name(a),
            "prompt": {"points": prompt.points.iter().map(|p| [p.0 as f64, p.1 as f64, p.2 as f64]).collect::<Vec<_>>(), "box": prompt.bbox},
            "score": p.scores[p.best],
            "scores": p.scores,
            "multimask": multimask,
            "object_score": p.object_score,
            "model": path,
            "sam2_variant": sam.config.variant_name(),
            "files": files,
            "timings": {"load_s": load_s, "sam2_encode_s": encode_s, "sam2_decode_s": decode_s},
        });
        super::print_json_line(&merge(v, mask_summary(&p.mask)?))?;
    }
    Ok(exit::OK)
}

/// The model and options of a referring-segmentation run, loaded once.
struct Session {
    g: Grounder,
    dir: PathBuf,
    load_s: f64,
    max_tiles: usize,
    opts: SegmentOptions,
}

impl Session {
    fn open(a: &SegmentArgs, device: &Device, dtype: DType) -> Result<Self> {
        let t = Instant::now();
        let (ck, lo) = a.rt.open_model(&a.model, device, dtype)?;
        let dir = ck.dir.clone();
        let g = Grounder::load(
            &ck,
            &LoadOptions {
                require_grounding: true,
                ..lo
            },
        )?;
        drop(ck);
        let max_tiles = a.rt.tiles(device, g.chat.default_max_tiles());
        let opts = segment_options(max_tiles, a.force_seg, a.rt.max_new_tokens);
        Ok(Self {
            g,
            dir,
            load_s: t.elapsed().as_secs_f64(),
            max_tiles,
            opts,
        })
    }

    /// Segment the expressions of one photo: their files are written and their JSON lines
    /// returned; the flag says whether some expression got no `[SEG]`.
    fn expressions(
        &mut self,
        img: &image::RgbImage,
        vision: &crate::models::internvl::chat::Vision,
        exprs: &[String],
        outs: &Outputs,
        image: &str,
        first: bool,
    ) -> Result<(Vec<serde_json::Value>, bool)> {
        let mut lines = Vec::new();
        let mut no_mask = false;
        for (i, expr) in exprs.iter().enumerate() {
            let load_s = if first && i == 0 { self.load_s } else { 0.0 };
            let job = ExpressionJob {
                expression: expr,
                opts: &self.opts,
                model_dir: &self.dir,
                image,
                load_s,
            };
            let (v, no_seg) = expression_json(&mut self.g, img, vision, &job, |m| outs.write(i, img, m))?;
            if no_seg {
                eprintln!("perceptio: the model produced no [SEG] token for {expr:?} (reply: {:?}); the mask is empty. --force-seg always yields a mask.", v["text"].as_str().unwrap_or_default());
                no_mask = true;
            }
            lines.push(v);
        }
        Ok((lines, no_mask))
    }
}

/// How `segment` grounds an expression (the server passes the same settings).
pub(super) fn segment_options(max_tiles: usize, force_seg: bool, max_new_tokens: usize) -> SegmentOptions {
    SegmentOptions {
        max_tiles,
        force_seg,
        generation: GenerateOptions {
            max_new_tokens,
            ..Default::default()
        },
    }
}

/// What one referring expression's answer needs besides the model and the photo.
pub(super) struct ExpressionJob<'a> {
    pub expression: &'a str,
    pub opts: &'a SegmentOptions,
    pub model_dir: &'a Path,
    /// How the photo is named in the answer (its path as given, `-` for bytes).
    pub image: &'a str,
    pub load_s: f64,
}

/// The `--json` object of one referring expression, which `segment --json`, `segment --batch`
/// and `serve` all answer; `files` writes the caller's outputs for the mask and names them.
/// The flag is true when the model produced no `[SEG]` (the mask is empty).
pub(super) fn expression_json(
    g: &mut Grounder,
    img: &image::RgbImage,
    vision: &crate::models::internvl::chat::Vision,
    job: &ExpressionJob,
    files: impl FnOnce(&Mask) -> Result<serde_json::Value>,
) -> Result<(serde_json::Value, bool)> {
    let r = g.segment(img, vision, job.expression, job.opts)?;
    let files = files(&r.mask)?;
    let best = r
        .scores
        .iter()
        .cloned()
        .fold(None, |m: Option<f32>, s| Some(m.map_or(s, |m| m.max(s))));
    let v = serde_json::json!({
        "image": job.image,
        "expression": r.expression,
        "prompt": r.prompt,
        "text": r.text,
        "token_ids": r.token_ids,
        "forced": job.opts.force_seg,
        "seg_count": r.seg_count,
        "score": best,
        "scores": r.scores,
        "object_scores": r.object_scores,
        "model": job.model_dir,
        "tiles": vision.n_tiles,
        "files": files,
        "timings": merge(serde_json::json!({"load_s": job.load_s}), serde_json::to_value(&r.timings).unwrap_or_default()),
    });
    Ok((merge(v, mask_summary(&r.mask)?), r.seg_count == 0))
}

/// Referring expressions must be non-empty (the same rule for the CLI, `--batch` and `serve`).
pub(super) fn check_expressions(exprs: &[String]) -> Result<()> {
    match exprs.iter().position(|e| e.trim().is_empty()) {
        Some(i) => Err(Error::Usage(format!("expression {} is empty", i + 1))),
        None => Ok(()),
    }
}

fn image_name(a: &SegmentArgs) -> String {
    a.image.as_deref().map(|p| p.display().to_string()).unwrap_or_default()
}

/// Referring expressions through the Sa2VA-style model (`[SEG]` → SAM2).
fn run_expressions(a: &SegmentArgs, img: &image::RgbImage, device: &Device, dtype: DType) -> Result<i32> {
    let outs = Outputs {
        a,
        n: a.expressions.len(),
        id: None,
    };
    let mut s = Session::open(a, device, dtype)?;
    let vision = s.g.vision(img, s.max_tiles)?;
    let (lines, no_mask) = s.expressions(img, &vision, &a.expressions, &outs, &image_name(a), true)?;
    if a.json || !outs.any_file() {
        for v in &lines {
            super::print_json_line(v)?;
        }
    }
    Ok(if no_mask { exit::NO_MASK } else { exit::OK })
}

/// One request line of `--batch`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchRequest {
    id: serde_json::Value,
    image: PathBuf,
    expressions: Vec<String>,
}

/// `--batch`: every request through one loaded model, in input order; a request that fails
/// becomes an error line and the batch goes on.
fn run_batch(a: &SegmentArgs, batch: &Path, device: &Device, dtype: DType) -> Result<i32> {
    let text = super::batch::read_lines(batch)?;
    let mut s = Session::open(a, device, dtype)?;
    let mut visions = super::batch::VisionCache::default();
    let mut no_mask = false;
    let failed = super::batch::for_each(batch, &text, "segment", |k, req: BatchRequest| {
        check_expressions(&req.expressions)?;
        let max_tiles = s.max_tiles;
        let e = visions.get(&req.image, |img| s.g.vision(img, max_tiles))?;
        let outs = Outputs {
            a,
            n: req.expressions.len(),
            id: Some(req.id.clone()),
        };
        let (mut vs, nm) = s.expressions(
            &e.0,
            &e.1,
            &req.expressions,
            &outs,
            &req.image.display().to_string(),
            k == 0,
        )?;
        no_mask |= nm;
        vs.iter_mut().for_each(|v| v["id"] = req.id.clone());
        Ok(vs)
    })?;
    Ok(if failed > 0 {
        exit::FAILURE
    } else if no_mask {
        exit::NO_MASK
    } else {
        exit::OK
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_are_validated() {
        let p = parse_prompt(&["10,20".into(), "5.5,6,0".into()], Some("1,2,30,40"), (100, 50)).unwrap();
        assert_eq!(p.points, vec![(10.0, 20.0, 1), (5.5, 6.0, 0)]);
        assert_eq!(p.bbox, Some([1.0, 2.0, 30.0, 40.0]));
        for (pts, bx, needle) in [
            (vec!["200,10"], None, "outside"),
            (vec!["1,2,7"], None, "label"),
            (vec!["a,b"], None, "numbers"),
            (vec![], Some("30,2,1,40"), "x1 >= x0"),
            (vec![], Some("1,2,3"), "4 numbers"),
        ] {
            let pts: Vec<String> = pts.into_iter().map(String::from).collect();
            let e = parse_prompt(&pts, bx, (100, 50)).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
    }

    #[test]
    fn numbered_outputs() {
        assert_eq!(numbered(Path::new("m.png"), 0, 1), PathBuf::from("m.png"));
        assert_eq!(numbered(Path::new("out/m.png"), 1, 3), PathBuf::from("out/m-2.png"));
        assert_eq!(numbered(Path::new("m_{}.png"), 2, 3), PathBuf::from("m_3.png"));
    }
}
