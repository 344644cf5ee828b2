//! gen → serve → ingest (CLI over gRPC, and Flight DoPut) → SQL read-back.

use quiver_tests::{Server, create_workspace, sql, sql_i64};

pub(crate) fn generate_files(
    dir: &std::path::Path,
    persons: u64,
    format: &str,
) -> Vec<std::path::PathBuf> {
    let out = std::process::Command::new(quiver_tests::quiver_bin())
        .args([
            "gen",
            "--persons",
            &persons.to_string(),
            "--days",
            "60",
            "--seed",
            "7",
            "--format",
            format,
            "--out",
        ])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("events")
        })
        .collect();
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_ingest_then_sql_counts_match_acks() {
    crate::init();
    let tmp = tempfile::tempdir().unwrap();
    let files = generate_files(&tmp.path().join("gen"), 300, "ndjson");
    let server = Server::start(&tmp.path().join("data"), &[]).unwrap();
    let out = server.cli(&["workspace", "create", "shop"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut args = vec!["--workspace", "shop", "--json", "ingest", "--quiet"];
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    args.extend(names.iter().map(String::as_str));
    let out = server.cli(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let accepted = summary["accepted"].as_i64().unwrap();
    let sent = summary["sent"].as_i64().unwrap();
    let dups = summary["duplicates"].as_i64().unwrap();
    let rejected = summary["rejected"].as_i64().unwrap();
    assert!(accepted > 1000, "{summary}");
    assert_eq!(accepted + dups + rejected, sent, "{summary}");
    assert!(dups > 0, "the generator repeats some event_ids: {summary}");

    // memtable only, then after a flush to Delta: the same count
    let ch = server.channel().await;
    let q = "SELECT count(*) FROM events";
    assert_eq!(sql_i64(ch.clone(), "shop", q).await, accepted);
    let out = server.cli(&["--workspace", "shop", "workspace", "flush"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sql_i64(ch.clone(), "shop", q).await, accepted);
    assert_eq!(
        sql_i64(
            ch.clone(),
            "shop",
            "SELECT count(DISTINCT event_id) FROM events"
        )
        .await,
        accepted
    );
    // the data is real Delta on disk
    assert!(
        server
            .data
            .join("workspaces/shop/events/_delta_log")
            .is_dir()
    );

    // re-ingesting the same files: all duplicates, nothing new
    let out = server.cli(&args);
    let again: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(again["accepted"].as_i64(), Some(0), "{again}");
    assert_eq!(sql_i64(ch.clone(), "shop", q).await, accepted);

    // the CLI's sql command, as a user types it
    let out = server.cli(&[
        "--workspace",
        "shop",
        "--json",
        "sql",
        "SELECT channel, count(*) AS n FROM events GROUP BY 1 ORDER BY 1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let total: i64 = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["n"].as_i64().unwrap())
        .sum();
    assert_eq!(total, accepted);
    // identifiers are normalised: every phone is E.164
    let bad = sql_i64(
        ch.clone(),
        "shop",
        "SELECT count(*) FROM (SELECT unnest(identifiers) AS i FROM events) WHERE i.kind = 'phone' AND NOT starts_with(i.value, '+')",
    )
    .await;
    assert_eq!(bad, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flight_do_put_and_csv_mapping() {
    crate::init();
    use arrow_flight::encode::FlightDataEncoderBuilder;
    use arrow_flight::{FlightClient, FlightDescriptor};
    use futures::StreamExt;

    let tmp = tempfile::tempdir().unwrap();
    let files = generate_files(&tmp.path().join("gen"), 200, "parquet");
    let server = Server::start(&tmp.path().join("data"), &[]).unwrap();
    let ch = server.channel().await;
    create_workspace(ch.clone(), "fl").await.unwrap();

    // DoPut straight from the generator's Parquet batches
    let file = std::fs::File::open(&files[0]).unwrap();
    let reader = parquet_reader(file);
    let batches: Vec<_> = reader.collect();
    let sent: usize = batches.iter().map(|b| b.num_rows()).sum();
    let data = FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(FlightDescriptor::new_path(vec!["fl".into()])))
        .build(futures::stream::iter(batches.into_iter().map(Ok)));
    let mut client = FlightClient::new(ch.clone());
    let mut results = client.do_put(data).await.unwrap();
    let (mut accepted, mut other) = (0i64, 0i64);
    while let Some(r) = results.next().await {
        let ack: serde_json::Value = serde_json::from_slice(&r.unwrap().app_metadata).unwrap();
        accepted += ack["accepted"].as_i64().unwrap();
        other +=
            ack["duplicates"].as_i64().unwrap() + ack["rejected"].as_array().unwrap().len() as i64;
    }
    assert_eq!(accepted + other, sent as i64);
    assert_eq!(
        sql_i64(ch.clone(), "fl", "SELECT count(*) FROM events").await,
        accepted
    );

    // a foreign CSV with a mapping file
    let csv = tmp.path().join("crm.csv");
    std::fs::write(
        &csv,
        "id,ts,src,kind,mobile,level\n\
         c1,2026-01-02 10:00:00,crm,profile_update,+86 139-0013-9000,gold\n\
         c2,2026-01-03 11:00:00,crm,lead,１３９００１３９００１,\n\
         c3,not-a-time,crm,lead,13900139002,\n",
    )
    .unwrap();
    let mapping = tmp.path().join("map.toml");
    std::fs::write(
        &mapping,
        "[columns]\nid = \"event_id\"\nts = \"event_time\"\nsrc = \"channel\"\nkind = \"event_type\"\nmobile = \"phone\"\nlevel = \"member_level\"\n",
    )
    .unwrap();
    let out = server.cli(&[
        "--workspace",
        "fl",
        "--json",
        "ingest",
        "--quiet",
        "--transport",
        "flight",
        "--mapping",
        mapping.to_str().unwrap(),
        csv.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["accepted"], 2, "{s}");
    assert_eq!(s["rejected"], 1, "{s}");
    assert_eq!(s["first_rejections"][0]["row"], 2, "{s}");
    assert_eq!(s["first_rejections"][0]["field"], "event_time", "{s}");
    let b = sql(
        ch.clone(),
        "fl",
        "SELECT properties['member_level'] AS level, identifiers[1]['value'] AS phone FROM events WHERE event_id = 'c1'",
    )
    .await
    .unwrap();
    let text = arrow::util::pretty::pretty_format_batches(&b)
        .unwrap()
        .to_string();
    assert!(
        text.contains("gold") && text.contains("+8613900139000"),
        "{text}"
    );
}

fn parquet_reader(file: std::fs::File) -> impl Iterator<Item = arrow::array::RecordBatch> {
    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .with_batch_size(1000)
        .build()
        .unwrap()
        .map(|b| b.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_on_the_same_port() {
    crate::init();
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"), &[]).unwrap();
    let ch = server.channel().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    let r = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "quiver.v1.IngestService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let out = server.cli(&["workspace", "list"]);
    assert!(out.status.success());
}

/// `GET /metrics` over plain HTTP/1.0.
fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_metrics_count_what_was_ingested() {
    crate::init();
    let tmp = tempfile::tempdir().unwrap();
    let files = generate_files(&tmp.path().join("gen"), 50, "ndjson");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics = format!("127.0.0.1:{port}");
    let server = Server::start_with_metrics(&tmp.path().join("data"), &metrics, &[]).unwrap();
    assert!(
        server
            .cli(&["workspace", "create", "shop"])
            .status
            .success()
    );
    let mut args = vec!["--workspace", "shop", "--json", "ingest", "--quiet"];
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    args.extend(names.iter().map(String::as_str));
    let out = server.cli(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let accepted = summary["accepted"].as_u64().unwrap();
    assert!(accepted > 0);

    let body = scrape(&metrics);
    assert!(body.starts_with("HTTP/1."), "{body}");
    let line = body
        .lines()
        .find(|l| {
            l.starts_with("quiver_events_accepted_total{") && l.contains("workspace=\"shop\"")
        })
        .unwrap_or_else(|| panic!("no accepted counter in:\n{body}"));
    let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert_eq!(value as u64, accepted, "{line}");
    assert!(body.contains("quiver_wal_fsync_seconds"), "{body}");
}
