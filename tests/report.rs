//! HTML reports (`perceptio report`, `eval ... --report`) built from the fixture datasets: the
//! headline numbers in the page equal the scorers' `--json` numbers, the RefCOCO gallery holds
//! exactly k worst and k median photos, nothing points outside the file, and a comparison lists
//! the samples that changed.

mod common;
#[path = "common/sa2va.rs"]
mod sa2va;
use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap()
}

/// Every `data-key="K" data-value="V"` pair of the page (the first of each key, or those
/// carrying `data-side="a|b"` when `side` is given).
fn numbers(html: &str, side: Option<&str>) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let needle = match side {
        Some(s) => format!("data-side=\"{s}\" data-key=\""),
        None => "data-key=\"".to_string(),
    };
    let mut rest = html;
    while let Some(i) = rest.find(&needle) {
        rest = &rest[i + needle.len()..];
        let (key, after) = rest.split_once('"').unwrap();
        let after = after.strip_prefix(" data-value=\"").unwrap();
        let (val, _) = after.split_once('"').unwrap();
        let key = key.replace("&amp;", "&").replace("&#39;", "'");
        out.entry(key).or_insert_with(|| val.parse::<f64>().unwrap());
    }
    out
}

/// The page is one self-contained file: no URL, no script, no external reference.
fn self_contained(html: &str) {
    assert!(html.starts_with("<!DOCTYPE html>"), "{}", &html[..100.min(html.len())]);
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "a URL in the report"
    );
    assert!(!html.contains("<script") && !html.contains("<link") && !html.contains("url("));
    for src in html.split("src=\"").skip(1) {
        assert!(
            src.starts_with("data:image/"),
            "non-data image source: {}",
            &src[..40.min(src.len())]
        );
    }
}

fn check_json(nums: &BTreeMap<String, f64>, v: &Value, keys: &[&str]) {
    for k in keys {
        let want = v[*k].as_f64().unwrap_or_else(|| panic!("json has no {k}: {v}"));
        assert_eq!(nums.get(*k).copied(), Some(want), "{k}");
    }
}

fn refcoco_eval(pred: &Path, extra: &[&str]) -> Value {
    let root = fixture("refcoco");
    let mut args = vec![
        "eval",
        "refcoco",
        "--refer-root",
        s(&root),
        "--dataset",
        "refcoco",
        "--split",
        "val",
        "--predictions",
        s(pred),
        "--json",
    ];
    args.extend_from_slice(extra);
    run_json(&args)
}

const REFCOCO_KEYS: [&str; 7] = [
    "ciou",
    "giou",
    "samples",
    "missing_predictions",
    "empty_predictions",
    "intersection",
    "union",
];

/// The `<figure class="item">`s inside the gallery with this id.
fn gallery_items(html: &str, id: &str) -> usize {
    let start = html.find(&format!("<div class=\"gallery\" id=\"{id}\">")).unwrap();
    let end = start + html[start..].find("</div>").unwrap();
    html[start..end].matches("<figure class=\"item\"").count()
}

#[test]
fn refcoco_report_numbers_match_the_scorer_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let (per, a, b) = (
        dir.path().join("per.jsonl"),
        dir.path().join("a.html"),
        dir.path().join("b.html"),
    );
    let pred = fixture("refcoco/predictions.jsonl");
    let v = refcoco_eval(&pred, &["--per-sample", s(&per), "--report", s(&a)]);
    // from the scorer in the same process
    let html = read(&a);
    self_contained(&html);
    assert!(html.contains("<title>RefCOCO/+/g report"));
    let nums = numbers(&html, None);
    check_json(&nums, &v, &REFCOCO_KEYS);
    check_json(&nums, &v, &["other_split_predictions"]);
    assert!(html.contains(
        &v["provenance"]["inputs"]["predictions"]["sha256"]
            .as_str()
            .unwrap()
            .to_string()
    ));
    assert!(html.contains("perceptio 0.") && html.contains(" UTC"));
    // from the per-sample file, later
    let o = run(&["report", s(&per), "-o", s(&b)], None);
    assert!(o.status.success(), "{}", stderr(&o));
    let html = read(&b);
    self_contained(&html);
    assert!(html.contains("eval refcoco --per-sample file"));
    check_json(&numbers(&html, None), &v, &REFCOCO_KEYS);
    // 20-bin histogram: one bar per non-empty bin, as many sentences as the split has
    assert!(html.contains("IoU per sentence (20 bins"));
    // without --images: tables, not a gallery
    assert_eq!(html.matches("<figure").count(), 0);
    // k = 8 but 7 sentences: all 7 are the worst, none is left for the median
    assert_eq!(html.matches("<tr class=\"sample\"").count(), 7);
    // `-o -` writes the page to stdout, byte for byte the same page
    let o = run(&["report", s(&per), "-o", "-"], None);
    assert!(o.status.success());
    let out = stdout(&o);
    assert!(out.starts_with("<!DOCTYPE html>") && out.ends_with("</html>\n"));
    // no temp files left behind
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["a.html", "b.html", "per.jsonl"]);
}

#[test]
fn refcoco_gallery_has_exactly_k_worst_and_k_median_photos() {
    let dir = tempfile::tempdir().unwrap();
    let images = coco_images(dir.path());
    let (per, a, b) = (
        dir.path().join("per.jsonl"),
        dir.path().join("a.html"),
        dir.path().join("b.html"),
    );
    let pred = fixture("refcoco/predictions.jsonl");
    refcoco_eval(
        &pred,
        &[
            "--per-sample",
            s(&per),
            "--report",
            s(&a),
            "--images",
            s(&images),
            "--report-k",
            "2",
        ],
    );
    let o = run(
        &["report", s(&per), "-o", s(&b), "--images", s(&images), "--k", "3"],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    for (path, k) in [(&a, 2), (&b, 3)] {
        let html = read(path);
        self_contained(&html);
        assert_eq!(gallery_items(&html, "worst"), k, "{}", path.display());
        assert_eq!(gallery_items(&html, "median"), k);
        assert_eq!(html.matches("<figure class=\"item\"").count(), 2 * k);
        assert_eq!(html.matches("src=\"data:image/jpeg;base64,").count(), 2 * k);
        // the worst is the missing sentence (IoU 0), with its expression
        let worst = &html[html.find("id=\"worst\"").unwrap()..];
        assert!(
            worst.starts_with("id=\"worst\"><figure class=\"item\" data-sent-id=\"1013\""),
            "{}",
            &worst[..200]
        );
        assert!(worst.contains("the nest"));
    }
    // photos are downscaled (or enlarged by a whole factor) to at most 320 px
    use base64::Engine;
    let html = read(&b);
    for chunk in html.split("src=\"data:image/jpeg;base64,").skip(1) {
        let b64 = &chunk[..chunk.find('"').unwrap()];
        let bytes = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
        let img = image::load_from_memory(&bytes).unwrap();
        assert!(
            img.width().max(img.height()) <= 320 && img.width() >= 64,
            "{}x{}",
            img.width(),
            img.height()
        );
    }
    // a photo of another size than the annotation is refused, naming the file
    let f = images.join("COCO_train2014_000000000101.jpg");
    image::RgbImage::new(10, 10).save(&f).unwrap();
    let o = run(
        &["report", s(&per), "-o", s(&b), "--images", s(&images), "--k", "3"],
        None,
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("COCO_train2014_000000000101.jpg") && stderr(&o).contains("does not fit"),
        "{}",
        stderr(&o)
    );
    std::fs::remove_file(&f).unwrap();
    assert_fails(
        &["report", s(&per), "-o", s(&b), "--images", s(&images)],
        "COCO_train2014_000000000101.jpg",
    );
}

#[test]
fn mmbench_report_numbers_match_the_scorer() {
    let dir = tempfile::tempdir().unwrap();
    let (per, a, b) = (
        dir.path().join("q.jsonl"),
        dir.path().join("a.html"),
        dir.path().join("b.html"),
    );
    let tsv = fixture("mmbench/MMBench_DEV_EN_mini.tsv");
    for missing in ["strict", "vlmevalkit"] {
        let v = run_json(&[
            "eval",
            "mmbench",
            "--annotations",
            s(&tsv),
            "--predictions",
            s(&fixture("mmbench/predictions.jsonl")),
            "--missing",
            missing,
            "--json",
            "--per-question",
            s(&per),
            "--report",
            s(&a),
        ]);
        let o = run(&["report", s(&per), "-o", s(&b)], None);
        assert!(o.status.success(), "{}", stderr(&o));
        for (path, from_file) in [(&a, false), (&b, true)] {
            let html = read(path);
            self_contained(&html);
            assert!(html.contains("<title>MMBench report"));
            let nums = numbers(&html, None);
            let mut keys = vec!["overall", "questions", "correct", "unresolved"];
            // a per-question file of `--missing vlmevalkit` no longer has the dropped questions
            if !(from_file && missing == "vlmevalkit") {
                keys.push("missing_main_predictions");
            }
            check_json(&nums, &v, &keys);
            for group in ["l2_categories", "categories"] {
                for (name, want) in v[group].as_object().unwrap() {
                    assert_eq!(
                        nums.get(&format!("{group}/{name}")).copied(),
                        want.as_f64(),
                        "{group}/{name}"
                    );
                }
            }
            // confusion table and the unresolved answers ("A B" and "b" in the fixture)
            assert!(html.contains("Predicted × gold letter") && html.contains("data-gold=\"A\" data-read=\"A\""));
            assert_eq!(nums.get("unparsable_rows").copied(), Some(2.0));
            assert!(html.contains("<div class=\"out\">A B</div>"));
        }
    }
}

#[test]
fn hardblink_report_numbers_match_the_scorer() {
    let dir = tempfile::tempdir().unwrap();
    let (per, a, b) = (
        dir.path().join("hb.jsonl"),
        dir.path().join("a.html"),
        dir.path().join("b.html"),
    );
    let v = run_json(&[
        "eval",
        "hardblink",
        "--annotations",
        s(&fixture("hardblink")),
        "--predictions",
        s(&fixture("hardblink/predictions")),
        "--blink2",
        s(&fixture("hardblink/blink2.jsonl")),
        "--json",
        "--per-sample",
        s(&per),
        "--report",
        s(&a),
    ]);
    let lines: Vec<Value> = read(&per).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 6 * 3 + 4);
    for k in [
        "variant",
        "question_id",
        "output",
        "parsed",
        "gold",
        "correct",
        "outcome",
    ] {
        assert!(lines[0].get(k).is_some(), "{k}: {}", lines[0]);
    }
    let o = run(&["report", s(&per), "-o", s(&b)], None);
    assert!(o.status.success(), "{}", stderr(&o));
    for path in [&a, &b] {
        let html = read(path);
        self_contained(&html);
        assert!(html.contains("<title>HardBLINK report"));
        let nums = numbers(&html, None);
        check_json(&nums, &v, &["mean", "aurora_mean", "unparsable"]);
        for n in ["3", "4", "5"] {
            assert_eq!(nums[&format!("variants/{n}")], v["variants"][n].as_f64().unwrap());
        }
        assert_eq!(nums["blink2"], v["blink2"]["accuracy"].as_f64().unwrap());
        // one confusion table per variant, the unparsable answers listed
        assert_eq!(html.matches("<table class=\"conf\">").count(), 4);
        assert_eq!(nums.get("unparsable_rows").copied(), Some(5.0));
        assert!(html.contains("llava-aurora"), "the model id of the answers files");
    }
}

/// Predictions for B: A's with sentence 1001 dropped (worse: missing) and 1013 predicted
/// exactly (better: IoU 1).
fn refcoco_b(dir: &Path, per_a: &Path) -> PathBuf {
    let gt_1013 = read(per_a)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|l| l["sent_id"] == 1013)
        .unwrap()["gt_mask"]
        .clone();
    let mut out = String::new();
    for l in read(&fixture("refcoco/predictions.jsonl")).lines() {
        if !l.contains("\"sent_id\": 1001,") {
            out.push_str(l);
            out.push('\n');
        }
    }
    out.push_str(&serde_json::json!({"sent_id": 1013, "mask": gt_1013}).to_string());
    out.push('\n');
    let p = dir.join("pred_b.jsonl");
    std::fs::write(&p, out).unwrap();
    p
}

/// `data-change="..."` rows of a comparison, as (change, key).
fn changes(html: &str, key_attr: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for chunk in html.split("<tr class=\"change\" data-change=\"").skip(1) {
        let (change, rest) = chunk.split_once('"').unwrap();
        let rest = rest.strip_prefix(&format!(" {key_attr}=\"")).unwrap();
        out.push((change.to_string(), rest.split_once('"').unwrap().0.to_string()));
    }
    out
}

#[test]
fn comparison_lists_the_samples_that_changed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (pa, pb, cmp) = (d.join("a.jsonl"), d.join("b.jsonl"), d.join("cmp.html"));
    let va = refcoco_eval(&fixture("refcoco/predictions.jsonl"), &["--per-sample", s(&pa)]);
    let vb = refcoco_eval(&refcoco_b(d, &pa), &["--per-sample", s(&pb)]);
    let images = coco_images(d);
    let o = run(
        &[
            "report",
            s(&pa),
            s(&pb),
            "-o",
            s(&cmp),
            "--images",
            s(&images),
            "--k",
            "1",
        ],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let html = read(&cmp);
    self_contained(&html);
    assert!(html.contains("<title>RefCOCO/+/g comparison: a.jsonl vs b.jsonl"));
    check_json(&numbers(&html, Some("a")), &va, &REFCOCO_KEYS);
    check_json(&numbers(&html, Some("b")), &vb, &REFCOCO_KEYS);
    assert_eq!(
        changes(&html, "data-sent-id"),
        [
            ("better".to_string(), "1013".to_string()),
            ("worse".to_string(), "1001".to_string())
        ]
    );
    // photos of A's and B's prediction for the first (k = 1) change of each list
    assert_eq!(html.matches("src=\"data:image/jpeg;base64,").count(), 4);

    // MMBench: question 1 becomes right (its two wrong copies fixed), question 2 wrong.
    let tsv = fixture("mmbench/MMBench_DEV_EN_mini.tsv");
    let mut preds_b = String::new();
    for l in read(&fixture("mmbench/predictions.jsonl")).lines() {
        let mut v: Value = serde_json::from_str(l).unwrap();
        match v["index"].as_i64().unwrap() {
            1000001 => v["prediction"] = "D".into(),
            3000001 => v["prediction"] = "B".into(),
            2 => v["prediction"] = "C".into(),
            _ => {}
        }
        preds_b.push_str(&v.to_string());
        preds_b.push('\n');
    }
    std::fs::write(d.join("mm_b.jsonl"), preds_b).unwrap();
    for (pred, per) in [
        (fixture("mmbench/predictions.jsonl"), d.join("qa.jsonl")),
        (d.join("mm_b.jsonl"), d.join("qb.jsonl")),
    ] {
        let o = run(
            &[
                "eval",
                "mmbench",
                "--annotations",
                s(&tsv),
                "--predictions",
                s(&pred),
                "--per-question",
                s(&per),
            ],
            None,
        );
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let o = run(
        &["report", s(&d.join("qa.jsonl")), s(&d.join("qb.jsonl")), "-o", s(&cmp)],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let html = read(&cmp);
    self_contained(&html);
    assert_eq!(
        changes(&html, "data-key"),
        [
            ("better".to_string(), "1".to_string()),
            ("worse".to_string(), "2".to_string())
        ]
    );
    // two runs of different benchmarks cannot be compared
    let o = run(&["report", s(&d.join("qa.jsonl")), s(&pa), "-o", s(&cmp)], None);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("same benchmark"));
}

#[test]
fn unknown_or_bad_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = d.join("r.html");
    let f = d.join("x.jsonl");
    std::fs::write(&f, "{\"foo\": 1, \"bar\": 2}\n").unwrap();
    assert_fails(
        &["report", s(&f), "-o", s(&out)],
        "cannot tell which benchmark this is (fields: bar, foo)",
    );
    std::fs::write(&f, "\n").unwrap();
    assert_fails(&["report", s(&f), "-o", s(&out)], "empty");
    std::fs::write(&f, "{\"sent_id\": 1, \"iou\": 0.5, \"intersection\": 1, \"union\": 2, \"prediction\": \"ok\"}\n{\"index\": 3, \"outcome\": \"wrong\", \"hit\": 0}\n").unwrap();
    assert_fails(&["report", s(&f), "-o", s(&out)], "x.jsonl:2");
    std::fs::write(
        &f,
        "{\"sent_id\": 1, \"iou\": 0.5, \"union\": 2, \"prediction\": \"ok\"}\n",
    )
    .unwrap();
    assert_fails(
        &["report", s(&f), "-o", s(&out)],
        "missing non-negative integer `intersection`",
    );
    // per-sample lines without file names cannot make a gallery
    std::fs::write(
        &f,
        "{\"sent_id\": 1, \"iou\": 0.5, \"intersection\": 1, \"union\": 2, \"prediction\": \"ok\"}\n",
    )
    .unwrap();
    assert_fails(&["report", s(&f), "-o", s(&out), "--images", s(d)], "no `file_name`");
    assert_fails(&["report", s(&d.join("nope.jsonl")), "-o", s(&out)], "nope.jsonl");
    assert!(!out.exists(), "no output after a failure");
    // usage errors: three inputs; --report - on eval (stdout carries the scores)
    let o = run(&["report", s(&f), s(&f), s(&f), "-o", s(&out)], None);
    assert_eq!(o.status.code(), Some(2));
    let o = run(
        &[
            "eval",
            "mmbench",
            "--annotations",
            s(&fixture("mmbench/MMBench_DEV_EN_mini.tsv")),
            "--predictions",
            s(&fixture("mmbench/predictions.jsonl")),
            "--report",
            "-",
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    // stdin works as an input
    let per = d.join("per.jsonl");
    refcoco_eval(&fixture("refcoco/predictions.jsonl"), &["--per-sample", s(&per)]);
    let o = run(&["report", "-", "-o", s(&out)], Some(read(&per).as_bytes()));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(read(&out).contains("RefCOCO/+/g report: &lt;stdin&gt;"));
}

#[test]
fn reports_of_model_runs_carry_model_outputs_and_prompts() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = d.join("model");
    std::fs::create_dir(&model).unwrap();
    sa2va::assemble(&model);
    let images = coco_images(d);
    let (pred, log, html_path) = (d.join("pred.jsonl"), d.join("log.jsonl"), d.join("m.html"));
    let v = refcoco_eval(
        &pred,
        &[
            "--model",
            s(&model),
            "--images",
            s(&images),
            "--force-seg",
            "--max-tiles",
            "1",
            "--log-samples",
            s(&log),
            "--report",
            s(&html_path),
            "--report-k",
            "2",
        ],
    );
    let html = read(&html_path);
    self_contained(&html);
    check_json(&numbers(&html, None), &v, &REFCOCO_KEYS);
    assert_eq!(html.matches("<figure class=\"item\"").count(), 4);
    assert!(html.contains(&model.display().to_string()));
    assert!(
        html.contains("Please segment the left box in this image."),
        "the prompts of the log"
    );
    assert!(
        html.contains("<span class=\"out\">Sure, [SEG].</span>"),
        "the raw outputs of the log"
    );
    // the log itself is a report source too, with the same numbers (the log's sentences are
    // grouped by image, so gIoU may differ in the last bit)
    let o = run(
        &[
            "report",
            s(&log),
            "-o",
            s(&html_path),
            "--images",
            s(&images),
            "--k",
            "1",
        ],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let html = read(&html_path);
    assert!(html.contains("eval refcoco --model --log-samples file"));
    let nums = numbers(&html, None);
    assert_eq!(nums["ciou"], v["ciou"].as_f64().unwrap());
    assert!((nums["giou"] - v["giou"].as_f64().unwrap()).abs() < 1e-12);
    assert_eq!(nums["samples"], v["samples"].as_f64().unwrap());
    assert_eq!(html.matches("<figure class=\"item\"").count(), 2);
    assert!(
        html.contains(&model.display().to_string()),
        "the model recorded in the log"
    );
}
