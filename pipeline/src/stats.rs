//! What the loader's stages did, as counters in memory ([`StatsSnapshot`]) and through the
//! `metrics` crate, under these names (totals since the loader started; the `_seconds_total`
//! figures are summed over threads and exported as gauges that only increase, because
//! `metrics` counters are integers):
//!
//! | name | kind | meaning |
//! |---|---|---|
//! | `dino_pipeline_reader_row_groups_total` | counter | row groups read |
//! | `dino_pipeline_reader_bytes_total` | counter | JPEG bytes handed to the workers |
//! | `dino_pipeline_reader_samples_total` | counter | samples handed to the workers |
//! | `dino_pipeline_reader_busy_seconds_total` | gauge | reading and dispatching |
//! | `dino_pipeline_reader_wait_seconds_total` | gauge | blocked on a free batch buffer or a full job queue |
//! | `dino_pipeline_worker_samples_total` | counter | samples turned into views |
//! | `dino_pipeline_worker_decode_seconds_total` | gauge | JPEG decoding, all workers |
//! | `dino_pipeline_worker_augment_seconds_total` | gauge | cropping, resizing and the other augmentations |
//! | `dino_pipeline_worker_wait_seconds_total` | gauge | workers idle, waiting for a job |
//! | `dino_pipeline_decode_failures_total` | counter | samples that failed to decode and were replaced |
//! | `dino_pipeline_batches_total` | counter | batches completed and handed out |
//! | `dino_pipeline_batcher_wait_seconds_total` | gauge | batcher blocked on a consumer that does not take batches |
//! | `dino_pipeline_queue_depth` | gauge, label `queue` = `jobs`, `done`, `ready`, `free` | occupancy sampled at each batch |

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub const READER_ROW_GROUPS: &str = "dino_pipeline_reader_row_groups_total";
pub const READER_BYTES: &str = "dino_pipeline_reader_bytes_total";
pub const READER_SAMPLES: &str = "dino_pipeline_reader_samples_total";
pub const READER_BUSY: &str = "dino_pipeline_reader_busy_seconds_total";
pub const READER_WAIT: &str = "dino_pipeline_reader_wait_seconds_total";
pub const WORKER_SAMPLES: &str = "dino_pipeline_worker_samples_total";
pub const WORKER_DECODE: &str = "dino_pipeline_worker_decode_seconds_total";
pub const WORKER_AUGMENT: &str = "dino_pipeline_worker_augment_seconds_total";
pub const WORKER_WAIT: &str = "dino_pipeline_worker_wait_seconds_total";
pub const DECODE_FAILURES: &str = "dino_pipeline_decode_failures_total";
pub const BATCHES: &str = "dino_pipeline_batches_total";
pub const BATCHER_WAIT: &str = "dino_pipeline_batcher_wait_seconds_total";
pub const QUEUE_DEPTH: &str = "dino_pipeline_queue_depth";

/// A counter kept both here (for [`Stats::snapshot`]) and in the `metrics` registry.
#[derive(Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    pub fn add(&self, name: &'static str, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
        metrics::counter!(name).increment(n);
    }

    /// Durations are kept in nanoseconds and exported in seconds; `metrics` counters are
    /// integers, so seconds go to a gauge that only ever increases.
    pub fn add_time(&self, name: &'static str, d: Duration) {
        self.0.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
        metrics::gauge!(name).increment(d.as_secs_f64());
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Default)]
pub(crate) struct Stats {
    pub row_groups: Counter,
    pub bytes: Counter,
    pub dispatched: Counter,
    pub reader_busy: Counter,
    pub reader_wait: Counter,
    pub made: Counter,
    pub decode: Counter,
    pub augment: Counter,
    pub worker_wait: Counter,
    pub failures: Counter,
    pub batches: Counter,
    pub batcher_wait: Counter,
}

/// The loader's figures so far; times in seconds, summed over threads.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StatsSnapshot {
    pub row_groups: u64,
    pub bytes: u64,
    pub dispatched: u64,
    pub reader_busy_s: f64,
    pub reader_wait_s: f64,
    pub samples: u64,
    pub decode_s: f64,
    pub augment_s: f64,
    pub worker_wait_s: f64,
    pub decode_failures: u64,
    pub batches: u64,
    pub batcher_wait_s: f64,
}

impl Stats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let secs = |c: &Counter| c.get() as f64 * 1e-9;
        StatsSnapshot {
            row_groups: self.row_groups.get(),
            bytes: self.bytes.get(),
            dispatched: self.dispatched.get(),
            reader_busy_s: secs(&self.reader_busy),
            reader_wait_s: secs(&self.reader_wait),
            samples: self.made.get(),
            decode_s: secs(&self.decode),
            augment_s: secs(&self.augment),
            worker_wait_s: secs(&self.worker_wait),
            decode_failures: self.failures.get(),
            batches: self.batches.get(),
            batcher_wait_s: secs(&self.batcher_wait),
        }
    }
}
