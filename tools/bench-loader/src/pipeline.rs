//! The pipeline benchmark (`bench-loader` without a subcommand): the streaming multi-crop
//! loader as a trainer sees it, or one of its stages alone, so that the slowest one shows.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::ValueEnum;
use dino_pipeline::augment::{Rgb, ViewMaker, draw_view};
use dino_pipeline::dataset::{Columns, Dataset, Verify};
use dino_pipeline::jpeg::{JpegDecoder, Pixels};
use dino_pipeline::loader::{Loader, LoaderConfig, QueueDepths};
use dino_pipeline::rng::sample_rng;
use serde::Serialize;

use crate::measure::{Sample, Stopwatch, peak_rss_mib};

const MB: f64 = 1e6;
const GIB: usize = 1 << 30;

/// Full mode's warm-up, excluded from the figures: at least this many batches and this long,
/// so that the threads have started, the first row groups are read and the queues have filled.
const WARMUP_BATCHES: u64 = 2;
const WARMUP: Duration = Duration::from_secs(2);

/// Decode mode holds the JPEGs of the split's first row groups in memory, up to this much.
const DECODE_HOLD_BYTES: usize = GIB;
/// Augment mode decodes this many samples up front, or fewer if their pixels reach
/// `AUGMENT_HOLD_BYTES` (large photos): enough variety of sizes and crops, bounded memory.
const AUGMENT_SAMPLES: usize = 256;
const AUGMENT_HOLD_BYTES: usize = GIB;

#[derive(clap::Args)]
pub struct Args {
    /// Shard folder written by `dino-stream ingest` (holds manifest.json)
    // An Option only because the `ingest` subcommand runs without it; clap requires it
    // otherwise.
    #[arg(long, value_name = "DIR", required = true)]
    data: Option<PathBuf>,
    /// Split to read
    #[arg(long, value_name = "NAME", default_value = "train")]
    split: String,
    /// Decode + augment threads (full, decode, augment) [default: the cores available]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    workers: Option<u32>,
    /// Samples per batch (full)
    #[arg(long, value_name = "B", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..))]
    batch_size: u32,
    /// 96 px local views per sample, besides the two 224 px global views (full, augment)
    #[arg(long, value_name = "N", default_value_t = 8)]
    local_crops: u32,
    /// How long to measure, after the warm-up and any up-front loading
    #[arg(long, value_name = "S", default_value = "20", value_parser = parse_seconds)]
    seconds: Duration,
    /// What to run
    #[arg(long, value_enum, default_value_t = Mode::Full)]
    mode: Mode,
    /// How the shards are checked when the split is opened (before the measurement)
    #[arg(long, value_enum, default_value_t = VerifyArg::Checksums)]
    verify: VerifyArg,
    /// Full mode: let the loader decode JPEGs at 1/2, 1/4 or 1/8 of their size when every
    /// view's crop still has its output size there (see LoaderConfig::dct_scaling)
    #[arg(long)]
    dct_scaling: bool,
    /// Print one JSON object instead of the table (then the two summary lines)
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    /// The real loader, batches dropped as they arrive
    Full,
    /// Row groups read in order, nothing decoded (one thread, as the loader's reader)
    Read,
    /// JPEGs decoded to RGB, no views
    Decode,
    /// Views made from samples decoded up front
    Augment,
}

#[derive(Clone, Copy, ValueEnum)]
enum VerifyArg {
    /// Sizes, footers and provenance records only
    Footers,
    /// Also re-hash every shard (reads all the data once)
    Checksums,
}

impl From<VerifyArg> for Verify {
    fn from(v: VerifyArg) -> Self {
        match v {
            VerifyArg::Footers => Verify::Footers,
            VerifyArg::Checksums => Verify::Checksums,
        }
    }
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    let seconds: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if seconds <= 0.0 {
        return Err("must be above 0".into());
    }
    Duration::try_from_secs_f64(seconds).map_err(|e| e.to_string())
}

/// The name clap shows for a value.
fn name(value: impl ValueEnum) -> String {
    value
        .to_possible_value()
        .expect("no value is hidden from the command line")
        .get_name()
        .to_owned()
}

pub fn run(args: &Args) -> Result<()> {
    dino_pipeline::loader::pin_mmap_threshold();
    let dir = args
        .data
        .as_deref()
        .expect("clap requires --data when no subcommand is given");
    // One configuration for every mode, so that the stages run alone do exactly the
    // loader's work (same views, same seed, same verification).
    let mut cfg = LoaderConfig::new(dir, &args.split);
    if let Some(n) = args.workers {
        cfg.workers = n as usize;
    }
    cfg.batch_size = args.batch_size as usize;
    cfg.local_crops = args.local_crops as usize;
    cfg.verify = args.verify.into();
    cfg.dct_scaling = args.dct_scaling;

    let (measured, samples, split_samples, figures) = match args.mode {
        Mode::Full => full(&cfg, args.seconds)?,
        Mode::Read => {
            let dataset = open(&cfg)?;
            let (measured, samples, figures) = read(&dataset, args.seconds)?;
            (measured, samples, dataset.len, figures)
        }
        Mode::Decode => {
            let dataset = open(&cfg)?;
            let (measured, samples, figures) = decode(&dataset, cfg.workers, args.seconds)?;
            (measured, samples, dataset.len, figures)
        }
        Mode::Augment => {
            let dataset = open(&cfg)?;
            let (measured, samples, figures) = augment(&dataset, &cfg, args.seconds)?;
            (measured, samples, dataset.len, figures)
        }
    };
    let report = Report {
        data: dir.display().to_string(),
        split: cfg.split.clone(),
        mode: name(args.mode),
        verify: name(args.verify),
        dct_scaling: args.dct_scaling,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        threads: match args.mode {
            Mode::Read => 1,
            _ => cfg.workers,
        },
        split_samples,
        wall_s: measured.wall_s,
        cpu_s: measured.cpu_s,
        samples,
        samples_per_sec: samples as f64 / measured.wall_s,
        samples_per_cpu_sec: samples as f64 / measured.cpu_s,
        cpu_ms_per_sample: measured.cpu_s * 1e3 / samples as f64,
        peak_rss_mib: peak_rss_mib()?,
        figures,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        report.print_table();
    }
    // Always last, whatever the format: what scripts comparing runs read.
    println!("samples_per_sec={:.3}", report.samples_per_sec);
    println!("samples_per_cpu_sec={:.3}", report.samples_per_cpu_sec);
    Ok(())
}

fn open(cfg: &LoaderConfig) -> Result<Dataset> {
    let dataset = Dataset::open(&cfg.dir, &cfg.split, cfg.verify)
        .with_context(|| format!("cannot open split '{}' of {}", cfg.split, cfg.dir.display()))?;
    if dataset.len == 0 {
        bail!(
            "{}: split '{}' has no samples",
            cfg.dir.display(),
            cfg.split
        );
    }
    Ok(dataset)
}

fn read_group(dataset: &Dataset, index: usize) -> Result<Columns> {
    let group = &dataset.row_groups[index];
    dataset.read(group).with_context(|| {
        format!(
            "cannot read row group {} of {}",
            group.index,
            dataset.shards[group.shard].display()
        )
    })
}

/// JPEG bytes in a row group's columns.
fn jpeg_bytes(columns: &Columns) -> usize {
    let offsets = columns.jpegs.value_offsets();
    (offsets[offsets.len() - 1] - offsets[0]) as usize
}

fn rows(columns: &Columns) -> usize {
    columns.jpegs.value_offsets().len() - 1
}

/// The real loader, streaming epochs, each batch dropped as soon as it arrives.
fn full(cfg: &LoaderConfig, duration: Duration) -> Result<(Sample, u64, u64, Figures)> {
    let mut loader = Loader::start(cfg.clone()).with_context(|| {
        format!(
            "cannot start the loader on split '{}' of {}",
            cfg.split,
            cfg.dir.display()
        )
    })?;
    let next_batch = |loader: &mut Loader| -> Result<()> {
        match loader.next() {
            Some(batch) => batch.map(drop).with_context(|| {
                format!("loader on split '{}' of {}", cfg.split, cfg.dir.display())
            }),
            // It streams epochs until dropped and reports its errors as items.
            None => bail!("the loader stopped without an error"),
        }
    };

    let warmup = Instant::now();
    let mut warmup_batches = 0;
    while warmup_batches < WARMUP_BATCHES || warmup.elapsed() < WARMUP {
        next_batch(&mut loader)?;
        warmup_batches += 1;
    }
    let warmup_s = warmup.elapsed().as_secs_f64();

    let before = loader.stats();
    let deadline = Instant::now() + duration;
    let watch = Stopwatch::start()?;
    let mut queues = QueueStats::default();
    let mut batches = 0u64;
    while Instant::now() < deadline {
        next_batch(&mut loader)?;
        batches += 1;
        // Only between batches: receiving a batch takes the loader mutably, so no other
        // thread can look at the queues meanwhile.
        queues.add(loader.queue_depths());
    }
    let measured = watch.elapsed()?;
    let after = loader.stats();

    let wall = measured.wall_s;
    let workers = cfg.workers as f64;
    let made = (after.samples - before.samples) as f64;
    // Capacities as Loader::start sizes the channels.
    let queues = queues.report([
        cfg.workers * 8,
        cfg.batch_size * cfg.buffers,
        cfg.buffers,
        cfg.buffers,
    ]);
    let figures = Figures::Full(FullFigures {
        batch_size: cfg.batch_size,
        views: format!(
            "2 x {} + {} x {}",
            cfg.global[0].size, cfg.local_crops, cfg.local.size
        ),
        warmup_batches,
        warmup_s,
        batches,
        reader_mb_per_s: (after.bytes - before.bytes) as f64 / MB / wall,
        row_groups_per_s: (after.row_groups - before.row_groups) as f64 / wall,
        decode_ms_per_sample: (after.decode_s - before.decode_s) * 1e3 / made,
        augment_ms_per_sample: (after.augment_s - before.augment_s) * 1e3 / made,
        reader_busy_fraction: (after.reader_busy_s - before.reader_busy_s) / wall,
        reader_waiting_fraction: (after.reader_wait_s - before.reader_wait_s) / wall,
        workers_busy_fraction: (after.decode_s - before.decode_s + after.augment_s
            - before.augment_s)
            / (wall * workers),
        workers_waiting_fraction: (after.worker_wait_s - before.worker_wait_s) / (wall * workers),
        batcher_waiting_fraction: (after.batcher_wait_s - before.batcher_wait_s) / wall,
        decode_failures: after.decode_failures - before.decode_failures,
        queues,
    });
    let delivered = batches * cfg.batch_size as u64;
    Ok((measured, delivered, loader.dataset_len(), figures))
}

/// Row groups read in order, over and over, on this thread.
fn read(dataset: &Dataset, duration: Duration) -> Result<(Sample, u64, Figures)> {
    let deadline = Instant::now() + duration;
    let watch = Stopwatch::start()?;
    let (mut groups, mut samples, mut jpeg, mut stored) = (0u64, 0u64, 0usize, 0u64);
    for index in (0..dataset.row_groups.len()).cycle() {
        let columns = read_group(dataset, index)?;
        groups += 1;
        samples += rows(&columns) as u64;
        jpeg += jpeg_bytes(&columns);
        stored += dataset.row_groups[index].bytes;
        if Instant::now() >= deadline {
            break;
        }
    }
    let measured = watch.elapsed()?;
    let wall = measured.wall_s;
    let figures = Figures::Read(ReadFigures {
        row_groups_in_split: dataset.row_groups.len(),
        row_groups_read: groups,
        passes: groups as f64 / dataset.row_groups.len() as f64,
        row_groups_per_s: groups as f64 / wall,
        jpeg_mb_per_s: jpeg as f64 / MB / wall,
        stored_mb_per_s: stored as f64 / MB / wall,
    });
    Ok((measured, samples, figures))
}

/// Reads row groups in order until all are read or their JPEGs reach `limit` bytes (the
/// last one read may pass it).
fn hold_jpegs(dataset: &Dataset, limit: usize) -> Result<Vec<Columns>> {
    let mut held = Vec::new();
    let mut bytes = 0;
    for index in 0..dataset.row_groups.len() {
        if bytes >= limit {
            break;
        }
        let columns = read_group(dataset, index)?;
        bytes += jpeg_bytes(&columns);
        held.push(columns);
    }
    Ok(held)
}

/// Runs `work(state, i)` for i = 0, 1, 2, ... spread over `threads` threads, each with its
/// own state from `init`, until `deadline`; returns how many ran and the threads' states.
fn until_deadline<S: Send>(
    threads: usize,
    deadline: Instant,
    init: impl Fn() -> Result<S> + Sync,
    work: impl Fn(&mut S, usize) -> Result<()> + Sync,
) -> Result<(u64, Vec<S>)> {
    // One item at a time from a shared counter, as the loader's workers take jobs from one
    // queue: a thread given a run of large images does not hold the others back.
    let next = AtomicUsize::new(0);
    let states = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut state = init()?;
                    while Instant::now() < deadline {
                        work(&mut state, next.fetch_add(1, Ordering::Relaxed))?;
                    }
                    Ok(state)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("benchmark thread panicked"))
            .collect::<Result<Vec<S>>>()
    })?;
    // Every index taken was worked on: each thread checks the deadline before taking one.
    Ok((next.into_inner() as u64, states))
}

struct Decoding {
    decoder: JpegDecoder,
    pixels: Vec<u8>,
    jpeg_bytes: usize,
    failed: u64,
}

/// JPEGs held in memory decoded to RGB on `workers` threads, over and over.
fn decode(dataset: &Dataset, workers: usize, duration: Duration) -> Result<(Sample, u64, Figures)> {
    let held = hold_jpegs(dataset, DECODE_HOLD_BYTES)?;
    let jpegs: Vec<&[u8]> = held
        .iter()
        .flat_map(|c| (0..rows(c)).map(|row| c.jpegs.value(row)))
        .collect();

    let deadline = Instant::now() + duration;
    let watch = Stopwatch::start()?;
    let (samples, states) = until_deadline(
        workers,
        deadline,
        || {
            Ok(Decoding {
                decoder: JpegDecoder::new().context("cannot start a JPEG decoder")?,
                pixels: Vec::new(),
                jpeg_bytes: 0,
                failed: 0,
            })
        },
        |d, i| {
            // As the loader's workers do: RGB always, and a warning (damaged data) counts
            // as a failure.
            let jpeg = jpegs[i % jpegs.len()];
            d.jpeg_bytes += jpeg.len();
            match d.decoder.decode(jpeg, Pixels::Rgb, &mut d.pixels) {
                Ok(decoded) if decoded.warning.is_none() => {}
                _ => d.failed += 1,
            }
            Ok(())
        },
    )?;
    let measured = watch.elapsed()?;
    let figures = Figures::Decode(DecodeFigures {
        distinct_samples: jpegs.len(),
        jpeg_mb_per_s: states.iter().map(|d| d.jpeg_bytes).sum::<usize>() as f64
            / MB
            / measured.wall_s,
        decode_failures: states.iter().map(|d| d.failed).sum(),
    });
    Ok((measured, samples, figures))
}

struct Image {
    index: u64,
    key: String,
    pixels: Vec<u8>,
    width: u32,
    height: u32,
}

/// The first samples of the split that decode, in order, as the loader's workers decode
/// them; returns them and how many were skipped because they did not decode.
fn decode_images(dataset: &Dataset) -> Result<(Vec<Image>, u64)> {
    let mut decoder = JpegDecoder::new().context("cannot start a JPEG decoder")?;
    let (mut images, mut skipped, mut bytes) = (Vec::new(), 0, 0);
    for index in 0..dataset.row_groups.len() {
        let columns = read_group(dataset, index)?;
        for row in 0..rows(&columns) {
            if images.len() == AUGMENT_SAMPLES || bytes >= AUGMENT_HOLD_BYTES {
                return Ok((images, skipped));
            }
            let mut pixels = Vec::new();
            match decoder.decode(columns.jpegs.value(row), Pixels::Rgb, &mut pixels) {
                Ok(d) if d.warning.is_none() => {
                    bytes += pixels.len();
                    images.push(Image {
                        index: dataset.row_groups[index].first + row as u64,
                        key: columns.keys.value(row).to_owned(),
                        pixels,
                        width: d.width,
                        height: d.height,
                    });
                }
                _ => skipped += 1,
            }
        }
    }
    Ok((images, skipped))
}

/// All views of samples decoded up front made on `workers` threads, over and over.
fn augment(
    dataset: &Dataset,
    cfg: &LoaderConfig,
    duration: Duration,
) -> Result<(Sample, u64, Figures)> {
    let (images, skipped) = decode_images(dataset)?;
    if images.is_empty() {
        bail!(
            "{}: none of the first samples of split '{}' decodes",
            cfg.dir.display(),
            cfg.split
        );
    }
    let views = 2 + cfg.local_crops;
    let side = cfg.global[0].size.max(cfg.local.size) as usize;

    let deadline = Instant::now() + duration;
    let watch = Stopwatch::start()?;
    // One output buffer per thread, every view written over it: the loader writes each view
    // into its own slot of a batch buffer, the same work on memory less often in cache.
    let (samples, _) = until_deadline(
        cfg.workers,
        deadline,
        || Ok((ViewMaker::new(), vec![0u8; side * side * 3])),
        |(maker, out), i| {
            let image = &images[i % images.len()];
            let (width, height) = (image.width, image.height);
            let src = Rgb {
                pixels: &image.pixels,
                width,
                height,
            };
            // Each pass over the images counts as an epoch, so every pass draws new views.
            let pass = (i / images.len()) as u64;
            let mut r = sample_rng(cfg.seed, pass, image.index);
            let specs = cfg
                .global
                .iter()
                .chain(std::iter::repeat_n(&cfg.local, cfg.local_crops));
            for spec in specs {
                // Drawn and made in the loader's order, so the views are the loader's.
                let view = draw_view(&mut r, spec, width, height);
                let size = spec.size as usize;
                maker
                    .make_view(src, &view, spec.size, &mut out[..size * size * 3])
                    .with_context(|| format!("sample {} ({})", image.index, image.key))?;
            }
            Ok(())
        },
    )?;
    let measured = watch.elapsed()?;
    let figures = Figures::Augment(AugmentFigures {
        distinct_samples: images.len(),
        undecodable_skipped: skipped,
        views_per_sample: views,
        views_per_s: (samples * views as u64) as f64 / measured.wall_s,
    });
    Ok((measured, samples, figures))
}

/// Queue depths summed and maxed over the samples taken.
#[derive(Default)]
struct QueueStats {
    count: usize,
    sum: [usize; 4],
    max: [usize; 4],
}

impl QueueStats {
    fn add(&mut self, d: QueueDepths) {
        self.count += 1;
        for (k, depth) in [d.jobs, d.done, d.ready, d.free].into_iter().enumerate() {
            self.sum[k] += depth;
            self.max[k] = self.max[k].max(depth);
        }
    }

    /// `capacity`: of jobs, done, ready and free, in that order.
    fn report(&self, capacity: [usize; 4]) -> Queues {
        let occupancy = |k: usize| Occupancy {
            mean: self.sum[k] as f64 / self.count as f64,
            max: self.max[k],
            capacity: capacity[k],
        };
        Queues {
            samples: self.count,
            jobs: occupancy(0),
            done: occupancy(1),
            ready: occupancy(2),
            free: occupancy(3),
        }
    }
}

#[derive(Serialize)]
struct Report {
    data: String,
    split: String,
    mode: String,
    verify: String,
    dct_scaling: bool,
    cores: usize,
    threads: usize,
    split_samples: u64,
    wall_s: f64,
    cpu_s: f64,
    samples: u64,
    samples_per_sec: f64,
    samples_per_cpu_sec: f64,
    cpu_ms_per_sample: f64,
    peak_rss_mib: f64,
    #[serde(flatten)]
    figures: Figures,
}

/// What only one mode measures; its fields sit beside the common ones in the JSON.
#[derive(Serialize)]
#[serde(untagged)]
enum Figures {
    Full(FullFigures),
    Read(ReadFigures),
    Decode(DecodeFigures),
    Augment(AugmentFigures),
}

#[derive(Serialize)]
struct FullFigures {
    batch_size: usize,
    views: String,
    warmup_batches: u64,
    warmup_s: f64,
    batches: u64,
    reader_mb_per_s: f64,
    row_groups_per_s: f64,
    decode_ms_per_sample: f64,
    augment_ms_per_sample: f64,
    // Fractions of the wall time; the workers' of their total (wall time x workers).
    reader_busy_fraction: f64,
    reader_waiting_fraction: f64,
    workers_busy_fraction: f64,
    workers_waiting_fraction: f64,
    batcher_waiting_fraction: f64,
    decode_failures: u64,
    queues: Queues,
}

#[derive(Serialize)]
struct Queues {
    samples: usize,
    jobs: Occupancy,
    done: Occupancy,
    ready: Occupancy,
    free: Occupancy,
}

#[derive(Serialize)]
struct Occupancy {
    mean: f64,
    max: usize,
    capacity: usize,
}

#[derive(Serialize)]
struct ReadFigures {
    row_groups_in_split: usize,
    row_groups_read: u64,
    passes: f64,
    row_groups_per_s: f64,
    jpeg_mb_per_s: f64,
    stored_mb_per_s: f64,
}

#[derive(Serialize)]
struct DecodeFigures {
    distinct_samples: usize,
    jpeg_mb_per_s: f64,
    decode_failures: u64,
}

#[derive(Serialize)]
struct AugmentFigures {
    distinct_samples: usize,
    undecodable_skipped: u64,
    views_per_sample: usize,
    views_per_s: f64,
}

fn pct(fraction: f64) -> String {
    format!("{:.1}%", fraction * 100.0)
}

impl Report {
    fn print_table(&self) {
        println!(
            "bench-loader --data {} --split {} --mode {} --verify {}{}",
            self.data,
            self.split,
            self.mode,
            self.verify,
            if self.dct_scaling {
                " --dct-scaling"
            } else {
                ""
            }
        );
        println!(
            "split: {} samples; cores: {}, threads: {}",
            self.split_samples, self.cores, self.threads
        );
        match &self.figures {
            Figures::Full(f) => println!(
                "batches of {} with views {}; warm-up {} batches, {:.1} s (excluded)",
                f.batch_size, f.views, f.warmup_batches, f.warmup_s
            ),
            Figures::Read(f) => println!(
                "{} row groups read, {:.1} passes over the split's {}",
                f.row_groups_read, f.passes, f.row_groups_in_split
            ),
            Figures::Decode(f) => println!(
                "{} distinct samples held in memory, decoded over and over",
                f.distinct_samples
            ),
            Figures::Augment(f) => println!(
                "{} distinct samples decoded up front ({} undecodable skipped), {} views each",
                f.distinct_samples, f.undecodable_skipped, f.views_per_sample
            ),
        }
        println!(
            "measured: {:.2} s wall, {:.2} CPU s, {} samples",
            self.wall_s, self.cpu_s, self.samples
        );
        println!();
        let row = |stage: &str, figures: String| println!("{stage:<10} {figures}");
        match &self.figures {
            Figures::Full(f) => {
                row(
                    "reader",
                    format!(
                        "{:.1} MB/s of JPEG, {:.3} row groups/s; busy {}, waiting {}",
                        f.reader_mb_per_s,
                        f.row_groups_per_s,
                        pct(f.reader_busy_fraction),
                        pct(f.reader_waiting_fraction)
                    ),
                );
                row(
                    "workers",
                    format!(
                        "decode {:.2} ms/sample, augment {:.2} ms/sample; busy {}, waiting {}",
                        f.decode_ms_per_sample,
                        f.augment_ms_per_sample,
                        pct(f.workers_busy_fraction),
                        pct(f.workers_waiting_fraction)
                    ),
                );
                row(
                    "batcher",
                    format!(
                        "waiting for the consumer {}",
                        pct(f.batcher_waiting_fraction)
                    ),
                );
                let q = &f.queues;
                row(
                    "queues",
                    format!("mean/max/capacity over {} samples:", q.samples),
                );
                for (name, o) in [
                    ("jobs", &q.jobs),
                    ("done", &q.done),
                    ("ready", &q.ready),
                    ("free", &q.free),
                ] {
                    row(
                        "",
                        format!("{name:<6} {:>7.1} {:>5} {:>5}", o.mean, o.max, o.capacity),
                    );
                }
                row(
                    "failures",
                    format!("{} samples did not decode", f.decode_failures),
                );
            }
            Figures::Read(f) => row(
                "reader",
                format!(
                    "{:.1} MB/s of JPEG ({:.1} MB/s stored), {:.2} row groups/s",
                    f.jpeg_mb_per_s, f.stored_mb_per_s, f.row_groups_per_s
                ),
            ),
            Figures::Decode(f) => {
                row("decode", format!("{:.1} MB/s of JPEG", f.jpeg_mb_per_s));
                row("failures", format!("{} decodes failed", f.decode_failures));
            }
            Figures::Augment(f) => row("augment", format!("{:.1} views/s", f.views_per_s)),
        }
        row(
            "overall",
            format!(
                "{:.1} samples/s, {:.1} samples/CPU-s, {:.2} CPU ms/sample",
                self.samples_per_sec, self.samples_per_cpu_sec, self.cpu_ms_per_sample
            ),
        );
        row("memory", format!("peak RSS {:.1} MiB", self.peak_rss_mib));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_must_be_a_positive_number() {
        assert_eq!(parse_seconds("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_seconds("0").is_err());
        assert!(parse_seconds("-2").is_err());
        assert!(parse_seconds("soon").is_err());
    }

    #[test]
    fn queue_occupancy_is_mean_and_max_per_queue() {
        let mut stats = QueueStats::default();
        let depths = |jobs, done, ready, free| QueueDepths {
            jobs,
            done,
            ready,
            free,
        };
        stats.add(depths(4, 0, 1, 3));
        stats.add(depths(8, 2, 0, 1));
        let q = stats.report([8, 256, 4, 4]);
        assert_eq!(q.samples, 2);
        assert_eq!((q.jobs.mean, q.jobs.max, q.jobs.capacity), (6.0, 8, 8));
        assert_eq!((q.done.mean, q.done.max), (1.0, 2));
        assert_eq!((q.ready.mean, q.ready.max), (0.5, 1));
        assert_eq!((q.free.mean, q.free.max, q.free.capacity), (2.0, 3, 4));
    }
}
