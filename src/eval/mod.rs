//! What users do with a trained backbone: weighted k-NN classification and attention maps.

pub mod attention;
pub mod knn;

use std::path::{Path, PathBuf};

use crate::checkpoint::{self, CheckpointError, HostTensors, Which};
use crate::config::{Config, ConfigError};
use crate::device::InferenceBackend;
use crate::model::{Backbone, Init};
use crate::params::{self, LoadError};

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("{path}: its config does not parse: {err}")]
    Config { path: PathBuf, err: ConfigError },
    #[error("{path}: the {which} backbone does not fit the config's model: {err}")]
    Load {
        path: PathBuf,
        which: &'static str,
        err: LoadError,
    },
}

/// A backbone to evaluate: a checkpoint's network, or the run's own starting point.
pub struct Weights {
    /// the checkpoint folder
    pub dir: PathBuf,
    pub step: u64,
    pub config: Config,
    /// timm names (no `backbone.` prefix); `None` for the random initialization
    pub backbone: Option<HostTensors>,
    pub which: Which,
}

impl Weights {
    /// `path` is a checkpoint folder or a run folder (its newest checkpoint). With `init`,
    /// only the config is read, and the backbone is the one the run started from (same
    /// config, same seed): the baseline training has to beat.
    pub fn open(path: &Path, which: Which, init: bool) -> Result<Self, WeightsError> {
        let dir = checkpoint::resolve(path)?;
        let state = checkpoint::load_state(&dir)?;
        let config =
            Config::parse_saved(&state.config, &dir.join("state.json").display().to_string())
                .map_err(|err| WeightsError::Config {
                    path: dir.clone(),
                    err,
                })?;
        let backbone = match init {
            true => None,
            false => Some(checkpoint::backbone(&checkpoint::read_tensors(
                &dir.join(which.file()),
            )?)),
        };
        Ok(Self {
            dir,
            step: state.step,
            config,
            backbone,
            which,
        })
    }

    /// What the features are, for reports: "teacher of DIR (step N)" or "random init (seed S)".
    pub fn describe(&self) -> String {
        match self.backbone {
            Some(_) => format!(
                "{} of {} (step {})",
                self.which.name(),
                self.dir.display(),
                self.step
            ),
            None => format!(
                "the random initialization of {} (seed {})",
                self.dir.display(),
                self.config.run.seed
            ),
        }
    }

    pub fn build<B: InferenceBackend, M: Backbone<B>>(
        &self,
        device: &B::Device,
    ) -> Result<M, WeightsError> {
        // The backbone is drawn first from the run's seed, so this is the student's (and
        // teacher's) backbone at step 0 of the run, whatever the head.
        let init = M::from_config(
            &self.config.model,
            &mut Init::new(self.config.run.seed),
            device,
        );
        match &self.backbone {
            None => Ok(init),
            Some(tensors) => {
                params::load(init, tensors, device).map_err(|err| WeightsError::Load {
                    path: self.dir.clone(),
                    which: self.which.name(),
                    err,
                })
            }
        }
    }
}
