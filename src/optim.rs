//! The optimizer pipeline, in the order a step runs it: the gradients of a backward pass are
//! collected per tensor ([`Gradients`]), pass through transforms (the mean across devices,
//! the trainer's `cancel_gradients_last_layer`, per-tensor clipping), then an update rule
//! applies them. AdamW is the rule the recipe uses, written out because its schedules
//! change per iteration what Burn's optimizer fixes at build time.
//!
//! AdamW per step and per tensor with a gradient (PyTorch's `AdamW`, decoupled decay):
//! `p *= 1 - lr * wd` for decayed tensors only, then the Adam update with bias correction.
//! Each tensor counts its own steps, so a tensor frozen for a while (the last layer in the
//! first epoch) starts its bias correction when it first moves, as in PyTorch.

use std::collections::BTreeMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};

use crate::parallel::{Collective, ParallelError, mean_all};
use crate::params::Path;

pub const BETA1: f64 = 0.9;
pub const BETA2: f64 = 0.999;
pub const EPS: f64 = 1e-8;

/// One tensor's moments, flattened, and its step count.
#[derive(Clone, Debug)]
pub struct Moments<B: Backend> {
    pub m: Tensor<B, 1>,
    pub v: Tensor<B, 1>,
    pub step: u64,
}

/// The recipe's decay groups: no decay for biases and 1-D tensors (norms), decay for the rest
/// (`cls_token`, `pos_embed`, the patch embedding and the head included).
pub fn decays(name: &str, ndim: usize) -> bool {
    !(name.ends_with(".bias") || ndim == 1)
}

/// The official `clip_gradients` for one tensor: scaled by clip / (norm + 1e-6) when that is
/// below 1. Computed on the device (a factor of exactly 1 otherwise), so no host sync.
pub fn clip_norm<B: Backend>(g: Tensor<B, 1>, clip: f64) -> Tensor<B, 1> {
    let norm = g.clone().square().sum().sqrt();
    let coef = (norm + 1e-6).recip().mul_scalar(clip).clamp_max(1.0);
    g * coef
}

/// One backward pass's gradients, flattened, by parameter name, on the inner backend.
/// Tensors without one (frozen, or not reached by the loss) are absent, and an update rule
/// leaves them as they are.
pub struct Gradients<B: Backend> {
    pub by_name: BTreeMap<String, Tensor<B, 1>>,
}

impl<B: Backend> Gradients<B> {
    /// The gradients of `module`'s trainable parameters in `grads`.
    pub fn collect<A, M>(module: &M, grads: &A::Gradients) -> Self
    where
        A: AutodiffBackend<InnerBackend = B>,
        M: Module<A>,
    {
        let mut visitor = Collect::<A> {
            path: Path::default(),
            grads,
            out: BTreeMap::new(),
        };
        module.visit(&mut visitor);
        Self {
            by_name: visitor.out,
        }
    }

    /// Drops the gradients of the tensors `cancel` names: they are not updated this step.
    pub fn cancel(&mut self, cancel: impl Fn(&str) -> bool) {
        self.by_name.retain(|name, _| !cancel(name));
    }

    /// The mean over all ranks (the official DDP all-reduce), with `extra` tensors in the same
    /// all-reduce, whose means are returned.
    pub fn all_reduce_mean(
        &mut self,
        sync: &mut dyn Collective<B>,
        extra: Vec<Tensor<B, 1>>,
    ) -> Result<Vec<Tensor<B, 1>>, ParallelError> {
        let (names, mut tensors): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.by_name).into_iter().unzip();
        tensors.extend(extra);
        let mut means = mean_all(sync, tensors, "the gradients")?;
        let extra = means.split_off(names.len());
        self.by_name = names.into_iter().zip(means).collect();
        Ok(extra)
    }

    /// The official per-tensor `clip_gradients` (see [`clip_norm`]).
    pub fn clip_per_tensor(&mut self, clip: f64) {
        for g in self.by_name.values_mut() {
            *g = clip_norm(g.clone(), clip);
        }
    }
}

struct Collect<'a, A: AutodiffBackend> {
    path: Path,
    grads: &'a A::Gradients,
    out: BTreeMap<String, Tensor<A::InnerBackend, 1>>,
}

impl<A: AutodiffBackend> ModuleVisitor<A> for Collect<'_, A> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<A, D>>) {
        let value = param.val();
        if !value.is_require_grad() {
            return;
        }
        if let Some(grad) = value.grad(self.grads) {
            self.out
                .insert(self.path.name(), grad.flatten::<1>(0, D - 1));
        }
    }
}

#[derive(Default)]
pub struct AdamW<B: Backend> {
    pub state: BTreeMap<String, Moments<B>>,
}

impl<B: Backend> AdamW<B> {
    /// Updates the parameters of `module` that have a gradient in `grads`.
    pub fn update<A, M>(&mut self, module: M, grads: Gradients<B>, lr: f64, weight_decay: f64) -> M
    where
        A: AutodiffBackend<InnerBackend = B>,
        M: Module<A>,
    {
        let mut mapper = Updater::<A> {
            path: Path::default(),
            grads: grads.by_name,
            state: &mut self.state,
            lr,
            weight_decay,
        };
        module.map(&mut mapper)
    }
}

struct Updater<'a, A: AutodiffBackend> {
    path: Path,
    grads: BTreeMap<String, Tensor<A::InnerBackend, 1>>,
    state: &'a mut BTreeMap<String, Moments<A::InnerBackend>>,
    lr: f64,
    weight_decay: f64,
}

impl<A: AutodiffBackend> ModuleMapper<A> for Updater<'_, A> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.exit();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<A, D>>) -> Param<Tensor<A, D>> {
        let (id, value, mapper) = param.consume();
        let name = self.path.name();
        let Some(g) = self.grads.remove(&name) else {
            return Param::from_mapped_value(id, value, mapper);
        };
        let shape = value.dims();
        let p = value.inner().flatten::<1>(0, D - 1);
        let (lr, weight_decay) = (self.lr, self.weight_decay);
        let p = if decays(&name, D) && weight_decay != 0.0 {
            p * (1.0 - lr * weight_decay)
        } else {
            p
        };
        let moments = self.state.remove(&name).unwrap_or_else(|| Moments {
            m: g.zeros_like(),
            v: g.zeros_like(),
            step: 0,
        });
        let step = moments.step + 1;
        let m = moments.m * BETA1 + g.clone() * (1.0 - BETA1);
        let v = moments.v * BETA2 + g.square() * (1.0 - BETA2);
        let bias1 = 1.0 - BETA1.powi(step as i32);
        let bias2 = 1.0 - BETA2.powi(step as i32);
        let denom = (v.clone().sqrt() / bias2.sqrt()) + EPS;
        let p = p - (m.clone() / denom) * (lr / bias1);
        self.state.insert(name, Moments { m, v, step });
        let value = Tensor::from_inner(p.reshape(shape)).require_grad();
        Param::from_mapped_value(id, value, mapper)
    }
}
