//! Batch normalization as DINO trains convnets: student **and** teacher normalize with the
//! batch's statistics (neither is ever in eval mode), each network folds them into its own
//! running statistics (PyTorch's momentum 0.1 and unbiased running variance), and evaluation
//! normalizes with the running ones. Burn's `BatchNorm` cannot be used: it picks batch or
//! running statistics by backend (the teacher runs on the inner one), keeps the biased
//! variance, and shares its running state between clones (student and teacher).
//!
//! The running statistics are buffers: parameters without gradient, named as PyTorch names
//! them (`running_mean`, `running_var`, `num_batches_tracked`), so checkpoints and exports
//! carry them with no extra code. The EMA of the teacher skips them ([`is_buffer`]). A
//! forward never mutates a module: it records the batch statistics in a [`BatchStats`],
//! which the trainer folds into the network that produced them after the step. Within a
//! step of several ranks, the statistics are the global batch's (SyncBatchNorm).

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::layers::constant;
use crate::device::InferenceBackend;
use crate::fused;
use crate::precision::in_f32;

/// PyTorch's defaults, which torchvision's ResNet and the DINO head use.
const EPS: f64 = 1e-5;
const MOMENTUM: f64 = 0.1;

/// What batch norms normalize with.
pub enum Norm<'a, B: Backend> {
    /// the running statistics: evaluation (k-NN, probes, export checks)
    Running,
    /// the batch's statistics, recorded for the running update: training, teacher included
    Batch(&'a mut BatchStats<B>),
}

/// The batch statistics of a network's training forwards, per buffer, in the order they were
/// computed (the student normalizes its globals and its locals separately: two updates).
pub struct BatchStats<B: Backend> {
    by_buffer: HashMap<ParamId, Fold<B>>,
}

enum Fold<B: Backend> {
    /// running = (1 - m) * running + m * value, for each value in order
    Average(Vec<Tensor<B, 1>>),
    /// running += count
    Count(u32),
}

impl<B: Backend> Default for BatchStats<B> {
    fn default() -> Self {
        Self {
            by_buffer: HashMap::new(),
        }
    }
}

impl<B: Backend> BatchStats<B> {
    fn average(&mut self, id: ParamId, value: Tensor<B, 1>) {
        match self
            .by_buffer
            .entry(id)
            .or_insert_with(|| Fold::Average(Vec::new()))
        {
            Fold::Average(values) => values.push(value.detach()),
            Fold::Count(_) => unreachable!("a buffer is either averaged or counted"),
        }
    }

    fn count(&mut self, id: ParamId) {
        match self.by_buffer.entry(id).or_insert(Fold::Count(0)) {
            Fold::Count(n) => *n += 1,
            Fold::Average(_) => unreachable!("a buffer is either averaged or counted"),
        }
    }

    /// `module` with these statistics folded into its running buffers. Panics if a recorded
    /// buffer is not in `module`: statistics belong to the network that computed them.
    pub fn fold<M: Module<B>>(self, module: M) -> M {
        let mut folder = Folder {
            by_buffer: self.by_buffer,
        };
        let module = module.map(&mut folder);
        assert!(
            folder.by_buffer.is_empty(),
            "batch statistics folded into another network than the one that computed them"
        );
        module
    }
}

struct Folder<B: Backend> {
    by_buffer: HashMap<ParamId, Fold<B>>,
}

impl<B: Backend> ModuleMapper<B> for Folder<B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let Some(fold) = self.by_buffer.remove(&param.id) else {
            return param;
        };
        let (id, value, mapper) = param.consume();
        let shape = value.dims();
        let mut running = value.flatten::<1>(0, D - 1);
        match fold {
            Fold::Average(values) => {
                for v in values {
                    running = running * (1.0 - MOMENTUM) + v * MOMENTUM;
                }
            }
            Fold::Count(n) => running = running.add_scalar(n as f32),
        }
        Param::from_mapped_value(id, running.reshape(shape), mapper)
    }
}

/// The tensors of a network that are state, not parameters: no gradient, no weight decay,
/// and no EMA (the teacher keeps its own statistics).
pub fn is_buffer(name: &str) -> bool {
    ["running_mean", "running_var", "num_batches_tracked"]
        .iter()
        .any(|b| name.rsplit('.').next() == Some(b))
}

/// PyTorch's batch counter, an int64 (ours is an f32 buffer, exact to 2^24 forwards).
pub fn is_counter(name: &str) -> bool {
    name.rsplit('.').next() == Some("num_batches_tracked")
}

/// `nn.BatchNorm1d` / `nn.BatchNorm2d`: over every dimension but the channels (dimension 1).
#[derive(Module, Debug)]
pub struct BatchNorm<B: Backend> {
    /// [C]
    pub weight: Param<Tensor<B, 1>>,
    /// [C]
    pub bias: Param<Tensor<B, 1>>,
    /// [C], buffer
    pub running_mean: Param<Tensor<B, 1>>,
    /// [C], buffer (unbiased estimates, as PyTorch)
    pub running_var: Param<Tensor<B, 1>>,
    /// [1], buffer: the training forwards seen (PyTorch's is a 0-d int64; exports convert)
    pub num_batches_tracked: Param<Tensor<B, 1>>,
}

impl<B: InferenceBackend> BatchNorm<B> {
    /// PyTorch's init: weight 1, bias 0, running mean 0, running variance 1.
    pub fn new(channels: usize, device: &B::Device) -> Self {
        let buffer = |v: f32, n: usize| constant(v, [n], device).set_require_grad(false);
        Self {
            weight: constant(1.0, [channels], device),
            bias: constant(0.0, [channels], device),
            running_mean: buffer(0.0, channels),
            running_var: buffer(1.0, channels),
            num_batches_tracked: buffer(0.0, 1),
        }
    }

    /// [N, C, ...] -> [N, C, ...], in f32.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>, norm: &mut Norm<B>) -> Tensor<B, D> {
        in_f32(x, |x| match norm {
            Norm::Running => self.normalize_running(x),
            Norm::Batch(stats) => self.normalize_batch(x, stats),
        })
    }

    fn normalize_running<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let scale = self.weight.val() / self.running_var.val().add_scalar(EPS).sqrt();
        let shift = self.bias.val() - self.running_mean.val() * scale.clone();
        fused::channel_affine(x, scale, shift)
    }

    fn normalize_batch<const D: usize>(
        &self,
        x: Tensor<B, D>,
        stats: &mut BatchStats<B>,
    ) -> Tensor<B, D> {
        let dims = x.dims();
        let count = dims.iter().product::<usize>() / dims[1];
        assert!(
            count > 1,
            "batch norm over {count} value per channel: the batch statistics need at least 2"
        );
        let ranks = fused::rank_world::<B>();
        let (y, mean, var) = if ranks > 1 {
            self.normalize_synchronized(x)
        } else {
            fused::batch_norm(x, self.weight.val(), self.bias.val(), EPS)
        };
        let count = count * ranks;
        let unbiased = var * (count as f64 / (count - 1) as f64);
        stats.average(self.running_mean.id, mean);
        stats.average(self.running_var.id, unbiased);
        stats.count(self.num_batches_tracked.id);
        y
    }

    /// SyncBatchNorm: the statistics of the global batch, every rank holding an equal part
    /// of it: the mean of the ranks' means, then the mean of their mean squared deviations
    /// from it (two passes, as the local kernel). Composed ops, whose gradients autodiff
    /// takes through the ranks' means. -> (y, mean [C], biased var [C])
    fn normalize_synchronized<const D: usize>(
        &self,
        x: Tensor<B, D>,
    ) -> (Tensor<B, D>, Tensor<B, 1>, Tensor<B, 1>) {
        let dims = x.dims();
        let channels = dims[1];
        let count = dims.iter().product::<usize>() / channels;
        // [N, C, ...] -> [C], the mean over this rank's values of each channel
        let local_mean = |t: Tensor<B, D>| {
            let mut t = t;
            for d in (0..D).filter(|&d| d != 1) {
                t = t.sum_dim(d);
            }
            t.reshape([channels]) / count as f64
        };
        let mean = fused::rank_mean(local_mean(x.clone()));
        let centered = x - Self::per_channel::<D>(mean.clone());
        let var = fused::rank_mean(local_mean(centered.clone().square()));
        let rstd = var.clone().add_scalar(EPS).sqrt().recip();
        let y = centered * Self::per_channel::<D>(rstd * self.weight.val())
            + Self::per_channel::<D>(self.bias.val());
        (y, mean.detach(), var.detach())
    }

    /// [C] -> [1, C, 1, ...]: broadcast against [N, C, ...]
    fn per_channel<const D: usize>(t: Tensor<B, 1>) -> Tensor<B, D> {
        let mut shape = [1; D];
        shape[1] = t.dims()[0];
        t.reshape(shape)
    }
}
