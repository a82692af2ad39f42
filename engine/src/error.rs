//! Typed errors of the engine. Every error that comes from a file names the file, and every
//! error about a tensor names its key, so a user can tell what is wrong without a debugger.

use std::path::PathBuf;

/// Result alias used throughout the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said (not a `source`: the message already says it, and a chain
        /// printer would say it twice).
        error: std::io::Error,
    },
    /// A file exists but is not what it should be (truncated, not a checkpoint, corrupt).
    #[error("{path}: {reason}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// Why it was rejected.
        reason: String,
    },
    /// A configuration (YAML manifest, stage config, model card) is invalid.
    #[error("{path}: {reason}")]
    Config {
        /// The file holding the configuration.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A tensor the network needs is not in the weights file.
    #[error("{path}: missing tensor `{key}`")]
    MissingKey {
        /// The weights file.
        path: PathBuf,
        /// The key that was looked up.
        key: String,
    },
    /// A tensor has another shape than the configuration implies.
    #[error("{path}: tensor `{key}` has shape {found:?}, the configuration expects {expected:?}")]
    ShapeMismatch {
        /// The weights file.
        path: PathBuf,
        /// The key.
        key: String,
        /// The shape the configuration implies.
        expected: Vec<usize>,
        /// The shape stored in the file.
        found: Vec<usize>,
    },
    /// Inputs to a network have the wrong shape or value range.
    #[error("invalid input: {0}")]
    Input(String),
    /// The job was cancelled by its caller.
    #[error("cancelled")]
    Cancelled,
    /// An error from the tensor library.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl Error {
    /// Shorthand for [`Error::BadFile`].
    pub fn bad_file(path: impl Into<PathBuf>, reason: impl std::fmt::Display) -> Self {
        Self::BadFile {
            path: path.into(),
            reason: reason.to_string(),
        }
    }

    /// Shorthand for [`Error::Config`].
    pub fn config(path: impl Into<PathBuf>, reason: impl std::fmt::Display) -> Self {
        Self::Config {
            path: path.into(),
            reason: reason.to_string(),
        }
    }

    /// Shorthand for [`Error::Io`].
    pub fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            error,
        }
    }
}
