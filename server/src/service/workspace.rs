//! `quiver.v1.WorkspaceService`: create, list, drop, flush, optimize.

use std::sync::Arc;

use quiver_engine::{Engine, WorkspaceInfo};
use quiver_proto::v1 as pb;
use quiver_proto::v1::workspace_service_server::WorkspaceService;
use tonic::{Request, Response, Status};

use crate::error::status;

/// The service.
pub struct Workspaces {
    pub engine: Arc<Engine>,
}

fn info(i: WorkspaceInfo) -> pb::WorkspaceInfo {
    pb::WorkspaceInfo {
        name: i.name,
        created_at_unix_ms: i.created_at / 1000,
        events_version: i.events_version,
        events_files: i.events_files as u64,
        unflushed_rows: i.unflushed_rows as u64,
    }
}

#[tonic::async_trait]
impl WorkspaceService for Workspaces {
    async fn create_workspace(
        &self,
        request: Request<pb::CreateWorkspaceRequest>,
    ) -> Result<Response<pb::WorkspaceInfo>, Status> {
        let ws = self
            .engine
            .create_workspace(&request.into_inner().name)
            .await
            .map_err(status)?;
        Ok(Response::new(info(ws.info())))
    }

    async fn list_workspaces(
        &self,
        _request: Request<pb::ListWorkspacesRequest>,
    ) -> Result<Response<pb::ListWorkspacesResponse>, Status> {
        Ok(Response::new(pb::ListWorkspacesResponse {
            workspaces: self
                .engine
                .list_workspaces()
                .into_iter()
                .map(info)
                .collect(),
        }))
    }

    async fn get_workspace(
        &self,
        request: Request<pb::GetWorkspaceRequest>,
    ) -> Result<Response<pb::WorkspaceInfo>, Status> {
        let ws = self
            .engine
            .workspace(&request.into_inner().name)
            .map_err(status)?;
        Ok(Response::new(info(ws.info())))
    }

    async fn drop_workspace(
        &self,
        request: Request<pb::DropWorkspaceRequest>,
    ) -> Result<Response<pb::DropWorkspaceResponse>, Status> {
        self.engine
            .drop_workspace(&request.into_inner().name)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::DropWorkspaceResponse {}))
    }

    async fn flush(
        &self,
        request: Request<pb::FlushRequest>,
    ) -> Result<Response<pb::FlushResponse>, Status> {
        let ws = self
            .engine
            .workspace(&request.into_inner().workspace)
            .map_err(status)?;
        let r = ws.flush().await.map_err(status)?;
        Ok(Response::new(pb::FlushResponse {
            rows: r.rows as u64,
            version: r.version.unwrap_or(-1),
            seconds: r.elapsed.as_secs_f64(),
        }))
    }

    async fn optimize(
        &self,
        request: Request<pb::OptimizeRequest>,
    ) -> Result<Response<pb::OptimizeResponse>, Status> {
        let ws = self
            .engine
            .workspace(&request.into_inner().workspace)
            .map_err(status)?;
        ws.flush().await.map_err(status)?;
        let r = ws.optimize().await.map_err(status)?;
        Ok(Response::new(pb::OptimizeResponse {
            files_removed: r.files_removed,
            files_added: r.files_added,
            version: r.version,
        }))
    }
}
