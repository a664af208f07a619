#![allow(dead_code)]
//! Helpers shared by the integration tests: run the real binary, locate fixtures.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(rel)
}

/// Run `perceptio` with `args`, optional stdin bytes.
pub fn run(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_perceptio"));
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = cmd.spawn().expect("spawn perceptio");
    if let Some(bytes) = stdin {
        child.stdin.take().unwrap().write_all(bytes).unwrap();
    }
    child.wait_with_output().unwrap()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Run expecting success and parse stdout as JSON.
pub fn run_json(args: &[&str]) -> serde_json::Value {
    let o = run(args, None);
    assert!(o.status.success(), "perceptio {args:?} failed: {}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", stdout(&o)))
}

/// Run expecting a clean failure: exit code 1, an `error:` line naming `needle`, no panic.
pub fn assert_fails(args: &[&str], needle: &str) {
    let o = run(args, None);
    let err = stderr(&o);
    assert_eq!(
        o.status.code(),
        Some(1),
        "perceptio {args:?}: expected exit 1, stderr: {err}"
    );
    assert!(err.starts_with("error: "), "no error line: {err}");
    assert!(err.contains(needle), "error should mention {needle:?}: {err}");
    assert!(!err.contains("panicked"), "panicked: {err}");
    assert!(!err.contains("\n   0: "), "a backtrace leaked into the message: {err}");
}

/// A crop of chelsea.png (its offset from `seed`) resized to (w, h), saved as PNG or JPEG by
/// the extension of `path`: the photos of the model-run fixtures.
pub fn photo(path: &Path, w: u32, h: u32, seed: u32) {
    let img = image::open(fixture("images/chelsea.png")).unwrap().to_rgb8();
    let (x, y) = (seed * 37 % 200, seed * 23 % 100);
    let crop = image::imageops::crop_imm(&img, x, y, 240, 180).to_image();
    let small = image::imageops::resize(&crop, w, h, image::imageops::FilterType::Triangle);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    small.save(path).unwrap();
}

/// The COCO images of the refcoco fixture (sizes from its instances.json) as [`photo`]s under
/// `root/coco`; returns that directory.
pub fn coco_images(root: &Path) -> PathBuf {
    let inst: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("refcoco/refcoco/instances.json")).unwrap()).unwrap();
    for (i, im) in inst["images"].as_array().unwrap().iter().enumerate() {
        let p = root.join("coco").join(im["file_name"].as_str().unwrap());
        photo(
            &p,
            im["width"].as_u64().unwrap() as u32,
            im["height"].as_u64().unwrap() as u32,
            i as u32,
        );
    }
    root.join("coco")
}

/// A golden tensor's values as f32.
pub fn f32s(t: &candle_core::Tensor) -> Vec<f32> {
    t.to_dtype(candle_core::DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// A golden tensor's values as i64.
pub fn i64s(t: &candle_core::Tensor) -> Vec<i64> {
    t.to_dtype(candle_core::DType::I64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// max |got − want| ≤ 1e-4 · max |want| (f32 on both sides); prints the measured error.
pub fn assert_close_rel(got: &candle_core::Tensor, want: &candle_core::Tensor, what: &str) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let (g, w) = (f32s(got), f32s(want));
    let scale = w.iter().fold(0f32, |m, x| m.max(x.abs()));
    let err = g.iter().zip(&w).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    eprintln!("{what}: max abs diff {err:.2e}, max |ref| {scale:.3}");
    assert!(
        err <= 1e-4 * scale,
        "{what}: max abs diff {err} against max |ref| {scale}"
    );
}
