//! `bench-loader ingest`: what `ingest` costs per image, against the work it cannot avoid,
//! one full JPEG decode per image (only a full decode finds a truncated JPEG).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result, bail};
use dino_pipeline::ingest::{self as pipeline, IngestConfig, Quiet};
use dino_pipeline::jpeg::{JpegColor, JpegDecoder, Pixels};
use serde::Serialize;

use crate::measure::{Sample, measure};

const JPEG_MAGIC: [u8; 3] = [0xFF, 0xD8, 0xFF];
const MB: f64 = 1e6;

/// Compares the CPU cost of ingest with one full JPEG decode per image
///
/// Three configurations run on the inputs of --src with the same number of threads,
/// interleaved round-robin (each round runs each once), --repeats rounds:
///
///   decode                every JPEG input read and fully decoded once with libjpeg-turbo,
///                         into the pixel layout ingest uses; files are handed to the
///                         threads one at a time, as ingest does; non-JPEG inputs are skipped
///   ingest                the real ingest into a fresh temporary folder, deleted afterwards
///   ingest --max-side N   the same, which also re-encodes every image larger than N
///
/// Every input is read once, untimed, before the rounds: all timed reads come from the page
/// cache, so use inputs that fit in memory. Ingest writes (and fsyncs) its shards under the
/// temporary folder ($TMPDIR, else /tmp).
///
/// Figures, each the median over the repeats:
///
///   images              input files the configuration handles
///   wall s              elapsed seconds
///   CPU s               user + system CPU seconds of this process, all threads (getrusage)
///   CPU ±%              half the range of CPU s over the repeats, in % of the median: noise
///   img/s, MB/s         input images and input file megabytes (10^6 bytes) per wall second
///   img/CPU-s, MB/CPU-s the same per CPU second: throughput of one fully busy core
///   CPU/img ÷ decode    CPU seconds per image relative to the decode baseline: the median
///                       over rounds of the ratio within a round, whose configurations ran
///                       back to back, so a machine whose load drifts affects it less
///
/// A ratio near 1 means ingest costs about one full decode per image and little else.
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Input folder, as ingest reads it: ROOT/CLASS/* or a flat folder of images
    #[arg(long, value_name = "ROOT")]
    src: PathBuf,
    /// Threads for every configuration [default: the cores available to this process]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    workers: Option<u32>,
    /// Longest side for the `ingest --max-side` configuration
    #[arg(long, value_name = "N", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_side: u32,
    /// Rounds: how many times each configuration runs
    #[arg(long, value_name = "R", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..))]
    repeats: u32,
    /// Print one JSON object instead of the table
    #[arg(long)]
    json: bool,
}

pub fn run(args: &Args) -> Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = args.workers.map_or(cores, |n| n as usize);
    let inputs = Inputs::read(&args.src)?;
    let configs = [
        Config::Decode,
        Config::Ingest { max_side: None },
        Config::Ingest {
            max_side: Some(args.max_side),
        },
    ];
    let mut runs: Vec<Runs> = configs.iter().map(|_| Runs::default()).collect();
    for round in 0..args.repeats as usize {
        for k in 0..configs.len() {
            // Rotating which configuration goes first spreads any effect of the position in
            // a round (such as the kernel still writing back the previous ingest's shards)
            // over all configurations.
            let i = (round + k) % configs.len();
            let (sample, outcome) = configs[i].run_once(&args.src, &inputs, workers)?;
            runs[i].samples.push(sample);
            runs[i].outcome = Some(outcome);
        }
    }

    let baseline = Config::Decode.images(&inputs) as f64;
    let decode_cpu: Vec<f64> = runs[0].samples.iter().map(|s| s.cpu_s / baseline).collect();
    let report = Report {
        src: args.src.display().to_string(),
        cores,
        workers,
        repeats: args.repeats,
        input_io: "page cache (every input read once, untimed, before the rounds)",
        output_dir: std::env::temp_dir().display().to_string(),
        input_files: inputs.files,
        input_bytes: inputs.bytes,
        jpeg_files: inputs.jpegs.len(),
        jpeg_bytes: inputs.jpeg_bytes,
        configs: configs
            .iter()
            .zip(runs)
            .map(|(config, runs)| config.report(&inputs, runs, &decode_cpu))
            .collect(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        report.print_table();
    }
    Ok(())
}

/// The inputs as ingest sees them.
struct Inputs {
    files: usize,
    bytes: u64,
    jpegs: Vec<PathBuf>,
    jpeg_bytes: u64,
}

impl Inputs {
    /// Lists the inputs with ingest's own scan and reads each one once, which tells JPEGs
    /// from other files and leaves every file in the page cache.
    fn read(src: &Path) -> Result<Self> {
        let scanned = pipeline::scan(src, None)
            .with_context(|| format!("cannot list the inputs under {}", src.display()))?;
        let mut inputs = Self {
            files: scanned.files.len(),
            bytes: 0,
            jpegs: Vec::new(),
            jpeg_bytes: 0,
        };
        // Files with a `problem` are rejected by ingest without being read, so neither
        // configuration reads them.
        for file in scanned.files.iter().filter(|f| f.problem.is_none()) {
            let data = fs::read(&file.path)
                .with_context(|| format!("cannot read {}", file.path.display()))?;
            let size = data.len() as u64;
            inputs.bytes += size;
            if data.starts_with(&JPEG_MAGIC) {
                inputs.jpegs.push(file.path.clone());
                inputs.jpeg_bytes += size;
            }
        }
        if inputs.jpegs.is_empty() {
            bail!("{}: no JPEG files among the inputs", src.display());
        }
        Ok(inputs)
    }
}

#[derive(Clone, Copy)]
enum Config {
    Decode,
    Ingest { max_side: Option<u32> },
}

/// What one run did besides taking time; the same in every repeat.
#[derive(Clone, Copy)]
enum Outcome {
    Decoded { failed: usize },
    Ingested(IngestCounts),
}

#[derive(Clone, Copy, Serialize)]
struct IngestCounts {
    stored_as_is: u64,
    re_encoded: u64,
    rejected: u64,
}

#[derive(Default)]
struct Runs {
    samples: Vec<Sample>,
    outcome: Option<Outcome>,
}

impl Config {
    fn name(self) -> String {
        match self {
            Config::Decode => "decode".into(),
            Config::Ingest { max_side: None } => "ingest".into(),
            Config::Ingest { max_side: Some(n) } => format!("ingest --max-side {n}"),
        }
    }

    fn images(self, inputs: &Inputs) -> usize {
        match self {
            Config::Decode => inputs.jpegs.len(),
            Config::Ingest { .. } => inputs.files,
        }
    }

    fn input_bytes(self, inputs: &Inputs) -> u64 {
        match self {
            Config::Decode => inputs.jpeg_bytes,
            Config::Ingest { .. } => inputs.bytes,
        }
    }

    fn run_once(self, src: &Path, inputs: &Inputs, workers: usize) -> Result<(Sample, Outcome)> {
        match self {
            Config::Decode => {
                let (sample, failed) = measure(|| decode_all(&inputs.jpegs, workers))?;
                Ok((sample, Outcome::Decoded { failed }))
            }
            Config::Ingest { max_side } => {
                let (sample, counts) = ingest_once(src, workers, max_side)?;
                Ok((sample, Outcome::Ingested(counts)))
            }
        }
    }

    /// `decode_cpu`: the baseline's CPU seconds per image, by round.
    fn report(self, inputs: &Inputs, runs: Runs, decode_cpu: &[f64]) -> ConfigReport {
        let images = self.images(inputs);
        let input_bytes = self.input_bytes(inputs);
        let wall: Vec<f64> = runs.samples.iter().map(|s| s.wall_s).collect();
        let cpu: Vec<f64> = runs.samples.iter().map(|s| s.cpu_s).collect();
        let ratios: Vec<f64> = cpu
            .iter()
            .zip(decode_cpu)
            .map(|(cpu, decode)| cpu / images as f64 / decode)
            .collect();
        let (wall_s, cpu_s) = (median(&wall), median(&cpu));
        let (lowest, highest) = cpu
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &c| {
                (lo.min(c), hi.max(c))
            });
        let mb = input_bytes as f64 / MB;
        ConfigReport {
            name: self.name(),
            images,
            input_bytes,
            wall_s,
            cpu_s,
            cpu_spread_pct: (highest - lowest) / 2.0 / cpu_s * 100.0,
            images_per_s: images as f64 / wall_s,
            mb_per_s: mb / wall_s,
            images_per_cpu_s: images as f64 / cpu_s,
            mb_per_cpu_s: mb / cpu_s,
            cpu_per_image_vs_decode: median(&ratios),
            wall_s_samples: wall,
            cpu_s_samples: cpu,
            decode_failures: match runs.outcome {
                Some(Outcome::Decoded { failed }) => Some(failed),
                _ => None,
            },
            ingest_counts: match runs.outcome {
                Some(Outcome::Ingested(counts)) => Some(counts),
                _ => None,
            },
        }
    }
}

/// Reads and fully decodes every file on `workers` threads; returns how many failed to decode.
fn decode_all(jpegs: &[PathBuf], workers: usize) -> Result<usize> {
    // One file at a time rather than fixed chunks: a chunk holding a few large photos would
    // leave the other threads idle and understate what the decoder can do.
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let threads: Vec<_> = (0..workers)
            .map(|_| scope.spawn(|| decode_share(jpegs, &next)))
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("decode thread panicked"))
            .sum()
    })
}

fn decode_share(jpegs: &[PathBuf], next: &AtomicUsize) -> Result<usize> {
    let mut decoder = JpegDecoder::new().context("cannot start a JPEG decoder")?;
    let mut pixels = Vec::new();
    let mut failed = 0;
    while let Some(path) = jpegs.get(next.fetch_add(1, Ordering::Relaxed)) {
        let data = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        // The layout ingest decodes each colour model into, so that the baseline does
        // ingest's decoding work, no more and no less.
        let layout = match decoder.header(&data).map(|h| h.color) {
            Ok(JpegColor::Gray) => Pixels::Gray,
            Ok(JpegColor::Cmyk | JpegColor::Ycck) => Pixels::Cmyk,
            Ok(JpegColor::YCbCr | JpegColor::Rgb) => Pixels::Rgb,
            // Counted, not fatal: ingest rejects such a file and goes on.
            Err(_) => {
                failed += 1;
                continue;
            }
        };
        if decoder.decode(&data, layout, &mut pixels).is_err() {
            failed += 1;
        }
    }
    Ok(failed)
}

/// One timed ingest into a fresh temporary folder (an ingest into a folder that already
/// holds the split finds it up to date and does nothing); the folder is deleted untimed.
fn ingest_once(
    src: &Path,
    workers: usize,
    max_side: Option<u32>,
) -> Result<(Sample, IngestCounts)> {
    let out = tempfile::Builder::new()
        .prefix("bench-loader-ingest-")
        .tempdir()
        .with_context(|| {
            let dir = std::env::temp_dir();
            format!("cannot create an output folder under {}", dir.display())
        })?;
    let mut cfg = IngestConfig::new(src, out.path());
    cfg.workers = workers;
    cfg.max_side = max_side;
    let (sample, report) = measure(|| {
        pipeline::ingest(&cfg, &Quiet)
            .with_context(|| format!("ingest of {} into {}", src.display(), out.path().display()))
    })?;
    let dir = out.path().to_owned();
    out.close()
        .with_context(|| format!("cannot delete {}", dir.display()))?;
    let counts = report.split.counts;
    Ok((
        sample,
        IngestCounts {
            stored_as_is: counts.stored,
            re_encoded: counts.converted,
            rejected: counts.rejected,
        },
    ))
}

/// The middle value; the mean of the two middle ones for an even count.
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}

#[derive(Serialize)]
struct Report {
    src: String,
    cores: usize,
    workers: usize,
    repeats: u32,
    input_io: &'static str,
    output_dir: String,
    input_files: usize,
    input_bytes: u64,
    jpeg_files: usize,
    jpeg_bytes: u64,
    configs: Vec<ConfigReport>,
}

#[derive(Serialize)]
struct ConfigReport {
    name: String,
    images: usize,
    input_bytes: u64,
    wall_s: f64,
    cpu_s: f64,
    cpu_spread_pct: f64,
    images_per_s: f64,
    mb_per_s: f64,
    images_per_cpu_s: f64,
    mb_per_cpu_s: f64,
    cpu_per_image_vs_decode: f64,
    wall_s_samples: Vec<f64>,
    cpu_s_samples: Vec<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    decode_failures: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ingest_counts: Option<IngestCounts>,
}

impl Report {
    fn print_table(&self) {
        println!("bench-loader ingest --src {}", self.src);
        println!(
            "inputs: {} files, {:.1} MB, of which {} JPEG, {:.1} MB",
            self.input_files,
            self.input_bytes as f64 / MB,
            self.jpeg_files,
            self.jpeg_bytes as f64 / MB
        );
        println!(
            "cores: {}, workers: {}, medians of {} interleaved repeats",
            self.cores, self.workers, self.repeats
        );
        println!("input I/O: from the {}", self.input_io);
        println!("ingest output: under {}, fsynced", self.output_dir);
        println!();
        println!(
            "{:<22} {:>6} {:>8} {:>8} {:>6} {:>8} {:>7} {:>9} {:>8} {:>16}",
            "configuration",
            "images",
            "wall s",
            "CPU s",
            "CPU ±%",
            "img/s",
            "MB/s",
            "img/CPU-s",
            "MB/CPU-s",
            "CPU/img ÷ decode"
        );
        for c in &self.configs {
            println!(
                "{:<22} {:>6} {:>8.3} {:>8.3} {:>6.1} {:>8.1} {:>7.1} {:>9.1} {:>8.1} {:>16.2}",
                c.name,
                c.images,
                c.wall_s,
                c.cpu_s,
                c.cpu_spread_pct,
                c.images_per_s,
                c.mb_per_s,
                c.images_per_cpu_s,
                c.mb_per_cpu_s,
                c.cpu_per_image_vs_decode
            );
        }
        println!();
        for c in &self.configs {
            if let Some(failed) = c.decode_failures.filter(|&n| n > 0) {
                println!("{}: {failed} files failed to decode", c.name);
            }
            if let Some(n) = c.ingest_counts {
                println!(
                    "{}: {} stored as is, {} re-encoded, {} rejected",
                    c.name, n.stored_as_is, n.re_encoded, n.rejected
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_and_even_counts_ignores_order() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[7.5]), 7.5);
    }
}
