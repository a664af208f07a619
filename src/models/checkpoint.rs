//! A model directory: `config.json`, `model.safetensors` or shards named by
//! `model.safetensors.index.json`, tokenizer files. Errors name the file and, for tensors,
//! the key with its expected and found shapes.

use crate::error::{Error, Result};
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub dir: PathBuf,
    pub config: serde_json::Value,
    pub weights: Vec<PathBuf>,
}

#[derive(serde::Deserialize)]
struct Index {
    weight_map: std::collections::BTreeMap<String, String>,
}

impl Checkpoint {
    pub fn open(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::input(dir, "not a model directory"));
        }
        let cfg_path = dir.join("config.json");
        if !cfg_path.is_file() {
            return Err(Error::input(dir, "no config.json in the model directory"));
        }
        let config: serde_json::Value = serde_json::from_slice(&crate::util::read_file(&cfg_path)?)
            .map_err(|e| Error::input(&cfg_path, format!("not valid JSON: {e}")))?;
        let index = dir.join("model.safetensors.index.json");
        let weights = if index.is_file() {
            let idx: Index = serde_json::from_slice(&crate::util::read_file(&index)?)
                .map_err(|e| Error::input(&index, format!("not a safetensors index: {e}")))?;
            let mut files: Vec<String> = idx.weight_map.into_values().collect();
            files.sort();
            files.dedup();
            let paths: Vec<PathBuf> = files.iter().map(|f| dir.join(f)).collect();
            if let Some(m) = paths.iter().find(|p| !p.is_file()) {
                return Err(Error::input(&index, format!("names shard {} which is missing", m.display())));
            }
            paths
        } else if dir.join("model.safetensors").is_file() {
            vec![dir.join("model.safetensors")]
        } else {
            let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(|e| Error::io(dir, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
                .collect();
            v.sort();
            if v.is_empty() {
                return Err(Error::input(dir, "no model.safetensors (or index + shards) in the model directory"));
            }
            v
        };
        Ok(Checkpoint { dir: dir.to_path_buf(), config, weights })
    }

    /// Parse the config into a typed struct, naming the file on error.
    pub fn config_as<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_value(self.config.clone()).map_err(|e| Error::input(self.dir.join("config.json"), format!("unexpected config: {e}")))
    }

    /// Memory-map the safetensors files (headers are validated here: a truncated file fails).
    pub fn var_builder(&self, dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
        for w in &self.weights {
            check_safetensors_header(w)?;
        }
        // SAFETY: the files are not modified while mapped (they live in the model directory).
        unsafe { VarBuilder::from_mmaped_safetensors(&self.weights, dtype, device) }
            .map_err(|e| Error::at(self.dir.display().to_string(), format!("cannot load weights: {}", crate::error::candle_message(&e))))
    }

    /// Map a candle error raised while building a model to an Error naming this checkpoint.
    pub fn weight_error(&self, e: candle_core::Error) -> Error {
        Error::at(self.dir.display().to_string(), format!("weights do not match the config: {}", crate::error::candle_message(&e)))
    }
}

/// A safetensors file must hold its whole header and every tensor's bytes.
pub fn check_safetensors_header(path: &Path) -> Result<()> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut n = [0u8; 8];
    f.read_exact(&mut n).map_err(|_| Error::input(path, "truncated safetensors file (no header)"))?;
    let hlen = u64::from_le_bytes(n);
    if hlen > 100 << 20 || 8 + hlen > len {
        return Err(Error::input(path, format!("truncated or corrupt safetensors file (header of {hlen} bytes, file of {len})")));
    }
    let mut h = vec![0u8; hlen as usize];
    f.read_exact(&mut h).map_err(|e| Error::io(path, e))?;
    let header: serde_json::Value = serde_json::from_slice(&h).map_err(|e| Error::input(path, format!("corrupt safetensors header: {e}")))?;
    let end = header
        .as_object()
        .map(|o| o.values().filter_map(|t| t.get("data_offsets").and_then(|d| d.get(1)).and_then(|v| v.as_u64())).max().unwrap_or(0))
        .unwrap_or(0);
    if 8 + hlen + end > len {
        return Err(Error::input(path, format!("truncated safetensors file: tensors need {} bytes, the file has {len}", 8 + hlen + end)));
    }
    Ok(())
}
