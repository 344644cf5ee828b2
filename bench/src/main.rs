//! `quiver-bench`: Quiver's numbers next to its peers', on the same generated
//! data, in the same run. Each run writes a CSV under `bench/out/` with the
//! machine notes and prints a Markdown table for `bench/RESULTS.md`.
//!
//! ```text
//! cargo run --release -p quiver-bench -- ingest --persons 1000000
//! cargo run --release -p quiver-bench -- identity --persons 1000000
//! cargo run --release -p quiver-bench -- tags --persons 1000000
//! cargo run --release -p quiver-bench -- segments --persons 10000000
//! cargo run --release -p quiver-bench -- analytics --persons 1000000
//! ```
//!
//! Peers run as Python scripts in `bench/peers/` (DuckDB, chDB from PyPI;
//! `bench/peers/setup.sh` installs them).
#![allow(clippy::print_stdout)]

use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

mod analytics;
mod identity;
mod ingest;
mod segments;
mod tags;
mod util;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "quiver-bench",
    about = "Quiver benchmarks with peers in the same run"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Durable ingest throughput: gRPC stream and Flight DoPut vs DuckDB and chDB loads.
    Ingest(ingest::Args),
    /// OneID accuracy against truth and job time vs naive CC, DuckDB SQL label propagation, scipy.
    Identity(identity::Args),
    /// Seed-tag refresh (time, peak RSS) vs DuckDB GROUP BYs on the same Delta tables; sets must match.
    Tags(tags::Args),
    /// Audience questions Q1, Q2, Q2 by city: in-process and gRPC vs DuckDB, chDB, pyroaring.
    Segments(segments::Args),
    /// Funnel and weekly retention: in-process and gRPC vs DuckDB SQL; Flight SQL SELECT throughput.
    Analytics(analytics::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Ingest(args) => rt.block_on(ingest::run(args)),
        Command::Identity(args) => rt.block_on(identity::run(args)),
        Command::Tags(args) => rt.block_on(tags::run(args)),
        Command::Segments(args) => rt.block_on(segments::run(args)),
        Command::Analytics(args) => rt.block_on(analytics::run(args)),
    }
}
