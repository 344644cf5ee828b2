//! Support for the end-to-end tests: build and start the real `quiver`
//! binary on a loopback port, talk to it as clients do, kill it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use arrow::array::RecordBatch;
use futures::StreamExt;
use quiver_proto::v1 as pb;
use tonic::transport::Channel;

/// The bitmap type of exported tags (`quiver tags export`), for tests that read them back.
pub use roaring::RoaringBitmap;

static BIN: OnceLock<PathBuf> = OnceLock::new();

/// Tells the support code where cargo built `quiver` (`env!("CARGO_BIN_EXE_quiver")`).
pub fn init(bin: &str) {
    let _ = BIN.set(PathBuf::from(bin));
}

/// Path of the `quiver` binary under test.
pub fn quiver_bin() -> PathBuf {
    BIN.get()
        .cloned()
        .expect("call quiver_tests::init(env!(\"CARGO_BIN_EXE_quiver\")) first")
}

/// A running `quiver serve`.
pub struct Server {
    child: Option<Child>,
    pub addr: String,
    pub data: PathBuf,
    pub log: PathBuf,
}

impl Server {
    /// Starts a server on `data` with extra environment, metrics off.
    pub fn start(data: &Path, env: &[(&str, &str)]) -> anyhow::Result<Server> {
        Self::start_with_metrics(data, "off", env)
    }

    /// Starts a server on `data` serving Prometheus metrics on `metrics` (or `off`).
    pub fn start_with_metrics(
        data: &Path,
        metrics: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Server> {
        let log = data.with_extension(format!("log.{}", std::process::id()));
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let mut cmd = Command::new(quiver_bin());
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            metrics,
            "--data",
        ])
        .arg(data)
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file))
        .env("QUIVER_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().context("spawn quiver serve")?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        let line = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                bail!(
                    "server did not start; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        };
        let addr = line
            .strip_prefix("quiver listening on ")
            .with_context(|| format!("unexpected first line `{line}`"))?
            .to_string();
        Ok(Server {
            child: Some(child),
            addr,
            data: data.to_path_buf(),
            log,
        })
    }

    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A gRPC channel to it.
    pub async fn channel(&self) -> Channel {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match Channel::from_shared(self.url()).unwrap().connect().await {
                Ok(c) => return c,
                Err(e) if Instant::now() > deadline => panic!("connect {}: {e}", self.url()),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// SIGKILL: no flush, no goodbye.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            let pid = c.id().to_string();
            Command::new("kill").args(["-TERM", &pid]).status()?;
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if let Some(st) = c.try_wait()? {
                    if !st.success() {
                        bail!("server exited with {st}");
                    }
                    return Ok(());
                }
                if Instant::now() > deadline {
                    let _ = c.kill();
                    bail!("server did not stop in 60 s");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs a client subcommand against this server.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(quiver_bin())
            .arg("--server")
            .arg(self.url())
            .args(args)
            .output()
            .expect("run quiver")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Creates a workspace over gRPC.
pub async fn create_workspace(ch: Channel, name: &str) -> Result<(), tonic::Status> {
    pb::workspace_service_client::WorkspaceServiceClient::new(ch)
        .create_workspace(pb::CreateWorkspaceRequest { name: name.into() })
        .await
        .map(|_| ())
}

/// Runs SQL over gRPC.
pub async fn sql(ch: Channel, ws: &str, q: &str) -> Result<Vec<RecordBatch>, tonic::Status> {
    let mut c = pb::query_service_client::QueryServiceClient::new(ch);
    let mut s = c
        .sql(pb::SqlRequest {
            workspace: ws.into(),
            query: q.into(),
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = s.next().await {
        let m = m?;
        for b in arrow::ipc::reader::StreamReader::try_new(m.arrow_ipc.as_slice(), None).unwrap() {
            out.push(b.unwrap());
        }
    }
    Ok(out)
}

/// The single integer a `SELECT count(*) ...` returns.
pub async fn sql_i64(ch: Channel, ws: &str, q: &str) -> i64 {
    let b = sql(ch, ws, q).await.unwrap_or_else(|e| panic!("{q}: {e}"));
    let b = b.iter().find(|b| b.num_rows() > 0).expect("one row");
    let c = arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Int64).unwrap();
    c.as_any()
        .downcast_ref::<arrow::array::Int64Array>()
        .unwrap()
        .value(0)
}

/// A simple valid event.
pub fn event(id: &str, phone: &str) -> pb::Event {
    pb::Event {
        event_id: id.into(),
        event_time: "2026-03-01T12:00:00Z".into(),
        channel: "miniprogram".into(),
        r#type: "page_view".into(),
        identifiers: vec![pb::Identifier {
            kind: "phone".into(),
            value: phone.into(),
        }],
        category: Some("skincare".into()),
        ..Default::default()
    }
}
