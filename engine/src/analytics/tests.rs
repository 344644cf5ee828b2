//! SQL sessions on generated data: each event's person against the naive
//! attribution of the tag tests, `segment()`, `in_segment()` and
//! `person_tags` against the bitmaps, parameters, and what a session may see.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use arrow::array::{RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use futures::StreamExt;
use quiver_data::GenConfig;

use super::SqlSession;
use crate::identity::ResolveOptions;
use crate::segment::{AudienceOptions, parse};
use crate::tag::tests::{events_by_person, rows};
use crate::tag::{DefinitionFormat, TagDefinitions};
use crate::{Engine, EngineConfig, Workspace};

async fn engine(dir: &std::path::Path) -> Arc<Engine> {
    let mut cfg = EngineConfig {
        data_dir: dir.to_path_buf(),
        ..Default::default()
    };
    cfg.store.fsync = false;
    Engine::open(cfg).await.unwrap()
}

/// A workspace with `persons` generated persons, resolved, seed tags built.
async fn shop(engine: &Engine, name: &str, persons: u64) -> Arc<Workspace> {
    let ws = engine.create_workspace(name).await.unwrap();
    let config = GenConfig {
        persons,
        threads: 1,
        ..Default::default()
    };
    let (batches, _) = quiver_data::generate_batches(&config).unwrap();
    for b in &batches {
        ws.ingest_arrow(b).await.unwrap();
    }
    ws.resolve(ResolveOptions::default(), &|_| {})
        .await
        .unwrap();
    let seed = TagDefinitions::parse(quiver_data::SEED_TAGS_TOML, DefinitionFormat::Toml).unwrap();
    ws.define_tags(&seed).await.unwrap();
    ws.refresh_tags(None, &|_| {}).await.unwrap();
    ws
}

async fn collect(
    session: &SqlSession,
    sql: &str,
    params: Option<&RecordBatch>,
) -> Vec<Vec<Option<String>>> {
    let (_, mut stream) = session.execute(sql, params).await.unwrap();
    let mut out = Vec::new();
    while let Some(batch) = stream.next().await {
        let batch = batch.unwrap();
        let cols: Vec<_> = batch
            .columns()
            .iter()
            .map(|c| arrow::compute::cast(c, &DataType::Utf8).unwrap())
            .collect();
        for i in 0..batch.num_rows() {
            out.push(
                cols.iter()
                    .map(|c| {
                        let c = arrow::array::AsArray::as_string::<i32>(c);
                        (!arrow::array::Array::is_null(c, i)).then(|| c.value(i).to_string())
                    })
                    .collect(),
            );
        }
    }
    out
}

fn int(v: &Option<String>) -> u64 {
    v.as_deref().unwrap().parse().unwrap()
}

fn members(ws: &Workspace, text: &str) -> HashSet<u32> {
    ws.audience(&parse(text).unwrap(), AudienceOptions::default())
        .unwrap()
        .members
        .iter()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_persons_segments_and_tags_agree_with_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path()).await;
    let ws = shop(&engine, "shop", 300).await;
    let session = SqlSession::new(vec![ws.clone()], Some("shop")).unwrap();

    // Every event's person is the naive attribution's.
    let (naive, live) = events_by_person(&ws).await;
    let got: BTreeMap<u32, u64> = collect(
        &session,
        "SELECT ordinal, count(*) FROM events WHERE ordinal IS NOT NULL GROUP BY ordinal",
        None,
    )
    .await
    .iter()
    .map(|r| (int(&r[0]) as u32, int(&r[1])))
    .collect();
    let want: BTreeMap<u32, u64> = naive.iter().map(|(o, e)| (*o, e.len() as u64)).collect();
    assert_eq!(got, want);
    assert!(got.keys().all(|o| live.contains(o)));
    // person_id and ordinal name the same person.
    let mismatched = collect(
        &session,
        "SELECT count(*) FROM events e JOIN persons p ON e.ordinal = p.ordinal WHERE e.person_id <> p.person_id",
        None,
    )
    .await;
    assert_eq!(int(&mismatched[0][0]), 0);

    // segment(): the tag's bitmap, with each member's person_id.
    let lovers = members(&ws, "skincare_lover");
    assert!(!lovers.is_empty());
    let seg = collect(
        &session,
        "SELECT s.ordinal, s.person_id = p.person_id FROM segment('skincare_lover') s JOIN persons p ON s.ordinal = p.ordinal",
        None,
    )
    .await;
    assert_eq!(
        seg.iter()
            .map(|r| int(&r[0]) as u32)
            .collect::<HashSet<_>>(),
        lovers
    );
    assert!(seg.iter().all(|r| r[1].as_deref() == Some("true")));
    // ... joined to events: the members' events.
    let joined = collect(
        &session,
        "SELECT count(*) FROM events e JOIN segment('skincare_lover') s ON e.person_id = s.person_id",
        None,
    )
    .await;
    let want: usize = lovers
        .iter()
        .map(|o| naive.get(o).map_or(0, Vec::len))
        .sum();
    assert_eq!(int(&joined[0][0]), want as u64);

    // in_segment() by person_id and by ordinal.
    let mini = members(&ws, "miniprogram_user AND NOT member_level = 'normal'");
    assert!(!mini.is_empty());
    for sql in [
        "SELECT ordinal FROM persons WHERE merged_into IS NULL AND in_segment(person_id, 'miniprogram_user AND NOT member_level = ''normal''')",
        "SELECT ordinal FROM persons WHERE in_segment(ordinal, 'miniprogram_user AND NOT member_level = ''normal''')",
    ] {
        let got: HashSet<u32> = collect(&session, sql, None)
            .await
            .iter()
            .map(|r| int(&r[0]) as u32)
            .collect();
        assert_eq!(got, mini, "{sql}");
    }

    // person_tags: one row per person and tag (value) in the index.
    let index = ws.tag_index().unwrap().unwrap();
    let per_tag: BTreeMap<String, u64> = collect(
        &session,
        "SELECT tag || '=' || value, count(DISTINCT person_id) FROM person_tags GROUP BY 1",
        None,
    )
    .await
    .iter()
    .map(|r| (r[0].clone().unwrap(), int(&r[1])))
    .collect();
    let mut want: BTreeMap<String, u64> = BTreeMap::new();
    for (name, b) in &index.tags {
        if !b.is_empty() {
            want.insert(format!("{name}=true"), b.len());
        }
    }
    for (value, b) in &index.enums["member_level"] {
        if !b.is_empty() {
            want.insert(format!("member_level={value}"), b.len());
        }
    }
    assert_eq!(per_tag, want);

    // A bad expression is an error naming what is wrong.
    let err = session
        .execute("SELECT * FROM segment('skincare_lovr')", None)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("skincare_lovr"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameters_bind_and_sessions_see_only_their_workspaces() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path()).await;
    let shop = shop(&engine, "shop", 60).await;
    let other = shop_events_only(&engine).await;

    let session = SqlSession::new(vec![shop.clone()], Some("shop")).unwrap();
    let sql = "SELECT count(*) FROM events WHERE channel = $1";
    let (columns, params) = session.describe(sql).await.unwrap();
    assert_eq!(columns.fields().len(), 1);
    assert_eq!(params.field(0).name(), "$1");
    assert!(matches!(
        params.field(0).data_type(),
        DataType::Utf8 | DataType::Utf8View
    ));
    // ADBC names a bound row's columns "0", "1", ...
    let row = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("0", DataType::Utf8, true)])),
        vec![Arc::new(StringArray::from(vec!["pos"]))],
    )
    .unwrap();
    let bound = collect(&session, sql, Some(&row)).await;
    let literal = collect(
        &session,
        "SELECT count(*) FROM events WHERE channel = 'pos'",
        None,
    )
    .await;
    assert_eq!(bound, literal);
    assert!(int(&bound[0][0]) > 0);

    // Read-only.
    for sql in [
        "CREATE TABLE t AS SELECT 1",
        "INSERT INTO events SELECT * FROM events",
        "SET datafusion.execution.batch_size = 1",
    ] {
        assert!(session.execute(sql, None).await.is_err(), "{sql}");
    }

    // Two workspaces, no default: names are qualified; a session never
    // sees a workspace it was not given.
    let both = SqlSession::new(vec![shop.clone(), other.clone()], None).unwrap();
    let n = collect(
        &both,
        "SELECT (SELECT count(*) FROM shop.events) > 0, (SELECT count(*) FROM other.events)",
        None,
    )
    .await;
    assert_eq!(n[0], vec![Some("true".into()), Some("3".into())]);
    assert!(both.execute("SELECT * FROM events", None).await.is_err());
    let schemas = collect(
        &session,
        "SELECT DISTINCT table_schema FROM information_schema.tables ORDER BY 1",
        None,
    )
    .await;
    assert!(!schemas.iter().any(|r| r[0].as_deref() == Some("other")));
    let err = session
        .execute("SELECT * FROM other.events", None)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("other"), "{err}");
    let tables: Vec<String> = both
        .tables()
        .await
        .unwrap()
        .into_iter()
        .map(|t| format!("{}.{}", t.schema_name, t.name))
        .collect();
    assert!(
        tables.contains(&"shop.person_tags".to_string()),
        "{tables:?}"
    );
    assert!(tables.contains(&"other.events".to_string()), "{tables:?}");
    assert!(!tables.contains(&"other.persons".to_string()), "{tables:?}");
}

/// A workspace with three events and no resolve.
async fn shop_events_only(engine: &Engine) -> Arc<Workspace> {
    let ws = engine.create_workspace("other").await.unwrap();
    let ids: Vec<String> = (0..3).map(|i| format!("o{i}")).collect();
    let phones: Vec<String> = (0..3).map(|i| format!("1380013800{i}")).collect();
    let events = (0..3).map(|i| crate::RawEvent {
        event_id: Some(&ids[i]),
        event_time: crate::event::TimeInput::Text("2026-11-01T10:00:00Z"),
        channel: Some("pos"),
        event_type: Some("purchase"),
        identifiers: vec![("phone", &phones[i])],
        ..Default::default()
    });
    let report = ws.ingest(events).await.unwrap();
    assert_eq!(report.accepted, 3, "{report:?}");
    // Before any resolve, events have no person.
    let r = rows(&ws, "SELECT count(person_id) FROM events").await;
    assert_eq!(r[0][0].as_deref(), Some("0"));
    ws
}
