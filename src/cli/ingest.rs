//! `dino-stream ingest`: an ImageNet-style folder to Parquet shards.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use dino_pipeline::ingest::{self, IngestConfig, IngestReport, Observer};
use dino_pipeline::manifest::printable;
use indicatif::ProgressBar;

use super::bytes;

/// Turn an image folder into Parquet shards plus DIR/manifest.json.
///
/// Input: ROOT/CLASS/**/* (class = folder name, classes sorted, label = index), or a flat
/// folder: labeled by --labels CSV (`file,class` rows), else unlabeled (label -1).
/// Every file is stored as is (valid RGB or gray JPEG), converted (PNG, CMYK, other formats,
/// images over --max-side) or rejected with a reason listed in the manifest; hidden files are
/// skipped and listed. Output is byte-identical for the same input and options whatever
/// --workers is. A killed run, started again, resumes after its last complete shard.
/// Run once per split (e.g. --split train, then --split val) into the same DIR.
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Input folder (ROOT/CLASS/*.JPEG, or flat)
    #[arg(long, value_name = "ROOT")]
    src: PathBuf,
    /// Output folder for shards and manifest.json
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Split name; shards are DIR/{split}-{index:05}.parquet
    #[arg(long, default_value = "train")]
    split: String,
    /// Labels for a flat folder: CSV rows `file,class` (an optional `file,class` header)
    #[arg(long, value_name = "CSV")]
    labels: Option<PathBuf>,
    /// Re-encode images whose longer side exceeds N pixels down to N (Lanczos, antialiased)
    #[arg(long, value_name = "N")]
    max_side: Option<u32>,
    /// JPEG quality for converted and downscaled images
    #[arg(long, default_value_t = ingest::DEFAULT_QUALITY, value_name = "Q")]
    quality: u8,
    /// Validation threads [default: all cores]
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// Seed of the order in which samples are spread over shards
    #[arg(long, default_value_t = 0, value_name = "S")]
    seed: u64,
    /// Fail on the first rejected file instead of reporting it
    #[arg(long)]
    strict: bool,
    /// Target shard size (e.g. 256MiB, 1GiB, 500000)
    #[arg(long, default_value = "256MiB", value_parser = parse_size, value_name = "SIZE")]
    shard_bytes: u64,
    /// Row groups are cut once they pass this size
    #[arg(long, default_value = "64MiB", value_parser = parse_size, value_name = "SIZE")]
    row_group_bytes: u64,
    /// Reject images with more pixels than this (the default is PIL's bomb limit)
    #[arg(long, default_value_t = ingest::DEFAULT_MAX_PIXELS, value_name = "N")]
    max_pixels: u64,
    /// Replace a split that DIR already holds with other inputs or options
    #[arg(long)]
    overwrite: bool,
}

/// Parses `123`, `64KiB`, `256MiB`, `1GiB` (also `K`, `M`, `G`, `KB`, `MB`, `GB` as binary).
fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size like 256MiB"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?} (use KiB, MiB, GiB)"
            ));
        }
    };
    value
        .checked_mul(1 << shift)
        .filter(|&v| v > 0)
        .ok_or_else(|| format!("{text:?} must be positive and fit in 64 bits"))
}

/// A progress bar on a terminal (images/s, MB/s, ETA), nothing otherwise.
struct Progress {
    bar: ProgressBar,
    started: Instant,
    input_bytes: AtomicU64,
}

impl Progress {
    fn new() -> Self {
        let bar = super::progress_bar(
            None,
            "{bar:30} {pos}/{len} files  {per_sec}  {msg}  ETA {eta}",
        );
        Self {
            bar,
            started: Instant::now(),
            input_bytes: AtomicU64::new(0),
        }
    }
}

impl Observer for Progress {
    fn begin(&self, total: u64, already_done: u64) {
        self.bar.set_length(total);
        self.bar.set_position(already_done);
        self.bar.reset_eta();
    }

    fn file_done(&self, input_bytes: u64, _output_bytes: u64) {
        let read = self.input_bytes.fetch_add(input_bytes, Ordering::Relaxed) + input_bytes;
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        self.bar
            .set_message(format!("{:.1} MB/s", read as f64 / 1e6 / secs));
        self.bar.inc(1);
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut cfg = IngestConfig::new(&args.src, &args.out);
    cfg.split = args.split;
    cfg.labels = args.labels;
    cfg.max_side = args.max_side;
    cfg.quality = args.quality;
    if let Some(workers) = args.workers {
        cfg.workers = workers;
    }
    cfg.seed = args.seed;
    cfg.strict = args.strict;
    cfg.shard_bytes = args.shard_bytes;
    cfg.row_group_bytes = args.row_group_bytes;
    cfg.max_pixels = args.max_pixels;
    cfg.overwrite = args.overwrite;

    let progress = Progress::new();
    // every error names its file, folder or option already
    let report = ingest::ingest(&cfg, &progress)?;
    progress.bar.finish_and_clear();
    let input_bytes = progress.input_bytes.load(Ordering::Relaxed);
    print_summary(
        &cfg,
        &report,
        progress.started.elapsed().as_secs_f64(),
        input_bytes,
    );
    Ok(ExitCode::SUCCESS)
}

/// At most this many rejected files are listed on the terminal; the manifest has them all.
const LISTED_REJECTS: usize = 20;

fn print_summary(cfg: &IngestConfig, report: &IngestReport, secs: f64, input_bytes: u64) {
    let split = &report.split;
    let c = &split.counts;
    if report.up_to_date {
        println!(
            "split '{}' in {} is already up to date ({} rows); nothing to do",
            cfg.split,
            cfg.out.display(),
            split.rows
        );
        return;
    }
    println!(
        "split '{}': {} files found -> {} rows in {} shard(s), {} in {}",
        cfg.split,
        c.found,
        split.rows,
        split.shards.len(),
        bytes(split.bytes),
        cfg.out.display()
    );
    println!(
        "  stored as is {}, converted {}, rejected {}, hidden skipped {}",
        c.stored, c.converted, c.rejected, c.skipped_hidden
    );
    if report.resumed_shards > 0 {
        println!(
            "  resumed: {} shard(s) from an interrupted run were kept",
            report.resumed_shards
        );
    }
    println!(
        "  {:.1} s, {:.0} files/s, {:.1} MB/s read",
        secs,
        (c.found - c.skipped_hidden) as f64 / secs.max(1e-9),
        input_bytes as f64 / 1e6 / secs.max(1e-9)
    );
    for note in split.rejected.iter().take(LISTED_REJECTS) {
        println!(
            "  rejected {}: {}",
            printable(&note.key),
            printable(&note.reason)
        );
    }
    if split.rejected.len() > LISTED_REJECTS {
        println!(
            "  ... and {} more rejected (all listed in manifest.json)",
            split.rejected.len() - LISTED_REJECTS
        );
    }
    if !report.empty_classes.is_empty() {
        eprintln!(
            "warning: {} class folder(s) hold no files but still have a label: {:?}",
            report.empty_classes.len(),
            report.empty_classes
        );
    }
    if !report.labels_without_file.is_empty() {
        let shown: Vec<_> = report.labels_without_file.iter().take(5).collect();
        eprintln!(
            "warning: the --labels CSV names {} file(s) that are not in {}: {shown:?}",
            report.labels_without_file.len(),
            cfg.src.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("500"), Ok(500));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert!(parse_size("0").is_err());
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("MiB").is_err());
    }
}
