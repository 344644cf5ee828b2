//! Crate tests: determinism, file round trips for every format, truth coverage, noise and
//! realism of the generated population.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::OnceLock;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::concat_batches;
use arrow::datatypes::TimestampMillisecondType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::activity::generate_unit;
use crate::catalog::{Category, Channel, EventType};
use crate::population::{UNIT_PERSONS, World};
use crate::{Format, GenConfig, TruthRow, file_schema, generate, generate_batches};

fn cfg(persons: u64) -> GenConfig {
    GenConfig {
        persons,
        seed: 7,
        threads: 2,
        ..GenConfig::default()
    }
}

/// 20 000 persons, generated once for all tests that inspect content.
fn big() -> &'static (Vec<RecordBatch>, Vec<TruthRow>) {
    static BIG: OnceLock<(Vec<RecordBatch>, Vec<TruthRow>)> = OnceLock::new();
    BIG.get_or_init(|| generate_batches(&cfg(20_000)).unwrap())
}

fn concat(batches: &[RecordBatch]) -> RecordBatch {
    concat_batches(&file_schema(), batches).unwrap()
}

fn col<'a>(b: &'a RecordBatch, name: &str) -> &'a arrow::array::StringArray {
    b.column_by_name(name).unwrap().as_string::<i32>()
}

fn values<'a>(b: &'a RecordBatch, name: &str) -> impl Iterator<Item = Option<&'a str>> + 'a {
    col(b, name).iter()
}

const JUNK_PHONES: [&str; 5] = ["00000000000", "11111111111", "null", "N/A", "-"];
const JUNK_EMAILS: [&str; 3] = ["test@test.com", "null", "none@none.com"];
const JUNK_DEVICE: &str = "00000000-0000-0000-0000-000000000000";

/// Test-side phone normaliser: full-width to ASCII, drop spaces, dashes, parens and `+`,
/// drop a `86` country code, then `+86` + 11 digits. `None` if that is not a mobile number.
fn norm_phone(raw: &str) -> Option<String> {
    let mut d = String::new();
    for ch in raw.chars() {
        let c = match ch {
            '０'..='９' => char::from_u32(ch as u32 - 0xFF10 + u32::from(b'0')).unwrap(),
            c => c,
        };
        match c {
            ' ' | '-' | '(' | ')' | '+' => {}
            '0'..='9' => d.push(c),
            _ => return None,
        }
    }
    let d = if d.len() == 13 {
        d.strip_prefix("86")?.to_owned()
    } else {
        d
    };
    (d.len() == 11 && d.starts_with('1')).then(|| format!("+86{d}"))
}

fn norm_email(raw: &str) -> String {
    raw.trim().to_lowercase()
}

fn is_store_phone(norm: &str) -> bool {
    norm.starts_with("+861390000")
}

/// Every non-junk identifier on the events, normalised, as (kind, value).
fn event_identifiers(b: &RecordBatch) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for v in values(b, "phone").flatten() {
        if JUNK_PHONES.contains(&v) {
            continue;
        }
        let n = norm_phone(v).unwrap_or_else(|| panic!("phone `{v}` does not normalise"));
        if !is_store_phone(&n) {
            out.push(("phone", n));
        }
    }
    for v in values(b, "email").flatten() {
        if !JUNK_EMAILS.contains(&v) {
            out.push(("email", norm_email(v)));
        }
    }
    for v in values(b, "device").flatten() {
        if v != JUNK_DEVICE {
            out.push(("device", v.to_owned()));
        }
    }
    for kind in ["unionid", "openid", "member"] {
        for v in values(b, kind).flatten() {
            out.push((kind, v.to_owned()));
        }
    }
    out
}

#[test]
fn deterministic_across_runs_and_thread_counts() {
    let one = generate_batches(&GenConfig {
        threads: 1,
        ..cfg(3_000)
    })
    .unwrap();
    let again = generate_batches(&GenConfig {
        threads: 1,
        ..cfg(3_000)
    })
    .unwrap();
    let three = generate_batches(&GenConfig {
        threads: 3,
        rows_per_file: 17,
        ..cfg(3_000)
    })
    .unwrap();
    assert_eq!(one.0.len(), 3, "3000 persons are three units");
    assert_eq!(one, again);
    assert_eq!(one, three);
    let other_seed = generate_batches(&GenConfig {
        seed: 8,
        ..cfg(3_000)
    })
    .unwrap();
    assert_ne!(one.0, other_seed.0);
}

/// `file_schema()` with `event_time` in zone `+00:00`: arrow's text readers parse named zones
/// such as `UTC` only with its `chrono-tz` feature.
fn text_schema() -> arrow::datatypes::SchemaRef {
    let fields: Vec<arrow::datatypes::Field> = file_schema()
        .fields()
        .iter()
        .map(|f| {
            if f.name() == "event_time" {
                f.as_ref()
                    .clone()
                    .with_data_type(arrow::datatypes::DataType::Timestamp(
                        arrow::datatypes::TimeUnit::Millisecond,
                        Some("+00:00".into()),
                    ))
            } else {
                f.as_ref().clone()
            }
        })
        .collect();
    std::sync::Arc::new(arrow::datatypes::Schema::new(fields))
}

/// A batch read with `text_schema()`, relabelled to `file_schema()` (same instants).
fn relabel(b: RecordBatch) -> RecordBatch {
    let mut columns = b.columns().to_vec();
    let t = columns[1]
        .as_primitive::<TimestampMillisecondType>()
        .clone();
    columns[1] = std::sync::Arc::new(t.with_timezone("UTC"));
    RecordBatch::try_new(file_schema(), columns).unwrap()
}

fn read_events(dir: &Path, files: &[std::path::PathBuf], format: Format) -> Vec<RecordBatch> {
    let mut out = Vec::new();
    for f in files {
        assert!(f.starts_with(dir));
        let file = File::open(f).unwrap();
        match format {
            Format::Parquet => {
                let r = ParquetRecordBatchReaderBuilder::try_new(file)
                    .unwrap()
                    .build()
                    .unwrap();
                for b in r {
                    out.push(b.unwrap());
                }
            }
            Format::Ndjson => {
                let r = arrow::json::ReaderBuilder::new(text_schema())
                    .build(BufReader::new(file))
                    .unwrap();
                for b in r {
                    out.push(relabel(b.unwrap()));
                }
            }
            Format::Csv => {
                let r = arrow::csv::ReaderBuilder::new(text_schema())
                    .with_header(true)
                    .build(file)
                    .unwrap();
                for b in r {
                    out.push(relabel(b.unwrap()));
                }
            }
        }
    }
    out
}

#[test]
fn files_round_trip_in_every_format() {
    let base = GenConfig {
        rows_per_file: 10_000,
        ..cfg(2_500)
    };
    let (batches, truth) = generate_batches(&base).unwrap();
    let expected = concat(&batches);
    for format in [Format::Parquet, Format::Ndjson, Format::Csv] {
        let dir = tempfile::tempdir().unwrap();
        let c = GenConfig {
            format,
            out: dir.path().join("out"),
            ..base.clone()
        };
        // A stale event file of an earlier run goes; other files stay.
        std::fs::create_dir_all(&c.out).unwrap();
        std::fs::write(c.out.join("events-00099.csv"), "stale").unwrap();
        std::fs::write(c.out.join("notes.txt"), "mine").unwrap();
        let done = std::sync::atomic::AtomicU64::new(0);
        let summary = generate(&c, &|n| {
            done.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        })
        .unwrap();
        assert_eq!(done.into_inner(), 2_500, "progress adds up to persons");
        assert!(!c.out.join("events-00099.csv").exists());
        assert!(c.out.join("notes.txt").exists());
        assert_eq!(summary.events as usize, expected.num_rows());
        assert_eq!(
            summary.files.len(),
            expected.num_rows().div_ceil(10_000),
            "{format}"
        );
        for (i, f) in summary.files.iter().enumerate() {
            let name = f.file_name().unwrap().to_str().unwrap();
            assert_eq!(name, format!("events-{i:05}.{format}"));
        }
        let read = read_events(&c.out, &summary.files, format);
        assert!(read.iter().all(|b| b.schema() == file_schema()), "{format}");
        assert!(
            read.iter().take(read.len() - 1).all(|b| b.num_rows() > 0),
            "{format}"
        );
        assert_eq!(concat(&read), expected, "{format} round trip");

        // truth.parquet, tags.toml, manifest.json
        let r = ParquetRecordBatchReaderBuilder::try_new(
            File::open(c.out.join("truth.parquet")).unwrap(),
        )
        .unwrap()
        .build()
        .unwrap();
        drop(r);
        let read_truth = crate::read_truth(&c.out.join("truth.parquet")).unwrap();
        assert_eq!(read_truth, truth);
        assert_eq!(summary.truth_rows as usize, truth.len());
        let tags = std::fs::read_to_string(c.out.join("tags.toml")).unwrap();
        assert_eq!(tags, crate::catalog::TAGS_TOML);
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(c.out.join("manifest.json")).unwrap()).unwrap();
        assert_eq!(manifest["persons"], 2_500);
        assert_eq!(manifest["format"], format.to_string());
        assert_eq!(manifest["end_date"], "2026-10-31");
        assert_eq!(manifest["events"], summary.events);
        assert_eq!(
            manifest["files"].as_array().unwrap().len(),
            summary.files.len()
        );
        if format == Format::Ndjson {
            let text = std::fs::read_to_string(&summary.files[0]).unwrap();
            let first = text.lines().next().unwrap();
            assert!(!first.contains(":null"), "nulls are omitted: {first}");
            assert!(first.contains("+08:00\""), "{first}");
        }
    }
}

#[test]
fn tags_toml_parses() {
    #[derive(serde::Deserialize)]
    struct Tags {
        tag: Vec<toml::Table>,
    }
    let tags: Tags = toml::from_str(crate::catalog::TAGS_TOML).unwrap();
    let names: Vec<&str> = tags
        .tag
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "miniprogram_user",
            "skincare_lover",
            "highly_active",
            "member_level"
        ]
    );
    assert_eq!(
        tags.tag[3]["values"].as_array().unwrap().len(),
        4,
        "member levels"
    );
}

#[test]
fn truth_covers_every_identifier_seen() {
    let (batches, truth) = big();
    let truth_set: HashSet<(&str, &str)> = truth
        .iter()
        .map(|t| (t.kind.as_str(), t.value.as_str()))
        .collect();
    let mut seen = HashSet::new();
    for b in batches {
        for (kind, v) in event_identifiers(b) {
            assert!(
                truth_set.contains(&(kind, v.as_str())),
                "{kind} `{v}` is on an event but not in truth"
            );
            seen.insert((kind, v));
        }
    }
    // And truth holds nothing that never appears.
    for t in truth {
        assert!(
            seen.contains(&(t.kind.as_str(), t.value.clone())),
            "truth {t:?} never appears on an event"
        );
    }
    // Truth is sorted by person, then (kind, value), without duplicates.
    assert!(truth.windows(2).all(|w| {
        (w[0].true_person, &w[0].kind, &w[0].value) < (w[1].true_person, &w[1].kind, &w[1].value)
    }));
}

#[test]
fn identifiers_are_in_truth_under_their_own_person() {
    let world = World::new(7, 3_000, 365, GenConfig::default().end_date);
    let (_, truth) = generate_batches(&cfg(3_000)).unwrap();
    let owned: HashSet<(&str, &str, u64)> = truth
        .iter()
        .map(|t| (t.kind.as_str(), t.value.as_str(), t.true_person))
        .collect();
    for unit in 0..3 {
        let u = generate_unit(&world, unit);
        let batch = crate::encode::event_batch(&u).unwrap();
        let ids = ["phone", "email", "unionid", "openid", "device", "member"];
        for (i, row) in u.ordered().enumerate() {
            for kind in ids {
                let c = col(&batch, kind);
                if c.is_null(i) {
                    continue;
                }
                let v = c.value(i);
                let norm = match kind {
                    "phone" if JUNK_PHONES.contains(&v) => continue,
                    "phone" => match norm_phone(v) {
                        Some(n) if is_store_phone(&n) => continue,
                        Some(n) => n,
                        None => panic!("bad phone {v}"),
                    },
                    "email" if JUNK_EMAILS.contains(&v) => continue,
                    "email" => norm_email(v),
                    "device" if v == JUNK_DEVICE => continue,
                    _ => v.to_owned(),
                };
                assert!(
                    owned.contains(&(kind, norm.as_str(), row.person)),
                    "{kind} {norm} of person {}",
                    row.person
                );
            }
        }
    }
}

#[test]
fn noise_of_every_kind_is_present() {
    let (batches, truth) = big();
    // Phone format families.
    let mut families = BTreeSet::new();
    let mut store_phone_persons = 0;
    let mut junk = BTreeSet::new();
    let mut noisy_emails = 0;
    for b in batches {
        for v in values(b, "phone").flatten() {
            if JUNK_PHONES.contains(&v) {
                junk.insert(format!("phone:{v}"));
                continue;
            }
            let family = if v.starts_with('１') {
                "fullwidth"
            } else if v.starts_with("(+86) ") {
                "paren"
            } else if v.starts_with("+86 ") {
                "+86 dashed"
            } else if v.starts_with("+86-") {
                "+86-dashed"
            } else if v.starts_with("+86") {
                "+86"
            } else if v.len() == 13 && v.starts_with("86") {
                "86"
            } else if v.contains(' ') {
                "spaced"
            } else {
                "plain"
            };
            families.insert(family);
            if is_store_phone(&norm_phone(v).unwrap()) {
                store_phone_persons += 1;
            }
        }
        for v in values(b, "email").flatten() {
            if JUNK_EMAILS.contains(&v) {
                junk.insert(format!("email:{v}"));
            } else if v != norm_email(v) {
                noisy_emails += 1;
            }
        }
        for v in values(b, "device").flatten() {
            if v == JUNK_DEVICE {
                junk.insert("device".to_owned());
            }
        }
    }
    assert_eq!(families.len(), 8, "phone families: {families:?}");
    assert!(
        store_phone_persons > 50,
        "{store_phone_persons} store phones"
    );
    assert_eq!(junk.len(), 5 + 3 + 1, "junk kinds: {junk:?}");
    assert!(noisy_emails > 100, "{noisy_emails} noisy emails");

    // Shared values in truth: family devices and recycled phones.
    let mut owners: BTreeMap<(&str, &str), Vec<u64>> = BTreeMap::new();
    for t in truth {
        owners
            .entry((t.kind.as_str(), t.value.as_str()))
            .or_default()
            .push(t.true_person);
    }
    let shared_devices = owners
        .iter()
        .filter(|((k, _), o)| *k == "device" && o.len() >= 2)
        .count();
    let shared_phones = owners
        .iter()
        .filter(|((k, _), o)| *k == "phone" && o.len() == 2)
        .count();
    assert!(shared_devices > 20, "{shared_devices} family devices");
    assert!(shared_phones > 10, "{shared_phones} recycled phones");

    // Typos: a person owning two phones one digit apart, or an email with a typo.
    let mut per_person: HashMap<u64, Vec<&TruthRow>> = HashMap::new();
    for t in truth {
        per_person.entry(t.true_person).or_default().push(t);
    }
    let mut phone_typos = 0;
    let mut email_typos = 0;
    for rows in per_person.values() {
        let phones: Vec<&str> = rows
            .iter()
            .filter(|t| t.kind == "phone")
            .map(|t| t.value.as_str())
            .collect();
        for (i, a) in phones.iter().enumerate() {
            for b in &phones[i + 1..] {
                let diff = a.bytes().zip(b.bytes()).filter(|(x, y)| x != y).count();
                if diff == 1 {
                    phone_typos += 1;
                }
            }
        }
        if rows.iter().filter(|t| t.kind == "email").count() >= 2 {
            email_typos += 1;
        }
    }
    assert!(phone_typos > 5, "{phone_typos} phone typos");
    assert!(email_typos > 5, "{email_typos} email typos");

    // Retried duplicates: same event_id twice, identical rows, not adjacent.
    let all = concat(batches);
    let ids = col(&all, "event_id");
    let mut first_at: HashMap<&str, usize> = HashMap::new();
    let mut dups = 0;
    for i in 0..all.num_rows() {
        if let Some(j) = first_at.insert(ids.value(i), i) {
            dups += 1;
            assert!(i > j + 1, "duplicate of row {j} placed right after it");
            assert_eq!(all.slice(i, 1), all.slice(j, 1));
        }
    }
    let rate = dups as f64 / all.num_rows() as f64;
    assert!((0.001..0.004).contains(&rate), "duplicate rate {rate}");
}

#[test]
fn events_look_like_retail() {
    let (batches, truth) = big();
    let all = concat(batches);
    let n = all.num_rows();
    let channel = col(&all, "channel");
    let event_type = col(&all, "event_type");
    let category = col(&all, "category");
    let amount = all
        .column_by_name("amount")
        .unwrap()
        .as_primitive::<arrow::datatypes::Float64Type>();
    let currency = col(&all, "currency");
    let time = all
        .column_by_name("event_time")
        .unwrap()
        .as_primitive::<TimestampMillisecondType>();
    let world = World::new(7, 20_000, 365, GenConfig::default().end_date);
    for i in 0..n {
        assert!(time.value(i) >= world.start_ms && time.value(i) < world.end_ms);
        let et = event_type.value(i);
        assert_eq!(amount.is_valid(i), et == "purchase", "row {i}");
        assert_eq!(currency.is_valid(i), et == "purchase");
        if amount.is_valid(i) {
            let a = amount.value(i);
            assert!((10.0..=3000.0).contains(&a), "amount {a}");
            assert_eq!((a * 100.0).round() / 100.0, a);
        }
        assert_eq!(
            category.is_valid(i),
            matches!(et, "page_view" | "add_to_cart" | "purchase")
        );
        let ch = channel.value(i);
        assert!(
            [
                "pos",
                "miniprogram",
                "official_account",
                "tmall",
                "jd",
                "douyin",
                "xiaohongshu",
                "ad",
                "crm",
                "service"
            ]
            .contains(&ch)
        );
        let only_on = |c: &str, t: &str| {
            assert_eq!(col(&all, c).is_valid(i), et == t, "{c} on {et}");
        };
        only_on("member_level", "profile_update");
        only_on("city", "profile_update");
        only_on("coupon_id", "coupon_claim");
        if ch == "ad" {
            assert!(col(&all, "campaign").is_valid(i));
        }
        if matches!(et, "store_visit") {
            assert!(col(&all, "store_id").is_valid(i));
        }
    }
    let mean = n as f64 / 20_000.0;
    assert!((9.0..15.0).contains(&mean), "mean events per person {mean}");
    let persons: HashSet<u64> = truth.iter().map(|t| t.true_person).collect();
    assert!(persons.len() > 19_000, "{} persons in truth", persons.len());
}

/// Per-person statistics from the in-memory rows (which know their person).
struct PersonStats {
    events: u32,
    registers: u32,
    profile_updates: u32,
    skincare_views: u32,
    first_time: i64,
    register_time: i64,
    registered: Option<Channel>,
}

fn person_stats(persons: u64) -> Vec<PersonStats> {
    let world = World::new(7, persons, 365, GenConfig::default().end_date);
    let mut stats: Vec<PersonStats> = (0..persons)
        .map(|_| PersonStats {
            events: 0,
            registers: 0,
            profile_updates: 0,
            skincare_views: 0,
            first_time: i64::MAX,
            register_time: 0,
            registered: None,
        })
        .collect();
    for unit in 0..persons.div_ceil(UNIT_PERSONS) {
        let u = generate_unit(&world, unit);
        let mut ids = HashSet::new();
        for r in &u.rows {
            if !ids.insert(r.id) {
                continue; // a retried duplicate
            }
            let s = &mut stats[r.person as usize];
            s.events += 1;
            s.first_time = s.first_time.min(r.time);
            match r.event_type {
                EventType::Register => {
                    s.registers += 1;
                    s.register_time = r.time;
                    s.registered = Some(r.channel);
                }
                EventType::ProfileUpdate => s.profile_updates += 1,
                EventType::PageView if r.category == Some(Category::Skincare) => {
                    s.skincare_views += 1
                }
                _ => {}
            }
        }
    }
    stats
}

#[test]
fn persons_have_a_lifecycle_and_a_heavy_tail() {
    let stats = person_stats(20_000);
    let n = stats.len() as f64;
    for (p, s) in stats.iter().enumerate() {
        assert_eq!(s.registers, 1, "person {p}");
        assert!(s.profile_updates >= 1, "person {p}");
        assert_eq!(s.register_time, s.first_time, "person {p} registers first");
    }
    let frac = |f: &dyn Fn(&PersonStats) -> bool| stats.iter().filter(|s| f(s)).count() as f64 / n;
    let few = frac(&|s| s.events <= 2);
    let skincare = frac(&|s| s.skincare_views > 3);
    let mini = frac(&|s| s.registered == Some(Channel::Miniprogram));
    let max = stats.iter().map(|s| s.events).max().unwrap();
    assert!((0.05..0.25).contains(&few), "{few} with 1-2 events");
    assert!(
        (0.10..0.20).contains(&skincare),
        "{skincare} skincare lovers"
    );
    assert!(
        (0.27..0.33).contains(&mini),
        "{mini} registered on miniprogram"
    );
    assert!(max > 150, "heaviest person has {max} events");
}

#[test]
#[ignore = "prints distributions; run with --ignored --nocapture"]
fn print_distributions() {
    let stats = person_stats(100_000);
    let mut events: Vec<u32> = stats.iter().map(|s| s.events).collect();
    events.sort_unstable();
    let n = events.len();
    let mean = events.iter().map(|&e| f64::from(e)).sum::<f64>() / n as f64;
    let q = |f: f64| events[((n as f64 * f) as usize).min(n - 1)];
    eprintln!(
        "events/person mean {mean:.2} p10 {} p50 {} p90 {} p99 {} max {}",
        q(0.1),
        q(0.5),
        q(0.9),
        q(0.99),
        events[n - 1]
    );
    let le2 = events.iter().filter(|&&e| e <= 2).count() as f64 / n as f64;
    let sk = stats.iter().filter(|s| s.skincare_views > 3).count() as f64 / n as f64;
    eprintln!("<=2 events {le2:.3}, skincare lovers {sk:.3}");

    let world = World::new(7, 100_000, 365, GenConfig::default().end_date);
    let mut by_channel: BTreeMap<&str, usize> = BTreeMap::new();
    let mut by_type: BTreeMap<&str, usize> = BTreeMap::new();
    let mut store_users: BTreeMap<String, HashSet<u64>> = BTreeMap::new();
    let mut purchases: HashMap<u64, Vec<i64>> = HashMap::new();
    let mut latest_level: HashMap<u64, (i64, &str)> = HashMap::new();
    let mut total = 0usize;
    for unit in 0..100_000u64.div_ceil(UNIT_PERSONS) {
        let u = generate_unit(&world, unit);
        let batch = crate::encode::event_batch(&u).unwrap();
        let phones = col(&batch, "phone");
        for (i, r) in u.ordered().enumerate() {
            total += 1;
            *by_channel.entry(r.channel.as_str()).or_default() += 1;
            *by_type.entry(r.event_type.as_str()).or_default() += 1;
            if let Some(n) = phones
                .is_valid(i)
                .then(|| norm_phone(phones.value(i)))
                .flatten()
                && is_store_phone(&n)
            {
                store_users.entry(n).or_default().insert(r.person);
            }
            if r.event_type == EventType::Purchase {
                purchases.entry(r.person).or_default().push(r.time);
            }
            if let Some(l) = r.level {
                let e = latest_level.entry(r.person).or_insert((i64::MIN, "none"));
                if r.time >= e.0 {
                    *e = (r.time, l.as_str());
                }
            }
        }
    }
    let pct = |m: &BTreeMap<&str, usize>| {
        m.iter()
            .map(|(k, v)| format!("{k} {:.1}%", *v as f64 * 100.0 / total as f64))
            .collect::<Vec<_>>()
            .join(", ")
    };
    eprintln!("channels: {}", pct(&by_channel));
    eprintln!("types: {}", pct(&by_type));
    let users: Vec<usize> = store_users.values().map(|s| s.len()).collect();
    eprintln!(
        "store phones: {} stores, persons per store phone mean {:.1} max {}",
        users.len(),
        users.iter().sum::<usize>() as f64 / users.len().max(1) as f64,
        users.iter().max().unwrap_or(&0)
    );
    let week = 7 * crate::population::DAY_MS;
    let active = purchases
        .values()
        .filter(|ts| ts.iter().filter(|&&t| t >= world.end_ms - week).count() >= 2)
        .count();
    eprintln!(
        "highly_active (>=2 purchases in the last 7 days): {:.2}%; any purchase: {:.1}%",
        active as f64 / 1000.0,
        purchases.len() as f64 / 1000.0
    );
    let mut levels: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, l) in latest_level.values() {
        *levels.entry(l).or_default() += 1;
    }
    eprintln!("latest member_level: {levels:?}");
}
