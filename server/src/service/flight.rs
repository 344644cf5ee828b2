//! Arrow Flight on the gRPC port: event ingest by `DoPut`, and Flight SQL
//! (the protocol BI tools and ADBC / JDBC drivers speak) over the engine's
//! SQL sessions (`quiver_engine::analytics`).
//!
//! - **Ingest**: `DoPut` with a path descriptor `["<workspace>"]` (or
//!   `["<workspace>", "events"]`) takes record batches in the flat event
//!   file schema (see `quiver_engine::event::FILE_COLUMNS`) with the same
//!   validation, dedup and durability as `IngestService`: one `PutResult`
//!   per batch, after fsync, whose `app_metadata` is the ack as JSON
//!   (`{"batch":0,"accepted":..,"duplicates":..,"rejected":[{"row","field","value","reason"}],"dropped_identifiers":{..}}`).
//! - **Flight SQL**: statements, prepared statements with parameters,
//!   `GetSqlInfo`, `GetCatalogs` (`quiver`), `GetDbSchemas` (one schema per
//!   workspace, and `information_schema`), `GetTables` (with columns),
//!   `GetTableTypes`. Read-only. A call sees the workspaces its
//!   authorization grants (see [`super::auth`]); header
//!   `x-quiver-workspace` names the default schema (else the only granted
//!   workspace, if there is one).

use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow_flight::decode::{DecodedPayload, FlightDataDecoder};
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, Any, CommandGetCatalogs, CommandGetDbSchemas,
    CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables, CommandPreparedStatementQuery,
    CommandStatementQuery, DoPutPreparedStatementResult, ProstMessageExt, SqlInfo,
    SqlSupportedCaseSensitivity, TicketStatementQuery,
};
use arrow_flight::{
    Action, FlightData, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest,
    HandshakeResponse, IpcMessage, PutResult, SchemaAsIpc, Ticket,
};
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;
use quiver_engine::analytics::{CATALOG, SqlSession};
use quiver_engine::{Engine, IngestReport};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use super::auth::{Auth, Grant};
use crate::error::{invalid, status};

/// The header naming a call's default workspace (schema).
pub const WORKSPACE_HEADER: &str = "x-quiver-workspace";

/// The Flight service.
pub struct Flight {
    pub engine: Arc<Engine>,
    pub auth: Arc<Auth>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn workspace_of(d: &FlightDescriptor) -> Result<String, Status> {
    match d.path.as_slice() {
        [ws] => Ok(ws.clone()),
        [ws, t] if t == "events" => Ok(ws.clone()),
        _ => Err(invalid(
            "flight_descriptor.path",
            format!(
                "{:?}: expected [\"<workspace>\"] or [\"<workspace>\", \"events\"]",
                d.path
            ),
        )),
    }
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

/// `DoPut` of events: record batches in the event file schema, acked one
/// `PutResult` per batch after fsync.
pub(super) async fn ingest(
    engine: &Engine,
    grant: &Grant,
    request: Request<PeekableFlightDataStream>,
) -> Result<Response<BoxStream<PutResult>>, Status> {
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
    let name = workspace_of(&descriptor)?;
    if !grant.allows(&name) {
        return Err(Status::permission_denied(format!(
            "workspace `{name}` is not granted to this connection"
        )));
    }
    let ws = engine.workspace(&name).map_err(status)?;
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

/// A prepared statement's handle: the query and, once bound, its
/// parameters as an Arrow IPC stream. The server keeps nothing: any
/// connection can run any handle it is given (under its own grant).
#[derive(Clone, PartialEq, Message)]
struct PreparedHandle {
    #[prost(string, tag = "1")]
    query: String,
    #[prost(bytes = "vec", optional, tag = "2")]
    params: Option<Vec<u8>>,
}

impl PreparedHandle {
    fn decode_from(bytes: &[u8]) -> Result<Self, Status> {
        PreparedHandle::decode(bytes).map_err(|e| {
            invalid(
                "prepared_statement_handle",
                format!("not a Quiver handle: {e}"),
            )
        })
    }

    fn bound(&self) -> Result<Option<RecordBatch>, Status> {
        let Some(bytes) = &self.params else {
            return Ok(None);
        };
        let reader = arrow::ipc::reader::StreamReader::try_new(bytes.as_slice(), None)
            .map_err(|e| invalid("parameters", e.to_string()))?;
        let schema = reader.schema();
        let batches = reader
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid("parameters", e.to_string()))?;
        let batch = arrow::compute::concat_batches(&schema, &batches)
            .map_err(|e| invalid("parameters", e.to_string()))?;
        Ok(Some(batch))
    }
}

/// `DataType` with view types replaced by their plain forms, which every
/// Flight SQL client (JDBC, older ADBC) reads.
fn plain_type(t: &DataType) -> DataType {
    match t {
        DataType::Utf8View => DataType::Utf8,
        DataType::BinaryView => DataType::Binary,
        DataType::List(f) => DataType::List(Arc::new(plain_field(f))),
        DataType::LargeList(f) => DataType::LargeList(Arc::new(plain_field(f))),
        DataType::Struct(fs) => DataType::Struct(fs.iter().map(|f| plain_field(f)).collect()),
        DataType::Map(f, sorted) => DataType::Map(Arc::new(plain_field(f)), *sorted),
        other => other.clone(),
    }
}

fn plain_field(f: &Field) -> Field {
    f.clone().with_data_type(plain_type(f.data_type()))
}

fn plain_schema(s: &Schema) -> SchemaRef {
    Arc::new(Schema::new_with_metadata(
        s.fields()
            .iter()
            .map(|f| plain_field(f))
            .collect::<Vec<_>>(),
        s.metadata().clone(),
    ))
}

/// `batch` in `target`'s (plain) types.
fn to_plain(batch: RecordBatch, target: &SchemaRef) -> Result<RecordBatch, FlightError> {
    if batch.schema().fields() == target.fields() {
        return Ok(batch);
    }
    let columns = batch
        .columns()
        .iter()
        .zip(target.fields())
        .map(|(c, f)| {
            if c.data_type() == f.data_type() {
                Ok(c.clone())
            } else {
                arrow::compute::cast(c, f.data_type())
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let opts = arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    Ok(RecordBatch::try_new_with_options(
        target.clone(),
        columns,
        &opts,
    )?)
}

fn ipc_schema(schema: &Schema) -> Result<prost::bytes::Bytes, Status> {
    let IpcMessage(bytes) = SchemaAsIpc::new(schema, &Default::default())
        .try_into()
        .map_err(|e: arrow::error::ArrowError| Status::internal(e.to_string()))?;
    Ok(bytes)
}

/// A `FlightInfo` whose one endpoint's ticket is `ticket`.
fn flight_info(
    schema: &Schema,
    ticket: impl ProstMessageExt,
    descriptor: FlightDescriptor,
) -> Result<Response<FlightInfo>, Status> {
    let ticket = Ticket::new(ticket.as_any().encode_to_vec());
    let info = FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| Status::internal(e.to_string()))?
        .with_endpoint(FlightEndpoint::new().with_ticket(ticket))
        .with_descriptor(descriptor);
    Ok(Response::new(info))
}

/// One metadata batch as a `DoGet` stream.
fn one_batch(
    batch: Result<RecordBatch, impl std::fmt::Display>,
) -> Result<Response<BoxStream<FlightData>>, Status> {
    let batch = batch.map_err(|e| Status::internal(e.to_string()))?;
    let schema = batch.schema();
    let stream = FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(futures::stream::once(async { Ok(batch) }))
        .map_err(Status::from);
    Ok(Response::new(Box::pin(stream)))
}

fn sql_info() -> &'static SqlInfoData {
    static INFO: OnceLock<SqlInfoData> = OnceLock::new();
    INFO.get_or_init(|| {
        let mut b = SqlInfoDataBuilder::new();
        b.append(SqlInfo::FlightSqlServerName, "Quiver");
        b.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
        b.append(SqlInfo::FlightSqlServerArrowVersion, "59");
        b.append(SqlInfo::FlightSqlServerReadOnly, true);
        b.append(SqlInfo::FlightSqlServerSql, true);
        b.append(SqlInfo::FlightSqlServerSubstrait, false);
        b.append(SqlInfo::FlightSqlServerTransaction, 0i32);
        b.append(SqlInfo::FlightSqlServerCancel, false);
        b.append(SqlInfo::SqlDdlCatalog, false);
        b.append(SqlInfo::SqlDdlSchema, false);
        b.append(SqlInfo::SqlDdlTable, false);
        b.append(
            SqlInfo::SqlIdentifierCase,
            SqlSupportedCaseSensitivity::SqlCaseSensitivityLowercase as i32,
        );
        b.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
        b.append(
            SqlInfo::SqlQuotedIdentifierCase,
            SqlSupportedCaseSensitivity::SqlCaseSensitivityCaseInsensitive as i32,
        );
        b.append(SqlInfo::SqlAllTablesAreSelectable, true);
        // A static table of known keys: building it cannot fail.
        #[allow(clippy::expect_used)]
        b.build().expect("static SqlInfo")
    })
}

impl Flight {
    /// The SQL session of a call: the granted workspaces, the default one
    /// from `x-quiver-workspace` (or the only granted one).
    fn session(&self, md: &MetadataMap) -> Result<SqlSession, Status> {
        let grant = self.auth.grant(md)?;
        let asked = md
            .get(WORKSPACE_HEADER)
            .map(|v| {
                v.to_str()
                    .map(str::to_string)
                    .map_err(|_| invalid(WORKSPACE_HEADER, "not ASCII"))
            })
            .transpose()?;
        let names: Vec<String> = self
            .engine
            .list_workspaces()
            .into_iter()
            .map(|w| w.name)
            .filter(|n| grant.allows(n))
            .collect();
        let default = match asked {
            Some(d) if names.contains(&d) => Some(d),
            Some(d) if grant.allows(&d) => {
                return Err(status(quiver_engine::Error::NotFound {
                    what: "workspace",
                    name: d,
                }));
            }
            Some(d) => {
                return Err(Status::permission_denied(format!(
                    "{WORKSPACE_HEADER}: workspace `{d}` is not granted to this connection"
                )));
            }
            None => match &grant {
                Grant::Only(only) if only.len() == 1 && names.len() == 1 => Some(names[0].clone()),
                _ => None,
            },
        };
        let workspaces = names
            .iter()
            .map(|n| self.engine.workspace(n))
            .collect::<Result<Vec<_>, _>>()
            .map_err(status)?;
        SqlSession::new(workspaces, default.as_deref()).map_err(status)
    }

    async fn run(
        &self,
        md: &MetadataMap,
        query: &str,
        params: Option<RecordBatch>,
    ) -> Result<Response<BoxStream<FlightData>>, Status> {
        let session = self.session(md)?;
        let (schema, stream) = session
            .execute(query, params.as_ref())
            .await
            .map_err(status)?;
        let target = plain_schema(&schema);
        let t = target.clone();
        let batches = stream
            .map_err(|e| FlightError::ExternalError(Box::new(e)))
            .and_then(move |b| futures::future::ready(to_plain(b, &t)));
        let out = FlightDataEncoderBuilder::new()
            .with_schema(target)
            .build(batches)
            .map_err(Status::from);
        Ok(Response::new(Box::pin(out)))
    }

    async fn describe(
        &self,
        md: &MetadataMap,
        query: &str,
    ) -> Result<(SchemaRef, SchemaRef), Status> {
        let session = self.session(md)?;
        let (columns, params) = session.describe(query).await.map_err(status)?;
        Ok((plain_schema(&columns), params))
    }
}

#[tonic::async_trait]
impl FlightSqlService for Flight {
    type FlightService = Flight;

    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<BoxStream<HandshakeResponse>>, Status> {
        let token = self.auth.handshake(request.metadata())?;
        let payload = token.clone().unwrap_or_default();
        let out = futures::stream::once(async move {
            Ok(HandshakeResponse {
                protocol_version: 0,
                payload: payload.into(),
            })
        });
        let mut response: Response<BoxStream<HandshakeResponse>> = Response::new(Box::pin(out));
        if let Some(token) = token {
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| Status::internal("token is not a header value"))?;
            response.metadata_mut().insert("authorization", value);
        }
        Ok(response)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let (schema, _) = self.describe(request.metadata(), &query.query).await?;
        let ticket = TicketStatementQuery {
            statement_handle: query.query.into_bytes().into(),
        };
        flight_info(&schema, ticket, request.into_inner())
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<BoxStream<FlightData>>, Status> {
        let query = String::from_utf8(ticket.statement_handle.to_vec())
            .map_err(|_| invalid("statement_handle", "not UTF-8"))?;
        self.run(request.metadata(), &query, None).await
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let (columns, params) = self.describe(request.metadata(), &query.query).await?;
        let handle = PreparedHandle {
            query: query.query,
            params: None,
        };
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: handle.encode_to_vec().into(),
            dataset_schema: ipc_schema(&columns)?,
            parameter_schema: ipc_schema(&params)?,
        })
    }

    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        self.auth.grant(request.metadata())?;
        let mut handle = PreparedHandle::decode_from(&query.prepared_statement_handle)?;
        let data = request
            .into_inner()
            .map_err(|s| FlightError::Tonic(Box::new(s)));
        let mut decoder = FlightDataDecoder::new(data);
        let mut schema: Option<SchemaRef> = None;
        let mut batches = Vec::new();
        while let Some(msg) = decoder.next().await {
            match msg.map_err(flight_status)?.payload {
                DecodedPayload::Schema(s) => schema = Some(s),
                DecodedPayload::RecordBatch(b) => batches.push(b),
                DecodedPayload::None => {}
            }
        }
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        if rows > 1 {
            return Err(invalid(
                "parameters",
                format!("bind one row of values, not {rows}"),
            ));
        }
        let schema = schema
            .or_else(|| batches.first().map(|b| b.schema()))
            .ok_or_else(|| invalid("parameters", "no schema was sent"))?;
        let mut bytes = Vec::new();
        {
            let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut bytes, &schema)
                .map_err(|e| invalid("parameters", e.to_string()))?;
            for b in &batches {
                w.write(b)
                    .map_err(|e| invalid("parameters", e.to_string()))?;
            }
            w.finish()
                .map_err(|e| invalid("parameters", e.to_string()))?;
        }
        handle.params = Some(bytes);
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(handle.encode_to_vec().into()),
        })
    }

    async fn get_flight_info_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let handle = PreparedHandle::decode_from(&cmd.prepared_statement_handle)?;
        let (schema, _) = self.describe(request.metadata(), &handle.query).await?;
        flight_info(&schema, cmd, request.into_inner())
    }

    async fn do_get_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<BoxStream<FlightData>>, Status> {
        let handle = PreparedHandle::decode_from(&query.prepared_statement_handle)?;
        let params = handle.bound()?;
        self.run(request.metadata(), &handle.query, params).await
    }

    async fn do_action_close_prepared_statement(
        &self,
        _query: ActionClosePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<(), Status> {
        // Handles hold everything: nothing to free.
        self.auth.grant(request.metadata())?;
        Ok(())
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.auth.grant(request.metadata())?;
        let schema = query.into_builder().schema();
        flight_info(&schema, query, request.into_inner())
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<Ticket>,
    ) -> Result<Response<BoxStream<FlightData>>, Status> {
        self.auth.grant(request.metadata())?;
        let mut b = query.into_builder();
        b.append(CATALOG);
        one_batch(b.build())
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.auth.grant(request.metadata())?;
        let schema = query.clone().into_builder().schema();
        flight_info(&schema, query, request.into_inner())
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<Ticket>,
    ) -> Result<Response<BoxStream<FlightData>>, Status> {
        let session = self.session(request.metadata())?;
        let mut b = query.into_builder();
        for ws in session.workspaces() {
            b.append(CATALOG, ws);
        }
        b.append(CATALOG, "information_schema");
        one_batch(b.build())
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.auth.grant(request.metadata())?;
        let schema = query.clone().into_builder().schema();
        flight_info(&schema, query, request.into_inner())
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<BoxStream<FlightData>>, Status> {
        let session = self.session(request.metadata())?;
        let mut b = query.into_builder();
        for t in session.tables().await.map_err(status)? {
            b.append(
                CATALOG,
                &t.schema_name,
                &t.name,
                t.table_type,
                &plain_schema(&t.schema),
            )
            .map_err(|e| Status::internal(e.to_string()))?;
        }
        one_batch(b.build())
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.auth.grant(request.metadata())?;
        let schema = query.into_builder().schema();
        flight_info(&schema, query, request.into_inner())
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<Ticket>,
    ) -> Result<Response<BoxStream<FlightData>>, Status> {
        self.auth.grant(request.metadata())?;
        let mut b = query.into_builder();
        b.append("TABLE");
        b.append("VIEW");
        one_batch(b.build())
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.auth.grant(request.metadata())?;
        let schema = query.clone().into_builder(sql_info()).schema();
        flight_info(&schema, query, request.into_inner())
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<Ticket>,
    ) -> Result<Response<BoxStream<FlightData>>, Status> {
        self.auth.grant(request.metadata())?;
        one_batch(query.into_builder(sql_info()).build())
    }

    async fn do_put_fallback(
        &self,
        request: Request<PeekableFlightDataStream>,
        message: Any,
    ) -> Result<Response<BoxStream<PutResult>>, Status> {
        if !message.type_url.is_empty() {
            return Err(Status::unimplemented(format!(
                "DoPut of `{}`: Quiver's Flight SQL is read-only; DoPut with a path descriptor [\"<workspace>\"] ingests events",
                message.type_url
            )));
        }
        let grant = self.auth.grant(request.metadata())?;
        ingest(&self.engine, &grant, request).await
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}
