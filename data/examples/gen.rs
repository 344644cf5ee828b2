//! Times a generator run: `cargo run --release -p quiver-data --example gen -- \
//! [persons] [parquet|ndjson|csv|mem] [out-dir] [threads]` (defaults: 1000000 parquet
//! /tmp/quiver-gen, available parallelism). Prints the summary to stderr.

use std::sync::atomic::{AtomicU64, Ordering};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut cfg = quiver_data::GenConfig {
        out: "/tmp/quiver-gen".into(),
        persons: 1_000_000,
        ..Default::default()
    };
    if let Some(p) = args.next() {
        cfg.persons = p.parse()?;
    }
    let mut in_memory = false;
    if let Some(f) = args.next() {
        if f == "mem" {
            in_memory = true;
        } else {
            cfg.format = f.parse()?;
        }
    }
    if let Some(o) = args.next() {
        cfg.out = o.into();
    }
    if let Some(t) = args.next() {
        cfg.threads = t.parse()?;
    }
    if in_memory {
        let started = std::time::Instant::now();
        let (batches, truth) = quiver_data::generate_batches(&cfg)?;
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        eprintln!(
            "in memory: {rows} events, {} truth rows in {:.2} s",
            truth.len(),
            started.elapsed().as_secs_f64()
        );
        return Ok(());
    }
    let done = AtomicU64::new(0);
    let summary = quiver_data::generate(&cfg, &|n| {
        done.fetch_add(n, Ordering::Relaxed);
    })?;
    let secs = summary.elapsed.as_secs_f64();
    eprintln!(
        "{} persons, {} events, {} truth rows, {} files ({}) in {secs:.2} s: {:.2} M events/s",
        summary.persons,
        summary.events,
        summary.truth_rows,
        summary.files.len(),
        cfg.format,
        summary.events as f64 / secs / 1e6,
    );
    Ok(())
}
