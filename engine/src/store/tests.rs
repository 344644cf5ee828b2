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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_stall_bounds_unflushed_rows() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = EngineConfig {
        data_dir: dir.path().to_path_buf(),
        ..Default::default()
    };
    cfg.store.fsync = false;
    cfg.store.memtable_max_rows = 50;
    cfg.store.max_unflushed_rows = MAX_UNFLUSHED;
    let engine = Engine::open(cfg).await.unwrap();
    let ws = engine.create_workspace("shop").await.unwrap();

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
                    let events = ids.iter().map(|id| RawEvent {
                        event_id: Some(id),
                        event_time: TimeInput::Text("2026-10-01T10:00:00Z"),
                        channel: Some("pos"),
                        event_type: Some("purchase"),
                        identifiers: vec![("member", id)],
                        ..Default::default()
                    });
                    let events: Vec<RawEvent> = events.collect();
                    accepted += ws.ingest(events.into_iter()).await.unwrap().accepted;
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
