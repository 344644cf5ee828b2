//! Server configuration: a TOML file, then `QUIVER_*` environment variables,
//! then command-line flags, over defaults. Every key has a default; an
//! unknown key (in the file or the environment) is an error naming it.
//!
//! Environment keys: `QUIVER_` + the TOML path upper-cased, sections joined
//! by `__`: `QUIVER_LISTEN`, `QUIVER_DATA_DIR`, `QUIVER_STORE__FLUSH_INTERVAL_SECS`.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use quiver_engine::event::NormalizeConfig;
use quiver_engine::{EngineConfig, StoreConfig, TagsConfig};
use serde::Deserialize;

/// Environment variables that are CLI conveniences, not config keys.
const NOT_CONFIG: [&str; 4] = [
    "QUIVER_SERVER",
    "QUIVER_WORKSPACE",
    "QUIVER_TOKEN",
    "QUIVER_LOG",
];

/// Everything `quiver serve` runs with.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// gRPC + Flight listen address.
    pub listen: String,
    /// Prometheus metrics listen address (`off` to disable).
    pub metrics_listen: String,
    /// Data directory.
    pub data_dir: PathBuf,
    /// `text` or `json` logs.
    pub log_format: String,
    /// Write path.
    pub store: StoreConfig,
    /// Identifier normalisation.
    pub normalize: NormalizeConfig,
    /// Tag refreshes and index versions.
    pub tags: TagsConfig,
    /// Who may connect over Arrow Flight (SQL) and what each may see.
    pub auth: AuthConfig,
}

/// Access to the Flight port. With no tokens and no users (the default, for
/// a loopback server) every connection sees every workspace; otherwise each
/// Flight / Flight SQL call must carry `authorization: Bearer <token>`, a
/// configured token or one a basic-auth handshake returned.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `[[auth.tokens]] token = "…"  workspaces = ["shop"]` (`"*"`: all).
    pub tokens: Vec<TokenGrant>,
    /// `[[auth.users]] name = "bi"  password = "…"  workspaces = ["shop"]`.
    pub users: Vec<UserGrant>,
}

/// A bearer token and the workspaces it opens.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TokenGrant {
    /// The token, sent as `authorization: Bearer <token>`.
    pub token: String,
    /// Workspace names, or `"*"` for every workspace.
    pub workspaces: Vec<String>,
}

/// A user of the basic-auth handshake and the workspaces it opens.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UserGrant {
    /// User name.
    pub name: String,
    /// Password.
    pub password: String,
    /// Workspace names, or `"*"` for every workspace.
    pub workspaces: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:7070".into(),
            metrics_listen: "127.0.0.1:9090".into(),
            data_dir: PathBuf::from("./quiver-data"),
            log_format: "text".into(),
            store: StoreConfig::default(),
            normalize: NormalizeConfig::default(),
            tags: TagsConfig::default(),
            auth: AuthConfig::default(),
        }
    }
}

impl ServerConfig {
    /// Loads `file` (if any) and applies the environment `env`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<Self> {
        let mut root = match file {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read config `{}`", p.display()))?;
                text.parse::<toml::Table>()
                    .with_context(|| format!("config `{}`", p.display()))?
            }
            None => toml::Table::new(),
        };
        let mut env: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("QUIVER_") && !NOT_CONFIG.contains(&k.as_str()))
            .collect();
        env.sort();
        for (key, raw) in env {
            let path: Vec<String> = key["QUIVER_".len()..]
                .split("__")
                .map(|s| s.to_ascii_lowercase())
                .collect();
            let value = parse_env_value(&raw);
            let mut table = &mut root;
            for part in &path[..path.len() - 1] {
                let entry = table
                    .entry(part.clone())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                table = match entry {
                    toml::Value::Table(t) => t,
                    _ => bail!("environment `{key}`: `{part}` is not a section"),
                };
            }
            table.insert(path[path.len() - 1].clone(), value);
        }
        let what = file.map_or("configuration".to_string(), |p| {
            format!("config `{}`", p.display())
        });
        let cfg: ServerConfig = toml::Value::Table(root)
            .try_into()
            .map_err(|e: toml::de::Error| anyhow::anyhow!("{what}: {}", e.message()))?;
        if !matches!(cfg.log_format.as_str(), "text" | "json") {
            bail!(
                "{what}: log_format must be `text` or `json`, not `{}`",
                cfg.log_format
            );
        }
        Ok(cfg)
    }

    /// The engine's part.
    pub fn engine(&self) -> EngineConfig {
        EngineConfig {
            data_dir: self.data_dir.clone(),
            store: self.store.clone(),
            normalize: self.normalize.clone(),
            tags: self.tags.clone(),
        }
    }
}

fn parse_env_value(raw: &str) -> toml::Value {
    if let Ok(i) = raw.parse::<i64>() {
        return toml::Value::Integer(i);
    }
    if let Ok(b) = raw.parse::<bool>() {
        return toml::Value::Boolean(b);
    }
    if let Ok(f) = raw.parse::<f64>() {
        return toml::Value::Float(f);
    }
    if raw.starts_with('[')
        && let Ok(t) = format!("v = {raw}").parse::<toml::Table>()
        && let Some(v) = t.get("v")
    {
        return v.clone();
    }
    toml::Value::String(raw.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_env_and_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("q.toml");
        std::fs::write(
            &p,
            "listen = \"127.0.0.1:1\"\n[store]\nflush_interval_secs = 5\n",
        )
        .unwrap();
        let cfg = ServerConfig::load(
            Some(&p),
            [
                (
                    "QUIVER_STORE__MEMTABLE_MAX_ROWS".to_string(),
                    "10".to_string(),
                ),
                ("QUIVER_SERVER".to_string(), "http://x".to_string()),
                ("HOME".to_string(), "/root".to_string()),
            ],
        )
        .unwrap();
        assert_eq!(cfg.listen, "127.0.0.1:1");
        assert_eq!(cfg.store.flush_interval_secs, 5);
        assert_eq!(cfg.store.memtable_max_rows, 10);
        assert_eq!(cfg.store.dedup_window_secs, 86_400);

        std::fs::write(&p, "[store]\nflush_intervall_secs = 5\n").unwrap();
        let e = ServerConfig::load(Some(&p), []).unwrap_err().to_string();
        assert!(e.contains("flush_intervall_secs"), "{e}");
        let e = ServerConfig::load(None, [("QUIVER_LISTN".to_string(), "x".to_string())])
            .unwrap_err()
            .to_string();
        assert!(e.contains("listn"), "{e}");
    }
}
