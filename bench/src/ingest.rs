//! Ingest benchmark: durable events/s (fsync before every ack) through the
//! gRPC stream and through Flight `DoPut`, client and server on this machine,
//! next to DuckDB and chDB loading the same events from the same files.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;

use crate::util::{self, Server};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Persons to generate (≈ 12 events each).
    #[arg(long, default_value_t = 1_000_000)]
    persons: u64,
    /// Where data and results go.
    #[arg(long, default_value = "bench/out")]
    out: PathBuf,
    /// Skip the peers (no Python needed).
    #[arg(long)]
    no_peers: bool,
}

struct Row {
    system: String,
    path: String,
    events: u64,
    seconds: f64,
    /// Quiver only: committing the memtable's tail to Delta after the load.
    flush_seconds: Option<f64>,
}

impl Row {
    /// Events per second until every event is in Delta (Quiver) or in the table (peers).
    fn committed_rate(&self) -> f64 {
        self.events as f64 / (self.seconds + self.flush_seconds.unwrap_or(0.0))
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let bin = util::quiver_bin()?;
    let base = util::root()
        .join(&args.out)
        .join(format!("ingest-{}", args.persons));
    let gen_pq = base.join("gen-parquet");
    let gen_nd = base.join("gen-ndjson");
    for (dir, fmt) in [(&gen_pq, "parquet"), (&gen_nd, "ndjson")] {
        if !dir.join("manifest.json").exists() {
            let t = Instant::now();
            let st = std::process::Command::new(&bin)
                .args([
                    "gen",
                    "--persons",
                    &args.persons.to_string(),
                    "--seed",
                    "42",
                    "--format",
                    fmt,
                    "--out",
                ])
                .arg(dir)
                .status()?;
            anyhow::ensure!(st.success(), "quiver gen failed");
            println!("generated {fmt} in {:.1}s", t.elapsed().as_secs_f64());
        }
    }
    let mut rows = Vec::new();
    let data = base.join("quiver-data");
    for (ws, transport, dir) in [("grpc", "grpc", &gen_pq), ("flight", "flight", &gen_pq)] {
        // A fresh server and data directory per transport: the second load
        // must not share the machine with the first one's flushes.
        let _ = std::fs::remove_dir_all(&data);
        let server = Server::start(&bin, &data)?;
        server.cli(&bin, &["workspace", "create", ws])?;
        let files: Vec<String> = util::files_in(dir, "events", ".parquet")?
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        let mut a = vec![
            "--workspace",
            ws,
            "--json",
            "ingest",
            "--quiet",
            "--transport",
            transport,
        ];
        a.extend(files.iter().map(String::as_str));
        let out = server.cli(&bin, &a)?;
        let s: serde_json::Value = serde_json::from_str(out.trim()).context("ingest summary")?;
        let events = s["sent"].as_u64().unwrap_or(0);
        let secs = s["seconds"].as_f64().unwrap_or(f64::NAN);
        println!(
            "quiver {transport}: {events} events in {secs:.2}s ({:.0}/s), accepted {}",
            events as f64 / secs,
            s["accepted"]
        );
        let t = Instant::now();
        server.cli(&bin, &["--workspace", ws, "workspace", "flush"])?;
        let flush = t.elapsed().as_secs_f64();
        println!("  flush of the tail to Delta: {flush:.2}s");
        rows.push(Row {
            system: "Quiver".into(),
            path: format!("{transport} (Parquet file → server, fsync per ack)"),
            events,
            seconds: secs,
            flush_seconds: Some(flush),
        });
        drop(server);
    }
    if !args.no_peers {
        let pq = format!("{}/events-*.parquet", gen_pq.display());
        let nd = format!("{}/events-*.ndjson", gen_nd.display());
        let db = base.join("peer-db");
        let _ = std::fs::remove_dir_all(&db);
        std::fs::create_dir_all(&db)?;
        for (script, label, input, fmt) in [
            ("duckdb_ingest.py", "DuckDB", &pq, "parquet"),
            ("duckdb_ingest.py", "DuckDB", &nd, "ndjson"),
            ("chdb_ingest.py", "chDB", &pq, "parquet"),
            ("chdb_ingest.py", "chDB", &nd, "ndjson"),
        ] {
            let r = util::peer(script, &[input.as_str(), fmt, db.to_str().unwrap_or(".")])?;
            let events = r["rows"].as_u64().unwrap_or(0);
            let secs = r["seconds"].as_f64().unwrap_or(f64::NAN);
            println!(
                "{label} {fmt}: {events} rows in {secs:.2}s ({:.0}/s)",
                events as f64 / secs
            );
            rows.push(Row {
                system: format!("{label} {}", r["version"].as_str().unwrap_or("")),
                path: format!("{fmt} file → table ({})", r["mode"].as_str().unwrap_or("")),
                events,
                seconds: secs,
                flush_seconds: None,
            });
        }
    }
    let machine = util::machine();
    let csv_path = base.join(format!(
        "ingest-{}.csv",
        chrono::Utc::now().format("%Y%m%dT%H%M%S")
    ));
    let mut csv = format!(
        "# {machine}\nsystem,path,events,seconds,events_per_second,flush_seconds,committed_events_per_second\n"
    );
    for r in &rows {
        csv.push_str(&format!(
            "{},{},{},{:.3},{:.0},{:.3},{:.0}\n",
            r.system,
            r.path.replace(',', ";"),
            r.events,
            r.seconds,
            r.events as f64 / r.seconds,
            r.flush_seconds.unwrap_or(0.0),
            r.committed_rate()
        ));
    }
    std::fs::write(&csv_path, csv)?;
    let grpc = rows
        .first()
        .map(|r| r.events as f64 / r.seconds)
        .unwrap_or(f64::NAN);
    let grpc_committed = rows.first().map(Row::committed_rate).unwrap_or(f64::NAN);
    println!("\nmachine: {machine}\nresults: {}\n", csv_path.display());
    println!(
        "| system | path | events | seconds (acked) | events/s acked | + tail flush s | events/s into Delta | vs Quiver gRPC (acked / into Delta) |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        let rate = r.events as f64 / r.seconds;
        println!(
            "| {} | {} | {} | {:.2} | {:.0} | {} | {:.0} | {:.2}× / {:.2}× |",
            r.system,
            r.path,
            r.events,
            r.seconds,
            rate,
            r.flush_seconds.map_or("—".into(), |f| format!("{f:.2}")),
            r.committed_rate(),
            rate / grpc,
            r.committed_rate() / grpc_committed
        );
    }
    Ok(())
}
