//! `quiver.v1.IdentityService`: resolve (streamed progress, then the report),
//! person lookup, explain, rules.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use quiver_engine::Engine;
use quiver_engine::identity::{
    Explanation, IdentityRules, PersonKey, PersonView, ResolveOptions, ResolveReport, SeenEvent,
};
use quiver_proto::v1 as pb;
use quiver_proto::v1::identity_service_server::IdentityService;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::error::{invalid, status};

/// The service.
pub struct Identity {
    pub engine: Arc<Engine>,
}

fn ms(micros: i64) -> i64 {
    micros.div_euclid(1000)
}

pub(crate) fn report(r: ResolveReport) -> pb::ResolveReport {
    pb::ResolveReport {
        run: r.run,
        dry_run: r.dry_run,
        events: r.events,
        identifiers: r.identifiers,
        edges: r.edges,
        persons: r.persons,
        previous_persons: r.previous_persons,
        new_persons: r.new_persons,
        merges: r.merges,
        splits: r.splits,
        kept: r.kept,
        quarantined: r
            .quarantined
            .into_iter()
            .map(|q| pb::QuarantinedValue {
                kind: q.kind,
                value: q.value,
                persons: q.persons,
                limit: q.limit,
            })
            .collect(),
        quarantined_count: r.quarantined_count,
        refused: r
            .refused
            .into_iter()
            .map(|u| pb::RefusedUnion {
                a: u.a,
                b: u.b,
                class: u.class,
                would_hold: u.would_hold,
                cap: u.cap,
            })
            .collect(),
        refused_count: r.refused_count,
        blocked: r.blocked,
        phases: r
            .phases
            .into_iter()
            .map(|(phase, d)| pb::PhaseTime {
                phase: phase.to_string(),
                seconds: d.as_secs_f64(),
            })
            .collect(),
        seconds: r.elapsed.as_secs_f64(),
        incremental: r.incremental,
        touched_identifiers: r.touched_identifiers,
        tags_version: r.tags_version.unwrap_or(0),
    }
}

fn event(e: SeenEvent) -> pb::SeenEvent {
    pb::SeenEvent {
        event_id: e.event_id,
        event_time_unix_ms: ms(e.event_time),
        channel: e.channel,
        event_type: e.event_type,
        identifiers: e.identifiers,
    }
}

fn person(p: PersonView) -> pb::Person {
    pb::Person {
        person_id: p.person_id,
        ordinal: p.ordinal,
        created_at_unix_ms: ms(p.created_at),
        redirected_from: p.redirected_from.unwrap_or_default(),
        identifiers: p
            .identifiers
            .into_iter()
            .map(|i| pb::PersonIdentifier {
                kind: i.kind,
                value: i.value,
                first_seen_unix_ms: ms(i.first_seen),
                last_seen_unix_ms: ms(i.last_seen),
            })
            .collect(),
        first_seen_unix_ms: ms(p.first_seen),
        last_seen_unix_ms: ms(p.last_seen),
        latest_events: p.latest_events.into_iter().map(event).collect(),
        attributes: name_values(p.attributes),
        traits: name_values(p.traits),
        tags: name_values(p.tags),
        tags_version: p.tags_version,
    }
}

fn name_values(v: Vec<(String, String)>) -> Vec<pb::NameValue> {
    v.into_iter()
        .map(|(name, value)| pb::NameValue { name, value })
        .collect()
}

fn explanation(e: Explanation) -> pb::Explanation {
    pb::Explanation {
        same_person: e.same_person,
        person_a: e.person_a.unwrap_or_default(),
        person_b: e.person_b.unwrap_or_default(),
        chain: e
            .chain
            .into_iter()
            .map(|l| pb::Link {
                from: l.from,
                to: l.to,
                events: l.events,
                evidence: l.evidence.into_iter().map(event).collect(),
                blocked: l.blocked.unwrap_or_default(),
            })
            .collect(),
        reason: e.reason,
    }
}

fn identifier(field: &str, id: Option<pb::Identifier>) -> Result<(String, String), Status> {
    let id = id.ok_or_else(|| invalid(field, "an identifier (kind and value) is required"))?;
    if id.kind.is_empty() || id.value.is_empty() {
        return Err(invalid(field, "both kind and value are required"));
    }
    Ok((id.kind, id.value))
}

type ResolveStream = Pin<Box<dyn Stream<Item = Result<pb::ResolveUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl IdentityService for Identity {
    type ResolveStream = ResolveStream;

    async fn resolve(
        &self,
        request: Request<pb::ResolveRequest>,
    ) -> Result<Response<Self::ResolveStream>, Status> {
        let req = request.into_inner();
        let ws = self.engine.workspace(&req.workspace).map_err(status)?;
        let rules = if req.rules_toml.trim().is_empty() {
            None
        } else {
            Some(
                IdentityRules::from_toml(&req.rules_toml)
                    .map_err(|e| invalid("rules_toml", e.to_string()))?,
            )
        };
        let opts = ResolveOptions {
            dry_run: req.dry_run,
            full: req.full,
            rules,
        };
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let progress_tx = tx.clone();
            let progress = move |p: quiver_engine::identity::Progress| {
                // Progress is best effort: a slow client drops updates, never the run.
                let _ = progress_tx.try_send(Ok(pb::ResolveUpdate {
                    update: Some(pb::resolve_update::Update::Progress(pb::ResolveProgress {
                        phase: p.phase.to_string(),
                        done: p.done,
                    })),
                }));
            };
            let last = match ws.resolve(opts, &progress).await {
                Ok(r) => Ok(pb::ResolveUpdate {
                    update: Some(pb::resolve_update::Update::Report(report(r))),
                }),
                Err(e) => Err(status(e)),
            };
            let _ = tx.send(last).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_person(
        &self,
        request: Request<pb::GetPersonRequest>,
    ) -> Result<Response<pb::Person>, Status> {
        let req = request.into_inner();
        let ws = self.engine.workspace(&req.workspace).map_err(status)?;
        let key = match req.key {
            Some(pb::get_person_request::Key::Identifier(id)) => {
                let (k, v) = identifier("identifier", Some(id))?;
                PersonKey::Identifier(k, v)
            }
            Some(pb::get_person_request::Key::PersonId(id)) if !id.is_empty() => {
                PersonKey::PersonId(id)
            }
            _ => return Err(invalid("key", "give an identifier or a person_id")),
        };
        let p = ws.person(&key).await.map_err(status)?;
        Ok(Response::new(person(p)))
    }

    async fn explain(
        &self,
        request: Request<pb::ExplainRequest>,
    ) -> Result<Response<pb::Explanation>, Status> {
        let req = request.into_inner();
        let ws = self.engine.workspace(&req.workspace).map_err(status)?;
        let a = identifier("a", req.a)?;
        let b = identifier("b", req.b)?;
        let e = ws
            .explain((&a.0, &a.1), (&b.0, &b.1))
            .await
            .map_err(status)?;
        Ok(Response::new(explanation(e)))
    }

    async fn get_rules(
        &self,
        request: Request<pb::GetRulesRequest>,
    ) -> Result<Response<pb::Rules>, Status> {
        let req = request.into_inner();
        let ws = self.engine.workspace(&req.workspace).map_err(status)?;
        let rules = ws.identity_rules().map_err(status)?;
        Ok(Response::new(pb::Rules {
            toml: rules.to_toml(),
        }))
    }
}
