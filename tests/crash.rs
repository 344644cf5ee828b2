//! Durability: every acknowledged event survives SIGKILL, exactly once; a
//! torn WAL tail is detected, reported and cut.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use arrow::array::AsArray;
use futures::StreamExt;
use quiver_proto::v1 as pb;
use quiver_proto::v1::ingest_service_client::IngestServiceClient;
use quiver_tests::{Server, create_workspace, event, sql, sql_i64};

async fn event_ids(server: &Server, ws: &str) -> Vec<String> {
    let b = sql(server.channel().await, ws, "SELECT event_id FROM events")
        .await
        .unwrap();
    b.iter()
        .flat_map(|b| {
            arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Utf8)
                .unwrap()
                .as_string::<i32>()
                .iter()
                .map(|s| s.unwrap().to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn batch(round: u32, seq: u64) -> pb::IngestRequest {
    pb::IngestRequest {
        workspace: "c".into(),
        batch_seq: seq,
        events: (0..200)
            .map(|i| {
                event(
                    &format!("r{round}-b{seq}-{i}"),
                    &format!("1380013{:04}", (seq * 7 + i) % 10_000),
                )
            })
            .collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_events_survive_sigkill_exactly_once() {
    crate::init();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // small memtable: flushes and WAL truncation race with the kills
    let env = [
        ("QUIVER_STORE__MEMTABLE_MAX_ROWS", "3000"),
        ("QUIVER_STORE__FLUSH_INTERVAL_SECS", "1"),
    ];
    let mut server = Server::start(&data, &env).unwrap();
    create_workspace(server.channel().await, "c").await.unwrap();
    let mut acked: BTreeSet<String> = BTreeSet::new();
    for round in 0..3u32 {
        let mut client = IngestServiceClient::new(server.channel().await);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let sender = tokio::spawn(async move {
            for seq in 0..10_000u64 {
                if tx.send(batch(round, seq)).await.is_err() {
                    return;
                }
            }
        });
        let mut acks = client
            .ingest(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let mut n = 0;
        let mut seen: BTreeMap<u64, u64> = BTreeMap::new();
        while let Some(Ok(ack)) = acks.next().await {
            assert_eq!(ack.accepted, 200, "{ack:?}");
            seen.insert(ack.batch_seq, ack.accepted);
            for i in 0..200 {
                acked.insert(format!("r{round}-b{}-{i}", ack.batch_seq));
            }
            n += 1;
            if n == 15 + round * 10 {
                server.kill(); // mid-stream: more batches are in flight
            }
        }
        sender.abort();
        assert!(n >= 15, "round {round}: only {n} acks");
        server = Server::start(&data, &env).unwrap();
        let ids = event_ids(&server, "c").await;
        let unique: BTreeSet<&String> = ids.iter().collect();
        assert_eq!(
            unique.len(),
            ids.len(),
            "round {round}: an event is stored twice"
        );
        let missing: Vec<&String> = acked
            .iter()
            .filter(|id| !unique.contains(id))
            .take(5)
            .collect();
        assert!(
            missing.is_empty(),
            "round {round}: acked events lost, e.g. {missing:?}"
        );
        // an acked event sent again after the restart is a duplicate
        let mut c = IngestServiceClient::new(server.channel().await);
        let again = c.ingest_batch(batch(round, 0)).await.unwrap().into_inner();
        assert_eq!(
            (again.accepted, again.duplicates),
            (0, 200),
            "round {round}"
        );
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_wal_tail_is_cut_and_reported() {
    crate::init();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut server = Server::start(&data, &[]).unwrap();
    let ch = server.channel().await;
    create_workspace(ch.clone(), "c").await.unwrap();
    let mut c = IngestServiceClient::new(ch);
    for seq in 0..3 {
        let ack = c.ingest_batch(batch(0, seq)).await.unwrap().into_inner();
        assert_eq!(ack.accepted, 200);
    }
    server.kill();
    // a record whose write was cut short: header says 1000 bytes, 10 present
    let wal = data.join("workspaces/c/wal");
    let mut segs: Vec<_> = std::fs::read_dir(&wal)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segs.sort();
    let last = segs
        .iter()
        .rev()
        .find(|p| std::fs::metadata(p).unwrap().len() > 8)
        .unwrap()
        .clone();
    let mut bytes = std::fs::read(&last).unwrap();
    bytes.extend_from_slice(&1000u32.to_le_bytes());
    bytes.extend_from_slice(&[7u8; 14]);
    std::fs::write(&last, bytes).unwrap();

    let server = Server::start(&data, &[]).unwrap();
    let ch = server.channel().await;
    assert_eq!(
        sql_i64(ch.clone(), "c", "SELECT count(*) FROM events").await,
        600
    );
    assert!(server.log().contains("torn"), "log:\n{}", server.log());
    // and it keeps taking writes
    let mut c = IngestServiceClient::new(ch.clone());
    let ack = c.ingest_batch(batch(0, 3)).await.unwrap().into_inner();
    assert_eq!(ack.accepted, 200);
    assert_eq!(sql_i64(ch, "c", "SELECT count(*) FROM events").await, 800);
}
