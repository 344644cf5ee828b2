//! `quiver.v1.IngestService`: event batches in, one ack per batch after fsync.
//!
//! A stream is pipelined: up to [`IN_FLIGHT`] batches of one stream are
//! validated and waiting for their fsync at once (so one client fills a group
//! commit on its own), while acks go back strictly in request order.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use quiver_engine::Engine;
use quiver_proto::v1 as pb;
use quiver_proto::v1::ingest_service_server::IngestService;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::convert;
use crate::error::status;

/// Batches of one stream in flight at once.
pub const IN_FLIGHT: usize = 8;

/// The service.
pub struct Ingest {
    pub engine: Arc<Engine>,
}

async fn ingest_one(engine: Arc<Engine>, req: pb::IngestRequest) -> Result<pb::IngestAck, Status> {
    let ws = engine.workspace(&req.workspace).map_err(status)?;
    let report = ws
        .ingest(req.events.iter().map(convert::raw_event))
        .await
        .map_err(status)
        .map_err(|s| {
            Status::new(
                s.code(),
                format!("batch {}: {}", req.batch_seq, s.message()),
            )
        })?;
    Ok(convert::ack(req.batch_seq, report))
}

type AckStream = Pin<Box<dyn Stream<Item = Result<pb::IngestAck, Status>> + Send>>;

#[tonic::async_trait]
impl IngestService for Ingest {
    type IngestStream = AckStream;

    async fn ingest(
        &self,
        request: Request<Streaming<pb::IngestRequest>>,
    ) -> Result<Response<Self::IngestStream>, Status> {
        let mut inbound = request.into_inner();
        let engine = self.engine.clone();
        let (pending_tx, mut pending_rx) =
            mpsc::channel::<tokio::task::JoinHandle<Result<pb::IngestAck, Status>>>(IN_FLIGHT);
        let (out_tx, out_rx) = mpsc::channel(IN_FLIGHT);
        // reader: spawn each batch as it arrives; the bounded queue is the window
        let err_tx = out_tx.clone();
        tokio::spawn(async move {
            while let Some(msg) = inbound.next().await {
                match msg {
                    Ok(req) => {
                        let h = tokio::spawn(ingest_one(engine.clone(), req));
                        if pending_tx.send(h).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "ingest stream broke");
                        let _ = err_tx.send(Err(e)).await;
                        return;
                    }
                }
            }
        });
        // writer: acks in request order; the first error ends the stream
        tokio::spawn(async move {
            while let Some(h) = pending_rx.recv().await {
                let r = match h.await {
                    Ok(r) => r,
                    Err(e) => Err(Status::internal(format!("ingest task failed: {e}"))),
                };
                let stop = r.is_err();
                if out_tx.send(r).await.is_err() || stop {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out_rx))))
    }

    async fn ingest_batch(
        &self,
        request: Request<pb::IngestRequest>,
    ) -> Result<Response<pb::IngestAck>, Status> {
        ingest_one(self.engine.clone(), request.into_inner())
            .await
            .map(Response::new)
    }
}
