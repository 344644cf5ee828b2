//! One workspace: its WAL writer, memtable, dedup set and Delta tables, and
//! the write path that ties them together (validate → dedup → WAL fsync →
//! memtable → ack; flush → Delta commit → WAL truncation).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::filter_record_batch;
use futures::StreamExt;
use parking_lot::{Mutex, RwLock};
use tokio::sync::{Notify, oneshot};

use super::dedup::Dedup;
use super::memtable::{Frozen, MemState};
use super::{table, wal};
use crate::StoreConfig;
use crate::event::{
    ArrowInput, BatchValidator, IngestReport, Normalizer, RawEvent, ValidatedBatch,
};
use crate::{Error, Result};

/// A workspace's state as reported to operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkspaceInfo {
    /// Its name.
    pub name: String,
    /// Creation time, microseconds since the epoch.
    pub created_at: i64,
    /// Latest Delta version of `events`.
    pub events_version: i64,
    /// Active data files of `events`.
    pub events_files: usize,
    /// Acknowledged rows not yet committed to Delta.
    pub unflushed_rows: usize,
}

/// What a flush committed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlushReport {
    /// Rows committed.
    pub rows: usize,
    /// The Delta version written, if any.
    pub version: Option<i64>,
    /// Time taken.
    pub elapsed: Duration,
}

/// What a compaction did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OptimizeReport {
    /// Files removed (merged away).
    pub files_removed: u64,
    /// Files written.
    pub files_added: u64,
    /// Delta version after it.
    pub version: i64,
}

/// One merchant's isolated data.
pub struct Workspace {
    /// Itself, for the SQL tables and functions that outlive a borrow.
    me: std::sync::Weak<Workspace>,
    name: String,
    dir: PathBuf,
    created_at: i64,
    cfg: StoreConfig,
    norm: Arc<Normalizer>,
    wal_tx: Mutex<Option<mpsc::Sender<wal::WalCmd>>>,
    wal_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    state: Arc<RwLock<MemState>>,
    dedup: Mutex<Dedup>,
    write_lock: tokio::sync::Mutex<()>,
    flush_wanted: Arc<Notify>,
    /// Woken after every flush (and on close): stalled writers re-check.
    flushed: Notify,
    closed: AtomicBool,
    last_optimize: Mutex<Instant>,
    identity_lock: Arc<tokio::sync::Mutex<()>>,
    tags: crate::tag::TagState,
    segments: crate::segment::SegmentState,
    analytics: crate::analytics::AnalyticsState,
}

impl std::fmt::Debug for Workspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workspace")
            .field("name", &self.name)
            .finish()
    }
}

/// Longest a batch waits in the write stall before it is refused as
/// `UNAVAILABLE` (retrying is safe: event ids deduplicate).
const MAX_STALL: Duration = Duration::from_secs(120);

pub(crate) fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

impl Workspace {
    /// Opens (or initialises) the workspace in `dir`: loads Delta, replays
    /// the WAL tail above the last committed segment, rebuilds dedup.
    pub(crate) async fn open(
        name: &str,
        dir: &Path,
        created_at: i64,
        cfg: StoreConfig,
        norm: Arc<Normalizer>,
        tags_cfg: crate::TagsConfig,
    ) -> Result<Arc<Self>> {
        let started = Instant::now();
        let tags_every = tags_cfg.refresh_interval_secs;
        let events = table::open_or_create_events(&dir.join("events")).await?;
        let committed = table::committed_wal_seq(&events).await?.unwrap_or(0);
        let wal_dir = dir.join("wal");
        std::fs::create_dir_all(&wal_dir).map_err(|e| Error::io(&wal_dir, e))?;
        let mut state = MemState::new(events);
        let mut last_seq = committed;
        let mut replayed = 0usize;
        for (seq, path) in wal::list_segments(&wal_dir)? {
            last_seq = last_seq.max(seq);
            if seq <= committed {
                std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
                continue;
            }
            let read = wal::read_segment(&path, true)?;
            if let Some((offset, why)) = &read.cut {
                tracing::warn!(ws = %name, segment = seq, offset, reason = %why, "replay: WAL segment was torn and has been cut; rows after the cut were never acknowledged");
            }
            let mut batches = Vec::new();
            for rec in &read.records {
                batches.extend(wal::decode(rec)?);
            }
            replayed += batches.iter().map(|b| b.num_rows()).sum::<usize>();
            if !batches.is_empty() {
                state.frozen.push(Frozen {
                    segment: seq,
                    batches,
                });
            }
        }
        let mut dedup = Dedup::new(cfg.dedup_window_secs);
        load_dedup(&state, &mut dedup, cfg.dedup_window_secs).await?;
        let segment = wal::SegmentWriter::create(&wal_dir, last_seq + 1)?;
        let state = Arc::new(RwLock::new(state));
        let flush_wanted = Arc::new(Notify::new());
        let (tx, rx) = mpsc::channel();
        let writer = wal::WalWriter {
            segment,
            state: state.clone(),
            fsync: cfg.fsync,
            flush_rows: cfg.memtable_max_rows,
            flush_wanted: flush_wanted.clone(),
            workspace: name.to_string(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("wal-{name}"))
            .spawn(move || writer.run(rx))
            .map_err(|e| Error::io(&wal_dir, e))?;
        tracing::info!(ws = %name, replayed_rows = replayed, dedup_keys = dedup.len(), elapsed_ms = started.elapsed().as_millis() as u64, "workspace open");
        let ws = Arc::new_cyclic(|me| Workspace {
            me: me.clone(),
            name: name.to_string(),
            dir: dir.to_path_buf(),
            created_at,
            cfg,
            norm,
            wal_tx: Mutex::new(Some(tx)),
            wal_thread: Mutex::new(Some(thread)),
            state,
            dedup: Mutex::new(dedup),
            write_lock: tokio::sync::Mutex::new(()),
            flush_wanted,
            flushed: Notify::new(),
            closed: AtomicBool::new(false),
            last_optimize: Mutex::new(Instant::now()),
            identity_lock: Arc::new(tokio::sync::Mutex::new(())),
            tags: crate::tag::TagState::new(tags_cfg.clone()),
            segments: crate::segment::SegmentState::default(),
            analytics: crate::analytics::AnalyticsState::default(),
        });
        spawn_background(Arc::downgrade(&ws));
        if tags_every > 0 {
            crate::tag::spawn_schedule(Arc::downgrade(&ws), Duration::from_secs(tags_every));
        }
        Ok(ws)
    }

    /// The workspace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Validates, deduplicates and durably stores a batch of events. Returns
    /// once the accepted rows are fsynced to the WAL (and visible to queries).
    #[tracing::instrument(level = "debug", skip_all, fields(ws = %self.name))]
    pub async fn ingest<'a, I>(&self, rows: I) -> Result<IngestReport>
    where
        I: ExactSizeIterator<Item = RawEvent<'a>>,
    {
        self.check_batch_size(rows.len())?;
        let received = now_micros();
        let mut v = BatchValidator::new(&self.norm, received, rows.len());
        for (i, ev) in rows.enumerate() {
            v.push(i as u64, &ev);
        }
        self.store(v.finish()?, received).await
    }

    /// [`Workspace::ingest`] for a record batch in the flat event file schema
    /// (Flight `DoPut`, files). A column of the wrong type fails the whole
    /// batch with an error naming it.
    #[tracing::instrument(level = "debug", skip_all, fields(ws = %self.name))]
    pub async fn ingest_arrow(&self, batch: &RecordBatch) -> Result<IngestReport> {
        self.check_batch_size(batch.num_rows())?;
        let input = ArrowInput::new(batch)?;
        let received = now_micros();
        let out = crate::event::validate_columns(&self.norm, received, &input)?;
        self.store(out, received).await
    }

    fn check_batch_size(&self, rows: usize) -> Result<()> {
        if rows > self.cfg.max_batch_rows {
            return Err(Error::invalid(
                "events",
                format!(
                    "batch of {rows} events exceeds store.max_batch_rows = {}; split it",
                    self.cfg.max_batch_rows
                ),
            ));
        }
        Ok(())
    }

    async fn store(&self, out: ValidatedBatch, received: i64) -> Result<IngestReport> {
        let ws = self.name.clone();
        for e in &out.rejected {
            metrics::counter!("quiver_events_rejected_total", "workspace" => ws.clone(), "field" => field_label(&e.field)).increment(1);
        }
        for (reason, n) in &out.dropped {
            metrics::counter!("quiver_identifiers_dropped_total", "workspace" => ws.clone(), "reason" => reason.clone()).increment(*n);
        }
        let mut report = IngestReport {
            rejected: out.rejected,
            dropped_identifiers: out.dropped.into_iter().collect(),
            ..Default::default()
        };
        if out.batch.num_rows() == 0 {
            return Ok(report);
        }
        // Stall before dedup reserves the ids: a retry of this batch on
        // another stream must not be called a duplicate while it waits.
        self.wait_for_flush().await?;
        let fresh = self.dedup.lock().admit(&out.keys, received);
        let duplicates = fresh.iter().filter(|f| !**f).count();
        let batch = if duplicates == 0 {
            out.batch
        } else {
            let mask = arrow::array::BooleanArray::from(fresh.clone());
            filter_record_batch(&out.batch, &mask)?
        };
        report.duplicates = duplicates as u64;
        metrics::counter!("quiver_events_duplicate_total", "workspace" => ws.clone())
            .increment(duplicates as u64);
        if batch.num_rows() == 0 {
            return Ok(report);
        }
        let reserved: Vec<u128> = out
            .keys
            .iter()
            .zip(&fresh)
            .filter(|(_, f)| **f)
            .map(|(k, _)| *k)
            .collect();
        let accepted = batch.num_rows() as u64;
        match self.append_wal(batch).await {
            Ok(()) => {
                report.accepted = accepted;
                metrics::counter!("quiver_events_accepted_total", "workspace" => ws)
                    .increment(accepted);
                Ok(report)
            }
            Err(e) => {
                self.dedup.lock().forget(reserved);
                Err(e)
            }
        }
    }

    /// The write stall: waits while `store.max_unflushed_rows` rows await
    /// their Delta commit, so memory stays bounded when ingest outpaces
    /// flushing; the wait shows as a slower ack, never as an error.
    async fn wait_for_flush(&self) -> Result<()> {
        let mut stalled: Option<Instant> = None;
        loop {
            let flushed = self.flushed.notified();
            tokio::pin!(flushed);
            flushed.as_mut().enable();
            if self.closed.load(Ordering::SeqCst) {
                return Err(Error::Unavailable(format!(
                    "workspace `{}` is closing",
                    self.name
                )));
            }
            if self.state.read().unflushed_rows() < self.cfg.max_unflushed_rows.max(1) {
                if let Some(t) = stalled {
                    metrics::histogram!("quiver_write_stall_seconds")
                        .record(t.elapsed().as_secs_f64());
                }
                return Ok(());
            }
            let since = *stalled.get_or_insert_with(Instant::now);
            let Some(left) = MAX_STALL.checked_sub(since.elapsed()) else {
                return Err(Error::Unavailable(format!(
                    "workspace `{}`: ingest stalled {}s waiting for {} rows to reach Delta (see the server log for flush errors); retry later",
                    self.name,
                    MAX_STALL.as_secs(),
                    self.state.read().unflushed_rows()
                )));
            };
            self.flush_wanted.notify_one();
            let _ = tokio::time::timeout(left, flushed).await;
        }
    }

    async fn append_wal(&self, batch: RecordBatch) -> Result<()> {
        let payload = wal::encode(&batch)?;
        let (done, rx) = oneshot::channel();
        self.send(wal::WalCmd::Append {
            batch,
            payload,
            done,
        })?;
        rx.await
            .map_err(|_| Error::Unavailable(format!("workspace `{}` is closing", self.name)))?
    }

    fn send(&self, cmd: wal::WalCmd) -> Result<()> {
        let guard = self.wal_tx.lock();
        let tx = guard
            .as_ref()
            .ok_or_else(|| Error::Unavailable(format!("workspace `{}` is closed", self.name)))?;
        tx.send(cmd).map_err(|_| {
            Error::Unavailable(format!("workspace `{}` WAL writer stopped", self.name))
        })
    }

    /// Commits every acknowledged row to Delta, then truncates the WAL.
    #[tracing::instrument(level = "debug", skip_all, fields(ws = %self.name))]
    pub async fn flush(&self) -> Result<FlushReport> {
        let _w = self.write_lock.lock().await;
        let started = Instant::now();
        if self.state.read().active_rows > 0 {
            let (done, rx) = oneshot::channel();
            self.send(wal::WalCmd::Rotate { done })?;
            rx.await
                .map_err(|_| Error::Unavailable("WAL writer stopped".into()))??;
        }
        let (batches, seq, table) = {
            let st = self.state.read();
            let seq = st.frozen.iter().map(|f| f.segment).max();
            let batches: Vec<RecordBatch> = st
                .frozen
                .iter()
                .flat_map(|f| f.batches.iter().cloned())
                .collect();
            (batches, seq, st.table.clone())
        };
        let Some(seq) = seq else {
            return Ok(FlushReport::default());
        };
        let rows = batches.iter().map(|b| b.num_rows()).sum();
        let commit_started = Instant::now();
        let table = table::append(table, batches, seq).await?;
        metrics::histogram!("quiver_delta_commit_seconds")
            .record(commit_started.elapsed().as_secs_f64());
        let version = table.version().map(|v| v as i64);
        {
            let mut st = self.state.write();
            st.table = table;
            st.frozen.retain(|f| f.segment > seq);
        }
        self.flushed.notify_waiters();
        let wal_dir = self.dir.join("wal");
        for (s, path) in wal::list_segments(&wal_dir)? {
            if s <= seq {
                std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
            }
        }
        let elapsed = started.elapsed();
        metrics::histogram!("quiver_flush_seconds").record(elapsed.as_secs_f64());
        tracing::info!(ws = %self.name, rows, version, elapsed_ms = elapsed.as_millis() as u64, "flushed memtable to Delta");
        Ok(FlushReport {
            rows,
            version,
            elapsed,
        })
    }

    /// Compacts small files of `events` (Delta `optimize`).
    pub async fn optimize(&self) -> Result<OptimizeReport> {
        let _w = self.write_lock.lock().await;
        let table = self.state.read().table.clone();
        let (table, removed, added) = table::optimize(table, self.cfg.optimize_target_mb).await?;
        let version = table.version().map_or(-1, |v| v as i64);
        self.state.write().table = table;
        *self.last_optimize.lock() = Instant::now();
        tracing::info!(ws = %self.name, removed, added, version, "optimized events");
        Ok(OptimizeReport {
            files_removed: removed,
            files_added: added,
            version,
        })
    }

    pub(crate) async fn write_guard(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.write_lock.lock().await
    }

    /// Current state for operators.
    pub fn info(&self) -> WorkspaceInfo {
        let st = self.state.read();
        WorkspaceInfo {
            name: self.name.clone(),
            created_at: self.created_at,
            events_version: st.table.version().map_or(-1, |v| v as i64),
            events_files: table::file_count(&st.table),
            unflushed_rows: st.unflushed_rows(),
        }
    }

    /// The identifier normaliser (for looking values up as they were stored).
    pub(crate) fn normalizer(&self) -> &Normalizer {
        &self.norm
    }

    /// Held by an identity run, and by any thread it left writing: one at
    /// a time per workspace.
    pub(crate) async fn identity_lock(&self) -> tokio::sync::OwnedMutexGuard<()> {
        Arc::clone(&self.identity_lock).lock_owned().await
    }

    /// Whether [`Workspace::close`] ran (the workspace was dropped).
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Tag definitions' lock, latest index and config.
    pub(crate) fn tag_state(&self) -> &crate::tag::TagState {
        &self.tags
    }

    pub(crate) fn segment_state(&self) -> &crate::segment::SegmentState {
        &self.segments
    }

    pub(crate) fn analytics_state(&self) -> &crate::analytics::AnalyticsState {
        &self.analytics
    }

    /// This workspace as an `Arc` (it always lives in one).
    pub(crate) fn arc(&self) -> Result<Arc<Workspace>> {
        self.me
            .upgrade()
            .ok_or_else(|| Error::Internal(format!("workspace `{}` is closing", self.name)))
    }

    /// A consistent view for queries: the committed table and the rows above it.
    pub(crate) fn read_view(&self) -> (deltalake_core::DeltaTable, Vec<RecordBatch>) {
        let st = self.state.read();
        (st.table.clone(), st.unflushed())
    }

    fn flush_due(&self) -> bool {
        let st = self.state.read();
        !st.frozen.is_empty()
            || st.active_rows >= self.cfg.memtable_max_rows
            || st.unflushed_rows() >= self.cfg.max_unflushed_rows
            || st
                .active_since
                .is_some_and(|t| t.elapsed() >= self.cfg.flush_interval())
    }

    async fn maybe_optimize(&self) -> Result<()> {
        let every = self.cfg.optimize_interval_secs;
        if every == 0 || self.last_optimize.lock().elapsed() < Duration::from_secs(every) {
            return Ok(());
        }
        *self.last_optimize.lock() = Instant::now();
        let files = table::file_count(&self.state.read().table);
        if files >= self.cfg.optimize_min_small_files {
            self.optimize().await?;
        }
        Ok(())
    }

    /// Stops the WAL writer (after it drains). Acknowledged rows stay in the WAL.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.flush_wanted.notify_one();
        self.flushed.notify_waiters();
        self.wal_tx.lock().take();
        if let Some(t) = self.wal_thread.lock().take() {
            let _ = t.join();
        }
    }
}

fn field_label(field: &str) -> String {
    field.split([' ', '[']).next().unwrap_or(field).to_string()
}

fn spawn_background(ws: std::sync::Weak<Workspace>) {
    tokio::spawn(async move {
        loop {
            let notify = match ws.upgrade() {
                Some(w) if !w.closed.load(Ordering::SeqCst) => w.flush_wanted.clone(),
                _ => return,
            };
            tokio::select! {
                _ = notify.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            let Some(w) = ws.upgrade() else { return };
            if w.closed.load(Ordering::SeqCst) {
                return;
            }
            if w.flush_due()
                && let Err(e) = w.flush().await
            {
                tracing::warn!(ws = %w.name, error = %e, "background flush failed; will retry");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            if let Err(e) = w.maybe_optimize().await {
                tracing::warn!(ws = %w.name, error = %e, "background optimize failed");
            }
        }
    });
}

/// Rebuilds the dedup set: ids received within the window from Delta, and
/// every replayed row.
async fn load_dedup(state: &MemState, dedup: &mut Dedup, window_secs: u64) -> Result<()> {
    let cutoff = now_micros() - (window_secs as i64).saturating_mul(1_000_000);
    if state.table.version().unwrap_or(0) > 0 {
        dedup.reserve(super::table::rows_received_since(&state.table, cutoff));
    }
    let mut add = |b: &RecordBatch| -> Result<()> {
        let ids = b
            .column_by_name("event_id")
            .and_then(|c| c.as_string_opt::<i32>().cloned())
            .ok_or_else(|| Error::Internal("event_id is not a string column".into()))?;
        let at = b
            .column_by_name("received_at")
            .and_then(|c| {
                c.as_primitive_opt::<arrow::datatypes::TimestampMicrosecondType>()
                    .cloned()
            })
            .ok_or_else(|| Error::Internal("received_at is not a timestamp column".into()))?;
        for i in 0..ids.len() {
            if ids.is_valid(i) && at.is_valid(i) && at.value(i) >= cutoff {
                dedup.remember(crate::event::event_key(ids.value(i)), at.value(i));
            }
        }
        Ok(())
    };
    for b in state.unflushed() {
        add(&b)?;
    }
    if state.table.version().unwrap_or(0) > 0 {
        let mut stream = crate::query::recent_event_ids(&state.table, cutoff).await?;
        while let Some(b) = stream.next().await {
            add(&b?)?;
        }
    }
    Ok(())
}
