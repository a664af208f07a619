//! HardBLINK scoring on hand-made fixtures; every expected number below was derived by hand
//! from the documented parse rules (see fixtures/hardblink/).

mod common;
use common::*;
use perceptio::eval::hardblink::parse_answer;

fn args<'a>(ann: &'a str, pred: &'a str) -> Vec<&'a str> {
    vec![
        "eval",
        "hardblink",
        "--annotations",
        ann,
        "--predictions",
        pred,
        "--json",
    ]
}

#[test]
fn variants_mean_and_aurora_mean() {
    let ann = fixture("hardblink");
    let pred = fixture("hardblink/predictions");
    let blink2 = fixture("hardblink/blink2.jsonl");
    let mut a = args(ann.to_str().unwrap(), pred.to_str().unwrap());
    let got = run_json(&a);
    assert_eq!(got["variants"]["3"].as_f64().unwrap(), 2.0 / 6.0);
    assert_eq!(got["variants"]["4"].as_f64().unwrap(), 3.0 / 6.0);
    assert_eq!(got["variants"]["5"].as_f64().unwrap(), 4.0 / 6.0);
    assert!((got["mean"].as_f64().unwrap() - 0.5).abs() < 1e-15);
    assert_eq!(got["unparsable"], 5);
    assert!(got.get("aurora_mean").is_none());
    let d = &got["details"];
    assert_eq!(
        (d[0]["missing"].as_u64(), d[0]["unparsable"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(d[1]["out_of_range"], 1);
    assert_eq!(
        got["provenance"]["inputs"]["predictions_3"]["sha256"]
            .as_str()
            .unwrap()
            .len(),
        64
    );
    a.extend(["--blink2", blink2.to_str().unwrap()]);
    let got = run_json(&a);
    assert_eq!(got["blink2"]["accuracy"].as_f64().unwrap(), 0.75);
    assert!((got["aurora_mean"].as_f64().unwrap() - 0.5625).abs() < 1e-15);
}

#[test]
fn human_table() {
    let ann = fixture("hardblink");
    let pred = fixture("hardblink/predictions");
    let o = run(
        &[
            "eval",
            "hardblink",
            "--annotations",
            ann.to_str().unwrap(),
            "--predictions",
            pred.to_str().unwrap(),
        ],
        None,
    );
    assert!(o.status.success());
    let out = stdout(&o);
    assert!(out.contains("3-point   33.3"), "{out}");
    assert!(out.contains("mean      50.0"), "{out}");
}

#[test]
fn parse_rules() {
    // (1) the last "(X)" wins over everything
    assert_eq!(parse_answer("Point A is closest. (C)", 3), Some('C'));
    assert_eq!(parse_answer("(A) or rather (B)", 3), Some('B'));
    // (2) phrases, case-insensitive, the last one
    assert_eq!(parse_answer("the answer is that point a is closer", 3), Some('A'));
    assert_eq!(
        parse_answer("Point B is the closest; the answer is point C", 3),
        Some('C')
    );
    assert_eq!(parse_answer("point d is closer", 5), Some('D'));
    // (3) exactly one standalone valid uppercase letter
    assert_eq!(parse_answer("B", 3), Some('B'));
    assert_eq!(parse_answer("[C].", 3), Some('C'));
    assert_eq!(parse_answer("A or B", 3), None);
    assert_eq!(parse_answer("D", 3), None); // not a valid letter for 3 points
    assert_eq!(parse_answer("b", 3), None);
    assert_eq!(parse_answer("I cannot tell", 3), None); // "I" is not a valid letter for 3 points
    assert_eq!(parse_answer("", 3), None);
    // letters outside the range are returned by (1)/(2) and scored wrong by the caller
    assert_eq!(parse_answer("(E)", 3), Some('E'));
}

#[test]
fn bad_inputs_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let preds = dir.path().join("preds");
    std::fs::create_dir(&preds).unwrap();
    for n in [3, 4, 5] {
        std::fs::copy(
            fixture(&format!(
                "hardblink/predictions/blink_{n}pointscenter_answers_llava-aurora.jsonl"
            )),
            preds.join(format!("blink_{n}pointscenter_answers.jsonl")),
        )
        .unwrap();
    }
    let ann = fixture("hardblink");
    let (ann, p) = (ann.to_str().unwrap(), preds.to_str().unwrap());
    assert!(run(&args(ann, p), None).status.success());
    // a malformed line names the file and line
    std::fs::write(
        preds.join("blink_4pointscenter_answers.jsonl"),
        "{\"question_id\": 0, \"text\": \"(A)\"}\n{oops\n",
    )
    .unwrap();
    assert_fails(
        &args(ann, p),
        "blink_4pointscenter_answers.jsonl:2: malformed JSON line",
    );
    // an id that is not in the benchmark
    std::fs::write(
        preds.join("blink_4pointscenter_answers.jsonl"),
        "{\"question_id\": 999, \"text\": \"(A)\"}\n",
    )
    .unwrap();
    assert_fails(&args(ann, p), "question_id 999 is not in");
    // two files for one variant
    std::fs::write(preds.join("blink_4pointscenter_other.jsonl"), "").unwrap();
    assert_fails(&args(ann, p), "several predictions files for the 4-point variant");
    std::fs::remove_file(preds.join("blink_4pointscenter_other.jsonl")).unwrap();
    std::fs::remove_file(preds.join("blink_4pointscenter_answers.jsonl")).unwrap();
    assert_fails(&args(ann, p), "no predictions file blink_4pointscenter*.jsonl");
    // annotations directory without the AURORA layout
    assert_fails(&args(dir.path().to_str().unwrap(), p), "missing HardBLINK answers file");
}
