//! Client side of the CLI: talks to a running server over gRPC like any
//! other client would.

pub mod analytics;
pub mod identity;
pub mod ingest;
pub mod output;
pub mod segments;
pub mod tags;

use anyhow::Context;
use arrow::array::RecordBatch;
use arrow::ipc::reader::StreamReader;
use futures::StreamExt;
use quiver_proto::v1 as pb;
use quiver_proto::v1::query_service_client::QueryServiceClient;
use quiver_proto::v1::workspace_service_client::WorkspaceServiceClient;
use tonic::transport::{Channel, Endpoint};

use crate::cli::WorkspaceAction;
use crate::service::MAX_MESSAGE_BYTES;

/// Connects to `url` (`http://host:port`).
pub async fn connect(url: &str) -> anyhow::Result<Channel> {
    let url = if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    };
    Endpoint::from_shared(url.clone())
        .with_context(|| format!("`{url}` is not a server URL"))?
        .tcp_nodelay(true)
        .initial_stream_window_size(crate::service::STREAM_WINDOW_BYTES)
        .initial_connection_window_size(crate::service::CONNECTION_WINDOW_BYTES)
        .connect()
        .await
        .with_context(|| format!("cannot connect to {url}"))
}

/// A status as a one-line error.
pub fn status_error(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{} ({:?})", s.message(), s.code())
}

/// Runs SQL and collects the result.
pub async fn sql(
    channel: Channel,
    workspace: &str,
    query: &str,
) -> anyhow::Result<Vec<RecordBatch>> {
    let mut client = QueryServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
    let mut stream = client
        .sql(pb::SqlRequest {
            workspace: workspace.into(),
            query: query.into(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let mut out = Vec::new();
    while let Some(msg) = stream.next().await {
        let msg = msg.map_err(status_error)?;
        let reader = StreamReader::try_new(msg.arrow_ipc.as_slice(), None)?;
        for b in reader {
            out.push(b?);
        }
    }
    Ok(out)
}

/// `quiver workspace ...`.
pub async fn workspace(
    channel: Channel,
    action: WorkspaceAction,
    default: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let mut c = WorkspaceServiceClient::new(channel);
    let pick = |n: Option<String>| -> anyhow::Result<String> {
        n.or_else(|| default.map(str::to_string))
            .context("name the workspace (or pass --workspace)")
    };
    match action {
        WorkspaceAction::Create { name } => {
            let info = c
                .create_workspace(pb::CreateWorkspaceRequest { name })
                .await
                .map_err(status_error)?
                .into_inner();
            output::workspaces(&[info], json);
        }
        WorkspaceAction::List => {
            let list = c
                .list_workspaces(pb::ListWorkspacesRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            output::workspaces(&list.workspaces, json);
        }
        WorkspaceAction::Drop { name } => {
            c.drop_workspace(pb::DropWorkspaceRequest { name: name.clone() })
                .await
                .map_err(status_error)?;
            output::message(&format!("dropped workspace `{name}`"), json);
        }
        WorkspaceAction::Flush { name } => {
            let r = c
                .flush(pb::FlushRequest {
                    workspace: pick(name)?,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            output::message(
                &format!(
                    "flushed {} rows (Delta version {}) in {:.3}s",
                    r.rows, r.version, r.seconds
                ),
                json,
            );
        }
        WorkspaceAction::Optimize { name } => {
            let r = c
                .optimize(pb::OptimizeRequest {
                    workspace: pick(name)?,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            output::message(
                &format!(
                    "compacted {} files into {} (Delta version {})",
                    r.files_removed, r.files_added, r.version
                ),
                json,
            );
        }
    }
    Ok(())
}
