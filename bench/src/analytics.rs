//! Analytics benchmark: the issue's 3-step funnel and weekly retention on
//! the segments working set (generated, ingested, resolved), Quiver
//! in-process (`Workspace::funnel` / `retention` on loaded timelines) and
//! over gRPC (`AnalyticsService` on loopback), next to DuckDB running the
//! same SQL in the same run, over pre-attributed events and with the
//! attribution in SQL. Every system's answers must agree. Then a Flight SQL
//! `SELECT` of `--flight-rows` events streamed over loopback, next to the
//! same statement collected in-process.
//!
//! ```text
//! funnel     ad_click -> add_to_cart -> purchase within 7 days
//! retention  cohorts by first event's ISO week, 12 weekly cohorts from the
//!            data's first full week, 12 weeks each
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::Context;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::sql::client::FlightSqlServiceClient;
use futures::{StreamExt, TryStreamExt};
use quiver_engine::analytics::{FunnelRequest, Period, RetentionRequest};
use quiver_proto::v1 as pb;
use quiver_proto::v1::analytics_service_client::AnalyticsServiceClient;

use crate::segments::{Prepared, prepare};
use crate::util::{self, Server, Timing, timing};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Persons to generate (≈ 12 events each).
    #[arg(long, default_value_t = 1_000_000)]
    persons: u64,
    /// Where data and results go.
    #[arg(long, default_value = "bench/out")]
    out: PathBuf,
    /// Timed runs per question on Quiver and on DuckDB's attributed table
    /// (after one warm-up).
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Timed runs of DuckDB with the attribution in the query.
    #[arg(long, default_value_t = 3)]
    raw_runs: usize,
    /// Rows the Flight SQL `SELECT` streams.
    #[arg(long, default_value_t = 10_000_000)]
    flight_rows: u64,
    /// Timed Flight SQL runs (after one warm-up).
    #[arg(long, default_value_t = 3)]
    flight_runs: usize,
    /// Skip the peers (no Python needed).
    #[arg(long)]
    no_peers: bool,
    /// Redo the setup even when an earlier run left the data.
    #[arg(long)]
    fresh: bool,
}

const STEPS: [&str; 3] = ["ad_click", "add_to_cart", "purchase"];
const DAY_US: i64 = 86_400_000_000;
const WINDOW_US: i64 = 7 * DAY_US;
const PERIODS: u32 = 12;

/// The columns the Flight SQL benchmark selects: every stored column of
/// `events` (the derived `person_id` / `ordinal` are left out).
const FLIGHT_COLUMNS: &str = "event_id, event_time, received_at, channel, event_type, identifiers, category, sku, amount, currency, store_id, campaign, page, properties";

/// An answer: persons per funnel step, or cohort start (µs) → persons
/// retained per period (period 0 being the cohort's size).
#[derive(Debug, Clone, PartialEq)]
enum Answer {
    Funnel(Vec<u64>),
    Retention(BTreeMap<i64, Vec<u64>>),
}

impl Answer {
    fn from_json(v: &serde_json::Value) -> Option<Answer> {
        if let Some(a) = v.as_array() {
            return Some(Answer::Funnel(
                a.iter().map(|n| n.as_u64()).collect::<Option<_>>()?,
            ));
        }
        let m = v.as_object()?;
        let mut out = BTreeMap::new();
        for (k, row) in m {
            let row: Vec<u64> = row
                .as_array()?
                .iter()
                .map(|n| n.as_u64())
                .collect::<Option<_>>()?;
            out.insert(k.parse().ok()?, row);
        }
        Some(Answer::Retention(out))
    }

    fn retention<'a>(cohorts: impl Iterator<Item = (i64, u64, &'a [u64])>) -> Answer {
        Answer::Retention(
            cohorts
                .filter(|(_, persons, _)| *persons > 0)
                .map(|(start, persons, retained)| {
                    // Period 0 holds the cohort event itself.
                    debug_assert_eq!(retained.first(), Some(&persons));
                    (start, retained.to_vec())
                })
                .collect(),
        )
    }

    fn short(&self) -> String {
        match self {
            Answer::Funnel(v) => v.iter().map(u64::to_string).collect::<Vec<_>>().join(" → "),
            Answer::Retention(m) => format!(
                "{} cohorts, {} persons, {} retained in week 1",
                m.len(),
                m.values().map(|r| r[0]).sum::<u64>(),
                m.values()
                    .map(|r| r.get(1).copied().unwrap_or(0))
                    .sum::<u64>()
            ),
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

fn funnel_request() -> FunnelRequest {
    FunnelRequest {
        steps: STEPS.iter().map(|s| s.to_string()).collect(),
        window: WINDOW_US,
        ..Default::default()
    }
}

/// The retention span: 12 weekly cohorts from the first Monday on or after
/// the data's first day (the generator writes 365 days ending `end`).
fn retention_span(end: chrono::NaiveDate) -> (i64, i64) {
    use chrono::Datelike;
    let mut first = end - chrono::Duration::days(364);
    while first.weekday() != chrono::Weekday::Mon {
        first += chrono::Duration::days(1);
    }
    let from = first
        .and_hms_opt(0, 0, 0)
        .map(|t| t.and_utc().timestamp_micros())
        .unwrap_or_default();
    (from, from + i64::from(PERIODS) * 7 * DAY_US)
}

/// Runs `f` once to warm up, then `runs` times; the last answer and the
/// timings in ms.
async fn timed<F, Fut>(runs: usize, mut f: F) -> anyhow::Result<(Answer, Timing, f64)>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Answer>>,
{
    let t = Instant::now();
    let mut answer = f().await?;
    let first = t.elapsed().as_secs_f64() * 1000.0;
    let mut ms = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        answer = f().await?;
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok((answer, timing(ms), first))
}

/// Funnel and retention in-process; also the timelines' build.
async fn in_process(
    data: &Path,
    span: (i64, i64),
    runs: usize,
) -> anyhow::Result<(Vec<Row>, String)> {
    let engine = quiver_engine::Engine::open(quiver_engine::EngineConfig {
        data_dir: data.to_path_buf(),
        ..Default::default()
    })
    .await?;
    let ws = engine.workspace("shop")?;
    let t = Instant::now();
    let stats = ws
        .load_timelines()
        .await?
        .context("no OneID run in the working set")?;
    let build = format!(
        "timelines built in {:.2}s: {} events of {} persons ({} unattributed), {:.0} MiB",
        t.elapsed().as_secs_f64(),
        stats.events,
        stats.persons,
        stats.unattributed,
        stats.bytes as f64 / (1u64 << 20) as f64
    );
    let req = funnel_request();
    let (answer, t, _) = timed(runs, || async {
        let f = ws.funnel(&req).await?;
        Ok(Answer::Funnel(f.steps.iter().map(|s| s.persons).collect()))
    })
    .await?;
    let mut rows = vec![Row {
        system: "Quiver in-process".into(),
        question: "funnel",
        timing: t,
        answer: Some(answer),
        note: "Workspace::funnel on loaded timelines (also per-step medians)".into(),
    }];
    let req = RetentionRequest {
        period: Period::Week,
        periods: PERIODS,
        from: span.0,
        to: span.1,
        ..Default::default()
    };
    let (answer, t, _) = timed(runs, || async {
        let r = ws.retention(&req).await?;
        Ok(Answer::retention(
            r.cohorts
                .iter()
                .map(|c| (c.start, c.persons, c.retained.as_slice())),
        ))
    })
    .await?;
    rows.push(Row {
        system: "Quiver in-process".into(),
        question: "retention",
        timing: t,
        answer: Some(answer),
        note: "Workspace::retention on loaded timelines".into(),
    });
    Ok((rows, build))
}

/// Funnel and retention over gRPC; the first call builds the server's
/// timelines and is reported apart.
async fn over_grpc(url: &str, span: (i64, i64), runs: usize) -> anyhow::Result<Vec<Row>> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())?
        .tcp_nodelay(true)
        .connect()
        .await?;
    let client = AnalyticsServiceClient::new(channel);
    let server_ms = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = |meta: Option<pb::AnalyticsMeta>| {
        if let (Some(m), Ok(mut v)) = (meta, server_ms.lock()) {
            v.push(m.micros as f64 / 1000.0);
        }
    };
    let (answer, t, first) = timed(runs, || {
        let mut c = client.clone();
        async move {
            let r = c
                .funnel(pb::FunnelRequest {
                    workspace: "shop".into(),
                    steps: STEPS.iter().map(|s| s.to_string()).collect(),
                    window_seconds: WINDOW_US / 1_000_000,
                    ..Default::default()
                })
                .await?
                .into_inner();
            record(r.meta);
            Ok(Answer::Funnel(r.steps.iter().map(|s| s.persons).collect()))
        }
    })
    .await?;
    let server = |v: &std::sync::Mutex<Vec<f64>>| {
        let mut v = v
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default();
        if !v.is_empty() {
            v.remove(0); // the warm-up
        }
        timing(v).p50
    };
    let mut rows = vec![Row {
        system: "Quiver gRPC".into(),
        question: "funnel",
        timing: t,
        answer: Some(answer),
        note: format!(
            "AnalyticsService.Funnel; server-side p50 {:.1} ms; first call {:.0} ms (builds the timelines)",
            server(&server_ms),
            first
        ),
    }];
    let (answer, t, _) = timed(runs, || {
        let mut c = client.clone();
        async move {
            let r = c
                .retention(pb::RetentionRequest {
                    workspace: "shop".into(),
                    period: pb::RetentionPeriod::Week as i32,
                    periods: PERIODS,
                    from_unix_ms: span.0 / 1000,
                    to_unix_ms: span.1 / 1000,
                    ..Default::default()
                })
                .await?
                .into_inner();
            record(r.meta);
            Ok(Answer::retention(r.cohorts.iter().map(|c| {
                (c.start_unix_ms * 1000, c.persons, c.retained.as_slice())
            })))
        }
    })
    .await?;
    rows.push(Row {
        system: "Quiver gRPC".into(),
        question: "retention",
        timing: t,
        answer: Some(answer),
        note: format!(
            "AnalyticsService.Retention; server-side p50 {:.1} ms",
            server(&server_ms)
        ),
    });
    Ok(rows)
}

/// One Flight SQL statement streamed to the end: rows, wire bytes, seconds.
async fn flight_select(
    channel: tonic::transport::Channel,
    query: &str,
) -> anyhow::Result<(u64, u64, f64)> {
    let t = Instant::now();
    let mut sql = FlightSqlServiceClient::new(channel.clone());
    let info = sql.execute(query.to_string(), None).await?;
    let bytes = Arc::new(AtomicU64::new(0));
    let mut rows = 0u64;
    for endpoint in info.endpoint {
        let ticket = endpoint.ticket.context("endpoint without a ticket")?;
        let data = FlightServiceClient::new(channel.clone())
            .max_decoding_message_size(usize::MAX)
            .do_get(ticket)
            .await?
            .into_inner();
        let counter = bytes.clone();
        let data = data
            .inspect_ok(move |d| {
                counter.fetch_add(
                    (d.data_header.len() + d.data_body.len()) as u64,
                    Ordering::Relaxed,
                );
            })
            .map_err(|s| FlightError::Tonic(Box::new(s)));
        let mut batches = FlightRecordBatchStream::new_from_flight_data(data);
        while let Some(b) = batches.next().await {
            rows += b?.num_rows() as u64;
        }
    }
    Ok((
        rows,
        bytes.load(Ordering::Relaxed),
        t.elapsed().as_secs_f64(),
    ))
}

/// Flight SQL `SELECT` over loopback, and the same statement in-process.
async fn flight(url: &str, data: &Path, limit: u64, runs: usize) -> anyhow::Result<Vec<String>> {
    let query = format!("SELECT {FLIGHT_COLUMNS} FROM shop.events LIMIT {limit}");
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())?
        .tcp_nodelay(true)
        .connect()
        .await?;
    let mut lines = Vec::new();
    let mut secs = Vec::new();
    let (mut rows, mut bytes) = (0, 0);
    for i in 0..=runs {
        let (r, b, s) = flight_select(channel.clone(), &query).await?;
        anyhow::ensure!(r == limit, "Flight SQL returned {r} rows, not {limit}");
        if i > 0 {
            secs.push(s);
        }
        (rows, bytes) = (r, b);
    }
    let t = timing(secs.clone());
    let mb = bytes as f64 / 1e6;
    lines.push(format!(
        "| Flight SQL over loopback (Rust arrow-flight client) | {rows} | {mb:.0} | {:.2} | {:.0} | {:.2} M | {} |",
        t.p50,
        mb / t.p50,
        rows as f64 / t.p50 / 1e6,
        t.runs
    ));

    // In-process: the same statement collected from the engine's session.
    let engine = quiver_engine::Engine::open(quiver_engine::EngineConfig {
        data_dir: data.to_path_buf(),
        ..Default::default()
    })
    .await?;
    let ws = engine.workspace("shop")?;
    let local = format!("SELECT {FLIGHT_COLUMNS} FROM events LIMIT {limit}");
    let mut secs = Vec::new();
    let (mut rows, mut bytes) = (0u64, 0u64);
    for i in 0..=runs {
        let t = std::time::Instant::now();
        let mut stream = ws.sql(&local).await?;
        let (mut r, mut b) = (0u64, 0u64);
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            r += batch.num_rows() as u64;
            b += batch.get_array_memory_size() as u64;
        }
        if i > 0 {
            secs.push(t.elapsed().as_secs_f64());
        }
        (rows, bytes) = (r, b);
    }
    let t = timing(secs);
    let mb = bytes as f64 / 1e6;
    lines.push(format!(
        "| the same statement in-process (Workspace::sql, batches collected) | {rows} | {mb:.0} (in memory) | {:.2} | {:.0} | {:.2} M | {} |",
        t.p50,
        mb / t.p50,
        rows as f64 / t.p50 / 1e6,
        t.runs
    ));
    Ok(lines)
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.runs >= 5, "--runs must be at least 5");
    let Prepared {
        generated: util::Generated { bin, base, end, .. },
        data,
        setup_note,
    } = prepare(&args.out, args.persons, args.fresh)?;
    let span = retention_span(end);

    let (mut rows, flight_lines) = {
        let server = Server::start(&bin, &data)?;
        // The store compacts small files in the background after a while; do it
        // now so every run measures the same layout (idempotent when compacted).
        let t = Instant::now();
        server.cli(&bin, &["--workspace", "shop", "workspace", "optimize"])?;
        eprintln!(
            "workspace optimize (compaction of the events table): {:.1}s",
            t.elapsed().as_secs_f64()
        );
        let rows = over_grpc(&server.url, span, args.runs).await?;
        let lines = flight(&server.url, &data, args.flight_rows, args.flight_runs).await?;
        (rows, lines)
    };
    let (local, build) = in_process(&data, span, args.runs).await?;
    rows.extend(local);

    let mut peers = None;
    if !args.no_peers {
        let ws = data.join("workspaces/shop").display().to_string();
        let (r, rss) = util::peer_with_rss(
            "analytics_peers.py",
            &[
                &ws,
                &args.runs.to_string(),
                &args.raw_runs.to_string(),
                &WINDOW_US.to_string(),
                &span.0.to_string(),
                &span.1.to_string(),
                &PERIODS.to_string(),
            ],
        )?;
        for (system, qs) in r["results"].as_object().into_iter().flatten() {
            for question in ["funnel", "retention"] {
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
                    note: if system == "duckdb-raw" {
                        "attribution in the query (Parquet events + identifiers)".into()
                    } else {
                        "over the in-memory attributed table".into()
                    },
                });
            }
        }
        peers = Some((r, rss));
    }

    let mut failures = Vec::new();
    for q in ["funnel", "retention"] {
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
        "{} timed runs per question after one warm-up (DuckDB with attribution: {}); in-process {build}",
        args.runs, args.raw_runs
    );
    if let Some((r, rss)) = &peers {
        println!(
            "peers: {}; DuckDB attributed table built in {:.1}s ({} events of {} persons); peak RSS {}",
            r["versions"],
            r["attribution_seconds"].as_f64().unwrap_or(f64::NAN),
            r["attributed_events"],
            r["persons"],
            rss.map_or("-".into(), |v| format!("{v:.0} MiB")),
        );
    }
    let duckdb = |q: &str| {
        rows.iter()
            .find(|r| r.question == q && r.system == "duckdb-attributed")
            .map(|r| r.timing.p50)
    };
    println!(
        "\n| question | system | p50 ms | p99 ms | runs | answer | DuckDB (attributed) ÷ this | notes |"
    );
    println!("|---|---|---:|---:|---:|---|---:|---|");
    let mut csv = format!(
        "# {machine}\n# {setup_note}\n# {build}\nquestion,system,p50_ms,p99_ms,runs,answer,duckdb_over_this,note\n"
    );
    for q in ["funnel", "retention"] {
        for r in rows.iter().filter(|r| r.question == q) {
            let ratio = duckdb(q).map_or("-".into(), |d| ratio(d / r.timing.p50));
            let answer = r.answer.as_ref().map_or("-".into(), Answer::short);
            println!(
                "| {q} | {} | {:.1} | {:.1} | {} | {answer} | {ratio} | {} |",
                r.system, r.timing.p50, r.timing.p99, r.timing.runs, r.note
            );
            csv.push_str(&format!(
                "{q},{},{:.3},{:.3},{},{},{ratio},{}\n",
                r.system,
                r.timing.p50,
                r.timing.p99,
                r.timing.runs,
                answer.replace(',', ";"),
                r.note.replace(',', ";")
            ));
        }
    }
    println!("\n| path | rows | MB | p50 s | MB/s | rows/s | runs |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for l in &flight_lines {
        println!("{l}");
        csv.push_str(&format!("# flight {l}\n"));
    }
    let csv_path = base.join(format!(
        "analytics-{}.csv",
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

/// A ratio with enough decimals to tell 0.02 from 0.
fn ratio(x: f64) -> String {
    if x >= 1.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.3}")
    }
}
