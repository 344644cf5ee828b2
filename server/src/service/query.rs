//! `quiver.v1.QueryService`: SQL through DataFusion, streamed as Arrow IPC.

use std::pin::Pin;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::ipc::writer::StreamWriter;
use futures::{Stream, StreamExt};
use quiver_engine::Engine;
use quiver_proto::v1 as pb;
use quiver_proto::v1::query_service_server::QueryService;
use tonic::{Request, Response, Status};

use crate::error::status;

/// The service.
pub struct Query {
    pub engine: Arc<Engine>,
}

/// One self-contained IPC stream: schema + `batch`.
pub fn ipc(batch: &RecordBatch) -> Result<Vec<u8>, Status> {
    let mut out = Vec::new();
    let mut w = StreamWriter::try_new(&mut out, &batch.schema())
        .map_err(|e| Status::internal(e.to_string()))?;
    w.write(batch)
        .map_err(|e| Status::internal(e.to_string()))?;
    w.finish().map_err(|e| Status::internal(e.to_string()))?;
    drop(w);
    Ok(out)
}

type SqlStream = Pin<Box<dyn Stream<Item = Result<pb::SqlResponse, Status>> + Send>>;

#[tonic::async_trait]
impl QueryService for Query {
    type SqlStream = SqlStream;

    async fn sql(
        &self,
        request: Request<pb::SqlRequest>,
    ) -> Result<Response<Self::SqlStream>, Status> {
        let req = request.into_inner();
        let ws = self.engine.workspace(&req.workspace).map_err(status)?;
        let stream = ws.sql(&req.query).await.map_err(status)?;
        let schema = stream.schema();
        let first = RecordBatch::new_empty(schema);
        let head = futures::stream::once(async move { ipc(&first) });
        let body = stream.filter_map(|b| async move {
            match b {
                Ok(b) if b.num_rows() == 0 => None,
                Ok(b) => Some(ipc(&b)),
                Err(e) => Some(Err(Status::invalid_argument(format!("sql: {e}")))),
            }
        });
        let out = head
            .chain(body)
            .map(|r| r.map(|arrow_ipc| pb::SqlResponse { arrow_ipc }));
        Ok(Response::new(Box::pin(out)))
    }
}
