//! # quiver-engine
//!
//! The engine of Quiver, a customer-data engine: events in, one person behind
//! many identifiers, tags as roaring bitmaps, audiences in milliseconds.
//! This crate has no gRPC in it; the `quiver` server is a thin adapter over it.
//!
//! - [`event`]: the event model, validation, identifier normalisation.
//! - `store`: per-workspace write-ahead log, memtable, Delta Lake tables.
//! - [`identity`]: OneID, persons as connected components under rules.
//! - [`index`]: roaring bitmaps over person ordinals, bit-sliced numbers.
//! - [`analytics`]: SQL over workspaces (Flight SQL's backend), funnels, retention.
//!
//! ```no_run
//! # async fn run() -> quiver_engine::Result<()> {
//! use quiver_engine::{Engine, EngineConfig};
//! let engine = Engine::open(EngineConfig { data_dir: "/tmp/quiver".into(), ..Default::default() }).await?;
//! engine.create_workspace("shop").await?;
//! # Ok(()) }
//! ```
#![warn(missing_docs)]
#![warn(clippy::unwrap_used, clippy::expect_used)]

pub mod analytics;
mod config;
mod error;
pub mod event;
pub mod identity;
pub mod index;
mod prefetch;
pub mod profile;
mod query;
pub mod segment;
mod store;
pub mod tag;

pub use config::{EngineConfig, StoreConfig, TagsConfig};
pub use error::{Error, Result};
pub use event::{IngestReport, RawEvent, RowError};
pub use store::{Engine, FlushReport, OptimizeReport, Workspace, WorkspaceInfo};

/// A task aborted when its handle is dropped unawaited: work a failed
/// operation started (a refresh's profile-table writes) does not run on past
/// the lock that operation held, racing the next one.
pub(crate) struct AbortOnDrop<T>(pub tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
