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

pub fn time_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

/// A resolve report as JSON.
pub fn resolve_report_json(r: &pb::ResolveReport) -> serde_json::Value {
    serde_json::json!({
        "run": r.run, "dry_run": r.dry_run, "incremental": r.incremental,
        "touched_identifiers": r.touched_identifiers, "events": r.events, "identifiers": r.identifiers,
        "edges": r.edges, "persons": r.persons, "previous_persons": r.previous_persons,
        "new_persons": r.new_persons, "merges": r.merges, "splits": r.splits, "kept": r.kept,
        "quarantined_count": r.quarantined_count, "refused_count": r.refused_count,
        "blocked": r.blocked, "seconds": r.seconds, "tags_version": r.tags_version,
        "quarantined": r.quarantined.iter().map(|q| serde_json::json!({
            "kind": q.kind, "value": q.value, "persons": q.persons, "limit": q.limit,
        })).collect::<Vec<_>>(),
        "refused": r.refused.iter().map(|u| serde_json::json!({
            "a": u.a, "b": u.b, "class": u.class, "would_hold": u.would_hold, "cap": u.cap,
        })).collect::<Vec<_>>(),
        "phases": r.phases.iter().map(|p| serde_json::json!({"phase": p.phase, "seconds": p.seconds})).collect::<Vec<_>>(),
    })
}

/// The end of `quiver resolve`.
pub fn resolve_report(r: &pb::ResolveReport, json: bool) {
    if json {
        println!("{}", resolve_report_json(r));
        return;
    }
    let mode = if r.incremental { "incremental" } else { "full" };
    let title = if r.dry_run {
        format!("resolve run {} ({mode}, dry run: nothing written)", r.run)
    } else {
        format!("resolve run {} ({mode})", r.run)
    };
    println!("{title}");
    let mut t = Table::new();
    t.set_header(["", "count"]);
    for (k, v) in [
        ("events read", r.events),
        ("identifier values", r.identifiers),
        ("values recomputed", r.touched_identifiers),
        ("links (value pairs)", r.edges),
        ("persons", r.persons),
        ("persons before", r.previous_persons),
        ("new persons", r.new_persons),
        ("merges", r.merges),
        ("splits", r.splits),
        ("kept id and ordinal", r.kept),
        ("quarantined values", r.quarantined_count),
        ("refused unions", r.refused_count),
        ("blocklisted occurrences", r.blocked),
    ] {
        t.add_row([k.to_string(), v.to_string()]);
    }
    println!("{t}");
    let phases: Vec<String> = r
        .phases
        .iter()
        .map(|p| format!("{} {:.2}s", p.phase, p.seconds))
        .collect();
    println!("time {:.2}s ({})", r.seconds, phases.join(", "));
    if !r.quarantined.is_empty() {
        let mut t = Table::new();
        t.set_header(["quarantined value", "persons it would join", "limit"]);
        for q in &r.quarantined {
            t.add_row([
                format!("{}:{}", q.kind, q.value),
                q.persons.to_string(),
                q.limit.to_string(),
            ]);
        }
        println!("{t}");
    }
    if !r.refused.is_empty() {
        let mut t = Table::new();
        t.set_header(["refused union", "", "cap", "would hold"]);
        for u in &r.refused {
            t.add_row([
                u.a.clone(),
                u.b.clone(),
                format!("{} ≤ {}", u.class, u.cap),
                u.would_hold.to_string(),
            ]);
        }
        println!("{t}");
    }
}

fn event_json(e: &pb::SeenEvent) -> serde_json::Value {
    serde_json::json!({
        "event_id": e.event_id, "event_time_unix_ms": e.event_time_unix_ms,
        "channel": e.channel, "event_type": e.event_type, "identifiers": e.identifiers,
    })
}

/// `quiver person`.
pub fn person(p: &pb::Person, json: bool) {
    if json {
        let v = serde_json::json!({
            "person_id": p.person_id, "ordinal": p.ordinal,
            "created_at_unix_ms": p.created_at_unix_ms, "redirected_from": p.redirected_from,
            "first_seen_unix_ms": p.first_seen_unix_ms, "last_seen_unix_ms": p.last_seen_unix_ms,
            "identifiers": p.identifiers.iter().map(|i| serde_json::json!({
                "kind": i.kind, "value": i.value,
                "first_seen_unix_ms": i.first_seen_unix_ms, "last_seen_unix_ms": i.last_seen_unix_ms,
            })).collect::<Vec<_>>(),
            "latest_events": p.latest_events.iter().map(event_json).collect::<Vec<_>>(),
            "attributes": name_values_json(&p.attributes),
            "traits": name_values_json(&p.traits),
            "tags": name_values_json(&p.tags),
            "tags_version": p.tags_version,
        });
        println!("{v}");
        return;
    }
    println!("person {} (ordinal {})", p.person_id, p.ordinal);
    if !p.redirected_from.is_empty() {
        println!("  {} was merged into this person", p.redirected_from);
    }
    println!(
        "  first seen {}, last seen {}",
        time_ms(p.first_seen_unix_ms),
        time_ms(p.last_seen_unix_ms)
    );
    let mut t = Table::new();
    t.set_header(["kind", "value", "first seen", "last seen"]);
    for i in &p.identifiers {
        t.add_row([
            i.kind.clone(),
            i.value.clone(),
            time_ms(i.first_seen_unix_ms),
            time_ms(i.last_seen_unix_ms),
        ]);
    }
    println!("{t}");
    if p.tags_version > 0 {
        let mut t = Table::new();
        t.set_header(["attribute / trait / tag", "value"]);
        for list in [&p.attributes, &p.traits] {
            for nv in list {
                t.add_row([nv.name.clone(), nv.value.clone()]);
            }
        }
        for nv in &p.tags {
            t.add_row([format!("tag {}", nv.name), nv.value.clone()]);
        }
        println!("{t}");
        println!(
            "  (profile and tags as of index version {})",
            p.tags_version
        );
    }
    let mut t = Table::new();
    t.set_header(["latest events", "channel", "type", "event id"]);
    for e in &p.latest_events {
        t.add_row([
            time_ms(e.event_time_unix_ms),
            e.channel.clone(),
            e.event_type.clone(),
            e.event_id.clone(),
        ]);
    }
    println!("{t}");
}

fn name_values_json(v: &[pb::NameValue]) -> serde_json::Value {
    v.iter()
        .map(|nv| (nv.name.clone(), serde_json::Value::String(nv.value.clone())))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// `quiver explain`.
pub fn explanation(e: &pb::Explanation, json: bool) {
    if json {
        let v = serde_json::json!({
            "same_person": e.same_person, "person_a": e.person_a, "person_b": e.person_b,
            "reason": e.reason,
            "chain": e.chain.iter().map(|l| serde_json::json!({
                "from": l.from, "to": l.to, "events": l.events, "blocked": l.blocked,
                "evidence": l.evidence.iter().map(event_json).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        });
        println!("{v}");
        return;
    }
    println!("{}", e.reason);
    for (i, l) in e.chain.iter().enumerate() {
        println!("{}. {} — {}  ({} event(s))", i + 1, l.from, l.to, l.events);
        for ev in &l.evidence {
            println!(
                "     {} {} {} {}",
                time_ms(ev.event_time_unix_ms),
                ev.channel,
                ev.event_type,
                ev.event_id
            );
        }
        if !l.blocked.is_empty() {
            println!("     ✗ {}", l.blocked);
        }
    }
}
