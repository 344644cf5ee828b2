//! Segments benchmark: the issue's audience questions on the same generated
//! data, Quiver in-process (the engine library on the workspace directory)
//! and over gRPC (`SegmentService`, a real client on loopback), next to
//! DuckDB (a wide person table in memory, the same as Parquet, windows over
//! the raw events), chDB (groupBitmap states, a MergeTree of events) and
//! pyroaring (the same set algebra on Quiver's exported bitmaps: the cost of
//! the algebra alone), and that algebra in Rust with roaring-rs and with
//! CRoaring (`croaring`), to choose the library with numbers. Every
//! system's counts must agree.
//!
//! ```text
//! Q1  member_level = 'vip' AND skincare_lover AND NOT did(purchase) IN LAST 30 DAYS
//!     AND total_spend >= 1000 AND registered_channel IN ('miniprogram', 'pos')
//! Q2  member_level = 'vip' AND did(page_view WHERE category = 'skincare') >= 3
//!     IN LAST 30 DAYS AND NOT did(purchase) IN LAST 14 DAYS
//! Q2c Q2 broken down by city
//! ```
//!
//! Setup (generate, ingest over Flight, resolve, seed tags, refresh) is done
//! once per data directory and reused by later runs (`--fresh` redoes it).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use quiver_proto::v1 as pb;
use quiver_proto::v1::segment_service_client::SegmentServiceClient;

use crate::util::{self, Server, Timing, timing};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Persons to generate (≈ 12 events each); 1M is the quick mode.
    #[arg(long, default_value_t = 10_000_000)]
    persons: u64,
    /// Where data and results go.
    #[arg(long, default_value = "bench/out")]
    out: PathBuf,
    /// Timed runs per question and system (after one warm-up).
    #[arg(long, default_value_t = 30)]
    runs: usize,
    /// Skip the peers (no Python needed).
    #[arg(long)]
    no_peers: bool,
    /// Redo the setup even when an earlier run left the data.
    #[arg(long)]
    fresh: bool,
}

const Q1: &str = "member_level = 'vip' AND skincare_lover AND NOT did(purchase) IN LAST 30 DAYS AND total_spend >= 1000 AND registered_channel IN ('miniprogram', 'pos')";
const Q2: &str = "member_level = 'vip' AND did(page_view WHERE category = 'skincare') >= 3 IN LAST 30 DAYS AND NOT did(purchase) IN LAST 14 DAYS";

/// The predicates of Q1 and Q2, exported as bitmaps for the algebra-only systems.
const LEAVES: [(&str, &str); 8] = [
    ("vip", "member_level = 'vip'"),
    ("lover", "skincare_lover"),
    ("p30", "did(purchase) IN LAST 30 DAYS"),
    ("p14", "did(purchase) IN LAST 14 DAYS"),
    (
        "v3",
        "did(page_view WHERE category = 'skincare') >= 3 IN LAST 30 DAYS",
    ),
    ("spend", "total_spend >= 1000"),
    ("reg_mini", "registered_channel = 'miniprogram'"),
    ("reg_pos", "registered_channel = 'pos'"),
];

/// A question's answer: a count, or counts per city.
#[derive(Debug, Clone, PartialEq)]
enum Answer {
    Count(u64),
    ByCity(BTreeMap<String, u64>),
}

impl Answer {
    fn from_json(v: &serde_json::Value) -> Option<Answer> {
        if let Some(n) = v.as_u64() {
            return Some(Answer::Count(n));
        }
        let m = v.as_object()?;
        Some(Answer::ByCity(
            m.iter()
                .filter_map(|(k, n)| Some((k.clone(), n.as_u64()?)))
                .filter(|(_, n)| *n > 0)
                .collect(),
        ))
    }

    fn short(&self) -> String {
        match self {
            Answer::Count(n) => n.to_string(),
            Answer::ByCity(m) => format!("{} cities, {} persons", m.len(), m.values().sum::<u64>()),
        }
    }
}

struct Row {
    system: String,
    question: &'static str,
    timing: Timing,
    answer: Option<Answer>,
    note: String,
}

fn end_of(d: chrono::NaiveDate) -> i64 {
    d.and_hms_milli_opt(23, 59, 59, 999)
        .map(|t| t.and_utc().timestamp_millis())
        .unwrap_or_default()
}

fn cli_json(server: &Server, bin: &Path, args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let out = server.cli(bin, args)?;
    serde_json::from_str(out.trim()).with_context(|| format!("quiver {args:?}: JSON output"))
}

/// Generate, ingest, resolve, define the seed tags, refresh as of `now`.
fn setup(bin: &Path, gen_dir: &Path, data: &Path, now: &str) -> anyhow::Result<String> {
    let _ = std::fs::remove_dir_all(data);
    let server = Server::start(bin, data)?;
    server.cli(bin, &["workspace", "create", "shop"])?;
    let files = util::files_in(gen_dir, "events", ".parquet")?;
    let t = Instant::now();
    util::ingest_flight(&server, bin, &files)?;
    server.cli(bin, &["--workspace", "shop", "workspace", "flush"])?;
    let ingest = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let resolved = cli_json(&server, bin, &["--workspace", "shop", "--json", "resolve"])?;
    let resolve = t.elapsed().as_secs_f64();
    let tags = gen_dir.join("tags.toml").display().to_string();
    cli_json(
        &server,
        bin,
        &["--workspace", "shop", "--json", "tags", "define", &tags],
    )?;
    let t = Instant::now();
    let r = cli_json(
        &server,
        bin,
        &[
            "--workspace",
            "shop",
            "--json",
            "tags",
            "refresh",
            "--now",
            now,
        ],
    )?;
    let refresh = t.elapsed().as_secs_f64();
    Ok(format!(
        "{} event files ingested over Flight in {ingest:.1}s; resolve {resolve:.1}s ({} persons); seed tags refreshed in {refresh:.1}s (index {:.0} MiB)",
        files.len(),
        resolved["persons"],
        r["index_bytes"].as_f64().unwrap_or(f64::NAN) / (1u64 << 20) as f64
    ))
}

/// A workspace ready for questions: generated, ingested, resolved, tagged.
pub struct Prepared {
    pub generated: util::Generated,
    /// The `quiver serve --data` directory; workspace `shop`.
    pub data: PathBuf,
    /// How the setup went (or that it was reused).
    pub setup_note: String,
}

/// The working set `<out>/segments-<persons>/`, shared by the segments and
/// analytics benchmarks: set up once ([`setup`]) and reused until `fresh`.
pub fn prepare(out: &Path, persons: u64, fresh: bool) -> anyhow::Result<Prepared> {
    let generated = util::generated(out, "segments", persons)?;
    let now = generated.end.format("%Y-%m-%d").to_string();
    let data = generated.base.join("quiver-data");
    let ready = generated.base.join("ready.txt");
    let setup_note = if fresh || !ready.exists() {
        let note = setup(&generated.bin, &generated.gen_dir, &data, &now)?;
        std::fs::write(&ready, &note)?;
        note
    } else {
        format!(
            "reused: {}",
            std::fs::read_to_string(&ready).unwrap_or_default()
        )
    };
    println!("setup: {setup_note}");
    Ok(Prepared {
        generated,
        data,
        setup_note,
    })
}

/// Q1, Q2 and Q2 by city over gRPC, `runs` times each after a warm-up.
async fn over_grpc(url: &str, now_ms: i64, runs: usize) -> anyhow::Result<Vec<Row>> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())?
        .tcp_nodelay(true)
        .connect()
        .await?;
    let mut client = SegmentServiceClient::new(channel);
    let audience = |e: &str| pb::Audience {
        expression: e.into(),
        now_unix_ms: now_ms,
        ..Default::default()
    };
    let mut rows = Vec::new();
    for (question, expr) in [("q1", Q1), ("q2", Q2)] {
        let (mut wall, mut server) = (Vec::new(), Vec::new());
        let (mut answer, mut cold) = (None, f64::NAN);
        for i in 0..=runs {
            let t = Instant::now();
            let r = client
                .count(pb::CountRequest {
                    workspace: "shop".into(),
                    audience: Some(audience(expr)),
                })
                .await?
                .into_inner();
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            if i > 0 {
                wall.push(ms);
                server.push(r.evaluated.map_or(f64::NAN, |e| e.micros as f64 / 1000.0));
            } else {
                cold = ms;
            }
            answer = Some(Answer::Count(r.count));
        }
        rows.push(Row {
            system: "Quiver gRPC".into(),
            question,
            note: format!(
                "server-side p50 {:.3} ms; first call {cold:.3} ms (leaf results not yet kept)",
                timing(server).p50
            ),
            timing: timing(wall),
            answer,
        });
    }
    let (mut wall, mut answer) = (Vec::new(), None);
    for i in 0..=runs {
        let t = Instant::now();
        let r = client
            .breakdown(pb::BreakdownRequest {
                workspace: "shop".into(),
                audience: Some(audience(Q2)),
                by: "city".into(),
                edges: Vec::new(),
            })
            .await?
            .into_inner();
        if i > 0 {
            wall.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        answer = Some(Answer::ByCity(
            r.rows
                .into_iter()
                .filter(|x| x.count > 0)
                .map(|x| (x.value, x.count))
                .collect(),
        ));
    }
    rows.push(Row {
        system: "Quiver gRPC".into(),
        question: "q2_city",
        timing: timing(wall),
        answer,
        note: "Breakdown(by city)".into(),
    });
    Ok(rows)
}

/// The same in-process: the engine library opened on the data directory.
async fn in_process(data: &Path, now_ms: i64, runs: usize) -> anyhow::Result<(Vec<Row>, f64)> {
    let t = Instant::now();
    let engine = quiver_engine::Engine::open(quiver_engine::EngineConfig {
        data_dir: data.to_path_buf(),
        ..Default::default()
    })
    .await?;
    let ws = engine.workspace("shop")?;
    let opts = quiver_engine::segment::AudienceOptions {
        now: Some(now_ms * 1000),
        as_of: None,
    };
    // Load the index version (with a question that needs no window).
    ws.audience(&quiver_engine::segment::parse("skincare_lover")?, opts)?;
    let open = t.elapsed().as_secs_f64();
    let mut rows = Vec::new();
    for (question, text) in [("q1", Q1), ("q2", Q2)] {
        let e = quiver_engine::segment::parse(text)?;
        let mut ms = Vec::new();
        let (mut answer, mut cold) = (None, f64::NAN);
        for i in 0..=runs {
            let t = Instant::now();
            let n = ws.count(&e, opts)?.members;
            let took = t.elapsed().as_secs_f64() * 1000.0;
            if i > 0 {
                ms.push(took);
            } else {
                cold = took;
            }
            answer = Some(Answer::Count(n));
        }
        rows.push(Row {
            system: "Quiver in-process".into(),
            question,
            timing: timing(ms),
            answer,
            note: format!(
                "Workspace::count on the loaded index; first call {cold:.3} ms (leaf results not yet kept)"
            ),
        });
    }
    let e = quiver_engine::segment::parse(Q2)?;
    let mut ms = Vec::new();
    let mut answer = None;
    for i in 0..=runs {
        let t = Instant::now();
        let b = ws.breakdown(&e, "city", &[], opts)?;
        // (Q2's leaves are kept from the Q2 runs above.)
        let took: Duration = t.elapsed();
        if i > 0 {
            ms.push(took.as_secs_f64() * 1000.0);
        }
        answer = Some(Answer::ByCity(
            b.rows
                .into_iter()
                .filter(|r| r.count > 0)
                .map(|r| (r.value, r.count))
                .collect(),
        ));
    }
    rows.push(Row {
        system: "Quiver in-process".into(),
        question: "q2_city",
        timing: timing(ms),
        answer,
        note: "Workspace::breakdown(by city)".into(),
    });
    drop(ws);
    engine.flush_all().await?;
    Ok((rows, open))
}

/// The set operations the algebra-only systems need, so that roaring-rs
/// and CRoaring run one plan.
trait Sets: Sized {
    fn load(bytes: &[u8]) -> Option<Self>;
    fn and(&self, other: &Self) -> Self;
    fn or(&self, other: &Self) -> Self;
    fn andnot(&self, other: &Self) -> Self;
    fn size(&self) -> u64;
    fn and_size(&self, other: &Self) -> u64;
}

impl Sets for roaring::RoaringBitmap {
    fn load(bytes: &[u8]) -> Option<Self> {
        roaring::RoaringBitmap::deserialize_from(bytes).ok()
    }
    fn and(&self, other: &Self) -> Self {
        self & other
    }
    fn or(&self, other: &Self) -> Self {
        self | other
    }
    fn andnot(&self, other: &Self) -> Self {
        self - other
    }
    fn size(&self) -> u64 {
        self.len()
    }
    fn and_size(&self, other: &Self) -> u64 {
        self.intersection_len(other)
    }
}

impl Sets for croaring::Bitmap {
    fn load(bytes: &[u8]) -> Option<Self> {
        croaring::Bitmap::try_deserialize::<croaring::Portable>(bytes)
    }
    fn and(&self, other: &Self) -> Self {
        croaring::Bitmap::and(self, other)
    }
    fn or(&self, other: &Self) -> Self {
        croaring::Bitmap::or(self, other)
    }
    fn andnot(&self, other: &Self) -> Self {
        croaring::Bitmap::andnot(self, other)
    }
    fn size(&self) -> u64 {
        self.cardinality()
    }
    fn and_size(&self, other: &Self) -> u64 {
        self.and_cardinality(other)
    }
}

/// One question of [`algebra`], answering when called.
type Question<'a> = Box<dyn Fn() -> Answer + 'a>;

/// pyroaring's plan (`segments_peers.py`) in Rust on the bitmaps Quiver
/// exported (the windows already evaluated): the set algebra alone, with
/// the library `S`, timed like every other system.
fn algebra<S: Sets>(system: &str, bitmaps: &Path, runs: usize) -> anyhow::Result<Vec<Row>> {
    let load = |name: &str| -> anyhow::Result<S> {
        let path = bitmaps.join(format!("{name}.roaring"));
        let bytes = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
        S::load(&bytes)
            .with_context(|| format!("{}: not a portable roaring bitmap", path.display()))
    };
    let b: BTreeMap<&str, S> = LEAVES
        .iter()
        .map(|(name, _)| Ok((*name, load(name)?)))
        .collect::<anyhow::Result<_>>()?;
    let mut cities = Vec::new();
    for entry in std::fs::read_dir(bitmaps)? {
        let file = entry?.file_name().to_string_lossy().into_owned();
        if let Some(city) = file
            .strip_prefix("city=")
            .and_then(|f| f.strip_suffix(".roaring"))
        {
            cities.push((city.to_string(), load(&format!("city={city}"))?));
        }
    }
    cities.sort_by(|a, c| a.0.cmp(&c.0));
    let q2 = || b["vip"].and(&b["v3"]).andnot(&b["p14"]);
    let questions: [(&'static str, Question<'_>); 3] = [
        (
            "q1",
            Box::new(|| {
                let pos = b["vip"].and(&b["lover"]).and(&b["spend"]);
                let any = b["reg_mini"].or(&b["reg_pos"]);
                Answer::Count(pos.and(&any).andnot(&b["p30"]).size())
            }),
        ),
        ("q2", Box::new(|| Answer::Count(q2().size()))),
        (
            "q2_city",
            Box::new(|| {
                let q = q2();
                let mut out: BTreeMap<String, u64> = cities
                    .iter()
                    .map(|(c, m)| (c.clone(), q.and_size(m)))
                    .collect();
                let rest = q.size() - out.values().sum::<u64>();
                out.insert("(none)".into(), rest);
                out.retain(|_, n| *n > 0);
                Answer::ByCity(out)
            }),
        ),
    ];
    let mut rows = Vec::new();
    for (question, f) in questions {
        let mut answer = f();
        let mut ms = Vec::with_capacity(runs);
        for _ in 0..runs {
            let t = Instant::now();
            answer = f();
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        rows.push(Row {
            system: system.into(),
            question,
            timing: timing(ms),
            answer: Some(answer),
            note: "pyroaring's plan in Rust, in the bench process".into(),
        });
    }
    Ok(rows)
}

/// Systems that do the set algebra alone on bitmaps Quiver evaluated: the
/// limit the issue names, not peers answering the question.
fn algebra_only(system: &str) -> bool {
    matches!(system, "pyroaring" | "roaring-rs" | "croaring")
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.runs >= 20, "--runs must be at least 20");
    let Prepared {
        generated: util::Generated { bin, base, end, .. },
        data,
        setup_note,
    } = prepare(&args.out, args.persons, args.fresh)?;
    let now = end.format("%Y-%m-%d").to_string();
    let now_ms = end_of(end);

    // Over gRPC, and the exports pyroaring works on.
    let bitmaps = base.join("bitmaps");
    let _ = std::fs::remove_dir_all(&bitmaps);
    std::fs::create_dir_all(&bitmaps)?;
    let mut rows = {
        let server = Server::start(&bin, &data)?;
        // Timed first, while the server has kept no leaf results.
        let rows = over_grpc(&server.url, now_ms, args.runs).await?;
        let cities = cli_json(
            &server,
            &bin,
            &[
                "--workspace",
                "shop",
                "--json",
                "breakdown",
                // every live person
                "skincare_lover OR NOT skincare_lover",
                "--by",
                "city",
                "--now",
                &now,
            ],
        )?;
        let mut exports: Vec<(String, String)> = LEAVES
            .iter()
            .map(|(n, e)| (n.to_string(), e.to_string()))
            .collect();
        for row in cities["rows"].as_array().into_iter().flatten() {
            let city = row["value"].as_str().unwrap_or_default();
            if city != "(none)" {
                exports.push((
                    format!("city={city}"),
                    format!("city = '{}'", city.replace('\'', "''")),
                ));
            }
        }
        for (name, expr) in &exports {
            let file = bitmaps
                .join(format!("{name}.roaring"))
                .display()
                .to_string();
            server.cli(
                &bin,
                &[
                    "--workspace",
                    "shop",
                    "--json",
                    "export",
                    expr,
                    "--now",
                    &now,
                    "-o",
                    &file,
                ],
            )?;
        }
        rows
    };
    let (local, open_secs) = in_process(&data, now_ms, args.runs).await?;
    rows.extend(local);
    rows.extend(algebra::<roaring::RoaringBitmap>(
        "roaring-rs",
        &bitmaps,
        args.runs,
    )?);
    rows.extend(algebra::<croaring::Bitmap>(
        "croaring", &bitmaps, args.runs,
    )?);

    let mut peers = None;
    if !args.no_peers {
        let ws = data.join("workspaces/shop").display().to_string();
        let (r, rss) = util::peer_with_rss(
            "segments_peers.py",
            &[
                &ws,
                &now,
                &args.runs.to_string(),
                &bitmaps.display().to_string(),
            ],
        )?;
        for (system, qs) in r["results"].as_object().into_iter().flatten() {
            for question in ["q1", "q2", "q2_city"] {
                let q = &qs[question];
                if q.is_null() {
                    continue;
                }
                rows.push(Row {
                    system: system.clone(),
                    question,
                    timing: Timing {
                        p50: q["p50_ms"].as_f64().unwrap_or(f64::NAN),
                        p99: q["p99_ms"].as_f64().unwrap_or(f64::NAN),
                        runs: q["runs"].as_u64().unwrap_or(0) as usize,
                    },
                    answer: Answer::from_json(&q["value"]),
                    note: String::new(),
                });
            }
        }
        peers = Some((r, rss));
    }

    // Every answer must agree with Quiver in-process.
    let mut failures = Vec::new();
    for q in ["q1", "q2", "q2_city"] {
        let truth = rows
            .iter()
            .find(|r| r.system == "Quiver in-process" && r.question == q)
            .and_then(|r| r.answer.clone());
        for r in rows.iter().filter(|r| r.question == q) {
            if r.answer != truth {
                failures.push(format!(
                    "{} {q}: {:?}, Quiver in-process: {:?}",
                    r.system, r.answer, truth
                ));
            }
        }
    }

    let machine = util::machine();
    println!("\nmachine: {machine}");
    println!(
        "now = end of {now} UTC; {} timed runs per question after one warm-up; in-process engine open + index load {open_secs:.1}s",
        args.runs
    );
    if let Some((r, rss)) = &peers {
        println!(
            "peers: {}; setup (untimed) DuckDB {:.1}s, chDB {:.1}s; {} persons, {} attributed purchase/skincare-view events; peak RSS {}",
            r["versions"],
            r["setup_seconds"]["duckdb"].as_f64().unwrap_or(f64::NAN),
            r["setup_seconds"]["chdb"].as_f64().unwrap_or(f64::NAN),
            r["persons"],
            r["attributed_events"],
            rss.map_or("-".into(), |v| format!("{v:.0} MiB")),
        );
    }
    let best_peer = |q: &str| {
        rows.iter()
            .filter(|r| {
                r.question == q && !r.system.starts_with("Quiver") && !algebra_only(&r.system)
            })
            .map(|r| (r.timing.p50, r.system.clone()))
            .min_by(|a, b| a.0.total_cmp(&b.0))
    };
    println!(
        "\n| question | system | p50 ms | p99 ms | runs | answer | best peer ÷ this | notes |"
    );
    println!("|---|---|---:|---:|---:|---|---:|---|");
    let mut csv = format!(
        "# {machine}\n# {setup_note}\nquestion,system,p50_ms,p99_ms,runs,answer,best_peer_over_this,note\n"
    );
    for q in ["q1", "q2", "q2_city"] {
        let best = best_peer(q);
        for r in rows.iter().filter(|r| r.question == q) {
            let ratio = best
                .as_ref()
                .map_or("-".into(), |(b, _)| format!("{:.1}", b / r.timing.p50));
            let answer = r.answer.as_ref().map_or("-".into(), Answer::short);
            println!(
                "| {q} | {} | {:.3} | {:.3} | {} | {answer} | {ratio} | {} |",
                r.system, r.timing.p50, r.timing.p99, r.timing.runs, r.note
            );
            csv.push_str(&format!(
                "{q},{},{:.4},{:.4},{},{},{ratio},{}\n",
                r.system,
                r.timing.p50,
                r.timing.p99,
                r.timing.runs,
                answer.replace(',', ";"),
                r.note.replace(',', ";")
            ));
        }
        if let Some((b, s)) = best {
            println!("|  | best peer: {s} | {b:.3} | | | | | |");
        }
    }
    let csv_path = base.join(format!(
        "segments-{}.csv",
        chrono::Utc::now().format("%Y%m%dT%H%M%S")
    ));
    std::fs::write(&csv_path, csv)?;
    println!("\nresults: {}", csv_path.display());
    if !failures.is_empty() {
        anyhow::bail!("answers differ:\n  {}", failures.join("\n  "));
    }
    println!("every system's answers agree");
    Ok(())
}
