//! The OneID job end to end inside the engine: generated events with known
//! truth in, persons out, accuracy and id stability checked.

use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::DataType;
use futures::StreamExt;
use quiver_data::{GenConfig, TruthRow, pairwise};

use super::{PersonKey, ResolveOptions};
use crate::{Engine, EngineConfig, Workspace};

async fn workspace(dir: &std::path::Path) -> Arc<Workspace> {
    let mut cfg = EngineConfig {
        data_dir: dir.to_path_buf(),
        ..Default::default()
    };
    cfg.store.fsync = false;
    let engine = Engine::open(cfg).await.unwrap();
    engine.create_workspace("shop").await.unwrap()
}

fn generate(persons: u64) -> (Vec<RecordBatch>, Vec<TruthRow>) {
    let cfg = GenConfig {
        persons,
        threads: 1,
        ..Default::default()
    };
    quiver_data::generate_batches(&cfg).unwrap()
}

async fn rows(ws: &Workspace, sql: &str) -> Vec<Vec<String>> {
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
                    .map(|c| c.as_string::<i32>().value(i).to_string())
                    .collect(),
            );
        }
    }
    out
}

/// `(kind, value) → (person_id, ordinal)` as the tables hold it.
async fn assignment(
    ws: &Workspace,
) -> std::collections::HashMap<(String, String), (String, String)> {
    rows(
        ws,
        "SELECT kind, value, person_id, ordinal FROM identifiers",
    )
    .await
    .into_iter()
    .map(|r| ((r[0].clone(), r[1].clone()), (r[2].clone(), r[3].clone())))
    .collect()
}

fn quiet(_: super::Progress) {}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolves_generated_persons_accurately_and_keeps_ids() {
    let dir = tempfile::tempdir().unwrap();
    let ws = workspace(dir.path()).await;
    let (batches, truth) = generate(3000);
    // Hold back about 1% of the events for the incremental step.
    let total: usize = batches.iter().map(|b| b.num_rows()).sum();
    let held = total / 100;
    let (first, rest) = batches.split_at(batches.len() - 1);
    let last = &rest[0];
    let cut = last.num_rows().saturating_sub(held);
    for b in first {
        ws.ingest_arrow(b).await.unwrap();
    }
    ws.ingest_arrow(&last.slice(0, cut)).await.unwrap();

    let report = ws.resolve(ResolveOptions::default(), &quiet).await.unwrap();
    assert_eq!(report.run, 1);
    assert_eq!(report.new_persons, report.persons);
    assert!(
        report.quarantined_count > 0,
        "store phones are quarantined: {report:?}"
    );

    // The same events again: nothing moves.
    let before = assignment(&ws).await;
    let again = ws.resolve(ResolveOptions::default(), &quiet).await.unwrap();
    assert_eq!(
        (again.merges, again.splits, again.new_persons),
        (0, 0, 0),
        "{again:?}"
    );
    assert_eq!(again.kept, again.persons);
    assert_eq!(assignment(&ws).await, before);

    // 1% more events: at least 99.9% of the persons keep id and ordinal.
    ws.ingest_arrow(&last.slice(cut, last.num_rows() - cut))
        .await
        .unwrap();
    let inc = ws.resolve(ResolveOptions::default(), &quiet).await.unwrap();
    let after = assignment(&ws).await;
    let mut by_person: std::collections::HashMap<&(String, String), bool> = Default::default();
    for (key, id) in &before {
        let same = after.get(key) == Some(id);
        by_person
            .entry(id)
            .and_modify(|s| *s &= same)
            .or_insert(same);
    }
    let kept = by_person.values().filter(|&&s| s).count() as f64 / by_person.len() as f64;
    assert!(kept >= 0.999, "kept {kept}: {inc:?}");
    // That run was incremental: it read only the new events and recomputed
    // only what they reach.
    assert!(inc.incremental, "{inc:?}");
    assert!(inc.events < (total / 50) as u64, "{inc:?}");
    assert!(inc.touched_identifiers * 10 < inc.identifiers, "{inc:?}");

    // A full run over the same events agrees with it exactly.
    let full = ws
        .resolve(
            ResolveOptions {
                full: true,
                ..Default::default()
            },
            &quiet,
        )
        .await
        .unwrap();
    assert!(!full.incremental);
    assert_eq!(
        (full.merges, full.splits, full.new_persons),
        (0, 0, 0),
        "{full:?}"
    );
    assert_eq!(full.persons, inc.persons);
    assert_eq!(full.quarantined_count, inc.quarantined_count);
    assert_eq!(full.refused_count, inc.refused_count);
    assert_eq!(assignment(&ws).await, after);

    // Nothing new: an incremental run reads nothing and changes nothing.
    let idle = ws.resolve(ResolveOptions::default(), &quiet).await.unwrap();
    assert!(
        idle.incremental && idle.events == 0 && idle.touched_identifiers == 0,
        "{idle:?}"
    );
    assert_eq!(assignment(&ws).await, after);

    // Accuracy over all the events.
    let predicted = rows(&ws, "SELECT kind, value, person_id FROM identifiers").await;
    let acc = pairwise(
        &truth,
        predicted
            .into_iter()
            .map(|r| (r[0].clone(), r[1].clone(), r[2].clone())),
    );
    eprintln!("{acc:?}");
    assert!(acc.precision >= 0.995, "{acc:?}");
    assert!(acc.linked_recall >= 0.99, "{acc:?}");

    // Ordinals are dense and never reused: live + retired = all ever given.
    let persons = rows(
        &ws,
        "SELECT count(*), count(DISTINCT ordinal), max(ordinal) FROM persons",
    )
    .await;
    assert_eq!(persons[0][0], persons[0][1]);
    assert_eq!(
        persons[0][2].parse::<u64>().unwrap() + 1,
        persons[0][0].parse::<u64>().unwrap()
    );

    // History has the run's quarantines.
    let hist = rows(
        &ws,
        "SELECT kind, count(*) FROM identity_history GROUP BY kind ORDER BY kind",
    )
    .await;
    assert!(hist.iter().any(|r| r[0] == "quarantine"), "{hist:?}");

    // A person looked up by an identifier in a raw form, and by its id.
    let t = truth.iter().find(|t| t.kind == "phone").unwrap();
    let raw = t.value.trim_start_matches("+86");
    let view = ws
        .person(&PersonKey::Identifier("phone".into(), format!("+86 {raw}")))
        .await
        .unwrap();
    assert!(
        view.identifiers
            .iter()
            .any(|i| i.kind == "phone" && i.value == t.value)
    );
    assert!(!view.latest_events.is_empty());
    let by_id = ws
        .person(&PersonKey::PersonId(view.person_id.clone()))
        .await
        .unwrap();
    assert_eq!(by_id.identifiers, view.identifiers);

    // Explain: two values of one person are linked by a chain with evidence.
    let other = view
        .identifiers
        .iter()
        .find(|i| !(i.kind == "phone" && i.value == t.value));
    if let Some(other) = other {
        let ex = ws
            .explain(("phone", &t.value), (&other.kind, &other.value))
            .await
            .unwrap();
        assert!(ex.same_person, "{ex:?}");
        assert!(!ex.chain.is_empty());
        assert!(
            ex.chain
                .iter()
                .all(|l| l.events > 0 && !l.evidence.is_empty() && l.blocked.is_none())
        );
        assert_eq!(ex.chain.first().unwrap().from, format!("phone:{}", t.value));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_writes_nothing_and_explain_names_the_quarantine() {
    let dir = tempfile::tempdir().unwrap();
    let ws = workspace(dir.path()).await;
    let events: Vec<crate::RawEvent> = (0..6)
        .map(|i| crate::RawEvent {
            identifiers: vec![
                ("phone", "13900000001"),
                ("member", ["m0", "m1", "m2", "m3", "m4", "m5"][i]),
            ],
            ..raw_event(i)
        })
        .collect();
    ws.ingest(events.into_iter()).await.unwrap();
    let dry = ws
        .resolve(
            ResolveOptions {
                dry_run: true,
                ..Default::default()
            },
            &quiet,
        )
        .await
        .unwrap();
    assert_eq!(dry.persons, 6);
    assert_eq!(dry.quarantined_count, 1);
    assert_eq!(dry.quarantined[0].value, "+8613900000001");
    assert!(!ws.dir().join("identifiers").exists());
    assert!(!ws.dir().join("persons").exists());
    assert!(ws.person(&PersonKey::PersonId("x".into())).await.is_err());

    // A pattern that blocks the store phone: it is never used, nothing is quarantined.
    let blocking = super::IdentityRules::from_toml(
        "[kinds.member]\npriority = 100\nmax_per_person = 1\n[kinds.phone]\npriority = 80\npatterns = ['^\\+861390000']\n",
    )
    .unwrap();
    let blocked = ws
        .resolve(
            ResolveOptions {
                dry_run: true,
                rules: Some(blocking),
                ..Default::default()
            },
            &quiet,
        )
        .await
        .unwrap();
    assert_eq!(
        (
            blocked.blocked,
            blocked.quarantined_count,
            blocked.identifiers
        ),
        (6, 0, 6),
        "{blocked:?}"
    );

    ws.resolve(ResolveOptions::default(), &quiet).await.unwrap();
    assert!(ws.dir().join("identifiers").exists());
    let ex = ws
        .explain(("member", "m0"), ("member", "m1"))
        .await
        .unwrap();
    assert!(!ex.same_person);
    assert_eq!(ex.chain.len(), 2, "{ex:?}");
    assert!(
        ex.reason.contains("phone:+8613900000001` is quarantined"),
        "{}",
        ex.reason
    );
}

fn raw_event(i: usize) -> crate::RawEvent<'static> {
    const IDS: [&str; 6] = ["e0", "e1", "e2", "e3", "e4", "e5"];
    crate::RawEvent {
        event_id: Some(IDS[i]),
        event_time: crate::event::TimeInput::Text("2026-10-01T10:00:00Z"),
        channel: Some("pos"),
        event_type: Some("purchase"),
        identifiers: Vec::new(),
        ..Default::default()
    }
}

mod incremental {
    use proptest::prelude::*;

    use super::super::components::{NONE, components};
    use super::super::graph::Graph;
    use super::super::reached;
    use super::super::rules::IdentityRules;

    const KINDS: [&str; 6] = ["member", "unionid", "phone", "openid", "email", "device"];

    fn add(g: &mut Graph, events: &[Vec<(usize, u8)>], offset: usize) {
        for (i, ev) in events.iter().enumerate() {
            let mut nodes: Vec<u32> = ev
                .iter()
                .map(|&(k, v)| {
                    let value = if KINDS[k] == "openid" {
                        format!("wx{}:{v}", v % 2)
                    } else {
                        format!("v{v}")
                    };
                    g.intern(KINDS[k], &value)
                })
                .collect();
            g.add_event(&mut nodes, (offset + i) as i64);
        }
        g.seal();
    }

    /// Persons as sorted sets of `kind:value`, with quarantined values apart.
    fn partition(g: &Graph, person: impl Fn(u32) -> Option<(u8, u32)>) -> Vec<Vec<String>> {
        let mut by: std::collections::BTreeMap<(u8, u32), Vec<String>> = Default::default();
        let mut out = vec![];
        for n in 0..g.len() as u32 {
            let name = format!("{}:{}", g.kind(n), g.value(n));
            match person(n) {
                Some(p) => by.entry(p).or_default().push(name),
                None => out.push(name),
            }
        }
        let mut parts: Vec<Vec<String>> = by
            .into_values()
            .map(|mut v| {
                v.sort();
                v
            })
            .collect();
        parts.sort();
        out.sort();
        parts.push(out);
        parts
    }

    fn events() -> impl Strategy<Value = Vec<Vec<(usize, u8)>>> {
        prop::collection::vec(
            prop::collection::vec((0..KINDS.len(), 0u8..16), 1..4),
            1..50,
        )
    }

    proptest! {
        /// Recomputing only the raw components new events reach, and keeping
        /// every other person, gives the persons a full run gives.
        #[test]
        fn incremental_equals_full(old in events(), new in events(), guard in 1u32..4) {
            let rules = IdentityRules { max_persons_per_value: guard, ..Default::default() }.compile().unwrap();
            let mut before = Graph::default();
            add(&mut before, &old, 0);
            let c_before = components(&before, &rules);

            let mut all = Graph::default();
            add(&mut all, &old, 0);
            all.track = true;
            add(&mut all, &new, old.len());
            let c_full = components(&all, &rules);

            let nodes = reached(&all);
            let sub = all.subgraph(&nodes);
            let c_sub = components(&sub, &rules);
            let pos: std::collections::HashMap<u32, usize> = nodes.iter().enumerate().map(|(i, &n)| (n, i)).collect();
            let inc = partition(&all, |n| match pos.get(&n) {
                Some(&i) => (c_sub.person[i] != NONE).then_some((1, c_sub.person[i])),
                None => {
                    // Untouched, so it was there before, in the same node slot.
                    let p = c_before.person[n as usize];
                    (p != NONE).then_some((0, p))
                }
            });
            let full = partition(&all, |n| {
                let p = c_full.person[n as usize];
                (p != NONE).then_some((0, p))
            });
            prop_assert_eq!(inc, full);
        }
    }
}
