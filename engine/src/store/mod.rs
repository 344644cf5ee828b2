//! Storage: the [`Engine`] (the registry of workspaces under the data
//! directory) and each [`Workspace`]'s write path.
//!
//! Layout of the data directory (local; the same layout on object storage later):
//!
//! ```text
//! <data_dir>/workspaces/<name>/workspace.json   name, created_at
//! <data_dir>/workspaces/<name>/wal/*.wal        write-ahead log segments (see `wal`)
//! <data_dir>/workspaces/<name>/events/          Delta Lake table, partitioned by event_date
//! ```
//!
//! Queries are not here: see `query`.

pub(crate) mod datafiles;
mod dedup;
mod memtable;
pub(crate) mod table;
#[cfg(test)]
mod tests;
mod wal;
mod workspace;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

pub(crate) use table::provider as table_provider;
pub(crate) use table::session_config;
pub(crate) use workspace::now_micros;
pub use workspace::{FlushReport, OptimizeReport, Workspace, WorkspaceInfo};

use crate::event::Normalizer;
use crate::{EngineConfig, Error, Result};

#[derive(Debug, Serialize, Deserialize)]
struct WorkspaceMeta {
    name: String,
    created_at: i64,
}

/// The engine: every workspace under one data directory.
pub struct Engine {
    cfg: EngineConfig,
    root: PathBuf,
    norm: Arc<Normalizer>,
    workspaces: RwLock<BTreeMap<String, Arc<Workspace>>>,
    create_lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("root", &self.root).finish()
    }
}

/// Checks a workspace name: 1–63 of `[a-z0-9_-]`, starting with a letter or digit.
pub fn check_workspace_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "workspace",
            format!("`{name}` must be 1-63 of lower-case letters, digits, `_` and `-`"),
        ))
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io(dir, e))?;
    }
    Ok(())
}

impl Engine {
    /// Opens the data directory (creating it), replaying every workspace's WAL.
    /// Must be called within a tokio runtime.
    pub async fn open(cfg: EngineConfig) -> Result<Arc<Engine>> {
        let root = cfg.data_dir.join("workspaces");
        std::fs::create_dir_all(&root).map_err(|e| Error::io(&root, e))?;
        let norm = Arc::new(Normalizer::new(&cfg.normalize)?);
        let engine = Arc::new(Engine {
            cfg,
            root: root.clone(),
            norm,
            workspaces: RwLock::new(BTreeMap::new()),
            create_lock: tokio::sync::Mutex::new(()),
        });
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
            .map_err(|e| Error::io(&root, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join("workspace.json").is_file())
            .collect();
        dirs.sort();
        for dir in dirs {
            let meta_path = dir.join("workspace.json");
            let bytes = std::fs::read(&meta_path).map_err(|e| Error::io(&meta_path, e))?;
            let meta: WorkspaceMeta = serde_json::from_slice(&bytes)
                .map_err(|e| Error::Config(format!("`{}`: {e}", meta_path.display())))?;
            let ws = Workspace::open(
                &meta.name,
                &dir,
                meta.created_at,
                engine.cfg.store.clone(),
                engine.norm.clone(),
                engine.cfg.tags.clone(),
            )
            .await?;
            engine.workspaces.write().insert(meta.name, ws);
        }
        Ok(engine)
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Creates a workspace; [`Error::AlreadyExists`] if it does.
    pub async fn create_workspace(&self, name: &str) -> Result<Arc<Workspace>> {
        check_workspace_name(name)?;
        let _g = self.create_lock.lock().await;
        if self.workspaces.read().contains_key(name) {
            return Err(Error::AlreadyExists {
                what: "workspace",
                name: name.into(),
            });
        }
        let dir = self.root.join(name);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let created_at = workspace::now_micros();
        let ws = Workspace::open(
            name,
            &dir,
            created_at,
            self.cfg.store.clone(),
            self.norm.clone(),
            self.cfg.tags.clone(),
        )
        .await?;
        let meta = serde_json::to_vec_pretty(&WorkspaceMeta {
            name: name.into(),
            created_at,
        })
        .map_err(|e| Error::Internal(e.to_string()))?;
        // the meta file is written last: a crash before it leaves no half workspace
        write_atomic(&dir.join("workspace.json"), &meta)?;
        self.workspaces.write().insert(name.into(), ws.clone());
        tracing::info!(ws = %name, "workspace created");
        Ok(ws)
    }

    /// The workspace `name`, or [`Error::NotFound`].
    pub fn workspace(&self, name: &str) -> Result<Arc<Workspace>> {
        self.workspaces
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| Error::NotFound {
                what: "workspace",
                name: name.into(),
            })
    }

    /// Every workspace, by name.
    pub fn list_workspaces(&self) -> Vec<WorkspaceInfo> {
        let all: Vec<Arc<Workspace>> = self.workspaces.read().values().cloned().collect();
        all.iter().map(|w| w.info()).collect()
    }

    /// Drops a workspace and deletes its data.
    pub async fn drop_workspace(&self, name: &str) -> Result<()> {
        let _g = self.create_lock.lock().await;
        let ws = self
            .workspaces
            .write()
            .remove(name)
            .ok_or_else(|| Error::NotFound {
                what: "workspace",
                name: name.into(),
            })?;
        // An identity run, or a snapshot writer a failed one left behind,
        // finishes before the directory goes (the identity lock first, as a
        // run takes it before it flushes).
        let _i = ws.identity_lock().await;
        let _w = ws.write_guard().await;
        ws.close();
        let dir = ws.dir().to_path_buf();
        std::fs::remove_file(dir.join("workspace.json")).map_err(|e| Error::io(&dir, e))?;
        std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        tracing::info!(ws = %name, "workspace dropped");
        Ok(())
    }

    /// Flushes every workspace's memtable to Delta (on shutdown).
    pub async fn flush_all(&self) -> Result<()> {
        let all: Vec<Arc<Workspace>> = self.workspaces.read().values().cloned().collect();
        for ws in all {
            ws.flush().await?;
        }
        Ok(())
    }
}
