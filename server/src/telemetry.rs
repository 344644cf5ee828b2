//! Prometheus metrics: the engine records through the `metrics` facade; this
//! installs the exporter and its HTTP listener (`GET /metrics`).

use std::net::SocketAddr;

use metrics_exporter_prometheus::PrometheusBuilder;

/// Seconds buckets for fsync, flush and commit latencies.
const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Serves metrics on `addr`. Must run inside the tokio runtime.
pub fn install(addr: SocketAddr) -> anyhow::Result<()> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets(&BUCKETS)?
        .install()
        .map_err(|e| anyhow::anyhow!("metrics on {addr}: {e}"))?;
    metrics::describe_counter!(
        "quiver_events_accepted_total",
        "Events stored, per workspace"
    );
    metrics::describe_counter!(
        "quiver_events_rejected_total",
        "Events rejected, per workspace and field"
    );
    metrics::describe_counter!(
        "quiver_events_duplicate_total",
        "Events dropped as duplicates of an earlier event_id"
    );
    metrics::describe_counter!(
        "quiver_identifiers_dropped_total",
        "Junk identifier values dropped from events, per reason"
    );
    metrics::describe_histogram!(
        "quiver_wal_fsync_seconds",
        metrics::Unit::Seconds,
        "WAL group-commit fsync latency"
    );
    metrics::describe_histogram!(
        "quiver_flush_seconds",
        metrics::Unit::Seconds,
        "Memtable flush to Delta, end to end"
    );
    metrics::describe_histogram!(
        "quiver_delta_commit_seconds",
        metrics::Unit::Seconds,
        "Delta write + commit of one flush"
    );
    metrics::describe_gauge!(
        "quiver_memtable_rows",
        "Rows in the active memtable, per workspace"
    );
    Ok(())
}
