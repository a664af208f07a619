//! What the `--batch` modes share: reading the JSONL requests, one result line per output in
//! input order, error lines that let the batch go on, `{id}` in output names, and a small cache
//! of encoded photos so one that comes back is not encoded again.

use crate::error::{Error, Result};
use crate::models::internvl::chat::Vision;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The request file's text (`-` = stdin).
pub fn read_lines(batch: &Path) -> Result<String> {
    if batch.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin().lock(), &mut s).map_err(|e| Error::io("<stdin>", e))?;
        return Ok(s);
    }
    String::from_utf8(crate::util::read_file(batch)?).map_err(|_| Error::input(batch, "not UTF-8"))
}

/// Run `f` on every non-blank line of `text` (k = 0-based request number) and print its result
/// lines; a line that is not a request prints `{"line": N, "error"}`, a request whose `f` fails
/// `{"id", "error"}`. Returns how many failed; only a closed stdout stops the batch.
pub fn for_each<R: DeserializeOwned>(
    batch: &Path,
    text: &str,
    what: &str,
    mut f: impl FnMut(usize, R) -> Result<Vec<Value>>,
) -> Result<usize> {
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| (i + 1, l))
        .collect();
    let pb = crate::run::progress(lines.len() as u64, what);
    let mut failed = 0;
    for (k, (n, line)) in lines.iter().enumerate() {
        let parsed = serde_json::from_str::<Value>(line).and_then(|v| {
            let id = v.get("id").cloned();
            serde_json::from_value::<R>(v).map(|r| (id, r))
        });
        let out = match parsed {
            Err(e) => Err(json!({"line": n, "error": format!("{}:{n}: not a request: {e}", batch.display())})),
            Ok((id, req)) => match f(k, req) {
                Ok(vs) => Ok(vs),
                Err(e) if e.is_broken_pipe() => return Err(e),
                Err(e) => Err(json!({"id": id, "error": e.to_string()})),
            },
        };
        match out {
            Ok(vs) => {
                for v in &vs {
                    super::print_json_line(v)?;
                }
            }
            Err(v) => {
                failed += 1;
                super::print_json_line(&v)?;
            }
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(failed)
}

/// `{id}` in an output path replaced by the request id: a string id as is, any other JSON
/// value as its JSON text; path separators and `..` become `_`, so an id cannot leave the
/// output directory.
pub fn with_id(path: &Path, id: &Value) -> PathBuf {
    let s = match id {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let s = s.replace(['/', '\\'], "_").replace("..", "_");
    PathBuf::from(path.to_string_lossy().replace("{id}", &s))
}

/// The last few photos with their InternViT features (SAM2 keeps its own cache by content),
/// keyed by path in `--batch` and by the bytes' sha256 in `serve`.
pub struct VisionCache<K = PathBuf> {
    entries: Vec<(K, Arc<(image::RgbImage, Vision)>)>,
}

impl<K> Default for VisionCache<K> {
    fn default() -> Self {
        Self { entries: Vec::new() }
    }
}

impl VisionCache<PathBuf> {
    /// The photo at `path` and its features, encoded by `encode` unless seen recently.
    pub fn get(
        &mut self,
        path: &Path,
        encode: impl FnOnce(&image::RgbImage) -> Result<Vision>,
    ) -> Result<Arc<(image::RgbImage, Vision)>> {
        self.get_or_load(
            path.to_path_buf(),
            || crate::preprocess::image_io::load_rgb(path),
            encode,
        )
    }
}

impl<K: PartialEq> VisionCache<K> {
    const CAPACITY: usize = 8;

    /// The photo under `key` and its features; on a miss the photo comes from `load` and is
    /// encoded by `encode`.
    pub fn get_or_load(
        &mut self,
        key: K,
        load: impl FnOnce() -> Result<image::RgbImage>,
        encode: impl FnOnce(&image::RgbImage) -> Result<Vision>,
    ) -> Result<Arc<(image::RgbImage, Vision)>> {
        if let Some((_, e)) = self.entries.iter().find(|(k, _)| *k == key) {
            return Ok(e.clone());
        }
        let img = load()?;
        let v = encode(&img)?;
        if self.entries.len() == Self::CAPACITY {
            self.entries.remove(0);
        }
        let e = Arc::new((img, v));
        self.entries.push((key, e.clone()));
        Ok(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_cannot_leave_the_output_directory() {
        assert_eq!(
            with_id(Path::new("out/{id}.png"), &json!("a/b")),
            PathBuf::from("out/a_b.png")
        );
        assert_eq!(
            with_id(Path::new("out/{id}.png"), &json!("../x")),
            PathBuf::from("out/__x.png")
        );
        assert_eq!(with_id(Path::new("{id}-m.png"), &json!(7)), PathBuf::from("7-m.png"));
        assert_eq!(with_id(Path::new("m.png"), &json!("z")), PathBuf::from("m.png"));
    }
}
