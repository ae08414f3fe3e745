//! Continuing a run from a checkpoint: the checks that it is the same run on the same data
//! at a consistent position, and the restore of the networks, moments and centre.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use dino_pipeline::batch::Position;

use super::step::Models;
use crate::checkpoint::{Checkpoint, State};
use crate::config::{Config, ConfigError};
use crate::device::{TrainableBackbone, TrainingBackend};
use crate::optim::{Moments, Rule};
use crate::params::{self, LoadError};

/// Why a checkpoint cannot continue this run; each names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    #[error("{path}: its config: {err}")]
    SavedConfig { path: PathBuf, err: ConfigError },
    #[error(
        "{path}: the checkpoint was made with another config ({differ} differ); resume with \
         the run's config.toml, or start a new run"
    )]
    OtherConfig { path: PathBuf, differ: String },
    #[error(
        "{path}: the checkpoint was made on other data than split `{split}` of {data} (another \
         ingest plan); resume with the shards the run started on"
    )]
    OtherData {
        path: PathBuf,
        split: String,
        data: PathBuf,
    },
    #[error(
        "{path}: step {step} does not match its position (epoch {epoch}, {consumed} samples \
         consumed) at {per_epoch} steps per epoch of {epochs} epochs: the file was altered; \
         resume from another checkpoint (--resume-from CKPT)"
    )]
    Position {
        path: PathBuf,
        step: u64,
        epoch: u64,
        consumed: u64,
        per_epoch: u64,
        epochs: u64,
    },
    #[error(
        "{path}: the run trained on {saved} device(s) and this one has {now}; resume on {saved} \
         (--devices, --nodes), or start a new run. Another count would change the global \
         batch (data.batch_size per device x devices), and with it the learning rate and the \
         steps per epoch"
    )]
    OtherWorld {
        path: PathBuf,
        saved: usize,
        now: usize,
    },
    #[error("{path}: {err}")]
    Network { path: PathBuf, err: LoadError },
    #[error("{path}: tensor `{name}` is missing")]
    MissingTensor { path: PathBuf, name: String },
    #[error("{path}: optimizer state for `{name}`, which the student does not have")]
    OrphanState { path: PathBuf, name: String },
    #[error("{path}: tensor `{key}` has {len} values, the parameter has {expected}")]
    MomentSize {
        path: PathBuf,
        key: String,
        len: usize,
        expected: usize,
    },
    #[error("{path}: center has shape {shape:?}, expected {expected:?}")]
    CenterShape {
        path: PathBuf,
        shape: Vec<usize>,
        expected: Vec<usize>,
    },
}

/// A resumed run must be the same run: only the `run` settings (but the seed) and the worker
/// count may change.
pub fn check_compatible(cfg: &Config, state: &State, path: &Path) -> Result<(), ResumeError> {
    let saved = Config::parse_saved(&state.config, &path.display().to_string()).map_err(|err| {
        ResumeError::SavedConfig {
            path: path.to_path_buf(),
            err,
        }
    })?;
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
    // Both tables are whole configs (the saved text parsed with today's defaults for any key
    // it lacks), so they hold the same keys and one direction compares them all.
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
        Err(ResumeError::OtherConfig {
            path: path.to_path_buf(),
            differ: differ.join(", "),
        })
    }
}

/// A run continues on as many devices as it started on.
pub fn check_world(state: &State, world: usize, path: &Path) -> Result<(), ResumeError> {
    if state.world == world {
        Ok(())
    } else {
        Err(ResumeError::OtherWorld {
            path: path.to_path_buf(),
            saved: state.world,
            now: world,
        })
    }
}

/// The checkpoint's step must be where its pipeline position says the run stands:
/// `epoch * steps_per_epoch + consumed / batch`, within the configured epochs.
pub fn check_position(
    step: u64,
    position: Position,
    per_epoch: u64,
    cfg: &Config,
    path: &Path,
) -> Result<(), ResumeError> {
    let batch = cfg.data.batch_size as u64;
    let expected = position
        .epoch
        .checked_mul(per_epoch)
        .and_then(|s| s.checked_add(position.consumed / batch));
    if position.epoch > cfg.optim.epochs || expected != Some(step) {
        return Err(ResumeError::Position {
            path: path.join("state.json"),
            step,
            epoch: position.epoch,
            consumed: position.consumed,
            per_epoch,
            epochs: cfg.optim.epochs,
        });
    }
    Ok(())
}

/// `models` with the checkpoint's networks, moments and centre.
pub fn restore<A: TrainingBackend, M: TrainableBackbone<A>>(
    models: Models<A, M>,
    ckpt: &Checkpoint,
    path: &Path,
    device: &A::Device,
) -> Result<Models<A, M>, ResumeError> {
    let file = |name: &str| path.join(format!("{name}.safetensors"));
    let network = |name: &str| {
        let path = file(name);
        move |err| ResumeError::Network { path, err }
    };
    let Models {
        student,
        teacher,
        mut loss,
        mut optimizer,
    } = models;
    let student = params::load(student, &ckpt.student, device).map_err(network("student"))?;
    let teacher = params::load(teacher, &ckpt.teacher, device).map_err(network("teacher"))?;

    let origin = file("optimizer");
    let tensor = |name: &str| {
        ckpt.optimizer
            .get(name)
            .ok_or_else(|| ResumeError::MissingTensor {
                path: origin.clone(),
                name: name.into(),
            })
    };
    for (name, &step) in &ckpt.state.optimizer_steps {
        // the moments of a tensor hold one value per parameter value
        let len = ckpt
            .student
            .get(name)
            .map(|(shape, _)| shape.iter().product::<usize>())
            .ok_or_else(|| ResumeError::OrphanState {
                path: origin.clone(),
                name: name.clone(),
            })?;
        let moment = |kind: &str| {
            let key = format!("{kind}.{name}");
            let (_, values) = tensor(&key)?;
            if values.len() != len {
                return Err(ResumeError::MomentSize {
                    path: origin.clone(),
                    key,
                    len: values.len(),
                    expected: len,
                });
            }
            Ok(params::from_host(values, device))
        };
        let m = moment("m")?;
        // SGD and LARS keep one buffer, AdamW two
        let v = match optimizer.rule {
            Rule::AdamW => Some(moment("v")?),
            Rule::Sgd | Rule::Lars => None,
        };
        optimizer.state.insert(name.clone(), Moments { m, v, step });
    }
    let (shape, center) = tensor("center")?;
    let expected = loss.center.dims().to_vec();
    if *shape != expected {
        return Err(ResumeError::CenterShape {
            path: origin.clone(),
            shape: shape.clone(),
            expected,
        });
    }
    loss.center = center_tensor(center, loss.center.dims(), device);
    Ok(Models {
        student,
        teacher,
        loss,
        optimizer,
    })
}

fn center_tensor<B: Backend>(values: &[f32], dims: [usize; 2], device: &B::Device) -> Tensor<B, 2> {
    Tensor::<B, 1>::from_data(TensorData::new(values.to_vec(), [values.len()]), device)
        .reshape(dims)
}
