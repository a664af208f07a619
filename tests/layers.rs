//! The layer rules of docs/architecture.md, checked on the source: each module may only use the
//! modules below it, and the scorers and core types use no candle.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Every (file, line) under `src/<module>` that names one of `banned`.
fn violations(module: &str, banned: &[&str]) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    let dir = root.join(module);
    if dir.is_dir() {
        rust_files(&dir, &mut files);
    } else {
        files.push(root.join(format!("{module}.rs")));
    }
    let mut bad = Vec::new();
    for f in files {
        for (i, line) in std::fs::read_to_string(&f).unwrap().lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if let Some(b) = banned.iter().find(|b| code.contains(*b)) {
                bad.push(format!(
                    "{}:{}: uses {b}",
                    f.strip_prefix(&root).unwrap().display(),
                    i + 1
                ));
            }
        }
    }
    bad
}

#[test]
fn layers_only_point_down() {
    let above_models = ["crate::hub", "crate::render", "crate::eval", "crate::run", "crate::cli"];
    let above_core = [
        "crate::models",
        "crate::hub",
        "crate::render",
        "crate::eval",
        "crate::run",
        "crate::cli",
        "crate::preprocess",
    ];
    let mut bad = Vec::new();
    bad.extend(violations("models", &above_models));
    bad.extend(violations(
        "preprocess",
        &above_models[..]
            .iter()
            .chain(&["crate::models"])
            .copied()
            .collect::<Vec<_>>(),
    ));
    bad.extend(violations(
        "render",
        &above_models[..]
            .iter()
            .chain(&["crate::models", "crate::preprocess"])
            .copied()
            .collect::<Vec<_>>(),
    ));
    bad.extend(violations(
        "hub",
        &above_models[..]
            .iter()
            .chain(&["crate::models", "crate::preprocess"])
            .copied()
            .collect::<Vec<_>>(),
    ));
    bad.extend(violations(
        "eval",
        &[
            "crate::models",
            "crate::run",
            "crate::cli",
            "crate::hub",
            "crate::render",
            "candle",
        ],
    ));
    bad.extend(violations("run", &["crate::cli"]));
    // Reports read what the scorers and renderers give; they never run a model.
    bad.extend(violations(
        "report",
        &["crate::models", "crate::hub", "crate::run", "crate::cli", "candle"],
    ));
    for core in ["mask", "depthmap", "util", "error"] {
        bad.extend(violations(core, &above_core));
    }
    bad.extend(violations("mask", &["candle"]));
    bad.extend(violations("depthmap", &["candle"]));
    assert!(bad.is_empty(), "imports that point up a layer:\n{}", bad.join("\n"));
}
