//! `quiver tags define|list|refresh|show|upload|export|drop`: the TagService
//! from the command line.
#![allow(clippy::print_stdout)]

use std::path::Path;

use anyhow::Context;
use comfy_table::Table;
use futures::StreamExt;
use quiver_proto::v1 as pb;
use quiver_proto::v1::tag_service_client::TagServiceClient;
use tonic::transport::Channel;

use super::{output, status_error};
use crate::cli::TagsAction;

/// Runs one `quiver tags` action.
pub async fn run(
    channel: Channel,
    workspace: &str,
    action: TagsAction,
    json: bool,
) -> anyhow::Result<()> {
    let mut client = TagServiceClient::new(channel.clone())
        .max_decoding_message_size(crate::service::MAX_MESSAGE_BYTES);
    let ws = workspace.to_string();
    match action {
        TagsAction::Define { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read definitions {}", file.display()))?;
            let format = if file
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("json"))
            {
                pb::DefinitionFormat::Json
            } else {
                pb::DefinitionFormat::Toml
            };
            let defs = client
                .define(pb::DefineTagsRequest {
                    workspace: ws,
                    text,
                    format: format as i32,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            print_definitions(&defs, json);
        }
        TagsAction::List => {
            let list = client
                .list(pb::ListTagsRequest { workspace: ws })
                .await
                .map_err(status_error)?
                .into_inner();
            print_list(&list, json);
        }
        TagsAction::Refresh { now, full } => {
            let now_unix_ms = match now {
                Some(d) => d
                    .and_hms_opt(23, 59, 59)
                    .map(|t| t.and_utc().timestamp_millis())
                    .unwrap_or_default(),
                None => 0,
            };
            let r = refresh(channel, workspace, now_unix_ms, full, json).await?;
            print_refresh(&r, json);
        }
        TagsAction::Show { name } => {
            let s = client
                .show(pb::ShowTagRequest {
                    workspace: ws,
                    name,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            print_show(&s, json);
        }
        TagsAction::Upload { name, file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read identifiers {}", file.display()))?;
            let identifiers: Vec<String> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_string)
                .collect();
            let r = client
                .upload(pb::UploadTagRequest {
                    workspace: ws,
                    name: name.clone(),
                    identifiers,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "tag": name, "identifiers": r.identifiers, "matched": r.matched,
                        "persons": r.persons, "unknown": r.unknown,
                        "unknown_examples": r.unknown_examples,
                    })
                );
            } else {
                println!(
                    "{name}: {} identifiers, {} matched ({} persons), {} unknown{}; takes effect at the next refresh",
                    r.identifiers,
                    r.matched,
                    r.persons,
                    r.unknown,
                    if r.unknown_examples.is_empty() {
                        String::new()
                    } else {
                        format!(" (e.g. {})", r.unknown_examples.join(", "))
                    }
                );
            }
        }
        TagsAction::Export { name, value, out } => {
            let (cardinality, version, bytes) = export(
                channel,
                workspace,
                &name,
                value.as_deref().unwrap_or(""),
                &out,
            )
            .await?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "tag": name, "value": value, "cardinality": cardinality,
                        "version": version, "bytes": bytes, "file": out.display().to_string(),
                        "format": "portable roaring",
                    })
                );
            } else {
                println!(
                    "{} persons (version {version}) written to {} ({bytes} bytes, portable roaring format)",
                    cardinality,
                    out.display()
                );
            }
        }
        TagsAction::Drop { name } => {
            client
                .drop(pb::DropTagRequest {
                    workspace: ws,
                    name: name.clone(),
                })
                .await
                .map_err(status_error)?;
            output::message(&format!("tag `{name}` dropped"), json);
        }
    }
    Ok(())
}

/// Runs a refresh, showing progress on stderr; returns the final report.
pub async fn refresh(
    channel: Channel,
    workspace: &str,
    now_unix_ms: i64,
    full: bool,
    quiet: bool,
) -> anyhow::Result<pb::RefreshReport> {
    let mut client = TagServiceClient::new(channel);
    let mut stream = client
        .refresh(pb::RefreshTagsRequest {
            workspace: workspace.into(),
            now_unix_ms,
            full,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let bar = output::progress(0, "refresh", quiet);
    while let Some(msg) = stream.next().await {
        match msg.map_err(status_error)?.update {
            Some(pb::refresh_tags_update::Update::Progress(p)) => bar.set_message(p.phase),
            Some(pb::refresh_tags_update::Update::Report(r)) => {
                bar.finish_and_clear();
                return Ok(r);
            }
            None => {}
        }
    }
    bar.finish_and_clear();
    anyhow::bail!("the server ended the refresh stream without a report")
}

/// Writes a tag's bitmap to `out`; returns (cardinality, version, bytes).
pub async fn export(
    channel: Channel,
    workspace: &str,
    name: &str,
    value: &str,
    out: &Path,
) -> anyhow::Result<(u64, u64, u64)> {
    let mut client = TagServiceClient::new(channel);
    let mut stream = client
        .export(pb::ExportTagRequest {
            workspace: workspace.into(),
            name: name.into(),
            value: value.into(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let tmp = out.with_extension("partial");
    let mut file =
        std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let (mut cardinality, mut version, mut bytes) = (0, 0, 0u64);
    let mut first = true;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(status_error)?;
        if first {
            cardinality = chunk.cardinality;
            version = chunk.version;
            first = false;
        }
        std::io::Write::write_all(&mut file, &chunk.data)
            .with_context(|| format!("writing {}", tmp.display()))?;
        bytes += chunk.data.len() as u64;
    }
    file.sync_all()
        .with_context(|| format!("syncing {}", tmp.display()))?;
    std::fs::rename(&tmp, out).with_context(|| format!("renaming to {}", out.display()))?;
    Ok((cardinality, version, bytes))
}

fn definition_json(d: &pb::TagDefinition) -> serde_json::Value {
    serde_json::json!({
        "name": d.name, "kind": d.kind, "description": d.description,
        "rule": d.rule, "source": d.source, "values": d.values,
    })
}

/// What a tag is defined as, in one cell.
fn what(d: &pb::TagDefinition) -> String {
    match d.kind.as_str() {
        "boolean" => d.rule.clone(),
        "enum" if !d.values.is_empty() => format!("{} in ({})", d.source, d.values.join(", ")),
        "enum" | "numeric" => d.source.clone(),
        _ => "uploaded list".into(),
    }
}

fn print_definitions(d: &pb::TagDefinitions, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::json!({
                "tags": d.tags.iter().map(definition_json).collect::<Vec<_>>(),
                "dimensions": d.dimensions,
            })
        );
        return;
    }
    let mut t = Table::new();
    t.set_header(["tag", "kind", "definition"]);
    for d in &d.tags {
        t.add_row([d.name.clone(), d.kind.clone(), what(d)]);
    }
    println!("{t}");
    println!("behaviour dimensions: {}", d.dimensions.join(", "));
}

fn percent(count: u64, of: u64) -> String {
    if of == 0 {
        "-".into()
    } else {
        format!("{:.2}%", count as f64 * 100.0 / of as f64)
    }
}

fn print_list(l: &pb::ListTagsResponse, json: bool) {
    if json {
        let v: Vec<serde_json::Value> = l
            .tags
            .iter()
            .map(|t| {
                let mut d = t
                    .definition
                    .as_ref()
                    .map(definition_json)
                    .unwrap_or_default();
                d["count"] = serde_json::json!(t.count);
                d["persons"] = serde_json::json!(t.persons);
                d["version"] = serde_json::json!(t.version);
                d
            })
            .collect();
        println!("{}", serde_json::json!({ "tags": v }));
        return;
    }
    let mut t = Table::new();
    t.set_header([
        "tag",
        "kind",
        "definition",
        "persons",
        "coverage",
        "version",
    ]);
    for s in &l.tags {
        let Some(d) = &s.definition else { continue };
        t.add_row([
            d.name.clone(),
            d.kind.clone(),
            what(d),
            s.count.map_or("-".into(), |c| c.to_string()),
            match (s.count, s.persons) {
                (Some(c), Some(p)) => percent(c, p),
                _ => "-".into(),
            },
            s.version.map_or("-".into(), |v| v.to_string()),
        ]);
    }
    println!("{t}");
}

/// A refresh report as JSON.
pub fn refresh_json(r: &pb::RefreshReport) -> serde_json::Value {
    serde_json::json!({
        "version": r.version, "now_unix_ms": r.now_unix_ms, "events": r.events,
        "events_read": r.events_read, "incremental": r.incremental, "full_reason": r.full_reason,
        "unattributed_events": r.unattributed_events, "persons": r.persons,
        "behaviour_keys": r.behaviour_keys, "index_bytes": r.index_bytes, "seconds": r.seconds,
        "phases": r.phases.iter().map(|p| serde_json::json!({"phase": p.phase, "seconds": p.seconds})).collect::<Vec<_>>(),
        "tags": r.tags.iter().map(|t| serde_json::json!({
            "name": t.name, "kind": t.kind, "count": t.count,
            "values": t.values.iter().map(|v| serde_json::json!({"value": v.value, "count": v.count})).collect::<Vec<_>>(),
            "unknown_identifiers": t.unknown_identifiers,
        })).collect::<Vec<_>>(),
    })
}

/// Prints the coverage table of a refresh.
pub fn print_refresh(r: &pb::RefreshReport, json: bool) {
    if json {
        println!("{}", refresh_json(r));
        return;
    }
    let how = if r.incremental {
        format!("incremental, {} new events read", r.events_read)
    } else {
        format!("every event read: {}", r.full_reason)
    };
    println!(
        "tags refreshed: version {} ({how}); {} persons, {} events ({} with no identifier in a person: quarantined or blocklisted values only), {} behaviour keys, {:.1} MiB of index",
        r.version,
        r.persons,
        r.events,
        r.unattributed_events,
        r.behaviour_keys,
        r.index_bytes as f64 / (1 << 20) as f64
    );
    let mut t = Table::new();
    t.set_header(["tag", "kind", "persons", "coverage"]);
    for c in &r.tags {
        let note = if c.unknown_identifiers > 0 {
            format!(" ({} unknown identifiers)", c.unknown_identifiers)
        } else {
            String::new()
        };
        t.add_row([
            format!("{}{note}", c.name),
            c.kind.clone(),
            c.count.to_string(),
            percent(c.count, r.persons),
        ]);
        for v in &c.values {
            t.add_row([
                format!("  = {}", v.value),
                String::new(),
                v.count.to_string(),
                percent(v.count, r.persons),
            ]);
        }
    }
    println!("{t}");
    let phases: Vec<String> = r
        .phases
        .iter()
        .map(|p| format!("{} {:.2}s", p.phase, p.seconds))
        .collect();
    println!("time {:.2}s ({})", r.seconds, phases.join(", "));
}

fn print_show(s: &pb::ShowTagResponse, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::json!({
                "definition": s.definition.as_ref().map(definition_json),
                "versions": s.versions.iter().map(|v| serde_json::json!({
                    "version": v.version, "built_at_unix_ms": v.built_at_unix_ms,
                    "persons": v.persons, "count": v.count,
                    "values": v.values.iter().map(|x| serde_json::json!({"value": x.value, "count": x.count})).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            })
        );
        return;
    }
    if let Some(d) = &s.definition {
        println!("{} ({}): {}", d.name, d.kind, what(d));
        if !d.description.is_empty() {
            println!("  {}", d.description);
        }
    }
    let mut t = Table::new();
    t.set_header(["version", "built", "persons", "coverage"]);
    for v in &s.versions {
        t.add_row([
            v.version.to_string(),
            output::time_ms(v.built_at_unix_ms),
            v.count.to_string(),
            percent(v.count, v.persons),
        ]);
        for x in &v.values {
            t.add_row([
                String::new(),
                format!("  = {}", x.value),
                x.count.to_string(),
                percent(x.count, v.persons),
            ]);
        }
    }
    println!("{t}");
}
