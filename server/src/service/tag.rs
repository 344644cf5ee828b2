//! `quiver.v1.TagService`: definitions, refresh (streamed progress, then the
//! report), coverage per version, manual uploads, bitmap export.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use quiver_engine::Engine;
use quiver_engine::tag::{
    DefinitionFormat, RefreshReport, TagCoverage, TagDef, TagDefinitions, TagKind,
};
use quiver_proto::v1 as pb;
use quiver_proto::v1::tag_service_server::TagService;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::error::{invalid, status};

/// The service.
pub struct Tags {
    pub engine: Arc<Engine>,
}

/// Bytes per `ExportTagChunk`.
const CHUNK_BYTES: usize = 1 << 20;

fn definition(t: TagDef) -> pb::TagDefinition {
    pb::TagDefinition {
        name: t.name,
        kind: t.kind.as_str().to_string(),
        description: t.description,
        rule: t.rule.unwrap_or_default(),
        source: t.source.unwrap_or_default(),
        values: t.values.unwrap_or_default(),
    }
}

fn definitions(d: TagDefinitions) -> Result<pb::TagDefinitions, Status> {
    let toml = d.to_toml().map_err(status)?;
    Ok(pb::TagDefinitions {
        dimensions: d.behaviour.dimensions.clone(),
        tags: d.tags.into_iter().map(definition).collect(),
        toml,
    })
}

fn value_counts(v: Vec<(String, u64)>) -> Vec<pb::ValueCount> {
    v.into_iter()
        .map(|(value, count)| pb::ValueCount { value, count })
        .collect()
}

fn coverage(c: TagCoverage) -> pb::TagCoverage {
    pb::TagCoverage {
        name: c.name,
        kind: c.kind,
        count: c.count,
        values: value_counts(c.values),
        unknown_identifiers: c.unknown_identifiers,
    }
}

pub(crate) fn refresh_report(r: RefreshReport) -> pb::RefreshReport {
    pb::RefreshReport {
        version: r.version,
        now_unix_ms: r.now.div_euclid(1000),
        events: r.events,
        unattributed_events: r.unattributed_events,
        persons: r.persons,
        tags: r.tags.into_iter().map(coverage).collect(),
        behaviour_keys: r.behaviour_keys,
        index_bytes: r.index_bytes,
        phases: r
            .phases
            .into_iter()
            .map(|(phase, seconds)| pb::PhaseTime { phase, seconds })
            .collect(),
        seconds: r.seconds,
        events_read: r.events_read,
        incremental: r.incremental,
        full_reason: r.full_reason,
    }
}

type RefreshStream = Pin<Box<dyn Stream<Item = Result<pb::RefreshTagsUpdate, Status>> + Send>>;
type ExportStream = Pin<Box<dyn Stream<Item = Result<pb::ExportTagChunk, Status>> + Send>>;

#[tonic::async_trait]
impl TagService for Tags {
    type RefreshStream = RefreshStream;
    type ExportStream = ExportStream;

    async fn define(
        &self,
        request: Request<pb::DefineTagsRequest>,
    ) -> Result<Response<pb::TagDefinitions>, Status> {
        let req = request.into_inner();
        let ws = self.engine.workspace(&req.workspace).map_err(status)?;
        let format = match pb::DefinitionFormat::try_from(req.format) {
            Ok(pb::DefinitionFormat::Toml) => DefinitionFormat::Toml,
            Ok(pb::DefinitionFormat::Json) => DefinitionFormat::Json,
            Err(_) => return Err(invalid("format", format!("unknown format {}", req.format))),
        };
        let new = TagDefinitions::parse(&req.text, format).map_err(status)?;
        if new.tags.is_empty() {
            return Err(invalid("text", "defines no tag (`[[tag]]` tables)"));
        }
        let defs = ws.define_tags(&new).await.map_err(status)?;
        Ok(Response::new(definitions(defs)?))
    }

    async fn list(
        &self,
        request: Request<pb::ListTagsRequest>,
    ) -> Result<Response<pb::ListTagsResponse>, Status> {
        let req = request.into_inner();
        let ws = self.engine.workspace(&req.workspace).map_err(status)?;
        let tags = ws
            .list_tags()
            .map_err(status)?
            .into_iter()
            .map(|t| pb::TagSummary {
                definition: Some(definition(t.def)),
                count: t.count,
                persons: t.persons,
                version: t.version,
            })
            .collect();
        Ok(Response::new(pb::ListTagsResponse { tags }))
    }

    async fn drop(
        &self,
        request: Request<pb::DropTagRequest>,
    ) -> Result<Response<pb::DropTagResponse>, Status> {
        let req = request.into_inner();
        let ws = self.engine.workspace(&req.workspace).map_err(status)?;
        ws.drop_tag(&req.name).await.map_err(status)?;
        Ok(Response::new(pb::DropTagResponse {}))
    }

    async fn refresh(
        &self,
        request: Request<pb::RefreshTagsRequest>,
    ) -> Result<Response<Self::RefreshStream>, Status> {
        let req = request.into_inner();
        let ws = self.engine.workspace(&req.workspace).map_err(status)?;
        let now = (req.now_unix_ms != 0).then(|| req.now_unix_ms.saturating_mul(1000));
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let progress_tx = tx.clone();
            let progress = move |p: quiver_engine::identity::Progress| {
                // Best effort: a slow client drops updates, never the refresh.
                let _ = progress_tx.try_send(Ok(pb::RefreshTagsUpdate {
                    update: Some(pb::refresh_tags_update::Update::Progress(
                        pb::ResolveProgress {
                            phase: p.phase.to_string(),
                            done: p.done,
                        },
                    )),
                }));
            };
            let last = match ws.refresh_tags_with(now, req.full, &progress).await {
                Ok(r) => Ok(pb::RefreshTagsUpdate {
                    update: Some(pb::refresh_tags_update::Update::Report(refresh_report(r))),
                }),
                Err(e) => Err(status(e)),
            };
            let _ = tx.send(last).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn show(
        &self,
        request: Request<pb::ShowTagRequest>,
    ) -> Result<Response<pb::ShowTagResponse>, Status> {
        let req = request.into_inner();
        let ws = self.engine.workspace(&req.workspace).map_err(status)?;
        let (def, versions) = ws.tag_versions(&req.name).map_err(status)?;
        Ok(Response::new(pb::ShowTagResponse {
            definition: Some(definition(def)),
            versions: versions
                .into_iter()
                .map(|v| pb::VersionCoverage {
                    version: v.version,
                    built_at_unix_ms: v.built_at.div_euclid(1000),
                    persons: v.persons,
                    count: v.count,
                    values: value_counts(v.values),
                })
                .collect(),
        }))
    }

    async fn upload(
        &self,
        request: Request<pb::UploadTagRequest>,
    ) -> Result<Response<pb::UploadTagResponse>, Status> {
        let req = request.into_inner();
        let ws = self.engine.workspace(&req.workspace).map_err(status)?;
        let r = ws
            .upload_manual_tag(&req.name, &req.identifiers)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::UploadTagResponse {
            identifiers: r.identifiers,
            matched: r.matched,
            persons: r.persons,
            unknown: r.unknown,
            unknown_examples: r.unknown_examples,
        }))
    }

    async fn export(
        &self,
        request: Request<pb::ExportTagRequest>,
    ) -> Result<Response<Self::ExportStream>, Status> {
        let req = request.into_inner();
        let ws = self.engine.workspace(&req.workspace).map_err(status)?;
        let defs = ws.tag_definitions().map_err(status)?;
        let def = defs.get(&req.name).ok_or_else(|| {
            status(quiver_engine::Error::NotFound {
                what: "tag",
                name: req.name.clone(),
            })
        })?;
        let index = ws.tag_index().map_err(status)?.ok_or_else(|| {
            Status::failed_precondition(format!(
                "tag `{}` has never been refreshed: run `quiver tags refresh`",
                req.name
            ))
        })?;
        let bitmap = match def.kind {
            TagKind::Boolean | TagKind::Manual => index.tags.get(&req.name).cloned(),
            TagKind::Enum => {
                if req.value.is_empty() {
                    return Err(invalid("value", "an enum tag exports one value: give `value`"));
                }
                index
                    .enums
                    .get(&req.name)
                    .map(|m| m.get(&req.value).cloned().unwrap_or_default())
            }
            TagKind::Numeric => index.numbers.get(&req.name).map(|n| n.bsi.exists().clone()),
        }
        .ok_or_else(|| {
            Status::failed_precondition(format!(
                "tag `{}` was defined after the latest refresh (version {}): run `quiver tags refresh`",
                req.name, index.version
            ))
        })?;
        let mut bytes = Vec::with_capacity(bitmap.serialized_size());
        bitmap
            .serialize_into(&mut bytes)
            .map_err(|e| Status::internal(format!("serialising the bitmap: {e}")))?;
        let cardinality = bitmap.len();
        let version = index.version;
        let chunks: Vec<Result<pb::ExportTagChunk, Status>> = if bytes.is_empty() {
            vec![Ok(pb::ExportTagChunk {
                data: Vec::new(),
                cardinality,
                version,
            })]
        } else {
            bytes
                .chunks(CHUNK_BYTES)
                .enumerate()
                .map(|(i, c)| {
                    Ok(pb::ExportTagChunk {
                        data: c.to_vec(),
                        cardinality: if i == 0 { cardinality } else { 0 },
                        version: if i == 0 { version } else { 0 },
                    })
                })
                .collect()
        };
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }
}
