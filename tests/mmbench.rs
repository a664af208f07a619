//! MMBench CircularEval against VLMEvalKit's and lmms-eval's own code (goldens from
//! tools/gen_mmbench_goldens.py), for every prediction format, matcher and missing policy.

mod common;
use common::*;
use perceptio::eval::mmbench::matching::{can_infer, Choices, Matcher};
use serde_json::Value;

fn expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("mmbench/expected.json")).unwrap()).unwrap()
}

fn tsv() -> String {
    fixture("mmbench/MMBench_DEV_EN_mini.tsv").to_str().unwrap().to_string()
}

#[test]
fn circular_eval_matches_reference_for_every_format() {
    let exp = expected();
    for format in ["jsonl", "tsv", "xlsx"] {
        let pred = fixture(&format!("mmbench/predictions.{format}"));
        for matcher in ["vlmevalkit", "legacy"] {
            for missing in ["vlmevalkit", "strict"] {
                let got = run_json(&[
                    "eval",
                    "mmbench",
                    "--annotations",
                    &tsv(),
                    "--predictions",
                    pred.to_str().unwrap(),
                    "--matcher",
                    matcher,
                    "--missing",
                    missing,
                    "--json",
                ]);
                let want = &exp[format!("{matcher}/{missing}")];
                let what = format!("{format} {matcher} {missing}");
                assert_eq!(got["questions"], want["questions"], "{what}");
                assert_eq!(got["overall"].as_f64(), want["overall"].as_f64(), "{what}");
                assert_eq!(got["l2_categories"], want["l2_categories"], "{what}");
                assert_eq!(got["categories"], want["categories"], "{what}");
                assert_eq!(got["matcher"], matcher);
                assert!(got["judge"].as_str().unwrap().contains("exact matching"));
            }
        }
    }
}

#[test]
fn per_question_hits_and_acc_csv_match_vlmevalkit() {
    let exp = expected();
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("acc.csv");
    let per = dir.path().join("per.jsonl");
    for (matcher, key) in [("vlmevalkit", "hits_vlmevalkit"), ("legacy", "hits_legacy")] {
        let pred = fixture("mmbench/predictions.xlsx");
        let o = run(
            &[
                "eval",
                "mmbench",
                "--annotations",
                &tsv(),
                "--predictions",
                pred.to_str().unwrap(),
                "--matcher",
                matcher,
                "--missing",
                "vlmevalkit",
                "--csv",
                csv.to_str().unwrap(),
                "--per-question",
                per.to_str().unwrap(),
            ],
            None,
        );
        assert!(o.status.success(), "{}", stderr(&o));
        let hits: Vec<(String, u64)> = std::fs::read_to_string(&per)
            .unwrap()
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                (v["index"].to_string(), v["hit"].as_u64().unwrap())
            })
            .collect();
        let want = exp[key].as_object().unwrap();
        assert_eq!(hits.len(), want.len());
        for (i, h) in hits {
            assert_eq!(Some(h), want[&i].as_u64(), "{matcher} question {i}");
        }
        if matcher == "vlmevalkit" {
            let want_csv = std::fs::read_to_string(fixture("mmbench/expected_acc.csv")).unwrap();
            assert_eq!(std::fs::read_to_string(&csv).unwrap().replace("\r\n", "\n"), want_csv);
        }
        // human table: percent with one decimal
        assert!(
            stdout(&o).contains(&format!(
                "Overall    {:.1}",
                exp[format!("{matcher}/vlmevalkit")]["overall"].as_f64().unwrap() * 100.0
            )),
            "{}",
            stdout(&o)
        );
    }
}

#[test]
fn can_infer_matches_both_references() {
    let exp = expected();
    let choices: Choices = exp["can_infer_choices"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.chars().next().unwrap(), v.as_str().unwrap().to_string()))
        .collect();
    let probes = exp["can_infer"].as_array().unwrap();
    assert!(probes.len() > 20);
    for p in probes {
        let ans = p["answer"].as_str().unwrap();
        for (m, key) in [(Matcher::Vlmevalkit, "vlmevalkit"), (Matcher::Legacy, "legacy")] {
            let want = p[key].as_str().map(|s| s.chars().next().unwrap());
            assert_eq!(can_infer(m, ans, &choices), want, "{key} on {ans:?}");
        }
    }
}

#[test]
fn hand_derived_edge_cases() {
    // Derived by reading the rules, not from the code under test.
    let ch: Choices = [('A', "cat"), ('B', "dog"), ('C', "bird"), ('D', "fish")]
        .into_iter()
        .map(|(k, v)| (k, v.to_string()))
        .collect();
    let v = |s| can_infer(Matcher::Vlmevalkit, s, &ch);
    assert_eq!(v("The answer is C"), Some('C')); // regex on verbose answers
    assert_eq!(v("Sorry, I can't help with images of people yet."), Some('Z')); // refusal
    assert_eq!(v("fish"), Some('D')); // option text only
    assert_eq!(v("A B"), None); // two letters, no text
    assert_eq!(v("B, I am sure of it now"), None); // letter not among the last 4 tokens, no option text
    assert_eq!(v("I am sure: it is B"), Some('B'));
    let l = |s| can_infer(Matcher::Legacy, s, &ch);
    assert_eq!(l("E"), Some('E')); // legacy reads A-E whatever the options
    assert_eq!(l("A cat is on the mat"), Some('A')); // quantifier guard breaks the letter loop, then option text "cat"
}

#[test]
fn missing_strict_counts_main_rows_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.jsonl");
    // Only question 1's main row, answered right: strict divides by all 12 main questions.
    std::fs::write(&p, "{\"index\": 1, \"prediction\": \"A\"}\n").unwrap();
    let got = run_json(&[
        "eval",
        "mmbench",
        "--annotations",
        &tsv(),
        "--predictions",
        p.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(got["questions"], 12);
    assert_eq!(got["overall"].as_f64().unwrap(), 1.0 / 12.0);
    assert_eq!(got["missing_main_predictions"], 11);
    let got = run_json(&[
        "eval",
        "mmbench",
        "--annotations",
        &tsv(),
        "--predictions",
        p.to_str().unwrap(),
        "--missing",
        "vlmevalkit",
        "--json",
    ]);
    assert_eq!(got["questions"], 1);
    assert_eq!(got["overall"].as_f64().unwrap(), 1.0);
}

#[test]
fn bad_inputs_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.jsonl");
    std::fs::write(&p, "{\"index\": 1, \"prediction\": \"A\"}\n{\"index\": 2,\n").unwrap();
    assert_fails(
        &[
            "eval",
            "mmbench",
            "--annotations",
            &tsv(),
            "--predictions",
            p.to_str().unwrap(),
        ],
        "p.jsonl:2: malformed JSON line",
    );
    std::fs::write(&p, "{\"index\": 77, \"prediction\": \"A\"}\n").unwrap();
    assert_fails(
        &[
            "eval",
            "mmbench",
            "--annotations",
            &tsv(),
            "--predictions",
            p.to_str().unwrap(),
        ],
        "indices not in the annotations: 77",
    );
    std::fs::write(
        &p,
        "{\"index\": 1, \"prediction\": \"A\"}\n{\"index\": 1, \"prediction\": \"B\"}\n",
    )
    .unwrap();
    assert_fails(
        &[
            "eval",
            "mmbench",
            "--annotations",
            &tsv(),
            "--predictions",
            p.to_str().unwrap(),
        ],
        "p.jsonl:2: index 1 already predicted on line 1",
    );
    // a TSV without the answer column (as MMBench TEST files are)
    let t = dir.path().join("test.tsv");
    let src = std::fs::read_to_string(tsv()).unwrap();
    let no_answer: String = src
        .lines()
        .map(|l| {
            let mut f: Vec<&str> = l.split('\t').collect();
            f.remove(7);
            f.join("\t") + "\n"
        })
        .collect();
    std::fs::write(&t, no_answer).unwrap();
    std::fs::write(&p, "{\"index\": 1, \"prediction\": \"A\"}\n").unwrap();
    assert_fails(
        &[
            "eval",
            "mmbench",
            "--annotations",
            t.to_str().unwrap(),
            "--predictions",
            p.to_str().unwrap(),
        ],
        "missing column `answer`",
    );
    // a record with more fields than the header, and a non-integer index
    std::fs::write(&t, "index\tA\tB\tanswer\n1\tx\ty\tA\textra\n").unwrap();
    assert_fails(
        &[
            "eval",
            "mmbench",
            "--annotations",
            t.to_str().unwrap(),
            "--predictions",
            p.to_str().unwrap(),
        ],
        "test.tsv:2: 5 fields, the header has 4",
    );
    std::fs::write(&t, "index\tA\tB\tanswer\none\tx\ty\tA\n").unwrap();
    assert_fails(
        &[
            "eval",
            "mmbench",
            "--annotations",
            t.to_str().unwrap(),
            "--predictions",
            p.to_str().unwrap(),
        ],
        "test.tsv:2: `index` \"one\" is not an integer",
    );
    // a prediction spreadsheet that is not one
    let x = dir.path().join("bad.xlsx");
    std::fs::write(&x, b"PK\x03\x04 truncated").unwrap();
    assert_fails(
        &[
            "eval",
            "mmbench",
            "--annotations",
            &tsv(),
            "--predictions",
            x.to_str().unwrap(),
        ],
        "cannot open the spreadsheet",
    );
}

#[test]
fn g_index_column_groups_rotations() {
    // VLMEvalKit's `circular` tool writes a g_index column and may use a larger offset; group by it.
    let dir = tempfile::tempdir().unwrap();
    let shift = |i: i64| {
        if i >= 1_000_000 {
            (i / 1_000_000) * 10_000_000 + i % 1_000_000
        } else {
            i
        }
    };
    let src = std::fs::read_to_string(tsv()).unwrap();
    let mut out = String::new();
    for (n, line) in src.lines().enumerate() {
        let mut f: Vec<String> = line.split('\t').map(str::to_string).collect();
        if n == 0 {
            f.push("g_index".into());
        } else {
            let i: i64 = f[0].parse().unwrap();
            f[0] = shift(i).to_string();
            f.push((i % 1_000_000).to_string());
        }
        out.push_str(&f.join("\t"));
        out.push('\n');
    }
    let t = dir.path().join("circ.tsv");
    std::fs::write(&t, out).unwrap();
    let preds: String = std::fs::read_to_string(fixture("mmbench/predictions.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap();
            v["index"] = shift(v["index"].as_i64().unwrap()).into();
            format!("{v}\n")
        })
        .collect();
    let p = dir.path().join("p.jsonl");
    std::fs::write(&p, preds).unwrap();
    let got = run_json(&[
        "eval",
        "mmbench",
        "--annotations",
        t.to_str().unwrap(),
        "--predictions",
        p.to_str().unwrap(),
        "--missing",
        "vlmevalkit",
        "--json",
    ]);
    let want = &expected()["vlmevalkit/vlmevalkit"];
    assert_eq!(got["overall"].as_f64(), want["overall"].as_f64());
    assert_eq!(got["questions"], want["questions"]);
}
