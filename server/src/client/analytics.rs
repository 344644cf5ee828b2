//! `quiver funnel|retention|attribution`: the AnalyticsService from the
//! command line.
#![allow(clippy::print_stdout)]

use comfy_table::Table;
use quiver_proto::v1 as pb;
use quiver_proto::v1::analytics_service_client::AnalyticsServiceClient;
use serde_json::json;
use tonic::transport::Channel;

use super::status_error;
use crate::cli::Span;

/// The start of `d` (UTC), ms since the epoch.
pub fn start_of(d: chrono::NaiveDate) -> i64 {
    d.and_hms_opt(0, 0, 0)
        .map(|t| t.and_utc().timestamp_millis())
        .unwrap_or_default()
}

fn meta_json(m: Option<&pb::AnalyticsMeta>) -> serde_json::Value {
    match m {
        Some(m) => json!({
            "identity_run": m.identity_run, "events_version": m.events_version, "micros": m.micros,
        }),
        None => serde_json::Value::Null,
    }
}

fn meta_line(m: Option<&pb::AnalyticsMeta>) -> String {
    match m {
        Some(m) => format!(
            "{:.3} ms over the events of OneID run {} (events version {})",
            m.micros as f64 / 1000.0,
            m.identity_run,
            m.events_version
        ),
        None => String::new(),
    }
}

fn pct(x: f64) -> String {
    format!("{:.2}%", x * 100.0)
}

/// Seconds as `1d 2h`, `3h 4m`, `5m 6s` or `7s`.
fn duration(secs: f64) -> String {
    let s = secs.round() as i64;
    let (d, h, m, s) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// `quiver funnel`.
pub async fn funnel(
    channel: Channel,
    workspace: &str,
    steps: Vec<String>,
    window_days: u32,
    by: Option<String>,
    span: &Span,
    json: bool,
) -> anyhow::Result<()> {
    let r = AnalyticsServiceClient::new(channel)
        .funnel(pb::FunnelRequest {
            workspace: workspace.into(),
            steps,
            window_seconds: i64::from(window_days) * 86_400,
            from_unix_ms: span.from.map_or(0, start_of),
            to_unix_ms: span.to.map_or(0, start_of),
            breakdown: by.clone().unwrap_or_default(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if json {
        println!(
            "{}",
            json!({
                "steps": r.steps.iter().map(|s| json!({
                    "step": s.step, "persons": s.persons, "from_previous": s.from_previous,
                    "from_first": s.from_first, "median_seconds_from_previous": s.median_seconds_from_previous,
                })).collect::<Vec<_>>(),
                "breakdown": r.breakdown.iter().map(|g| json!({"value": g.value, "persons": g.persons})).collect::<Vec<_>>(),
                "meta": meta_json(r.meta.as_ref()),
            })
        );
        return Ok(());
    }
    let mut t = Table::new();
    t.set_header([
        "step",
        "persons",
        "from previous",
        "from first",
        "median time from previous",
    ]);
    for s in &r.steps {
        t.add_row([
            s.step.clone(),
            s.persons.to_string(),
            pct(s.from_previous),
            pct(s.from_first),
            s.median_seconds_from_previous.map_or("-".into(), duration),
        ]);
    }
    println!("{t}");
    if !r.breakdown.is_empty() {
        let mut t = Table::new();
        let mut header = vec![by.unwrap_or_default()];
        header.extend(r.steps.iter().map(|s| s.step.clone()));
        t.set_header(header);
        for g in &r.breakdown {
            let mut row = vec![g.value.clone()];
            row.extend(g.persons.iter().map(u64::to_string));
            t.add_row(row);
        }
        println!("{t}");
    }
    println!("{}", meta_line(r.meta.as_ref()));
    Ok(())
}

/// `quiver retention`.
pub async fn retention(
    channel: Channel,
    req: pb::RetentionRequest,
    json: bool,
) -> anyhow::Result<()> {
    let r = AnalyticsServiceClient::new(channel)
        .retention(req)
        .await
        .map_err(status_error)?
        .into_inner();
    let date = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .map(|d| d.format("%Y-%m-%d").to_string())
            .unwrap_or_default()
    };
    if json {
        println!(
            "{}",
            json!({
                "cohorts": r.cohorts.iter().map(|c| json!({
                    "start": date(c.start_unix_ms), "start_unix_ms": c.start_unix_ms,
                    "persons": c.persons, "retained": c.retained,
                })).collect::<Vec<_>>(),
                "meta": meta_json(r.meta.as_ref()),
            })
        );
        return Ok(());
    }
    let periods = r.cohorts.first().map_or(0, |c| c.retained.len());
    let mut t = Table::new();
    let mut header = vec!["cohort".to_string(), "persons".to_string()];
    header.extend((0..periods).map(|k| k.to_string()));
    t.set_header(header);
    for c in &r.cohorts {
        let mut row = vec![date(c.start_unix_ms), c.persons.to_string()];
        row.extend(c.retained.iter().map(|&n| {
            if c.persons == 0 {
                "-".to_string()
            } else {
                format!("{:.1}%", n as f64 * 100.0 / c.persons as f64)
            }
        }));
        t.add_row(row);
    }
    println!("{t}");
    println!("{}", meta_line(r.meta.as_ref()));
    Ok(())
}

/// `quiver attribution`.
pub async fn attribution(
    channel: Channel,
    req: pb::AttributionRequest,
    json: bool,
) -> anyhow::Result<()> {
    let r = AnalyticsServiceClient::new(channel)
        .attribution(req)
        .await
        .map_err(status_error)?
        .into_inner();
    if json {
        println!(
            "{}",
            json!({
                "conversions": r.conversions,
                "channels": r.channels.iter().map(|c| json!({
                    "channel": c.channel, "first_touch": c.first_touch, "last_touch": c.last_touch,
                    "linear": c.linear, "first_touch_revenue": c.first_touch_revenue,
                    "last_touch_revenue": c.last_touch_revenue, "linear_revenue": c.linear_revenue,
                })).collect::<Vec<_>>(),
                "meta": meta_json(r.meta.as_ref()),
            })
        );
        return Ok(());
    }
    let mut t = Table::new();
    t.set_header([
        "channel",
        "first touch",
        "last touch",
        "linear",
        "revenue (first)",
        "revenue (last)",
        "revenue (linear)",
    ]);
    for c in &r.channels {
        t.add_row([
            c.channel.clone(),
            format!("{:.0}", c.first_touch),
            format!("{:.0}", c.last_touch),
            format!("{:.1}", c.linear),
            format!("{:.2}", c.first_touch_revenue),
            format!("{:.2}", c.last_touch_revenue),
            format!("{:.2}", c.linear_revenue),
        ]);
    }
    println!("{t}");
    println!(
        "{} conversions; {}",
        r.conversions,
        meta_line(r.meta.as_ref())
    );
    Ok(())
}
