//! The crate's one error type. User errors (a bad config value, an unknown format, a file that
//! cannot be written) are kept apart from [`Error::Internal`], which means a bug here.

use std::path::PathBuf;

/// Errors from generating data.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A [`crate::GenConfig`] field is out of range.
    #[error("generator config `{field}`: {reason}")]
    Config {
        /// The field, as named in `GenConfig`.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A format name that is not `parquet`, `ndjson` or `csv`.
    #[error("unknown format `{0}`: expected one of parquet, ndjson, csv")]
    UnknownFormat(String),
    /// Creating or writing a file or directory failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Encoding a Parquet file failed.
    #[error("{}: {source}", path.display())]
    Parquet {
        /// The file being written.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// Building an Arrow record batch failed.
    #[error("building record batch: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// A bug in the generator.
    #[error("internal error (likely a bug in quiver-data): {0}")]
    Internal(String),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }

    pub(crate) fn parquet(
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(parquet::errors::ParquetError) -> Error {
        let path = path.into();
        move |source| Error::Parquet { path, source }
    }
}
