//! `bench-loader`: throughput benchmarks of dino-stream's data side, one subcommand per
//! benchmark.

mod ingest;

use clap::{Parser, Subcommand};

/// Measures what dino-stream's data side costs on this machine.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Ingest(ingest::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Ingest(args) => ingest::run(&args),
    }
}
