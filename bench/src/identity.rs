//! Identity benchmark: OneID accuracy against the generator's truth and the
//! job's time, next to naive connected components (no rules) on the same
//! links, DuckDB running warehouse-style label propagation in SQL, and
//! `scipy.sparse.csgraph.connected_components`, all on the same edge list in
//! the same run.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use arrow::array::{AsArray, RecordBatch, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema, UInt32Type};
use arrow::ipc::reader::FileReader;
use parquet::arrow::ArrowWriter;

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
    what: String,
    seconds: f64,
    note: String,
}

fn resolve(
    server: &Server,
    bin: &Path,
    extra: &[&str],
) -> anyhow::Result<(serde_json::Value, f64)> {
    let mut a = vec!["--workspace", "shop", "--json", "resolve"];
    a.extend_from_slice(extra);
    let t = Instant::now();
    let out = server.cli(bin, &a)?;
    let wall = t.elapsed().as_secs_f64();
    Ok((
        serde_json::from_str(out.trim()).context("resolve report")?,
        wall,
    ))
}

fn accuracy(
    server: &Server,
    bin: &Path,
    truth: &[quiver_data::TruthRow],
) -> anyhow::Result<quiver_data::Accuracy> {
    let out = server.cli(
        bin,
        &[
            "--workspace",
            "shop",
            "--json",
            "sql",
            "SELECT kind, value, person_id FROM identifiers",
        ],
    )?;
    let rows: Vec<serde_json::Value> = serde_json::from_str(out.trim())?;
    let predicted = rows.into_iter().map(|r| {
        let s = |k: &str| r[k].as_str().unwrap_or("").to_string();
        (s("kind"), s("value"), s("person_id"))
    });
    Ok(quiver_data::pairwise(truth, predicted))
}

/// The latest identity snapshot's links as Parquet `src, dst` (uint32); returns (path, nodes).
fn export_links(ws_dir: &Path, out: &Path) -> anyhow::Result<(PathBuf, u64)> {
    let snap = std::fs::read_dir(ws_dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("identity_graph-"))
        })
        .max()
        .context("no identity snapshot")?;
    let mut nodes = 0u64;
    for b in FileReader::try_new(std::fs::File::open(snap.join("seen.arrow"))?, None)? {
        nodes += b?.num_rows() as u64;
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("src", DataType::UInt32, false),
        Field::new("dst", DataType::UInt32, false),
    ]));
    let path = out.join("links.parquet");
    let mut w = ArrowWriter::try_new(std::fs::File::create(&path)?, schema.clone(), None)?;
    for b in FileReader::try_new(std::fs::File::open(snap.join("links.arrow"))?, None)? {
        let b = b?;
        let a: &UInt32Array = b.column(0).as_primitive::<UInt32Type>();
        let c: &UInt32Array = b.column(1).as_primitive::<UInt32Type>();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(a.clone()), Arc::new(c.clone())],
        )?;
        w.write(&batch)?;
    }
    w.close()?;
    Ok((path, nodes))
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let bin = util::quiver_bin()?;
    let base = util::root()
        .join(&args.out)
        .join(format!("identity-{}", args.persons));
    let gen_dir = base.join("gen-parquet");
    util::generate_parquet(&bin, &gen_dir, args.persons)?;
    let truth = quiver_data::read_truth(&gen_dir.join("truth.parquet"))?;
    let data = base.join("quiver-data");
    let _ = std::fs::remove_dir_all(&data);

    // Load: hold back the last event file for the incremental run.
    let files = util::files_in(&gen_dir, "events", ".parquet")?;
    let (first, held) = files.split_at(files.len().saturating_sub(1).max(1).min(files.len()));
    {
        let server = Server::start(&bin, &data)?;
        server.cli(&bin, &["workspace", "create", "shop"])?;
        let t = Instant::now();
        util::ingest_flight(&server, &bin, first)?;
        server.cli(&bin, &["--workspace", "shop", "workspace", "flush"])?;
        println!(
            "loaded {} files in {:.1}s",
            first.len(),
            t.elapsed().as_secs_f64()
        );
    }

    // A fresh server, so its peak memory is the job's.
    let server = Server::start(&bin, &data)?;
    let mut rows = Vec::new();
    let (r, wall) = resolve(&server, &bin, &[])?;
    let rss = server.pid().and_then(|p| util::proc_mib(p, "VmHWM:"));
    println!("resolve (full, first run): {r}");
    let acc = accuracy(&server, &bin, &truth)?;
    println!("accuracy with rules: {acc:?}");
    rows.push(Row {
        system: "Quiver".into(),
        what: "OneID job, rules on (read events + union-find + ids + write Delta)".into(),
        seconds: wall,
        note: format!(
            "{} events, {} values, {} links → {} persons; phases {}; server peak RSS {:.0} MiB",
            r["events"],
            r["identifiers"],
            r["edges"],
            r["persons"],
            r["phases"]
                .as_array()
                .map(|p| p
                    .iter()
                    .map(|x| format!(
                        "{} {:.2}s",
                        x["phase"].as_str().unwrap_or(""),
                        x["seconds"].as_f64().unwrap_or(0.0)
                    ))
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default(),
            rss.unwrap_or(f64::NAN)
        ),
    });
    let components_secs = r["phases"]
        .as_array()
        .and_then(|p| p.iter().find(|x| x["phase"] == "components"))
        .and_then(|x| x["seconds"].as_f64())
        .unwrap_or(f64::NAN);
    rows.push(Row {
        system: "Quiver".into(),
        what: "union-find with rules (components phase)".into(),
        seconds: components_secs,
        note: format!(
            "quarantined {}, refused unions {}",
            r["quarantined_count"], r["refused_count"]
        ),
    });

    // Links for the peers, from the run's snapshot.
    let (links, nodes) = export_links(&data.join("workspaces/shop"), &base)?;

    // Incremental: the held-back file, then a full run that must agree.
    // Flushed first, as the load before the first run was: the run then
    // times OneID, not the memtable's commit to Delta.
    util::ingest_flight(&server, &bin, held)?;
    server.cli(&bin, &["--workspace", "shop", "workspace", "flush"])?;
    let (inc, inc_wall) = resolve(&server, &bin, &[])?;
    println!("resolve (incremental): {inc}");
    rows.push(Row {
        system: "Quiver".into(),
        what: "incremental run after one more event file".into(),
        seconds: inc_wall,
        note: format!(
            "{} new events; {} of {} values recomputed; kept {} of {} persons",
            inc["events"],
            inc["touched_identifiers"],
            inc["identifiers"],
            inc["kept"],
            inc["previous_persons"]
        ),
    });
    let (full, full_wall) = resolve(&server, &bin, &["--full"])?;
    anyhow::ensure!(
        full["merges"] == 0
            && full["splits"] == 0
            && full["new_persons"] == 0
            && full["persons"] == inc["persons"],
        "a full run disagrees with the incremental one: {full}"
    );
    rows.push(Row {
        system: "Quiver".into(),
        what: "full run over the same events (agrees with the incremental)".into(),
        seconds: full_wall,
        note: format!("{} events", full["events"]),
    });
    let acc_all = accuracy(&server, &bin, &truth)?;

    // Naive connected components: every kind merges, no caps, no guard.
    let naive_rules = base.join("naive.toml");
    let mut toml = String::from("max_persons_per_value = 4000000000\n");
    for k in ["member", "unionid", "phone", "openid", "email", "device"] {
        toml.push_str(&format!("[kinds.{k}]\npriority = 50\n"));
    }
    std::fs::write(&naive_rules, toml)?;
    let (naive, naive_wall) = resolve(
        &server,
        &bin,
        &["--rules", naive_rules.to_str().unwrap_or("")],
    )?;
    let acc_naive = accuracy(&server, &bin, &truth)?;
    rows.push(Row {
        system: "Quiver".into(),
        what: "naive connected components (no rules), full run".into(),
        seconds: naive_wall,
        note: format!("{} persons", naive["persons"]),
    });
    drop(server);

    if !args.no_peers {
        let n = nodes.to_string();
        let work = base.join("peer-db");
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work)?;
        let links = links.display().to_string();
        for (script, label, extra) in [
            ("scipy_identity.py", "scipy", None),
            (
                "duckdb_identity.py",
                "DuckDB",
                Some(work.display().to_string()),
            ),
        ] {
            let mut a = vec![links.as_str(), n.as_str()];
            if let Some(w) = &extra {
                a.push(w);
            }
            let r = util::peer(script, &a)?;
            println!("{label}: {r}");
            rows.push(Row {
                system: format!("{label} {}", r["version"].as_str().unwrap_or("")),
                what: format!(
                    "connected components of the same links ({})",
                    r["mode"].as_str().unwrap_or("")
                ),
                seconds: r["seconds"].as_f64().unwrap_or(f64::NAN),
                note: format!(
                    "load {:.2}s; {} components, largest {}{}",
                    r["load_seconds"].as_f64().unwrap_or(f64::NAN),
                    r["components"],
                    r["largest"],
                    r.get("iterations")
                        .map(|i| format!(", {i} iterations"))
                        .unwrap_or_default()
                ),
            });
        }
    }

    let machine = util::machine();
    println!("\nmachine: {machine}");
    println!(
        "\naccuracy (pairwise over identifier values; linked = pairs the person's own events link):"
    );
    println!("| resolution | precision | recall | linked recall | persons |");
    println!("|---|---:|---:|---:|---:|");
    for (name, a, persons) in [
        ("Quiver, default rules (first run)", &acc, &r["persons"]),
        (
            "Quiver, default rules (after incremental + full)",
            &acc_all,
            &full["persons"],
        ),
        ("naive connected components", &acc_naive, &naive["persons"]),
    ] {
        println!(
            "| {name} | {:.4} | {:.4} | {:.4} | {persons} |",
            a.precision, a.recall, a.linked_recall
        );
    }
    println!(
        "true persons: {}, values evaluated {}, shared values left out {}",
        args.persons, acc_all.values, acc_all.shared
    );
    let job = rows.first().map(|r| r.seconds).unwrap_or(f64::NAN);
    println!("\n| system | what | seconds | vs Quiver job | notes |");
    println!("|---|---|---:|---:|---|");
    let mut csv = format!("# {machine}\nsystem,what,seconds,note\n");
    for r in &rows {
        println!(
            "| {} | {} | {:.2} | {:.2}× | {} |",
            r.system,
            r.what,
            r.seconds,
            r.seconds / job,
            r.note
        );
        csv.push_str(&format!(
            "{},{},{:.3},{}\n",
            r.system,
            r.what.replace(',', ";"),
            r.seconds,
            r.note.replace(',', ";")
        ));
    }
    let csv_path = base.join(format!(
        "identity-{}.csv",
        chrono::Utc::now().format("%Y%m%dT%H%M%S")
    ));
    std::fs::write(&csv_path, csv)?;
    println!("\nresults: {}", csv_path.display());
    Ok(())
}
