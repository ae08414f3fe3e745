//! The measuring loop of `benches/train_step.rs`, kept beside the trainer so that a test can
//! check it runs the trainer's own step: the same models from the config's seed, the
//! schedules' values at the chosen step, [`step::dino_step`].

use std::time::Instant;

use burn::tensor::ElementConversion;
use burn::tensor::backend::Backend;

use super::step::{self, Models, Phase, Schedules};
use crate::config::Config;
use crate::device::{TrainableBackbone, TrainingBackend};
use crate::images::Images;
use crate::parallel::OneDevice;

/// Per-step figures of a bench run.
pub struct Timings {
    /// milliseconds per step of each phase, in [`PHASES`] order (the last is the whole step)
    pub phases: Vec<Vec<f64>>,
    /// the loss of every step run, warmup included
    pub losses: Vec<f64>,
}

pub const PHASES: [&str; 5] = ["forward", "backward", "optimizer", "ema", "step"];

/// Runs `warmup + steps` DINO steps from step `first` on, at `per_epoch` steps per epoch,
/// each on the batch `images` gives, timing the last `steps` per phase (the device is
/// synchronized at each phase's end).
pub fn time_steps<A: TrainingBackend, M: TrainableBackbone<A>>(
    cfg: &Config,
    first: u64,
    per_epoch: u64,
    (warmup, steps): (usize, usize),
    mut images: impl FnMut() -> Images<A::InnerBackend>,
    device: &A::Device,
) -> Timings {
    let mut models = Models::<A, M>::new(cfg, device);
    let schedules = Schedules::new(cfg, per_epoch, cfg.data.batch_size);
    let mut timings = Timings {
        phases: vec![Vec::new(); PHASES.len()],
        losses: Vec::new(),
    };
    for i in 0..warmup + steps {
        let it = first + i as u64;
        let h = schedules.at(it, it / per_epoch);
        let batch = images();
        let started = Instant::now();
        let mut ends = Vec::with_capacity(4);
        let mut on_phase = |_: Phase| {
            A::InnerBackend::sync(device).expect("device sync");
            ends.push(Instant::now());
        };
        let outcome;
        (models, outcome) = step::dino_step(models, batch, &h, &mut OneDevice, &mut on_phase)
            .expect("one device has no peer to fail");
        // after the step's phases: the device has finished it, reading waits for nothing
        let loss: f64 = outcome.loss.into_scalar().elem();
        assert!(loss.is_finite(), "step {it}: the loss is {loss}");
        timings.losses.push(loss);
        if i >= warmup {
            let mut from = started;
            for (phase, &end) in ends.iter().enumerate() {
                timings.phases[phase].push((end - from).as_secs_f64() * 1e3);
                from = end;
            }
            timings.phases[4].push((from - started).as_secs_f64() * 1e3);
        }
    }
    timings
}
