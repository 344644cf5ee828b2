//! Everything the CLI prints: readable tables by default, JSON with `--json`.
#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::time::Duration;

use arrow::array::RecordBatch;
use comfy_table::Table;
use indicatif::{ProgressBar, ProgressStyle};
use quiver_proto::v1 as pb;

use super::ingest::Summary;

/// A progress bar on stderr (hidden when `hidden`); `total = 0` is a spinner with a count.
pub fn progress(total: u64, unit: &str, hidden: bool) -> ProgressBar {
    if hidden {
        return ProgressBar::hidden();
    }
    let bar = if total > 0 {
        ProgressBar::new(total).with_style(
            ProgressStyle::with_template(&format!(
                "{{spinner}} [{{elapsed_precise}}] {{wide_bar}} {{human_pos}}/{{human_len}} {unit} ({{per_sec}}, eta {{eta}})"
            ))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        )
    } else {
        ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template(&format!(
                "{{spinner}} [{{elapsed_precise}}] {{human_pos}} {unit} ({{per_sec}})"
            ))
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        )
    };
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// The line tests and scripts wait for.
pub fn listening(addr: SocketAddr) {
    println!("quiver listening on {addr}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
}

/// A one-line result.
pub fn message(msg: &str, json: bool) {
    if json {
        println!("{}", serde_json::json!({ "message": msg }));
    } else {
        println!("{msg}");
    }
}

/// Record batches as a table or a JSON array of objects.
pub fn batches(batches: &[RecordBatch], json: bool) -> anyhow::Result<()> {
    println!("{}", format_batches(batches, json)?);
    Ok(())
}

/// Formats record batches as a table or a JSON array of objects.
pub fn format_batches(batches: &[RecordBatch], json: bool) -> anyhow::Result<String> {
    if json {
        let mut buf = Vec::new();
        {
            let mut w = arrow::json::ArrayWriter::new(&mut buf);
            for b in batches {
                w.write(b)?;
            }
            w.finish()?;
        }
        if buf.is_empty() {
            buf.extend_from_slice(b"[]");
        }
        Ok(String::from_utf8(buf)?)
    } else {
        Ok(arrow::util::pretty::pretty_format_batches(batches)?.to_string())
    }
}

/// Workspaces as a table.
pub fn workspaces(list: &[pb::WorkspaceInfo], json: bool) {
    if json {
        let v: Vec<serde_json::Value> = list
            .iter()
            .map(|w| {
                serde_json::json!({
                    "name": w.name, "created_at_unix_ms": w.created_at_unix_ms,
                    "events_version": w.events_version, "events_files": w.events_files,
                    "unflushed_rows": w.unflushed_rows,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(v));
        return;
    }
    let mut t = Table::new();
    t.set_header([
        "workspace",
        "created",
        "events version",
        "files",
        "unflushed rows",
    ]);
    for w in list {
        let created = chrono::DateTime::from_timestamp_millis(w.created_at_unix_ms)
            .map(|d| d.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_default();
        t.add_row([
            w.name.clone(),
            created,
            w.events_version.to_string(),
            w.events_files.to_string(),
            w.unflushed_rows.to_string(),
        ]);
    }
    println!("{t}");
}

/// The end of `quiver ingest`.
pub fn ingest_summary(s: &Summary, json: bool) {
    let rate = s.sent as f64 / s.elapsed.as_secs_f64().max(1e-9);
    if json {
        let rejections: Vec<serde_json::Value> = s
            .first_rejections
            .iter()
            .map(|r| serde_json::json!({"file": r.file, "row": r.row, "field": r.field, "value": r.value, "reason": r.reason}))
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "files": s.files, "failed_files": s.failed_files, "file_errors": s.file_errors,
                "sent": s.sent, "accepted": s.accepted, "duplicates": s.duplicates,
                "rejected": s.rejected, "first_rejections": rejections,
                "dropped_identifiers": s.dropped_identifiers,
                "seconds": s.elapsed.as_secs_f64(), "events_per_second": rate,
            })
        );
        return;
    }
    println!(
        "ingested {} file(s) in {:.2}s ({:.0} events/s): {} accepted, {} duplicates, {} rejected",
        s.files,
        s.elapsed.as_secs_f64(),
        rate,
        s.accepted,
        s.duplicates,
        s.rejected
    );
    if !s.dropped_identifiers.is_empty() {
        let d: Vec<String> = s
            .dropped_identifiers
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        println!("identifiers dropped: {}", d.join(", "));
    }
    if !s.first_rejections.is_empty() {
        println!("first rejections:");
        for r in &s.first_rejections {
            println!(
                "  {} row {}, field `{}`, value `{}`: {}",
                r.file, r.row, r.field, r.value, r.reason
            );
        }
    }
    for e in &s.file_errors {
        println!("file error: {e}");
    }
}

/// The end of `quiver gen`.
pub fn gen_summary(s: &quiver_data::GenSummary, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::json!({
                "persons": s.persons, "events": s.events, "truth_rows": s.truth_rows,
                "files": s.files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
                "seconds": s.elapsed.as_secs_f64(),
            })
        );
        return;
    }
    println!(
        "generated {} persons, {} events in {} file(s), {} truth rows, in {:.2}s",
        s.persons,
        s.events,
        s.files.len(),
        s.truth_rows,
        s.elapsed.as_secs_f64()
    );
    for f in &s.files {
        println!("  {}", f.display());
    }
}
