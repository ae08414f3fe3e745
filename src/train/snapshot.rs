//! A run's state as a checkpoint: the networks, the optimizer's moments and step counts, the
//! centre, the step, the pipeline position and the config.

use std::collections::BTreeMap;

use burn::module::AutodiffModule;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use dino_pipeline::batch::Position;

use super::step::Models;
use crate::checkpoint::{Checkpoint, FORMAT, HostTensors, State};
use crate::config::Config;
use crate::device::{TrainableBackbone, TrainingBackend};
use crate::params;

/// Where a run stands, for its checkpoint.
pub struct Progress<'a> {
    pub step: u64,
    pub position: Position,
    pub data_plan: &'a str,
    /// devices in the run
    pub world: usize,
}

/// The checkpoint of `models` at `progress`.
pub fn snapshot<A: TrainingBackend, M: TrainableBackbone<A>>(
    cfg: &Config,
    progress: Progress,
    models: &Models<A, M>,
) -> Checkpoint {
    let Models {
        student,
        teacher,
        loss,
        optimizer,
    } = models;
    let mut moments = HostTensors::new();
    let mut optimizer_steps = BTreeMap::new();
    for (name, state) in &optimizer.state {
        let size = state.m.dims()[0];
        moments.insert(format!("m.{name}"), (vec![size], host(&state.m)));
        if let Some(v) = &state.v {
            moments.insert(format!("v.{name}"), (vec![size], host(v)));
        }
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
            world: progress.world,
        },
        student: params::to_host(&params::collect(&student.valid())),
        teacher: params::to_host(&params::collect(teacher)),
        optimizer: moments,
    }
}

fn host<B: Backend, const D: usize>(t: &Tensor<B, D>) -> Vec<f32> {
    t.to_data().convert::<f32>().into_vec().expect("f32 data")
}
