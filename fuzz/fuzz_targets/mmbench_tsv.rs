//! The MMBench TSV reader and the scorer never panic on arbitrary bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use perceptio::eval::mmbench::{self, matching::Matcher, MissingPolicy};
use std::io::Write;

fuzz_target!(|data: &[u8]| {
    let mut f = tempfile::Builder::new().suffix(".tsv").tempfile().unwrap();
    f.write_all(data).unwrap();
    let Ok(ann) = mmbench::read_annotations(f.path()) else { return };
    // predict the first option for every row
    let preds = ann.rows.keys().map(|&i| (i, "A".to_string())).collect();
    for m in [Matcher::Vlmevalkit, Matcher::Legacy] {
        if let Ok(r) = mmbench::evaluate(&ann, &preds, m, MissingPolicy::Strict, f.path()) {
            let _ = mmbench::acc_csv(&r);
        }
    }
});
