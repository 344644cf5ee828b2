//! The write path inside the engine: the write stall bounds what waits for
//! Delta, and nothing acknowledged is lost on the way.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use arrow::array::AsArray;
use futures::StreamExt;

use crate::event::TimeInput;
use crate::{Engine, EngineConfig, RawEvent};

const BATCH: usize = 40;
const WRITERS: usize = 4;
const BATCHES_PER_WRITER: usize = 6;
const MAX_UNFLUSHED: usize = 100;

/// An engine without fsync in `dir` (`tune` sets the rest), and its
/// workspace `shop`.
async fn open_shop(
    dir: &std::path::Path,
    tune: impl FnOnce(&mut EngineConfig),
) -> (Arc<Engine>, Arc<crate::Workspace>) {
    let mut cfg = EngineConfig {
        data_dir: dir.to_path_buf(),
        ..Default::default()
    };
    cfg.store.fsync = false;
    tune(&mut cfg);
    let engine = Engine::open(cfg).await.unwrap();
    let ws = engine.create_workspace("shop").await.unwrap();
    (engine, ws)
}

/// One POS purchase per id, on one day, identified by the id as member.
fn purchases(ids: &[String]) -> Vec<RawEvent<'_>> {
    ids.iter()
        .map(|id| RawEvent {
            event_id: Some(id),
            event_time: TimeInput::Text("2026-10-01T10:00:00Z"),
            channel: Some("pos"),
            event_type: Some("purchase"),
            identifiers: vec![("member", id)],
            ..Default::default()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_stall_bounds_unflushed_rows() {
    let dir = tempfile::tempdir().unwrap();
    let (_engine, ws) = open_shop(dir.path(), |cfg| {
        cfg.store.memtable_max_rows = 50;
        cfg.store.max_unflushed_rows = MAX_UNFLUSHED;
    })
    .await;

    let peak = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let monitor = {
        let (ws, peak, done) = (ws.clone(), peak.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::SeqCst) {
                peak.fetch_max(ws.info().unflushed_rows, Ordering::SeqCst);
                tokio::time::sleep(std::time::Duration::from_micros(200)).await;
            }
        })
    };
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let ws = ws.clone();
            tokio::spawn(async move {
                let mut accepted = 0;
                for b in 0..BATCHES_PER_WRITER {
                    let ids: Vec<String> = (0..BATCH).map(|i| format!("w{w}-b{b}-e{i}")).collect();
                    accepted += ws
                        .ingest(purchases(&ids).into_iter())
                        .await
                        .unwrap()
                        .accepted;
                }
                accepted
            })
        })
        .collect();
    let mut accepted = 0;
    for w in writers {
        accepted += w.await.unwrap();
    }
    done.store(true, Ordering::SeqCst);
    monitor.await.unwrap();
    let total = (WRITERS * BATCHES_PER_WRITER * BATCH) as u64;
    assert_eq!(accepted, total);
    // A writer checks the stall before it appends, so each may add one batch above the bound.
    let bound = MAX_UNFLUSHED + WRITERS * BATCH;
    let peak = peak.load(Ordering::SeqCst);
    assert!(
        peak <= bound,
        "{peak} rows waited for Delta, more than the stall allows ({bound})"
    );
    ws.flush().await.unwrap();
    let (_, rest) = ws.read_view();
    assert!(rest.is_empty(), "the flush left rows in the memtable");
    let mut stream = ws.sql("SELECT count(*) AS n FROM events").await.unwrap();
    let batch = stream.next().await.unwrap().unwrap();
    let committed = batch
        .column(0)
        .as_primitive::<arrow::datatypes::Int64Type>()
        .value(0);
    assert_eq!(
        committed as u64, total,
        "every acknowledged row is in Delta"
    );
}

/// `event_id`s of `ws`'s events, sorted.
async fn event_ids(ws: &crate::Workspace) -> Vec<String> {
    let mut stream = ws
        .sql("SELECT event_id FROM events ORDER BY event_id")
        .await
        .unwrap();
    let mut ids = Vec::new();
    while let Some(batch) = stream.next().await {
        let col = arrow::compute::cast(batch.unwrap().column(0), &arrow::datatypes::DataType::Utf8)
            .unwrap();
        ids.extend(
            col.as_string::<i32>()
                .iter()
                .map(|v| v.unwrap().to_string()),
        );
    }
    ids
}

type FileReader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder<std::fs::File>;

/// Each data file of the table's current version, by URI, opened for reading.
fn data_files(ws: &crate::Workspace) -> Vec<(String, FileReader)> {
    let (table, _) = ws.read_view();
    let uris: Vec<String> = table.get_file_uris().unwrap().collect();
    uris.into_iter()
        .map(|uri| {
            let path = uri.strip_prefix("file://").unwrap_or(&uri);
            let file = std::fs::File::open(path).unwrap();
            let reader = FileReader::try_new(file).unwrap();
            (uri, reader)
        })
        .collect()
}

/// The codecs of every column chunk of `files`.
fn codecs(files: &[(String, FileReader)]) -> Vec<parquet::basic::Compression> {
    files
        .iter()
        .flat_map(|(_, r)| r.metadata().row_groups())
        .flat_map(|rg| rg.columns().iter().map(|c| c.compression()))
        .collect()
}

/// Compaction keeps every row and writes plain `Utf8` strings: a file with
/// `Utf8View` in its Arrow schema is decoded as views and cast back to the
/// table's types on every later scan. Flushed files are LZ4, compacted
/// ones ZSTD.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optimize_keeps_rows_and_writes_plain_strings() {
    use parquet::basic::Compression;
    let dir = tempfile::tempdir().unwrap();
    let (_engine, ws) = open_shop(dir.path(), |_| {}).await;
    for b in 0..3 {
        let ids: Vec<String> = (0..BATCH).map(|i| format!("b{b}-e{i}")).collect();
        ws.ingest(purchases(&ids).into_iter()).await.unwrap();
        ws.flush().await.unwrap();
    }
    let before = event_ids(&ws).await;
    assert_eq!(before.len(), 3 * BATCH);
    let flushed = codecs(&data_files(&ws));
    assert!(!flushed.is_empty());
    assert!(
        flushed.iter().all(|c| *c == Compression::LZ4_RAW),
        "{flushed:?}"
    );

    let report = ws.optimize().await.unwrap();
    assert_eq!(
        (report.files_removed, report.files_added),
        (3, 1),
        "three flushes of one day compact into one file"
    );
    assert_eq!(event_ids(&ws).await, before);
    let files = data_files(&ws);
    assert_eq!(files.len(), 1);
    for (uri, reader) in &files {
        let schema = format!("{:?}", reader.schema());
        assert!(!schema.contains("View"), "{uri}: {schema}");
    }
    let compacted = codecs(&files);
    assert!(
        compacted.iter().all(|c| matches!(c, Compression::ZSTD(_))),
        "{compacted:?}"
    );
}

/// The dedup set is sized on open from the files' statistics: every row
/// received since a cutoff before the ingest counts, none after it; and an
/// id sent again after a reopen is still a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dedup_set_is_sized_from_file_statistics_and_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let before = crate::store::now_micros();
    let ids: Vec<String> = (0..BATCH).map(|i| format!("e{i}")).collect();
    {
        let (engine, ws) = open_shop(dir.path(), |_| {}).await;
        ws.ingest(purchases(&ids).into_iter()).await.unwrap();
        ws.flush().await.unwrap();
        let (table, _) = ws.read_view();
        assert_eq!(
            super::table::rows_received_since(&table, before - 1_000_000),
            BATCH
        );
        let later = crate::store::now_micros() + 3_600_000_000;
        assert_eq!(super::table::rows_received_since(&table, later), 0);
        ws.close();
        drop((ws, engine));
    }
    let mut cfg = EngineConfig {
        data_dir: dir.path().to_path_buf(),
        ..Default::default()
    };
    cfg.store.fsync = false;
    let engine = Engine::open(cfg).await.unwrap();
    let ws = engine.workspace("shop").unwrap();
    let ack = ws.ingest(purchases(&ids[..3]).into_iter()).await.unwrap();
    assert_eq!((ack.accepted, ack.duplicates), (0, 3));
}

/// A flush writes one file per event date, whatever the order of the dates
/// across and within batches, and a row's columns stay together: each file
/// holds exactly its date's events, with their statistics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_writes_one_file_per_date_with_its_rows() {
    const DAYS: [&str; 3] = [
        "2026-10-03T08:00:00Z",
        "2026-10-01T09:30:00Z",
        "2026-10-02T23:59:59Z",
    ];
    let dir = tempfile::tempdir().unwrap();
    let (_engine, ws) = open_shop(dir.path(), |_| {}).await;
    for b in 0..2 {
        let ids: Vec<String> = (0..30).map(|i| format!("b{b}-e{i}")).collect();
        let events: Vec<RawEvent<'_>> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| RawEvent {
                event_id: Some(id),
                event_time: TimeInput::Text(DAYS[(i + b) % DAYS.len()]),
                channel: Some("pos"),
                event_type: Some("purchase"),
                identifiers: vec![("member", id)],
                ..Default::default()
            })
            .collect();
        ws.ingest(events.into_iter()).await.unwrap();
    }
    ws.flush().await.unwrap();

    let (table, _) = ws.read_view();
    let mut dirs: Vec<String> = table
        .get_file_uris()
        .unwrap()
        .map(|u| u.rsplit('/').nth(1).unwrap().to_string())
        .collect();
    dirs.sort();
    assert_eq!(
        dirs,
        [
            "event_date=2026-10-01",
            "event_date=2026-10-02",
            "event_date=2026-10-03"
        ]
    );
    assert_eq!(crate::store::table::num_records(&table), 60);
    // each row's date agrees with its own event time and id
    let mut stream = ws
        .sql(
            "SELECT event_id, CAST(event_date AS VARCHAR), CAST(event_time AS VARCHAR) \
             FROM events ORDER BY event_id",
        )
        .await
        .unwrap();
    let mut rows = Vec::new();
    while let Some(batch) = stream.next().await {
        let batch = batch.unwrap();
        let col = |c: usize| {
            arrow::compute::cast(batch.column(c), &arrow::datatypes::DataType::Utf8).unwrap()
        };
        let (ids, dates, times) = (col(0), col(1), col(2));
        for r in 0..batch.num_rows() {
            rows.push((
                ids.as_string::<i32>().value(r).to_string(),
                dates.as_string::<i32>().value(r).to_string(),
                times.as_string::<i32>().value(r).to_string(),
            ));
        }
    }
    assert_eq!(rows.len(), 60);
    for (id, date, time) in rows {
        let (b, i): (usize, usize) = {
            let (b, e) = id.split_once("-e").unwrap();
            (b[1..].parse().unwrap(), e.parse().unwrap())
        };
        let want = DAYS[(i + b) % DAYS.len()];
        assert_eq!(date, want[..10], "{id}");
        assert!(time.starts_with(&want[..10]), "{id}: {time}");
    }
}

/// `datafiles::read_map` hands every row to the consumer once, mapped on
/// the reading threads; a `map` that fails stops the read with its error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_map_maps_every_batch_and_stops_on_a_mapping_error() {
    use crate::store::datafiles;
    let dir = tempfile::tempdir().unwrap();
    let (_engine, ws) = open_shop(dir.path(), |_| {}).await;
    // Three flushes: at least three data files, read by both threads.
    for b in 0..3 {
        let ids: Vec<String> = (0..25).map(|i| format!("m{b}-{i}")).collect();
        ws.ingest(purchases(&ids).into_iter()).await.unwrap();
        ws.flush().await.unwrap();
    }
    let (table, _) = ws.read_view();
    let columns = datafiles::Columns {
        names: vec!["event_id".into()],
        dictionary: Vec::new(),
    };
    let mut seen = Vec::new();
    datafiles::read_map(
        &table,
        datafiles::paths(&table).unwrap(),
        &columns,
        |batch| {
            Ok(batch
                .column(0)
                .as_string::<i32>()
                .iter()
                .map(|v| v.unwrap_or_default().to_uppercase())
                .collect::<Vec<_>>())
        },
        |ids| {
            seen.extend(ids);
            Ok(())
        },
    )
    .await
    .unwrap();
    seen.sort();
    let mut want: Vec<String> = (0..3)
        .flat_map(|b| (0..25).map(move |i| format!("M{b}-{i}")))
        .collect();
    want.sort();
    assert_eq!(seen, want);

    let calls = AtomicUsize::new(0);
    let err = datafiles::read_map(
        &table,
        datafiles::paths(&table).unwrap(),
        &columns,
        |_batch| -> crate::Result<()> { Err(crate::Error::Internal("no such mapping".into())) },
        |()| {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok(())
        },
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("no such mapping"), "{err}");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}
