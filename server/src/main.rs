//! `quiver`: the server and the command line.
//!
//! `quiver serve` runs the engine behind gRPC + Arrow Flight on one port;
//! every other subcommand is a client of a running server (or, for `demo`,
//! of one it starts itself). Only this crate prints.

#![warn(clippy::unwrap_used, clippy::expect_used)]

use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

mod cli;
mod client;
mod config;
mod demo;
mod error;
mod service;
mod telemetry;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("quiver")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
