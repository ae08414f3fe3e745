//! The streaming multi-crop loader: shards in, DINO batches out.
//!
//! ```text
//!  reader ──jobs──▶ N workers ──done──▶ batcher ──ready──▶ consumer
//!    ▲                                                        │
//!    └──────────────────────── free buffers ◀─────────────────┘
//! ```
//! - The **reader** walks this rank's share of the epoch order (its part of each global
//!   batch), reads each row group once (key, label and jpeg columns only) and hands every
//!   sample to the workers together with the batch buffer and slot it goes to. Arrow buffers are shared, not copied.
//! - Each **worker** decodes a sample once and cuts all its views from that one image,
//!   straight into its slot of the batch buffer.
//! - The **batcher** counts finished slots and hands out whole batches in order.
//! - Buffers come back when the consumer drops a batch, so the steady state allocates no
//!   pixel memory; bounded channels give backpressure at every stage, and no lock is taken
//!   per sample.
//!
//! A sample's views depend only on (seed, epoch, global index), and the epoch order only on
//! (seed, epoch), so batches are byte-identical whatever the worker count or scheduling.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError, bounded, select};

use crate::augment::{Rgb, ViewMaker, ViewParams, ViewSpec, dct_denominator, draw_view};
use crate::batch::{Batch, BatchShape, LoanedBatch, Position, SharedBatch};
use crate::dataset::{Columns, Dataset, DatasetError, Verify};
use crate::jpeg::{JpegDecoder, Pixels};
use crate::order::{SampleRef, epoch_order, rank_share, samples_per_rank};
use crate::rng;
use crate::shard::ShardError;
use crate::stats::{self, Stats, StatsSnapshot};

#[derive(Debug, Clone)]
pub struct LoaderConfig {
    pub dir: PathBuf,
    pub split: String,
    pub batch_size: usize,
    pub workers: usize,
    pub seed: u64,
    /// The two global views (the recipe blurs and solarizes them differently).
    pub global: [ViewSpec; 2],
    pub local: ViewSpec,
    pub local_crops: usize,
    /// Row groups whose samples are shuffled together; memory holds about this many.
    pub shuffle_window: usize,
    pub rank: usize,
    pub world: usize,
    /// Where to start: an earlier batch's `next`, or the beginning.
    pub start: Position,
    /// Stop before this epoch; `None` streams forever.
    pub end_epoch: Option<u64>,
    /// Batch buffers in circulation (being filled, ready, or lent to the consumer). A
    /// consumer that keeps `buffers` batches without dropping any stalls the loader.
    pub buffers: usize,
    pub verify: Verify,
    /// Decode at 1/2, 1/4 or 1/8 of the size when every view's crop box still has at least
    /// its output size there. Resolution-safe, but the resampler then sees DCT-scaled pixels
    /// and reads past the box edges, so views differ slightly from full-size decoding.
    pub dct_scaling: bool,
}

impl LoaderConfig {
    /// The recipe's defaults: 2 x 224 + 8 x 96 views, batch 64.
    pub fn new(dir: impl Into<PathBuf>, split: impl Into<String>) -> Self {
        Self {
            dir: dir.into(),
            split: split.into(),
            batch_size: 64,
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            seed: 0,
            global: [ViewSpec::global_1(), ViewSpec::global_2()],
            local: ViewSpec::local(),
            local_crops: 8,
            shuffle_window: 4,
            rank: 0,
            world: 1,
            start: Position::default(),
            end_epoch: None,
            buffers: 4,
            verify: Verify::Checksums,
            dct_scaling: false,
        }
    }

    pub fn shape(&self) -> BatchShape {
        BatchShape {
            batch_size: self.batch_size,
            global_size: self.global[0].size,
            local_size: self.local.size,
            local_crops: self.local_crops,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error(transparent)]
    Shard(#[from] ShardError),
    #[error("invalid loader setting {setting}: {why}")]
    Config { setting: &'static str, why: String },
    #[error("sample {index} ({key}): {why}")]
    Augment {
        index: u64,
        key: String,
        why: String,
    },
}

fn config_error(setting: &'static str, why: impl Into<String>) -> LoaderError {
    LoaderError::Config {
        setting,
        why: why.into(),
    }
}

/// One sample as the reader found it.
#[derive(Clone)]
struct SampleData {
    columns: Arc<Columns>,
    row: usize,
    index: u64,
}

impl SampleData {
    fn jpeg(&self) -> &[u8] {
        self.columns.jpegs.value(self.row)
    }
    fn label(&self) -> i32 {
        self.columns.labels.value(self.row)
    }
    fn key(&self) -> &str {
        self.columns.keys.value(self.row)
    }
}

struct Job {
    seq: u64,
    epoch: u64,
    batch: Arc<SharedBatch>,
    slot: usize,
    sample: SampleData,
    /// Used in place of `sample` if it does not decode: a neighbour in the epoch order.
    fallback: SampleData,
}

struct Done {
    seq: u64,
    batch: Arc<SharedBatch>,
    error: Option<LoaderError>,
}

type Ready = Result<LoanedBatch, LoaderError>;

/// A running loader; iterate to get batches in order. Dropping it stops the threads.
pub struct Loader {
    ready: Receiver<Ready>,
    stop: Option<Sender<()>>,
    threads: Vec<JoinHandle<()>>,
    stats: Arc<Stats>,
    queues: Queues,
    batches_per_epoch: u64,
    dataset_len: u64,
}

/// Receiver handles kept only to read queue occupancy.
struct Queues {
    jobs: Receiver<Job>,
    done: Receiver<Done>,
    ready: Receiver<Ready>,
    free: Receiver<Arc<SharedBatch>>,
}

/// How full each queue is right now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDepths {
    pub jobs: usize,
    pub done: usize,
    pub ready: usize,
    pub free: usize,
}

impl Loader {
    pub fn start(cfg: LoaderConfig) -> Result<Self, LoaderError> {
        if cfg.batch_size == 0 || cfg.workers == 0 || cfg.buffers < 2 || cfg.world == 0 {
            return Err(config_error(
                "batch_size/workers/buffers/world",
                "batch size, workers and world must be >= 1, buffers >= 2",
            ));
        }
        if cfg.rank >= cfg.world {
            return Err(config_error(
                "rank",
                format!("{} is not below world {}", cfg.rank, cfg.world),
            ));
        }
        if cfg.global[0].size != cfg.global[1].size {
            return Err(config_error(
                "global size",
                "both global views need one size",
            ));
        }
        let dataset = Arc::new(Dataset::open(&cfg.dir, &cfg.split, cfg.verify)?);
        let per_rank = samples_per_rank(dataset.len, cfg.world, cfg.batch_size);
        if per_rank == 0 {
            return Err(config_error(
                "batch_size",
                format!(
                    "{} samples cannot give each of {} rank(s) one batch of {}",
                    dataset.len, cfg.world, cfg.batch_size
                ),
            ));
        }
        if !cfg.start.consumed.is_multiple_of(cfg.batch_size as u64)
            || cfg.start.consumed > per_rank
        {
            return Err(config_error(
                "start",
                format!(
                    "{} consumed samples is not a whole number of batches of {} within an \
                     epoch of {per_rank}",
                    cfg.start.consumed, cfg.batch_size
                ),
            ));
        }

        let shape = cfg.shape();
        let (free_tx, free_rx) = bounded(cfg.buffers);
        for _ in 0..cfg.buffers {
            free_tx
                .send(Arc::new(SharedBatch::new(Batch::new(shape))))
                .expect("room for every buffer");
        }
        let (jobs_tx, jobs_rx) = bounded::<Job>(cfg.workers * 8);
        let (done_tx, done_rx) = bounded::<Done>(cfg.batch_size * cfg.buffers);
        let (ready_tx, ready_rx) = bounded::<Ready>(cfg.buffers);
        let (stop_tx, stop_rx) = bounded::<()>(0);
        let stats = Arc::new(Stats::default());
        let logged = Arc::new(Mutex::new(HashSet::new()));

        let mut threads = Vec::new();
        let reader = Reader {
            cfg: cfg.clone(),
            dataset: dataset.clone(),
            free: free_rx.clone(),
            jobs: jobs_tx,
            ready: ready_tx.clone(),
            stop: stop_rx,
            stats: stats.clone(),
        };
        threads.push(spawn("dino-reader", move || reader.run()));
        for i in 0..cfg.workers {
            let worker = Worker {
                seed: cfg.seed,
                specs: cfg.clone(),
                shape,
                jobs: jobs_rx.clone(),
                done: done_tx.clone(),
                stats: stats.clone(),
                logged: logged.clone(),
            };
            threads.push(spawn(&format!("dino-worker-{i}"), move || worker.run()));
        }
        drop(done_tx);
        let batcher = Batcher {
            batch_size: cfg.batch_size,
            done: done_rx.clone(),
            ready: ready_tx,
            free: free_tx,
            stats: stats.clone(),
        };
        threads.push(spawn("dino-batcher", move || batcher.run()));

        Ok(Self {
            ready: ready_rx.clone(),
            stop: Some(stop_tx),
            threads,
            stats,
            queues: Queues {
                jobs: jobs_rx,
                done: done_rx,
                ready: ready_rx,
                free: free_rx,
            },
            batches_per_epoch: per_rank / cfg.batch_size as u64,
            dataset_len: dataset.len,
        })
    }

    /// Batches this rank gets per epoch (the remainder of the epoch is dropped).
    pub fn batches_per_epoch(&self) -> u64 {
        self.batches_per_epoch
    }

    /// Samples in the split.
    pub fn dataset_len(&self) -> u64 {
        self.dataset_len
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    pub fn queue_depths(&self) -> QueueDepths {
        let q = &self.queues;
        let depths = QueueDepths {
            jobs: q.jobs.len(),
            done: q.done.len(),
            ready: q.ready.len(),
            free: q.free.len(),
        };
        for (name, value) in [
            ("jobs", depths.jobs),
            ("done", depths.done),
            ("ready", depths.ready),
            ("free", depths.free),
        ] {
            metrics::gauge!(stats::QUEUE_DEPTH, "queue" => name).set(value as f64);
        }
        depths
    }
}

/// Pins glibc's mmap threshold at 1 MiB. glibc otherwise raises it after every large free, so
/// the loader's row-group buffers (8-64 MiB, allocated and freed as the reader moves on) end
/// up on the heap, fragment it, and peak RSS creeps up with run time and with the number of
/// distinct row groups read. Measured on 1k vs 10k samples (8 MiB row groups, 20 s): 196 vs
/// 224 MiB without this, 177 vs 186 MiB with it. Not for the trainer: Burn's CPU activations
/// (a few MiB each) would then be mmapped and page-faulted afresh every step, which made a
/// quickstart step 1.3x slower (benches/train_step.rs, side by side).
pub fn pin_mmap_threshold() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator tuning; called before the loader's threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

impl Iterator for Loader {
    type Item = Result<LoanedBatch, LoaderError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.ready.recv().ok()
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        drop(self.stop.take()); // wakes a reader waiting for a free buffer
        // Drain what is ready so the batcher and workers are never blocked on a full queue.
        let (_, rx) = bounded::<Ready>(0);
        let ready = std::mem::replace(&mut self.ready, rx);
        let drain = std::thread::spawn(move || for _ in ready {});
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let _ = drain.join();
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(f)
        .expect("spawn a loader thread")
}

struct Reader {
    cfg: LoaderConfig,
    dataset: Arc<Dataset>,
    free: Receiver<Arc<SharedBatch>>,
    jobs: Sender<Job>,
    ready: Sender<Ready>,
    stop: Receiver<()>,
    stats: Arc<Stats>,
}

/// Neighbour used when the sample at `p` of a share does not decode.
fn fallback_position(p: usize, len: usize) -> usize {
    if p > 0 { p - 1 } else { (p + 1).min(len - 1) }
}

impl Reader {
    fn run(self) {
        if let Err(e) = self.stream() {
            let _ = self.ready.send(Err(e));
        }
    }

    fn stream(&self) -> Result<(), LoaderError> {
        let b = self.cfg.batch_size;
        let mut seq = 0u64;
        let mut position = self.cfg.start;
        while self.cfg.end_epoch.is_none_or(|end| position.epoch < end) {
            let epoch = position.epoch;
            let order = epoch_order(
                &self.dataset.row_groups,
                self.cfg.seed,
                epoch,
                self.cfg.shuffle_window,
            );
            let share = rank_share(&order, self.cfg.rank, self.cfg.world, b);
            let first = position.consumed as usize;
            // The last position at which each row group is needed, as sample or fallback, so
            // it is dropped as soon as it is done with.
            let mut last_use: HashMap<u32, usize> = HashMap::new();
            for p in first..share.len() {
                last_use.insert(share[p].row_group, p);
                last_use.insert(share[fallback_position(p, share.len())].row_group, p);
            }
            let mut loaded: HashMap<u32, Arc<Columns>> = HashMap::new();
            let steps = share.len() / b;
            for step in first / b..steps {
                let Some(buffer) = self.free_buffer() else {
                    return Ok(()); // the loader was dropped
                };
                let busy = Instant::now();
                let next = if step + 1 == steps {
                    Position {
                        epoch: epoch + 1,
                        consumed: 0,
                    }
                } else {
                    Position {
                        epoch,
                        consumed: ((step + 1) * b) as u64,
                    }
                };
                // SAFETY: a free buffer is held by this thread alone.
                unsafe { buffer.set_header(epoch, step as u64, next) };
                let mut dispatch = Duration::ZERO;
                for slot in 0..b {
                    let p = step * b + slot;
                    let sample = self.sample(share[p], &mut loaded)?;
                    let fallback =
                        self.sample(share[fallback_position(p, share.len())], &mut loaded)?;
                    self.stats
                        .bytes
                        .add(stats::READER_BYTES, sample.jpeg().len() as u64);
                    let job = Job {
                        seq,
                        epoch,
                        batch: buffer.clone(),
                        slot,
                        sample,
                        fallback,
                    };
                    let sent = Instant::now();
                    if self.jobs.send(job).is_err() {
                        return Ok(());
                    }
                    dispatch += sent.elapsed();
                    loaded.retain(|g, _| last_use.get(g).is_some_and(|&last| last > p));
                }
                self.stats.dispatched.add(stats::READER_SAMPLES, b as u64);
                self.stats
                    .reader_wait
                    .add_time(stats::READER_WAIT, dispatch);
                self.stats
                    .reader_busy
                    .add_time(stats::READER_BUSY, busy.elapsed().saturating_sub(dispatch));
                seq += 1;
            }
            position = Position {
                epoch: epoch + 1,
                consumed: 0,
            };
        }
        Ok(())
    }

    fn free_buffer(&self) -> Option<Arc<SharedBatch>> {
        if self.stop.try_recv() == Err(TryRecvError::Disconnected) {
            return None; // the loader was dropped while buffers keep coming back
        }
        let waited = Instant::now();
        let buffer = select! {
            recv(self.free) -> b => b.ok(),
            recv(self.stop) -> _ => None,
        };
        self.stats
            .reader_wait
            .add_time(stats::READER_WAIT, waited.elapsed());
        buffer
    }

    fn sample(
        &self,
        at: SampleRef,
        loaded: &mut HashMap<u32, Arc<Columns>>,
    ) -> Result<SampleData, LoaderError> {
        let group = &self.dataset.row_groups[at.row_group as usize];
        let columns = match loaded.get(&at.row_group) {
            Some(c) => c.clone(),
            None => {
                let c = Arc::new(self.dataset.read(group)?);
                self.stats.row_groups.add(stats::READER_ROW_GROUPS, 1);
                loaded.insert(at.row_group, c.clone());
                c
            }
        };
        Ok(SampleData {
            columns,
            row: at.row as usize,
            index: group.first + u64::from(at.row),
        })
    }
}

struct Worker {
    seed: u64,
    specs: LoaderConfig,
    shape: BatchShape,
    jobs: Receiver<Job>,
    done: Sender<Done>,
    stats: Arc<Stats>,
    /// Global indices of samples already reported as undecodable (touched only on failures).
    logged: Arc<Mutex<HashSet<u64>>>,
}

/// The colour a sample becomes when neither it nor its fallback decodes: ImageNet's mean.
const MEAN_PIXEL: [u8; 3] = [124, 116, 104];

/// What a worker decoded for a job.
struct Source {
    /// The size the views' crop boxes refer to (the JPEG's own size).
    width: u32,
    height: u32,
    /// The decoded pixels are 1/`denom` of that size (DCT scaling), rounded up.
    denom: u32,
    label: i32,
    replaced: bool,
}

impl Worker {
    fn run(self) {
        let mut decoder = JpegDecoder::new().expect("a TurboJPEG instance");
        let mut maker = ViewMaker::new();
        let mut pixels = Vec::new();
        let mut views = Vec::with_capacity(2 + self.specs.local_crops);
        loop {
            let waited = Instant::now();
            let Ok(job) = self.jobs.recv() else { return };
            self.stats
                .worker_wait
                .add_time(stats::WORKER_WAIT, waited.elapsed());
            let error = self
                .make(&job, &mut decoder, &mut maker, &mut pixels, &mut views)
                .err();
            self.stats.made.add(stats::WORKER_SAMPLES, 1);
            let Job { seq, batch, .. } = job;
            if self.done.send(Done { seq, batch, error }).is_err() {
                return;
            }
        }
    }

    /// The views' parameters for a source of `width` x `height`: a pure function of (seed,
    /// epoch, sample index) and that size.
    fn draw(&self, job: &Job, width: u32, height: u32, views: &mut Vec<(ViewParams, u32)>) {
        let mut r = rng::sample_rng(self.seed, job.epoch, job.sample.index);
        views.clear();
        for spec in &self.specs.global {
            views.push((draw_view(&mut r, spec, width, height), spec.size));
        }
        for _ in 0..self.specs.local_crops {
            let spec = &self.specs.local;
            views.push((draw_view(&mut r, spec, width, height), spec.size));
        }
    }

    /// Draws the views and decodes the sample (scaled down when every view allows it), or
    /// else its fallback, or else makes a flat image.
    fn decode(
        &self,
        job: &Job,
        decoder: &mut JpegDecoder,
        pixels: &mut Vec<u8>,
        views: &mut Vec<(ViewParams, u32)>,
    ) -> Source {
        let started = Instant::now();
        let jpeg = job.sample.jpeg();
        let attempt = decoder.header(jpeg).and_then(|header| {
            self.draw(job, header.width, header.height, views);
            let denom = if self.specs.dct_scaling {
                dct_denominator(views.iter().map(|(v, size)| (v, *size)))
            } else {
                1
            };
            let decoded = decoder.decode_scaled(jpeg, Pixels::Rgb, denom, pixels)?;
            Ok((header, denom, decoded.warning))
        });
        let source = match attempt {
            Ok((header, denom, None)) => Source {
                width: header.width,
                height: header.height,
                denom,
                label: job.sample.label(),
                replaced: false,
            },
            failed => {
                let why = match failed {
                    Ok((_, _, warning)) => warning.unwrap_or_default(),
                    Err(e) => e.to_string(),
                };
                self.report_failure(&job.sample, &why);
                let (width, height, label) =
                    match decoder.decode(job.fallback.jpeg(), Pixels::Rgb, pixels) {
                        Ok(d) if d.warning.is_none() => (d.width, d.height, job.fallback.label()),
                        _ => {
                            pixels.clear();
                            pixels.extend(MEAN_PIXEL.iter().cycle().take(16 * 16 * 3));
                            (16, 16, -1)
                        }
                    };
                self.draw(job, width, height, views);
                Source {
                    width,
                    height,
                    denom: 1,
                    label,
                    replaced: true,
                }
            }
        };
        self.stats
            .decode
            .add_time(stats::WORKER_DECODE, started.elapsed());
        source
    }

    fn report_failure(&self, sample: &SampleData, why: &str) {
        self.stats.failures.add(stats::DECODE_FAILURES, 1);
        let first_time = self
            .logged
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(sample.index);
        if first_time {
            log::warn!(
                "sample {} ({}) does not decode ({why}); replaced by its neighbour in the epoch order",
                sample.index,
                crate::manifest::printable(sample.key())
            );
        }
    }

    fn make(
        &self,
        job: &Job,
        decoder: &mut JpegDecoder,
        maker: &mut ViewMaker,
        pixels: &mut Vec<u8>,
        views: &mut Vec<(ViewParams, u32)>,
    ) -> Result<(), LoaderError> {
        let source = self.decode(job, decoder, pixels, views);
        let started = Instant::now();
        // SAFETY: the reader gave this slot to this job alone; it is reported done only after.
        let mut slot = unsafe { job.batch.slot(job.slot, self.shape) };
        *slot.index = job.sample.index;
        *slot.label = source.label;
        *slot.replaced = source.replaced;
        let src = Rgb {
            pixels,
            width: source.width.div_ceil(source.denom),
            height: source.height.div_ceil(source.denom),
        };
        let fail = |e: crate::augment::AugmentError| LoaderError::Augment {
            index: job.sample.index,
            key: job.sample.key().to_owned(),
            why: e.to_string(),
        };
        for (i, (view, size)) in views.iter().enumerate() {
            let out = if i < 2 {
                slot.global(i)
            } else {
                slot.local(i - 2)
            };
            maker
                .make_view_scaled(src, view, source.denom, *size, out)
                .map_err(fail)?;
        }
        self.stats
            .augment
            .add_time(stats::WORKER_AUGMENT, started.elapsed());
        Ok(())
    }
}

struct Batcher {
    batch_size: usize,
    done: Receiver<Done>,
    ready: Sender<Ready>,
    free: Sender<Arc<SharedBatch>>,
    stats: Arc<Stats>,
}

impl Batcher {
    fn run(self) {
        let mut filling: BTreeMap<u64, (usize, Arc<SharedBatch>)> = BTreeMap::new();
        let mut next = 0u64;
        for done in &self.done {
            if let Some(error) = done.error {
                let _ = self.ready.send(Err(error));
                return;
            }
            // keep one handle per batch; the others drop here
            filling.entry(done.seq).or_insert((0, done.batch)).0 += 1;
            while filling
                .get(&next)
                .is_some_and(|(count, _)| *count == self.batch_size)
            {
                let (_, batch) = filling.remove(&next).expect("present");
                let waited = Instant::now();
                if self
                    .ready
                    .send(Ok(LoanedBatch::new(batch, self.free.clone())))
                    .is_err()
                {
                    return;
                }
                self.stats
                    .batcher_wait
                    .add_time(stats::BATCHER_WAIT, waited.elapsed());
                self.stats.batches.add(stats::BATCHES, 1);
                next += 1;
            }
        }
    }
}
