//! A model directory opened once: `config.json` parsed, `model.safetensors` or the shards
//! named by `model.safetensors.index.json` validated and indexed into one
//! [`VarBuilder`], and the shape of every tensor read from the headers. The chat model, SAM2
//! and the depth head are all built from the same [`Checkpoint`]. Errors name the file and,
//! for tensors, the key with its expected and found shapes.

use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor};
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
    /// Open a model directory for `dtype` on `device` (headers are read; each tensor is read
    /// when a model asks for it).
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
        let map = if index.is_file() {
            Some(crate::util::safetensors_index_map(&index)?)
        } else {
            None
        };
        let backend = ReadBackend::open(&weights, map.as_ref())?;
        let shapes: ShapeIndex = backend
            .entries
            .iter()
            .map(|(k, (_, e))| (k.clone(), e.shape.clone()))
            .collect();
        let vb = VarBuilder::from_backend(Box::new(backend), dtype, device.clone());
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
    Ok(safetensors_entries(path)?
        .into_iter()
        .map(|(name, e)| (name, e.shape))
        .collect())
}

/// Where one tensor's bytes are: its dtype, shape and absolute byte range in the file.
#[derive(Debug, Clone)]
struct Entry {
    dtype: String,
    shape: Vec<usize>,
    start: u64,
    end: u64,
}

/// Every tensor of a safetensors file (header only), validated against the file's length.
fn safetensors_entries(path: &Path) -> Result<Vec<(String, Entry)>> {
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
    let corrupt =
        |name: &str, what: &str| Error::input(path, format!("corrupt safetensors header: tensor `{name}` {what}"));
    let mut out = Vec::new();
    let mut need = 0u64;
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
        let shape = shape.ok_or_else(|| corrupt(name, "has no shape"))?;
        let offsets = t
            .get("data_offsets")
            .and_then(|d| d.as_array())
            .and_then(|a| Some((a.first()?.as_u64()?, a.get(1)?.as_u64()?)))
            .filter(|(a, b)| a <= b)
            .ok_or_else(|| corrupt(name, "has no valid data_offsets"))?;
        let dtype = t.get("dtype").and_then(|d| d.as_str()).unwrap_or("").to_string();
        need = need.max(offsets.1);
        out.push((
            name.clone(),
            Entry {
                dtype,
                shape,
                start: 8 + hlen + offsets.0,
                end: 8 + hlen + offsets.1,
            },
        ));
    }
    if 8 + hlen + need > len {
        return Err(Error::input(
            path,
            format!(
                "truncated safetensors file: tensors need {} bytes, the file has {len}",
                8 + hlen + need
            ),
        ));
    }
    Ok(out)
}

/// A `VarBuilder` backend whose tensors are views of the page cache where the global allocator
/// allows it ([`crate::util::mapped`]): no copy, no zero-filled pages. Otherwise each tensor is
/// read with positioned reads straight into its final buffer, large ones by several threads.
/// (candle's mmap backend copies out of the mapping, so every 4 KiB page faulted twice and both
/// stayed resident: 1.1 M minor faults and twice the weights' size for Sa2VA-1B's 4.1 GB.)
struct ReadBackend {
    /// Each file, opened, and mapped where [`MappedFile`](crate::util::mapped::MappedFile) can be.
    files: Vec<(PathBuf, std::fs::File, Option<crate::util::mapped::MappedFile>)>,
    entries: std::collections::HashMap<String, (usize, Entry)>,
}

impl ReadBackend {
    /// Index the tensors of `weights`. With an index's `weight_map`, a tensor it lists is taken
    /// from the shard it names (another shard's copy is ignored, as transformers does); a tensor
    /// it does not list, from the first shard that has it.
    fn open(weights: &[PathBuf], map: Option<&BTreeMap<String, String>>) -> Result<Self> {
        let mut files = Vec::with_capacity(weights.len());
        let mut entries = std::collections::HashMap::new();
        for (i, w) in weights.iter().enumerate() {
            let file = w.file_name().and_then(|f| f.to_str()).unwrap_or("");
            for (name, e) in safetensors_entries(w)? {
                match map.and_then(|m| m.get(&name)) {
                    Some(shard) if shard != file => {}
                    Some(_) => {
                        entries.insert(name, (i, e));
                    }
                    None => {
                        entries.entry(name).or_insert((i, e));
                    }
                }
            }
            let f = std::fs::File::open(w).map_err(|e| Error::io(w, e))?;
            let mapped = crate::util::mapped::MappedFile::open(&f).map_err(|e| Error::io(w, e))?;
            files.push((w.clone(), f, mapped));
        }
        Ok(Self { files, entries })
    }

    /// The tensor `name` as stored (dtype and shape of the file), on the CPU.
    fn read(&self, name: &str) -> candle_core::Result<Tensor> {
        let (fi, e) = self
            .entries
            .get(name)
            .ok_or_else(|| candle_core::Error::CannotFindTensor { path: name.to_string() }.bt())?;
        let (path, file, mapped) = &self.files[*fi];
        let dtype = match e.dtype.as_str() {
            "F32" => DType::F32,
            "F16" => DType::F16,
            "BF16" => DType::BF16,
            "F64" => DType::F64,
            "I64" => DType::I64,
            "I32" => DType::I32,
            "I16" => DType::I16,
            "U32" => DType::U32,
            "U8" => DType::U8,
            d => candle_core::bail!(
                "{}: tensor `{name}` has dtype {d}, which perceptio cannot read",
                path.display()
            ),
        };
        let n: usize = e.shape.iter().product();
        let bytes = (e.end - e.start) as usize;
        if bytes != n * dtype.size_in_bytes() {
            candle_core::bail!(
                "{}: tensor `{name}` has {bytes} bytes for shape {:?} of {dtype:?}",
                path.display(),
                e.shape
            )
        }
        let fail = |err: std::io::Error| {
            candle_core::Error::Msg(format!("{}: reading tensor `{name}`: {err}", path.display()))
        };
        match dtype {
            DType::F32 => {
                let v = load::<f32>(mapped.as_ref(), file, e.start, n);
                Tensor::from_vec(v.map_err(fail)?, e.shape.as_slice(), &Device::Cpu)
            }
            DType::F16 => {
                let v = load::<half::f16>(mapped.as_ref(), file, e.start, n);
                Tensor::from_vec(v.map_err(fail)?, e.shape.as_slice(), &Device::Cpu)
            }
            DType::BF16 => {
                let v = load::<half::bf16>(mapped.as_ref(), file, e.start, n);
                Tensor::from_vec(v.map_err(fail)?, e.shape.as_slice(), &Device::Cpu)
            }
            _ => {
                let v = read_vec::<u8>(file, e.start, bytes).map_err(fail)?;
                Tensor::from_raw_buffer(&v, dtype, &e.shape, &Device::Cpu)
            }
        }
    }
}

/// `n` values at byte `offset` of `file`: over its mapping when there is one and they are aligned
/// there, else read into a new vector.
fn load<T: crate::util::mapped::Plain>(
    mapped: Option<&crate::util::mapped::MappedFile>,
    file: &std::fs::File,
    offset: u64,
    n: usize,
) -> std::io::Result<Vec<T>> {
    match mapped.and_then(|m| m.vec(offset as usize, n)) {
        Some(v) => Ok(v),
        None => read_vec(file, offset, n),
    }
}

/// `n` values read from `file` at `offset` into a new vector. The buffer is allocated without
/// being written (so the allocator never touches it), then positioned reads of 32 MiB pieces fill
/// it on parallel threads. (Advising it for transparent huge pages was tried: with the kernel's
/// `defrag=madvise` every huge-page fault compacts memory synchronously, and the load took 2.3x
/// longer.)
fn read_vec<T: crate::util::mapped::Plain>(file: &std::fs::File, offset: u64, n: usize) -> std::io::Result<Vec<T>> {
    use rayon::prelude::*;
    use std::os::fd::AsRawFd;
    const PIECE: usize = 32 << 20;
    let mut v: Vec<T> = Vec::with_capacity(n);
    let len = n * std::mem::size_of::<T>();
    let base = v.as_mut_ptr() as usize;
    let fd = file.as_raw_fd();
    (0..len.div_ceil(PIECE)).into_par_iter().try_for_each(|i| {
        let (mut at, stop) = (i * PIECE, ((i + 1) * PIECE).min(len));
        #[cfg(target_os = "linux")]
        {
            // Fault the piece's pages in with one call instead of one fault per page during the
            // copy (MADV_POPULATE_WRITE, Linux 5.14; an older kernel refuses it and the read faults).
            const MADV_POPULATE_WRITE: libc::c_int = 23;
            let (a, e) = ((base + at).next_multiple_of(4096), (base + stop) / 4096 * 4096);
            if e > a {
                // SAFETY: [a, e) lies inside v's allocation; populating only faults pages in.
                unsafe { libc::madvise(a as *mut libc::c_void, e - a, MADV_POPULATE_WRITE) };
            }
        }
        while at < stop {
            // SAFETY: [base + at, base + stop) lies inside v's allocation and is written by this
            // piece only; pread writes through the raw pointer (no reference to uninitialised
            // memory is made).
            let r = unsafe {
                libc::pread(
                    fd,
                    (base + at) as *mut libc::c_void,
                    stop - at,
                    (offset + at as u64) as libc::off_t,
                )
            };
            match r {
                0 => return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof)),
                r if r < 0 => {
                    let e = std::io::Error::last_os_error();
                    if e.kind() != std::io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
                r => at += r as usize,
            }
        }
        Ok(())
    })?;
    // SAFETY: all len bytes were written by the reads above, and T accepts any bit pattern.
    unsafe { v.set_len(n) };
    Ok(v)
}

impl candle_nn::var_builder::SimpleBackend for ReadBackend {
    fn get(
        &self,
        s: candle_core::Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.get_unchecked(name, dtype, dev)?;
        if t.shape() != &s {
            Err(candle_core::Error::UnexpectedShape {
                msg: format!("shape mismatch for {name}"),
                expected: s,
                got: t.shape().clone(),
            }
            .bt())?
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.read(name)?.to_dtype(dtype)?.to_device(dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::var_builder::SimpleBackend;

    /// Every dtype the reader handles, at odd byte offsets (a u8 tensor first), large enough to be
    /// read in parallel pieces, equals candle's own safetensors loader.
    #[test]
    fn reads_what_candle_reads() {
        let dir = tempfile::tempdir().unwrap();
        let dev = Device::Cpu;
        let big = Tensor::randn(0f32, 1.0, (3, (40 << 20) / 12 + 7), &dev).unwrap(); // > one piece
        let mut ts = std::collections::HashMap::new();
        ts.insert("a.u8".to_string(), Tensor::new(&[1u8, 2, 3], &dev).unwrap());
        ts.insert("b.f32".to_string(), big);
        ts.insert(
            "c.f16".to_string(),
            Tensor::randn(0f32, 1.0, (5, 3), &dev)
                .unwrap()
                .to_dtype(DType::F16)
                .unwrap(),
        );
        ts.insert(
            "d.bf16".to_string(),
            Tensor::randn(0f32, 1.0, 9, &dev)
                .unwrap()
                .to_dtype(DType::BF16)
                .unwrap(),
        );
        ts.insert("e.i64".to_string(), Tensor::new(&[-4i64, 5], &dev).unwrap());
        let path = dir.path().join("model.safetensors");
        candle_core::safetensors::save(&ts, &path).unwrap();
        let want = candle_core::safetensors::load(&path, &dev).unwrap();
        let b = ReadBackend::open(std::slice::from_ref(&path), None).unwrap();
        for (name, w) in &want {
            let got = b.read(name).unwrap();
            assert_eq!((got.dtype(), got.dims()), (w.dtype(), w.dims()), "{name}");
            let eq = got
                .eq(w)
                .unwrap()
                .to_dtype(DType::U32)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<u32>()
                .unwrap();
            assert_eq!(eq as usize, w.elem_count(), "{name}");
        }
        let f = b.get_unchecked("c.f16", DType::F32, &dev).unwrap();
        assert_eq!(f.dtype(), DType::F32);
        assert!(b.contains_tensor("d.bf16") && !b.contains_tensor("nope"));
        let e = b
            .get((2, 2).into(), "d.bf16", candle_nn::Init::Const(0.), DType::BF16, &dev)
            .unwrap_err();
        assert!(e.to_string().contains("shape mismatch for d.bf16"), "{e}");
        let e = b.read("nope").unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
    }

    /// With an index, a tensor stored in two shards is read from the shard its weight_map names.
    #[test]
    fn the_weight_map_picks_the_shard() {
        let dir = tempfile::tempdir().unwrap();
        let dev = Device::Cpu;
        for (f, v) in [("a.safetensors", 1f32), ("b.safetensors", 2f32)] {
            let mut ts = std::collections::HashMap::new();
            ts.insert("w".to_string(), Tensor::new(&[v], &dev).unwrap());
            ts.insert(format!("only_{v}"), Tensor::new(&[v], &dev).unwrap());
            candle_core::safetensors::save(&ts, dir.path().join(f)).unwrap();
        }
        let paths = [dir.path().join("a.safetensors"), dir.path().join("b.safetensors")];
        let read = |map: Option<&BTreeMap<String, String>>, name: &str| {
            let b = ReadBackend::open(&paths, map).unwrap();
            b.read(name).unwrap().to_vec1::<f32>().unwrap()[0]
        };
        for (shard, want) in [("a.safetensors", 1f32), ("b.safetensors", 2f32)] {
            let map: BTreeMap<String, String> = [("w".to_string(), shard.to_string())].into();
            assert_eq!(read(Some(&map), "w"), want);
        }
        assert_eq!(read(None, "w"), 1.0); // unlisted: the first shard that has it
        assert_eq!(read(None, "only_2"), 2.0);
    }

    /// A file cut after its header is refused when opened, naming the file.
    #[test]
    fn truncated_files_are_refused_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        let mut ts = std::collections::HashMap::new();
        ts.insert("w".to_string(), Tensor::zeros(1000, DType::F32, &Device::Cpu).unwrap());
        candle_core::safetensors::save(&ts, &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
        let e = ReadBackend::open(std::slice::from_ref(&path), None)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("truncated") && e.contains("model.safetensors"), "{e}");
    }
}
