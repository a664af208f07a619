//! One error type for the library, so the CLI can map every failure to a clear message and a meaningful exit code.

use std::path::{Path, PathBuf};

/// Exit codes of the `perceptio` binary (documented in README.md).
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// Bad input or a runtime failure (missing file, malformed annotation, I/O error).
    pub const FAILURE: i32 = 1;
    /// Usage error (bad flags or arguments that contradict each other).
    pub const USAGE: i32 = 2;
    /// `segment`: the model answered without a `[SEG]` token, so the mask is empty (the outputs
    /// are still written).
    pub const NO_MASK: i32 = 3;
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be opened, read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Input content is malformed; `location` names the file and, where known, the line or record.
    #[error("{location}: {message}")]
    Input { location: String, message: String },
    /// The command line asks for something inconsistent.
    #[error("{0}")]
    Usage(String),
    /// A candle error raised while building or running a model (shown without the backtrace
    /// candle appends when `RUST_BACKTRACE` is set).
    #[error("model: {}", candle_message(.0))]
    Model(#[from] candle_core::Error),
}

impl Error {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    /// Malformed content in `path` (whole file).
    pub fn input(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        Error::Input {
            location: path.as_ref().display().to_string(),
            message: message.into(),
        }
    }

    /// Malformed content at a 1-based line of `path`.
    pub fn at_line(path: impl AsRef<Path>, line: usize, message: impl Into<String>) -> Self {
        Error::Input {
            location: format!("{}:{line}", path.as_ref().display()),
            message: message.into(),
        }
    }

    /// Malformed content at a free-form location (e.g. "instances.json annotation 1234").
    pub fn at(location: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Input {
            location: location.into(),
            message: message.into(),
        }
    }

    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) => exit::USAGE,
            _ => exit::FAILURE,
        }
    }

    /// Writing to a closed pipe (`perceptio ... | head`): the reader has all it wanted, so the
    /// CLI ends quietly with success, as ripgrep does.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::BrokenPipe)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A candle error's message without the backtrace candle appends when `RUST_BACKTRACE` is set.
pub fn candle_message(e: &candle_core::Error) -> String {
    let s = match e {
        candle_core::Error::WithBacktrace { inner, .. } => inner.to_string(),
        other => other.to_string(),
    };
    match s.find("\n   0: ") {
        Some(i) => s[..i].trim_end().to_string(),
        None => s.trim_end().to_string(),
    }
}
