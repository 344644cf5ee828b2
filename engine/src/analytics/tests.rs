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
    // Strings are plain `Utf8` from Parquet on (no views to cast back).
    assert_eq!(params.field(0).data_type(), &DataType::Utf8);
    let (columns, _) = session
        .describe("SELECT event_id, channel, identifiers FROM events")
        .await
        .unwrap();
    let types: Vec<_> = columns
        .fields()
        .iter()
        .map(|f| f.data_type().clone())
        .collect();
    assert_eq!(types[..2], [DataType::Utf8, DataType::Utf8]);
    assert!(
        !format!("{:?}", types[2]).contains("View"),
        "identifiers: {:?}",
        types[2]
    );
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

/// One person's events in the engine's order.
fn ordered(mut evs: Vec<crate::tag::tests::Ev>) -> Vec<crate::tag::tests::Ev> {
    evs.sort_by(|a, b| {
        (
            a.time,
            &a.event_type,
            &a.channel,
            &a.category,
            a.amount_cents,
        )
            .cmp(&(
                b.time,
                &b.event_type,
                &b.channel,
                &b.category,
                b.amount_cents,
            ))
    });
    evs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn funnels_retention_and_attribution_equal_naive_models() {
    use super::{AttributionRequest, FunnelRequest, NO_TOUCH, Period, RetentionRequest};
    const DAY: i64 = 86_400_000_000;
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path()).await;
    let ws = shop(&engine, "shop", 400).await;
    let (naive, _) = events_by_person(&ws).await;
    let people: Vec<Vec<crate::tag::tests::Ev>> = naive.into_values().map(ordered).collect();
    let stats = ws.load_timelines().await.unwrap().unwrap();
    assert_eq!(stats.persons as usize, people.len());
    assert_eq!(
        stats.events as usize,
        people.iter().map(Vec::len).sum::<usize>()
    );

    // Funnel: for each step-1 event, the earliest later match of each next
    // step within the window; a person's level is the best over starts.
    let steps = [
        "ad_click",
        "add_to_cart",
        "did(purchase WHERE channel = 'miniprogram')",
    ];
    let is = |e: &crate::tag::tests::Ev, k: usize| match k {
        0 => e.event_type == "ad_click",
        1 => e.event_type == "add_to_cart",
        _ => e.event_type == "purchase" && e.channel == "miniprogram",
    };
    let window = 7 * DAY;
    let mut want = [0u64; 3];
    for evs in &people {
        let mut best = 0;
        for (i, e) in evs.iter().enumerate() {
            if !is(e, 0) {
                continue;
            }
            let (mut level, mut at) = (1, i);
            for k in 1..3 {
                match (at + 1..evs.len())
                    .find(|&j| is(&evs[j], k) && evs[j].time - e.time <= window)
                {
                    Some(j) => {
                        level = k + 1;
                        at = j;
                    }
                    None => break,
                }
            }
            best = best.max(level);
        }
        for c in want.iter_mut().take(best) {
            *c += 1;
        }
    }
    let f = ws
        .funnel(&FunnelRequest {
            steps: steps.iter().map(|s| s.to_string()).collect(),
            window,
            breakdown: Some("member_level".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let got: Vec<u64> = f.steps.iter().map(|s| s.persons).collect();
    assert_eq!(got, want.to_vec());
    assert!(want[2] > 0, "the data should convert someone: {want:?}");
    assert!(f.steps[1].median_seconds_from_previous.unwrap() >= 0.0);
    // The breakdown partitions each step's persons.
    for k in 0..3 {
        let sum: u64 = f.breakdown.values().map(|v| v[k]).sum();
        assert_eq!(sum, want[k], "step {k}: {:?}", f.breakdown);
    }
    let by_channel = ws
        .funnel(&FunnelRequest {
            steps: steps.iter().map(|s| s.to_string()).collect(),
            window,
            breakdown: Some("channel".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        by_channel.breakdown.values().map(|v| v[0]).sum::<u64>(),
        want[0]
    );

    // Retention: weekly cohorts of the first event, 4 periods.
    let from = 20_454 * DAY; // 2026-01-01
    let to = from + 8 * 7 * DAY;
    let r = ws
        .retention(&RetentionRequest {
            cohort_event: None,
            return_event: Some("purchase".into()),
            period: Period::Week,
            periods: 4,
            from,
            to,
        })
        .await
        .unwrap();
    let mut want: BTreeMap<i64, (u64, Vec<u64>)> = BTreeMap::new();
    for evs in &people {
        let t0 = evs[0].time;
        if t0 < from || t0 >= to {
            continue;
        }
        let c0 = Period::Week.start(t0);
        let row = want.entry(c0).or_insert((0, vec![0; 4]));
        row.0 += 1;
        for k in 0..4 {
            let (a, b) = (c0 + k as i64 * 7 * DAY, c0 + (k as i64 + 1) * 7 * DAY);
            if evs
                .iter()
                .any(|e| e.event_type == "purchase" && e.time >= a && e.time < b)
            {
                row.1[k] += 1;
            }
        }
    }
    let got: BTreeMap<i64, (u64, Vec<u64>)> = r
        .cohorts
        .iter()
        .filter(|c| c.persons > 0)
        .map(|c| (c.start, (c.persons, c.retained.clone())))
        .collect();
    assert_eq!(got, want);
    assert!(!want.is_empty());
    // Cohort starts are Mondays.
    assert!(
        r.cohorts
            .iter()
            .all(|c| (c.start / DAY + 3).rem_euclid(7) == 0)
    );

    // Attribution: touches in the 30 days before each purchase.
    let a = ws
        .attribution(&AttributionRequest::default())
        .await
        .unwrap();
    let mut want: BTreeMap<String, [f64; 3]> = BTreeMap::new();
    let mut conversions = 0;
    for evs in &people {
        for (i, e) in evs.iter().enumerate() {
            if e.event_type != "purchase" {
                continue;
            }
            conversions += 1;
            let touches: Vec<&str> = evs[..i]
                .iter()
                .filter(|x| x.event_type != "purchase" && x.time >= e.time - 30 * DAY)
                .map(|x| x.channel.as_str())
                .collect();
            if touches.is_empty() {
                let c = want.entry(NO_TOUCH.into()).or_default();
                c.iter_mut().for_each(|v| *v += 1.0);
                continue;
            }
            want.entry(touches[0].into()).or_default()[0] += 1.0;
            want.entry(touches[touches.len() - 1].into()).or_default()[1] += 1.0;
            for t in &touches {
                want.entry(t.to_string()).or_default()[2] += 1.0 / touches.len() as f64;
            }
        }
    }
    assert_eq!(a.conversions, conversions);
    let got: BTreeMap<String, [f64; 3]> = a
        .channels
        .iter()
        .map(|c| (c.channel.clone(), [c.first_touch, c.last_touch, c.linear]))
        .collect();
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (k, w) in &want {
        for i in 0..3 {
            assert!(
                (got[k][i] - w[i]).abs() < 1e-6,
                "{k}: {:?} vs {w:?}",
                got[k]
            );
        }
    }

    // Bad steps name what is wrong.
    let e = ws
        .funnel(&FunnelRequest {
            steps: vec!["ad_click".into(), "purchse".into()],
            window,
            ..Default::default()
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("purchse") && e.contains("purchase"), "{e}");
    let e = ws
        .funnel(&FunnelRequest {
            steps: vec!["ad_click".into(), "did(purchase WHERE sku = 'x')".into()],
            window,
            ..Default::default()
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("sku"), "{e}");
}
