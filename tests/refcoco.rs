//! RefCOCO scoring against expected numbers computed independently (pycocotools + numpy,
//! tools/gen_refcoco_fixtures.py), through the real binary and the library.

mod common;
use common::*;
use serde_json::Value;
use std::path::Path;

fn expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("refcoco/expected.json")).unwrap()).unwrap()
}

fn refcoco_args<'a>(root: &'a str, dataset: &'a str, split: &'a str, conv: &'a str, pred: &'a str) -> Vec<&'a str> {
    vec![
        "eval",
        "refcoco",
        "--refer-root",
        root,
        "--dataset",
        dataset,
        "--split",
        split,
        "--gt-overlap",
        conv,
        "--predictions",
        pred,
        "--json",
    ]
}

fn check(got: &Value, want: &Value, what: &str) {
    for k in [
        "samples",
        "intersection",
        "union",
        "missing_predictions",
        "empty_predictions",
        "other_split_predictions",
    ] {
        assert_eq!(got[k], want[k], "{what}: {k}");
    }
    let (gc, wc) = (got["ciou"].as_f64().unwrap(), want["ciou"].as_f64().unwrap());
    assert_eq!(gc, wc, "{what}: ciou");
    let (gg, wg) = (got["giou"].as_f64().unwrap(), want["giou"].as_f64().unwrap());
    assert!((gg - wg).abs() < 1e-12, "{what}: giou {gg} vs {wg}");
    // and the reference scripts' epsilon-laden formulas agree to far below the printed precision
    assert!((gc - want["ciou_reference"].as_f64().unwrap()).abs() < 1e-9);
    assert!((gg - want["giou_reference"].as_f64().unwrap()).abs() < 1e-4);
}

#[test]
fn all_splits_and_overlap_conventions_both_pickle_protocols() {
    let root = fixture("refcoco");
    let pred = fixture("refcoco/predictions.jsonl");
    let (root, pred) = (root.to_str().unwrap(), pred.to_str().unwrap());
    let exp = expected();
    // refcoco: protocol-2 pickle, refs(unc).p; refcocog: Python 2 protocol-0 pickle, refs(umd).p by default
    for dataset in ["refcoco", "refcocog"] {
        for split in ["val", "testA", "testB", "test", "train"] {
            for conv in ["union", "lisa", "sa2va"] {
                let got = run_json(&refcoco_args(root, dataset, split, conv, pred));
                check(
                    &got,
                    &exp[format!("{split}/{conv}")],
                    &format!("{dataset} {split} {conv}"),
                );
                assert_eq!(got["dataset"], dataset);
                assert_eq!(got["split_by"], if dataset == "refcocog" { "umd" } else { "unc" });
            }
        }
    }
}

#[test]
fn json_has_provenance_and_per_sample_file() {
    let dir = tempfile::tempdir().unwrap();
    let per = dir.path().join("per.jsonl");
    let root = fixture("refcoco");
    let pred = fixture("refcoco/predictions.jsonl");
    let mut args = refcoco_args(
        root.to_str().unwrap(),
        "refcoco",
        "val",
        "union",
        pred.to_str().unwrap(),
    );
    args.extend(["--per-sample", per.to_str().unwrap()]);
    let got = run_json(&args);
    let prov = &got["provenance"];
    assert_eq!(prov["perceptio_version"], env!("CARGO_PKG_VERSION"));
    let sha = prov["inputs"]["predictions"]["sha256"].as_str().unwrap();
    assert_eq!(sha.len(), 64);
    assert!(prov["inputs"]["refs"]["sha256"].is_string() && prov["inputs"]["instances"]["sha256"].is_string());
    let want = &expected()["val/union"]["per_sample"];
    let lines: Vec<Value> = std::fs::read_to_string(&per)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), want.as_array().unwrap().len());
    let mut by_id: Vec<(i64, u64, u64)> = lines
        .iter()
        .map(|l| {
            (
                l["sent_id"].as_i64().unwrap(),
                l["intersection"].as_u64().unwrap(),
                l["union"].as_u64().unwrap(),
            )
        })
        .collect();
    by_id.sort();
    let want: Vec<(i64, u64, u64)> = want
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["sent_id"].as_i64().unwrap(),
                l["intersection"].as_u64().unwrap(),
                l["union"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(by_id, want);
    // no temp files left behind by the atomic writer
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn annotations_jsonl_matches_refer_layout() {
    let pred = fixture("refcoco/predictions.jsonl");
    let gt = fixture("refcoco/gt_val.jsonl");
    // Without a dataset around it, a prediction for a sentence not in the JSONL is unknown.
    assert_fails(
        &[
            "eval",
            "refcoco",
            "--annotations",
            gt.to_str().unwrap(),
            "--predictions",
            pred.to_str().unwrap(),
        ],
        "does not exist in the dataset",
    );
    let gt_ids: Vec<i64> = std::fs::read_to_string(&gt)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["sent_id"].as_i64().unwrap())
        .collect();
    let kept: String = std::fs::read_to_string(&pred)
        .unwrap()
        .lines()
        .filter(|l| gt_ids.contains(&serde_json::from_str::<Value>(l).unwrap()["sent_id"].as_i64().unwrap()))
        .map(|l| format!("{l}\n"))
        .collect();
    let (_d, pred) = with_predictions(&kept);
    let got = run_json(&[
        "eval",
        "refcoco",
        "--annotations",
        gt.to_str().unwrap(),
        "--predictions",
        pred.to_str().unwrap(),
        "--json",
    ]);
    let want = &expected()["val/union"];
    for k in [
        "samples",
        "intersection",
        "union",
        "missing_predictions",
        "empty_predictions",
    ] {
        assert_eq!(got[k], want[k], "{k}");
    }
    assert_eq!(got["ciou"].as_f64().unwrap(), want["ciou"].as_f64().unwrap());
    // sentences outside the JSONL ground truth are unknown there
    assert_eq!(got["other_split_predictions"], 0);
}

#[test]
fn human_table_and_stdin() {
    let root = fixture("refcoco");
    let pred_bytes = std::fs::read(fixture("refcoco/predictions.jsonl")).unwrap();
    let o = run(
        &[
            "eval",
            "refcoco",
            "--refer-root",
            root.to_str().unwrap(),
            "--dataset",
            "refcoco",
            "--split",
            "val",
            "--predictions",
            "-",
        ],
        Some(&pred_bytes),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let want = &expected()["val/union"];
    let ciou = format!("{:.1}", want["ciou"].as_f64().unwrap() * 100.0);
    let giou = format!("{:.1}", want["giou"].as_f64().unwrap() * 100.0);
    assert!(out.contains(&format!("cIoU                 {ciou}")), "{out}");
    assert!(out.contains(&format!("gIoU                 {giou}")), "{out}");
}

fn with_predictions(lines: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("pred.jsonl");
    std::fs::write(&p, lines).unwrap();
    (dir, p)
}

fn fails_with(pred: &Path, needle: &str) {
    let root = fixture("refcoco");
    assert_fails(
        &[
            "eval",
            "refcoco",
            "--refer-root",
            root.to_str().unwrap(),
            "--dataset",
            "refcoco",
            "--split",
            "val",
            "--predictions",
            pred.to_str().unwrap(),
        ],
        needle,
    );
}

#[test]
fn bad_predictions_are_clear_errors() {
    let (_d, p) = with_predictions("{\"sent_id\": 1001, \"mask\": null}\n{\"sent_id\": 1002, \"mask\": \n");
    fails_with(&p, "pred.jsonl:2: malformed JSON line");
    let (_d, p) = with_predictions("{\"sent_id\": 99999, \"mask\": null}\n");
    fails_with(&p, "sent_id 99999 does not exist in the dataset");
    let (_d, p) = with_predictions("\n{\"sent_id\": 1001, \"mask\": {\"size\": [48, 64], \"counts\": [5, 6]}}\n");
    fails_with(
        &p,
        "pred.jsonl:2: RLE counts sum to 11 but the mask size 48x64 has 3072 pixels",
    );
    let (_d, p) = with_predictions("{\"sent_id\": 1001, \"mask\": {\"size\": [64, 48], \"counts\": [3072]}}\n");
    fails_with(&p, "mask size 64x48 differs from the image size 48x64");
    let (_d, p) = with_predictions("{\"sent_id\": 1001, \"mask\": null}\n{\"sent_id\": 1001, \"mask\": null}\n");
    fails_with(&p, "pred.jsonl:2: sent_id 1001 already predicted on line 1");
    let (_d, p) = with_predictions("{\"sent_id\": 1001, \"mask\": {\"size\": [48, 64], \"counts\": \"ab c\"}}\n");
    fails_with(&p, "invalid character");
    let (_d, p) = with_predictions("{\"sent_id\": \"x\", \"mask\": null}\n");
    fails_with(&p, "missing integer `sent_id`");
    fails_with(Path::new("/nonexistent/pred.jsonl"), "/nonexistent/pred.jsonl");
}

#[test]
fn bad_refer_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let ds = dir.path().join("refcoco");
    std::fs::create_dir(&ds).unwrap();
    let pickle = std::fs::read(fixture("refcoco/refcoco/refs(unc).p")).unwrap();
    std::fs::write(ds.join("refs(unc).p"), &pickle[..pickle.len() / 2]).unwrap();
    std::fs::copy(fixture("refcoco/refcoco/instances.json"), ds.join("instances.json")).unwrap();
    let pred = fixture("refcoco/predictions.jsonl");
    let args = |split: &'static str| -> Vec<String> {
        [
            "eval",
            "refcoco",
            "--refer-root",
            dir.path().to_str().unwrap(),
            "--dataset",
            "refcoco",
            "--split",
            split,
            "--predictions",
            pred.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let a = args("val");
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    assert_fails(&a, "not a readable refs pickle");
    std::fs::write(ds.join("refs(unc).p"), &pickle).unwrap();
    std::fs::write(ds.join("instances.json"), b"{\"images\": [").unwrap();
    assert_fails(&a, "not a COCO instances file");
    std::fs::remove_file(ds.join("instances.json")).unwrap();
    assert_fails(&a, "instances.json");
    // a split with no refs names the splits that exist
    std::fs::copy(fixture("refcoco/refcoco/instances.json"), ds.join("instances.json")).unwrap();
    let o = run(
        &[
            "eval",
            "refcoco",
            "--refer-root",
            dir.path().to_str().unwrap(),
            "--dataset",
            "refcoco",
            "--split-by",
            "google",
            "--split",
            "val",
            "--predictions",
            pred.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("refs(google).p"), "{}", stderr(&o));
}

/// `perceptio ... | head`: a reader that is gone ends the run quietly with success (as ripgrep
/// does), instead of "error: <stdout>: Broken pipe" and exit 1.
#[test]
fn closed_stdout_exits_zero_quietly() {
    let args = [
        "eval",
        "refcoco",
        "--refer-root",
        "fixtures/refcoco",
        "--dataset",
        "refcoco",
        "--split",
        "val",
        "--predictions",
        "fixtures/refcoco/predictions.jsonl",
        "--json",
    ];
    for args in [&args[..], &["download", "--list"][..]] {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_perceptio"))
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take()); // the reader leaves before the first byte
        let o = child.wait_with_output().unwrap();
        assert_eq!(
            o.status.code(),
            Some(0),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(o.stderr.is_empty(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    }
}

/// `--per-sample -` streams to stdout instead of creating a file named `-`.
#[test]
fn per_sample_dash_is_stdout() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cwd = tempfile::tempdir().unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_perceptio"))
        .args(["eval", "refcoco", "--refer-root"])
        .arg(root.join("fixtures/refcoco"))
        .args(["--dataset", "refcoco", "--split", "val", "--predictions"])
        .arg(root.join("fixtures/refcoco/predictions.jsonl"))
        .args(["--per-sample", "-"])
        .current_dir(cwd.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.lines().any(|l| l.starts_with('{') && l.contains("sent_id")),
        "{out}"
    );
    assert!(!cwd.path().join("-").exists());
}
