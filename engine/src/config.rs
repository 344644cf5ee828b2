//! Engine configuration: serde structs with one place for defaults. An
//! unknown key is an error naming it (`deny_unknown_fields`).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::event::NormalizeConfig;

/// Everything the engine needs to open.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Root of all workspaces' data (`./quiver-data`).
    pub data_dir: PathBuf,
    /// Write path and storage.
    pub store: StoreConfig,
    /// Identifier normalisation and junk values.
    pub normalize: NormalizeConfig,
    /// Tag refreshes and index versions.
    pub tags: TagsConfig,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            data_dir: PathBuf::from("./quiver-data"),
            store: StoreConfig::default(),
            normalize: NormalizeConfig::default(),
            tags: TagsConfig::default(),
        }
    }
}

/// The write path: WAL, memtable, Delta flushes, dedup, compaction.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Largest batch one ingest call may carry, in rows.
    pub max_batch_rows: usize,
    /// Flush the memtable to Delta once it holds this many rows.
    pub memtable_max_rows: usize,
    /// ... or once its oldest row is this old, in seconds.
    pub flush_interval_secs: u64,
    /// Write stall: while this many acknowledged rows wait for their Delta
    /// commit, new batches wait (their acks are delayed, nothing is refused).
    /// Bounds the memtable's memory when ingest outpaces flushing.
    pub max_unflushed_rows: usize,
    /// An `event_id` seen again within this many seconds of its first arrival is a duplicate.
    pub dedup_window_secs: u64,
    /// fsync the WAL before acknowledging (turn off only for throwaway benchmarks).
    pub fsync: bool,
    /// Check for small files every this many seconds (0 = never in the background).
    pub optimize_interval_secs: u64,
    /// Compact when the table has at least this many files smaller than `optimize_target_mb`.
    pub optimize_min_small_files: usize,
    /// Target file size of compaction, in MiB.
    pub optimize_target_mb: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            max_batch_rows: 100_000,
            memtable_max_rows: 1_000_000,
            flush_interval_secs: 60,
            max_unflushed_rows: 3_000_000,
            dedup_window_secs: 24 * 3600,
            fsync: true,
            optimize_interval_secs: 600,
            optimize_min_small_files: 32,
            optimize_target_mb: 128,
        }
    }
}

impl StoreConfig {
    pub(crate) fn flush_interval(&self) -> Duration {
        Duration::from_secs(self.flush_interval_secs.max(1))
    }
}

/// Tag refreshes: when they run and how many index versions are kept.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TagsConfig {
    /// Index versions kept per workspace (the newest; at least 1).
    pub keep_versions: usize,
    /// Refresh a workspace's tags after every (non-dry) resolve.
    pub refresh_after_resolve: bool,
    /// Refresh every workspace with tag definitions every this many seconds (0 = never).
    pub refresh_interval_secs: u64,
}

impl Default for TagsConfig {
    fn default() -> Self {
        TagsConfig {
            keep_versions: 5,
            refresh_after_resolve: true,
            refresh_interval_secs: 0,
        }
    }
}
