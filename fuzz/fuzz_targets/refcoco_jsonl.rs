//! Arbitrary prediction / ground-truth JSONL never panics the RefCOCO scorer.
#![no_main]
use libfuzzer_sys::fuzz_target;
use perceptio::eval::refcoco::{self, refer};
use std::io::Write;

fuzz_target!(|data: &[u8]| {
    // The same bytes serve as ground truth and as predictions.
    let mut f = tempfile::Builder::new().suffix(".jsonl").tempfile().unwrap();
    f.write_all(data).unwrap();
    if let Ok(gt) = refer::load_gt_jsonl(f.path()) {
        let _ = refcoco::score(&gt, f.path());
    }
});
