//! AdamW as the recipe uses it, written out because its schedules change per iteration
//! what Burn's optimizer fixes at build time.
//!
//! Per step and per trainable tensor (PyTorch's `AdamW`, decoupled decay):
//! the gradient's L2 norm is capped at `clip` (the official per-tensor `clip_gradients`),
//! `p *= 1 - lr * wd` for decayed tensors only, then the Adam update with bias correction.
//! Each tensor counts its own steps, so a tensor frozen for a while (the last layer in the
//! first epoch) starts its bias correction when it first moves, as in PyTorch.

use std::collections::BTreeMap;

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};

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

/// The settings of one step.
#[derive(Clone, Copy, Debug)]
pub struct Step {
    pub lr: f64,
    pub weight_decay: f64,
    /// per-tensor gradient norm cap; 0 disables
    pub clip: f64,
    /// the last layer's gradients are dropped (`freeze_last_layer`)
    pub freeze_last_layer: bool,
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

pub fn is_last_layer(name: &str) -> bool {
    name.contains("last_layer")
}

#[derive(Default)]
pub struct AdamW<B: Backend> {
    pub state: BTreeMap<String, Moments<B>>,
}

impl<B: Backend> AdamW<B> {
    /// Updates the parameters of `module` from `grads`; tensors without a gradient (frozen,
    /// or not reached by the loss) are left as they are, moments included.
    pub fn step<A, M>(&mut self, module: M, grads: &A::Gradients, step: Step) -> M
    where
        A: AutodiffBackend<InnerBackend = B>,
        M: Module<A>,
    {
        let mut mapper = Updater::<A> {
            path: Path::default(),
            grads,
            state: &mut self.state,
            step,
        };
        module.map(&mut mapper)
    }
}

struct Updater<'a, A: AutodiffBackend> {
    path: Path,
    grads: &'a A::Gradients,
    state: &'a mut BTreeMap<String, Moments<A::InnerBackend>>,
    step: Step,
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
        let grad =
            if !value.is_require_grad() || (self.step.freeze_last_layer && is_last_layer(&name)) {
                None
            } else {
                value.grad(self.grads)
            };
        let Some(grad) = grad else {
            return Param::from_mapped_value(id, value, mapper);
        };
        let shape = value.dims();
        let p = value.inner().flatten::<1>(0, D - 1);
        let g = grad.flatten::<1>(0, D - 1);
        let g = if self.step.clip > 0.0 {
            clip_norm(g, self.step.clip)
        } else {
            g
        };
        let Step {
            lr, weight_decay, ..
        } = self.step;
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
