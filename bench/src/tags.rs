//! Tags benchmark: the generator's seed tags refreshed by Quiver (`quiver tags
//! refresh`, the full refresh) next to DuckDB computing the same four tag sets
//! with GROUP BYs over the same Delta tables, in the same run; the sets must
//! be equal, bit for bit. The events table is compacted after the load
//! (`workspace optimize`, as the server's background compaction would), so
//! both read one file per day rather than one per flush and day.
//!
//! The two sides do not do the same amount of work, and the output says so:
//! Quiver's refresh reads every event once and builds every profile, trait
//! (RFM and the rest), per-day behaviour counts for every event type and
//! dimension value, the `profiles` and `attribute_history` Delta tables and
//! every index file; DuckDB reads only the events the four tags need and
//! writes nothing.
//!
//! Then the wide run (`--tags 100`): the seed tags plus generated enum,
//! numeric and behaviour rule tags refreshed once on a fresh server, for its
//! time, peak RSS and index size (the memory target), and the time
//! a fresh server takes to load that version.
//!
//! Last, the incremental step: the events of the data's last days (≈ 1%),
//! held back so far, are ingested and resolved (an incremental OneID run),
//! then one refresh (incremental unless OneID split persons or changed its
//! quarantined values; the report says which) and one `--full` refresh, whose
//! coverage must be the same.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, UInt32Type};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use roaring::RoaringBitmap;

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
    /// Refresh runs (and DuckDB runs); the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Tags in the wide run (the seed four plus generated rule, enum and
    /// numeric tags): its refresh time, peak RSS and index size; 4 or fewer
    /// skips it.
    #[arg(long, default_value_t = 100)]
    tags: usize,
    /// The data's last days, held back for the incremental step (0: none).
    #[arg(long, default_value_t = 3)]
    held_days: u32,
}

/// Splits every events file of `files` at `cutoff` (µs): earlier events go to
/// `dir/early-*.parquet`, the rest to `dir/late-*.parquet`.
fn split_at(
    files: &[PathBuf],
    dir: &Path,
    cutoff: i64,
) -> anyhow::Result<(Vec<PathBuf>, Vec<PathBuf>, u64)> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let (mut early, mut late, mut held) = (Vec::new(), Vec::new(), 0u64);
    for (i, f) in files.iter().enumerate() {
        let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(f)?)?.build()?;
        let schema = arrow::array::RecordBatchReader::schema(&reader);
        let paths = [
            dir.join(format!("early-{i:05}.parquet")),
            dir.join(format!("late-{i:05}.parquet")),
        ];
        let mut writers = paths
            .iter()
            .map(|p| {
                Ok(parquet::arrow::ArrowWriter::try_new(
                    std::fs::File::create(p)?,
                    schema.clone(),
                    None,
                )?)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        for batch in reader {
            let batch = batch?;
            let time = batch
                .column_by_name("event_time")
                .context("events file without event_time")?;
            let micros = arrow::compute::cast(
                time,
                &DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, None),
            )?;
            let micros = arrow::compute::cast(&micros, &DataType::Int64)?;
            let micros = micros.as_primitive::<arrow::datatypes::Int64Type>();
            let is_late: arrow::array::BooleanArray = micros
                .iter()
                .map(|t| Some(t.is_some_and(|t| t >= cutoff)))
                .collect();
            let is_early = arrow::compute::not(&is_late)?;
            held += is_late.true_count() as u64;
            writers[0].write(&arrow::compute::filter_record_batch(&batch, &is_early)?)?;
            writers[1].write(&arrow::compute::filter_record_batch(&batch, &is_late)?)?;
        }
        for w in writers {
            w.close()?;
        }
        early.push(paths[0].clone());
        late.push(paths[1].clone());
    }
    Ok((early, late, held))
}

/// What the incremental step measured.
struct Step {
    held_events: u64,
    resolve_secs: f64,
    resolved: serde_json::Value,
    incremental_secs: f64,
    incremental: serde_json::Value,
    full_secs: f64,
    full: serde_json::Value,
}

/// The generator's categories (`quiver-data`'s catalog).
const CATEGORIES: [&str; 8] = [
    "skincare",
    "makeup",
    "fragrance",
    "apparel",
    "shoes",
    "snacks",
    "home",
    "electronics",
];

/// `n` tag definitions beyond the seed four, as a campaign team would write
/// them over the generator's vocabulary: enumerated tags over traits and the
/// `city` attribute, numeric tags, behaviour rules per (event type,
/// category, window) and combinations of those with tags and traits.
fn extra_tags_toml(n: usize) -> anyhow::Result<String> {
    let mut tags: Vec<String> = Vec::new();
    for (name, source) in [
        ("home_city", "city"),
        ("rfm_code", "rfm"),
        ("top_channel", "preferred_channel"),
        ("top_category", "preferred_category"),
        ("signup_channel", "registered_channel"),
    ] {
        tags.push(format!(
            "[[tag]]\nname = \"{name}\"\nkind = \"enum\"\nsource = \"{source}\"\n"
        ));
    }
    for source in [
        "total_spend",
        "order_count",
        "avg_order_value",
        "recency_days",
    ] {
        tags.push(format!(
            "[[tag]]\nname = \"n_{source}\"\nkind = \"numeric\"\nsource = \"{source}\"\n"
        ));
    }
    let windows = [
        ("", ""),
        ("_30d", " IN LAST 30 DAYS"),
        ("_90d", " IN LAST 90 DAYS"),
        ("_365d", " IN LAST 365 DAYS"),
    ];
    let behaviour = |tags: &mut Vec<String>, event: &str, short: &str, threshold: u32| {
        for cat in CATEGORIES {
            for (suffix, window) in windows {
                tags.push(format!(
                    "[[tag]]\nname = \"{cat}_{short}{suffix}\"\nkind = \"boolean\"\n\
                     rule = \"did({event} WHERE category = '{cat}') >= {threshold}{window}\"\n"
                ));
            }
        }
    };
    behaviour(&mut tags, "purchase", "buyer", 1);
    // Before the rest, so that a truncated list keeps them.
    for cat in CATEGORIES {
        tags.push(format!(
            "[[tag]]\nname = \"{cat}_lapsed_vip\"\nkind = \"boolean\"\n\
             rule = \"member_level IN ('gold', 'vip') AND {cat}_buyer AND NOT {cat}_buyer_90d AND total_spend >= 500\"\n"
        ));
    }
    behaviour(&mut tags, "page_view", "viewer", 3);
    behaviour(&mut tags, "add_to_cart", "carter", 1);
    anyhow::ensure!(
        n <= tags.len(),
        "--tags: at most {} (the 4 seed tags + {} generated)",
        tags.len() + 4,
        tags.len()
    );
    tags.truncate(n);
    Ok(tags.join("\n"))
}

/// The wide run's figures.
struct Wide {
    tags: usize,
    seconds: f64,
    peak_mib: Option<f64>,
    report: serde_json::Value,
    load_secs: f64,
    warm_secs: f64,
    rss_idle: Option<f64>,
    rss_loaded: Option<f64>,
}

struct Row {
    system: String,
    what: String,
    seconds: f64,
    rss_mib: Option<f64>,
    note: String,
}

fn mib(v: Option<f64>) -> String {
    v.map_or("?".into(), |v| format!("{v:.0}"))
}

/// The index of the median of `v` (the middle one when sorted).
fn median_index(v: &[f64]) -> usize {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    idx[idx.len() / 2]
}

fn cli_json(server: &Server, bin: &Path, args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let out = server.cli(bin, args)?;
    serde_json::from_str(out.trim()).with_context(|| format!("quiver {args:?}: JSON output"))
}

/// `quiver tags refresh --now NOW [--full]`: the refresh report.
fn refresh(
    server: &Server,
    bin: &Path,
    now: &str,
    full: bool,
) -> anyhow::Result<serde_json::Value> {
    let mut args = vec![
        "--workspace",
        "shop",
        "--json",
        "tags",
        "refresh",
        "--now",
        now,
    ];
    if full {
        args.push("--full");
    }
    cli_json(server, bin, &args)
}

/// The sets a refresh report names: `tag` for boolean tags, `tag=value` per
/// value of an enum tag; each with its (tag, value) for `tags export`.
fn report_sets(report: &serde_json::Value) -> Vec<(String, String, Option<String>)> {
    let mut sets = Vec::new();
    for t in report["tags"].as_array().into_iter().flatten() {
        let name = t["name"].as_str().unwrap_or_default().to_string();
        match t["kind"].as_str() {
            Some("enum") => {
                for v in t["values"].as_array().into_iter().flatten() {
                    let value = v["value"].as_str().unwrap_or_default().to_string();
                    sets.push((format!("{name}={value}"), name.clone(), Some(value)));
                }
            }
            _ => sets.push((name.clone(), name, None)),
        }
    }
    sets
}

/// Exports every set of the latest version and reads it back.
fn export_sets(
    server: &Server,
    bin: &Path,
    report: &serde_json::Value,
    dir: &Path,
) -> anyhow::Result<Vec<(String, RoaringBitmap)>> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let mut out = Vec::new();
    for (label, name, value) in report_sets(report) {
        let file = dir.join(format!("{label}.roaring"));
        let path = file.display().to_string();
        let mut a = vec!["--workspace", "shop", "tags", "export", name.as_str()];
        if let Some(v) = &value {
            a.extend(["--value", v.as_str()]);
        }
        a.extend(["-o", path.as_str()]);
        server.cli(bin, &a)?;
        let reader = std::io::BufReader::new(
            std::fs::File::open(&file).with_context(|| format!("cannot open {path}"))?,
        );
        let bitmap = RoaringBitmap::deserialize_from(reader)
            .with_context(|| format!("{path}: not a portable roaring bitmap"))?;
        out.push((label, bitmap));
    }
    Ok(out)
}

/// The `ordinal` column (first column) of a parquet file as a bitmap.
fn read_ordinals(path: &Path) -> anyhow::Result<RoaringBitmap> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut bitmap = RoaringBitmap::new();
    for batch in ParquetRecordBatchReaderBuilder::try_new(file)?.build()? {
        let batch = batch?;
        let col = arrow::compute::cast(batch.column(0), &DataType::UInt32)
            .with_context(|| format!("{}: ordinals as uint32", path.display()))?;
        let col = col.as_primitive::<UInt32Type>();
        anyhow::ensure!(col.null_count() == 0, "{}: null ordinals", path.display());
        bitmap.extend(col.values().iter().copied());
    }
    Ok(bitmap)
}

fn phases(r: &serde_json::Value) -> String {
    r["phases"]
        .as_array()
        .map(|p| {
            p.iter()
                .map(|x| {
                    format!(
                        "{} {:.2}s",
                        x["phase"].as_str().unwrap_or(""),
                        x["seconds"].as_f64().unwrap_or(0.0)
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

fn list(v: &[f64]) -> String {
    v.iter()
        .map(|s| format!("{s:.2}"))
        .collect::<Vec<_>>()
        .join(" / ")
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.runs >= 1, "--runs must be at least 1");
    let util::Generated {
        bin,
        base,
        gen_dir,
        end,
    } = util::generated(&args.out, "tags", args.persons)?;
    let now = end.format("%Y-%m-%d").to_string();
    let tags_toml = gen_dir.join("tags.toml").display().to_string();
    let data = base.join("quiver-data");
    let _ = std::fs::remove_dir_all(&data);

    // Load (all but the last days' events), resolve and define the seed tags.
    let all_files = util::files_in(&gen_dir, "events", ".parquet")?;
    let (files, late_files, held_events) = if args.held_days > 0 {
        let cutoff = (end - chrono::Days::new(u64::from(args.held_days) - 1))
            .and_hms_opt(0, 0, 0)
            .context("cutoff")?
            .and_utc()
            .timestamp_micros();
        split_at(&all_files, &base.join("split"), cutoff)?
    } else {
        (all_files, Vec::new(), 0)
    };
    let (ingest_secs, resolve_secs, resolved) = {
        let server = Server::start(&bin, &data)?;
        server.cli(&bin, &["workspace", "create", "shop"])?;
        let t = Instant::now();
        util::ingest_flight(&server, &bin, &files)?;
        server.cli(&bin, &["--workspace", "shop", "workspace", "flush"])?;
        let ingest_secs = t.elapsed().as_secs_f64();
        // The store compacts small files in the background after a while
        // (`store.optimize_interval_secs`); do it now, so the refreshes and
        // DuckDB read the layout a running server settles into, not one
        // file per flush and day.
        let t = Instant::now();
        server.cli(&bin, &["--workspace", "shop", "workspace", "optimize"])?;
        println!(
            "workspace optimize (compaction of the events table): {:.1}s",
            t.elapsed().as_secs_f64()
        );
        let t = Instant::now();
        let resolved = cli_json(&server, &bin, &["--workspace", "shop", "--json", "resolve"])?;
        let resolve_secs = t.elapsed().as_secs_f64();
        cli_json(
            &server,
            &bin,
            &[
                "--workspace",
                "shop",
                "--json",
                "tags",
                "define",
                &tags_toml,
            ],
        )?;
        (ingest_secs, resolve_secs, resolved)
    };
    println!(
        "loaded {} files in {ingest_secs:.1}s; resolve {resolve_secs:.1}s: {} events → {} persons",
        files.len(),
        resolved["events"],
        resolved["persons"]
    );

    // A fresh server, so its peak memory is the refreshes' (plus start-up), not the ingest's.
    let server = Server::start(&bin, &data)?;
    let pid = server.pid().context("server pid")?;
    let rss_start = util::proc_mib(pid, "VmRSS:");
    let mut reports = Vec::new();
    let mut walls = Vec::new();
    let mut hwm = Vec::new();
    let mut rss_before = Vec::new();
    for i in 0..args.runs {
        rss_before.push(util::proc_mib(pid, "VmRSS:"));
        let t = Instant::now();
        let r = refresh(&server, &bin, &now, true)?;
        walls.push(t.elapsed().as_secs_f64());
        hwm.push(util::proc_mib(pid, "VmHWM:"));
        println!(
            "refresh {}: {:.2}s wall ({:.2}s in the server: {}); server VmRSS before {} MiB, VmHWM after {} MiB",
            i + 1,
            walls[i],
            r["seconds"].as_f64().unwrap_or(f64::NAN),
            phases(&r),
            mib(rss_before[i]),
            mib(hwm[i]),
        );
        reports.push(r);
    }
    let rss_end = util::proc_mib(pid, "VmRSS:");
    let mid = median_index(&walls);
    let report = &reports[mid];
    let last = &reports[reports.len() - 1];
    let counts = |r: &serde_json::Value| {
        report_sets(r)
            .into_iter()
            .map(|(label, name, value)| {
                let t = r["tags"]
                    .as_array()
                    .and_then(|ts| ts.iter().find(|t| t["name"] == name.as_str()));
                let n = match (&value, t) {
                    (Some(v), Some(t)) => t["values"]
                        .as_array()
                        .and_then(|vs| vs.iter().find(|x| x["value"] == v.as_str()))
                        .and_then(|x| x["count"].as_u64()),
                    (None, Some(t)) => t["count"].as_u64(),
                    _ => None,
                };
                (label, n)
            })
            .collect::<Vec<_>>()
    };
    let stable = reports.iter().all(|r| counts(r) == counts(last));
    if !stable {
        println!("WARNING: tag counts differ between refresh runs:");
        for (i, r) in reports.iter().enumerate() {
            println!("  run {}: {:?}", i + 1, counts(r));
        }
    }

    // The latest version's sets (the last run's), as the CLI exports them.
    let quiver_sets = export_sets(&server, &bin, last, &base.join("quiver-export"))?;
    let mut failures = Vec::new();
    for ((label, b), (_, n)) in quiver_sets.iter().zip(counts(last)) {
        if n != Some(b.len()) {
            failures.push(format!(
                "{label}: exported bitmap has {} persons, the refresh report says {n:?}",
                b.len()
            ));
        }
    }
    drop(server);

    let persons = report["persons"].as_u64().unwrap_or(0);
    let index_mib = report["index_bytes"].as_f64().unwrap_or(f64::NAN) / (1u64 << 20) as f64;
    let mut rows = vec![Row {
        system: "Quiver".into(),
        what: format!(
            "full tag refresh, median of {} (CLI wall): every profile, trait, behaviour count, the 4 seed tags, profiles + attribute_history Delta, index files",
            args.runs
        ),
        seconds: walls[mid],
        rss_mib: hwm[0],
        note: format!(
            "runs {}s; server-side {:.2}s ({}); {} events ({} unattributed), {} persons, {} behaviour keys, index {index_mib:.1} MiB; \
             peak RSS = server VmHWM after run 1 on a fresh server (start-up + one refresh); VmHWM after all runs {} MiB; \
             VmRSS at start {} MiB, before each run {} MiB, at end {} MiB",
            list(&walls),
            report["seconds"].as_f64().unwrap_or(f64::NAN),
            phases(report),
            report["events"],
            report["unattributed_events"],
            persons,
            report["behaviour_keys"],
            mib(hwm.last().copied().flatten()),
            mib(rss_start),
            rss_before
                .iter()
                .map(|r| mib(*r))
                .collect::<Vec<_>>()
                .join(" / "),
            mib(rss_end),
        ),
    }];
    let scan = report["phases"]
        .as_array()
        .and_then(|p| p.iter().find(|x| x["phase"] == "scan"))
        .and_then(|x| x["seconds"].as_f64())
        .unwrap_or(f64::NAN);
    rows.push(Row {
        system: "Quiver".into(),
        what: "refresh's scan phase only (read every event, attribute it, per-person accumulators)"
            .into(),
        seconds: scan,
        rss_mib: None,
        note: "the median run's".into(),
    });

    // DuckDB on the same Delta tables.
    let mut comparison = Vec::new();
    let mut tie_count = None;
    if !args.no_peers {
        let ws = data.join("workspaces/shop").display().to_string();
        let peer_out = base.join("duckdb-sets");
        let _ = std::fs::remove_dir_all(&peer_out);
        let peer_out_s = peer_out.display().to_string();
        let runs = args.runs.to_string();
        let (r, time_rss) =
            util::peer_with_rss("duckdb_tags.py", &[&ws, &now, &peer_out_s, &runs])?;
        println!("DuckDB: {r}");
        let rss = time_rss.or_else(|| r["max_rss_mib"].as_f64());
        let runs: Vec<f64> = r["runs"]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x.as_f64()).collect())
            .unwrap_or_default();
        let steps = r["steps"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|x| {
                        format!(
                            "{} {:.2}s",
                            x[0].as_str().unwrap_or(""),
                            x[1].as_f64().unwrap_or(f64::NAN)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        rows.push(Row {
            system: format!("DuckDB {}", r["version"].as_str().unwrap_or("")),
            what: format!(
                "the 4 seed tag sets only: GROUP BY over the same Delta tables' parquet, median of {}",
                runs.len()
            ),
            seconds: r["seconds"].as_f64().unwrap_or(f64::NAN),
            rss_mib: rss,
            note: format!(
                "runs {}s ({steps}); threads {}; {} event files, {} events read (filtered scan), {} attributed; \
                 peak RSS = {} of the Python process (all runs)",
                list(&runs),
                r["threads"],
                r["event_files"],
                r["events_read"],
                r["attributed"],
                if time_rss.is_some() {
                    "/usr/bin/time -v max RSS"
                } else {
                    "ru_maxrss"
                },
            ),
        });
        let peer_sets = r["sets"].as_object().cloned().unwrap_or_default();
        // Persons whose latest member_level update has two values at the same time.
        let ties = match r["member_level_ties"]["file"].as_str() {
            Some(f) => read_ordinals(Path::new(f))?,
            None => RoaringBitmap::new(),
        };
        tie_count = Some(ties.len());
        for (label, q) in &quiver_sets {
            let Some(file) = peer_sets.get(label).and_then(|s| s["file"].as_str()) else {
                failures.push(format!("{label}: DuckDB did not compute it"));
                continue;
            };
            let d = read_ordinals(Path::new(file))?;
            let only_q = (q - &d).len();
            let only_d = (&d - q).len();
            if only_q + only_d > 0 {
                let tied = if label.starts_with("member_level=") {
                    format!(
                        " ({} of them with different member_level values at the same latest event_time; \
                         the rule takes the larger value)",
                        ((q ^ &d) & &ties).len()
                    )
                } else {
                    String::new()
                };
                failures.push(format!(
                    "{label}: {only_q} only in Quiver, {only_d} only in DuckDB{tied}"
                ));
            }
            comparison.push((label.clone(), q.len(), d.len(), only_q, only_d));
        }
        for label in peer_sets.keys() {
            if !quiver_sets.iter().any(|(l, _)| l == label) {
                failures.push(format!(
                    "{label}: DuckDB computed it, Quiver has no such set"
                ));
            }
        }
    }

    // The wide run: the seed tags plus generated ones, each refresh on a
    // fresh server so that its peak RSS is start-up plus that refresh.
    let mut wide = None;
    if args.tags > 4 {
        let file = base.join("extra-tags.toml");
        std::fs::write(&file, extra_tags_toml(args.tags - 4)?)?;
        let file = file.display().to_string();
        {
            let server = Server::start(&bin, &data)?;
            cli_json(
                &server,
                &bin,
                &["--workspace", "shop", "--json", "tags", "define", &file],
            )?;
        }
        let server = Server::start(&bin, &data)?;
        let pid = server.pid().context("server pid")?;
        let t = Instant::now();
        let r = refresh(&server, &bin, &now, true)?;
        let secs = t.elapsed().as_secs_f64();
        let peak = util::proc_mib(pid, "VmHWM:");
        let defined = r["tags"].as_array().map_or(0, Vec::len);
        println!(
            "wide refresh: {defined} tags in {secs:.2}s wall ({:.2}s in the server: {}); server VmHWM {} MiB; index {:.1} MiB",
            r["seconds"].as_f64().unwrap_or(f64::NAN),
            phases(&r),
            mib(peak),
            r["index_bytes"].as_f64().unwrap_or(f64::NAN) / (1u64 << 20) as f64,
        );
        drop(server);
        // Loading that version on a fresh server: the first export reads every index file.
        let server = Server::start(&bin, &data)?;
        let pid = server.pid().context("server pid")?;
        let rss_idle = util::proc_mib(pid, "VmRSS:");
        let out = base.join("load-probe.roaring").display().to_string();
        let export = [
            "--workspace",
            "shop",
            "tags",
            "export",
            "skincare_lover",
            "-o",
        ];
        let t = Instant::now();
        server.cli(&bin, &[&export[..], &[out.as_str()]].concat())?;
        let load_secs = t.elapsed().as_secs_f64();
        let loaded = util::proc_mib(pid, "VmRSS:");
        let t = Instant::now();
        server.cli(&bin, &[&export[..], &[out.as_str()]].concat())?;
        let warm_secs = t.elapsed().as_secs_f64();
        println!(
            "loading it on a fresh server: first export {load_secs:.2}s (then {warm_secs:.2}s); VmRSS {} → {} MiB",
            mib(rss_idle),
            mib(loaded)
        );
        wide = Some(Wide {
            tags: defined,
            seconds: secs,
            peak_mib: peak,
            report: r,
            load_secs,
            warm_secs,
            rss_idle,
            rss_loaded: loaded,
        });
    }

    // The incremental step: the held-back days arrive, OneID runs
    // incrementally, then an incremental refresh and a full one must agree.
    let mut step = None;
    if !late_files.is_empty() {
        let server = Server::start_with(
            &bin,
            &data,
            &[("QUIVER_TAGS__REFRESH_AFTER_RESOLVE", "false")],
        )?;
        util::ingest_flight(&server, &bin, &late_files)?;
        server.cli(&bin, &["--workspace", "shop", "workspace", "flush"])?;
        let t = Instant::now();
        let resolved = cli_json(&server, &bin, &["--workspace", "shop", "--json", "resolve"])?;
        let resolve_secs = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let inc = refresh(&server, &bin, &now, false)?;
        let incremental_secs = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let full = refresh(&server, &bin, &now, true)?;
        let full_secs = t.elapsed().as_secs_f64();
        println!(
            "incremental step: {held_events} held-back events; resolve {resolve_secs:.2}s (incremental {}, {} merges, {} splits); \
             refresh {incremental_secs:.2}s (incremental {}, {} events read{}; {}); full refresh {full_secs:.2}s ({})",
            resolved["incremental"],
            resolved["merges"],
            resolved["splits"],
            inc["incremental"],
            inc["events_read"],
            match inc["full_reason"].as_str() {
                Some(r) if !r.is_empty() => format!(", full because {r}"),
                _ => String::new(),
            },
            phases(&inc),
            phases(&full),
        );
        if inc["tags"] != full["tags"]
            || inc["persons"] != full["persons"]
            || inc["events"] != full["events"]
        {
            failures.push(format!(
                "the incremental refresh's coverage differs from the full one's: {} vs {}",
                inc["tags"], full["tags"]
            ));
        }
        step = Some(Step {
            held_events,
            resolve_secs,
            resolved,
            incremental_secs,
            incremental: inc,
            full_secs,
            full,
        });
    }

    let machine = util::machine();
    println!("\nmachine: {machine}");
    println!(
        "setup: {} files ingested over Flight in {ingest_secs:.1}s; resolve {resolve_secs:.1}s ({} persons); now = end of {now} UTC",
        files.len(),
        resolved["persons"]
    );
    let persons = last["persons"].as_u64().unwrap_or(0);
    println!(
        "\ntag coverage (the latest version, refresh run {}, the one exported; {persons} persons):",
        args.runs
    );
    println!("| tag | kind | persons | coverage |");
    println!("|---|---|---:|---:|");
    let pct = |n: u64| {
        if persons == 0 {
            "-".to_string()
        } else {
            format!("{:.2}%", n as f64 * 100.0 / persons as f64)
        }
    };
    for t in last["tags"].as_array().into_iter().flatten() {
        let n = t["count"].as_u64().unwrap_or(0);
        println!(
            "| {} | {} | {n} | {} |",
            t["name"].as_str().unwrap_or(""),
            t["kind"].as_str().unwrap_or(""),
            pct(n)
        );
        for v in t["values"].as_array().into_iter().flatten() {
            let n = v["count"].as_u64().unwrap_or(0);
            println!(
                "| = {} | | {n} | {} |",
                v["value"].as_str().unwrap_or(""),
                pct(n)
            );
        }
    }
    if !comparison.is_empty() {
        println!("\nQuiver (exported bitmaps) vs DuckDB (ordinal sets):");
        println!("| set | Quiver | DuckDB | only in Quiver | only in DuckDB | equal |");
        println!("|---|---:|---:|---:|---:|---|");
        for (label, q, d, oq, od) in &comparison {
            println!(
                "| {label} | {q} | {d} | {oq} | {od} | {} |",
                if oq + od == 0 { "yes" } else { "NO" }
            );
        }
        if let Some(n) = tie_count {
            println!(
                "member_level ties: {n} persons have two or more different values at the event_time of their latest update"
            );
        }
    }

    if let Some(w) = &wide {
        rows.push(Row {
            system: "Quiver".into(),
            what: format!(
                "wide refresh: {} tags (4 seed + generated enum, numeric and behaviour rule tags), one run on a fresh server",
                w.tags
            ),
            seconds: w.seconds,
            rss_mib: w.peak_mib,
            note: format!(
                "server-side {:.2}s ({}); {} behaviour keys; index {:.1} MiB on disk; loading it on a fresh server: \
                 first export {:.2}s (then {:.2}s), VmRSS {} → {} MiB",
                w.report["seconds"].as_f64().unwrap_or(f64::NAN),
                phases(&w.report),
                w.report["behaviour_keys"],
                w.report["index_bytes"].as_f64().unwrap_or(f64::NAN) / (1u64 << 20) as f64,
                w.load_secs,
                w.warm_secs,
                mib(w.rss_idle),
                mib(w.rss_loaded),
            ),
        });
    }
    if let Some(s) = &step {
        rows.push(Row {
            system: "Quiver".into(),
            what: format!(
                "incremental step: the last {} days' events ({}) ingested and resolved, then one refresh",
                args.held_days, s.held_events
            ),
            seconds: s.incremental_secs,
            rss_mib: None,
            note: format!(
                "incremental: {}{}; {} events read; server-side {:.2}s ({}); before it, resolve {:.2}s (incremental {}, {} merges, {} splits, {} quarantined)",
                s.incremental["incremental"],
                match s.incremental["full_reason"].as_str() {
                    Some(r) if !r.is_empty() => format!(" (every event read: {r})"),
                    _ => String::new(),
                },
                s.incremental["events_read"],
                s.incremental["seconds"].as_f64().unwrap_or(f64::NAN),
                phases(&s.incremental),
                s.resolve_secs,
                s.resolved["incremental"],
                s.resolved["merges"],
                s.resolved["splits"],
                s.resolved["quarantined_count"],
            ),
        });
        rows.push(Row {
            system: "Quiver".into(),
            what: "incremental step: the same refresh with --full (must agree)".into(),
            seconds: s.full_secs,
            rss_mib: None,
            note: format!(
                "server-side {:.2}s ({}); {} events, coverage {}",
                s.full["seconds"].as_f64().unwrap_or(f64::NAN),
                phases(&s.full),
                s.full["events"],
                if s.full["tags"] == s.incremental["tags"] {
                    "equal"
                } else {
                    "DIFFERENT"
                },
            ),
        });
    }
    let refresh = walls[mid];
    println!(
        "\nNote: Quiver's full refresh builds every profile, trait (RFM etc.), per-day behaviour counts for every \
         (event type × category/channel value), the profiles Delta table and every index file; DuckDB computes \
         only the 4 seed tag sets. The ratio is not like for like."
    );
    println!("\n| system | what | seconds | peak RSS MiB | DuckDB ÷ Quiver refresh | notes |");
    println!("|---|---|---:|---:|---:|---|");
    let mut csv = format!(
        "# {machine}\n# setup: {} event files ingested in {ingest_secs:.3}s; resolve {resolve_secs:.3}s; now {now}\n\
         system,what,seconds,peak_rss_mib,vs_quiver_refresh,note\n",
        files.len()
    );
    for r in &rows {
        let ratio = if r.system.starts_with("Quiver") {
            String::new()
        } else {
            format!("{:.2}", r.seconds / refresh)
        };
        println!(
            "| {} | {} | {:.2} | {} | {} | {} |",
            r.system,
            r.what,
            r.seconds,
            r.rss_mib.map_or("-".into(), |v| format!("{v:.0}")),
            ratio,
            r.note
        );
        csv.push_str(&format!(
            "{},{},{:.3},{},{},{}\n",
            r.system,
            r.what.trim().replace(',', ";"),
            r.seconds,
            r.rss_mib.map_or(String::new(), |v| format!("{v:.0}")),
            ratio,
            r.note.replace(',', ";")
        ));
    }
    if let Some(d) = rows.iter().find(|r| r.system.starts_with("DuckDB")) {
        println!(
            "\nDuckDB ÷ Quiver full refresh = {:.2}; DuckDB ÷ Quiver's scan phase alone = {:.2}",
            d.seconds / refresh,
            d.seconds / scan
        );
    }
    let csv_path = base.join(format!(
        "tags-{}.csv",
        chrono::Utc::now().format("%Y%m%dT%H%M%S")
    ));
    std::fs::write(&csv_path, csv)?;
    println!("\nresults: {}", csv_path.display());
    if !failures.is_empty() {
        anyhow::bail!(
            "Quiver's tag sets and DuckDB's are not the same:\n  {}",
            failures.join("\n  ")
        );
    }
    if !args.no_peers {
        println!(
            "all {} sets equal between Quiver and DuckDB",
            comparison.len()
        );
    }
    Ok(())
}
