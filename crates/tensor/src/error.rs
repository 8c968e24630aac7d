//! The one error type of the library crates; crates above `tensor` reuse it.

use std::path::PathBuf;

/// Everything that can go wrong outside tensor-shape misuse (which panics, as tch does).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A device string that is not `auto`, `cpu`, `cuda` or `cuda:N`, or a device that is absent.
    #[error("{0}")]
    Device(String),
    /// A value given by the user (flag, config field) that is out of range or unknown.
    #[error("{0}")]
    InvalidArgument(String),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file exists but its contents are not what was expected (corrupt, truncated, wrong format).
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    /// A weights file whose tensor names or shapes do not match the model.
    #[error("{path}: does not match the model: {report}")]
    Mismatch { path: PathBuf, report: String },
    /// A loss or gradient that became NaN or infinite.
    #[error("{what} is not finite at step {step}: {value} (lower the learning rate, enable gradient clipping, or resume from an earlier checkpoint)")]
    NonFinite { what: String, step: u64, value: f64 },
    /// An error reported by libtorch.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error tagged with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A format error tagged with the path it concerns.
    pub fn format(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Format {
            path: path.into(),
            message: message.into(),
        }
    }
}
