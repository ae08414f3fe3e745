//! Evaluation input: every sample of a split once, in storage order, with DINO's evaluation
//! transform (`eval_knn.py`: `Resize(256, bicubic)` then `CenterCrop(224)`, scaled to the
//! model's resolution). A reader thread decodes each batch on `workers` threads while the
//! model runs on the previous one.

use std::path::PathBuf;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, bounded};

use crate::augment::{AugmentError, CropBox, Rgb, ViewMaker};
use crate::dataset::{Dataset, DatasetError, Verify};
use crate::jpeg::{JpegDecoder, JpegError, Pixels};
use crate::shard::ShardError;

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error(transparent)]
    Shard(#[from] ShardError),
    #[error("cannot start the JPEG decoder: {0}")]
    Decoder(#[from] JpegError),
    #[error("the evaluation {0} must be at least 1")]
    Setting(&'static str),
}

/// The shorter side the image is resized to before the center crop: 256 for 224, as in
/// the recipe, and in the same ratio for other resolutions.
pub fn resize_side(size: u32) -> u32 {
    (size * 256 + 112) / 224
}

/// torchvision's `Resize(resize_side(size))` (shorter side, the longer one truncated as
/// torchvision does) then `CenterCrop(size)` (offsets rounded half to even, as Python's
/// `round`), with PIL's antialiased bicubic, into `out` (`size` x `size` x 3).
pub fn center_crop(
    maker: &mut ViewMaker,
    src: Rgb<'_>,
    size: u32,
    scratch: &mut Vec<u8>,
    out: &mut [u8],
) -> Result<(), AugmentError> {
    let short = resize_side(size);
    let (w, h) = (u64::from(src.width), u64::from(src.height));
    let (rw, rh) = if w <= h {
        (short, (u64::from(short) * h / w) as u32)
    } else {
        ((u64::from(short) * w / h) as u32, short)
    };
    scratch.resize(rw as usize * rh as usize * 3, 0);
    let whole = CropBox {
        top: 0,
        left: 0,
        height: src.height,
        width: src.width,
    };
    maker.resized_crop(src, whole, 1, (rw, rh), scratch)?;
    let offset = |side: u32| (f64::from(side - size) / 2.0).round_ties_even() as usize;
    let (top, left) = (offset(rh), offset(rw));
    let row = size as usize * 3;
    for (y, dst) in out.chunks_exact_mut(row).enumerate() {
        let start = ((top + y) * rw as usize + left) * 3;
        dst.copy_from_slice(&scratch[start..start + row]);
    }
    Ok(())
}

/// Settings of an evaluation pass over one split.
#[derive(Debug, Clone)]
pub struct EvalConfig {
    pub dir: PathBuf,
    pub split: String,
    /// Output side in pixels (the model's resolution).
    pub size: u32,
    pub batch_size: usize,
    pub workers: usize,
}

/// Up to `batch_size` samples in storage order.
pub struct EvalBatch {
    /// [len, size, size, 3] packed RGB.
    pub pixels: Vec<u8>,
    pub labels: Vec<i32>,
    pub len: usize,
    /// Samples left out since the previous batch because they did not decode cleanly.
    pub skipped: Vec<Skipped>,
}

/// A sample that is not evaluated: it fails to decode, or decodes only with a warning (its
/// damaged part made up by the decoder, which would bias the result).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub key: String,
    pub why: String,
}

/// The batches of one pass; iterate until `None`. Dropping it early stops the reader.
pub struct EvalReader {
    batches: Receiver<Result<EvalBatch, EvalError>>,
    thread: Option<JoinHandle<()>>,
    pub len: u64,
    pub classes: Vec<String>,
}

/// Per-worker state: a decoder, a resizer, and their buffers.
struct Worker {
    decoder: JpegDecoder,
    maker: ViewMaker,
    decoded: Vec<u8>,
    scratch: Vec<u8>,
}

impl EvalReader {
    /// Opens the split (every shard's checksum verified) and starts reading. Batch size,
    /// workers and size must be at least 1.
    pub fn start(cfg: EvalConfig) -> Result<Self, EvalError> {
        for (setting, value) in [
            ("batch size", cfg.batch_size),
            ("workers", cfg.workers),
            ("size", cfg.size as usize),
        ] {
            if value == 0 {
                return Err(EvalError::Setting(setting));
            }
        }
        let dataset = Dataset::open(&cfg.dir, &cfg.split, Verify::Checksums)?;
        let workers = (0..cfg.workers)
            .map(|_| {
                Ok(Worker {
                    decoder: JpegDecoder::new()?,
                    maker: ViewMaker::new(),
                    decoded: Vec::new(),
                    scratch: Vec::new(),
                })
            })
            .collect::<Result<Vec<_>, EvalError>>()?;
        let (len, classes) = (dataset.len, dataset.classes.clone());
        let (tx, rx) = bounded(2);
        let thread = std::thread::Builder::new()
            .name("dino-eval-reader".into())
            .spawn(move || {
                let mut workers = workers;
                if let Err(err) = read_all(&dataset, &cfg, &mut workers, |b| tx.send(Ok(b)).is_ok())
                {
                    let _ = tx.send(Err(err));
                }
            })
            .expect("spawning the eval reader thread");
        Ok(Self {
            batches: rx,
            thread: Some(thread),
            len,
            classes,
        })
    }
}

impl Iterator for EvalReader {
    type Item = Result<EvalBatch, EvalError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.batches.recv().ok()
    }
}

impl Drop for EvalReader {
    fn drop(&mut self) {
        // Closing the receiver makes the reader's next send fail, which ends it.
        let (_, closed) = bounded(0);
        self.batches = closed;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads every row group in order and hands out full batches (the last one partial);
/// stops early when `emit` returns false. Samples that do not decode cleanly are left out
/// and listed in the next batch's `skipped`.
fn read_all(
    dataset: &Dataset,
    cfg: &EvalConfig,
    workers: &mut [Worker],
    mut emit: impl FnMut(EvalBatch) -> bool,
) -> Result<(), EvalError> {
    let view = cfg.size as usize * cfg.size as usize * 3;
    let mut batch = new_batch(cfg, view);
    for row_group in &dataset.row_groups {
        let columns = dataset.read(row_group)?;
        let mut row = 0;
        while row < row_group.rows as usize {
            let take = (cfg.batch_size - batch.len).min(row_group.rows as usize - row);
            let start = batch.len;
            batch.pixels.resize((start + take) * view, 0);
            let out = &mut batch.pixels[start * view..];
            let per_worker = take.div_ceil(workers.len());
            // each worker's rows: None when the sample went in, else why not
            let outcomes: Vec<Option<String>> = std::thread::scope(|scope| {
                let jobs = out.chunks_mut(per_worker * view).zip(workers.iter_mut());
                let handles: Vec<_> = jobs
                    .enumerate()
                    .map(|(w, (out, worker))| {
                        let first = row + w * per_worker;
                        let (columns, size) = (&columns, cfg.size);
                        scope.spawn(move || {
                            out.chunks_exact_mut(view)
                                .enumerate()
                                .map(|(i, dst)| {
                                    worker
                                        .transform(columns.jpegs.value(first + i), size, dst)
                                        .err()
                                })
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| h.join().expect("eval worker panicked"))
                    .collect()
            });
            // close the gaps the skipped samples left
            let mut kept = start;
            for (i, outcome) in outcomes.into_iter().enumerate() {
                let r = row + i;
                match outcome {
                    Some(why) => batch.skipped.push(Skipped {
                        key: columns.keys.value(r).to_owned(),
                        why,
                    }),
                    None => {
                        let from = (start + i) * view;
                        batch.pixels.copy_within(from..from + view, kept * view);
                        batch.labels.push(columns.labels.value(r));
                        kept += 1;
                    }
                }
            }
            batch.pixels.truncate(kept * view);
            batch.len = kept;
            row += take;
            if batch.len == cfg.batch_size {
                let full = std::mem::replace(&mut batch, new_batch(cfg, view));
                if !emit(full) {
                    return Ok(());
                }
            }
        }
    }
    if batch.len > 0 || !batch.skipped.is_empty() {
        emit(batch);
    }
    Ok(())
}

fn new_batch(cfg: &EvalConfig, view: usize) -> EvalBatch {
    EvalBatch {
        pixels: Vec::with_capacity(cfg.batch_size * view),
        labels: Vec::with_capacity(cfg.batch_size),
        len: 0,
        skipped: Vec::new(),
    }
}

impl Worker {
    fn transform(&mut self, jpeg: &[u8], size: u32, out: &mut [u8]) -> Result<(), String> {
        let decoded = self
            .decoder
            .decode(jpeg, Pixels::Rgb, &mut self.decoded)
            .map_err(|e| format!("does not decode: {e}"))?;
        if let Some(warning) = decoded.warning {
            return Err(format!("decodes only with a warning: {warning}"));
        }
        let src = Rgb {
            pixels: &self.decoded,
            width: decoded.width,
            height: decoded.height,
        };
        center_crop(&mut self.maker, src, size, &mut self.scratch, out).map_err(|e| e.to_string())
    }
}
