//! `eval ... --model`: predictions produced with a tiny random Sa2VA-layout checkpoint on small
//! fixture datasets (images made here from a real photo), resumed after a kill, sharded and merged,
//! then scored; the prompts sent to the model are checked against the reference scripts' strings.

mod common;
#[path = "common/sa2va.rs"]
mod sa2va;
use common::{coco_images, fixture, photo, run, stderr, stdout};
use std::path::{Path, PathBuf};

struct Env {
    _tmp: tempfile::TempDir,
    model: PathBuf,
    root: PathBuf,
}

impl Env {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let model = tmp.path().join("model");
        std::fs::create_dir(&model).unwrap();
        sa2va::assemble(&model);
        Env {
            root: tmp.path().to_path_buf(),
            model,
            _tmp: tmp,
        }
    }
    fn p(&self, rel: &str) -> String {
        self.root.join(rel).to_str().unwrap().to_string()
    }
    fn model(&self) -> String {
        self.model.to_str().unwrap().to_string()
    }
}

fn refcoco_args<'a>(env: &'a Env, images: &'a str, pred: &'a str, extra: &[&'a str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "eval",
        "refcoco",
        "--refer-root",
        fixture("refcoco").to_str().unwrap(),
        "--dataset",
        "refcoco",
        "--split",
        "val",
        "--model",
        &env.model(),
        "--images",
        images,
        "--predictions",
        pred,
        "--force-seg",
        "--max-tiles",
        "2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn run_s(args: &[String]) -> std::process::Output {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    run(&a, None)
}

/// The command exits with `code` and says `needle` on stderr.
fn assert_fails_with(args: &[String], code: i32, needle: &str) {
    let o = run_s(args);
    assert_eq!(o.status.code(), Some(code), "{}", stderr(&o));
    assert!(stderr(&o).contains(needle), "{}", stderr(&o));
}

fn sorted_lines(p: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_to_string(p).unwrap().lines().map(String::from).collect();
    v.sort();
    v
}

#[test]
fn refcoco_with_model_resumes_after_a_kill_and_shards_merge_to_the_same_file() {
    let env = Env::new();
    let images = coco_images(&env.root).to_str().unwrap().to_string();
    // Uninterrupted run, scored, with per-sample logs.
    let full = env.p("full.jsonl");
    let log = env.p("log.jsonl");
    let o = run_s(&refcoco_args(&env, &images, &full, &["--json", "--log-samples", &log]));
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let n = report["samples"].as_u64().unwrap() as usize;
    assert!(n >= 4, "{report}");
    assert_eq!(report["missing_predictions"], 0);
    assert_eq!(sorted_lines(&full).len(), n);
    assert!(Path::new(&format!("{full}.done.json")).is_file());
    // The prompt is Sa2VA's RES prompt with the refs' `sent`.
    let logs: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let l1001 = logs.iter().find(|l| l["sent_id"] == 1001).unwrap();
    assert_eq!(l1001["prompt"], "<image>\n Please segment the left box in this image.");
    assert_eq!(l1001["output"], "Sure, [SEG].");
    assert!(l1001["iou"].as_f64().unwrap() >= 0.0 && l1001["union"].as_u64().unwrap() > 0);
    // --batch-size 3 (batches of 3, 3 and a partial 1): the same lines in the same order, the
    // same forced tokens, masks of IoU >= 0.999 with the one-at-a-time run's.
    let b3 = env.p("b3.jsonl");
    let b3_log = env.p("b3_log.jsonl");
    let o = run_s(&refcoco_args(
        &env,
        &images,
        &b3,
        &["--batch-size", "3", "--log-samples", &b3_log],
    ));
    assert!(o.status.success(), "{}", stderr(&o));
    let lines = |p: &str| -> Vec<serde_json::Value> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let (one, three) = (lines(&full), lines(&b3));
    assert_eq!(one.len(), three.len());
    let rle = |m: &serde_json::Value| {
        let (h, w) = (
            m["size"][0].as_u64().unwrap() as u32,
            m["size"][1].as_u64().unwrap() as u32,
        );
        perceptio::mask::Rle::from_compressed(m["counts"].as_str().unwrap(), h, w).unwrap()
    };
    for (a, b) in one.iter().zip(&three) {
        assert_eq!(a["sent_id"], b["sent_id"], "same order");
        let (ra, rb) = (rle(&a["mask"]), rle(&b["mask"]));
        let (i, u) = ra.intersection_union(&rb).unwrap();
        assert!(
            u > 0 && i as f64 / u as f64 >= 0.999,
            "sent_id {}: IoU {i}/{u}",
            a["sent_id"]
        );
    }
    for (a, b) in logs.iter().zip(&lines(&b3_log)) {
        assert_eq!(
            (&a["sent_id"], &a["token_ids"], &a["output"]),
            (&b["sent_id"], &b["token_ids"], &b["output"])
        );
        assert!(!a["token_ids"].as_array().unwrap().is_empty());
    }
    assert_fails_with(
        &refcoco_args(&env, &images, &env.p("b0.jsonl"), &["--batch-size", "0"]),
        2,
        "--batch-size",
    );
    assert_fails_with(
        &refcoco_args(
            &env,
            &images,
            &env.p("b2.jsonl"),
            &["--batch-size", "2", "--no-feature-reuse"],
        ),
        2,
        "--no-feature-reuse",
    );

    // Re-running predicts nothing new and leaves the file as it was.
    let before = std::fs::read(&full).unwrap();
    let o = run_s(&refcoco_args(&env, &images, &full, &[]));
    assert!(
        o.status.success() && stderr(&o).contains(&format!("0 of {n} samples predicted now, {n} resumed")),
        "{}",
        stderr(&o)
    );
    assert_eq!(std::fs::read(&full).unwrap(), before);

    // Kill a run once it has written its first line, tear its last line, resume.
    let part = env.p("part.jsonl");
    let args = refcoco_args(&env, &images, &part, &[]);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_perceptio"))
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    while std::fs::read_to_string(&part).map(|s| s.lines().count()).unwrap_or(0) < 1 && t.elapsed().as_secs() < 120 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let written = std::fs::read_to_string(&part).unwrap();
    assert!(written.lines().count() < n, "killed too late to test resuming");
    std::fs::write(&part, format!("{written}{{\"sent_id\": 99")).unwrap(); // a torn line
    let o = run_s(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("incomplete last line"), "{}", stderr(&o));
    assert_eq!(
        sorted_lines(&part),
        sorted_lines(&full),
        "resumed run equals the uninterrupted one"
    );

    // Two shards, merged, equal the unsharded run; gaps and duplicates are refused.
    let (s1, s2) = (env.p("s1.jsonl"), env.p("s2.jsonl"));
    for (k, f) in [("1/2", &s1), ("2/2", &s2)] {
        let o = run_s(&refcoco_args(&env, &images, f, &["--shard", k]));
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(stdout(&o).contains(&format!("shard {k} complete")), "{}", stdout(&o));
    }
    assert!(!sorted_lines(&s1).is_empty() && !sorted_lines(&s2).is_empty());
    let merged = env.p("merged.jsonl");
    let o = run(&["eval", "merge", "--out", &merged, &s1, &s2], None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(sorted_lines(&merged), sorted_lines(&full));
    let o = run(&["eval", "merge", "--out", &env.p("m2.jsonl"), &s1], None);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("2/2 missing"), "{}", stderr(&o));
    let o = run(&["eval", "merge", "--out", &env.p("m3.jsonl"), &s1, &s1, &s2], None);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("shard 1/2 is also"), "{}", stderr(&o));
    let o = run(&["eval", "merge", "--out", &env.p("m4.jsonl"), &s1, &part], None);
    assert!(!o.status.success(), "an unsharded file is not shard 2/2");
    // The merged file scores like the unsharded one.
    let score = |p: &str| {
        let o = run(
            &[
                "eval",
                "refcoco",
                "--refer-root",
                fixture("refcoco").to_str().unwrap(),
                "--dataset",
                "refcoco",
                "--split",
                "val",
                "--predictions",
                p,
                "--json",
            ],
            None,
        );
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        (v["ciou"].as_f64().unwrap(), v["giou"].as_f64().unwrap())
    };
    assert_eq!(score(&merged), score(&full));
}

#[test]
fn hardblink_and_mmbench_with_model() {
    let env = Env::new();
    // HardBLINK: the fixture's questions/answers plus images made here.
    let hb = env.root.join("hardblink");
    for sub in ["questions", "answers"] {
        std::fs::create_dir_all(hb.join(sub)).unwrap();
        for e in std::fs::read_dir(fixture(&format!("hardblink/{sub}"))).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), hb.join(sub).join(e.file_name())).unwrap();
        }
    }
    for n in [3, 4, 5] {
        for k in 0..6 {
            photo(&hb.join(format!("images/blink{n}pointscenter/{k}.png")), 48, 48, k + n);
        }
    }
    let preds = env.p("hb_preds");
    let log = env.p("hb_log.jsonl");
    let o = run(
        &[
            "eval",
            "hardblink",
            "--annotations",
            hb.to_str().unwrap(),
            "--model",
            &env.model(),
            "--predictions",
            &preds,
            "--max-tiles",
            "1",
            "--max-new-tokens",
            "8",
            "--log-samples",
            &log,
            "--json",
        ],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["details"].as_array().unwrap().len(), 3);
    assert_eq!(v["details"][0]["missing"], 0);
    let first: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&log).unwrap().lines().next().unwrap()).unwrap();
    assert_eq!(first["prompt"], "<image>\nMultiple points are circled on the image, labeled by letters beside each circle. Which point is the closest to the camera?");
    let ans: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(format!("{preds}/blink_3pointscenter_answers.jsonl"))
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    for k in ["question_id", "prompt", "text", "answer_id", "model_id", "metadata"] {
        assert!(ans.get(k).is_some(), "LLaVA answers field {k}: {ans}");
    }

    // MMBench: the fixture TSV with a real image in place of its 64-character placeholder (which
    // VLMEvalKit would read as a row reference: `len(image) <= 64`).
    use base64::Engine;
    let png = env.root.join("mm.png");
    photo(&png, 40, 30, 1);
    let b64 = base64::engine::general_purpose::STANDARD.encode(std::fs::read(&png).unwrap());
    let tsv = std::fs::read_to_string(fixture("mmbench/MMBench_DEV_EN_mini.tsv")).unwrap();
    let mut out = String::new();
    for (i, line) in tsv.lines().enumerate() {
        let mut f: Vec<String> = line.split('\t').map(String::from).collect();
        if i > 0 && f[9].len() >= 64 {
            f[9] = b64.clone();
        }
        out.push_str(&f.join("\t"));
        out.push('\n');
    }
    let tsv_path = env.p("mm.tsv");
    std::fs::write(&tsv_path, out).unwrap();
    let preds = env.p("mm_preds.jsonl");
    let log = env.p("mm_log.jsonl");
    let o = run(
        &[
            "eval",
            "mmbench",
            "--annotations",
            &tsv_path,
            "--model",
            &env.model(),
            "--predictions",
            &preds,
            "--max-tiles",
            "1",
            "--max-new-tokens",
            "6",
            "--log-samples",
            &log,
            "--json",
        ],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["missing_main_predictions"], 0, "{v}");
    let rows = tsv.lines().count() - 1;
    assert_eq!(std::fs::read_to_string(&preds).unwrap().lines().count(), rows);
    let logs: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let l1 = logs.iter().find(|l| l["index"] == 1).unwrap();
    assert_eq!(l1["prompt"], "<image>\nWhat animal is shown?\nA. cat\nB. dog\nC. horse\nD. cow\nAnswer with the option's letter from the given choices directly.");
    let l2 = logs.iter().find(|l| l["index"] == 2).unwrap();
    assert!(
        l2["prompt"]
            .as_str()
            .unwrap()
            .starts_with("<image>\nLook at the table.\nWhat colour is the cup?\nA. red"),
        "{}",
        l2["prompt"]
    );
    // --batch-size is refcoco's alone; here it is refused before the model loads.
    let o = run(
        &[
            "eval",
            "mmbench",
            "--annotations",
            &tsv_path,
            "--model",
            &env.model(),
            "--predictions",
            &env.p("mm_b2.jsonl"),
            "--batch-size",
            "2",
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--batch-size is supported by `eval refcoco --model` only"),
        "{}",
        stderr(&o)
    );
    // Bad input: --model without a writable file, shard syntax.
    let o = run(
        &[
            "eval",
            "mmbench",
            "--annotations",
            &tsv_path,
            "--model",
            &env.model(),
            "--predictions",
            "-",
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(2));
    let o = run(
        &[
            "eval",
            "mmbench",
            "--annotations",
            &tsv_path,
            "--model",
            &env.model(),
            "--predictions",
            &preds,
            "--shard",
            "3/2",
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("K/N"));
}
