//! `bench-loader`: throughput benchmarks of dino-stream's data side. Without a subcommand it
//! benchmarks the streaming pipeline; `ingest` benchmarks the ingest writer.

mod ingest;
mod measure;
mod pipeline;

use clap::{Parser, Subcommand};

/// Measures what dino-stream's data side costs on this machine
///
/// Without a subcommand: the streaming multi-crop pipeline on the shards of --data, or one
/// of its stages alone (--mode), for --seconds. Start-up (opening and verifying the split,
/// loading what a mode holds in memory, full mode's warm-up) is excluded from the figures.
/// The last two lines of stdout are always `samples_per_sec=<f>` and
/// `samples_per_cpu_sec=<f>` for the mode run, also after the JSON object of --json.
///
/// Modes:
///
///   full     the real loader: its reader thread, --workers threads that decode each
///            sample and make its views (2 x 224 + --local-crops x 96, all of the recipe's
///            augmentations), its batcher; epochs streamed in batches of --batch-size, each
///            batch dropped as soon as it arrives (a consumer that never waits); warm-up:
///            the first 2 batches and at least 2 s
///   read     the reader's work alone, on one thread as in the loader: the split's row
///            groups read in order (key, label, JPEG columns), over and over; no decoding
///   decode   the workers' decoding alone: the JPEGs of the split's first row groups (up to
///            1 GiB) held in memory, decoded to RGB over and over on --workers threads
///   augment  the workers' view making alone: the first 256 samples that decode (fewer if
///            their pixels pass 1 GiB) decoded once up front, then all the views of each
///            made over and over, new random views every pass, on --workers threads
///
/// Figures (MB = 10^6 bytes):
///
///   threads             decode + augment threads (--workers); the loader adds its reader
///                       and batcher threads; read mode runs on one thread
///   samples/s           samples per wall second (full: in batches delivered)
///   samples/CPU-s       samples per CPU second of the whole process, all threads, user +
///                       system (getrusage): the throughput of one fully busy core
///   CPU ms/sample       CPU milliseconds per sample, the inverse
///   reader MB/s         JPEG bytes the reader handed on per wall second (read: also the
///                       stored, compressed row group bytes); row groups/s likewise
///   decode, augment     full: milliseconds per sample the workers spent decoding, and
///     ms/sample         making views; thread time by the clock, so on an oversubscribed
///                       machine it includes time the thread waited for a core
///   busy, waiting       full: fraction of the wall time the reader spent reading and
///                       dispatching, or blocked (on a free batch buffer or a full job
///                       queue); of the workers' time (wall x workers), decoding and
///                       augmenting, or idle waiting for a job; the batcher's, blocked on a
///                       consumer that does not take batches; a wait is counted when it
///                       ends, so one spanning the start of the measurement can take a
///                       fraction slightly past 100%
///   queues              full: mean, max and capacity of the jobs (reader -> workers), done
///                       (workers -> batcher), ready (batcher -> consumer) and free (empty
///                       batch buffers) queues; sampled each time a batch arrives, as the
///                       loader cannot be inspected while it is being waited on
///   failures            samples that did not decode cleanly (the loader replaces them by a
///                       neighbour)
///   peak RSS            the most resident memory the process has had (getrusage
///                       ru_maxrss): in full mode it should depend on the shuffle window, the
///                       row group size and the batch buffers, not on the split's size
///
/// Reading full mode: workers busy near 100% with a full jobs queue means decoding and
/// augmenting limit throughput (compare their ms/sample, and the decode and augment modes);
/// workers waiting with an empty jobs queue and a busy reader means reading does.
#[derive(Parser)]
#[command(
    version,
    verbatim_doc_comment,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    pipeline: pipeline::Args,
}

#[derive(Subcommand)]
enum Command {
    Ingest(ingest::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Ingest(args)) => ingest::run(&args),
        None => pipeline::run(&cli.pipeline),
    }
}
