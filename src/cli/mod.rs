//! The command line: one module per subcommand.

mod attention;
mod export;
mod import;
mod ingest;
mod inspect;
mod knn;
mod logger;
mod metrics_endpoint;
mod plot;
mod train;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Parser)]
#[command(
    name = "dino-stream",
    version,
    about = "DINO self-supervised pre-training with a streaming multi-crop data pipeline",
    long_about = "DINO self-supervised pre-training with a streaming multi-crop data pipeline.\n\n\
        Start with `ingest`, which turns an image folder into Parquet shards; `inspect` shows \
        and verifies what it wrote; `train` runs DINO on them and `plot` draws its curves; `knn` and `attention` evaluate a \
        checkpoint; `export` and `import` move backbones to and from timm and the official DINO weights."
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
    Plot(plot::Args),
    Knn(knn::Args),
    Attention(attention::Args),
    Export(export::Args),
    Import(import::Args),
}

pub fn main() -> ExitCode {
    // Output piped into `head` and the like ends quietly, as other Unix tools do, instead of
    // a panic at the next print (Rust ignores SIGPIPE by default).
    // SAFETY: called before any thread is started; SIG_DFL is a valid disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    logger::init();
    let result = match cli.command {
        Command::Ingest(args) => ingest::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Train(args) => train::run(args),
        Command::Plot(args) => plot::run(args),
        Command::Knn(args) => knn::run(args),
        Command::Attention(args) => attention::run(args),
        Command::Export(args) => export::run(args),
        Command::Import(args) => import::run(args),
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

/// A bar drawn with `template` (indicatif's syntax) on stderr when it is a terminal, hidden
/// otherwise (logs stay clean); its length may come later.
pub(crate) fn progress_bar(len: Option<u64>, template: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(len, ProgressDrawTarget::hidden());
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.set_draw_target(ProgressDrawTarget::stderr());
    }
    bar.set_style(ProgressStyle::with_template(template).expect("valid template"));
    bar
}
