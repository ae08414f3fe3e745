//! One DINO step, the body of the official `train_one_epoch`: teacher on the 2 globals,
//! student on all crops, loss, backward, gradient transforms, update, EMA, centre, and each
//! network's batch-norm statistics (a ResNet's, or a head's with batch norm). `train` and
//! `benches/train_step.rs` both run it.

use burn::module::{AutodiffModule, Module};
use burn::tensor::Tensor;
use dino_pipeline::rng;
use rand_xoshiro::Xoshiro256PlusPlus;

use crate::config::Config;
use crate::device::{TrainableBackbone, TrainingBackend};
use crate::images::Images;
use crate::loss::DinoLoss;
use crate::model::{BatchStats, Dino, Norm, PassRows, is_buffer};
use crate::optim::{Gradients, Moments, Optimizer};
use crate::parallel::{Collective, ParallelError, batch_sync};
use crate::params;
use crate::precision::{Precision, in_dtype};
use crate::schedule::{Cosine, TeacherTemp};

type Inner<A> = <A as burn::tensor::backend::AutodiffBackend>::InnerBackend;
type Teacher<A, M> = <Dino<A, M> as AutodiffModule<A>>::InnerModule;

/// Everything a step changes: student, teacher, the loss's centre, the optimizer's state.
pub struct Models<A: TrainingBackend, M: TrainableBackbone<A>> {
    pub student: Dino<A, M>,
    /// an EMA of the student's parameters, never trained by gradients; its batch-norm
    /// statistics are its own
    pub teacher: Teacher<A, M>,
    pub loss: DinoLoss<Inner<A>>,
    pub optimizer: Optimizer<Inner<A>>,
}

impl<A: TrainingBackend, M: TrainableBackbone<A>> Models<A, M> {
    /// The student from the run's seed and an exact copy of it as the teacher.
    pub fn new(cfg: &Config, device: &A::Device) -> Self {
        let student = Dino::<A, M>::new(&cfg.model, cfg.run.seed, device);
        let teacher = student.valid();
        let loss = DinoLoss::new(
            cfg.model.out_dim,
            cfg.loss.student_temp,
            cfg.loss.center_momentum,
            device,
        );
        Self {
            student,
            teacher,
            loss,
            optimizer: Optimizer::new(cfg.optim.optimizer),
        }
    }
}

impl<A: TrainingBackend, M: TrainableBackbone<A>> Models<A, M> {
    /// A replica on `device` (the same parameters, ids included), for another rank.
    pub fn replica(&self, device: &A::Device) -> Self {
        let to = |t: &Tensor<Inner<A>, 1>| t.clone().to_device(device);
        Self {
            student: self.student.clone().fork(device),
            teacher: self.teacher.clone().fork(device),
            loss: DinoLoss {
                center: self.loss.center.clone().to_device(device),
                ..self.loss
            },
            optimizer: Optimizer {
                rule: self.optimizer.rule,
                state: (self.optimizer.state.iter())
                    .map(|(name, m)| {
                        let moments = Moments {
                            m: to(&m.m),
                            v: m.v.as_ref().map(to),
                            step: m.step,
                        };
                        (name.clone(), moments)
                    })
                    .collect(),
            },
        }
    }
}

/// The values of one step: its schedules' values and the constant settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hyper {
    pub step: u64,
    pub epoch: u64,
    pub lr: f64,
    pub weight_decay: f64,
    /// the teacher's EMA momentum
    pub momentum: f64,
    pub teacher_temp: f64,
    /// the last layer's gradients are cancelled (the first `freeze_last_layer` epochs)
    pub freeze_last_layer: bool,
    /// per-tensor gradient norm cap; 0 disables
    pub clip: f64,
    pub drop_path_rate: f64,
    /// the run's seed, from which the stochastic depth is drawn per (step, pass)
    pub seed: u64,
    /// what the networks compute in
    pub precision: Precision,
}

/// The recipe's per-iteration schedules (the teacher temperature per epoch).
pub struct Schedules {
    lr: Cosine,
    weight_decay: Cosine,
    momentum: Cosine,
    teacher_temp: TeacherTemp,
    cfg: Config,
}

impl Schedules {
    /// For `per_epoch` steps per epoch; the lr scales with the global batch (linear
    /// scaling rule: `lr * batch / 256`).
    pub fn new(cfg: &Config, per_epoch: u64, global_batch: usize) -> Self {
        let o = &cfg.optim;
        Self {
            lr: Cosine::new(
                o.lr * global_batch as f64 / 256.0,
                o.min_lr,
                o.epochs,
                per_epoch,
                o.warmup_epochs,
            ),
            weight_decay: Cosine::new(o.weight_decay, o.weight_decay_end, o.epochs, per_epoch, 0),
            momentum: Cosine::new(o.momentum_teacher, 1.0, o.epochs, per_epoch, 0),
            teacher_temp: TeacherTemp {
                warmup_temp: cfg.loss.warmup_teacher_temp,
                temp: cfg.loss.teacher_temp,
                warmup_epochs: cfg.loss.warmup_teacher_temp_epochs,
            },
            cfg: cfg.clone(),
        }
    }

    /// The values of step `step`, which falls in epoch `epoch`.
    pub fn at(&self, step: u64, epoch: u64) -> Hyper {
        Hyper {
            step,
            epoch,
            lr: self.lr.at(step),
            weight_decay: self.weight_decay.at(step),
            momentum: self.momentum.at(step),
            teacher_temp: self.teacher_temp.at_epoch(epoch),
            freeze_last_layer: epoch < self.cfg.optim.freeze_last_layer,
            clip: self.cfg.optim.clip_grad,
            drop_path_rate: self.cfg.model.drop_path_rate,
            seed: self.cfg.run.seed,
            precision: self.cfg.run.precision,
        }
    }
}

/// The end of each part of a step, for the bench's per-phase timing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// teacher, student and loss
    Forward,
    Backward,
    /// gradient transforms and the update rule
    Optimizer,
    /// the teacher's EMA and the centre
    Ema,
}

/// What a step leaves for the logs.
pub struct Outcome<A: TrainingBackend> {
    /// [1], the mean over all devices, still on the device: reading it waits for the step to finish, so the trainer
    /// reads it one step later (a GPU then always has the next step queued)
    pub loss: Tensor<Inner<A>, 1>,
    /// the teacher's targets of this device's batch, [2B, K], for its entropy statistics
    pub targets: Tensor<Inner<A>, 2>,
}

/// One DINO step on `images`, this device's part of the global batch. `sync` is where the
/// devices meet; `on_phase` is told when each phase is done. Nothing here waits for the
/// device: the caller checks the loss (a non-finite one means the updated models are bad and
/// must not be saved).
pub fn dino_step<A: TrainingBackend, M: TrainableBackbone<A>>(
    models: Models<A, M>,
    images: Images<Inner<A>>,
    h: &Hyper,
    sync: &mut dyn Collective<Inner<A>>,
    on_phase: &mut dyn FnMut(Phase),
) -> Result<(Models<A, M>, Outcome<A>), ParallelError> {
    let Models {
        student,
        teacher,
        mut loss,
        mut optimizer,
    } = models;
    let device = images.globals.device();
    let dtype = h.precision.dtype();
    let globals = in_dtype(images.globals, dtype);

    // ============ teacher on the 2 globals, student on all crops ============
    // both normalize with batch statistics (the official code never puts the teacher in
    // eval mode), each recording its own for its running ones; with several ranks, the
    // global batch's statistics (SyncBatchNorm: `batch_sync`, through the step's collective)
    let mut teacher_stats = BatchStats::default();
    let teacher_out = batch_sync::with(sync, || {
        teacher.forward(
            vec![(globals.clone(), None)],
            &mut Norm::Batch(&mut teacher_stats),
        )
    })?; // [2B, K]
    let targets = loss.teacher_targets(teacher_out.clone(), h.teacher_temp);
    // stochastic depth as drawn for the global batch, this device's rows of it
    let batch = images.n_globals / 2;
    let pass = |pass: u64, n: usize| {
        let rows = PassRows {
            crops: n / batch,
            global_batch: batch * sync.world(),
            first: batch * sync.rank(),
            batch,
        };
        let mut rng = drop_path_rng(h.seed, h.step, pass);
        student
            .backbone
            .drop_plan(h.drop_path_rate, rows, &mut rng, &device)
    };
    let mut groups = vec![(Tensor::from_inner(globals), pass(0, images.n_globals))];
    if let Some(locals) = images.locals {
        let locals = in_dtype(locals, dtype);
        groups.push((Tensor::from_inner(locals), pass(1, images.n_locals)));
    }
    let mut student_stats = BatchStats::default();
    let student_out = batch_sync::with(sync, || {
        student.forward(groups, &mut Norm::Batch(&mut student_stats))
    })?; // [(2 + N) * B, K]
    let loss_value = loss.forward(student_out, Tensor::from_inner(targets.clone()));
    on_phase(Phase::Forward);

    // ============ backward ============
    let grads = batch_sync::with(sync, || {
        Gradients::collect(&student, &loss_value.backward())
    })?;
    on_phase(Phase::Backward);

    // ============ the mean over all devices: gradients, loss and the batch centre ============
    let mut grads = grads;
    let batch_center = DinoLoss::batch_center(teacher_out);
    let [loss_mean, batch_center] = grads
        .all_reduce_mean(sync, vec![loss_value.inner(), batch_center])?
        .try_into()
        .expect("two means");

    // ============ gradient transforms, then the update ============
    if h.freeze_last_layer {
        cancel_gradients_last_layer(&mut grads);
    }
    if h.clip > 0.0 {
        grads.clip_per_tensor(h.clip);
    }
    let student = optimizer.update(student, grads, h.lr, h.weight_decay);
    on_phase(Phase::Optimizer);

    // ============ EMA update of the teacher, then the centre and the running statistics ============
    let teacher = ema(teacher, &student, h.momentum);
    loss.update_center(batch_center);
    let student = student_stats.fold(student);
    let teacher = teacher_stats.fold(teacher);
    on_phase(Phase::Ema);

    let models = Models {
        student,
        teacher,
        loss,
        optimizer,
    };
    let outcome = Outcome {
        loss: loss_mean,
        targets,
    };
    Ok((models, outcome))
}

/// The official `cancel_gradients_last_layer`: the head's last layer stays fixed for the
/// first epochs, which keeps the prototypes from collapsing while the rest settles.
pub fn cancel_gradients_last_layer<B: burn::tensor::backend::Backend>(grads: &mut Gradients<B>) {
    grads.cancel(|name| name.contains("last_layer"));
}

/// The stream of a pass's stochastic-depth draws: a function of (seed, step, pass), so a
/// resumed run draws the same ones. Pass 0 is the globals, 1 the locals.
fn drop_path_rng(seed: u64, step: u64, pass: u64) -> Xoshiro256PlusPlus {
    rng::rng(seed ^ 0xD809_A7B5_1C3E_F00D, step * 2 + pass)
}

/// theta_t <- m * theta_t + (1 - m) * theta_s, for every parameter by name; buffers (the
/// batch norms' running statistics) are left as they are, as the official EMA over
/// `parameters()` leaves them.
pub fn ema<A: TrainingBackend, M: TrainableBackbone<A>>(
    teacher: Teacher<A, M>,
    student: &Dino<A, M>,
    momentum: f64,
) -> Teacher<A, M> {
    let student = params::collect(&student.valid());
    params::replace(teacher, |name, t| {
        if is_buffer(name) {
            return t;
        }
        let s = &student[name].value;
        t * momentum + s.clone() * (1.0 - momentum)
    })
}
