//! `quiver count|breakdown|export` and `quiver segments ...`: the
//! SegmentService from the command line.
#![allow(clippy::print_stdout)]

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use comfy_table::Table;
use futures::StreamExt;
use quiver_proto::v1 as pb;
use quiver_proto::v1::segment_service_client::SegmentServiceClient;
use tonic::transport::Channel;

use super::{output, status_error};
use crate::cli::{ExportFormat, SegmentsAction, When};

fn client(channel: Channel) -> SegmentServiceClient<Channel> {
    SegmentServiceClient::new(channel).max_decoding_message_size(crate::service::MAX_MESSAGE_BYTES)
}

/// The end of `d` (UTC), ms since the epoch.
fn end_of(d: chrono::NaiveDate) -> i64 {
    d.and_hms_milli_opt(23, 59, 59, 999)
        .map(|t| t.and_utc().timestamp_millis())
        .unwrap_or_default()
}

fn audience(expr: &str, when: &When) -> pb::Audience {
    pb::Audience {
        expression: expr.to_string(),
        expression_json: String::new(),
        now_unix_ms: when.now.map_or(0, end_of),
        as_of: when
            .as_of
            .map(|d| d.format("%Y-%m-%d").to_string())
            .unwrap_or_default(),
    }
}

fn evaluated_json(e: Option<&pb::Evaluated>) -> serde_json::Value {
    match e {
        Some(e) => serde_json::json!({
            "persons": e.persons, "index_version": e.index_version,
            "index_built_at_unix_ms": e.index_built_at_unix_ms, "now_unix_ms": e.now_unix_ms,
            "micros": e.micros, "expression": e.expression,
        }),
        None => serde_json::Value::Null,
    }
}

fn evaluated_line(e: Option<&pb::Evaluated>) -> String {
    match e {
        Some(e) => format!(
            "{:.3} ms on index version {} ({} persons), now {}",
            e.micros as f64 / 1000.0,
            e.index_version,
            e.persons,
            output::time_ms(e.now_unix_ms)
        ),
        None => String::new(),
    }
}

fn percent(n: u64, of: u64) -> String {
    if of == 0 {
        "-".into()
    } else {
        format!("{:.2}%", n as f64 * 100.0 / of as f64)
    }
}

/// `quiver count`.
pub async fn count(
    channel: Channel,
    workspace: &str,
    expr: &str,
    when: &When,
    json: bool,
) -> anyhow::Result<()> {
    let r = client(channel)
        .count(pb::CountRequest {
            workspace: workspace.into(),
            audience: Some(audience(expr, when)),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if json {
        println!(
            "{}",
            serde_json::json!({"count": r.count, "evaluated": evaluated_json(r.evaluated.as_ref())})
        );
    } else {
        let persons = r.evaluated.as_ref().map_or(0, |e| e.persons);
        println!(
            "{} persons ({} of {persons}); {}",
            r.count,
            percent(r.count, persons),
            evaluated_line(r.evaluated.as_ref())
        );
    }
    Ok(())
}

/// `quiver breakdown`.
pub async fn breakdown(
    channel: Channel,
    workspace: &str,
    expr: &str,
    by: &str,
    edges: Vec<f64>,
    when: &When,
    json: bool,
) -> anyhow::Result<()> {
    let r = client(channel)
        .breakdown(pb::BreakdownRequest {
            workspace: workspace.into(),
            audience: Some(audience(expr, when)),
            by: by.into(),
            edges,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "count": r.count, "by": by,
                "rows": r.rows.iter().map(|x| serde_json::json!({"value": x.value, "count": x.count})).collect::<Vec<_>>(),
                "evaluated": evaluated_json(r.evaluated.as_ref()),
            })
        );
        return Ok(());
    }
    let mut t = Table::new();
    t.set_header([by, "persons", "share"]);
    for row in &r.rows {
        t.add_row([
            row.value.clone(),
            row.count.to_string(),
            percent(row.count, r.count),
        ]);
    }
    println!("{t}");
    println!(
        "{} persons in the segment; {}",
        r.count,
        evaluated_line(r.evaluated.as_ref())
    );
    Ok(())
}

/// What `quiver export` writes.
pub struct ExportOptions {
    /// Bitmap or identifiers.
    pub format: ExportFormat,
    /// For identifiers: their kind.
    pub id_kind: String,
    /// For identifiers: SHA-256 hex.
    pub sha256: bool,
}

/// `quiver export`: streams the audience into `out` (bitmap bytes, or one
/// identifier per line), never holding the whole list.
pub async fn export(
    channel: Channel,
    workspace: &str,
    expr: &str,
    opts: &ExportOptions,
    out: &Path,
    when: &When,
    json: bool,
) -> anyhow::Result<()> {
    let mut stream = client(channel)
        .export(pb::ExportRequest {
            workspace: workspace.into(),
            audience: Some(audience(expr, when)),
            format: match opts.format {
                ExportFormat::Roaring => pb::ExportFormat::Roaring,
                ExportFormat::Ids => pb::ExportFormat::Ids,
            } as i32,
            id_kind: opts.id_kind.clone(),
            hash: if opts.sha256 {
                pb::IdHash::Sha256
            } else {
                pb::IdHash::None
            } as i32,
            page_size: 0,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let tmp = out.with_extension("part");
    let file =
        std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let mut w = std::io::BufWriter::new(file);
    let (mut count, mut evaluated, mut written, mut bytes) = (0, None, 0u64, 0u64);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(status_error)?;
        if chunk.evaluated.is_some() {
            count = chunk.count;
            evaluated = chunk.evaluated;
        }
        w.write_all(&chunk.data)?;
        bytes += chunk.data.len() as u64;
        for id in &chunk.ids {
            w.write_all(id.as_bytes())?;
            w.write_all(b"\n")?;
            bytes += id.len() as u64 + 1;
        }
        written += chunk.ids.len() as u64;
    }
    w.flush()?;
    w.get_ref().sync_all()?;
    drop(w);
    std::fs::rename(&tmp, out).with_context(|| format!("cannot write {}", out.display()))?;
    let what = match opts.format {
        ExportFormat::Roaring => "roaring bitmap of ordinals".to_string(),
        ExportFormat::Ids => format!(
            "{written} identifiers of kind {}{}",
            opts.id_kind,
            if opts.sha256 { " (SHA-256)" } else { "" }
        ),
    };
    if json {
        println!(
            "{}",
            serde_json::json!({
                "count": count, "file": out.display().to_string(), "bytes": bytes,
                "identifiers": written, "evaluated": evaluated_json(evaluated.as_ref()),
            })
        );
    } else {
        println!(
            "{count} persons → {} ({what}, {bytes} bytes); {}",
            out.display(),
            evaluated_line(evaluated.as_ref())
        );
    }
    Ok(())
}

fn saved_json(s: &pb::SavedSegment) -> serde_json::Value {
    serde_json::json!({
        "name": s.name, "expression": s.expression, "description": s.description,
        "created_at_unix_ms": s.created_at_unix_ms, "updated_at_unix_ms": s.updated_at_unix_ms,
    })
}

fn snapshot_json(s: &pb::SnapshotInfo) -> serde_json::Value {
    serde_json::json!({
        "id": s.id, "segment": s.segment, "expression": s.expression,
        "taken_at_unix_ms": s.taken_at_unix_ms, "now_unix_ms": s.now_unix_ms,
        "index_version": s.index_version, "count": s.count,
    })
}

fn write_bitmap(dir: &Path, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(format!("{name}.roaring"));
    std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

/// Runs one `quiver segments` action.
pub async fn run(
    channel: Channel,
    workspace: &str,
    action: SegmentsAction,
    json: bool,
) -> anyhow::Result<()> {
    let mut c = client(channel);
    let ws = workspace.to_string();
    match action {
        SegmentsAction::Save {
            name,
            expr,
            description,
        } => {
            let s = c
                .save(pb::SaveSegmentRequest {
                    workspace: ws,
                    name,
                    expression: expr,
                    expression_json: String::new(),
                    description,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            if json {
                println!("{}", saved_json(&s));
            } else {
                println!("saved `{}`: {}", s.name, s.expression);
            }
        }
        SegmentsAction::List => {
            let r = c
                .list(pb::ListSegmentsRequest { workspace: ws })
                .await
                .map_err(status_error)?
                .into_inner();
            if json {
                println!(
                    "{}",
                    serde_json::Value::Array(r.segments.iter().map(saved_json).collect())
                );
            } else {
                let mut t = Table::new();
                t.set_header(["segment", "expression", "description", "updated"]);
                for s in &r.segments {
                    t.add_row([
                        s.name.clone(),
                        s.expression.clone(),
                        s.description.clone(),
                        output::time_ms(s.updated_at_unix_ms),
                    ]);
                }
                println!("{t}");
            }
        }
        SegmentsAction::Get { name } => {
            let s = c
                .get(pb::GetSegmentRequest {
                    workspace: ws,
                    name,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            if json {
                println!("{}", saved_json(&s));
            } else {
                println!("{}: {}", s.name, s.expression);
                if !s.description.is_empty() {
                    println!("  {}", s.description);
                }
            }
        }
        SegmentsAction::Delete { name } => {
            c.delete(pb::DeleteSegmentRequest {
                workspace: ws,
                name: name.clone(),
            })
            .await
            .map_err(status_error)?;
            output::message(&format!("deleted segment `{name}`"), json);
        }
        SegmentsAction::Snapshot { name, now } => {
            let s = c
                .snapshot(pb::SnapshotRequest {
                    workspace: ws,
                    name,
                    now_unix_ms: now.map_or(0, end_of),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            if json {
                println!("{}", snapshot_json(&s));
            } else {
                println!(
                    "snapshot {} of `{}`: {} persons (index version {}, now {})",
                    s.id,
                    s.segment,
                    s.count,
                    s.index_version,
                    output::time_ms(s.now_unix_ms)
                );
            }
        }
        SegmentsAction::Snapshots { name } => {
            let r = c
                .list_snapshots(pb::ListSnapshotsRequest {
                    workspace: ws,
                    name: name.unwrap_or_default(),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            if json {
                println!(
                    "{}",
                    serde_json::Value::Array(r.snapshots.iter().map(snapshot_json).collect())
                );
            } else {
                let mut t = Table::new();
                t.set_header(["id", "segment", "persons", "taken", "index version"]);
                for s in &r.snapshots {
                    t.add_row([
                        s.id.to_string(),
                        s.segment.clone(),
                        s.count.to_string(),
                        output::time_ms(s.taken_at_unix_ms),
                        s.index_version.to_string(),
                    ]);
                }
                println!("{t}");
            }
        }
        SegmentsAction::Diff { from, to, out_dir } => {
            let d = c
                .diff(pb::DiffRequest {
                    workspace: ws,
                    from_id: from,
                    to_id: to,
                    bitmaps: out_dir.is_some(),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            if let Some(dir) = &out_dir {
                write_bitmap(dir, "entered", &d.entered_bitmap)?;
                write_bitmap(dir, "left", &d.left_bitmap)?;
                write_bitmap(dir, "stayed", &d.stayed_bitmap)?;
            }
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "from": d.from.as_ref().map(snapshot_json), "to": d.to.as_ref().map(snapshot_json),
                        "entered": d.entered, "left": d.left, "stayed": d.stayed,
                    })
                );
            } else {
                println!(
                    "snapshot {from} → {to}: {} entered, {} left, {} stayed",
                    d.entered, d.left, d.stayed
                );
            }
        }
        SegmentsAction::Split {
            expr,
            salt,
            weights,
            names,
            out_dir,
            when,
        } => {
            let r = c
                .split(pb::SplitRequest {
                    workspace: ws,
                    audience: Some(audience(&expr, &when)),
                    salt,
                    weights,
                    names,
                    bitmaps: out_dir.is_some(),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            if let Some(dir) = &out_dir {
                for g in &r.groups {
                    write_bitmap(dir, &g.name, &g.bitmap)?;
                }
            }
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "count": r.count,
                        "groups": r.groups.iter().map(|g| serde_json::json!({"name": g.name, "weight": g.weight, "count": g.count})).collect::<Vec<_>>(),
                        "evaluated": evaluated_json(r.evaluated.as_ref()),
                    })
                );
            } else {
                let mut t = Table::new();
                t.set_header(["group", "weight", "persons", "share"]);
                for g in &r.groups {
                    t.add_row([
                        g.name.clone(),
                        g.weight.to_string(),
                        g.count.to_string(),
                        percent(g.count, r.count),
                    ]);
                }
                println!("{t}");
                println!(
                    "{} persons split; {}",
                    r.count,
                    evaluated_line(r.evaluated.as_ref())
                );
            }
        }
        SegmentsAction::Overlap { exprs, when } => {
            let r = c
                .overlap(pb::OverlapRequest {
                    workspace: ws,
                    audiences: exprs.iter().map(|e| audience(e, &when)).collect(),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "intersections": r.intersections.iter().map(|i| serde_json::json!({"of": i.of, "count": i.count})).collect::<Vec<_>>(),
                        "evaluated": evaluated_json(r.evaluated.as_ref()),
                    })
                );
            } else {
                let mut t = Table::new();
                t.set_header(["segments", "persons"]);
                for i in &r.intersections {
                    let names: Vec<String> = i.of.iter().map(|k| format!("#{}", k + 1)).collect();
                    t.add_row([names.join(" ∩ "), i.count.to_string()]);
                }
                for (k, e) in exprs.iter().enumerate() {
                    println!("#{}: {e}", k + 1);
                }
                println!("{t}");
                println!("{}", evaluated_line(r.evaluated.as_ref()));
            }
        }
    }
    Ok(())
}
