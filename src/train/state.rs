//! The trainer's plumbing: batches to tensors, stochastic depth draws, the EMA, checkpoint
//! snapshots and restores, the metrics file and the collapse guard.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use dino_pipeline::batch::{Batch, Position};
use dino_pipeline::manifest::Manifest;
use dino_pipeline::rng;

use super::{LogLine, TrainError};
use crate::checkpoint::{Checkpoint, FORMAT, HostTensors, State};
use crate::config::Config;
use crate::images;
use crate::loss::{DinoLoss, TeacherStats};
use crate::model::{BlockDrop, Dino};
use crate::optim::{AdamW, Moments};
use crate::params;

/// One batch on the device, normalized, NCHW.
pub struct Images<B: Backend> {
    /// [2B, 3, Hg, Wg]: global 1 then global 2
    pub globals: Tensor<B, 4>,
    /// [N*B, 3, Hl, Wl], view-major; None without local crops
    pub locals: Option<Tensor<B, 4>>,
    pub n_globals: usize,
    pub n_locals: usize,
    pub next: Position,
}

impl<B: Backend> Images<B> {
    pub fn from_batch(batch: &Batch, device: &B::Device) -> Self {
        let s = batch.shape;
        let n_globals = 2 * s.batch_size;
        let n_locals = s.local_crops * s.batch_size;
        let g = s.global_size as usize;
        let l = s.local_size as usize;
        Self {
            globals: images::to_device(&batch.globals, [n_globals, g, g, 3], device),
            locals: (n_locals > 0)
                .then(|| images::to_device(&batch.locals, [n_locals, l, l, 3], device)),
            n_globals,
            n_locals,
            next: batch.next,
        }
    }
}

/// Stochastic depth for one backbone pass of `n` crops: per block `i`, the drop rate rises
/// linearly from 0 to `rate` (`torch.linspace(0, rate, depth)`), and each sample keeps its
/// residual branch with probability 1 - rate_i, scaled by 1 / (1 - rate_i). Drawn from
/// (seed, step, pass), so a resumed run draws the same ones.
pub fn drop_path_factors<B: Backend>(
    seed: u64,
    step: u64,
    pass: u64,
    depth: usize,
    rate: f64,
    n: usize,
    device: &B::Device,
) -> Option<Vec<BlockDrop<B>>> {
    if rate == 0.0 {
        return None;
    }
    let mut r = rng::rng(seed ^ 0xD809_A7B5_1C3E_F00D, step * 2 + pass);
    let mut draw = |block: usize| {
        let p = if depth > 1 {
            rate * block as f64 / (depth - 1) as f64
        } else {
            0.0
        };
        let keep = 1.0 - p;
        let values: Vec<f32> = (0..n)
            .map(|_| {
                if rng::unit(&mut r) < keep {
                    (1.0 / keep) as f32
                } else {
                    0.0
                }
            })
            .collect();
        Tensor::<B, 3>::from_data(TensorData::new(values, [n, 1, 1]), device)
    };
    Some(
        (0..depth)
            .map(|block| BlockDrop {
                attn: draw(block),
                mlp: draw(block),
            })
            .collect(),
    )
}

/// theta_t <- m * theta_t + (1 - m) * theta_s, for every parameter by name.
pub fn ema<A: AutodiffBackend>(
    teacher: Dino<A::InnerBackend>,
    student: &Dino<A>,
    momentum: f64,
) -> Dino<A::InnerBackend> {
    let student = params::collect(&student.valid());
    params::replace(teacher, |name, t| {
        let s = &student[name].value;
        t * momentum + s.clone() * (1.0 - momentum)
    })
}

/// Where a run stands, for its checkpoint.
pub struct Progress<'a> {
    pub step: u64,
    pub position: Position,
    pub data_plan: &'a str,
}

pub fn snapshot<A: AutodiffBackend>(
    cfg: &Config,
    progress: Progress,
    student: &Dino<A>,
    teacher: &Dino<A::InnerBackend>,
    optimizer: &AdamW<A::InnerBackend>,
    loss: &DinoLoss<A::InnerBackend>,
) -> Checkpoint {
    let mut moments = HostTensors::new();
    let mut optimizer_steps = BTreeMap::new();
    for (name, state) in &optimizer.state {
        let size = state.m.dims()[0];
        moments.insert(format!("m.{name}"), (vec![size], host(&state.m)));
        moments.insert(format!("v.{name}"), (vec![size], host(&state.v)));
        optimizer_steps.insert(name.clone(), state.step);
    }
    moments.insert(
        "center".into(),
        (loss.center.dims().to_vec(), host(&loss.center)),
    );
    Checkpoint {
        state: State {
            format: FORMAT.into(),
            step: progress.step,
            position: progress.position.into(),
            data_plan: progress.data_plan.to_string(),
            optimizer_steps,
            config: cfg.to_toml(),
        },
        student: params::to_host(&params::collect(&student.valid())),
        teacher: params::to_host(&params::collect(teacher)),
        optimizer: moments,
    }
}

fn host<B: Backend, const D: usize>(t: &Tensor<B, D>) -> Vec<f32> {
    t.to_data().convert::<f32>().into_vec().expect("f32 data")
}

/// The ingest plan fingerprint of `split` in the shard folder `dir` (the loader reports a
/// missing manifest or split itself, with the available splits).
pub fn data_plan(dir: &Path, split: &str) -> Result<String, TrainError> {
    let manifest = Manifest::load(dir)
        .map_err(|e| TrainError::Run(e.to_string()))?
        .ok_or_else(|| {
            TrainError::Run(format!(
                "{}: no manifest.json; point --data at a folder written by `dino-stream ingest`",
                dir.display()
            ))
        })?;
    let entry = manifest.splits.get(split).ok_or_else(|| {
        TrainError::Run(format!(
            "{}: no split `{split}` (it has: {}); set data.split",
            dir.display(),
            manifest
                .splits
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })?;
    Ok(entry.plan.clone())
}

fn mismatch(origin: &Path, why: String) -> TrainError {
    TrainError::Run(format!("{}: {why}", origin.display()))
}

pub fn restore_models<A: AutodiffBackend>(
    student: Dino<A>,
    teacher: Dino<A::InnerBackend>,
    ckpt: &Checkpoint,
    path: &Path,
    device: &A::Device,
) -> Result<(Dino<A>, Dino<A::InnerBackend>), TrainError> {
    let file = |name: &str| path.join(format!("{name}.safetensors"));
    let student = params::load(student, &ckpt.student, device)
        .map_err(|why| mismatch(&file("student"), why))?;
    let teacher = params::load(teacher, &ckpt.teacher, device)
        .map_err(|why| mismatch(&file("teacher"), why))?;
    Ok((student, teacher))
}

pub fn restore_optimizer<B: Backend>(
    optimizer: &mut AdamW<B>,
    loss: &mut DinoLoss<B>,
    ckpt: &Checkpoint,
    path: &Path,
    device: &B::Device,
) -> Result<(), TrainError> {
    let origin = path.join("optimizer.safetensors");
    let tensor = |name: &str| {
        ckpt.optimizer
            .get(name)
            .ok_or_else(|| mismatch(&origin, format!("tensor `{name}` is missing")))
    };
    for (name, &step) in &ckpt.state.optimizer_steps {
        // the moments of a tensor hold one value per parameter value
        let len = ckpt
            .student
            .get(name)
            .map(|(shape, _)| shape.iter().product::<usize>())
            .ok_or_else(|| {
                mismatch(
                    &origin,
                    format!("optimizer state for `{name}`, which the student does not have"),
                )
            })?;
        let moment = |kind: &str| {
            let key = format!("{kind}.{name}");
            let (_, values) = tensor(&key)?;
            if values.len() != len {
                return Err(mismatch(
                    &origin,
                    format!(
                        "tensor `{key}` has {} values, the parameter has {len}",
                        values.len()
                    ),
                ));
            }
            Ok(params::from_host(values, device))
        };
        let (m, v) = (moment("m")?, moment("v")?);
        optimizer.state.insert(name.clone(), Moments { m, v, step });
    }
    let (shape, center) = tensor("center")?;
    if shape != &loss.center.dims().to_vec() {
        return Err(mismatch(
            &origin,
            format!(
                "center has shape {shape:?}, expected {:?}",
                loss.center.dims()
            ),
        ));
    }
    loss.center =
        Tensor::<B, 1>::from_data(TensorData::new(center.clone(), [center.len()]), device)
            .reshape(loss.center.dims());
    Ok(())
}

/// The checkpoint's step must be where its pipeline position says the run stands:
/// `epoch * steps_per_epoch + consumed / batch`, within the configured epochs.
pub fn check_position(
    step: u64,
    position: Position,
    per_epoch: u64,
    cfg: &Config,
    path: &Path,
) -> Result<(), TrainError> {
    let batch = cfg.data.batch_size as u64;
    let expected = position
        .epoch
        .checked_mul(per_epoch)
        .and_then(|s| s.checked_add(position.consumed / batch));
    if position.epoch > cfg.optim.epochs || expected != Some(step) {
        return Err(mismatch(
            &path.join("state.json"),
            format!(
                "step {step} does not match its position (epoch {}, {} samples consumed) at \
                 {per_epoch} steps per epoch of {} epochs: the file was altered; resume from \
                 another checkpoint (--resume-from CKPT)",
                position.epoch, position.consumed, cfg.optim.epochs
            ),
        ));
    }
    Ok(())
}

/// A resumed run must be the same run: only the `run` settings and the worker count may
/// change.
pub fn check_compatible(cfg: &Config, state: &State, path: &Path) -> Result<(), TrainError> {
    let saved = Config::parse_saved(&state.config, &path.display().to_string())
        .map_err(|e| mismatch(path, format!("its config: {e}")))?;
    let table = |c: &Config| -> toml::Table {
        let mut c = c.clone();
        c.run = crate::config::RunConfig {
            seed: c.run.seed,
            ..Default::default()
        };
        c.data.workers = 0;
        toml::from_str(&c.to_toml()).expect("a config round-trips through TOML")
    };
    let (saved, current) = (table(&saved), table(cfg));
    let mut differ = Vec::new();
    for (section, values) in &saved {
        for (key, value) in values.as_table().into_iter().flatten() {
            if current.get(section).and_then(|t| t.get(key)) != Some(value) {
                differ.push(format!("{section}.{key}"));
            }
        }
    }
    if differ.is_empty() {
        Ok(())
    } else {
        Err(mismatch(
            path,
            format!(
                "the checkpoint was made with another config ({} differ); resume with the run's \
                 config.toml, or start a new run",
                differ.join(", ")
            ),
        ))
    }
}

/// `RUN/metrics.jsonl`, one line per logging window.
pub struct MetricsLog {
    file: fs::File,
    path: PathBuf,
    losses: f64,
    waits: f64,
    times: f64,
    images: usize,
    steps: u64,
}

impl MetricsLog {
    /// Opens for appending; on resume, lines past `step` (written after the checkpoint the
    /// run continues from) are dropped so the file reads as one run.
    pub fn open(path: &Path, step: u64) -> Result<Self, TrainError> {
        let io = |err| TrainError::Io {
            path: path.to_path_buf(),
            err,
        };
        let kept: String = match fs::read_to_string(path) {
            Ok(text) => text
                .lines()
                .filter(|line| {
                    serde_json::from_str::<serde_json::Value>(line)
                        .ok()
                        .and_then(|v| v["step"].as_u64())
                        .is_some_and(|s| s <= step)
                })
                .map(|line| format!("{line}\n"))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io(e)),
        };
        fs::write(path, kept).map_err(io)?;
        let file = fs::OpenOptions::new().append(true).open(path).map_err(io)?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
            losses: 0.0,
            waits: 0.0,
            times: 0.0,
            images: 0,
            steps: 0,
        })
    }

    pub fn add(&mut self, loss: f64, data_wait: f64, step_time: f64, images: usize) {
        self.losses += loss;
        self.waits += data_wait;
        self.times += step_time;
        self.images += images;
        self.steps += 1;
    }

    #[allow(clippy::too_many_arguments)]
    pub fn line(
        &mut self,
        step: u64,
        epoch: u64,
        lr: f64,
        wd: f64,
        momentum: f64,
        teacher_temp: f64,
        stats: &TeacherStats,
        decode_failures: u64,
    ) -> Result<LogLine, TrainError> {
        let n = self.steps.max(1) as f64;
        let line = LogLine {
            step,
            epoch,
            loss: self.losses / n,
            lr,
            wd,
            momentum,
            teacher_temp,
            images_per_sec: self.images as f64 / self.times.max(1e-9),
            data_wait: self.waits / n,
            data_wait_fraction: self.waits / self.times.max(1e-9),
            step_time: self.times / n,
            teacher_entropy: stats.entropy,
            teacher_marginal_entropy: stats.marginal_entropy,
            decode_failures,
        };
        let mut json = serde_json::to_string(&line).expect("a log line serializes");
        json.push('\n');
        self.file
            .write_all(json.as_bytes())
            .map_err(|err| TrainError::Io {
                path: self.path.clone(),
                err,
            })?;
        publish(&line);
        (self.losses, self.waits, self.times, self.images, self.steps) = (0.0, 0.0, 0.0, 0, 0);
        Ok(line)
    }
}

/// The same figures through the `metrics` crate (and so the Prometheus endpoint).
fn publish(line: &LogLine) {
    metrics::gauge!("train_step").set(line.step as f64);
    metrics::gauge!("train_epoch").set(line.epoch as f64);
    metrics::gauge!("train_loss").set(line.loss);
    metrics::gauge!("train_lr").set(line.lr);
    metrics::gauge!("train_weight_decay").set(line.wd);
    metrics::gauge!("train_teacher_momentum").set(line.momentum);
    metrics::gauge!("train_teacher_temp").set(line.teacher_temp);
    metrics::gauge!("train_images_per_sec").set(line.images_per_sec);
    metrics::gauge!("train_data_wait_seconds").set(line.data_wait);
    metrics::gauge!("train_data_wait_fraction").set(line.data_wait_fraction);
    metrics::gauge!("train_step_seconds").set(line.step_time);
    metrics::gauge!("train_teacher_entropy").set(line.teacher_entropy);
    metrics::gauge!("train_teacher_marginal_entropy").set(line.teacher_marginal_entropy);
}

/// Warns about the two collapses DINO can fall into: to the uniform distribution (loss and
/// teacher entropy at ln K) and to one prototype (the batch-mean teacher distribution's
/// entropy near 0). Once per kind.
pub struct CollapseGuard {
    ln_k: f64,
    warned_uniform: bool,
    warned_dominant: bool,
}

impl CollapseGuard {
    pub fn new(out_dim: usize) -> Self {
        Self {
            ln_k: (out_dim as f64).ln(),
            warned_uniform: false,
            warned_dominant: false,
        }
    }

    pub fn check(&mut self, line: &LogLine) -> Option<String> {
        let ln_k = self.ln_k;
        if !self.warned_uniform && line.loss > 0.99 * ln_k && line.teacher_entropy > 0.99 * ln_k {
            self.warned_uniform = true;
            return Some(format!(
                "step {}: the loss ({:.4}) and the teacher entropy ({:.4}) sit at ln K = {ln_k:.4}: \
                 the outputs collapsed to uniform. Lower loss.teacher_temp or raise optim.freeze_last_layer",
                line.step, line.loss, line.teacher_entropy
            ));
        }
        if !self.warned_dominant && line.teacher_marginal_entropy < 0.1 * ln_k {
            self.warned_dominant = true;
            return Some(format!(
                "step {}: the teacher's batch-mean output entropy is {:.4} (ln K = {ln_k:.4}): \
                 nearly every image maps to the same prototype. Check loss.center_momentum and \
                 raise loss.teacher_temp",
                line.step, line.teacher_marginal_entropy
            ));
        }
        None
    }
}
