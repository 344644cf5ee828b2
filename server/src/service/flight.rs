//! Arrow Flight on the gRPC port. `DoPut` ingests record batches in the flat
//! event file schema (see `quiver_engine::event::FILE_COLUMNS`) with the same
//! validation, dedup and durability as `IngestService`: one `PutResult` per
//! batch, after fsync, whose `app_metadata` is the ack as JSON
//! (`{"batch":0,"accepted":..,"duplicates":..,"rejected":[{"row","field","value","reason"}],"dropped_identifiers":{..}}`).
//! The descriptor names the workspace: path `["<workspace>"]` (or
//! `["<workspace>", "events"]`), or cmd `{"workspace": "<name>"}`.
//! Flight SQL comes with the BI work; the other calls are `UNIMPLEMENTED`.

use std::pin::Pin;
use std::sync::Arc;

use arrow_flight::decode::{DecodedPayload, FlightDataDecoder};
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use futures::{Stream, StreamExt};
use quiver_engine::{Engine, IngestReport};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::error::{invalid, status};

/// The Flight service.
pub struct Flight {
    pub engine: Arc<Engine>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn workspace_of(d: &FlightDescriptor) -> Result<String, Status> {
    if let Some(first) = d.path.first() {
        if d.path.len() > 2 || d.path.get(1).is_some_and(|t| t != "events") {
            return Err(invalid(
                "flight_descriptor.path",
                format!(
                    "{:?}: expected [\"<workspace>\"] or [\"<workspace>\", \"events\"]",
                    d.path
                ),
            ));
        }
        return Ok(first.clone());
    }
    let v: serde_json::Value = serde_json::from_slice(&d.cmd).map_err(|e| {
        invalid(
            "flight_descriptor.cmd",
            format!("expected {{\"workspace\": \"<name>\"}}: {e}"),
        )
    })?;
    v.get("workspace")
        .and_then(|w| w.as_str())
        .map(str::to_string)
        .ok_or_else(|| invalid("flight_descriptor.cmd", "has no string `workspace`"))
}

/// The ack of one `DoPut` batch, as JSON.
pub fn ack_json(batch: u64, r: &IngestReport) -> Vec<u8> {
    let rejected: Vec<serde_json::Value> = r
        .rejected
        .iter()
        .map(|e| serde_json::json!({"row": e.row, "field": e.field, "value": e.value, "reason": e.reason}))
        .collect();
    let dropped: serde_json::Map<String, serde_json::Value> = r
        .dropped_identifiers
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::from(*v)))
        .collect();
    serde_json::json!({
        "batch": batch,
        "accepted": r.accepted,
        "duplicates": r.duplicates,
        "rejected": rejected,
        "dropped_identifiers": dropped,
    })
    .to_string()
    .into_bytes()
}

fn flight_status(e: FlightError) -> Status {
    match e {
        FlightError::Tonic(s) => *s,
        other => invalid("flight_data", other.to_string()),
    }
}

#[tonic::async_trait]
impl FlightService for Flight {
    type HandshakeStream = BoxStream<HandshakeResponse>;
    type ListFlightsStream = BoxStream<FlightInfo>;
    type DoGetStream = BoxStream<FlightData>;
    type DoPutStream = BoxStream<PutResult>;
    type DoExchangeStream = BoxStream<FlightData>;
    type DoActionStream = BoxStream<arrow_flight::Result>;
    type ListActionsStream = BoxStream<ActionType>;

    async fn do_put(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        let mut inbound = request.into_inner();
        let first = inbound
            .next()
            .await
            .ok_or_else(|| invalid("flight_data", "empty DoPut stream"))??;
        let descriptor = first.flight_descriptor.clone().ok_or_else(|| {
            invalid(
                "flight_descriptor",
                "the first message must name the workspace",
            )
        })?;
        let ws = self
            .engine
            .workspace(&workspace_of(&descriptor)?)
            .map_err(status)?;
        let data = futures::stream::once(async move { Ok(first) })
            .chain(inbound)
            .map(|r| r.map_err(|s| FlightError::Tonic(Box::new(s))));
        let mut decoder = FlightDataDecoder::new(data);
        let (pending_tx, mut pending_rx) = mpsc::channel::<
            tokio::task::JoinHandle<Result<PutResult, Status>>,
        >(super::ingest::IN_FLIGHT);
        let (out_tx, out_rx) = mpsc::channel(super::ingest::IN_FLIGHT);
        let err_tx = out_tx.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            while let Some(msg) = decoder.next().await {
                let batch = match msg {
                    Ok(m) => match m.payload {
                        DecodedPayload::RecordBatch(b) => b,
                        DecodedPayload::Schema(_) | DecodedPayload::None => continue,
                    },
                    Err(e) => {
                        let _ = err_tx.send(Err(flight_status(e))).await;
                        return;
                    }
                };
                let ws = ws.clone();
                let seq = n;
                n += 1;
                let h = tokio::spawn(async move {
                    let r = ws.ingest_arrow(&batch).await.map_err(|e| {
                        let s = status(e);
                        Status::new(s.code(), format!("batch {seq}: {}", s.message()))
                    })?;
                    Ok(PutResult {
                        app_metadata: ack_json(seq, &r).into(),
                    })
                });
                if pending_tx.send(h).await.is_err() {
                    return;
                }
            }
        });
        tokio::spawn(async move {
            while let Some(h) = pending_rx.recv().await {
                let r = h
                    .await
                    .unwrap_or_else(|e| Err(Status::internal(format!("ingest task failed: {e}"))));
                let stop = r.is_err();
                if out_tx.send(r).await.is_err() || stop {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out_rx))))
    }

    async fn handshake(
        &self,
        _request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        Err(Status::unimplemented(
            "handshake: authentication comes with the security work",
        ))
    }

    async fn list_flights(
        &self,
        _request: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        Err(Status::unimplemented("list_flights"))
    }

    async fn get_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        Err(Status::unimplemented(
            "get_flight_info: Flight SQL comes with the BI work",
        ))
    }

    async fn poll_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        Err(Status::unimplemented("poll_flight_info"))
    }

    async fn get_schema(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        Err(Status::unimplemented("get_schema"))
    }

    async fn do_get(
        &self,
        _request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        Err(Status::unimplemented(
            "do_get: use quiver.v1.QueryService/Sql",
        ))
    }

    async fn do_exchange(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        Err(Status::unimplemented("do_exchange"))
    }

    async fn do_action(
        &self,
        _request: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        Err(Status::unimplemented("do_action"))
    }

    async fn list_actions(
        &self,
        _request: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        Ok(Response::new(Box::pin(futures::stream::empty())))
    }
}
