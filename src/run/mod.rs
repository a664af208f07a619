//! Producing benchmark predictions with the model (`eval ... --model`): a resumable JSONL
//! predictions file (each line flushed and self-contained; a torn last line is dropped and redone),
//! deterministic sharding by image, a completion manifest next to each file, and `eval merge`.
//! The per-benchmark loops are in [`benchmarks`].

pub mod benchmarks;

use crate::error::{Error, Result};
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

/// `--shard K/N` (1-based): this process handles image groups g with g mod N == K−1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Shard {
    pub k: usize,
    pub n: usize,
}

impl Shard {
    pub const ALL: Shard = Shard { k: 1, n: 1 };

    pub fn parse(s: &str) -> Result<Self> {
        let bad = || Error::Usage(format!("--shard {s:?}: expected K/N with 1 <= K <= N (e.g. 2/8)"));
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let (k, n): (usize, usize) = (
            k.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if n == 0 || k == 0 || k > n {
            return Err(bad());
        }
        Ok(Shard { k, n })
    }

    /// Whether image group `g` (0-based, in the dataset's canonical order) belongs to this shard.
    pub fn owns(&self, g: usize) -> bool {
        g % self.n == self.k - 1
    }
}

/// An append-only JSONL file keyed by an integer field, resumable after an interruption.
pub struct PredictionFile {
    pub path: PathBuf,
    key: &'static str,
    file: std::fs::File,
    /// Keys already present.
    pub done: HashSet<i64>,
    /// Whether an incomplete last line was dropped on open.
    pub repaired: bool,
}

fn key_of(v: &Value, key: &str) -> Option<i64> {
    match v.get(key)? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

impl PredictionFile {
    /// Open (creating if needed) and index the lines already written. Every complete line must be
    /// a JSON object with an integer `key` seen once; bytes after the last newline (a line torn by
    /// a kill) are cut off so the sample is redone.
    pub fn open(path: &Path, key: &'static str) -> Result<Self> {
        if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
        }
        let mut done = HashSet::new();
        let mut repaired = false;
        if path.exists() {
            let bytes = crate::util::read_file(path)?;
            let end = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            for (i, line) in bytes[..end].split(|&b| b == b'\n').enumerate() {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let v: Value = serde_json::from_slice(line).map_err(|e| {
                    Error::at_line(
                        path,
                        i + 1,
                        format!("not JSON ({e}); not a predictions file perceptio can resume"),
                    )
                })?;
                let k = key_of(&v, key).ok_or_else(|| Error::at_line(path, i + 1, format!("no integer `{key}`")))?;
                if !done.insert(k) {
                    return Err(Error::at_line(path, i + 1, format!("`{key}` {k} appears twice")));
                }
            }
            if end < bytes.len() {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(|e| Error::io(path, e))?;
                f.set_len(end as u64).map_err(|e| Error::io(path, e))?;
                f.sync_all().map_err(|e| Error::io(path, e))?;
                repaired = true;
            }
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            key,
            file,
            done,
            repaired,
        })
    }

    /// Append one line (written with a single `write_all`, then flushed to the OS).
    pub fn append(&mut self, v: &Value) -> Result<()> {
        let k = key_of(v, self.key).expect("prediction lines carry their key");
        let mut s = serde_json::to_string(v).map_err(|e| Error::io(&self.path, e.into()))?;
        s.push('\n');
        self.file
            .write_all(s.as_bytes())
            .map_err(|e| Error::io(&self.path, e))?;
        self.file.flush().map_err(|e| Error::io(&self.path, e))?;
        self.done.insert(k);
        Ok(())
    }

    pub fn sync(&self) -> Result<()> {
        self.file.sync_all().map_err(|e| Error::io(&self.path, e))
    }
}

/// `FILE.done.json`: written when a run has predicted every sample of its shard.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    pub benchmark: String,
    /// What identifies the run (dataset, split, model, prompt options): shards must agree on it.
    pub run: Value,
    pub shard: Shard,
    /// Number of prediction lines.
    pub samples: usize,
    pub perceptio_version: String,
}

pub fn manifest_path(p: &Path) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(".done.json");
    PathBuf::from(s)
}

impl Manifest {
    pub fn write(&self, pred: &Path) -> Result<()> {
        let p = manifest_path(pred);
        let v = serde_json::to_vec_pretty(self).expect("manifest serialises");
        crate::util::atomic::write(&p, &v)
    }

    pub fn read(pred: &Path) -> Result<Self> {
        let p = manifest_path(pred);
        if !p.is_file() {
            return Err(Error::input(pred, format!("no {} next to it: that run did not finish its shard (resume it), or the file was not made by `--model`", p.display())));
        }
        serde_json::from_slice(&crate::util::read_file(&p)?)
            .map_err(|e| Error::input(&p, format!("not a perceptio manifest: {e}")))
    }
}

/// The lines of a predictions file, keyed.
fn read_keyed(path: &Path, key: &str) -> Result<Vec<(i64, String)>> {
    let bytes = crate::util::read_file(path)?;
    let text = std::str::from_utf8(&bytes).map_err(|_| Error::input(path, "not UTF-8"))?;
    if !text.is_empty() && !text.ends_with('\n') {
        return Err(Error::input(
            path,
            "the last line is incomplete (an interrupted run): resume it before merging",
        ));
    }
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line).map_err(|e| Error::at_line(path, i + 1, format!("not JSON: {e}")))?;
        let k = key_of(&v, key).ok_or_else(|| Error::at_line(path, i + 1, format!("no integer `{key}`")))?;
        out.push((k, line.to_string()));
    }
    Ok(out)
}

/// The key field of each benchmark's prediction lines.
pub fn key_field(benchmark: &str) -> Option<&'static str> {
    match benchmark {
        "refcoco" => Some("sent_id"),
        "mmbench" => Some("index"),
        b if b.starts_with("hardblink") => Some("question_id"),
        _ => None,
    }
}

/// Merge the prediction files of all N shards of one run into `out` (lines sorted by key),
/// refusing a missing or repeated shard, an unfinished shard, shards of different runs, and a
/// key predicted twice. Writes `out` and its manifest atomically; returns the line count.
pub fn merge(inputs: &[PathBuf], out: &Path) -> Result<usize> {
    if inputs.is_empty() {
        return Err(Error::Usage("nothing to merge: give the shard files".into()));
    }
    let manifests: Vec<Manifest> = inputs.iter().map(|p| Manifest::read(p)).collect::<Result<_>>()?;
    let first = &manifests[0];
    let n = first.shard.n;
    let mut seen: BTreeMap<usize, &Path> = BTreeMap::new();
    for (m, p) in manifests.iter().zip(inputs) {
        if m.benchmark != first.benchmark || m.run != first.run || m.shard.n != n {
            return Err(Error::input(
                p,
                format!(
                    "is from a different run than {} (benchmark, dataset, model or shard count differ)",
                    inputs[0].display()
                ),
            ));
        }
        if let Some(prev) = seen.insert(m.shard.k, p) {
            return Err(Error::input(
                p,
                format!("shard {}/{n} is also {}", m.shard.k, prev.display()),
            ));
        }
    }
    let missing: Vec<String> = (1..=n)
        .filter(|k| !seen.contains_key(k))
        .map(|k| format!("{k}/{n}"))
        .collect();
    if !missing.is_empty() {
        return Err(Error::Usage(format!(
            "shard(s) {} missing: all {n} shards are needed",
            missing.join(", ")
        )));
    }
    let key = key_field(&first.benchmark).ok_or_else(|| {
        Error::input(
            &inputs[0],
            format!("unknown benchmark `{}` in the manifest", first.benchmark),
        )
    })?;
    let mut all: BTreeMap<i64, (String, &Path)> = BTreeMap::new();
    for (m, p) in manifests.iter().zip(inputs) {
        let lines = read_keyed(p, key)?;
        if lines.len() != m.samples {
            return Err(Error::input(
                p,
                format!("has {} lines but its manifest says {}", lines.len(), m.samples),
            ));
        }
        for (k, l) in lines {
            if let Some((_, prev)) = all.insert(k, (l, p)) {
                return Err(Error::input(
                    p,
                    format!("`{key}` {k} is also predicted in {}", prev.display()),
                ));
            }
        }
    }
    crate::util::atomic::write_with(out, |w| {
        for (l, _) in all.values() {
            w.write_all(l.as_bytes())?;
            w.write_all(b"\n")?;
        }
        Ok(())
    })?;
    Manifest {
        benchmark: first.benchmark.clone(),
        run: first.run.clone(),
        shard: Shard::ALL,
        samples: all.len(),
        perceptio_version: env!("CARGO_PKG_VERSION").into(),
    }
    .write(out)?;
    Ok(all.len())
}

/// A progress bar with samples/s and ETA on stderr, shown only on a terminal.
pub fn progress(total: u64, what: &str) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::with_draw_target(Some(total), indicatif::ProgressDrawTarget::stderr());
    pb.set_style(
        indicatif::ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} {per_sec} ETA {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    pb.set_message(what.to_string());
    pb
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_partition_the_groups() {
        let s: Vec<Shard> = (1..=3).map(|k| Shard::parse(&format!("{k}/3")).unwrap()).collect();
        for g in 0..20 {
            assert_eq!(s.iter().filter(|x| x.owns(g)).count(), 1);
        }
        for bad in ["0/3", "4/3", "1/0", "x", "1-2"] {
            assert!(Shard::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn torn_last_line_is_dropped_and_duplicates_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("p.jsonl");
        std::fs::write(&p, "{\"sent_id\": 1, \"mask\": null}\n{\"sent_id\": 2, \"ma").unwrap();
        let mut f = PredictionFile::open(&p, "sent_id").unwrap();
        assert!(f.repaired);
        assert_eq!(f.done, HashSet::from([1]));
        f.append(&serde_json::json!({"sent_id": 2, "mask": null})).unwrap();
        drop(f);
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "{\"sent_id\": 1, \"mask\": null}\n{\"mask\":null,\"sent_id\":2}\n"
        );
        std::fs::write(&p, "{\"sent_id\": 1}\n{\"sent_id\": 1}\n").unwrap();
        let e = PredictionFile::open(&p, "sent_id").err().unwrap().to_string();
        assert!(e.contains(":2:") && e.contains("twice"), "{e}");
        std::fs::write(&p, "{\"sent_id\": 1}\nnot json\n").unwrap();
        assert!(PredictionFile::open(&p, "sent_id")
            .err()
            .unwrap()
            .to_string()
            .contains(":2:"));
    }
}
