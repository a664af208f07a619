//! A model directory opened once: `config.json` parsed, `model.safetensors` or the shards
//! named by `model.safetensors.index.json` validated and memory-mapped into one
//! [`VarBuilder`], and the shape of every tensor read from the headers. The chat model, SAM2
//! and the depth head are all built from the same [`Checkpoint`]. Errors name the file and,
//! for tensors, the key with its expected and found shapes.

use crate::error::{Error, Result};
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Tensor name → shape, without loading any data.
pub type ShapeIndex = BTreeMap<String, Vec<usize>>;

#[derive(Clone)]
pub struct Checkpoint {
    pub dir: PathBuf,
    pub config: serde_json::Value,
    pub weights: Vec<PathBuf>,
    /// Every tensor's shape, from the safetensors headers.
    pub shapes: ShapeIndex,
    vb: VarBuilder<'static>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("dir", &self.dir)
            .field("weights", &self.weights)
            .field("tensors", &self.shapes.len())
            .finish()
    }
}

impl Checkpoint {
    /// Open a model directory for `dtype` on `device` (weights are mapped, not read).
    pub fn open(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let _g = tracing::span!(tracing::Level::TRACE, "load-checkpoint-open").entered();
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
            let files = crate::util::safetensors_index_shards(&index)?;
            let paths: Vec<PathBuf> = files.iter().map(|f| dir.join(f)).collect();
            if let Some(m) = paths.iter().find(|p| !p.is_file()) {
                return Err(Error::input(
                    &index,
                    format!("names shard {} which is missing", m.display()),
                ));
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
                return Err(Error::input(
                    dir,
                    "no model.safetensors (or index + shards) in the model directory",
                ));
            }
            v
        };
        let mut shapes = ShapeIndex::new();
        for w in &weights {
            shapes.extend(safetensors_header(w)?);
        }
        // SAFETY: the files are not modified while mapped (they live in the model directory).
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&weights, dtype, device) }.map_err(|e| {
            Error::at(
                dir.display().to_string(),
                format!("cannot load weights: {}", crate::error::candle_message(&e)),
            )
        })?;
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            config,
            weights,
            shapes,
            vb,
        })
    }

    /// The var builder over all the weights, in the dtype the checkpoint was opened with.
    pub fn vb(&self) -> VarBuilder<'static> {
        self.vb.clone()
    }

    pub fn device(&self) -> &Device {
        self.vb.device()
    }

    pub fn dtype(&self) -> DType {
        self.vb.dtype()
    }

    /// Parse the config into a typed struct, naming the file on error.
    pub fn config_as<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_value(self.config.clone())
            .map_err(|e| Error::input(self.dir.join("config.json"), format!("unexpected config: {e}")))
    }

    /// Map a candle error raised while building a model to an Error naming this checkpoint.
    pub fn weight_error(&self, e: candle_core::Error) -> Error {
        Error::at(
            self.dir.display().to_string(),
            format!("weights do not match the config: {}", crate::error::candle_message(&e)),
        )
    }
}

/// The tensor shapes of a safetensors file, from its header; the file must hold its whole
/// header and every tensor's bytes (a truncated download fails here, naming the file).
pub fn safetensors_header(path: &Path) -> Result<ShapeIndex> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut n = [0u8; 8];
    f.read_exact(&mut n)
        .map_err(|_| Error::input(path, "truncated safetensors file (no header)"))?;
    let hlen = u64::from_le_bytes(n);
    if hlen > 100 << 20 || 8 + hlen > len {
        return Err(Error::input(
            path,
            format!("truncated or corrupt safetensors file (header of {hlen} bytes, file of {len})"),
        ));
    }
    let mut h = vec![0u8; hlen as usize];
    f.read_exact(&mut h).map_err(|e| Error::io(path, e))?;
    let header: serde_json::Value =
        serde_json::from_slice(&h).map_err(|e| Error::input(path, format!("corrupt safetensors header: {e}")))?;
    let end = header
        .as_object()
        .map(|o| {
            o.values()
                .filter_map(|t| t.get("data_offsets").and_then(|d| d.get(1)).and_then(|v| v.as_u64()))
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0);
    if 8 + hlen + end > len {
        return Err(Error::input(
            path,
            format!(
                "truncated safetensors file: tensors need {} bytes, the file has {len}",
                8 + hlen + end
            ),
        ));
    }
    let mut shapes = ShapeIndex::new();
    for (name, t) in header
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.as_str() != "__metadata__")
    {
        let shape = t.get("shape").and_then(|s| s.as_array()).and_then(|a| {
            a.iter()
                .map(|d| d.as_u64().map(|d| d as usize))
                .collect::<Option<Vec<_>>>()
        });
        let shape = shape.ok_or_else(|| {
            Error::input(
                path,
                format!("corrupt safetensors header: tensor `{name}` has no shape"),
            )
        })?;
        shapes.insert(name.clone(), shape);
    }
    Ok(shapes)
}
