//! Shared bench plumbing: the release `quiver` binary, a server process,
//! machine notes, peer scripts.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail};

/// Workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Builds and returns the release `quiver` binary.
///
/// `cargo run` hands this process the bench package's `CARGO_*` variables;
/// build scripts that watch them (ring's watches `CARGO_MANIFEST_DIR`) would
/// see a change and rebuild half the tree, so the inner build runs without them.
pub fn quiver_bin() -> anyhow::Result<PathBuf> {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let from_cargo_run = key == "OUT_DIR"
            || key.starts_with("CARGO_PKG_")
            || matches!(
                key,
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
            );
        if from_cargo_run {
            cmd.env_remove(key);
        }
    }
    let st = cmd
        .args(["build", "--release", "-q", "-p", "quiver"])
        .current_dir(root())
        .status()?;
    if !st.success() {
        bail!("cargo build --release -p quiver failed");
    }
    Ok(root().join("target/release/quiver"))
}

/// `nproc`, `free -g` and the CPU model, for the results file.
pub fn machine() -> String {
    let run = |c: &str, a: &[&str]| {
        Command::new(c)
            .args(a)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let mem = run("free", &["-g"]);
    let total = mem
        .lines()
        .find(|l| l.starts_with("Mem:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?")
        .to_string();
    format!("nproc={} mem={}GiB cpu={cpu}", run("nproc", &[]), total)
}

/// A running `quiver serve`.
pub struct Server {
    child: Child,
    pub url: String,
}

impl Server {
    pub fn start(bin: &Path, data: &Path) -> anyhow::Result<Server> {
        Self::start_with(bin, data, &[])
    }

    /// [`Server::start`] with extra `QUIVER_*` configuration variables.
    pub fn start_with(bin: &Path, data: &Path, env: &[(&str, &str)]) -> anyhow::Result<Server> {
        let mut child = Command::new(bin)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "off",
                "--data",
            ])
            .arg(data)
            .env("QUIVER_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .spawn()?;
        let out = child.stdout.take().context("stdout")?;
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line)?;
        let addr = line
            .trim()
            .strip_prefix("quiver listening on ")
            .with_context(|| format!("unexpected `{line}`"))?;
        Ok(Server {
            url: format!("http://{addr}"),
            child,
        })
    }

    /// The server's process id.
    pub fn pid(&self) -> Option<u32> {
        Some(self.child.id())
    }

    /// Runs a client command against it and returns stdout.
    pub fn cli(&self, bin: &Path, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(bin)
            .arg("--server")
            .arg(&self.url)
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!("quiver {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8(out.stdout)?)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// Runs `bench/peers/<script>` with python3; returns its JSON output (last line).
pub fn peer(script: &str, args: &[&str]) -> anyhow::Result<serde_json::Value> {
    Ok(peer_with_rss(script, args)?.0)
}

/// [`peer`], under `/usr/bin/time -v` when there is one; also returns the
/// script's peak RSS (MiB) as `time` saw it.
pub fn peer_with_rss(
    script: &str,
    args: &[&str],
) -> anyhow::Result<(serde_json::Value, Option<f64>)> {
    let path = root().join("bench/peers").join(script);
    let time = Path::new("/usr/bin/time");
    let mut cmd = if time.exists() {
        let mut c = Command::new(time);
        c.args(["-v", "python3"]);
        c
    } else {
        Command::new("python3")
    };
    let out = cmd.arg(&path).args(args).output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("{script}: {stderr}");
    }
    let rss = stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix("Maximum resident set size (kbytes):"))
        .and_then(|kb| kb.trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0);
    let text = String::from_utf8(out.stdout)?;
    let last = text.lines().last().unwrap_or("{}");
    Ok((serde_json::from_str(last)?, rss))
}

/// Flushes the OS page cache is not possible without root tricks; we note warm cache.
pub fn files_in(dir: &Path, prefix: &str, ext: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            n.starts_with(prefix) && n.ends_with(ext)
        })
        .collect();
    v.sort();
    Ok(v)
}

/// Loads event files into workspace `shop` over Flight `DoPut`.
pub fn ingest_flight(server: &Server, bin: &Path, files: &[PathBuf]) -> anyhow::Result<()> {
    let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    let mut a = vec![
        "--workspace",
        "shop",
        "--json",
        "ingest",
        "--quiet",
        "--transport",
        "flight",
    ];
    a.extend(names.iter().map(String::as_str));
    server.cli(bin, &a)?;
    Ok(())
}

/// One field of `/proc/<pid>/status` (`VmHWM:` peak, `VmRSS:` now), in MiB.
pub fn proc_mib(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// `quiver gen --persons N --seed 42 --format parquet --out DIR`, unless DIR
/// already holds that data (its `manifest.json`).
pub fn generate_parquet(bin: &Path, dir: &Path, persons: u64) -> anyhow::Result<()> {
    if dir.join("manifest.json").exists() {
        println!("reusing generated data in {}", dir.display());
        return Ok(());
    }
    let t = std::time::Instant::now();
    let st = Command::new(bin)
        .args(["gen", "--persons", &persons.to_string(), "--seed", "42"])
        .args(["--format", "parquet", "--out"])
        .arg(dir)
        .status()?;
    anyhow::ensure!(st.success(), "quiver gen failed");
    println!("generated in {:.1}s", t.elapsed().as_secs_f64());
    Ok(())
}

/// The generator's last day, from its manifest (default: the generator's default).
pub fn end_date(gen_dir: &Path) -> chrono::NaiveDate {
    std::fs::read_to_string(gen_dir.join("manifest.json"))
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .and_then(|m| m["end_date"].as_str().and_then(|d| d.parse().ok()))
        .unwrap_or_else(|| quiver_data::GenConfig::default().end_date)
}

/// A benchmark's working set: the `quiver` binary, `<out>/<name>-<persons>/`,
/// the generated Parquet data in it (made once) and the data's last day.
pub struct Generated {
    pub bin: PathBuf,
    pub base: PathBuf,
    pub gen_dir: PathBuf,
    pub end: chrono::NaiveDate,
}

/// Builds the binary and generates (or reuses) the data of `persons`.
pub fn generated(out: &Path, name: &str, persons: u64) -> anyhow::Result<Generated> {
    let bin = quiver_bin()?;
    let base = root().join(out).join(format!("{name}-{persons}"));
    let gen_dir = base.join("gen-parquet");
    generate_parquet(&bin, &gen_dir, persons)?;
    let end = end_date(&gen_dir);
    Ok(Generated {
        bin,
        base,
        gen_dir,
        end,
    })
}

/// Timings of one question on one system, in ms.
#[derive(Debug, Clone, Default)]
pub struct Timing {
    pub p50: f64,
    pub p99: f64,
    pub runs: usize,
}

/// p50, p99 and count of timings in ms.
pub fn timing(mut ms: Vec<f64>) -> Timing {
    ms.sort_by(f64::total_cmp);
    let n = ms.len();
    Timing {
        p50: if n == 0 {
            f64::NAN
        } else if n % 2 == 1 {
            ms[n / 2]
        } else {
            (ms[n / 2 - 1] + ms[n / 2]) / 2.0
        },
        p99: ms
            .get(((n as f64 * 0.99) as usize).min(n.saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN),
        runs: n,
    }
}
