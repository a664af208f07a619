//! JSONL reading with 1-based line numbers in every error. Blank lines are skipped.

use crate::error::{Error, Result};
use std::path::Path;

/// Parse every non-blank line of `path` as JSON into `T`, calling `each(line_no, value)`.
pub fn for_each<T, F>(path: &Path, mut each: F) -> Result<()>
where
    T: serde::de::DeserializeOwned,
    F: FnMut(usize, T) -> Result<()>,
{
    let bytes = super::read_file(path)?;
    for_each_in(path, &bytes, &mut each)
}

/// As [`for_each`] over bytes already in memory (`path` only names them in errors).
pub fn for_each_in<T, F>(path: &Path, bytes: &[u8], mut each: F) -> Result<()>
where
    T: serde::de::DeserializeOwned,
    F: FnMut(usize, T) -> Result<()>,
{
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let line_no = i + 1;
        let line =
            std::str::from_utf8(raw).map_err(|e| Error::at_line(path, line_no, format!("not valid UTF-8: {e}")))?;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let v: T = serde_json::from_str(line)
            .map_err(|e| Error::at_line(path, line_no, format!("malformed JSON line: {e}")))?;
        each(line_no, v)?;
    }
    Ok(())
}
