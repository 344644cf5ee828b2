//! The command line: argument parsing and dispatch. Output goes through
//! `client::output` (a readable table by default, `--json` for scripts).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::client::{self, output};
use crate::config::ServerConfig;

/// Quiver: a customer-data engine. Events in, one person behind many
/// identifiers, audiences in milliseconds.
#[derive(Debug, Parser)]
#[command(name = "quiver", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every client command takes.
#[derive(Debug, Args)]
pub struct Global {
    /// Server URL.
    #[arg(
        long,
        global = true,
        env = "QUIVER_SERVER",
        default_value = "http://127.0.0.1:7070"
    )]
    pub server: String,
    /// Workspace the command works on.
    #[arg(long, short = 'w', global = true, env = "QUIVER_WORKSPACE")]
    pub workspace: Option<String>,
    /// Access token: sent as `authorization: Bearer` on Arrow Flight calls
    /// (`ingest --transport flight`), which `[auth]` in the server config guards.
    #[arg(long, global = true, env = "QUIVER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server: gRPC, Arrow Flight, health and reflection on one port.
    Serve(ServeArgs),
    /// Start an embedded server, generate, ingest and query a demo data set.
    Demo(DemoArgs),
    /// Generate realistic events with known identity truth.
    Gen(GenArgs),
    /// Stream event files (Parquet, NDJSON, CSV) into a workspace.
    Ingest(IngestArgs),
    /// Run a read-only SQL query over the workspace's tables.
    Sql {
        /// The query, e.g. "SELECT channel, count(*) FROM events GROUP BY 1".
        query: String,
    },
    /// Resolve identities (OneID): persons from the identifiers on events.
    Resolve {
        /// Compute and report what would change; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Recompute every person from every event.
        #[arg(long)]
        full: bool,
        /// Rules (TOML) to use instead of the workspace's; saved unless --dry-run.
        #[arg(long)]
        rules: Option<PathBuf>,
    },
    /// Show a person: by identifier (`phone:13800138000`) or person id.
    Person {
        /// `kind:value` or a person id.
        id: String,
    },
    /// Why two identifiers are (or are not) one person.
    Explain {
        /// `kind:value`
        a: String,
        /// `kind:value`
        b: String,
    },
    /// Print the workspace's OneID rules (TOML).
    Rules,
    /// Tags: define (TOML/JSON), list, refresh, show coverage per version,
    /// upload a manual list, export a bitmap, drop.
    Tags {
        #[command(subcommand)]
        action: TagsAction,
    },
    /// Manage workspaces.
    Workspace {
        #[command(subcommand)]
        action: WorkspaceAction,
    },
    /// An ordered funnel on persons: who did step 1, then step 2, ... each
    /// within the window of step 1.
    Funnel {
        /// Two or more steps: `ad_click` or "did(purchase WHERE channel = 'pos')".
        #[arg(required = true, num_args = 2..)]
        steps: Vec<String>,
        /// Conversion window from the first step, days.
        #[arg(long, default_value_t = 7)]
        window_days: u32,
        /// `channel` (of the first step), or an enumerated tag, trait or
        /// attribute, or a boolean tag.
        #[arg(long)]
        by: Option<String>,
        #[command(flatten)]
        span: Span,
    },
    /// Retention by cohort: of the persons whose first event fell in a
    /// period, how many came back in each later period.
    Retention {
        /// The event that puts a person in a cohort [default: any event].
        #[arg(long)]
        cohort_event: Option<String>,
        /// The event that counts as coming back [default: any event].
        #[arg(long)]
        return_event: Option<String>,
        /// `week` (ISO, Monday to Sunday, UTC) or `day`.
        #[arg(long, default_value = "week")]
        period: PeriodArg,
        /// Periods per cohort, its own being period 0.
        #[arg(long, default_value_t = 12)]
        periods: u32,
        #[command(flatten)]
        span: Span,
    },
    /// Channel attribution of conversions: first touch, last touch, linear.
    Attribution {
        /// The conversion event.
        #[arg(long, default_value = "purchase")]
        conversion: String,
        /// The touch events [default: every event that is not a conversion].
        #[arg(long)]
        touch: Option<String>,
        /// How far back a touch counts, days.
        #[arg(long, default_value_t = 30)]
        lookback_days: u32,
        #[command(flatten)]
        span: Span,
    },
    /// Count the persons a segment expression selects (bitmaps, no event scan).
    Count {
        /// The expression, e.g. "member_level = 'vip' AND skincare_lover".
        expr: String,
        #[command(flatten)]
        when: When,
    },
    /// A segment's members per value of a tag, attribute or trait, or per
    /// numeric bucket.
    Breakdown {
        /// The expression.
        expr: String,
        /// An enumerated tag, attribute or trait, a boolean tag, or a numeric trait.
        #[arg(long)]
        by: String,
        /// Numeric `--by`: bucket edges, e.g. `0,100,500,1000` [default: ten
        /// equal-width buckets].
        #[arg(long, value_delimiter = ',')]
        edges: Vec<f64>,
        #[command(flatten)]
        when: When,
    },
    /// Write a segment's members: a portable roaring bitmap of ordinals, or
    /// identifiers of one kind, one per line.
    Export {
        /// The expression.
        expr: String,
        /// `roaring` or `ids`.
        #[arg(long, default_value = "roaring")]
        format: ExportFormat,
        /// For `ids`: person_id, phone, email, unionid, member, device,
        /// openid or openid:<appid>.
        #[arg(long, default_value = "person_id")]
        id_kind: String,
        /// For `ids`: write SHA-256 (hex) of each value (`sha256`).
        #[arg(long)]
        hash: Option<HashArg>,
        /// Output file.
        #[arg(short, long)]
        out: PathBuf,
        #[command(flatten)]
        when: When,
    },
    /// Saved segments, snapshots and their diffs, splits, overlaps.
    Segments {
        #[command(subcommand)]
        action: SegmentsAction,
    },
}

/// The time span of an analytics question (UTC days, `--to` exclusive).
#[derive(Debug, Clone, Args)]
pub struct Span {
    /// From the start of this day [funnel, attribution: any; retention:
    /// `--periods` periods before `--to`].
    #[arg(long)]
    pub from: Option<chrono::NaiveDate>,
    /// Until the start of this day [default: unbounded; retention: now].
    #[arg(long)]
    pub to: Option<chrono::NaiveDate>,
}

/// `quiver retention --period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PeriodArg {
    /// ISO weeks.
    Week,
    /// UTC days.
    Day,
}

/// When a segment question is answered.
#[derive(Debug, Clone, Args)]
pub struct When {
    /// "Now" for windows such as `IN LAST 30 DAYS` (the end of that UTC
    /// day) [default: the server's clock].
    #[arg(long)]
    pub now: Option<chrono::NaiveDate>,
    /// Answer as of the end of this UTC day: the newest kept tag index
    /// version built by then, windows ending that day.
    #[arg(long)]
    pub as_of: Option<chrono::NaiveDate>,
}

/// `quiver export --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// A portable roaring bitmap of person ordinals.
    Roaring,
    /// Identifiers of `--id-kind`, one per line.
    Ids,
}

/// `quiver export --hash`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HashArg {
    /// Lower-case hex SHA-256 of the normalised value.
    Sha256,
}

#[derive(Debug, Subcommand)]
pub enum SegmentsAction {
    /// Save (or replace) a segment, usable as `segment('NAME')`.
    Save {
        /// Its name.
        name: String,
        /// The expression.
        expr: String,
        /// Free text.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List saved segments.
    List,
    /// One saved segment.
    Get {
        /// Its name.
        name: String,
    },
    /// Delete a saved segment (refused while another refers to it).
    Delete {
        /// Its name.
        name: String,
    },
    /// Keep a saved segment's current members as a snapshot.
    Snapshot {
        /// The saved segment.
        name: String,
        /// "Now" for windows [default: the server's clock].
        #[arg(long)]
        now: Option<chrono::NaiveDate>,
    },
    /// List snapshots (of one saved segment when named).
    Snapshots {
        /// The saved segment.
        name: Option<String>,
    },
    /// Who entered, left and stayed between two snapshots.
    Diff {
        /// The earlier snapshot's id.
        from: u64,
        /// The later snapshot's id.
        to: u64,
        /// Also write entered.roaring, left.roaring and stayed.roaring here.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
    /// Deterministic groups (A/B, holdout) from a hash of person_id and a salt.
    Split {
        /// The expression.
        expr: String,
        /// The same salt puts the same person in the same group.
        #[arg(long)]
        salt: String,
        /// Group weights, e.g. `90,10` for a 10% holdout.
        #[arg(long, value_delimiter = ',', default_value = "50,50")]
        weights: Vec<u32>,
        /// Group names [default: A, B, ...].
        #[arg(long, value_delimiter = ',')]
        names: Vec<String>,
        /// Also write `<group>.roaring` per group here.
        #[arg(long)]
        out_dir: Option<PathBuf>,
        #[command(flatten)]
        when: When,
    },
    /// The size of every intersection of 1 to 4 segments.
    Overlap {
        /// 1 to 4 expressions.
        #[arg(required = true, num_args = 1..=4)]
        exprs: Vec<String>,
        #[command(flatten)]
        when: When,
    },
}

#[derive(Debug, Subcommand)]
pub enum TagsAction {
    /// Add or replace tags from a TOML (or `.json`) file of `[[tag]]` tables.
    Define {
        /// The definitions file (e.g. the generator's `tags.toml`).
        file: PathBuf,
    },
    /// List tags with their coverage at the latest version.
    List,
    /// Bring profiles, traits and every tag up to date as a new index
    /// version (incremental when it can be).
    Refresh {
        /// "Now" for windows such as `IN LAST 7 DAYS` (end of that UTC day);
        /// default: the server's clock.
        #[arg(long)]
        now: Option<chrono::NaiveDate>,
        /// Read every event even when an incremental refresh could run.
        #[arg(long)]
        full: bool,
    },
    /// A tag's definition and coverage (count, % of persons) per kept version.
    Show {
        /// The tag.
        name: String,
    },
    /// Replace a manual tag's members: a file of `kind:value` lines.
    Upload {
        /// The manual tag.
        name: String,
        /// One identifier per line (`phone:13800138000`); `#` starts a comment line.
        file: PathBuf,
    },
    /// Write a tag's members (latest version) as a portable roaring bitmap of ordinals.
    Export {
        /// The tag.
        name: String,
        /// For an enum tag: the value.
        #[arg(long)]
        value: Option<String>,
        /// Output file.
        #[arg(short, long)]
        out: PathBuf,
    },
    /// Delete a tag's definition.
    Drop {
        /// The tag.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum WorkspaceAction {
    /// Create a workspace.
    Create { name: String },
    /// List workspaces.
    List,
    /// Drop a workspace and delete its data.
    Drop { name: String },
    /// Commit every acknowledged event to Delta now.
    Flush { name: Option<String> },
    /// Compact small files of the events table.
    Optimize { name: Option<String> },
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Data directory [default: ./quiver-data].
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Listen address [default: 127.0.0.1:7070].
    #[arg(long)]
    pub listen: Option<String>,
    /// Prometheus metrics address, or `off` [default: 127.0.0.1:9090].
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// TOML configuration file.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Persons to generate.
    #[arg(long, default_value_t = 100_000)]
    pub persons: u64,
    /// Keep the data here instead of a temporary directory.
    #[arg(long)]
    pub data: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct GenArgs {
    /// Number of true persons.
    #[arg(long, default_value_t = 100_000)]
    pub persons: u64,
    /// Days of history, ending on --end-date.
    #[arg(long, default_value_t = 365)]
    pub days: u32,
    /// Random seed: the same seed gives the same files.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Last day with events (YYYY-MM-DD) [default: 2026-10-31].
    #[arg(long)]
    pub end_date: Option<chrono::NaiveDate>,
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
    /// parquet, ndjson or csv.
    #[arg(long, default_value = "parquet")]
    pub format: quiver_data::Format,
}

#[derive(Debug, Args)]
pub struct IngestArgs {
    /// Files or directories (every event file in them).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// TOML file mapping foreign column names onto event fields (`[columns] mobile = "phone"`).
    #[arg(long)]
    pub mapping: Option<PathBuf>,
    /// Events per batch.
    #[arg(long, default_value_t = 4096)]
    pub batch_rows: usize,
    /// `grpc` (IngestService stream) or `flight` (Arrow Flight DoPut).
    #[arg(long, default_value = "grpc")]
    pub transport: client::ingest::Transport,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

fn init_logs(default: &str, json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("QUIVER_LOG")
        .or_else(|_| EnvFilter::try_new(default))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        b.json().try_init()
    } else {
        b.try_init()
    };
}

fn workspace(g: &Global) -> anyhow::Result<String> {
    g.workspace
        .clone()
        .context("this command needs --workspace (or QUIVER_WORKSPACE)")
}

/// Runs one command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let g = cli.global;
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Demo(args) => {
            init_logs("warn", false);
            crate::demo::run(args).await
        }
        Command::Gen(args) => {
            init_logs("warn", false);
            gen_files(args, g.json)
        }
        Command::Ingest(args) => {
            init_logs("warn", false);
            let ws = workspace(&g)?;
            let channel = client::connect(&g.server).await?;
            let opts = client::ingest::Options {
                mapping: args.mapping,
                batch_rows: args.batch_rows,
                transport: args.transport,
                progress: !args.quiet && !g.json,
                token: g.token.clone(),
            };
            let summary = client::ingest::ingest_files(channel, &ws, &args.files, &opts).await?;
            output::ingest_summary(&summary, g.json);
            if summary.failed_files > 0 {
                anyhow::bail!("{} file(s) could not be ingested", summary.failed_files);
            }
            Ok(())
        }
        Command::Sql { query } => {
            init_logs("warn", false);
            let ws = workspace(&g)?;
            let channel = client::connect(&g.server).await?;
            let batches = client::sql(channel, &ws, &query).await?;
            output::batches(&batches, g.json)
        }
        Command::Resolve {
            dry_run,
            full,
            rules,
        } => {
            init_logs("warn", false);
            let ws = workspace(&g)?;
            let rules_toml = match rules {
                Some(path) => std::fs::read_to_string(&path)
                    .with_context(|| format!("cannot read rules file {}", path.display()))?,
                None => String::new(),
            };
            let channel = client::connect(&g.server).await?;
            let report =
                client::identity::resolve(channel, &ws, dry_run, full, rules_toml, g.json).await?;
            output::resolve_report(&report, g.json);
            Ok(())
        }
        Command::Person { id } => {
            init_logs("warn", false);
            let ws = workspace(&g)?;
            let channel = client::connect(&g.server).await?;
            let p = client::identity::person(channel, &ws, &id).await?;
            output::person(&p, g.json);
            Ok(())
        }
        Command::Explain { a, b } => {
            init_logs("warn", false);
            let ws = workspace(&g)?;
            let channel = client::connect(&g.server).await?;
            let e = client::identity::explain(channel, &ws, &a, &b).await?;
            output::explanation(&e, g.json);
            Ok(())
        }
        Command::Rules => {
            init_logs("warn", false);
            let ws = workspace(&g)?;
            let channel = client::connect(&g.server).await?;
            let toml = client::identity::rules(channel, &ws).await?;
            output::message(toml.trim_end(), false);
            Ok(())
        }
        Command::Tags { action } => {
            init_logs("warn", false);
            let ws = workspace(&g)?;
            let channel = client::connect(&g.server).await?;
            client::tags::run(channel, &ws, action, g.json).await
        }
        Command::Workspace { action } => {
            init_logs("warn", false);
            let channel = client::connect(&g.server).await?;
            client::workspace(channel, action, g.workspace.as_deref(), g.json).await
        }
        Command::Funnel {
            steps,
            window_days,
            by,
            span,
        } => {
            init_logs("warn", false);
            let ws = workspace(&g)?;
            let channel = client::connect(&g.server).await?;
            client::analytics::funnel(channel, &ws, steps, window_days, by, &span, g.json).await
        }
        Command::Retention {
            cohort_event,
            return_event,
            period,
            periods,
            span,
        } => {
            init_logs("warn", false);
            let ws = workspace(&g)?;
            let channel = client::connect(&g.server).await?;
            let req = quiver_proto::v1::RetentionRequest {
                workspace: ws,
                cohort_event: cohort_event.unwrap_or_default(),
                return_event: return_event.unwrap_or_default(),
                period: match period {
                    PeriodArg::Week => quiver_proto::v1::RetentionPeriod::Week,
                    PeriodArg::Day => quiver_proto::v1::RetentionPeriod::Day,
                } as i32,
                periods,
                from_unix_ms: span.from.map_or(0, client::analytics::start_of),
                to_unix_ms: span.to.map_or(0, client::analytics::start_of),
            };
            client::analytics::retention(channel, req, g.json).await
        }
        Command::Attribution {
            conversion,
            touch,
            lookback_days,
            span,
        } => {
            init_logs("warn", false);
            let ws = workspace(&g)?;
            let channel = client::connect(&g.server).await?;
            let req = quiver_proto::v1::AttributionRequest {
                workspace: ws,
                conversion,
                touch: touch.unwrap_or_default(),
                lookback_days,
                from_unix_ms: span.from.map_or(0, client::analytics::start_of),
                to_unix_ms: span.to.map_or(0, client::analytics::start_of),
            };
            client::analytics::attribution(channel, req, g.json).await
        }
        Command::Count { expr, when } => {
            init_logs("warn", false);
            let ws = workspace(&g)?;
            let channel = client::connect(&g.server).await?;
            client::segments::count(channel, &ws, &expr, &when, g.json).await
        }
        Command::Breakdown {
            expr,
            by,
            edges,
            when,
        } => {
            init_logs("warn", false);
            let ws = workspace(&g)?;
            let channel = client::connect(&g.server).await?;
            client::segments::breakdown(channel, &ws, &expr, &by, edges, &when, g.json).await
        }
        Command::Export {
            expr,
            format,
            id_kind,
            hash,
            out,
            when,
        } => {
            init_logs("warn", false);
            let ws = workspace(&g)?;
            let channel = client::connect(&g.server).await?;
            let opts = client::segments::ExportOptions {
                format,
                id_kind,
                sha256: hash == Some(HashArg::Sha256),
            };
            client::segments::export(channel, &ws, &expr, &opts, &out, &when, g.json).await
        }
        Command::Segments { action } => {
            init_logs("warn", false);
            let ws = workspace(&g)?;
            let channel = client::connect(&g.server).await?;
            client::segments::run(channel, &ws, action, g.json).await
        }
    }
}

fn gen_files(args: GenArgs, json: bool) -> anyhow::Result<()> {
    let cfg = quiver_data::GenConfig {
        persons: args.persons,
        days: args.days,
        seed: args.seed,
        end_date: args
            .end_date
            .unwrap_or(quiver_data::GenConfig::default().end_date),
        format: args.format,
        out: args.out,
        ..Default::default()
    };
    let bar = output::progress(args.persons, "persons", json);
    let summary = quiver_data::generate(&cfg, &|n| bar.inc(n))?;
    bar.finish_and_clear();
    output::gen_summary(&summary, json);
    Ok(())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut cfg = ServerConfig::load(args.config.as_deref(), std::env::vars())?;
    if let Some(d) = args.data {
        cfg.data_dir = d;
    }
    if let Some(l) = args.listen {
        cfg.listen = l;
    }
    if let Some(m) = args.metrics_listen {
        cfg.metrics_listen = m;
    }
    init_logs("info", cfg.log_format == "json");
    let addr: SocketAddr = cfg.listen.parse().with_context(|| {
        format!(
            "listen: `{}` is not an address like 127.0.0.1:7070",
            cfg.listen
        )
    })?;
    if cfg.metrics_listen != "off" {
        let maddr: SocketAddr = cfg.metrics_listen.parse().with_context(|| {
            format!("metrics_listen: `{}` is not an address", cfg.metrics_listen)
        })?;
        crate::telemetry::install(maddr)?;
    }
    let engine = quiver_engine::Engine::open(cfg.engine())
        .await
        .context("cannot open the data directory")?;
    let listener = crate::service::bind(addr).await?;
    let local = listener.local_addr()?;
    output::listening(local);
    tracing::info!(%local, data = %cfg.data_dir.display(), "quiver serving");
    let shutdown = async {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(t) => t,
                    Err(_) => {
                        let _ = ctrl_c.await;
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
    };
    crate::service::serve(Arc::clone(&engine), cfg.auth.clone(), listener, shutdown).await?;
    tracing::info!("shutting down: flushing memtables");
    engine.flush_all().await?;
    Ok(())
}
