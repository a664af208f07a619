//! `--trace FILE`: every tracing span of a run (one per model module) as a Chrome trace, so
//! anyone can see in chrome://tracing or Perfetto where a real run spends its time.

use crate::error::Result;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The trace is kept in memory and written atomically when the run ends.
pub struct Trace {
    guard: Option<tracing_chrome::FlushGuard>,
    buf: Arc<Mutex<Vec<u8>>>,
    path: PathBuf,
}

#[derive(Clone)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("trace buffer poisoned"))?
            .extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Trace {
    /// Start recording (before any model is built: spans made earlier are not recorded).
    pub fn start(path: &Path) -> Result<Self> {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let (layer, guard) = tracing_chrome::ChromeLayerBuilder::new()
            .writer(Buffer(buf.clone()))
            .include_args(true)
            .build();
        // A second subscriber (a library caller that set its own) is left alone.
        let _ = tracing_subscriber::registry().with(layer).try_init();
        Ok(Self {
            guard: Some(guard),
            buf,
            path: path.to_path_buf(),
        })
    }

    /// Flush and write the trace file.
    pub fn finish(mut self) -> Result<()> {
        self.write()
    }

    fn write(&mut self) -> Result<()> {
        let Some(g) = self.guard.take() else { return Ok(()) };
        drop(g);
        let bytes = std::mem::take(
            &mut *self
                .buf
                .lock()
                .map_err(|_| crate::Error::at("--trace", "trace buffer poisoned"))?,
        );
        crate::util::atomic::write(&self.path, &bytes)
    }
}

impl Drop for Trace {
    /// A run that fails still leaves its trace (the part up to the failure).
    fn drop(&mut self) {
        if let Err(e) = self.write() {
            eprintln!("perceptio: --trace: {e}");
        }
    }
}
