//! The evaluator against a naive model: random persons with random events,
//! a level and a spend; the indexes built from them as a refresh builds
//! them; random expressions evaluated both ways.

use std::collections::{BTreeMap, BTreeSet};

use chrono::NaiveDate;
use proptest::prelude::*;
use roaring::RoaringBitmap;

use super::{Cmp, Did, Expr, Literal, Window, day_number, evaluate};
use crate::index::{BehaviourKey, Bsi, DailyCounts, IndexSet, NumericIndex, Ordinal};

const TYPES: [&str; 2] = ["view", "buy"];
const CATEGORIES: [&str; 3] = ["skincare", "shoes", "home"];
const LEVELS: [&str; 3] = ["gold", "silver", "vip"];
const DAY0: i32 = 20_300;
const NOW: i32 = DAY0 + 59;

/// One person as the model sees it.
#[derive(Debug, Clone)]
struct Person {
    live: bool,
    tags: [bool; 2],
    level: Option<usize>,
    /// cents
    spend: Option<i64>,
    /// (day, type, category)
    events: Vec<(i32, usize, usize)>,
}

fn person() -> impl Strategy<Value = Person> {
    (
        prop::bool::weighted(0.9),
        any::<[bool; 2]>(),
        prop::option::of(0..LEVELS.len()),
        prop::option::of(0i64..200_000),
        prop::collection::vec((DAY0..=NOW, 0..TYPES.len(), 0..CATEGORIES.len()), 0..12),
    )
        .prop_map(|(live, tags, level, spend, events)| Person {
            live,
            tags,
            level,
            spend,
            events,
        })
}

/// The index a refresh would build from `persons` (ordinal = position).
fn index(persons: &[Person]) -> IndexSet {
    let mut set = IndexSet {
        version: 1,
        now_day: NOW,
        dimensions: vec!["category".into()],
        event_types: TYPES.iter().map(|s| s.to_string()).collect(),
        ..IndexSet::default()
    };
    let mut pairs: BTreeMap<BehaviourKey, Vec<(i32, u32)>> = BTreeMap::new();
    let mut spend = Vec::new();
    // A refresh defines every tag, even one with no members (or no live person).
    for name in ["t0", "t1"] {
        set.tags.insert(name.to_string(), RoaringBitmap::new());
    }
    for (o, p) in persons.iter().enumerate() {
        let o = o as u32;
        // Retired persons keep nothing: a refresh attributes nothing to them.
        if !p.live {
            continue;
        }
        set.live.insert(o);
        for (i, name) in ["t0", "t1"].iter().enumerate() {
            if p.tags[i] {
                set.tags.entry(name.to_string()).or_default().insert(o);
            }
        }
        if let Some(l) = p.level {
            level(&mut set, l).insert(o);
        }
        if let Some(s) = p.spend {
            spend.push((Ordinal(o), s));
        }
        for &(day, t, c) in &p.events {
            pairs
                .entry(BehaviourKey::new(TYPES[t], Vec::new()))
                .or_default()
                .push((day, o));
            pairs
                .entry(BehaviourKey::new(
                    TYPES[t],
                    vec![("category".into(), CATEGORIES[c].into())],
                ))
                .or_default()
                .push((day, o));
        }
    }
    set.enums.entry("member_level".into()).or_default();
    set.numbers.insert(
        "spend".into(),
        NumericIndex {
            scale: 2,
            bsi: Bsi::from_values(spend),
        },
    );
    for (key, p) in pairs {
        set.behaviour
            .insert(key, DailyCounts::from_pairs(&p).expect("counts"));
    }
    set
}

/// The bitmap of `member_level = LEVELS[l]`.
fn level(set: &mut IndexSet, l: usize) -> &mut RoaringBitmap {
    set.enums
        .entry("member_level".into())
        .or_default()
        .entry(LEVELS[l].to_string())
        .or_default()
}

fn date(day: i32) -> NaiveDate {
    NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch") + chrono::Days::new(day as u64)
}

fn cmp() -> impl Strategy<Value = Cmp> {
    prop::sample::select(vec![Cmp::Eq, Cmp::Ne, Cmp::Lt, Cmp::Le, Cmp::Gt, Cmp::Ge])
}

fn window() -> impl Strategy<Value = Option<Window>> {
    prop_oneof![
        Just(None),
        (1u32..70).prop_map(|days| Some(Window::Last { days })),
        (DAY0 - 5..NOW + 5, 0i32..40).prop_map(|(from, len)| Some(Window::Between {
            from: date(from),
            to: date(from + len),
        })),
    ]
}

fn leaf() -> impl Strategy<Value = Expr> {
    let level = || prop::sample::select(LEVELS.to_vec()).prop_map(|l| Literal::String(l.into()));
    prop_oneof![
        prop::sample::select(vec!["t0", "t1"]).prop_map(|n| Expr::Tag { name: n.into() }),
        (prop::sample::select(vec![Cmp::Eq, Cmp::Ne]), level()).prop_map(|(cmp, value)| {
            Expr::Compare {
                field: "member_level".into(),
                cmp,
                value,
            }
        }),
        (prop::collection::vec(level(), 1..3), any::<bool>()).prop_map(|(values, negated)| {
            Expr::In {
                field: "member_level".into(),
                values,
                negated,
            }
        }),
        (cmp(), -10i64..2100, prop::bool::ANY).prop_map(|(cmp, v, frac)| Expr::Compare {
            field: "spend".into(),
            cmp,
            value: Literal::Number(v as f64 + if frac { 0.5 } else { 0.0 }),
        }),
        (0i64..2000, 0i64..2000).prop_map(|(a, b)| Expr::Between {
            field: "spend".into(),
            low: Literal::Number(a as f64),
            high: Literal::Number(b as f64),
        }),
        (
            0..TYPES.len(),
            prop::option::of(0..CATEGORIES.len()),
            // the language has no `!=` for a did count
            prop::option::of((
                prop::sample::select(vec![Cmp::Eq, Cmp::Lt, Cmp::Le, Cmp::Gt, Cmp::Ge]),
                0u64..4
            )),
            window(),
        )
            .prop_map(|(t, c, count, window)| Expr::Did(Did {
                event_type: TYPES[t].into(),
                filters: c
                    .map(|c| vec![("category".to_string(), CATEGORIES[c].to_string())])
                    .unwrap_or_default(),
                count,
                window,
            })),
    ]
}

fn expr() -> impl Strategy<Value = Expr> {
    leaf().prop_recursive(3, 16, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 2..4).prop_map(|args| Expr::And { args }),
            prop::collection::vec(inner.clone(), 2..4).prop_map(|args| Expr::Or { args }),
            inner.prop_map(|e| Expr::Not { arg: Box::new(e) }),
        ]
    })
}

fn holds(c: Cmp, a: f64, b: f64) -> bool {
    match c {
        Cmp::Eq => a == b,
        Cmp::Ne => a != b,
        Cmp::Lt => a < b,
        Cmp::Le => a <= b,
        Cmp::Gt => a > b,
        Cmp::Ge => a >= b,
    }
}

/// Whether person `p` is in `e`: straight from its events and values.
fn naive(e: &Expr, p: &Person) -> bool {
    match e {
        Expr::And { args } => args.iter().all(|a| naive(a, p)),
        Expr::Or { args } => args.iter().any(|a| naive(a, p)),
        Expr::Not { arg } => !naive(arg, p),
        Expr::Tag { name } => p.tags[usize::from(name == "t1")],
        Expr::Compare { field, cmp, value } if field == "member_level" => {
            let Literal::String(v) = value else {
                return false;
            };
            match (p.level, cmp) {
                (None, _) => false,
                (Some(l), Cmp::Eq) => LEVELS[l] == v,
                (Some(l), _) => LEVELS[l] != v,
            }
        }
        Expr::Compare { cmp, value, .. } => {
            let Literal::Number(v) = value else {
                return false;
            };
            p.spend.is_some_and(|s| holds(*cmp, s as f64 / 100.0, *v))
        }
        Expr::In {
            values, negated, ..
        } => p.level.is_some_and(|l| {
            let hit = values
                .iter()
                .any(|v| matches!(v, Literal::String(s) if s == LEVELS[l]));
            hit != *negated
        }),
        Expr::Between { low, high, .. } => {
            let (Literal::Number(lo), Literal::Number(hi)) = (low, high) else {
                return false;
            };
            p.spend.is_some_and(|s| {
                let s = s as f64 / 100.0;
                *lo <= s && s <= *hi
            })
        }
        Expr::Did(d) => {
            let days = match d.window {
                None => i32::MIN..=i32::MAX,
                Some(Window::Last { days }) => NOW - days as i32 + 1..=NOW,
                Some(Window::Between { from, to }) => day_number(from)..=day_number(to),
            };
            let n = p
                .events
                .iter()
                .filter(|(day, t, c)| {
                    TYPES[*t] == d.event_type
                        && days.contains(day)
                        && d.filters.iter().all(|(_, v)| CATEGORIES[*c] == v.as_str())
                })
                .count() as f64;
            let (cmp, k) = d.count.unwrap_or((Cmp::Ge, 1));
            holds(cmp, n, k as f64)
        }
        Expr::Segment { .. } => false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn evaluation_equals_the_naive_model(
        persons in prop::collection::vec(person(), 1..60),
        e in expr(),
        stray in any::<bool>(),
    ) {
        let mut set = index(&persons);
        if stray {
            // An index bitmap that still holds retired persons: evaluation
            // confines it to the live ones all the same.
            for (o, p) in persons.iter().enumerate().filter(|(_, p)| !p.live) {
                if p.tags[0] {
                    set.tags.entry("t0".into()).or_default().insert(o as u32);
                }
                if let Some(l) = p.level {
                    level(&mut set, l).insert(o as u32);
                }
            }
        }
        let got = evaluate(&e, &set, NOW).expect("evaluates");
        let want: RoaringBitmap = persons
            .iter()
            .enumerate()
            .filter(|(_, p)| p.live && naive(&e, p))
            .map(|(o, _)| o as u32)
            .collect();
        prop_assert_eq!(&got, &want, "{}", e);
        // With kept leaf results (with and without dense passes): cold, then warm.
        for cache in [super::KeptResults::default(), super::KeptResults::roaring_only()] {
            for _ in 0..2 {
                prop_assert_eq!(&super::evaluate_cached(&e, &set, NOW, &cache).expect("evaluates"), &want);
                // A count is the members' number, with no member list built.
                prop_assert_eq!(
                    super::count_cached(&e, &set, NOW, &cache).expect("counts"),
                    want.len(),
                    "{}", e
                );
            }
        }
        // Broken down by `member_level` in the dense pass where it takes
        // the question: per level, the members' intersection with it.
        let levels = &set.enums["member_level"];
        let cache = super::KeptResults::default();
        let codes = || Some(std::sync::Arc::new(level_codes(&set)));
        if let Some((members, counts)) =
            super::code_counts_cached(&e, &set, NOW, &cache, codes, levels.len()).expect("counts")
        {
            prop_assert_eq!(members, want.len(), "{}", e);
            let per_level: Vec<u64> = levels.values().map(|b| (&want & b).len()).collect();
            prop_assert_eq!(counts, per_level, "{}", e);
        }
        // Printing and parsing again changes nothing.
        let again = super::parse(&e.to_string()).expect("parses");
        prop_assert_eq!(evaluate(&again, &set, NOW).expect("evaluates"), want);
    }
}

/// Each ordinal's `member_level` as its position among the levels
/// (`u16::MAX`: none).
fn level_codes(set: &IndexSet) -> Vec<u16> {
    let mut codes = vec![u16::MAX; 64 * 4];
    for (i, b) in set.enums["member_level"].values().enumerate() {
        for o in b {
            codes[o as usize] = i as u16;
        }
    }
    codes
}

#[test]
fn a_dense_and_is_broken_down_in_its_pass() {
    let persons: Vec<Person> = (0..50)
        .map(|i| Person {
            live: i % 7 != 0,
            tags: [i % 2 == 0, i % 3 == 0],
            level: (i % 5 < 3).then_some(i % 3),
            spend: None,
            events: vec![],
        })
        .collect();
    let set = index(&persons);
    let e = super::parse("t0 AND NOT t1").expect("parses");
    let cache = super::KeptResults::default();
    let codes = || Some(std::sync::Arc::new(level_codes(&set)));
    let (members, counts) = super::code_counts_cached(&e, &set, NOW, &cache, codes, 3)
        .expect("counts")
        .expect("the dense pass takes `t0 AND NOT t1`");
    let want: Vec<usize> = (0..50)
        .filter(|i| i % 7 != 0 && i % 2 == 0 && i % 3 != 0)
        .collect();
    assert_eq!(members, want.len() as u64);
    // Levels in the index's order (gold, silver, vip); the rest have none.
    let per_level: Vec<u64> = (0..3)
        .map(|l| want.iter().filter(|&&i| i % 5 < 3 && i % 3 == l).count() as u64)
        .collect();
    assert_eq!(counts, per_level);
    assert!(
        per_level.iter().sum::<u64>() < members,
        "some have no level"
    );
    // Not an AND: not this path.
    let e = super::parse("t0").expect("parses");
    let none = super::code_counts_cached(&e, &set, NOW, &cache, || None, 3).expect("counts");
    assert_eq!(none, None);
}

#[test]
fn retired_persons_never_count() {
    let persons = vec![
        Person {
            live: true,
            tags: [true, false],
            level: Some(0),
            spend: Some(100),
            events: vec![(NOW, 0, 0)],
        },
        Person {
            live: false,
            tags: [true, true],
            level: Some(0),
            spend: Some(100),
            events: vec![(NOW, 0, 0)],
        },
    ];
    let mut set = index(&persons);
    // Even if an index kept a retired ordinal's bit, it is not counted.
    set.tags.get_mut("t0").expect("t0").insert(1);
    set.enums
        .get_mut("member_level")
        .and_then(|m| m.get_mut("gold"))
        .expect("gold")
        .insert(1);
    let caches = [
        super::KeptResults::default(),
        super::KeptResults::roaring_only(),
    ];
    for text in [
        "t0",
        "NOT t1",
        "did(view) = 0 OR t0",
        "spend >= 0",
        "t0 AND member_level = 'gold'",
        "t0 AND did(view)",
    ] {
        let e = super::parse(text).expect("parses");
        let got: BTreeSet<u32> = evaluate(&e, &set, NOW).expect("evaluates").iter().collect();
        assert!(!got.contains(&1), "{text}: {got:?}");
        for cache in &caches {
            let counted = super::count_cached(&e, &set, NOW, cache).expect("counts");
            assert_eq!(counted, got.len() as u64, "{text}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_of_picks_the_version_in_force_that_day() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = crate::EngineConfig {
        data_dir: dir.path().to_path_buf(),
        ..Default::default()
    };
    cfg.store.fsync = false;
    let engine = crate::Engine::open(cfg).await.expect("engine");
    let ws = engine.create_workspace("shop").await.expect("workspace");
    // Two versions, built on 2026-10-01 and 2026-10-20: one VIP, then two.
    let at =
        |d: &str| i64::from(day_number(d.parse().expect("date"))) * 86_400_000_000 + 43_200_000_000;
    for (version, built, vips) in [
        (1u64, at("2026-10-01"), vec![1u32]),
        (2, at("2026-10-20"), vec![1, 2]),
    ] {
        let mut set = IndexSet {
            version,
            built_at: built,
            live: (0..5).collect(),
            ..IndexSet::default()
        };
        set.enums.insert(
            "member_level".into(),
            BTreeMap::from([("vip".to_string(), vips.into_iter().collect())]),
        );
        set.write(&ws.index_dir(), serde_json::Value::Null)
            .expect("write version");
    }
    let e = super::parse("member_level = 'vip'").expect("parses");
    let ask = |d: Option<&str>| {
        ws.audience(
            &e,
            super::AudienceOptions {
                now: None,
                as_of: d.map(|d| d.parse().expect("date")),
            },
        )
    };
    let latest = ask(None).expect("latest");
    assert_eq!((latest.index_version, latest.members.len()), (2, 2));
    let then = ask(Some("2026-10-10")).expect("as of the 10th");
    assert_eq!((then.index_version, then.members.len()), (1, 1));
    // Windows end on the as_of day.
    assert_eq!(
        then.now.div_euclid(86_400_000_000),
        i64::from(day_number("2026-10-10".parse().expect("date")))
    );
    let same_day = ask(Some("2026-10-20")).expect("as of the 20th");
    assert_eq!(same_day.index_version, 2);
    let err = ask(Some("2026-09-30")).expect_err("older than every kept version");
    assert!(err.to_string().contains("keep_versions"), "{err}");
}
