//! The bad-input matrix: every kind of bad input gets an answer naming the
//! row and field; the server keeps serving and earlier events stay.

use arrow::array::{BooleanArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::{FlightClient, FlightDescriptor};
use futures::StreamExt;
use quiver_proto::v1 as pb;
use quiver_proto::v1::ingest_service_client::IngestServiceClient;
use quiver_tests::{Server, create_workspace, event, sql_i64};
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_is_named_and_nothing_is_lost() {
    crate::init();
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(
        &tmp.path().join("data"),
        &[("QUIVER_STORE__MAX_BATCH_ROWS", "50")],
    )
    .unwrap();
    let ch = server.channel().await;
    create_workspace(ch.clone(), "w").await.unwrap();
    let mut ingest = IngestServiceClient::new(ch.clone());

    // a good batch first
    let good: Vec<pb::Event> = (0..10)
        .map(|i| event(&format!("g{i}"), "13800138000"))
        .collect();
    let ack = ingest
        .ingest_batch(pb::IngestRequest {
            workspace: "w".into(),
            batch_seq: 1,
            events: good,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ack.accepted, 10);

    // one batch, one bad row per kind, between good rows
    let mut rows = vec![event("ok1", "13800138001")];
    let mut e = event("", "13800138002");
    e.event_id = String::new();
    rows.push(e); // 1: empty event_id
    let mut e = event("x", "13800138002");
    e.event_id = "   ".into();
    rows.push(e); // 2: blank event_id
    let mut e = event("t1", "13800138003");
    e.event_time = "31/02/2026 25:00".into();
    rows.push(e); // 3: unparseable time
    let mut e = event("i1", "13800138004");
    e.identifiers.clear();
    rows.push(e); // 4: no identifiers
    rows.push(event("p1", "12345")); // 5: bad phone
    let mut e = event("m1", "13800138005");
    e.amount = Some("12.345".into());
    rows.push(e); // 6: amount with 3 decimals
    let mut e = event("j1", "null");
    e.identifiers.push(pb::Identifier {
        kind: "email".into(),
        value: "Test@Test.com".into(),
    });
    rows.push(e); // 7: only junk identifiers
    rows.push(event("ok2", "+86 138-0013-8006")); // 8
    let ack = ingest
        .ingest_batch(pb::IngestRequest {
            workspace: "w".into(),
            batch_seq: 2,
            events: rows,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ack.accepted, 2, "{ack:?}");
    let got: Vec<(u32, &str)> = ack
        .rejected
        .iter()
        .map(|r| (r.row, r.field.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (1, "event_id"),
            (2, "event_id"),
            (3, "event_time"),
            (4, "identifiers"),
            (5, "identifiers[0] (phone)"),
            (6, "amount"),
            (7, "identifiers"),
        ]
    );
    assert_eq!(ack.rejected[2].value, "31/02/2026 25:00");
    assert!(
        ack.rejected[4].reason.contains("phone"),
        "{:?}",
        ack.rejected[4]
    );

    // unknown workspace: NOT_FOUND naming it
    let err = ingest
        .ingest_batch(pb::IngestRequest {
            workspace: "nope".into(),
            batch_seq: 3,
            events: vec![event("z", "13800138000")],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(err.message().contains("nope"), "{}", err.message());

    // oversized batch on the stream: INVALID_ARGUMENT naming the limit; acked batches before it stay
    let big: Vec<pb::Event> = (0..51)
        .map(|i| event(&format!("big{i}"), "13800138000"))
        .collect();
    let reqs = vec![
        pb::IngestRequest {
            workspace: "w".into(),
            batch_seq: 10,
            events: vec![event("s1", "13800138007")],
        },
        pb::IngestRequest {
            workspace: "w".into(),
            batch_seq: 11,
            events: big,
        },
    ];
    let mut acks = ingest
        .ingest(futures::stream::iter(reqs))
        .await
        .unwrap()
        .into_inner();
    let first = acks.next().await.unwrap().unwrap();
    assert_eq!((first.batch_seq, first.accepted), (10, 1));
    let err = acks.next().await.unwrap().unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("max_batch_rows"),
        "{}",
        err.message()
    );
    assert!(err.message().contains("batch 11"), "{}", err.message());

    // wrong Arrow schema over DoPut: the column is named
    let schema = Arc::new(Schema::new(vec![
        Field::new("event_id", DataType::Utf8, false),
        Field::new("event_time", DataType::Boolean, false),
        Field::new("channel", DataType::Utf8, false),
        Field::new("event_type", DataType::Utf8, false),
        Field::new("phone", DataType::Utf8, false),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(vec!["b1"])),
            Arc::new(BooleanArray::from(vec![true])),
            Arc::new(StringArray::from(vec!["pos"])),
            Arc::new(StringArray::from(vec!["purchase"])),
            Arc::new(StringArray::from(vec!["13800138000"])),
        ],
    )
    .unwrap();
    let data = FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(FlightDescriptor::new_path(vec!["w".into()])))
        .build(futures::stream::iter([Ok(batch)]));
    let mut flight = FlightClient::new(ch.clone());
    let r: Result<Vec<_>, _> = match flight.do_put(data).await {
        Ok(s) => s.collect::<Vec<_>>().await.into_iter().collect(),
        Err(e) => Err(e),
    };
    let msg = r.unwrap_err().to_string();
    assert!(
        msg.contains("event_time") && msg.contains("Boolean"),
        "{msg}"
    );

    // DoPut to an unknown workspace
    let data = FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(FlightDescriptor::new_path(vec!["ghost".into()])))
        .build(futures::stream::iter([Ok(RecordBatch::new_empty(
            Arc::new(Schema::empty()),
        ))]));
    let err = FlightClient::new(ch.clone()).do_put(data).await;
    let msg = match err {
        Ok(s) => s
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .find_map(|r| r.err())
            .unwrap()
            .to_string(),
        Err(e) => e.to_string(),
    };
    assert!(msg.contains("ghost"), "{msg}");

    // still serving, nothing lost: 10 + 2 + 1
    assert_eq!(
        sql_i64(ch.clone(), "w", "SELECT count(*) FROM events").await,
        13
    );
    // bad SQL is an error, not a crash
    let err = quiver_tests::sql(ch.clone(), "w", "SELEC 1")
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = quiver_tests::sql(ch.clone(), "w", "DROP TABLE events")
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(sql_i64(ch, "w", "SELECT count(*) FROM events").await, 13);
    // the CLI exits non-zero with the message
    let out = server.cli(&["--workspace", "nope", "sql", "SELECT 1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"));
}
