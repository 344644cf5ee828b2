//! `quiver.v1.SegmentService`: count, breakdown, overlap, saved segments,
//! snapshots and diffs, splits, export. Proto in, engine call, proto out.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use quiver_engine::index::RoaringBitmap;
use quiver_engine::segment::{
    AudienceOptions, Evaluated, Expr, IdHash, SavedSegment, SnapshotInfo, parse_text_or_json,
};
use quiver_engine::{Engine, Workspace};
use quiver_proto::v1 as pb;
use quiver_proto::v1::segment_service_server::SegmentService;
use tonic::{Request, Response, Status};

use crate::error::{invalid, status};

/// The service.
pub struct Segments {
    pub engine: Arc<Engine>,
}

/// Bytes per roaring `ExportChunk`.
const CHUNK_BYTES: usize = 1 << 20;

type ExportStream = Pin<Box<dyn Stream<Item = Result<pb::ExportChunk, Status>> + Send>>;

fn workspace(engine: &Engine, name: &str) -> Result<Arc<Workspace>, Status> {
    engine.workspace(name).map_err(status)
}

/// The expression and options of an audience question.
fn question(a: Option<&pb::Audience>) -> Result<(Expr, AudienceOptions), Status> {
    let a = a.ok_or_else(|| invalid("audience", "missing"))?;
    let e = parse_text_or_json(&a.expression, &a.expression_json).map_err(status)?;
    let as_of = if a.as_of.trim().is_empty() {
        None
    } else {
        Some(
            chrono::NaiveDate::parse_from_str(a.as_of.trim(), "%Y-%m-%d").map_err(|e| {
                invalid("as_of", format!("`{}`: expected YYYY-MM-DD ({e})", a.as_of))
            })?,
        )
    };
    let now = (a.now_unix_ms != 0).then(|| a.now_unix_ms.saturating_mul(1000));
    Ok((e, AudienceOptions { now, as_of }))
}

fn evaluated<M>(a: &Evaluated<M>, e: &Expr) -> pb::Evaluated {
    pb::Evaluated {
        persons: a.persons,
        index_version: a.index_version,
        index_built_at_unix_ms: a.built_at.div_euclid(1000),
        now_unix_ms: a.now.div_euclid(1000),
        micros: a.elapsed.as_micros() as u64,
        expression: e.to_string(),
    }
}

fn bitmap_bytes(b: &RoaringBitmap) -> Result<Vec<u8>, Status> {
    let mut bytes = Vec::with_capacity(b.serialized_size());
    b.serialize_into(&mut bytes)
        .map_err(|e| Status::internal(format!("serialising a bitmap: {e}")))?;
    Ok(bytes)
}

fn saved(s: SavedSegment) -> pb::SavedSegment {
    pb::SavedSegment {
        name: s.name,
        expression: s.expression,
        description: s.description,
        created_at_unix_ms: s.created_at.div_euclid(1000),
        updated_at_unix_ms: s.updated_at.div_euclid(1000),
    }
}

fn snapshot(s: SnapshotInfo) -> pb::SnapshotInfo {
    pb::SnapshotInfo {
        id: s.id,
        segment: s.segment,
        expression: s.expression,
        taken_at_unix_ms: s.at.div_euclid(1000),
        now_unix_ms: s.now.div_euclid(1000),
        index_version: s.index_version,
        count: s.count,
    }
}

#[tonic::async_trait]
impl SegmentService for Segments {
    type ExportStream = ExportStream;

    async fn count(
        &self,
        request: Request<pb::CountRequest>,
    ) -> Result<Response<pb::CountResponse>, Status> {
        let req = request.into_inner();
        let ws = workspace(&self.engine, &req.workspace)?;
        let (e, opts) = question(req.audience.as_ref())?;
        let a = ws.count(&e, opts).map_err(status)?;
        Ok(Response::new(pb::CountResponse {
            count: a.members,
            evaluated: Some(evaluated(&a, &e)),
        }))
    }

    async fn breakdown(
        &self,
        request: Request<pb::BreakdownRequest>,
    ) -> Result<Response<pb::BreakdownResponse>, Status> {
        let req = request.into_inner();
        let ws = workspace(&self.engine, &req.workspace)?;
        let (e, opts) = question(req.audience.as_ref())?;
        if req.by.trim().is_empty() {
            return Err(invalid(
                "by",
                "missing: name an enumerated or numeric field",
            ));
        }
        let b = ws
            .breakdown(&e, req.by.trim(), &req.edges, opts)
            .map_err(status)?;
        Ok(Response::new(pb::BreakdownResponse {
            count: b.audience.members,
            rows: b
                .rows
                .into_iter()
                .map(|r| pb::BreakdownRow {
                    value: r.value,
                    count: r.count,
                })
                .collect(),
            evaluated: Some(evaluated(&b.audience, &e)),
        }))
    }

    async fn overlap(
        &self,
        request: Request<pb::OverlapRequest>,
    ) -> Result<Response<pb::OverlapResponse>, Status> {
        let req = request.into_inner();
        let ws = workspace(&self.engine, &req.workspace)?;
        let mut exprs = Vec::new();
        let mut opts = AudienceOptions::default();
        for (i, a) in req.audiences.iter().enumerate() {
            let (e, o) = question(Some(a))
                .map_err(|s| Status::new(s.code(), format!("audiences[{i}]: {}", s.message())))?;
            if i == 0 {
                opts = o;
            }
            exprs.push(e);
        }
        let quiver_engine::segment::Overlap {
            audiences,
            intersections: parts,
        } = ws.overlap(&exprs, opts).map_err(status)?;
        let mut ev = evaluated(&audiences[0], &exprs[0]);
        ev.micros = audiences.iter().map(|a| a.elapsed.as_micros() as u64).sum();
        ev.expression = exprs
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join(" | ");
        Ok(Response::new(pb::OverlapResponse {
            intersections: parts
                .into_iter()
                .map(|(of, count)| pb::Intersection {
                    of: of.into_iter().map(|i| i as u32).collect(),
                    count,
                })
                .collect(),
            evaluated: Some(ev),
        }))
    }

    async fn save(
        &self,
        request: Request<pb::SaveSegmentRequest>,
    ) -> Result<Response<pb::SavedSegment>, Status> {
        let req = request.into_inner();
        let ws = workspace(&self.engine, &req.workspace)?;
        let e = parse_text_or_json(&req.expression, &req.expression_json).map_err(status)?;
        let s = ws
            .save_segment(req.name.trim(), &e, &req.description)
            .await
            .map_err(status)?;
        Ok(Response::new(saved(s)))
    }

    async fn list(
        &self,
        request: Request<pb::ListSegmentsRequest>,
    ) -> Result<Response<pb::ListSegmentsResponse>, Status> {
        let req = request.into_inner();
        let ws = workspace(&self.engine, &req.workspace)?;
        let segments = ws.segments().map_err(status)?;
        Ok(Response::new(pb::ListSegmentsResponse {
            segments: segments.into_iter().map(saved).collect(),
        }))
    }

    async fn get(
        &self,
        request: Request<pb::GetSegmentRequest>,
    ) -> Result<Response<pb::SavedSegment>, Status> {
        let req = request.into_inner();
        let ws = workspace(&self.engine, &req.workspace)?;
        Ok(Response::new(saved(ws.segment(&req.name).map_err(status)?)))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteSegmentRequest>,
    ) -> Result<Response<pb::DeleteSegmentResponse>, Status> {
        let req = request.into_inner();
        let ws = workspace(&self.engine, &req.workspace)?;
        ws.delete_segment(&req.name).await.map_err(status)?;
        Ok(Response::new(pb::DeleteSegmentResponse {}))
    }

    async fn snapshot(
        &self,
        request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<pb::SnapshotInfo>, Status> {
        let req = request.into_inner();
        let ws = workspace(&self.engine, &req.workspace)?;
        let opts = AudienceOptions {
            now: (req.now_unix_ms != 0).then(|| req.now_unix_ms.saturating_mul(1000)),
            as_of: None,
        };
        let s = ws.snapshot_segment(&req.name, opts).await.map_err(status)?;
        Ok(Response::new(snapshot(s)))
    }

    async fn list_snapshots(
        &self,
        request: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<pb::ListSnapshotsResponse>, Status> {
        let req = request.into_inner();
        let ws = workspace(&self.engine, &req.workspace)?;
        let name = (!req.name.is_empty()).then_some(req.name.as_str());
        Ok(Response::new(pb::ListSnapshotsResponse {
            snapshots: ws
                .snapshots(name)
                .map_err(status)?
                .into_iter()
                .map(snapshot)
                .collect(),
        }))
    }

    async fn diff(
        &self,
        request: Request<pb::DiffRequest>,
    ) -> Result<Response<pb::DiffResponse>, Status> {
        let req = request.into_inner();
        let ws = workspace(&self.engine, &req.workspace)?;
        let d = ws.diff_snapshots(req.from_id, req.to_id).map_err(status)?;
        let bytes = |b: &RoaringBitmap| -> Result<Vec<u8>, Status> {
            if req.bitmaps {
                bitmap_bytes(b)
            } else {
                Ok(Vec::new())
            }
        };
        Ok(Response::new(pb::DiffResponse {
            entered: d.entered.len(),
            left: d.left.len(),
            stayed: d.stayed.len(),
            entered_bitmap: bytes(&d.entered)?,
            left_bitmap: bytes(&d.left)?,
            stayed_bitmap: bytes(&d.stayed)?,
            from: Some(snapshot(d.from)),
            to: Some(snapshot(d.to)),
        }))
    }

    async fn split(
        &self,
        request: Request<pb::SplitRequest>,
    ) -> Result<Response<pb::SplitResponse>, Status> {
        let req = request.into_inner();
        let ws = workspace(&self.engine, &req.workspace)?;
        let (e, opts) = question(req.audience.as_ref())?;
        let weights = if req.weights.is_empty() {
            vec![50, 50]
        } else {
            req.weights.clone()
        };
        let (a, groups) = ws
            .split(&e, &req.salt, &weights, &req.names, opts)
            .await
            .map_err(status)?;
        let groups = groups
            .into_iter()
            .map(|g| {
                Ok(pb::SplitGroup {
                    count: g.members.len(),
                    bitmap: if req.bitmaps {
                        bitmap_bytes(&g.members)?
                    } else {
                        Vec::new()
                    },
                    name: g.name,
                    weight: g.weight,
                })
            })
            .collect::<Result<Vec<_>, Status>>()?;
        Ok(Response::new(pb::SplitResponse {
            count: a.members.len(),
            groups,
            evaluated: Some(evaluated(&a, &e)),
        }))
    }

    async fn export(
        &self,
        request: Request<pb::ExportRequest>,
    ) -> Result<Response<Self::ExportStream>, Status> {
        let req = request.into_inner();
        let ws = workspace(&self.engine, &req.workspace)?;
        let (e, opts) = question(req.audience.as_ref())?;
        let a = ws.audience(&e, opts).map_err(status)?;
        let count = a.members.len();
        let ev = evaluated(&a, &e);
        let format = pb::ExportFormat::try_from(req.format)
            .map_err(|_| invalid("format", format!("unknown export format {}", req.format)))?;
        let first = move |mut c: pb::ExportChunk| {
            c.count = count;
            c.evaluated = Some(ev.clone());
            c
        };
        match format {
            pb::ExportFormat::Roaring => {
                let bytes = bitmap_bytes(&a.members)?;
                let mut chunks: Vec<Result<pb::ExportChunk, Status>> = bytes
                    .chunks(CHUNK_BYTES)
                    .map(|c| {
                        Ok(pb::ExportChunk {
                            data: c.to_vec(),
                            ..Default::default()
                        })
                    })
                    .collect();
                if chunks.is_empty() {
                    chunks.push(Ok(pb::ExportChunk::default()));
                }
                if let Some(Ok(c)) = chunks.first_mut() {
                    *c = first(std::mem::take(c));
                }
                Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
            }
            pb::ExportFormat::Ids => {
                if req.id_kind.trim().is_empty() {
                    return Err(invalid(
                        "id_kind",
                        "missing: person_id, phone, email, unionid, member, device or openid:<appid>",
                    ));
                }
                let hash = match pb::IdHash::try_from(req.hash) {
                    Ok(pb::IdHash::None) => IdHash::None,
                    Ok(pb::IdHash::Sha256) => IdHash::Sha256,
                    Err(_) => return Err(invalid("hash", format!("unknown hash {}", req.hash))),
                };
                let page = if req.page_size == 0 {
                    10_000
                } else {
                    req.page_size as usize
                };
                let pages = ws
                    .export_ids(a.members, req.id_kind.trim(), hash, page)
                    .await
                    .map_err(status)?;
                // The first chunk carries the count, even for an empty audience.
                let head =
                    futures::stream::once(async move { Ok(first(pb::ExportChunk::default())) });
                let body = pages.map(|p| match p {
                    Ok(ids) => Ok(pb::ExportChunk {
                        ids,
                        ..Default::default()
                    }),
                    Err(e) => Err(status(e)),
                });
                Ok(Response::new(Box::pin(head.chain(body))))
            }
        }
    }
}
