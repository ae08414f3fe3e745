//! The command line: one module per subcommand.

mod export;
mod ingest;
mod inspect;
mod metrics_endpoint;
mod train;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "dino-stream",
    version,
    about = "DINO self-supervised pre-training with a streaming multi-crop data pipeline",
    long_about = "DINO self-supervised pre-training with a streaming multi-crop data pipeline.\n\n\
        Start with `ingest`, which turns an image folder into Parquet shards; `inspect` shows \
        and verifies what it wrote; `train` runs DINO on them; `export` writes a trained backbone for timm."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Ingest(ingest::Args),
    Inspect(inspect::Args),
    Train(train::Args),
    Export(export::Args),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Ingest(args) => ingest::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Train(args) => train::run(args),
        Command::Export(args) => export::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Human-readable byte counts (MiB-style, binary prefixes).
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
