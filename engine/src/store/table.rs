//! The workspace's Delta Lake tables (deltalake-core): create, append as one
//! commit that records the WAL segment it covers (a Delta `txn` action with
//! app id [`WAL_APP_ID`]), compaction, and the DataFusion provider.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Date32Type, SchemaRef};
use buoyant_kernel::expressions::Scalar;
use datafusion::catalog::TableProvider;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::session_state::SessionState;
use datafusion::prelude::SessionConfig;
use deltalake_core::DeltaTable;
use deltalake_core::datafile::writer::{DeltaWriter, WriterConfig};
use deltalake_core::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake_core::kernel::transaction::{CommitBuilder, CommitProperties, TableReference};
use deltalake_core::kernel::{Action, StructType, Transaction};
use deltalake_core::operations::write::WriterStatsConfig;
use deltalake_core::parquet::basic::{Compression, ZstdLevel};
use deltalake_core::parquet::file::properties::WriterProperties;
use deltalake_core::parquet::schema::types::ColumnPath;
use deltalake_core::protocol::DeltaOperation;
use deltalake_core::protocol::SaveMode;
use indexmap::IndexMap;

use crate::event::events_schema;
use crate::{Error, Result};

/// The Delta `txn` application id under which flushes record their WAL segment.
pub(crate) const WAL_APP_ID: &str = "quiver-wal";

fn url_of(path: &Path) -> Result<url::Url> {
    let abs = std::path::absolute(path).map_err(|e| Error::io(path, e))?;
    url::Url::from_directory_path(&abs)
        .map_err(|_| Error::Internal(format!("`{}` is not an absolute path", abs.display())))
}

/// Opens the `events` table at `path`, creating it (empty, partitioned by `event_date`) if absent.
pub(crate) async fn open_or_create_events(path: &Path) -> Result<DeltaTable> {
    std::fs::create_dir_all(path).map_err(|e| Error::io(path, e))?;
    let url = url_of(path)?;
    if path.join("_delta_log").is_dir() {
        return Ok(deltalake_core::open_table(url).await?);
    }
    let schema: StructType = events_schema().as_ref().try_into_kernel()?;
    let table = deltalake_core::operations::create::CreateBuilder::new()
        .with_location(url.to_string())
        .with_columns(schema.fields().cloned())
        .with_partition_columns([PARTITION])
        .with_table_name("events")
        .with_comment("Quiver events: one row per accepted event")
        .await?;
    Ok(table)
}

/// Columns with few distinct values, worth a Parquet dictionary. The others
/// (event ids, times, identifier values, SKUs, amounts, free-form property
/// values) are mostly unique: a dictionary there costs a hash lookup per value
/// on every flush, only to be abandoned when it outgrows its page.
const DICTIONARY_COLUMNS: [&str; 9] = [
    "received_at",
    "channel",
    "event_type",
    "identifiers.list.element.kind",
    "category",
    "currency",
    "store_id",
    "campaign",
    "properties.key_value.key",
];

/// How a file of `events` is encoded. A flush writes one small file per
/// event date it holds (a backfill of a year: about 366 files of a few
/// thousand rows per flush), so it takes LZ4, whose codec costs nothing to
/// set up: a ZSTD codec is a compression and a decompression context per
/// column chunk, each allocating its workspace and asking the CPU for its
/// features (`cpuid`, a trap to the hypervisor on a VM). Compaction writes
/// the long-lived files and takes ZSTD (after a 1M-person backfill: 387 MB
/// of ZSTD files against 584 MB of LZ4).
fn writer_properties(compression: Compression) -> WriterProperties {
    DICTIONARY_COLUMNS
        .iter()
        .fold(
            WriterProperties::builder()
                .set_compression(compression)
                .set_max_row_group_row_count(Some(256 * 1024))
                .set_dictionary_enabled(false),
            |b, c| {
                let path: Vec<String> = c.split('.').map(str::to_string).collect();
                b.set_column_dictionary_enabled(ColumnPath::new(path), true)
            },
        )
        .build()
}

/// Appends `batches` as one commit that also records `wal_seq` as committed.
///
/// The rows are grouped by `event_date` here: one sort of every row by date,
/// then each date's rows gathered (one `interleave` per column) into one
/// batch just before the Delta writer encodes it, so only one date's copy
/// is alive at a time. Gathering the whole flush first (one sorted copy of
/// up to a million rows, then a slice per date) raised a `DoPut` load's
/// peak RSS by about 330 MB, and the first touch of those pages was half
/// of the grouping's CPU in its profile. Handing the batches to delta-rs's
/// `write` instead
/// splits each batch by partition with one `take` per column and date: a
/// flush of ingest batches that each span a few hundred dates became tens of
/// thousands of tiny takes and Parquet mini-batches, a quarter of the
/// server's CPU during a `DoPut` load.
pub(crate) async fn append(
    mut table: DeltaTable,
    batches: Vec<RecordBatch>,
    wal_seq: u64,
) -> Result<DeltaTable> {
    let props = CommitProperties::default()
        .with_application_transaction(Transaction::new(WAL_APP_ID, wal_seq as i64));
    if batches.iter().all(|b| b.num_rows() == 0) {
        return Ok(table);
    }
    let schema = events_schema();
    let stats = WriterStatsConfig::from_config(table.snapshot()?.snapshot().table_configuration());
    let config = WriterConfig::new(
        schema.clone(),
        vec![PARTITION.to_string()],
        Some(writer_properties(Compression::LZ4_RAW)),
        None,
        None,
        stats.num_indexed_cols,
        stats.stats_columns,
    );
    let mut writer = DeltaWriter::new(table.object_store(), config);
    let columns: Vec<Vec<&dyn Array>> = (0..schema.fields().len())
        .map(|c| batches.iter().map(|b| b.column(c).as_ref()).collect())
        .collect();
    for (day, rows) in by_date(&schema, &batches)? {
        let values: IndexMap<String, Scalar> =
            std::iter::once((PARTITION.to_string(), Scalar::Date(day))).collect();
        let gathered = columns
            .iter()
            .map(|arrays| arrow::compute::interleave(arrays, &rows))
            .collect::<std::result::Result<Vec<_>, _>>()
            .and_then(|c| RecordBatch::try_new(schema.clone(), c));
        let written = match gathered {
            Ok(batch) => writer.write_partition(batch, &values).await,
            Err(e) => Err(e.into()),
        };
        if let Err(e) = written {
            let _ = writer.abort().await;
            return Err(e.into());
        }
    }
    let actions: Vec<Action> = writer.close().await?.into_iter().map(Action::Add).collect();
    let operation = DeltaOperation::Write {
        mode: SaveMode::Append,
        partition_by: Some(vec![PARTITION.to_string()]),
        predicate: None,
    };
    let commit = CommitBuilder::from(props)
        .with_actions(actions)
        .build(
            Some(table.snapshot()? as &dyn TableReference),
            table.log_store(),
            operation,
        )
        .await?;
    table.load_version(commit.version).await?;
    Ok(table)
}

/// The partition column of `events`.
const PARTITION: &str = "event_date";

/// One date's rows: the date and each row's `(batch, row)`.
type DateRows = (i32, Vec<(usize, usize)>);

/// Where the rows of `batches` (all in `schema`) are, grouped by their
/// `event_date`: in date order, rows in arrival order within a date.
fn by_date(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<DateRows>> {
    let at = schema.index_of(PARTITION)?;
    let mut rows: Vec<(i32, usize, usize)> = Vec::new();
    for (b, batch) in batches.iter().enumerate() {
        let days = batch
            .column(at)
            .as_primitive_opt::<Date32Type>()
            .ok_or_else(|| Error::Internal(format!("`{PARTITION}` is not a Date32 column")))?;
        if days.null_count() > 0 {
            return Err(Error::Internal(format!("`{PARTITION}` holds nulls")));
        }
        rows.extend(days.values().iter().enumerate().map(|(r, &d)| (d, b, r)));
    }
    // stable: a date's rows stay in arrival order
    rows.sort_by_key(|&(d, _, _)| d);
    let mut out = Vec::new();
    for run in rows.chunk_by(|a, b| a.0 == b.0) {
        out.push((run[0].0, run.iter().map(|&(_, b, r)| (b, r)).collect()));
    }
    Ok(out)
}

/// The highest WAL segment whose rows are committed to `table`.
pub(crate) async fn committed_wal_seq(table: &DeltaTable) -> Result<Option<u64>> {
    let state = table.snapshot()?;
    let v = state
        .transaction_version(table.log_store().as_ref(), WAL_APP_ID)
        .await?;
    Ok(v.map(|v| v.max(0) as u64))
}

/// An upper bound, from the data files' statistics, on the rows received at
/// or after `cutoff` (µs): the row counts of every file whose largest
/// `received_at` is not older (or unknown). Sizes the dedup set on open.
pub(crate) fn rows_received_since(table: &DeltaTable, cutoff: i64) -> usize {
    let Ok(state) = table.snapshot() else {
        return 0;
    };
    state
        .log_data()
        .iter()
        .filter_map(|file| {
            let stats: serde_json::Value = serde_json::from_str(&file.stats()?).ok()?;
            let newest = stats["maxValues"]["received_at"].as_str().and_then(|t| {
                arrow::compute::kernels::cast_utils::string_to_timestamp_nanos(t).ok()
            });
            // statistics keep milliseconds: round the bound up to the next one
            if newest.is_some_and(|n| n / 1000 + 1000 < cutoff) {
                return None;
            }
            stats["numRecords"].as_u64().map(|n| n as usize)
        })
        .sum()
}

/// Rows in the table's data files, from their statistics (files without
/// statistics count none): a size to reserve before reading it.
pub(crate) fn num_records(table: &DeltaTable) -> usize {
    rows_received_since(table, i64::MIN)
}

/// Number of active data files.
pub(crate) fn file_count(table: &DeltaTable) -> usize {
    table.get_file_uris().map(|i| i.count()).unwrap_or(0)
}

/// Bin-packs small files into files of about `target_mb` MiB.
///
/// The rewrite runs in an engine session: delta-rs's own session reads
/// strings as `Utf8View` and writes the compacted files with view types in
/// their Arrow schema, which every later scan decodes as views and casts
/// back to the table's `Utf8` (a sixth of a large Flight SQL `SELECT`).
pub(crate) async fn optimize(table: DeltaTable, target_mb: u64) -> Result<(DeltaTable, u64, u64)> {
    let session = SessionStateBuilder::new()
        .with_config(session_config())
        .build();
    let (table, metrics) = table
        .optimize()
        .with_session_state(Arc::new(session))
        .with_target_size(
            std::num::NonZeroU64::new(target_mb.max(1) * 1024 * 1024)
                .unwrap_or(std::num::NonZeroU64::MIN),
        )
        .with_writer_properties(writer_properties(Compression::ZSTD(
            ZstdLevel::try_new(1).unwrap_or_default(),
        )))
        .await?;
    Ok((table, metrics.num_files_removed, metrics.num_files_added))
}

/// The DataFusion settings every engine read runs with (`target_partitions`
/// = the cores). Strings come out of Parquet as plain `Utf8`, not the
/// `Utf8View` DataFusion defaults to: every reader in the engine and every
/// Flight SQL client wants `Utf8`, and decoding views only to cast them back
/// cost a sixth of a large `SELECT`'s server time.
pub(crate) fn session_config() -> SessionConfig {
    let mut cfg = SessionConfig::new()
        .with_target_partitions(std::thread::available_parallelism().map_or(2, |n| n.get()));
    cfg.options_mut().execution.parquet.schema_force_view_types = false;
    cfg
}

/// A DataFusion provider pinned to the table's current snapshot, with plain
/// `Utf8` strings (see [`session_config`]; the executing session must agree,
/// or the scan casts every string column to the provider's types). The
/// files [`optimize`] wrote before it ran in an engine session hold views and
/// are still read as views and cast.
pub(crate) async fn provider(table: &DeltaTable) -> Result<Arc<dyn TableProvider>> {
    // The provider takes its scan settings from a session: view types off,
    // Parquet filter pushdown on (delta-rs's own default without a session).
    static SCAN: std::sync::OnceLock<Arc<SessionState>> = std::sync::OnceLock::new();
    let scan = SCAN.get_or_init(|| {
        let mut cfg = session_config();
        cfg.options_mut().execution.parquet.pushdown_filters = true;
        Arc::new(SessionStateBuilder::new().with_config(cfg).build())
    });
    Ok(table.table_provider().with_session(scan.clone()).await?)
}
