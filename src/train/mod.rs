//! `dino-stream train`: the DINO loop, read top to bottom as the official `main_dino.py`.

pub mod bench;
mod guard;
mod metrics;
mod resume;
mod snapshot;
pub mod step;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Tensor};

use dino_pipeline::dataset::{self, DatasetError};
use dino_pipeline::loader::{Loader, LoaderConfig, LoaderError};
use dino_pipeline::manifest::try_lock_dir;
use serde::Serialize;

use crate::checkpoint::{self, CheckpointError};
use crate::config::Config;
use crate::device::{TrainableBackbone, TrainingBackend};
use crate::images::Images;
use crate::loss::teacher_stats;
use crate::parallel::{self, Abort, Collective, HubLink, OneDevice, ParallelError, Peer, World};
use crate::precision::Precision;
pub use resume::ResumeError;
use step::{Models, Schedules};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Loader(#[from] LoaderError),
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Resume(#[from] ResumeError),
    // `err`, not `source`: the message holds the cause, and a source would print it twice
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    #[error("{path}: another training run is writing here; wait for it, or choose another --out")]
    Busy { path: PathBuf },
    #[error("{path} already holds a run; pass --resume to continue it, or choose another --out")]
    RunExists { path: PathBuf },
    #[error("--resume: no checkpoint in {path}; start the run without --resume")]
    NothingToResume { path: PathBuf },
    #[error(
        "{path}: fewer samples ({samples}) than one global batch ({batch}: data.batch_size x \
         devices); lower data.batch_size"
    )]
    TooFewSamples {
        path: PathBuf,
        samples: u64,
        batch: usize,
    },
    #[error(transparent)]
    Parallel(#[from] ParallelError),
    #[error("cannot coordinate the nodes on port {port} (run.coordinator): {err}")]
    Coordinator { port: u16, err: std::io::Error },
    #[error("rank {rank} panicked (its message is above); the run stops")]
    Panicked { rank: usize },
    #[error("optim.epochs ({epochs}) x {per_epoch} steps per epoch overflows")]
    TooManySteps { epochs: u64, per_epoch: u64 },
    #[error("the loss is {loss} at step {step} (epoch {epoch}); stopping. {last}. {what_to_do}")]
    NonFinite {
        loss: f64,
        step: u64,
        epoch: u64,
        last: String,
        what_to_do: &'static str,
    },
}

/// What a run needs besides its config.
pub struct RunOptions {
    pub data: PathBuf,
    pub out: PathBuf,
    pub resume: Resume,
    /// false for a benchmark's run, which measures steps, not checkpoint writes
    pub checkpoints: bool,
}

/// Where a run starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resume {
    /// A new run (RUN must hold no checkpoint).
    No,
    /// The newest checkpoint of RUN that loads; a damaged newer one is reported and skipped.
    Latest,
    /// This checkpoint folder.
    From(PathBuf),
}

/// One line of `RUN/metrics.jsonl`: the step's schedule values and the window's averages.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct LogLine {
    pub step: u64,
    pub epoch: u64,
    /// mean loss over the steps since the previous line
    pub loss: f64,
    pub lr: f64,
    pub wd: f64,
    pub momentum: f64,
    pub teacher_temp: f64,
    pub images_per_sec: f64,
    /// seconds per step blocked on the pipeline, and as a share of the step time
    pub data_wait: f64,
    pub data_wait_fraction: f64,
    pub step_time: f64,
    pub teacher_entropy: f64,
    pub teacher_marginal_entropy: f64,
    /// samples of the batches trained on since this invocation started that failed to
    /// decode and were replaced; absent from lines written before it was recorded
    #[serde(default)]
    pub decode_failures: u64,
}

/// What the trainer tells its caller (the CLI draws a progress bar from it).
pub enum Event<'a> {
    Start {
        first_step: u64,
        total_steps: u64,
        steps_per_epoch: u64,
        /// ranks in the run, and the bytes each all-reduces per step (0 on one device)
        ranks: usize,
        all_reduce_bytes: u64,
    },
    Step {
        step: u64,
        loss: f64,
    },
    Log(&'a LogLine),
    Checkpoint(&'a Path),
    Warning(String),
}

pub struct Summary {
    /// steps done in total, and by this invocation
    pub steps: u64,
    pub ran: u64,
    pub last_loss: f64,
    pub checkpoint: Option<PathBuf>,
}

/// Trains on `devices`, this node's (one rank each; `cfg.run` says how many nodes take part).
/// Rank 0 writes the checkpoints and metrics; `on_event` hears this node's first rank.
pub fn train<A: TrainingBackend, M: TrainableBackbone<A>>(
    cfg: &Config,
    opts: &RunOptions,
    devices: &[A::Device],
    on_event: &mut dyn FnMut(Event),
) -> Result<Summary, TrainError> {
    let world = World::new(&cfg.run, devices.len());
    let writes = world.node_rank == 0;
    let ckpt_dir = opts.out.join("checkpoints");
    // node 0 owns the run folder; the other nodes read its checkpoints (a folder all see)
    let (_lock, candidates) = if writes {
        let (lock, candidates) = prepare_run_dir(cfg, opts, &ckpt_dir)?;
        (Some(lock), candidates)
    } else {
        (None, resume_candidates(opts, &ckpt_dir)?)
    };

    // ============ the models: student, an exact copy as teacher, loss, optimizer ============
    let device = &devices[0];
    let mut models = Models::<A, M>::new(cfg, device);
    let mut step = 0;
    let mut position = Default::default();
    let data_plan = dataset::split_entry(&opts.data, &cfg.data.split)?.plan;
    let resume_from = pick_checkpoint(&candidates, on_event)?;
    if let Some((path, ckpt)) = &resume_from {
        resume::check_compatible(cfg, &ckpt.state, path)?;
        resume::check_world(&ckpt.state, world.size(), path)?;
        if ckpt.state.data_plan != data_plan {
            return Err(ResumeError::OtherData {
                path: path.clone(),
                split: cfg.data.split.clone(),
                data: opts.data.clone(),
            }
            .into());
        }
        models = resume::restore(models, ckpt, path, device)?;
        step = ckpt.state.step;
        position = ckpt.state.position.into();
    }
    let start = Start {
        models,
        step,
        position,
        checkpoint: resume_from.map(|(path, _)| path),
        data_plan,
    };
    if world.size() == 1 {
        return run_rank(cfg, opts, start, &mut OneDevice, writes, on_event);
    }

    // ============ one rank per device, meeting at each step's all-reduce ============
    let _session = parallel::session::<A::InnerBackend>();
    if world.nodes > 1 && world.node_rank == 0 {
        let port = cfg
            .run
            .coordinator
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok());
        let port: u16 = port.expect("a validated HOST:PORT");
        let hub = std::net::TcpListener::bind(("0.0.0.0", port))
            .and_then(|listener| parallel::start_hub(listener, world.size(), world.timeout()));
        hub.map_err(|err| TrainError::Coordinator { port, err })?;
    }
    let abort = Arc::new(Abort::default());
    let world = &world;
    type Link<B> = Box<dyn Collective<B>>;
    let join = |local: usize, device: &A::Device| -> Result<Link<_>, ParallelError> {
        Ok(if world.nodes > 1 {
            Box::new(HubLink::<A::InnerBackend>::connect(
                world,
                local,
                device.clone(),
            )?)
        } else {
            let name = format!("{device:?}");
            Box::new(Peer::<A::InnerBackend>::join(
                world,
                local,
                device.clone(),
                name,
                abort.clone(),
            )?)
        })
    };
    std::thread::scope(|scope| {
        let others: Vec<_> = (devices.iter().enumerate().skip(1))
            .map(|(local, device)| {
                let start = start.replica(device);
                let (join, abort) = (&join, abort.clone());
                scope.spawn(move || {
                    let _watch = PanicWatch(&abort, world.rank(local));
                    let result =
                        join(local, device)
                            .map_err(TrainError::from)
                            .and_then(|mut peer| {
                                run_rank(cfg, opts, start, &mut *peer, false, &mut |_| {})
                            });
                    if let Err(e) = &result {
                        abort.fail(e.to_string());
                    }
                    result
                })
            })
            .collect();
        let first = join(0, device)
            .map_err(TrainError::from)
            .and_then(|mut peer| run_rank(cfg, opts, start, &mut *peer, writes, on_event));
        if let Err(e) = &first {
            abort.fail(e.to_string());
        }
        let rest = others.into_iter().enumerate().map(|(i, handle)| {
            let rank = world.rank(i + 1);
            handle.join().unwrap_or(Err(TrainError::Panicked { rank }))
        });
        first_cause(std::iter::once(first).chain(rest).collect())
    })
}

/// Where a rank starts: the models (fresh or restored) and the run's position.
struct Start<A: TrainingBackend, M: TrainableBackbone<A>> {
    models: Models<A, M>,
    step: u64,
    position: dino_pipeline::batch::Position,
    /// the checkpoint it continues from
    checkpoint: Option<PathBuf>,
    data_plan: String,
}

impl<A: TrainingBackend, M: TrainableBackbone<A>> Start<A, M> {
    fn replica(&self, device: &A::Device) -> Self {
        Self {
            models: self.models.replica(device),
            checkpoint: self.checkpoint.clone(),
            data_plan: self.data_plan.clone(),
            ..*self
        }
    }
}

/// Tells the other ranks of the process when a rank's thread panics.
struct PanicWatch<'a>(&'a Abort, usize);

impl Drop for PanicWatch<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.fail(format!("rank {} panicked", self.1));
        }
    }
}

/// The run's outcome from its ranks' (rank order): rank 0's summary, or the error that
/// started the failure (not another rank's report of it).
fn first_cause(results: Vec<Result<Summary, TrainError>>) -> Result<Summary, TrainError> {
    let follows = |r: &Result<Summary, TrainError>| {
        matches!(
            r,
            Err(TrainError::Parallel(ParallelError::PeerFailed { .. }))
        )
    };
    let mut results = results;
    if let Some(i) = results.iter().position(|r| r.is_err() && !follows(r)) {
        return results.swap_remove(i);
    }
    match results.iter().position(Result::is_err) {
        Some(i) => results.swap_remove(i),
        None => results.swap_remove(0),
    }
}

/// One rank's training loop: the official `train_one_epoch`, epoch after epoch, on this
/// rank's part of each global batch. `writes`: the rank that keeps the metrics and
/// checkpoints.
fn run_rank<A: TrainingBackend, M: TrainableBackbone<A>>(
    cfg: &Config,
    opts: &RunOptions,
    start: Start<A, M>,
    sync: &mut dyn Collective<A::InnerBackend>,
    writes: bool,
    on_event: &mut dyn FnMut(Event),
) -> Result<Summary, TrainError> {
    let Start {
        mut models,
        mut step,
        position,
        checkpoint: resume_from,
        data_plan,
    } = start;
    let device = &models.loss.center.device();
    let ckpt_dir = opts.out.join("checkpoints");

    // ============ the data: this rank's part of each global batch ============
    let mut lc = loader_config(cfg, &opts.data, position);
    (lc.rank, lc.world) = (sync.rank(), sync.world());
    let mut loader = Loader::start(lc)?;
    let per_epoch = loader.batches_per_epoch();
    let global_batch = cfg.data.batch_size * sync.world();
    if per_epoch == 0 {
        return Err(TrainError::TooFewSamples {
            path: opts.data.clone(),
            samples: loader.dataset_len(),
            batch: global_batch,
        });
    }
    if let Some(path) = &resume_from {
        resume::check_position(step, position, per_epoch, cfg, path)?;
    }

    // ============ schedules (per iteration, the teacher temperature per epoch) ============
    let epochs = cfg.optim.epochs;
    let schedules = Schedules::new(cfg, per_epoch, global_batch);
    let all_steps = epochs
        .checked_mul(per_epoch)
        .ok_or(TrainError::TooManySteps { epochs, per_epoch })?;
    let total_steps = match cfg.run.max_steps {
        0 => all_steps,
        n => n.min(all_steps),
    };
    let first_step = step;
    // every trainable parameter's gradient (all but the head's fixed weight_g with
    // norm_last_layer), the loss and the batch centre, in f32
    let fixed = if cfg.model.norm_last_layer {
        cfg.model.out_dim
    } else {
        0
    };
    let all_reduce_bytes = match sync.world() {
        1 => 0,
        _ => 4 * (models.student.num_params() - fixed + 1 + cfg.model.out_dim) as u64,
    };
    on_event(Event::Start {
        first_step,
        total_steps,
        steps_per_epoch: per_epoch,
        ranks: sync.world(),
        all_reduce_bytes,
    });

    let mut metrics = match writes {
        true => Some(metrics::MetricsLog::open(
            &opts.out.join("metrics.jsonl"),
            step,
        )?),
        false => None,
    };
    let mut guard = guard::CollapseGuard::new(cfg.model.out_dim);
    let mut last_checkpoint = resume_from.clone();
    let mut last_loss = f64::NAN;
    let mut pending: Option<PendingLoss<A::InnerBackend>> = None;
    let mut waited = Instant::now();
    let mut replaced = 0;

    while step < total_steps {
        let Some(batch) = loader.next() else { break };
        let batch = batch?;
        // counted in the batches trained on, not in those the loader decoded ahead
        replaced += batch.replaced.iter().filter(|&&r| r).count() as u64;
        let data_wait = waited.elapsed().as_secs_f64();
        loader.queue_depths(); // sampled once per batch, for the metrics endpoint
        let started = Instant::now();
        let epoch = batch.epoch;
        let h = schedules.at(step, epoch);

        // ============ the DINO step: forward, loss, backward, update, EMA, centre ============
        let images = Images::<A::InnerBackend>::from_batch(&batch, device);
        drop(batch); // its buffer goes back to the pipeline
        let (next, images_done) = (images.next, images.n_globals / 2 * sync.world());
        let outcome;
        (models, outcome) = step::dino_step(models, images, &h, sync, &mut |_| {})?;
        // the previous step's loss, read now that this one is queued behind it
        if let Some(previous) = pending.take() {
            last_loss = previous.settle(
                metrics.as_mut(),
                &last_checkpoint,
                cfg.run.precision,
                on_event,
            )?;
        }
        pending = Some(PendingLoss {
            loss: outcome.loss,
            step,
            epoch,
            data_wait,
            step_time: started.elapsed().as_secs_f64() + data_wait,
            images: images_done,
        });
        step += 1;

        // ============ logging ============
        let epoch_end = next.epoch > epoch;
        let periodic = cfg.run.checkpoint_every > 0 && step % cfg.run.checkpoint_every == 0;
        let save = epoch_end || periodic || step == total_steps;
        if save || step % cfg.run.log_every == 0 {
            // before a log line or a checkpoint, this step's own loss (a checkpoint is never
            // written from the weights that a non-finite loss updated)
            if let Some(current) = pending.take() {
                last_loss = current.settle(
                    metrics.as_mut(),
                    &last_checkpoint,
                    cfg.run.precision,
                    on_event,
                )?;
            }
        }
        if step % cfg.run.log_every == 0 || step == total_steps {
            let stats = teacher_stats(outcome.targets, sync)?;
            if let Some(metrics) = metrics.as_mut() {
                let line = metrics.line(&h, step, &stats, replaced)?;
                on_event(Event::Log(&line));
                if let Some(warning) = guard.check(&line) {
                    on_event(Event::Warning(warning));
                }
            }
        }

        // ============ checkpoint ============
        if save && opts.checkpoints && writes {
            let progress = snapshot::Progress {
                step,
                position: next,
                data_plan: &data_plan,
                world: sync.world(),
            };
            let ckpt = snapshot::snapshot(cfg, progress, &models);
            let path = ckpt.save(&ckpt_dir, cfg.run.keep_checkpoints)?;
            on_event(Event::Checkpoint(&path));
            last_checkpoint = Some(path);
        }
        waited = Instant::now();
    }
    if let Some(last) = pending {
        last_loss = last.settle(
            metrics.as_mut(),
            &last_checkpoint,
            cfg.run.precision,
            on_event,
        )?;
    }
    Ok(Summary {
        steps: step,
        ran: step - first_step,
        last_loss,
        checkpoint: last_checkpoint,
    })
}

/// A step's loss still on the device, and the figures its metrics take once it is read.
struct PendingLoss<B: Backend> {
    /// [1]
    loss: Tensor<B, 1>,
    /// the step's index (the step count before it)
    step: u64,
    epoch: u64,
    data_wait: f64,
    step_time: f64,
    images: usize,
}

impl<B: Backend> PendingLoss<B> {
    /// Reads the loss (waiting for its step), stops the run on a non-finite one, and adds
    /// the step to the metrics.
    fn settle(
        self,
        metrics: Option<&mut metrics::MetricsLog>,
        last_checkpoint: &Option<PathBuf>,
        precision: Precision,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<f64, TrainError> {
        let loss: f64 = self.loss.into_scalar().elem();
        if !loss.is_finite() {
            return Err(TrainError::NonFinite {
                loss,
                step: self.step,
                epoch: self.epoch,
                last: match last_checkpoint {
                    Some(p) => format!("The last good checkpoint is {}", p.display()),
                    None => "No checkpoint was written yet".into(),
                },
                what_to_do: match precision {
                    Precision::Bf16 => {
                        "The run computes in bf16: resume with --set run.precision=fp32, or \
                         lower optim.lr, raise optim.warmup_epochs or lower optim.clip_grad"
                    }
                    Precision::Fp32 => {
                        "Lower optim.lr, raise optim.warmup_epochs or lower optim.clip_grad, \
                         then resume"
                    }
                },
            });
        }
        if let Some(metrics) = metrics {
            metrics.add(loss, self.data_wait, self.step_time, self.images);
        }
        on_event(Event::Step {
            step: self.step + 1,
            loss,
        });
        Ok(loss)
    }
}

/// Creates RUN and locks it for this run (the lock is held while the returned file lives),
/// refuses to start a second run over one that has checkpoints, writes the effective config;
/// returns the checkpoints to resume from, in the order to try them.
fn prepare_run_dir(
    cfg: &Config,
    opts: &RunOptions,
    ckpt_dir: &Path,
) -> Result<(fs::File, Vec<PathBuf>), TrainError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |err| TrainError::Io { path, err }
    };
    fs::create_dir_all(&opts.out).map_err(io(&opts.out))?;
    let lock = try_lock_dir(&opts.out)
        .map_err(io(&opts.out))?
        .ok_or_else(|| TrainError::Busy {
            path: opts.out.clone(),
        })?;
    let candidates = resume_candidates(opts, ckpt_dir)?;
    let config_path = opts.out.join("config.toml");
    fs::write(&config_path, cfg.to_toml()).map_err(io(&config_path))?;
    Ok((lock, candidates))
}

/// The checkpoints `opts.resume` asks for, in the order to try them; refuses a new run over
/// one that has checkpoints.
fn resume_candidates(opts: &RunOptions, ckpt_dir: &Path) -> Result<Vec<PathBuf>, TrainError> {
    let mut saved = checkpoint::list(ckpt_dir)?;
    saved.reverse(); // newest first
    Ok(match &opts.resume {
        Resume::No if saved.is_empty() => Vec::new(),
        // a run without any checkpoint yet (stopped early, or failed to start) has nothing
        // to lose and is simply started again
        Resume::No => {
            return Err(TrainError::RunExists {
                path: opts.out.clone(),
            });
        }
        Resume::Latest if saved.is_empty() => {
            return Err(TrainError::NothingToResume {
                path: ckpt_dir.to_path_buf(),
            });
        }
        Resume::Latest => saved,
        Resume::From(path) => vec![path.clone()],
    })
}

/// The first of `candidates` that loads. A damaged one is reported and the next (older) one
/// tried; when none loads, the newest one's error is returned.
fn pick_checkpoint(
    candidates: &[PathBuf],
    on_event: &mut dyn FnMut(Event),
) -> Result<Option<(PathBuf, checkpoint::Checkpoint)>, TrainError> {
    let mut first_error = None;
    for (i, path) in candidates.iter().enumerate() {
        match checkpoint::Checkpoint::load(path) {
            Ok(ckpt) => return Ok(Some((path.clone(), ckpt))),
            Err(e) => {
                if let Some(older) = candidates.get(i + 1) {
                    on_event(Event::Warning(format!(
                        "{e}; resuming from the older checkpoint {} instead (or pick one with \
                         --resume-from CKPT)",
                        older.display()
                    )));
                }
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e.into()),
        None => Ok(None),
    }
}

/// The loader settings of a run of `cfg` on `data` from `start`.
pub fn loader_config(
    cfg: &Config,
    data: &Path,
    start: dino_pipeline::batch::Position,
) -> LoaderConfig {
    let d = &cfg.data;
    let mut lc = LoaderConfig::new(data, d.split.clone());
    lc.batch_size = d.batch_size;
    lc.workers = match d.workers {
        0 => cfg.threads(),
        n => n,
    };
    lc.seed = cfg.run.seed;
    (lc.global, lc.local) = cfg.augment.views();
    for view in &mut lc.global {
        view.size = d.global_crop_size;
        view.scale = d.global_crops_scale;
    }
    lc.local.size = d.local_crop_size;
    lc.local.scale = d.local_crops_scale;
    lc.local_crops = d.local_crops_number;
    lc.shuffle_window = d.shuffle_window;
    lc.dct_scaling = d.dct_scaling;
    lc.start = start;
    lc.end_epoch = Some(cfg.optim.epochs);
    lc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loader_gets_the_augment_sections_views_at_the_data_sections_sizes() {
        let cfg = Config::parse(
            "[data]\nglobal_crop_size = 32\nglobal_crops_scale = [0.5, 1.0]\n\
             local_crop_size = 16\nlocal_crops_scale = [0.2, 0.5]\nlocal_crops_number = 3\n\
             [augment]\nglobal_1_blur_p = 0.0\nblur_sigma = [0.1, 0.25]\n\
             global_2_solarize_p = 0.5",
            "test",
            &[],
        )
        .unwrap();
        let lc = loader_config(&cfg, Path::new("shards"), Default::default());
        let [g1, g2] = &lc.global;
        assert_eq!(
            (g1.size, g1.scale, g2.size, g2.scale),
            (32, (0.5, 1.0), 32, (0.5, 1.0))
        );
        assert_eq!(
            (lc.local.size, lc.local.scale, lc.local_crops),
            (16, (0.2, 0.5), 3)
        );
        assert_eq!((g1.blur_p, g2.blur_p, lc.local.blur_p), (0.0, 0.1, 0.5));
        assert_eq!((g1.solarize_p, g2.solarize_p), (0.0, 0.5));
        assert_eq!(lc.local.blur_sigma, (0.1, 0.25));
    }
}
