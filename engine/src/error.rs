//! The engine's one error type. User errors (bad input, unknown names) are kept
//! apart from [`Error::Internal`] (a bug) and from I/O and storage failures, so
//! that the server can map each to the right status code in one place.

use std::path::PathBuf;

/// Result with the engine's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything the engine can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request or input that is malformed as a whole (not one row of it).
    #[error("invalid argument `{field}`: {reason}")]
    InvalidArgument {
        /// The field or parameter at fault.
        field: String,
        /// Why it is wrong, naming the value.
        reason: String,
    },
    /// One row of an input is wrong; row-level rejections inside a batch are
    /// reported in an [`crate::IngestReport`] instead, this is for whole-input errors.
    #[error("row {row}, field `{field}`: {reason}")]
    BadValue {
        /// Index of the row in its batch or file.
        row: u64,
        /// The field at fault.
        field: String,
        /// Why it is wrong, naming the value.
        reason: String,
    },
    /// A named thing (workspace, table) does not exist.
    #[error("{what} `{name}` not found")]
    NotFound {
        /// What kind of thing was looked up.
        what: &'static str,
        /// The name that was asked for.
        name: String,
    },
    /// A named thing exists already.
    #[error("{what} `{name}` already exists")]
    AlreadyExists {
        /// What kind of thing.
        what: &'static str,
        /// Its name.
        name: String,
    },
    /// A configuration file or value is wrong.
    #[error("configuration: {0}")]
    Config(String),
    /// A SQL query failed to plan or run (user error in most cases).
    #[error("sql: {0}")]
    Sql(String),
    /// The engine is shutting down or a background worker stopped.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A file could not be read or written.
    #[error("i/o on `{path}`: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The Delta Lake layer failed.
    #[error("delta table: {0}")]
    Delta(#[from] deltalake_core::DeltaTableError),
    /// Arrow failed (encoding, casting).
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// A bug: an invariant did not hold. Please report it.
    #[error("internal error (likely a bug): {0}")]
    Internal(String),
}

impl Error {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// An invalid-argument error for `field`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl From<datafusion::error::DataFusionError> for Error {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        Error::Sql(e.to_string())
    }
}

impl From<Error> for datafusion::error::DataFusionError {
    fn from(e: Error) -> Self {
        match e {
            Error::Sql(s) => datafusion::error::DataFusionError::Execution(s),
            other => datafusion::error::DataFusionError::External(Box::new(other)),
        }
    }
}
