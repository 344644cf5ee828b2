//! Tags end to end: gen → ingest → resolve → `quiver tags define / refresh`,
//! each seed tag checked against the same tag rebuilt here from `quiver sql`
//! rows; exports read back by the `roaring` crate and by pyroaring (PyPI);
//! bad definitions, manual lists, person 360, refresh after resolve and on a
//! schedule.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use futures::StreamExt;
use quiver_proto::v1 as pb;
use quiver_proto::v1::ingest_service_client::IngestServiceClient;
use quiver_proto::v1::tag_service_client::TagServiceClient;
use quiver_tests::{RoaringBitmap, Server, event};
use serde_json::Value;

/// "Now" for windows: the generator's last day.
pub(crate) const NOW: &str = "2026-10-31";
/// `NOW` as the CLI sends it: the end of that UTC day, ms.
pub(crate) const NOW_MS: i64 = 1_793_491_199_000;
/// The first day of `IN LAST 7 DAYS` ending on `NOW`.
const WEEK_START: &str = "2026-10-25";
const BOOLEAN_SEED_TAGS: [&str; 3] = ["miniprogram_user", "skincare_lover", "highly_active"];
const SEED_TAGS: [&str; 4] = [
    "miniprogram_user",
    "skincare_lover",
    "highly_active",
    "member_level",
];
pub(crate) const LEVELS: [&str; 4] = ["normal", "silver", "gold", "vip"];

/// A running server whose workspace `shop` holds generated events.
pub(crate) struct Shop {
    pub(crate) tmp: tempfile::TempDir,
    pub(crate) server: Server,
}

impl Shop {
    /// gen `persons` → serve with `env` → create `shop` → ingest, then
    /// `quiver resolve` when `resolve`.
    pub(crate) fn start(persons: u64, env: &[(&str, &str)], resolve: bool) -> Shop {
        crate::init();
        let tmp = tempfile::tempdir().unwrap();
        let files = crate::ingest::generate_files(&tmp.path().join("gen"), persons, "parquet");
        let server = Server::start(&tmp.path().join("data"), env).unwrap();
        let shop = Shop { tmp, server };
        succeeded(shop.server.cli(&["workspace", "create", "shop"]));
        let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        let mut args = vec!["ingest", "--quiet"];
        args.extend(names.iter().map(String::as_str));
        let summary = shop.json(&args);
        assert!(summary["accepted"].as_u64().unwrap() > 1000, "{summary}");
        if resolve {
            shop.json(&["resolve"]);
        }
        shop
    }

    /// `quiver --workspace shop ARGS`.
    pub(crate) fn cli(&self, args: &[&str]) -> Output {
        let mut all = vec!["--workspace", "shop"];
        all.extend_from_slice(args);
        self.server.cli(&all)
    }

    /// `quiver --workspace shop --json ARGS`, which must succeed.
    pub(crate) fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = succeeded(self.cli(&all));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "quiver {args:?}: {e}: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// `quiver --workspace shop ARGS`, which must fail; its stderr.
    pub(crate) fn fails(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            !out.status.success(),
            "quiver {args:?} should have failed; stdout: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Rows of `quiver sql Q --json`.
    pub(crate) fn sql(&self, q: &str) -> Vec<Value> {
        match self.json(&["sql", q]) {
            Value::Array(rows) => rows,
            other => panic!("{q}: expected rows, got {other}"),
        }
    }

    /// Writes `text` to a file in the test's temporary directory.
    pub(crate) fn file(&self, name: &str, text: &str) -> String {
        let path = self.path(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// `tags define` of the generator's seed tags.
    pub(crate) fn define_seed(&self) -> Value {
        let f = self.file("seed.toml", quiver_data::SEED_TAGS_TOML);
        self.json(&["tags", "define", &f])
    }

    /// `tags refresh --now NOW`.
    pub(crate) fn refresh(&self) -> Value {
        self.json(&["tags", "refresh", "--now", NOW])
    }

    /// Ingests `events` over gRPC; all must be accepted.
    async fn ingest(&self, seq: u64, events: Vec<pb::Event>) {
        let n = events.len() as u64;
        let ack = IngestServiceClient::new(self.server.channel().await)
            .ingest_batch(pb::IngestRequest {
                workspace: "shop".into(),
                batch_seq: seq,
                events,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(ack.accepted, n, "{ack:?}");
    }

    /// `tags export NAME [--value V] -o FILE`: the JSON summary and the file.
    pub(crate) fn export(&self, name: &str, value: Option<&str>) -> (Value, PathBuf) {
        let path = self.path(&format!("{name}-{}.roaring", value.unwrap_or("all")));
        let file = path.display().to_string();
        let mut args = vec!["tags", "export", name];
        if let Some(v) = value {
            args.extend(["--value", v]);
        }
        args.extend(["-o", &file]);
        (self.json(&args), path)
    }
}

pub(crate) fn succeeded(out: Output) -> Output {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Tag `name` of a refresh report or `tags list`.
pub(crate) fn tag<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["tags"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no tag `{name}` in {report}"))
}

pub(crate) fn count(report: &Value, name: &str) -> u64 {
    tag(report, name)["count"].as_u64().unwrap()
}

/// `[{value, count}]` as a map.
pub(crate) fn per_value(values: &Value) -> BTreeMap<String, u64> {
    values
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["value"].as_str().unwrap().to_string(),
                v["count"].as_u64().unwrap(),
            )
        })
        .collect()
}

pub(crate) fn read_bitmap(path: &Path) -> RoaringBitmap {
    let bytes = std::fs::read(path).unwrap();
    RoaringBitmap::deserialize_from(bytes.as_slice())
        .unwrap_or_else(|e| panic!("{} is no portable roaring bitmap: {e}", path.display()))
}

/// Priority of an identifier kind, as the default identity rules set it: an
/// event belongs to the person holding its highest-priority identifier.
fn priority(kind: &str) -> u8 {
    match kind {
        "member" => 100,
        "unionid" => 90,
        "phone" => 80,
        "openid" => 70,
        "email" => 60,
        "device" => 10,
        other => panic!("identifier kind `{other}` has no priority in this model"),
    }
}

/// What the seed tags need to know of one person.
#[derive(Debug, Default)]
struct Facts {
    events: u64,
    orders: u64,
    /// (time µs, channel) of the earliest `register`.
    registered: Option<(i64, String)>,
    skincare_views: u64,
    purchases_last_week: u64,
    /// Time (µs) of the latest `profile_update` carrying `member_level`, and
    /// the values at that time: more than one when updates tie to the µs (the
    /// generator writes a few such pairs).
    level: Option<(i64, BTreeSet<String>)>,
}

/// The seed tags rebuilt from `quiver sql` rows of `events`, `identifiers`
/// and `persons`, without the engine's profile or index code.
#[derive(Debug, Default)]
struct Model {
    live: BTreeSet<u32>,
    events: u64,
    unattributed: u64,
    persons: BTreeMap<u32, Facts>,
}

impl Model {
    fn build(shop: &Shop) -> Model {
        let mut m = Model::default();
        for r in shop.sql("SELECT ordinal FROM persons WHERE merged_into IS NULL") {
            m.live.insert(r["ordinal"].as_u64().unwrap() as u32);
        }
        let mut owner: HashMap<(String, String), u32> = HashMap::new();
        for r in shop.sql(
            "SELECT i.kind, i.value, i.ordinal FROM identifiers i \
             JOIN persons p ON i.person_id = p.person_id WHERE p.merged_into IS NULL",
        ) {
            owner.insert(
                (
                    r["kind"].as_str().unwrap().to_string(),
                    r["value"].as_str().unwrap().to_string(),
                ),
                r["ordinal"].as_u64().unwrap() as u32,
            );
        }
        let rows = shop.sql(
            "SELECT CAST(event_time AS BIGINT) AS t, CAST(event_date AS VARCHAR) AS day, \
             channel, event_type, identifiers, category, properties['member_level'] AS level \
             FROM events",
        );
        for r in rows {
            m.events += 1;
            // The strongest identifier a live person holds; on equal
            // priority the first listed (as events carry them) wins.
            let mut best: Option<(u8, u32)> = None;
            for i in r["identifiers"].as_array().unwrap() {
                let kind = i["kind"].as_str().unwrap();
                let key = (kind.to_string(), i["value"].as_str().unwrap().to_string());
                if let Some(&o) = owner.get(&key) {
                    let p = priority(kind);
                    if best.is_none_or(|(bp, _)| p > bp) {
                        best = Some((p, o));
                    }
                }
            }
            let Some((_, o)) = best else {
                m.unattributed += 1;
                continue;
            };
            let f = m.persons.entry(o).or_default();
            let t = r["t"].as_i64().unwrap();
            let day = r["day"].as_str().unwrap();
            f.events += 1;
            match r["event_type"].as_str().unwrap() {
                // The earliest (none tie in the generated data).
                "register" if f.registered.as_ref().is_none_or(|(t0, _)| t < *t0) => {
                    f.registered = Some((t, r["channel"].as_str().unwrap().to_string()));
                }
                "page_view" if r["category"] == "skincare" => f.skincare_views += 1,
                "purchase" => {
                    f.orders += 1;
                    if (WEEK_START..=NOW).contains(&day) {
                        f.purchases_last_week += 1;
                    }
                }
                "profile_update" => {
                    if let Some(level) = r["level"].as_str() {
                        match &mut f.level {
                            Some((t0, values)) if *t0 == t => {
                                values.insert(level.to_string());
                            }
                            Some((t0, _)) if *t0 > t => {}
                            _ => f.level = Some((t, BTreeSet::from([level.to_string()]))),
                        }
                    }
                }
                _ => {}
            }
        }
        m
    }

    /// Members of a boolean seed tag.
    fn members(&self, tag: &str) -> BTreeSet<u32> {
        let rule: fn(&Facts) -> bool = match tag {
            // registered_channel = 'miniprogram'
            "miniprogram_user" => |f| f.registered.as_ref().is_some_and(|r| r.1 == "miniprogram"),
            // did(page_view WHERE category = 'skincare') > 3
            "skincare_lover" => |f| f.skincare_views > 3,
            // did(purchase) >= 2 IN LAST 7 DAYS
            "highly_active" => |f| f.purchases_last_week >= 2,
            other => panic!("`{other}` is no boolean seed tag"),
        };
        self.persons
            .iter()
            .filter(|(o, f)| self.live.contains(o) && rule(f))
            .map(|(o, _)| *o)
            .collect()
    }

    /// The values of person `o`'s latest `member_level` (one unless tied).
    fn levels_of(&self, o: u32) -> Option<&BTreeSet<String>> {
        self.persons.get(&o)?.level.as_ref().map(|(_, v)| v)
    }

    /// Persons whose latest `member_level` is `value` and nothing else.
    fn level(&self, value: &str) -> BTreeSet<u32> {
        self.persons
            .keys()
            .filter(|o| self.live.contains(o))
            .filter(|o| {
                self.levels_of(**o)
                    .is_some_and(|v| v.len() == 1 && v.contains(value))
            })
            .copied()
            .collect()
    }

    /// Persons whose latest `member_level` updates tie to the µs with
    /// different values, and those values.
    fn level_ties(&self) -> BTreeMap<u32, &BTreeSet<String>> {
        self.persons
            .keys()
            .filter_map(|&o| Some((o, self.levels_of(o)?)))
            .filter(|(o, v)| self.live.contains(o) && v.len() > 1)
            .collect()
    }

    /// Checks an exported bitmap of `member_level = value` against the model:
    /// every untied person whose latest level is `value` is in it, and every
    /// member's latest level is `value` (or ties with it; which value a tie
    /// gets is `member_level_ties_go_to_the_larger_value`'s business).
    fn check_level(&self, value: &str, got: &BTreeSet<u32>) {
        let want = self.level(value);
        let missing: Vec<&u32> = want.difference(got).collect();
        let wrong: Vec<(u32, Option<&BTreeSet<String>>)> = got
            .iter()
            .filter(|o| !self.levels_of(**o).is_some_and(|v| v.contains(value)))
            .map(|&o| (o, self.levels_of(o)))
            .collect();
        assert!(
            missing.is_empty() && wrong.is_empty(),
            "member_level = {value}: missing ordinals {missing:?}; members whose latest level differs: {wrong:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_tags_match_counts_rebuilt_from_sql() {
    let shop = Shop::start(400, &[], true);
    // `quiver gen` writes the same seed definitions it ships.
    assert_eq!(
        std::fs::read_to_string(shop.path("gen/tags.toml")).unwrap(),
        quiver_data::SEED_TAGS_TOML
    );
    let defs = shop.define_seed();
    let names: Vec<&str> = defs["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, SEED_TAGS, "{defs}");
    // skincare_lover filters on category: it must be a behaviour dimension.
    let dimensions = defs["dimensions"].as_array().unwrap();
    assert!(dimensions.contains(&"category".into()), "{defs}");
    let level_def = tag(&defs, "member_level");
    assert_eq!(level_def["kind"], "enum");
    assert_eq!(level_def["source"], "member_level");
    assert_eq!(level_def["values"], serde_json::json!(LEVELS));
    assert_eq!(
        tag(&defs, "highly_active")["rule"],
        "did(purchase) >= 2 IN LAST 7 DAYS"
    );

    let report = shop.refresh();
    assert_eq!(report["version"], 1, "{report}");
    assert_eq!(report["now_unix_ms"], NOW_MS, "{report}");
    assert_eq!(
        report["incremental"], false,
        "the first refresh reads everything"
    );
    assert_eq!(report["events_read"], report["events"], "{report}");

    let model = Model::build(&shop);
    assert_eq!(report["events"], model.events, "{report}");
    assert_eq!(
        model.unattributed, 0,
        "every event has a person after resolve"
    );
    assert_eq!(report["unattributed_events"], 0, "{report}");
    assert_eq!(report["persons"], model.live.len() as u64, "{report}");
    let persons = model.live.len() as u64;
    for name in BOOLEAN_SEED_TAGS {
        let want = model.members(name).len() as u64;
        assert!(
            want > 0 && want < persons,
            "`{name}`: {want} of {persons} persons: the data no longer tests it"
        );
        assert_eq!(count(&report, name), want, "`{name}` in {report}");
        assert_eq!(tag(&report, name)["kind"], "boolean");
    }
    // member_level: each value exported and checked against the model; a
    // person with a level is in exactly one value.
    let levels = per_value(&tag(&report, "member_level")["values"]);
    let mut sorted = LEVELS.map(String::from);
    sorted.sort();
    assert_eq!(
        levels.keys().cloned().collect::<Vec<_>>(),
        sorted,
        "{report}"
    );
    let mut seen: BTreeMap<u32, u32> = BTreeMap::new();
    for v in LEVELS {
        assert!(!model.level(v).is_empty(), "nobody's level is {v}");
        let (e, file) = shop.export("member_level", Some(v));
        let got: BTreeSet<u32> = read_bitmap(&file).iter().collect();
        assert_eq!(e["cardinality"], levels[v], "{e}");
        assert_eq!(got.len() as u64, levels[v], "{v}");
        model.check_level(v, &got);
        for o in got {
            *seen.entry(o).or_default() += 1;
        }
    }
    let with_level: BTreeSet<u32> = model
        .live
        .iter()
        .filter(|o| {
            model
                .levels_of(**o)
                .is_some_and(|v| v.iter().all(|l| LEVELS.contains(&l.as_str())))
        })
        .copied()
        .collect();
    assert_eq!(seen.keys().copied().collect::<BTreeSet<u32>>(), with_level);
    assert!(
        seen.values().all(|&n| n == 1),
        "a person in two member_level values: {seen:?}"
    );
    assert_eq!(
        count(&report, "member_level"),
        with_level.len() as u64,
        "{report}"
    );

    // `tags list` and `tags show` say the same.
    let list = shop.json(&["tags", "list"]);
    for name in SEED_TAGS {
        let t = tag(&list, name);
        assert_eq!(t["count"], count(&report, name), "`{name}` in {list}");
        assert_eq!(t["version"], 1, "{list}");
        assert_eq!(t["persons"], persons, "{list}");
        assert_eq!(t["kind"], tag(&defs, name)["kind"]);
        assert_eq!(t["rule"], tag(&defs, name)["rule"]);
        let show = shop.json(&["tags", "show", name]);
        assert_eq!(show["definition"]["name"], name, "{show}");
        let versions = show["versions"].as_array().unwrap();
        assert_eq!(versions.len(), 1, "{show}");
        assert_eq!(versions[0]["version"], 1);
        assert_eq!(versions[0]["count"], count(&report, name), "{show}");
        assert_eq!(versions[0]["persons"], persons, "{show}");
        assert_eq!(
            per_value(&versions[0]["values"]),
            per_value(&tag(&report, name)["values"]),
            "{show}"
        );
    }

    // A second refresh, over gRPC as a campaign system runs it: progress,
    // then one report, for version 2 with the same counts.
    let mut client = TagServiceClient::new(shop.server.channel().await);
    let mut stream = client
        .refresh(pb::RefreshTagsRequest {
            workspace: "shop".into(),
            now_unix_ms: NOW_MS,
            full: false,
        })
        .await
        .unwrap()
        .into_inner();
    let (mut progress, mut second) = (0, None);
    while let Some(msg) = stream.next().await {
        match msg.unwrap().update {
            Some(pb::refresh_tags_update::Update::Progress(_)) => {
                assert!(second.is_none(), "progress after the report");
                progress += 1;
            }
            Some(pb::refresh_tags_update::Update::Report(r)) => {
                assert!(second.is_none(), "two reports");
                second = Some(r);
            }
            None => {}
        }
    }
    let second = second.expect("the refresh stream ended without a report");
    assert!(progress > 0, "no progress before the report");
    assert_eq!(second.version, 2);
    assert_eq!(second.persons, persons);
    // Nothing new since the first: it starts from that refresh's state.
    assert!(second.incremental && second.events_read == 0, "{second:?}");
    assert_eq!(second.events, report["events"].as_u64().unwrap());
    let names: Vec<&str> = second.tags.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, SEED_TAGS);
    for t in &second.tags {
        assert_eq!(t.count, count(&report, &t.name), "`{}`: {second:?}", t.name);
        let values: BTreeMap<String, u64> = t
            .values
            .iter()
            .map(|v| (v.value.clone(), v.count))
            .collect();
        assert_eq!(values, per_value(&tag(&report, &t.name)["values"]));
    }
    let show = shop.json(&["tags", "show", "skincare_lover"]);
    let versions: Vec<(u64, u64)> = show["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["version"].as_u64().unwrap(), v["count"].as_u64().unwrap()))
        .collect();
    let lovers = count(&report, "skincare_lover");
    assert_eq!(versions, [(1, lovers), (2, lovers)], "{show}");
    assert_eq!(
        tag(&shop.json(&["tags", "list"]), "skincare_lover")["version"],
        2
    );
}

#[test]
fn member_level_ties_go_to_the_larger_value() {
    // engine/src/profile/scan.rs: "Latest by event time; ties go to the larger
    // value, so the result does not depend on read order." The generator
    // writes a few `profile_update` pairs of one person at the same µs.
    let shop = Shop::start(400, &[], true);
    shop.define_seed();
    shop.refresh();
    let model = Model::build(&shop);
    let ties = model.level_ties();
    assert!(
        !ties.is_empty(),
        "the generated data has no tied member_level updates any more: this test checks nothing"
    );
    let ids: HashMap<u32, String> = shop
        .sql("SELECT person_id, ordinal FROM persons WHERE merged_into IS NULL")
        .iter()
        .map(|r| {
            (
                r["ordinal"].as_u64().unwrap() as u32,
                r["person_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut wrong = Vec::new();
    for (o, values) in &ties {
        let want = values.last().unwrap();
        let p = shop.json(&["person", &ids[o]]);
        let (attribute, tag) = (&p["attributes"]["member_level"], &p["tags"]["member_level"]);
        if attribute != want.as_str() || tag != want.as_str() {
            wrong.push(format!(
                "ordinal {o}: latest updates at one µs set {values:?}; attribute {attribute}, tag {tag}, want \"{want}\""
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "member_level ties must go to the larger value whatever the read order:\n{}",
        wrong.join("\n")
    );
}

/// Fails (never skips) when python3 cannot import pyroaring.
pub(crate) fn require_pyroaring() {
    require_python("import pyroaring", "pyroaring");
}

/// Fails (never skips) when python3 cannot run `import` (the PyPI
/// `packages` provide it).
pub(crate) fn require_python(import: &str, packages: &str) {
    let how = format!("install it with `python3 -m pip install {packages}` (.ci/run does)");
    match Command::new("python3").args(["-c", import]).output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "python3 cannot `{import}` ({}): {how}",
            String::from_utf8_lossy(&o.stderr)
                .trim()
                .lines()
                .last()
                .unwrap_or_default()
        ),
        Err(e) => panic!("cannot run python3 ({e}): install python3, then {how}"),
    }
}

/// Loads each file with `pyroaring.BitMap.deserialize`, writes pyroaring's own
/// serialisation beside it as `FILE.py`, and returns per file
/// `{cardinality, sum, min, max, members}`.
pub(crate) fn pyroaring_read(dir: &Path, files: &[PathBuf]) -> HashMap<String, Value> {
    let script = dir.join("read_bitmaps.py");
    std::fs::write(
        &script,
        r#"import json, sys
import pyroaring

out = {}
for f in sys.argv[1:]:
    with open(f, "rb") as fh:
        b = pyroaring.BitMap.deserialize(fh.read())
    with open(f + ".py", "wb") as fh:
        fh.write(b.serialize())
    members = list(b)
    out[f] = {
        "cardinality": len(b),
        "sum": sum(members),
        "min": b.min() if members else None,
        "max": b.max() if members else None,
        "members": members,
    }
print(json.dumps(out))
"#,
    )
    .unwrap();
    let out = Command::new("python3")
        .arg(&script)
        .args(files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pyroaring could not read the exports: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exported_bitmaps_load_in_pyroaring_with_the_same_members() {
    require_pyroaring();
    let shop = Shop::start(400, &[], true);
    shop.define_seed();
    // A manual tag with no upload yet: its empty bitmap must travel too.
    let empty = shop.file(
        "empty.toml",
        "[[tag]]\nname = \"nobody_yet\"\nkind = \"manual\"\n",
    );
    shop.json(&["tags", "define", &empty]);
    let report = shop.refresh();
    let model = Model::build(&shop);

    // (export, file, the members the model expects)
    let mut exports = Vec::new();
    for name in BOOLEAN_SEED_TAGS {
        let (e, file) = shop.export(name, None);
        exports.push((e, file, Some(model.members(name))));
    }
    // Levels are checked leniently where updates tie (see `check_level`).
    let (e, file) = shop.export("member_level", Some("gold"));
    exports.push((e, file, None));
    let (e, file) = shop.export("nobody_yet", None);
    exports.push((e, file, Some(BTreeSet::new())));

    let files: Vec<PathBuf> = exports.iter().map(|(_, f, _)| f.clone()).collect();
    let py = pyroaring_read(shop.tmp.path(), &files);
    for (e, file, want) in &exports {
        let name = e["tag"].as_str().unwrap();
        let in_report = match e["value"].as_str() {
            Some(v) => per_value(&tag(&report, name)["values"])[v],
            None => count(&report, name),
        };
        assert_eq!(e["cardinality"], in_report, "{e}");
        assert_eq!(e["version"], 1, "{e}");
        assert_eq!(e["format"], "portable roaring", "{e}");
        assert_eq!(
            e["bytes"],
            std::fs::metadata(file).unwrap().len(),
            "{e}: the file holds every byte sent"
        );

        // Rust: the roaring crate reads the same members the model expects.
        let rust = read_bitmap(file);
        assert_eq!(e["cardinality"], rust.len(), "{e}");
        let members: BTreeSet<u32> = rust.iter().collect();
        match (want, e["value"].as_str()) {
            (Some(want), _) => assert_eq!(&members, want, "{e}: members differ from the model"),
            (None, Some(value)) => model.check_level(value, &members),
            (None, None) => unreachable!("an export with neither members nor a value"),
        }

        // Python: pyroaring reads the same bitmap.
        let p = &py[&file.display().to_string()];
        assert_eq!(p["cardinality"], rust.len(), "{name}: {p}");
        assert_eq!(
            p["sum"],
            rust.iter().map(u64::from).sum::<u64>(),
            "{name}: {p}"
        );
        assert_eq!(p["min"], serde_json::json!(rust.min()), "{name}: {p}");
        assert_eq!(p["max"], serde_json::json!(rust.max()), "{name}: {p}");
        assert_eq!(
            p["members"],
            serde_json::json!(members.iter().collect::<Vec<_>>()),
            "{name}"
        );
        // And back: what pyroaring writes, the roaring crate reads as the same set.
        let back = read_bitmap(&PathBuf::from(format!("{}.py", file.display())));
        assert_eq!(back, rust, "{name}: pyroaring's serialisation differs");
    }

    // An enum tag exports one value at a time.
    let out = shop.path("levels.roaring").display().to_string();
    let err = shop.fails(&["tags", "export", "member_level", "-o", &out]);
    assert!(err.contains("value"), "{err}");
    assert!(!Path::new(&out).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_definitions_are_refused_and_manual_tags_take_uploads() {
    let shop = Shop::start(300, &[], true);
    shop.define_seed();
    shop.refresh();
    let before = shop.json(&["tags", "list"]);

    // An unknown event type beside a good tag: the file is refused whole.
    let bad = shop.file(
        "bad.toml",
        "[[tag]]\nname = \"buyer\"\nkind = \"boolean\"\nrule = \"did(purchase) >= 1\"\n\n\
         [[tag]]\nname = \"viewer\"\nkind = \"boolean\"\nrule = \"did(page_veiw) >= 1\"\n",
    );
    let err = shop.fails(&["tags", "define", &bad]);
    for needle in ["viewer", "page_veiw", "page_view"] {
        assert!(err.contains(needle), "`{needle}` not in: {err}");
    }
    // An unknown trait, a property that is no dimension (JSON), an unknown source.
    for (name, text, needles) in [
        (
            "trait.toml",
            "[[tag]]\nname = \"big\"\nkind = \"boolean\"\nrule = \"total_spnd >= 100\"\n",
            &["total_spnd", "total_spend"][..],
        ),
        (
            "dimension.json",
            r#"{"tags":[{"name":"cat","kind":"boolean","rule":"did(page_view WHERE categroy = 'skincare') >= 1"}]}"#,
            &["categroy", "category"][..],
        ),
        (
            "source.toml",
            "[[tag]]\nname = \"lvl\"\nkind = \"enum\"\nsource = \"levle\"\n",
            &["levle"][..],
        ),
    ] {
        let f = shop.file(name, text);
        let err = shop.fails(&["tags", "define", &f]);
        for needle in needles {
            assert!(err.contains(needle), "{name}: `{needle}` not in: {err}");
        }
    }
    assert_eq!(
        shop.json(&["tags", "list"]),
        before,
        "a refused file saved something"
    );

    // Over gRPC: InvalidArgument, naming it.
    let mut client = TagServiceClient::new(shop.server.channel().await);
    let status = client
        .define(pb::DefineTagsRequest {
            workspace: "shop".into(),
            text: std::fs::read_to_string(&bad).unwrap(),
            format: pb::DefinitionFormat::Toml as i32,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("page_veiw"), "{status:?}");
    assert_eq!(shop.json(&["tags", "list"]), before);

    // Uploads go to manual tags only.
    let phones = shop
        .sql("SELECT value, ordinal FROM identifiers WHERE kind = 'phone' ORDER BY ordinal, value");
    // 199 is no prefix of the generator's (nor its reserved store range 1390000xxxx).
    let unknown = "+8619912340001";
    assert!(phones.iter().all(|p| p["value"] != unknown));
    // Two phones of one person (when someone has two) and one of another.
    let ord = |p: &Value| p["ordinal"].as_u64().unwrap() as u32;
    let twin = phones.windows(2).position(|w| ord(&w[0]) == ord(&w[1]));
    let picked: Vec<&Value> = match twin {
        Some(i) => {
            let other = phones.iter().find(|p| ord(p) != ord(&phones[i])).unwrap();
            vec![&phones[i], &phones[i + 1], other]
        }
        None => phones.iter().take(3).collect(),
    };
    let want: BTreeSet<u32> = picked.iter().map(|p| ord(p)).collect();
    let value = |p: &Value| p["value"].as_str().unwrap().to_string();
    // The second written as a cashier types it: normalised on upload.
    let typed = value(picked[1]).trim_start_matches("+86").to_string();
    let list = shop.file(
        "vip.txt",
        &format!(
            "phone:{}\nphone:{typed}\n# a comment\n\nphone:{}\nphone:{unknown}\n",
            value(picked[0]),
            value(picked[2])
        ),
    );
    let err = shop.fails(&["tags", "upload", "skincare_lover", &list]);
    assert!(err.contains("not manual"), "{err}");
    let err = shop.fails(&["tags", "upload", "vip_list", &list]);
    assert!(
        err.contains("vip_list") && err.contains("not found"),
        "{err}"
    );

    let vip = shop.file(
        "vip.toml",
        "[[tag]]\nname = \"vip_list\"\nkind = \"manual\"\n",
    );
    let defs = shop.json(&["tags", "define", &vip]);
    assert_eq!(tag(&defs, "vip_list")["kind"], "manual");
    assert_eq!(defs["tags"].as_array().unwrap().len(), SEED_TAGS.len() + 1);
    let r = shop.json(&["tags", "upload", "vip_list", &list]);
    assert_eq!(r["identifiers"], 4, "{r}");
    assert_eq!(r["matched"], 3, "{r}");
    assert_eq!(r["unknown"], 1, "{r}");
    assert_eq!(r["persons"], want.len() as u64, "{r}");
    assert_eq!(
        r["unknown_examples"],
        serde_json::json!([format!("phone:{unknown}")])
    );
    let err = shop.fails(&[
        "tags",
        "upload",
        "vip_list",
        &shop.file("nokind.txt", "13800138000\n"),
    ]);
    assert!(err.contains("kind:value"), "{err}");

    // The upload takes effect at the next refresh, the bad one changed nothing.
    assert_eq!(
        tag(&shop.json(&["tags", "list"]), "vip_list")["count"],
        Value::Null
    );
    let report = shop.refresh();
    let t = tag(&report, "vip_list");
    assert_eq!(t["kind"], "manual");
    assert_eq!(t["count"], want.len() as u64, "{report}");
    assert_eq!(t["unknown_identifiers"], 1, "{report}");
    let (e, file) = shop.export("vip_list", None);
    assert_eq!(e["cardinality"], want.len() as u64);
    assert_eq!(read_bitmap(&file).iter().collect::<BTreeSet<u32>>(), want);

    // A tag another rule uses cannot be dropped; a manual one can.
    let uses = shop.file(
        "uses.toml",
        "[[tag]]\nname = \"vip_lover\"\nkind = \"boolean\"\nrule = \"skincare_lover AND vip_list\"\n",
    );
    shop.json(&["tags", "define", &uses]);
    let err = shop.fails(&["tags", "drop", "skincare_lover"]);
    assert!(err.contains("skincare_lover"), "{err}");
    shop.json(&["tags", "drop", "vip_lover"]);
    shop.json(&["tags", "drop", "vip_list"]);
    let after = shop.json(&["tags", "list"]);
    let names: Vec<&str> = after["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, SEED_TAGS, "{after}");
    let err = shop.fails(&["tags", "upload", "vip_list", &list]);
    assert!(err.contains("not found"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn person_360_shows_tags_attributes_and_traits() {
    let shop = Shop::start(300, &[], true);
    shop.define_seed();
    shop.refresh();
    let model = Model::build(&shop);
    let lovers = model.members("skincare_lover");
    let phones =
        shop.sql("SELECT value, ordinal FROM identifiers WHERE kind = 'phone' ORDER BY value");
    let phone_of = |inside: bool| {
        phones
            .iter()
            .find(|p| lovers.contains(&(p["ordinal"].as_u64().unwrap() as u32)) == inside)
            .unwrap_or_else(|| panic!("no phone with skincare_lover = {inside}"))
    };
    for (inside, p) in [(true, phone_of(true)), (false, phone_of(false))] {
        let o = p["ordinal"].as_u64().unwrap() as u32;
        let phone = p["value"].as_str().unwrap();
        let person = shop.json(&["person", &format!("phone:{phone}")]);
        let facts = &model.persons[&o];
        assert_eq!(person["ordinal"], o, "{person}");
        assert_eq!(person["tags_version"], 1, "{person}");
        let tags = &person["tags"];
        if inside {
            assert_eq!(tags["skincare_lover"], "true", "{person}");
        }
        for name in BOOLEAN_SEED_TAGS {
            let want = model.members(name).contains(&o);
            assert_eq!(
                tags.get(name).is_some(),
                want,
                "`{name}` for ordinal {o}: {person}"
            );
            if want {
                assert_eq!(tags[name], "true");
            }
        }
        let traits = &person["traits"];
        assert_eq!(traits["order_count"], facts.orders.to_string(), "{person}");
        assert_eq!(traits["events"], facts.events.to_string(), "{person}");
        match &facts.registered {
            Some((_, channel)) => assert_eq!(traits["registered_channel"], channel.as_str()),
            None => assert!(traits.get("registered_channel").is_none(), "{person}"),
        }
        // (Which of tied levels wins is `member_level_ties_go_to_the_larger_value`'s business.)
        match model.levels_of(o) {
            Some(levels) => {
                let level = person["attributes"]["member_level"].as_str().unwrap();
                assert!(levels.contains(level), "{levels:?}: {person}");
                if levels.iter().all(|l| LEVELS.contains(&l.as_str())) {
                    assert_eq!(tags["member_level"], level, "{person}");
                }
            }
            None => assert!(tags.get("member_level").is_none(), "{person}"),
        }
    }
}

/// `n` page views of skincare (2026-03-01) by `phone`, ids `prefix-N`. Test
/// phones start 199, which the generator never uses.
fn skincare_views(prefix: &str, phone: &str, n: usize) -> Vec<pb::Event> {
    (0..n)
        .map(|i| event(&format!("{prefix}-{i}"), phone))
        .collect()
}

/// Waits up to a minute for `tags list` to satisfy `done`.
fn wait_for_list(shop: &Shop, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let list = shop.json(&["tags", "list"]);
        if done(&list) {
            return list;
        }
        assert!(Instant::now() < deadline, "{what}: still {list}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_refreshes_tags_and_so_does_the_schedule() {
    let keep = ("QUIVER_TAGS__KEEP_VERSIONS", "2");
    let mut shop = Shop::start(300, &[keep], false);

    // Before any resolve a refresh is refused, naming the workspace and the cure.
    let err = shop.fails(&["tags", "refresh"]);
    for needle in ["shop", "quiver resolve", "InvalidArgument"] {
        assert!(err.contains(needle), "`{needle}` not in: {err}");
    }
    // No tags defined: a resolve refreshes nothing.
    let r = shop.json(&["resolve"]);
    assert_eq!(r["tags_version"], 0, "{r}");
    shop.define_seed();
    let first = shop.refresh();
    assert_eq!(first["version"], 1);

    // A new person: registers on the mini-program, views skincare 4 times.
    let mut events = skincare_views("new-a", "19912340002", 4);
    let mut register = event("new-a-register", "19912340002");
    register.r#type = "register".into();
    register.category = None;
    events.push(register);
    shop.ingest(1, events).await;
    let r = shop.json(&["resolve"]);
    assert_eq!(r["tags_version"], 2, "{r}");
    assert_eq!(r["new_persons"], 1, "{r}");
    let list = shop.json(&["tags", "list"]);
    assert_eq!(tag(&list, "skincare_lover")["version"], 2, "{list}");
    for name in ["skincare_lover", "miniprogram_user"] {
        assert_eq!(
            count(&list, name),
            count(&first, name) + 1,
            "`{name}`: {list}"
        );
    }
    let person = shop.json(&["person", "phone:19912340002"]);
    assert_eq!(person["tags"]["skincare_lover"], "true", "{person}");
    assert_eq!(person["tags"]["miniprogram_user"], "true", "{person}");
    assert_eq!(person["traits"]["registered_channel"], "miniprogram");
    assert_eq!(person["tags_version"], 2, "{person}");

    // Two versions kept.
    assert_eq!(shop.refresh()["version"], 3);
    let show = shop.json(&["tags", "show", "skincare_lover"]);
    let versions: Vec<u64> = show["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [2, 3], "{show}");

    // Restarted with no refresh after resolve but a one-second schedule.
    shop.server.stop().unwrap();
    let data = shop.path("data");
    shop.server = Server::start(
        &data,
        &[
            keep,
            ("QUIVER_TAGS__REFRESH_AFTER_RESOLVE", "false"),
            ("QUIVER_TAGS__REFRESH_INTERVAL_SECS", "1"),
        ],
    )
    .unwrap();
    shop.ingest(2, skincare_views("new-b", "19912340003", 4))
        .await;
    let r = shop.json(&["resolve"]);
    assert_eq!(
        r["tags_version"], 0,
        "refreshed after resolve though told not to: {r}"
    );
    let lovers = count(&first, "skincare_lover") + 2;
    let list = wait_for_list(&shop, "the scheduled refresh", |l| {
        tag(l, "skincare_lover")["version"].as_u64() > Some(3)
            && count(l, "skincare_lover") == lovers
    });
    // (No version count here: with refreshes every second, `tags show` may
    // catch one between a new version's manifest and the old one's removal.)
    let person = shop.json(&["person", "phone:19912340003"]);
    assert_eq!(
        person["tags"]["skincare_lover"], "true",
        "{person} after {list}"
    );
}
