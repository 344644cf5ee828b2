//! `quiver.v1.AnalyticsService`: funnels, retention, attribution. Proto in,
//! engine call, proto out.

use std::sync::Arc;

use quiver_engine::Engine;
use quiver_engine::analytics::{AttributionRequest, FunnelRequest, Period, RetentionRequest};
use quiver_proto::v1 as pb;
use quiver_proto::v1::analytics_service_server::AnalyticsService;
use tonic::{Request, Response, Status};

use crate::error::{invalid, status};

/// The service.
pub struct Analytics {
    pub engine: Arc<Engine>,
}

const DAY_MS: i64 = 86_400_000;

/// A time bound in ms as µs (`0`: none).
fn bound(ms: i64) -> Option<i64> {
    (ms != 0).then(|| ms.saturating_mul(1000))
}

fn text(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

/// Runs a report on the blocking pool: a funnel over millions of events
/// computes for tens of milliseconds on every core, and on an async worker
/// it would hold up every other call that worker serves.
async fn off_workers<T: Send + 'static>(
    report: impl Future<Output = quiver_engine::Result<T>> + Send + 'static,
) -> Result<T, Status> {
    let rt = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || rt.block_on(report))
        .await
        .map_err(|e| Status::internal(format!("report task failed: {e}")))?
        .map_err(status)
}

fn meta(identity_run: u64, events_version: u64, elapsed: std::time::Duration) -> pb::AnalyticsMeta {
    pb::AnalyticsMeta {
        identity_run,
        events_version,
        micros: elapsed.as_micros() as u64,
    }
}

/// The `[from, to)` of a retention request, µs: `to` defaults to now,
/// `from` to `periods` periods before `to`.
pub fn retention_span(period: Period, periods: u32, from_ms: i64, to_ms: i64) -> (i64, i64) {
    let to = if to_ms != 0 {
        to_ms
    } else {
        chrono::Utc::now().timestamp_millis()
    };
    let len = match period {
        Period::Day => DAY_MS,
        Period::Week => 7 * DAY_MS,
    };
    let from = if from_ms != 0 {
        from_ms
    } else {
        to - len * i64::from(periods)
    };
    (from.saturating_mul(1000), to.saturating_mul(1000))
}

#[tonic::async_trait]
impl AnalyticsService for Analytics {
    async fn funnel(
        &self,
        request: Request<pb::FunnelRequest>,
    ) -> Result<Response<pb::FunnelResponse>, Status> {
        let r = request.into_inner();
        let ws = self.engine.workspace(&r.workspace).map_err(status)?;
        if r.window_seconds < 0 {
            return Err(invalid(
                "window_seconds",
                format!("{}: must be positive", r.window_seconds),
            ));
        }
        let window = if r.window_seconds == 0 {
            7 * 86_400
        } else {
            r.window_seconds
        };
        let req = FunnelRequest {
            steps: r.steps,
            window: window.saturating_mul(1_000_000),
            from: bound(r.from_unix_ms),
            to: bound(r.to_unix_ms),
            breakdown: text(&r.breakdown),
        };
        let f = off_workers(async move { ws.funnel(&req).await }).await?;
        Ok(Response::new(pb::FunnelResponse {
            steps: f
                .steps
                .iter()
                .map(|s| pb::FunnelStep {
                    step: s.step.clone(),
                    persons: s.persons,
                    from_previous: s.from_previous,
                    from_first: s.from_first,
                    median_seconds_from_previous: s.median_seconds_from_previous,
                })
                .collect(),
            breakdown: f
                .breakdown
                .iter()
                .map(|(v, p)| pb::FunnelGroup {
                    value: v.clone(),
                    persons: p.clone(),
                })
                .collect(),
            meta: Some(meta(f.identity_run, f.events_version, f.elapsed)),
        }))
    }

    async fn retention(
        &self,
        request: Request<pb::RetentionRequest>,
    ) -> Result<Response<pb::RetentionResponse>, Status> {
        let r = request.into_inner();
        let ws = self.engine.workspace(&r.workspace).map_err(status)?;
        let period = match pb::RetentionPeriod::try_from(r.period) {
            Ok(pb::RetentionPeriod::Day) => Period::Day,
            Ok(pb::RetentionPeriod::Week) => Period::Week,
            Err(_) => return Err(invalid("period", format!("unknown value {}", r.period))),
        };
        let periods = if r.periods == 0 { 12 } else { r.periods };
        let (from, to) = retention_span(period, periods, r.from_unix_ms, r.to_unix_ms);
        let req = RetentionRequest {
            cohort_event: text(&r.cohort_event),
            return_event: text(&r.return_event),
            period,
            periods,
            from,
            to,
        };
        let m = off_workers(async move { ws.retention(&req).await }).await?;
        Ok(Response::new(pb::RetentionResponse {
            cohorts: m
                .cohorts
                .iter()
                .map(|c| pb::Cohort {
                    start_unix_ms: c.start.div_euclid(1000),
                    persons: c.persons,
                    retained: c.retained.clone(),
                })
                .collect(),
            meta: Some(meta(m.identity_run, m.events_version, m.elapsed)),
        }))
    }

    async fn attribution(
        &self,
        request: Request<pb::AttributionRequest>,
    ) -> Result<Response<pb::AttributionResponse>, Status> {
        let r = request.into_inner();
        let ws = self.engine.workspace(&r.workspace).map_err(status)?;
        let req = AttributionRequest {
            conversion: text(&r.conversion),
            touch: text(&r.touch),
            lookback: (r.lookback_days != 0).then(|| i64::from(r.lookback_days) * DAY_MS * 1000),
            from: bound(r.from_unix_ms),
            to: bound(r.to_unix_ms),
        };
        let a = off_workers(async move { ws.attribution(&req).await }).await?;
        Ok(Response::new(pb::AttributionResponse {
            conversions: a.conversions,
            channels: a
                .channels
                .iter()
                .map(|c| pb::ChannelCredit {
                    channel: c.channel.clone(),
                    first_touch: c.first_touch,
                    last_touch: c.last_touch,
                    linear: c.linear,
                    first_touch_revenue: c.first_touch_revenue,
                    last_touch_revenue: c.last_touch_revenue,
                    linear_revenue: c.linear_revenue,
                })
                .collect(),
            meta: Some(meta(a.identity_run, a.events_version, a.elapsed)),
        }))
    }
}
