//! The gRPC port: Quiver's services, Arrow Flight, grpc.health.v1 and
//! reflection, all on one listener. A thin adapter over the engine.

pub mod analytics;
pub mod auth;
pub mod convert;
pub mod flight;
pub mod identity;
pub mod ingest;
pub mod query;
pub mod segment;
pub mod tag;
pub mod workspace;

use std::net::SocketAddr;
use std::sync::Arc;

use arrow_flight::flight_service_server::FlightServiceServer;
use quiver_engine::Engine;
use quiver_proto::v1::analytics_service_server::AnalyticsServiceServer;
use quiver_proto::v1::identity_service_server::IdentityServiceServer;
use quiver_proto::v1::ingest_service_server::IngestServiceServer;
use quiver_proto::v1::query_service_server::QueryServiceServer;
use quiver_proto::v1::segment_service_server::SegmentServiceServer;
use quiver_proto::v1::tag_service_server::TagServiceServer;
use quiver_proto::v1::workspace_service_server::WorkspaceServiceServer;
use tokio::net::TcpListener;

/// Largest message accepted or sent (a batch of `store.max_batch_rows` events fits).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// Serves every service on `listener` until `shutdown` resolves.
pub async fn serve(
    engine: Arc<Engine>,
    auth: crate::config::AuthConfig,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<IngestServiceServer<ingest::Ingest>>()
        .await;
    health
        .set_serving::<WorkspaceServiceServer<workspace::Workspaces>>()
        .await;
    health
        .set_serving::<QueryServiceServer<query::Query>>()
        .await;
    health
        .set_serving::<FlightServiceServer<flight::Flight>>()
        .await;
    health
        .set_serving::<IdentityServiceServer<identity::Identity>>()
        .await;
    health.set_serving::<TagServiceServer<tag::Tags>>().await;
    health
        .set_serving::<SegmentServiceServer<segment::Segments>>()
        .await;
    health
        .set_serving::<AnalyticsServiceServer<analytics::Analytics>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(quiver_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let ingest = IngestServiceServer::new(ingest::Ingest {
        engine: engine.clone(),
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let workspaces = WorkspaceServiceServer::new(workspace::Workspaces {
        engine: engine.clone(),
    });
    let query = QueryServiceServer::new(query::Query {
        engine: engine.clone(),
    })
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let identity = IdentityServiceServer::new(identity::Identity {
        engine: engine.clone(),
    });
    let tags = TagServiceServer::new(tag::Tags {
        engine: engine.clone(),
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let segments = SegmentServiceServer::new(segment::Segments {
        engine: engine.clone(),
    })
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let analytics = AnalyticsServiceServer::new(analytics::Analytics {
        engine: engine.clone(),
    });
    let flight = FlightServiceServer::new(flight::Flight {
        engine: engine.clone(),
        auth: Arc::new(auth::Auth::new(&auth)),
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        // Ingest streams megabytes per batch: HTTP/2's 64 KiB default
        // windows would stall each one on window updates.
        .initial_stream_window_size(Some(STREAM_WINDOW_BYTES))
        .initial_connection_window_size(Some(CONNECTION_WINDOW_BYTES))
        .max_frame_size(Some(MAX_FRAME_BYTES))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(ingest)
        .add_service(workspaces)
        .add_service(query)
        .add_service(flight)
        .add_service(identity)
        .add_service(tags)
        .add_service(segments)
        .add_service(analytics)
        // The builder's `tcp_nodelay` applies only to listeners it binds
        // itself: accepted sockets get it here. Without it, a response
        // written in two pieces (a breakdown's data, then its trailers)
        // waits for the client's delayed ACK, ≈ 40 ms.
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await?;
    Ok(())
}

/// HTTP/2 flow-control window per stream (server and client alike).
pub const STREAM_WINDOW_BYTES: u32 = 8 << 20;
/// HTTP/2 flow-control window per connection.
pub const CONNECTION_WINDOW_BYTES: u32 = 32 << 20;
/// Largest HTTP/2 frame we accept.
pub const MAX_FRAME_BYTES: u32 = 1 << 20;

/// Binds `addr` (port 0 picks a free one).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))
}
