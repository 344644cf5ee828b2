//! The identity outputs as Delta tables of the workspace, and the small state
//! file the next run starts from:
//!
//! - `identifiers (kind, value, person_id, ordinal, first_seen, last_seen)`: every
//!   value in a person (quarantined and blocklisted values are not);
//! - `persons (person_id, ordinal, created_at, merged_into, identifiers, first_seen,
//!   last_seen)`: live persons (`merged_into` null) and retired ones (`merged_into` the
//!   survivor, or empty when the person's values all left);
//! - `identity_history (run, at, kind, person_ids, evidence)`: merges, splits,
//!   quarantines and refused unions, appended per run;
//! - `identity_state.json`: the run counter, the quarantined values and the
//!   refused unions of the last run (so history records only what is new, and
//!   `explain` can say why two values are apart).
//!
//! `identifiers` and `persons` are rewritten per run as one Delta commit each
//! (time travel gives earlier runs).

use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use arrow::array::{
    Array, ArrayRef, AsArray, Int64Array, ListBuilder, RecordBatch, StringArray, StringBuilder,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, TimeUnit};
use deltalake_core::DeltaTable;
use deltalake_core::parquet::basic::Compression;
use deltalake_core::parquet::file::properties::WriterProperties;
use deltalake_core::parquet::schema::types::ColumnPath;
use deltalake_core::protocol::SaveMode;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::assign::{Change, Person, PrevPerson, Previous};
use super::components::NONE;
use super::graph::{Graph, Strings};
use crate::event::TZ;
use crate::store::table_provider;
use crate::{Error, Result};

/// Directory names of the identity tables inside a workspace.
pub(crate) const IDENTIFIERS: &str = "identifiers";
pub(crate) const PERSONS: &str = "persons";
pub(crate) const HISTORY: &str = "identity_history";
const STATE: &str = "identity_state.json";

pub(crate) fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some(TZ.into()))
}

static IDENTIFIERS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("kind", DataType::Utf8, false),
        Field::new("value", DataType::Utf8, false),
        Field::new("person_id", DataType::Utf8, false),
        Field::new("ordinal", DataType::Int64, false),
        Field::new("first_seen", ts(), false),
        Field::new("last_seen", ts(), false),
    ]))
});

static PERSONS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("person_id", DataType::Utf8, false),
        Field::new("ordinal", DataType::Int64, false),
        Field::new("created_at", ts(), false),
        Field::new("merged_into", DataType::Utf8, true),
        Field::new("identifiers", DataType::Int64, false),
        Field::new("first_seen", ts(), true),
        Field::new("last_seen", ts(), true),
    ]))
});

static HISTORY_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("run", DataType::Int64, false),
        Field::new("at", ts(), false),
        Field::new("kind", DataType::Utf8, false),
        Field::new(
            "person_ids",
            DataType::List(Arc::new(Field::new("element", DataType::Utf8, true))),
            false,
        ),
        Field::new("evidence", DataType::Utf8, false),
    ]))
});

/// A quarantined value, as kept in the state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantinedValue {
    /// Identifier kind.
    pub kind: String,
    /// Normalised value.
    pub value: String,
    /// Distinct persons its links would have joined.
    pub persons: u32,
    /// The limit (K) it exceeded.
    pub limit: u32,
}

/// A refused union, as kept in the state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedUnion {
    /// One end: `kind:value`.
    pub a: String,
    /// The other end.
    pub b: String,
    /// The capped class that would have overflowed (`member`, `openid:wx1`).
    pub class: String,
    /// Values of that class the merged person would have held.
    pub would_hold: u32,
    /// The cap.
    pub cap: u32,
}

/// What a run leaves for the next one besides the tables.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct State {
    pub run: u64,
    pub at: i64,
    pub quarantined: Vec<QuarantinedValue>,
    pub refused: Vec<RefusedUnion>,
    /// The Delta version of `events` the run covered.
    pub events_version: Option<u64>,
    /// Hash of the rules the run used; other rules mean a full run.
    pub rules_hash: String,
}

fn state_path(dir: &Path) -> PathBuf {
    dir.join(STATE)
}

pub(crate) fn read_state(dir: &Path) -> Result<State> {
    let path = state_path(dir);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| Error::Internal(format!("`{}` is not valid: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Writes the state file atomically (temp file, fsync, rename).
pub(crate) fn write_state(dir: &Path, state: &State) -> Result<()> {
    let path = state_path(dir);
    let tmp = dir.join(format!("{STATE}.tmp"));
    let bytes = serde_json::to_vec(state).map_err(|e| Error::Internal(e.to_string()))?;
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        f.write_all(&bytes).map_err(|e| Error::io(&tmp, e))?;
        f.sync_all().map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))
}

pub(crate) fn url_of(path: &Path) -> Result<url::Url> {
    std::fs::create_dir_all(path).map_err(|e| Error::io(path, e))?;
    let abs = std::path::absolute(path).map_err(|e| Error::io(path, e))?;
    url::Url::from_directory_path(&abs)
        .map_err(|_| Error::Internal(format!("`{}` is not an absolute path", abs.display())))
}

/// Opens the Delta table at `path` if it exists.
pub(crate) async fn open(path: &Path) -> Result<Option<DeltaTable>> {
    if !path.join("_delta_log").is_dir() {
        return Ok(None);
    }
    let url = url_of(path)?;
    Ok(Some(deltalake_core::open_table(url).await?))
}

/// The table at `path` to write into: opened, or unloaded when it does not
/// exist yet (the write creates it).
async fn for_write(path: &Path) -> Result<DeltaTable> {
    let url = url_of(path)?;
    Ok(if path.join("_delta_log").is_dir() {
        deltalake_core::open_table(url).await?
    } else {
        deltalake_core::DeltaTableBuilder::from_url(url)?.build()?
    })
}

/// How the identity (and profile) tables are encoded: LZ4, several times
/// faster to compress than the default Snappy at about the same size, and
/// no dictionary for the columns whose values are mostly unique (there a
/// dictionary costs a hash lookup per value, only to be abandoned when it
/// outgrows its page).
fn writer_properties() -> WriterProperties {
    ["value", "person_id", "evidence"]
        .into_iter()
        .fold(
            WriterProperties::builder().set_compression(Compression::LZ4_RAW),
            |b, c| b.set_column_dictionary_enabled(ColumnPath::from(c), false),
        )
        .build()
}

pub(crate) async fn write(path: &Path, batches: Vec<RecordBatch>, mode: SaveMode) -> Result<()> {
    for_write(path)
        .await?
        .write(batches)
        .with_writer_properties(writer_properties())
        .with_save_mode(mode)
        .await
        .map_err(Error::from)?;
    Ok(())
}

/// One partition that yields the batches of an iterator, built one at a time
/// as the write pulls them.
struct Batches {
    schema: SchemaRef,
    batches: std::sync::Mutex<Option<BatchIter>>,
}

pub(crate) type BatchIter = Box<dyn Iterator<Item = Result<RecordBatch>> + Send>;

impl std::fmt::Debug for Batches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Batches")
    }
}

impl datafusion::physical_plan::streaming::PartitionStream for Batches {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(
        &self,
        _ctx: Arc<datafusion::execution::TaskContext>,
    ) -> datafusion::execution::SendableRecordBatchStream {
        use datafusion::error::DataFusionError;
        let taken = self.batches.lock().ok().and_then(|mut b| b.take());
        let batches: BatchIter = taken.unwrap_or_else(|| {
            Box::new(std::iter::once(Err(Error::Internal(
                "a batch stream was read twice".into(),
            ))))
        });
        let stream = futures::stream::iter(
            batches.map(|b| b.map_err(|e| DataFusionError::External(Box::new(e)))),
        );
        Box::pin(
            datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(
                self.schema.clone(),
                stream,
            ),
        )
    }
}

/// Writes the batches `batches` yields to the Delta table at `path` as one
/// commit, pulling each only when the writer wants it: a table larger than
/// memory never exists in memory as a whole (what [`write`] needs).
pub(crate) async fn write_stream(
    path: &Path,
    schema: SchemaRef,
    batches: impl Iterator<Item = Result<RecordBatch>> + Send + 'static,
    mode: SaveMode,
) -> Result<()> {
    use datafusion::catalog::streaming::StreamingTable;
    use datafusion::datasource::provider_as_source;
    use datafusion::logical_expr::LogicalPlanBuilder;
    let source = Arc::new(Batches {
        schema: schema.clone(),
        batches: std::sync::Mutex::new(Some(Box::new(batches))),
    });
    let provider = StreamingTable::try_new(schema, vec![source])?;
    let plan = LogicalPlanBuilder::scan("source", provider_as_source(Arc::new(provider)), None)?
        .build()?;
    for_write(path)
        .await?
        .write(Vec::new())
        .with_input_plan(plan)
        .with_writer_properties(writer_properties())
        .with_save_mode(mode)
        .await
        .map_err(Error::from)?;
    Ok(())
}

/// Overwrites the Delta table at `path` (created empty first when absent)
/// with what `parts` yield, in one commit. Each part is encoded by its own
/// Parquet writer on its own task: delta-rs encodes an unpartitioned table's
/// write on a single task, and the identity and profile tables are their
/// runs' largest writes.
pub(crate) async fn overwrite_in_parts(
    path: &Path,
    schema: SchemaRef,
    parts: Vec<BatchIter>,
) -> Result<()> {
    use deltalake_core::datafile::writer::{DeltaWriter, WriterConfig};
    use deltalake_core::kernel::Action;
    use deltalake_core::kernel::transaction::{CommitBuilder, TableReference};
    use deltalake_core::operations::write::WriterStatsConfig;
    use deltalake_core::protocol::DeltaOperation;
    use futures::TryStreamExt;
    if !path.join("_delta_log").is_dir() {
        write_stream(
            path,
            schema.clone(),
            std::iter::empty(),
            SaveMode::Overwrite,
        )
        .await?;
    }
    let table = for_write(path).await?;
    let snapshot = table.snapshot()?;
    let stats = WriterStatsConfig::from_config(snapshot.snapshot().table_configuration());
    let config = WriterConfig::new(
        schema,
        Vec::new(),
        Some(writer_properties()),
        None,
        None,
        stats.num_indexed_cols,
        stats.stats_columns,
    );
    let tasks: Vec<_> = parts
        .into_iter()
        .map(|batches| {
            let mut writer = DeltaWriter::new(table.object_store(), config.clone());
            tokio::spawn(async move {
                for batch in batches {
                    let written = match batch {
                        Ok(b) => writer.write(&b).await.map_err(Error::from),
                        Err(e) => Err(e),
                    };
                    if let Err(e) = written {
                        let _ = writer.abort().await;
                        return Err(e);
                    }
                }
                writer.close().await.map_err(Error::from)
            })
        })
        .collect();
    let mut actions = Vec::new();
    let mut failed = None;
    for task in tasks {
        match task.await {
            Ok(Ok(adds)) => actions.extend(adds.into_iter().map(Action::Add)),
            Ok(Err(e)) => failed = failed.or(Some(e)),
            Err(e) => {
                failed = failed.or(Some(Error::Internal(format!("identity table writer: {e}"))))
            }
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    actions.extend(
        snapshot
            .snapshot()
            .file_views(&table.log_store(), None)
            .map_ok(|f| Action::Remove(f.remove_action(true)))
            .try_collect::<Vec<_>>()
            .await?,
    );
    let operation = DeltaOperation::Write {
        mode: SaveMode::Overwrite,
        partition_by: None,
        predicate: None,
    };
    CommitBuilder::default()
        .with_actions(actions)
        .build(
            Some(snapshot as &dyn TableReference),
            table.log_store(),
            operation,
        )
        .await?;
    Ok(())
}

const CHUNK: usize = 256 * 1024;

fn micros(values: Vec<i64>) -> TimestampMicrosecondArray {
    TimestampMicrosecondArray::from(values).with_timezone(TZ)
}

/// Writes `identifiers` and `persons` (overwrite) and appends the history.
///
/// `node_person[n]` is node `n`'s index into `persons` ([`NONE`]: in no person);
/// `retired` are the persons no longer live (their `merged_into` set).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn write_outputs(
    dir: &Path,
    g: Arc<Graph>,
    node_person: Arc<Vec<u32>>,
    persons: Arc<Vec<Person>>,
    retired: &[PrevPerson],
    history: Vec<Change>,
    run: u64,
    now: i64,
) -> Result<()> {
    // identifiers: in two halves of the nodes, each encoded on its own task
    // from chunks built as its writer pulls them (the 3 M-row table never
    // sits in memory whole); persons and the history are written meanwhile
    // (three tables, three commits).
    let n_nodes = g.len() as u32;
    let parts: Vec<BatchIter> = [(0, n_nodes / 2), (n_nodes / 2, n_nodes)]
        .into_iter()
        .map(|(from, to)| {
            let (g, node_person, persons) = (g.clone(), node_person.clone(), persons.clone());
            Box::new(identifier_batches(g, node_person, persons, from, to)) as BatchIter
        })
        .collect();
    let identifiers = {
        let path = dir.join(IDENTIFIERS);
        async move {
            let t = std::time::Instant::now();
            overwrite_in_parts(&path, IDENTIFIERS_SCHEMA.clone(), parts).await?;
            tracing::debug!(ms = t.elapsed().as_secs_f64() * 1e3, "identifiers written");
            Ok::<(), Error>(())
        }
    };
    let others =
        write_persons_and_history(dir, &g, &node_person, &persons, retired, history, run, now);
    futures::future::try_join(identifiers, others).await?;
    Ok(())
}

/// The `identifiers` rows of nodes `from..to` that are in a person, in
/// chunks built one at a time as they are pulled.
fn identifier_batches(
    g: Arc<Graph>,
    node_person: Arc<Vec<u32>>,
    persons: Arc<Vec<Person>>,
    from: u32,
    to: u32,
) -> impl Iterator<Item = Result<RecordBatch>> + Send + 'static {
    let mut next = from;
    std::iter::from_fn(move || {
        let chunk: Vec<u32> = (next..to)
            .filter(|&n| node_person[n as usize] != NONE)
            .take(CHUNK)
            .collect();
        next = chunk.last().map_or(to, |&n| n + 1);
        if chunk.is_empty() {
            return None;
        }
        let owner = |n: u32| &persons[node_person[n as usize] as usize];
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(
                chunk.iter().map(|&n| g.kind(n)),
            )),
            Arc::new(StringArray::from_iter_values(
                chunk.iter().map(|&n| g.value(n)),
            )),
            Arc::new(StringArray::from_iter_values(
                chunk.iter().map(|&n| &owner(n).person_id),
            )),
            Arc::new(Int64Array::from_iter_values(
                chunk.iter().map(|&n| i64::from(owner(n).ordinal)),
            )),
            Arc::new(micros(chunk.iter().map(|&n| g.first_seen(n)).collect())),
            Arc::new(micros(chunk.iter().map(|&n| g.last_seen(n)).collect())),
        ];
        Some(RecordBatch::try_new(IDENTIFIERS_SCHEMA.clone(), cols).map_err(Error::from))
    })
}

/// The `persons` (overwrite) and `identity_history` (append) tables of a run.
#[allow(clippy::too_many_arguments)]
async fn write_persons_and_history(
    dir: &Path,
    g: &Graph,
    node_person: &[u32],
    persons: &[Person],
    retired: &[PrevPerson],
    history: Vec<Change>,
    run: u64,
    now: i64,
) -> Result<()> {
    // persons: this run's live persons, then the retired ones.
    let np = persons.len();
    let mut count = vec![0i64; np];
    let mut first = vec![i64::MAX; np];
    let mut last = vec![i64::MIN; np];
    for (n, &p) in node_person.iter().enumerate() {
        if p != NONE {
            let p = p as usize;
            count[p] += 1;
            first[p] = first[p].min(g.first_seen(n as u32));
            last[p] = last[p].max(g.last_seen(n as u32));
        }
    }
    let mut id = StringBuilder::new();
    let mut ord = Vec::new();
    let mut created = Vec::new();
    let mut merged = StringBuilder::new();
    let mut n_ids = Vec::new();
    let (mut fs, mut ls) = (Vec::new(), Vec::new());
    for (i, p) in persons.iter().enumerate() {
        id.append_value(&p.person_id);
        ord.push(i64::from(p.ordinal));
        created.push(p.created_at);
        merged.append_null();
        n_ids.push(count[i]);
        fs.push(Some(first[i]));
        ls.push(Some(last[i]));
    }
    for p in retired {
        id.append_value(&p.person_id);
        ord.push(i64::from(p.ordinal));
        created.push(p.created_at);
        merged.append_option(p.merged_into.as_deref());
        n_ids.push(0);
        fs.push(None);
        ls.push(None);
    }
    let cols: Vec<ArrayRef> = vec![
        Arc::new(id.finish()),
        Arc::new(Int64Array::from(ord)),
        Arc::new(micros(created)),
        Arc::new(merged.finish()),
        Arc::new(Int64Array::from(n_ids)),
        Arc::new(TimestampMicrosecondArray::from(fs).with_timezone(TZ)),
        Arc::new(TimestampMicrosecondArray::from(ls).with_timezone(TZ)),
    ];
    let persons = RecordBatch::try_new(PERSONS_SCHEMA.clone(), cols)?;
    let t = std::time::Instant::now();
    write(&dir.join(PERSONS), vec![persons], SaveMode::Overwrite).await?;
    tracing::debug!(ms = t.elapsed().as_secs_f64() * 1e3, "persons written");

    // history, appended (the table is created by the first run even when empty).
    let mut kind = StringBuilder::new();
    let mut ids = ListBuilder::new(StringBuilder::new()).with_field(Arc::new(Field::new(
        "element",
        DataType::Utf8,
        true,
    )));
    let mut evidence = StringBuilder::new();
    for ch in &history {
        kind.append_value(ch.kind);
        for id in &ch.person_ids {
            ids.values().append_value(id);
        }
        ids.append(true);
        evidence.append_value(&ch.evidence);
    }
    let n = history.len();
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(vec![run as i64; n])),
        Arc::new(micros(vec![now; n])),
        Arc::new(kind.finish()),
        Arc::new(ids.finish()),
        Arc::new(evidence.finish()),
    ];
    let batch = RecordBatch::try_new(HISTORY_SCHEMA.clone(), cols)?;
    write(&dir.join(HISTORY), vec![batch], SaveMode::Append).await?;
    Ok(())
}

/// Streams every row of the Delta table at `path` (nothing when absent).
pub(crate) async fn scan(path: &Path, columns: &[&str]) -> Result<Vec<RecordBatch>> {
    let Some(table) = open(path).await? else {
        return Ok(Vec::new());
    };
    let ctx = datafusion::prelude::SessionContext::new_with_config(crate::store::session_config());
    let df = ctx
        .read_table(table_provider(&table).await?)?
        .select_columns(columns)?;
    let mut stream = df.execute_stream().await?;
    let mut out = Vec::new();
    while let Some(batch) = stream.next().await {
        out.push(batch?);
    }
    Ok(out)
}

/// A string column as `&str` getters, whatever its physical type.
pub(crate) fn strings(array: &ArrayRef) -> Result<Vec<Option<String>>> {
    let a = arrow::compute::cast(array, &DataType::Utf8)?;
    let a = a.as_string::<i32>();
    Ok((0..a.len())
        .map(|i| (!a.is_null(i)).then(|| a.value(i).to_string()))
        .collect())
}

pub(crate) fn ints(array: &ArrayRef) -> Result<Vec<i64>> {
    let a = arrow::compute::cast(array, &DataType::Int64)?;
    Ok(a.as_primitive::<Int64Type>().values().to_vec())
}

pub(crate) fn times(array: &ArrayRef) -> Result<Vec<i64>> {
    let a = arrow::compute::cast(array, &DataType::Int64)?;
    Ok(a.as_primitive::<Int64Type>().values().to_vec())
}

/// Loads what the previous run wrote.
///
/// Strings are borrowed from the scanned batches, not copied per row, and an
/// `identifiers` row finds its person by ordinal (dense, never reused), not
/// by id: the table holds a row per value ever seen.
///
/// The owners are given per node of `g`, this run's graph. With `known` —
/// the ordinal the last run gave each of `g`'s first nodes (its snapshot,
/// which `g` extends) — `identifiers` is not read at all.
pub(crate) async fn read_previous(
    dir: &Path,
    g: &Graph,
    known: Option<&[u32]>,
) -> Result<Previous> {
    let mut prev = Previous {
        persons: Vec::new(),
        owner: vec![NONE; g.len()],
    };
    let persons = scan(
        &dir.join(PERSONS),
        &["person_id", "ordinal", "created_at", "merged_into"],
    )
    .await?;
    let rows = persons.iter().map(RecordBatch::num_rows).sum::<usize>();
    prev.persons.reserve(rows);
    // Ordinal → index into `prev.persons`. Ordinals are dense (retired
    // persons keep theirs), so a vector holds them; one far beyond the row
    // count means the table is damaged, not a reason to allocate gigabytes.
    let mut by_ordinal: Vec<u32> = Vec::with_capacity(rows);
    for batch in &persons {
        let ids = Strings::of(batch.column(0).as_ref(), "persons.person_id")?;
        let ords = ints(batch.column(1))?;
        let created = times(batch.column(2))?;
        let merged = Strings::of(batch.column(3).as_ref(), "persons.merged_into")?;
        for i in 0..batch.num_rows() {
            let ordinal = u32::try_from(ords[i]).map_err(|_| {
                Error::Internal(format!(
                    "persons row {i}: ordinal {} is out of range",
                    ords[i]
                ))
            })?;
            let slot = ordinal as usize;
            if slot > 2 * rows + 1024 {
                return Err(Error::Internal(format!(
                    "persons row {i}: ordinal {ordinal} is far beyond the table's {rows} rows"
                )));
            }
            if by_ordinal.len() <= slot {
                by_ordinal.resize(slot + 1, NONE);
            }
            by_ordinal[slot] = prev.persons.len() as u32;
            prev.persons.push(PrevPerson {
                person_id: ids.get(i).unwrap_or_default().to_string(),
                ordinal,
                created_at: created[i],
                merged_into: merged.get(i).map(str::to_string),
            });
        }
    }
    let person_of = |ord: i64| {
        usize::try_from(ord)
            .ok()
            .and_then(|o| by_ordinal.get(o))
            .copied()
            .filter(|&p| p != NONE)
    };
    if let Some(ordinals) = known {
        if ordinals.len() > g.len() {
            return Err(Error::Internal(format!(
                "identity snapshot: {} ordinals for {} nodes",
                ordinals.len(),
                g.len()
            )));
        }
        for (n, &ord) in ordinals.iter().enumerate().filter(|(_, o)| **o != NONE) {
            let Some(p) = person_of(i64::from(ord)) else {
                return Err(Error::Internal(format!(
                    "identity snapshot node {}:{} names ordinal {ord}, which `persons` does not hold",
                    g.kind(n as u32),
                    g.value(n as u32)
                )));
            };
            prev.owner[n] = p;
        }
        return Ok(prev);
    }
    let identifiers = scan(&dir.join(IDENTIFIERS), &["kind", "value", "ordinal"]).await?;
    for batch in &identifiers {
        let kinds = Strings::of(batch.column(0).as_ref(), "identifiers.kind")?;
        let values = Strings::of(batch.column(1).as_ref(), "identifiers.value")?;
        let ords = ints(batch.column(2))?;
        for (i, &ord) in ords.iter().enumerate() {
            let (Some(k), Some(v)) = (kinds.get(i), values.get(i)) else {
                continue;
            };
            let Some(p) = person_of(ord) else {
                return Err(Error::Internal(format!(
                    "identifiers row {k}:{v} names ordinal {ord}, which `persons` does not hold"
                )));
            };
            // A value no event holds any more has no node, and no say.
            if let Some(n) = g.find(k, v) {
                prev.owner[n as usize] = p;
            }
        }
    }
    Ok(prev)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(values: &[i64]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(values.to_vec()))]).unwrap()
    }

    async fn rows(path: &Path) -> Vec<i64> {
        let mut out: Vec<i64> = scan(path, &["n"])
            .await
            .unwrap()
            .iter()
            .flat_map(|b| ints(b.column(0)).unwrap())
            .collect();
        out.sort();
        out
    }

    /// Overwrites the table at `path` with what `batches` yields.
    async fn overwrite(path: &Path, batches: Vec<Result<RecordBatch>>) -> Result<()> {
        write_stream(
            path,
            batch(&[]).schema(),
            batches.into_iter(),
            SaveMode::Overwrite,
        )
        .await
    }

    #[tokio::test]
    async fn a_write_in_parts_creates_overwrites_and_keeps_rows_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        let parts = |p: Vec<Vec<Result<RecordBatch>>>| -> Vec<BatchIter> {
            p.into_iter()
                .map(|b| Box::new(b.into_iter()) as BatchIter)
                .collect()
        };
        let schema = batch(&[]).schema();
        overwrite_in_parts(
            &path,
            schema.clone(),
            parts(vec![
                vec![Ok(batch(&[1, 2])), Ok(batch(&[3]))],
                vec![Ok(batch(&[4]))],
            ]),
        )
        .await
        .unwrap();
        assert_eq!(rows(&path).await, vec![1, 2, 3, 4]);
        overwrite_in_parts(
            &path,
            schema.clone(),
            parts(vec![vec![], vec![Ok(batch(&[7]))]]),
        )
        .await
        .unwrap();
        assert_eq!(rows(&path).await, vec![7]);
        // A part that fails fails the write, and the table keeps its rows.
        let failing = parts(vec![
            vec![Ok(batch(&[8]))],
            vec![Ok(batch(&[9])), Err(Error::Internal("no more rows".into()))],
        ]);
        let err = overwrite_in_parts(&path, schema.clone(), failing)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("no more rows"), "{err}");
        assert_eq!(rows(&path).await, vec![7]);
        overwrite_in_parts(&path, schema, parts(vec![vec![], vec![]]))
            .await
            .unwrap();
        assert!(
            rows(&path).await.is_empty(),
            "an empty overwrite empties it"
        );
    }

    #[tokio::test]
    async fn a_streamed_write_creates_overwrites_and_empties_a_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        overwrite(&path, vec![Ok(batch(&[1, 2])), Ok(batch(&[3]))])
            .await
            .unwrap();
        assert_eq!(rows(&path).await, vec![1, 2, 3]);
        overwrite(&path, vec![Ok(batch(&[7]))]).await.unwrap();
        assert_eq!(rows(&path).await, vec![7]);
        overwrite(&path, Vec::new()).await.unwrap();
        assert!(
            rows(&path).await.is_empty(),
            "an empty overwrite empties it"
        );
        // A table first written with no rows exists, with its schema.
        let fresh = dir.path().join("fresh");
        overwrite(&fresh, Vec::new()).await.unwrap();
        assert!(open(&fresh).await.unwrap().is_some());
        // A batch that fails fails the write, and the table keeps its rows.
        let failing = vec![Ok(batch(&[8])), Err(Error::Internal("no more rows".into()))];
        assert!(overwrite(&path, failing).await.is_err());
        assert!(rows(&path).await.is_empty());
    }
}
