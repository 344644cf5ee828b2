//! Tags end to end inside the engine: generated events in, OneID, a refresh,
//! and every tag kind checked against a naive model computed here from the
//! same events (a `HashSet` of ordinals per tag).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use arrow::array::AsArray;
use arrow::datatypes::DataType;
use futures::StreamExt;
use quiver_data::GenConfig;

use super::{DefinitionFormat, TagDefinitions};
use crate::event::{RawEvent, TimeInput};
use crate::identity::{IdentityRules, ResolveOptions};
use crate::segment::day_number;
use crate::{Engine, EngineConfig, Workspace};

const DAY_US: i64 = 86_400_000_000;

async fn workspace(dir: &std::path::Path) -> Arc<Workspace> {
    workspace_with(dir, true).await
}

async fn workspace_with(dir: &std::path::Path, refresh_after_resolve: bool) -> Arc<Workspace> {
    let mut cfg = EngineConfig {
        data_dir: dir.to_path_buf(),
        ..Default::default()
    };
    cfg.store.fsync = false;
    cfg.tags.keep_versions = 2;
    cfg.tags.refresh_after_resolve = refresh_after_resolve;
    let engine = Engine::open(cfg).await.unwrap();
    engine.create_workspace("shop").await.unwrap()
}

pub(crate) async fn rows(ws: &Workspace, sql: &str) -> Vec<Vec<Option<String>>> {
    let mut stream = ws.sql(sql).await.unwrap();
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
                        let c = c.as_string::<i32>();
                        (!arrow::array::Array::is_null(c, i)).then(|| c.value(i).to_string())
                    })
                    .collect(),
            );
        }
    }
    out
}

fn quiet(_: crate::identity::Progress) {}

/// One event as the naive model sees it.
#[derive(Debug, Clone)]
pub(crate) struct Ev {
    pub time: i64,
    pub day: i32,
    pub event_type: String,
    pub channel: String,
    pub category: Option<String>,
    pub amount_cents: i64,
    pub level: Option<String>,
}

/// Every live person's events, attributed like the engine says it does: to
/// the person holding the event's strongest identifier.
pub(crate) async fn events_by_person(ws: &Workspace) -> (BTreeMap<u32, Vec<Ev>>, HashSet<u32>) {
    let rules = IdentityRules::default();
    let owner: HashMap<(String, String), u32> =
        rows(ws, "SELECT kind, value, ordinal FROM identifiers")
            .await
            .into_iter()
            .map(|r| {
                let r: Vec<String> = r.into_iter().map(Option::unwrap_or_default).collect();
                ((r[0].clone(), r[1].clone()), r[2].parse().unwrap())
            })
            .collect();
    let live: HashSet<u32> = rows(ws, "SELECT ordinal FROM persons WHERE merged_into IS NULL")
        .await
        .into_iter()
        .map(|r| r[0].as_deref().unwrap().parse().unwrap())
        .collect();
    let mut best: HashMap<String, (u8, u32)> = HashMap::new();
    for r in rows(
        ws,
        "SELECT event_id, i['kind'], i['value'] FROM (SELECT event_id, unnest(identifiers) AS i FROM events)",
    )
    .await
    {
        let (id, kind, value) = (r[0].clone().unwrap(), r[1].clone().unwrap(), r[2].clone().unwrap());
        let Some(&o) = owner.get(&(kind.clone(), value)) else {
            continue;
        };
        if !live.contains(&o) {
            continue;
        }
        let p = rules.kind(&kind).priority;
        let e = best.entry(id).or_insert((p, o));
        if p > e.0 {
            *e = (p, o);
        }
    }
    let mut out: BTreeMap<u32, Vec<Ev>> = BTreeMap::new();
    for r in rows(
        ws,
        "SELECT event_id, CAST(to_unixtime(event_time) * 1000000 AS BIGINT), CAST(event_date AS INT), event_type, channel, category, CAST(amount * 100 AS BIGINT), properties['member_level'] FROM events",
    )
    .await
    {
        let Some(&(_, o)) = best.get(r[0].as_deref().unwrap()) else {
            continue;
        };
        out.entry(o).or_default().push(Ev {
            time: r[1].as_deref().unwrap().parse().unwrap(),
            day: r[2].as_deref().unwrap().parse().unwrap(),
            event_type: r[3].clone().unwrap(),
            channel: r[4].clone().unwrap(),
            category: r[5].clone(),
            amount_cents: r[6].as_deref().map_or(0, |a| a.parse().unwrap()),
            level: r[7].clone(),
        });
    }
    (out, live)
}

fn bits(b: &roaring::RoaringBitmap) -> HashSet<u32> {
    b.iter().collect()
}

const EXTRA: &str = r#"
[behaviour]
dimensions = ["category", "channel", "member_level"]

[[tag]]
name = "big_spender"
kind = "boolean"
rule = "total_spend >= 500 AND NOT skincare_lover"

[[tag]]
name = "mini_skincare_buyer"
kind = "boolean"
rule = "did(purchase WHERE category = 'skincare' AND channel = 'miniprogram')"

[[tag]]
name = "made_gold"
kind = "boolean"
rule = "did(profile_update WHERE member_level = 'gold') >= 1"

[[tag]]
name = "quiet_viewer"
kind = "boolean"
rule = "did(page_view) BETWEEN '2026-10-01' AND '2026-10-31' AND did(purchase) = 0"

[[tag]]
name = "spend"
kind = "numeric"
source = "total_spend"

[[tag]]
name = "vip_list"
kind = "manual"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tag_kind_equals_a_naive_model() {
    let dir = tempfile::tempdir().unwrap();
    let ws = workspace(dir.path()).await;
    let config = GenConfig {
        persons: 800,
        threads: 1,
        ..Default::default()
    };
    let (batches, _) = quiver_data::generate_batches(&config).unwrap();
    for b in &batches {
        ws.ingest_arrow(b).await.unwrap();
    }
    ws.resolve(ResolveOptions::default(), &quiet).await.unwrap();

    let seed = TagDefinitions::parse(quiver_data::SEED_TAGS_TOML, DefinitionFormat::Toml).unwrap();
    ws.define_tags(&seed).await.unwrap();
    let extra = TagDefinitions::parse(EXTRA, DefinitionFormat::Toml).unwrap();
    let defs = ws.define_tags(&extra).await.unwrap();
    assert_eq!(defs.tags.len(), 10);

    // The manual list: phones of some persons, plus values nobody holds.
    let phones: Vec<(String, u32)> = rows(
        &ws,
        "SELECT value, ordinal FROM identifiers WHERE kind = 'phone' ORDER BY value LIMIT 25",
    )
    .await
    .into_iter()
    .map(|r| {
        (
            r[0].clone().unwrap(),
            r[1].as_deref().unwrap().parse().unwrap(),
        )
    })
    .collect();
    let mut upload: Vec<String> = phones.iter().map(|(v, _)| format!("phone:{v}")).collect();
    upload.push("phone:+8613999999990".into());
    upload.push("email:nobody@example.invalid".into());
    let up = ws.upload_manual_tag("vip_list", &upload).await.unwrap();
    assert_eq!((up.matched, up.unknown), (25, 2), "{up:?}");

    let now_date = config.end_date;
    let now_day = day_number(now_date);
    let now = i64::from(now_day) * DAY_US + DAY_US / 2;
    let report = ws.refresh_tags(Some(now), &|_| {}).await.unwrap();
    assert_eq!(report.version, 1);
    let index = ws.tag_index().unwrap().unwrap();

    let (events, live) = events_by_person(&ws).await;
    assert_eq!(bits(&index.live), live);
    let model = |keep: &dyn Fn(&[Ev]) -> bool| -> HashSet<u32> {
        live.iter()
            .copied()
            .filter(|o| keep(events.get(o).map_or(&[][..], Vec::as_slice)))
            .collect()
    };
    let count = |evs: &[Ev], f: &dyn Fn(&Ev) -> bool| evs.iter().filter(|e| f(e)).count();
    let skincare = model(&|evs| {
        count(evs, &|e| {
            e.event_type == "page_view" && e.category.as_deref() == Some("skincare")
        }) > 3
    });
    let spend = |evs: &[Ev]| -> i64 {
        evs.iter()
            .filter(|e| e.event_type == "purchase")
            .map(|e| e.amount_cents)
            .sum()
    };
    let expected: Vec<(&str, HashSet<u32>)> = vec![
        (
            "miniprogram_user",
            model(&|evs| {
                evs.iter()
                    .filter(|e| e.event_type == "register")
                    .min_by_key(|e| e.time)
                    .is_some_and(|e| e.channel == "miniprogram")
            }),
        ),
        ("skincare_lover", skincare.clone()),
        (
            "highly_active",
            model(&|evs| {
                count(evs, &|e| {
                    e.event_type == "purchase" && e.day > now_day - 7 && e.day <= now_day
                }) >= 2
            }),
        ),
        (
            "big_spender",
            model(&|evs| spend(evs) >= 50_000)
                .difference(&skincare)
                .copied()
                .collect(),
        ),
        (
            "mini_skincare_buyer",
            model(&|evs| {
                count(evs, &|e| {
                    e.event_type == "purchase"
                        && e.category.as_deref() == Some("skincare")
                        && e.channel == "miniprogram"
                }) >= 1
            }),
        ),
        (
            "quiet_viewer",
            model(&|evs| {
                let (from, to) = (
                    day_number(chrono::NaiveDate::from_ymd_opt(2026, 10, 1).unwrap()),
                    day_number(chrono::NaiveDate::from_ymd_opt(2026, 10, 31).unwrap()),
                );
                count(evs, &|e| {
                    e.event_type == "page_view" && (from..=to).contains(&e.day)
                }) >= 1
                    && count(evs, &|e| e.event_type == "purchase") == 0
            }),
        ),
        (
            // A dimension only the `properties` map holds.
            "made_gold",
            model(&|evs| {
                count(evs, &|e| {
                    e.event_type == "profile_update" && e.level.as_deref() == Some("gold")
                }) >= 1
            }),
        ),
        ("vip_list", phones.iter().map(|p| p.1).collect()),
    ];
    for (name, want) in &expected {
        let got = bits(&index.tags[*name]);
        assert!(
            !want.is_empty(),
            "{name}: the model selects nobody; the test is too weak"
        );
        assert_eq!(&got, want, "tag {name}");
        let cov = report.tags.iter().find(|t| t.name == *name).unwrap();
        assert_eq!(cov.count, want.len() as u64, "{name}");
    }
    assert_eq!(
        report
            .tags
            .iter()
            .find(|t| t.name == "vip_list")
            .unwrap()
            .unknown_identifiers,
        2
    );

    // Enum: the latest member_level per person, one bitmap per value.
    let mut levels: BTreeMap<String, HashSet<u32>> = BTreeMap::new();
    for (&o, evs) in &events {
        if let Some(e) = evs
            .iter()
            .filter(|e| e.event_type == "profile_update" && e.level.is_some())
            .max_by(|a, b| (a.time, &a.level).cmp(&(b.time, &b.level)))
        {
            levels
                .entry(e.level.clone().unwrap())
                .or_default()
                .insert(o);
        }
    }
    assert_eq!(levels.len(), 4, "{levels:?}");
    for (value, want) in &levels {
        assert_eq!(
            &bits(&index.enums["member_level"][value]),
            want,
            "member_level = {value}"
        );
    }

    // Numeric: the spend index holds every live person's total, in cents.
    for &o in &live {
        let want = spend(events.get(&o).map_or(&[][..], Vec::as_slice));
        assert_eq!(
            index.numbers["spend"].bsi.get(crate::index::Ordinal(o)),
            Some(want)
        );
    }

    // Person 360 sees the same tags; the profile table agrees.
    let someone = *expected[1].1.iter().next().unwrap();
    let tags = ws.person_tags(someone).unwrap();
    assert!(
        tags.contains(&("skincare_lover".to_string(), "true".to_string())),
        "{tags:?}"
    );
    let profiles = rows(&ws, "SELECT count(*) FROM profiles").await;
    assert_eq!(
        profiles[0][0].as_deref(),
        Some(live.len().to_string().as_str())
    );

    // Versions: coverage per version, the oldest pruned past keep_versions = 2.
    ws.refresh_tags(Some(now), &|_| {}).await.unwrap();
    ws.refresh_tags(Some(now + 30 * DAY_US), &|_| {})
        .await
        .unwrap();
    let (_, versions) = ws.tag_versions("highly_active").unwrap();
    assert_eq!(
        versions.iter().map(|v| v.version).collect::<Vec<_>>(),
        vec![2, 3]
    );
    assert_eq!(versions[0].count, expected[2].1.len() as u64);
    assert_eq!(
        versions[1].count, 0,
        "a month later nobody bought in the last 7 days"
    );
    let (_, seeds) = ws.tag_versions("member_level").unwrap();
    assert_eq!(seeds[0].values.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_moves_the_retired_persons_bits_to_the_survivor() {
    let dir = tempfile::tempdir().unwrap();
    let ws = workspace(dir.path()).await;
    let t0 = 1_790_000_000_000_000i64;
    let mut evs: Vec<(String, &str, &str, (&str, String))> = Vec::new();
    for p in 0..6 {
        let phone = format!("+86138001380{p:02}");
        evs.push((format!("r{p}"), "register", "pos", ("phone", phone.clone())));
        for i in 0..(p + 1) {
            evs.push((
                format!("v{p}-{i}"),
                "purchase",
                "pos",
                ("phone", phone.clone()),
            ));
        }
    }
    let raw: Vec<RawEvent> = evs
        .iter()
        .enumerate()
        .map(|(i, (id, ty, ch, idf))| RawEvent {
            event_id: Some(id),
            event_time: TimeInput::Micros(t0 + i as i64 * 1_000_000),
            channel: Some(ch),
            event_type: Some(ty),
            identifiers: vec![(idf.0, idf.1.as_str())],
            ..RawEvent::default()
        })
        .collect();
    ws.ingest(raw.into_iter()).await.unwrap();
    ws.resolve(ResolveOptions::default(), &quiet).await.unwrap();
    let defs = TagDefinitions::parse(
        "[[tag]]\nname = \"repeat\"\nkind = \"boolean\"\nrule = \"did(purchase) >= 5\"",
        DefinitionFormat::Toml,
    )
    .unwrap();
    ws.define_tags(&defs).await.unwrap();
    ws.refresh_tags(Some(t0), &|_| {}).await.unwrap();
    let ord =
        |rows: Vec<Vec<Option<String>>>| -> u32 { rows[0][0].as_deref().unwrap().parse().unwrap() };
    let a = ord(rows(
        &ws,
        "SELECT ordinal FROM identifiers WHERE value = '+8613800138000'",
    )
    .await);
    let b = ord(rows(
        &ws,
        "SELECT ordinal FROM identifiers WHERE value = '+8613800138003'",
    )
    .await);
    let before = bits(&ws.tag_index().unwrap().unwrap().tags["repeat"]);
    assert!(
        !before.contains(&a) && !before.contains(&b),
        "1 and 4 purchases: {before:?}"
    );

    // One event carries both phones: the two persons merge, 1 + 4 = 5 purchases.
    let link = RawEvent {
        event_id: Some("link"),
        event_time: TimeInput::Micros(t0 + 100_000_000),
        channel: Some("crm"),
        event_type: Some("lead"),
        identifiers: vec![("phone", "+8613800138000"), ("phone", "+8613800138003")],
        ..RawEvent::default()
    };
    ws.ingest([link].into_iter()).await.unwrap();
    let r = ws.resolve(ResolveOptions::default(), &quiet).await.unwrap();
    assert_eq!(r.merges, 1, "{r:?}");
    let refreshed = ws.refresh_tags(Some(t0), &|_| {}).await.unwrap();
    // The resolve refreshed already (incrementally): nothing left to read.
    assert!(
        refreshed.incremental && refreshed.events_read == 0,
        "{refreshed:?}"
    );
    let index = ws.tag_index().unwrap().unwrap();
    let survivor = ord(rows(
        &ws,
        "SELECT ordinal FROM identifiers WHERE value = '+8613800138003'",
    )
    .await);
    let retired = if survivor == a { b } else { a };
    assert!(index.tags["repeat"].contains(survivor));
    assert!(!index.live.contains(retired));
    for b in index
        .tags
        .values()
        .chain(index.enums.values().flat_map(|m| m.values()))
    {
        assert!(!b.contains(retired), "a retired ordinal kept a bit");
    }
    assert_eq!(
        index.numbers["order_count"]
            .bsi
            .get(crate::index::Ordinal(survivor)),
        Some(5)
    );
}

/// Every index of `a` equals `b`'s, count for count.
fn assert_same_index(a: &crate::index::IndexSet, b: &crate::index::IndexSet) {
    assert_eq!(a.live, b.live, "live persons");
    assert_eq!(a.tags, b.tags, "boolean and manual tags");
    assert_eq!(a.enums, b.enums, "enumerated tags, traits, attributes");
    assert_eq!(
        a.numbers.keys().collect::<Vec<_>>(),
        b.numbers.keys().collect::<Vec<_>>()
    );
    for (name, n) in &a.numbers {
        assert_eq!(n.bsi.values(), b.numbers[name].bsi.values(), "trait {name}");
    }
    assert_eq!(
        a.behaviour.keys().collect::<Vec<_>>(),
        b.behaviour.keys().collect::<Vec<_>>()
    );
    for (key, c) in &a.behaviour {
        assert!(c.same_counts(&b.behaviour[key]), "behaviour {key}");
    }
    assert_eq!(a.event_types, b.event_types);
}

/// The profile tables, sorted, without the refresh time.
async fn profile_rows(ws: &Workspace) -> Vec<Vec<Option<String>>> {
    let mut out = rows(
        ws,
        "SELECT * EXCEPT (refreshed_at, attributes, events_by_channel), \
         array_to_string(map_keys(attributes), ','), array_to_string(map_values(attributes), ','), \
         array_to_string(map_keys(events_by_channel), ','), array_to_string(map_values(events_by_channel), ',') \
         FROM profiles ORDER BY ordinal",
    )
    .await;
    let mut history = rows(ws, "SELECT * FROM attribute_history").await;
    history.sort();
    out.extend(history);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incremental_refresh_equals_a_full_one() {
    let dir = tempfile::tempdir().unwrap();
    let ws = workspace_with(dir.path(), false).await;
    let config = GenConfig {
        persons: 600,
        threads: 1,
        ..Default::default()
    };
    let (batches, _) = quiver_data::generate_batches(&config).unwrap();
    // Every 8th event arrives later: persons seen first through one
    // identifier get linked to another (merges), and their counts, spend,
    // attributes and day counts grow.
    let (mut first, mut later) = (Vec::new(), Vec::new());
    for b in &batches {
        let late: arrow::array::BooleanArray =
            (0..b.num_rows()).map(|i| Some(i % 8 == 3)).collect();
        let early = arrow::compute::not(&late).unwrap();
        first.push(arrow::compute::filter_record_batch(b, &early).unwrap());
        later.push(arrow::compute::filter_record_batch(b, &late).unwrap());
    }
    for b in &first {
        ws.ingest_arrow(b).await.unwrap();
    }
    // No value is ever quarantined here (a change in quarantined values makes
    // a refresh read every event; see the test below), so the later events
    // only merge persons and add to them.
    let mut rules = IdentityRules {
        max_persons_per_value: u32::MAX,
        ..IdentityRules::default()
    };
    for k in rules.kinds.values_mut() {
        k.max_persons = None;
    }
    let opts = ResolveOptions {
        rules: Some(rules),
        ..ResolveOptions::default()
    };
    ws.resolve(opts, &quiet).await.unwrap();
    let seed = TagDefinitions::parse(quiver_data::SEED_TAGS_TOML, DefinitionFormat::Toml).unwrap();
    ws.define_tags(&seed).await.unwrap();
    ws.define_tags(&TagDefinitions::parse(EXTRA, DefinitionFormat::Toml).unwrap())
        .await
        .unwrap();
    let now = i64::from(day_number(config.end_date)) * DAY_US + DAY_US / 2;
    let r1 = ws.refresh_tags(Some(now), &quiet).await.unwrap();
    assert!(!r1.incremental, "{r1:?}");
    assert!(r1.full_reason.contains("no earlier refresh"), "{r1:?}");
    assert_eq!(r1.events_read, r1.events);

    for b in &later {
        ws.ingest_arrow(b).await.unwrap();
    }
    let resolved = ws.resolve(ResolveOptions::default(), &quiet).await.unwrap();
    assert!(resolved.incremental && resolved.merges > 0, "{resolved:?}");
    assert_eq!(resolved.splits, 0, "{resolved:?}");
    let r2 = ws.refresh_tags(Some(now), &quiet).await.unwrap();
    assert!(r2.incremental, "{r2:?}");
    let added: usize = later.iter().map(|b| b.num_rows()).sum();
    assert!(
        r2.events_read <= added as u64 && r2.events_read > 0,
        "{r2:?}"
    );
    let incremental = ws.tag_index().unwrap().unwrap();
    let incremental_rows = profile_rows(&ws).await;

    let r3 = ws.refresh_tags_with(Some(now), true, &quiet).await.unwrap();
    assert!(
        !r3.incremental && r3.full_reason.contains("asked"),
        "{r3:?}"
    );
    assert_eq!((r3.events, r3.persons), (r2.events, r2.persons));
    assert_eq!(r3.tags, r2.tags);
    let full = ws.tag_index().unwrap().unwrap();
    assert_same_index(&incremental, &full);
    assert_eq!(incremental_rows, profile_rows(&ws).await);

    // Nothing new: nothing read, the same index.
    let r4 = ws.refresh_tags(Some(now), &quiet).await.unwrap();
    assert!(r4.incremental && r4.events_read == 0, "{r4:?}");
    assert_same_index(&ws.tag_index().unwrap().unwrap(), &full);

    // New behaviour keys, or a damaged state: every event is read again.
    let combo = "[[tag]]\nname = \"app_skincare\"\nkind = \"boolean\"\nrule = \"did(page_view WHERE category = 'skincare' AND channel = 'app')\"";
    ws.define_tags(&TagDefinitions::parse(combo, DefinitionFormat::Toml).unwrap())
        .await
        .unwrap();
    let r5 = ws.refresh_tags(Some(now), &quiet).await.unwrap();
    assert!(r5.full_reason.contains("behaviour keys"), "{r5:?}");
    let state = dir.path().join("workspaces/shop/index/refresh.state");
    let mut bytes = std::fs::read(&state).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x10;
    std::fs::write(&state, bytes).unwrap();
    let r6 = ws.refresh_tags(Some(now), &quiet).await.unwrap();
    assert!(r6.full_reason.contains("unreadable"), "{r6:?}");
    assert_eq!(r6.tags, r5.tags);
    // Other OneID rules.
    let defaults = ResolveOptions {
        rules: Some(IdentityRules::default()),
        ..ResolveOptions::default()
    };
    ws.resolve(defaults, &quiet).await.unwrap();
    let r7 = ws.refresh_tags(Some(now), &quiet).await.unwrap();
    assert!(r7.full_reason.contains("rules changed"), "{r7:?}");
}

/// Paths of the data files of `ws`'s events table at its latest version.
fn event_files(ws: &Workspace) -> HashSet<String> {
    let (table, _) = ws.read_view();
    let uris = table.get_file_uris().unwrap();
    uris.map(|u| u.strip_prefix("file://").unwrap_or(&u).to_string())
        .collect()
}

/// A compaction after the resolve changes no rows: a full refresh reads the
/// compacted files (so the replaced ones may be vacuumed), not the version
/// OneID covered, and new events after the compaction stay out of it until
/// the next resolve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_refresh_reads_the_compacted_files_of_the_events_it_covers() {
    let dir = tempfile::tempdir().unwrap();
    let ws = workspace_with(dir.path(), false).await;
    let config = GenConfig {
        persons: 300,
        threads: 1,
        ..Default::default()
    };
    let (batches, _) = quiver_data::generate_batches(&config).unwrap();
    // Rows by `i % 8`: 0–3 and 4–6 flushed apart (two files for most days),
    // 7 after the compaction.
    let part = |b: &arrow::array::RecordBatch, keep: fn(usize) -> bool| {
        let mask: arrow::array::BooleanArray =
            (0..b.num_rows()).map(|i| Some(keep(i % 8))).collect();
        arrow::compute::filter_record_batch(b, &mask).unwrap()
    };
    for keep in [|r| r < 4, |r| (4..7).contains(&r)] as [fn(usize) -> bool; 2] {
        for b in &batches {
            ws.ingest_arrow(&part(b, keep)).await.unwrap();
        }
        ws.flush().await.unwrap();
    }
    ws.resolve(ResolveOptions::default(), &quiet).await.unwrap();
    let seed = TagDefinitions::parse(quiver_data::SEED_TAGS_TOML, DefinitionFormat::Toml).unwrap();
    ws.define_tags(&seed).await.unwrap();
    let now = i64::from(day_number(config.end_date)) * DAY_US + DAY_US / 2;
    let before = ws.refresh_tags_with(Some(now), true, &quiet).await.unwrap();
    let index = ws.tag_index().unwrap().unwrap();
    let profiles = profile_rows(&ws).await;

    let files = event_files(&ws);
    let report = ws.optimize().await.unwrap();
    assert!(report.files_removed > report.files_added, "{report:?}");
    let compacted = event_files(&ws);
    // A vacuum: the replaced files are gone.
    for f in files.difference(&compacted) {
        std::fs::remove_file(f).unwrap();
    }
    // Events after the compaction, not resolved yet.
    for b in &batches {
        ws.ingest_arrow(&part(b, |r| r == 7)).await.unwrap();
    }
    ws.flush().await.unwrap();

    let after = ws.refresh_tags_with(Some(now), true, &quiet).await.unwrap();
    assert_eq!(
        (after.events, after.events_read, after.persons),
        (before.events, before.events, before.persons),
        "{after:?}"
    );
    assert_eq!(after.tags, before.tags);
    assert_same_index(&index, &ws.tag_index().unwrap().unwrap());
    assert_eq!(profiles, profile_rows(&ws).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newly_quarantined_value_makes_the_refresh_read_every_event() {
    let dir = tempfile::tempdir().unwrap();
    let ws = workspace_with(dir.path(), false).await;
    let t0 = 1_790_000_000_000_000i64;
    let event = |id: &'static str, i: i64, ids: Vec<(&'static str, &'static str)>| RawEvent {
        event_id: Some(id),
        event_time: TimeInput::Micros(t0 + i * 1_000_000),
        channel: Some("app"),
        event_type: Some("page_view"),
        identifiers: ids,
        ..RawEvent::default()
    };
    // A tablet seen with one person, and alone (its events go to that person).
    ws.ingest(
        [
            event(
                "a1",
                1,
                vec![("phone", "+8613800138001"), ("device", "tab-1")],
            ),
            event("a2", 2, vec![("device", "tab-1")]),
            event("b1", 3, vec![("phone", "+8613800138002")]),
        ]
        .into_iter(),
    )
    .await
    .unwrap();
    ws.resolve(ResolveOptions::default(), &quiet).await.unwrap();
    let defs = TagDefinitions::parse(
        "[[tag]]\nname = \"viewer\"\nkind = \"boolean\"\nrule = \"did(page_view) >= 2\"",
        DefinitionFormat::Toml,
    )
    .unwrap();
    ws.define_tags(&defs).await.unwrap();
    let ordinal = |v: &'static str| {
        let ws = ws.clone();
        async move {
            rows(
                &ws,
                &format!("SELECT ordinal FROM identifiers WHERE value = '{v}'"),
            )
            .await[0][0]
                .as_deref()
                .unwrap()
                .parse::<u32>()
                .unwrap()
        }
    };
    let (a, b) = (
        ordinal("+8613800138001").await,
        ordinal("+8613800138002").await,
    );
    ws.refresh_tags(Some(t0), &quiet).await.unwrap();
    assert_eq!(
        bits(&ws.tag_index().unwrap().unwrap().tags["viewer"]),
        HashSet::from([a])
    );
    // A second person uses it: devices may belong to one person, so it is
    // quarantined and its lone event belongs to nobody any more.
    ws.ingest(
        [event(
            "b2",
            4,
            vec![("phone", "+8613800138002"), ("device", "tab-1")],
        )]
        .into_iter(),
    )
    .await
    .unwrap();
    let resolved = ws.resolve(ResolveOptions::default(), &quiet).await.unwrap();
    assert_eq!(resolved.quarantined_count, 1, "{resolved:?}");
    let r2 = ws.refresh_tags(Some(t0), &quiet).await.unwrap();
    assert!(r2.full_reason.contains("quarantined"), "{r2:?}");
    assert_eq!(r2.unattributed_events, 1, "{r2:?}");
    assert_eq!(
        bits(&ws.tag_index().unwrap().unwrap().tags["viewer"]),
        HashSet::from([b])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_from_the_snapshot_equal_owners_from_identifiers() {
    let dir = tempfile::tempdir().unwrap();
    let ws = workspace_with(dir.path(), false).await;
    let config = GenConfig {
        persons: 500,
        threads: 1,
        ..Default::default()
    };
    let (batches, _) = quiver_data::generate_batches(&config).unwrap();
    for b in &batches {
        ws.ingest_arrow(b).await.unwrap();
    }
    let resolved = ws.resolve(ResolveOptions::default(), &quiet).await.unwrap();
    assert!(
        !resolved.quarantined.is_empty(),
        "the data should hold quarantined values"
    );
    let seed = TagDefinitions::parse(quiver_data::SEED_TAGS_TOML, DefinitionFormat::Toml).unwrap();
    ws.define_tags(&seed).await.unwrap();
    let now = i64::from(day_number(config.end_date)) * DAY_US + DAY_US / 2;
    let from_snapshot = ws.refresh_tags_with(Some(now), true, &quiet).await.unwrap();
    let index_a = ws.tag_index().unwrap().unwrap();
    let profiles_a = profile_rows(&ws).await;

    let rules = ws.identity_rules().unwrap();
    let run = crate::identity::tables::read_state(ws.dir()).unwrap().run;
    let snap = crate::identity::snapshot::dir_of(ws.dir(), run);
    let a = crate::profile::PersonMap::load(&ws, &rules, run)
        .await
        .unwrap()
        .unwrap();
    // A damaged snapshot falls back to the `identifiers` table, as a missing one does.
    std::fs::write(snap.join("seen.arrow"), b"not arrow").unwrap();
    let b = crate::profile::PersonMap::load(&ws, &rules, run)
        .await
        .unwrap()
        .unwrap();
    std::fs::remove_dir_all(&snap).unwrap();
    let c = crate::profile::PersonMap::load(&ws, &rules, run)
        .await
        .unwrap()
        .unwrap();
    let values = rows(&ws, "SELECT kind, value FROM identifiers").await;
    assert!(values.len() > 1000);
    let mut owned = 0;
    for r in &values {
        let (kind, value) = (r[0].as_deref().unwrap(), r[1].as_deref().unwrap());
        let o = a.ordinal_of(kind, value);
        assert_eq!(o, b.ordinal_of(kind, value), "{kind}:{value}");
        assert_eq!(o, c.ordinal_of(kind, value), "{kind}:{value}");
        owned += usize::from(o.is_some());
    }
    assert!(owned * 10 > values.len() * 9, "{owned} of {}", values.len());
    // Priorities: an event's person is its strongest value's.
    let pairs = rows(
        &ws,
        "SELECT a.kind, a.value, b.kind, b.value FROM identifiers a JOIN identifiers b \
         ON a.person_id <> b.person_id AND a.kind <> b.kind LIMIT 200",
    )
    .await;
    assert!(!pairs.is_empty());
    for r in &pairs {
        let ids = [
            (r[0].as_deref().unwrap(), r[1].as_deref().unwrap()),
            (r[2].as_deref().unwrap(), r[3].as_deref().unwrap()),
        ];
        assert_eq!(a.owner_of(ids), c.owner_of(ids), "{ids:?}");
        // The strongest owned value decides, in either order; the first of equals.
        let owner = |(k, v): (&str, &str)| a.ordinal_of(k, v);
        let priority = |(k, _): (&str, &str)| rules.kind(k).priority;
        for [x, y] in [ids, [ids[1], ids[0]]] {
            let expected = if priority(y) > priority(x) {
                owner(y).or(owner(x))
            } else {
                owner(x).or(owner(y))
            };
            assert_eq!(a.owner_of([x, y]), expected, "{x:?} {y:?}");
        }
    }

    // The refresh without the snapshot gives the same index and profiles.
    let from_table = ws.refresh_tags_with(Some(now), true, &quiet).await.unwrap();
    assert_eq!(from_snapshot.events, from_table.events);
    assert_eq!(
        from_snapshot.unattributed_events,
        from_table.unattributed_events
    );
    assert_same_index(&index_a, &ws.tag_index().unwrap().unwrap());
    assert_eq!(profiles_a, profile_rows(&ws).await);
    assert_eq!(from_snapshot.phases[0].0, "persons");
}
