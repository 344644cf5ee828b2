//! `quiver ingest`: reads Parquet / NDJSON / CSV files, renames columns by an
//! optional mapping, and streams batches to the server over the
//! `IngestService` stream or Flight `DoPut`, with a progress bar. A bad row is
//! rejected by the server with its reason and never stops the good rows; a
//! file that cannot be read at all is reported and the next file goes on.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Seek};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::{FlightClient, FlightDescriptor};
use futures::StreamExt;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use quiver_engine::event::ArrowInput;
use quiver_proto::v1 as pb;
use quiver_proto::v1::ingest_service_client::IngestServiceClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::{output, status_error};
use crate::service::MAX_MESSAGE_BYTES;
use crate::service::convert::proto_event;

/// How batches travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// `quiver.v1.IngestService/Ingest`, protobuf events.
    Grpc,
    /// Arrow Flight `DoPut`, Arrow record batches.
    Flight,
}

/// Options of one ingest run.
#[derive(Debug, Clone)]
pub struct Options {
    pub mapping: Option<PathBuf>,
    pub batch_rows: usize,
    pub transport: Transport,
    pub progress: bool,
    /// Bearer token for Arrow Flight.
    pub token: Option<String>,
}

/// One rejected row, located in its file.
#[derive(Debug, Clone)]
pub struct Rejection {
    pub file: String,
    pub row: u64,
    pub field: String,
    pub value: String,
    pub reason: String,
}

/// What an ingest run did.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    pub files: usize,
    pub failed_files: usize,
    pub file_errors: Vec<String>,
    pub sent: u64,
    pub accepted: u64,
    pub duplicates: u64,
    pub rejected: u64,
    /// The first rejections, at most [`KEEP_REJECTIONS`].
    pub first_rejections: Vec<Rejection>,
    pub dropped_identifiers: BTreeMap<String, u64>,
    pub elapsed: Duration,
}

/// Rejections kept for the summary.
pub const KEEP_REJECTIONS: usize = 20;

impl Summary {
    fn add_ack(&mut self, loc: &(usize, u64), files: &[String], ack: pb::IngestAck) {
        self.accepted += ack.accepted;
        self.duplicates += ack.duplicates;
        self.rejected += ack.rejected.len() as u64;
        for r in ack.rejected {
            if self.first_rejections.len() < KEEP_REJECTIONS {
                self.first_rejections.push(Rejection {
                    file: files.get(loc.0).cloned().unwrap_or_default(),
                    row: loc.1 + r.row as u64,
                    field: r.field,
                    value: r.value,
                    reason: r.reason,
                });
            }
        }
        for d in ack.dropped_identifiers {
            *self.dropped_identifiers.entry(d.reason).or_default() += d.count;
        }
    }
}

/// Files to read: each file as given, each directory's event files (not `truth.*`).
pub fn expand(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut inner: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("cannot list `{}`", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| format_of(f).is_some())
                .filter(|f| {
                    !f.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("truth"))
                })
                .collect();
            inner.sort();
            out.extend(inner);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Parquet,
    Ndjson,
    Csv,
}

fn format_of(p: &Path) -> Option<Format> {
    match p.extension()?.to_str()?.to_ascii_lowercase().as_str() {
        "parquet" | "pq" => Some(Format::Parquet),
        "ndjson" | "jsonl" | "json" => Some(Format::Ndjson),
        "csv" => Some(Format::Csv),
        _ => None,
    }
}

/// A column mapping file: `[columns] foreign_name = "event_field"`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Mapping {
    #[serde(default)]
    columns: BTreeMap<String, String>,
}

fn load_mapping(p: Option<&Path>) -> anyhow::Result<BTreeMap<String, String>> {
    let Some(p) = p else {
        return Ok(BTreeMap::new());
    };
    let text = std::fs::read_to_string(p)
        .with_context(|| format!("cannot read mapping `{}`", p.display()))?;
    let m: Mapping = toml::from_str(&text).with_context(|| format!("mapping `{}`", p.display()))?;
    Ok(m.columns)
}

fn rename(batch: RecordBatch, mapping: &BTreeMap<String, String>) -> anyhow::Result<RecordBatch> {
    if mapping.is_empty() {
        return Ok(batch);
    }
    let fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| match mapping.get(f.name()) {
            Some(to) => f.as_ref().clone().with_name(to),
            None => f.as_ref().clone(),
        })
        .collect();
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        batch.columns().to_vec(),
    )?)
}

type BatchIter = Box<dyn Iterator<Item = anyhow::Result<RecordBatch>> + Send>;

/// All columns as strings: CSV/NDJSON inference would turn phone numbers into
/// integers; the server parses every field itself.
fn all_utf8(schema: &Schema) -> SchemaRef {
    Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| Field::new(f.name(), DataType::Utf8, true))
            .collect::<Vec<_>>(),
    ))
}

/// Opens a file as batches of at most `batch_rows`; also returns its row count if known.
fn open(path: &Path, batch_rows: usize) -> anyhow::Result<(BatchIter, Option<u64>)> {
    let fmt = format_of(path).with_context(|| {
        format!(
            "`{}`: unknown format (expected .parquet, .ndjson/.jsonl/.json or .csv)",
            path.display()
        )
    })?;
    let file = File::open(path).with_context(|| format!("cannot open `{}`", path.display()))?;
    match fmt {
        Format::Parquet => {
            let b = ParquetRecordBatchReaderBuilder::try_new(file)?;
            let rows = b.metadata().file_metadata().num_rows() as u64;
            let r = b.with_batch_size(batch_rows).build()?;
            Ok((
                Box::new(r.map(|b| b.map_err(anyhow::Error::from))),
                Some(rows),
            ))
        }
        Format::Ndjson => {
            let mut reader = BufReader::new(file);
            let (schema, _) = arrow::json::reader::infer_json_schema(&mut reader, Some(10_000))?;
            reader.rewind()?;
            let r = arrow::json::ReaderBuilder::new(all_utf8(&schema))
                .with_batch_size(batch_rows)
                .with_coerce_primitive(true)
                .build(reader)?;
            Ok((Box::new(r.map(|b| b.map_err(anyhow::Error::from))), None))
        }
        Format::Csv => {
            let mut reader = BufReader::new(file);
            let fmt = arrow::csv::reader::Format::default().with_header(true);
            let (schema, _) = fmt.infer_schema(&mut reader, Some(100))?;
            reader.rewind()?;
            let r = arrow::csv::ReaderBuilder::new(all_utf8(&schema))
                .with_format(fmt)
                .with_batch_size(batch_rows)
                .build(reader)?;
            Ok((Box::new(r.map(|b| b.map_err(anyhow::Error::from))), None))
        }
    }
}

fn to_request(workspace: &str, seq: u64, batch: &RecordBatch) -> anyhow::Result<pb::IngestRequest> {
    let input = ArrowInput::new(batch)?;
    let events = (0..input.len())
        .map(|i| proto_event(&input.row(i)))
        .collect();
    Ok(pb::IngestRequest {
        workspace: workspace.to_string(),
        batch_seq: seq,
        events,
    })
}

/// What the reader thread sends: a batch with where it came from, or a file error.
enum Item {
    Batch {
        loc: (usize, u64),
        batch: RecordBatch,
    },
    FileError(String),
}

/// Reads every file on a blocking thread, batch by batch.
fn spawn_reader(
    files: Vec<PathBuf>,
    mapping: BTreeMap<String, String>,
    batch_rows: usize,
    tx: mpsc::Sender<Item>,
) {
    tokio::task::spawn_blocking(move || {
        for (fi, path) in files.iter().enumerate() {
            let mut row = 0u64;
            let result = (|| -> anyhow::Result<()> {
                let (iter, _) = open(path, batch_rows)?;
                for b in iter {
                    let b = rename(b?, &mapping)?;
                    let n = b.num_rows() as u64;
                    if tx
                        .blocking_send(Item::Batch {
                            loc: (fi, row),
                            batch: b,
                        })
                        .is_err()
                    {
                        return Ok(());
                    }
                    row += n;
                }
                Ok(())
            })();
            if let Err(e) = result {
                let msg = format!("{}: after row {row}: {e:#}", path.display());
                if tx.blocking_send(Item::FileError(msg)).is_err() {
                    return;
                }
            }
        }
    });
}

/// Ingests `paths` into `workspace`.
pub async fn ingest_files(
    channel: Channel,
    workspace: &str,
    paths: &[PathBuf],
    opts: &Options,
) -> anyhow::Result<Summary> {
    let files = expand(paths)?;
    if files.is_empty() {
        bail!("no event files found in {paths:?}");
    }
    for f in &files {
        if format_of(f).is_none() {
            bail!(
                "`{}`: unknown format (expected .parquet, .ndjson/.jsonl/.json or .csv)",
                f.display()
            );
        }
    }
    let mapping = load_mapping(opts.mapping.as_deref())?;
    let total: u64 = files
        .iter()
        .filter(|f| format_of(f) == Some(Format::Parquet))
        .filter_map(|f| File::open(f).ok())
        .filter_map(|f| ParquetRecordBatchReaderBuilder::try_new(f).ok())
        .map(|b| b.metadata().file_metadata().num_rows() as u64)
        .sum();
    let all_parquet = files.iter().all(|f| format_of(f) == Some(Format::Parquet));
    let bar = output::progress(
        if all_parquet { total } else { 0 },
        "events",
        !opts.progress,
    );
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    let started = Instant::now();
    let (tx, rx) = mpsc::channel(16);
    spawn_reader(files.clone(), mapping, opts.batch_rows.max(1), tx);
    let mut summary = match opts.transport {
        Transport::Grpc => via_grpc(channel, workspace, rx, &names, &bar).await?,
        Transport::Flight => {
            via_flight(channel, workspace, opts.token.as_deref(), rx, &names, &bar).await?
        }
    };
    bar.finish_and_clear();
    summary.files = files.len();
    summary.elapsed = started.elapsed();
    Ok(summary)
}

async fn via_grpc(
    channel: Channel,
    workspace: &str,
    mut rx: mpsc::Receiver<Item>,
    names: &[String],
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<Summary> {
    let mut client = IngestServiceClient::new(channel)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let locs: Arc<Mutex<BTreeMap<u64, (usize, u64)>>> = Arc::default();
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (req_tx, req_rx) = mpsc::channel::<pb::IngestRequest>(8);
    {
        let (locs, errors, sent) = (locs.clone(), errors.clone(), sent.clone());
        let workspace = workspace.to_string();
        let names = names.to_vec();
        tokio::spawn(async move {
            let mut seq = 0u64;
            while let Some(item) = rx.recv().await {
                match item {
                    Item::Batch { loc, batch } => {
                        let ws = workspace.clone();
                        let req =
                            tokio::task::spawn_blocking(move || to_request(&ws, seq, &batch)).await;
                        let req = match req {
                            Ok(Ok(r)) => r,
                            Ok(Err(e)) => {
                                let name = names.get(loc.0).map_or("?", String::as_str);
                                lock(&errors).push(format!("{name}: rows from {}: {e:#}", loc.1));
                                continue;
                            }
                            Err(e) => {
                                lock(&errors).push(e.to_string());
                                continue;
                            }
                        };
                        lock(&locs).insert(seq, loc);
                        sent.fetch_add(
                            req.events.len() as u64,
                            std::sync::atomic::Ordering::Relaxed,
                        );
                        seq += 1;
                        if req_tx.send(req).await.is_err() {
                            return;
                        }
                    }
                    Item::FileError(e) => lock(&errors).push(e),
                }
            }
        });
    }
    let mut acks = client
        .ingest(ReceiverStream::new(req_rx))
        .await
        .map_err(status_error)?
        .into_inner();
    let mut summary = Summary::default();
    while let Some(ack) = acks.next().await {
        let ack = ack.map_err(status_error)?;
        let loc = lock(&locs).remove(&ack.batch_seq).unwrap_or_default();
        bar.inc(ack.accepted + ack.duplicates + ack.rejected.len() as u64);
        summary.add_ack(&loc, names, ack);
    }
    summary.sent = sent.load(std::sync::atomic::Ordering::Relaxed);
    finish_errors(&mut summary, &errors);
    Ok(summary)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn finish_errors(summary: &mut Summary, errors: &Mutex<Vec<String>>) {
    summary.file_errors = std::mem::take(&mut *lock(errors));
    summary.failed_files = summary.file_errors.len();
}

async fn via_flight(
    channel: Channel,
    workspace: &str,
    token: Option<&str>,
    mut rx: mpsc::Receiver<Item>,
    names: &[String],
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<Summary> {
    let mut client = FlightClient::new(channel);
    if let Some(t) = token {
        client
            .add_header("authorization", &format!("Bearer {t}"))
            .map_err(|e| anyhow::anyhow!("--token: {e}"))?;
    }
    let locs: Arc<Mutex<Vec<(usize, u64)>>> = Arc::default();
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (btx, brx) = mpsc::channel::<Result<RecordBatch, arrow_flight::error::FlightError>>(8);
    {
        let (locs, errors, sent) = (locs.clone(), errors.clone(), sent.clone());
        tokio::spawn(async move {
            while let Some(item) = rx.recv().await {
                match item {
                    Item::Batch { loc, batch } => {
                        lock(&locs).push(loc);
                        sent.fetch_add(
                            batch.num_rows() as u64,
                            std::sync::atomic::Ordering::Relaxed,
                        );
                        if btx.send(Ok(batch)).await.is_err() {
                            return;
                        }
                    }
                    Item::FileError(e) => lock(&errors).push(e),
                }
            }
        });
    }
    let data = FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(FlightDescriptor::new_path(vec![
            workspace.to_string(),
        ])))
        .with_max_flight_data_size(4 * 1024 * 1024)
        .build(ReceiverStream::new(brx));
    let mut results = client
        .do_put(data)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut summary = Summary::default();
    while let Some(r) = results.next().await {
        let r = r.map_err(|e| match e {
            arrow_flight::error::FlightError::Tonic(s) => status_error(*s),
            other => anyhow::anyhow!("{other}"),
        })?;
        let ack = parse_put_ack(&r.app_metadata)?;
        let loc = lock(&locs)
            .get(ack.batch_seq as usize)
            .copied()
            .unwrap_or_default();
        bar.inc(ack.accepted + ack.duplicates + ack.rejected.len() as u64);
        summary.add_ack(&loc, names, ack);
    }
    summary.sent = sent.load(std::sync::atomic::Ordering::Relaxed);
    finish_errors(&mut summary, &errors);
    Ok(summary)
}

/// Parses a `DoPut` ack (JSON) into the proto ack shape.
pub fn parse_put_ack(bytes: &[u8]) -> anyhow::Result<pb::IngestAck> {
    let v: serde_json::Value = serde_json::from_slice(bytes).context("DoPut ack is not JSON")?;
    let n = |k: &str| v.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
    let rejected = v
        .get("rejected")
        .and_then(|r| r.as_array())
        .map(|a| {
            a.iter()
                .map(|e| pb::RowError {
                    row: e.get("row").and_then(|x| x.as_u64()).unwrap_or(0) as u32,
                    field: e.get("field").and_then(|x| x.as_str()).unwrap_or("").into(),
                    value: e.get("value").and_then(|x| x.as_str()).unwrap_or("").into(),
                    reason: e
                        .get("reason")
                        .and_then(|x| x.as_str())
                        .unwrap_or("")
                        .into(),
                })
                .collect()
        })
        .unwrap_or_default();
    let dropped_identifiers = v
        .get("dropped_identifiers")
        .and_then(|d| d.as_object())
        .map(|o| {
            o.iter()
                .map(|(k, c)| pb::DroppedIdentifiers {
                    reason: k.clone(),
                    count: c.as_u64().unwrap_or(0),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(pb::IngestAck {
        batch_seq: n("batch"),
        accepted: n("accepted"),
        duplicates: n("duplicates"),
        rejected,
        dropped_identifiers,
    })
}
