//! The optimizer pipeline, in the order a step runs it: the gradients of a backward pass are
//! collected per tensor ([`Gradients`]), pass through transforms (the mean across devices,
//! the trainer's `cancel_gradients_last_layer`, per-tensor clipping), then an update rule
//! applies them. The rules are written out because the recipe's schedules change per
//! iteration what Burn's optimizers fix at build time. Per step and per tensor with a
//! gradient (a tensor without one, frozen or cancelled, is left alone, moments included):
//!
//! - `adamw` (the ViT recipe; PyTorch's `AdamW`, decoupled decay): `p *= 1 - lr * wd` for
//!   decayed tensors, then the Adam update with bias correction. Each tensor counts its own
//!   steps, so a tensor frozen for a while (the last layer in the first epoch) starts its bias
//!   correction when it first moves, as in PyTorch.
//! - `sgd` (the ResNet recipe; `torch.optim.SGD`, momentum 0.9, L2 decay):
//!   `d = g + wd * p` for decayed tensors, `buf = 0.9 * buf + d`, `p -= lr * buf`.
//! - `lars` (the official `utils.LARS`, eta 0.001, momentum 0.9): as SGD, with `d` scaled by
//!   the trust ratio `eta * |p| / |d|` (1 where either norm is 0); 1-D tensors get neither
//!   the decay nor the trust ratio.
//!
//! The decay groups are the official `get_params_groups`: biases and 1-D tensors undecayed.

use std::collections::BTreeMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};
use serde::{Deserialize, Serialize};

use crate::parallel::{Collective, ParallelError, mean_all};
use crate::params::Path;

pub const BETA1: f64 = 0.9;
pub const BETA2: f64 = 0.999;
pub const EPS: f64 = 1e-8;
/// SGD's and LARS's momentum, as main_dino.py builds them
pub const MOMENTUM: f64 = 0.9;
pub const LARS_ETA: f64 = 0.001;

/// `optim.optimizer`: the update rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rule {
    #[default]
    AdamW,
    Sgd,
    Lars,
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Rule::AdamW => "adamw",
            Rule::Sgd => "sgd",
            Rule::Lars => "lars",
        })
    }
}

/// One tensor's state, flattened, and its step count: AdamW's first and second moments, or
/// SGD's and LARS's momentum buffer as `m` (and no `v`).
#[derive(Clone, Debug)]
pub struct Moments<B: Backend> {
    pub m: Tensor<B, 1>,
    pub v: Option<Tensor<B, 1>>,
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

pub struct Optimizer<B: Backend> {
    pub rule: Rule,
    pub state: BTreeMap<String, Moments<B>>,
}

impl<B: Backend> Optimizer<B> {
    pub fn new(rule: Rule) -> Self {
        Self {
            rule,
            state: BTreeMap::new(),
        }
    }

    /// Updates the parameters of `module` that have a gradient in `grads`.
    pub fn update<A, M>(&mut self, module: M, grads: Gradients<B>, lr: f64, weight_decay: f64) -> M
    where
        A: AutodiffBackend<InnerBackend = B>,
        M: Module<A>,
    {
        let mut mapper = Updater::<A> {
            path: Path::default(),
            grads: grads.by_name,
            optimizer: self,
            lr,
            weight_decay,
        };
        module.map(&mut mapper)
    }
}

/// LARS's `eta * |p| / |d|`, 1 where either norm is 0; [1], on the device.
fn trust_ratio<B: Backend>(p: &Tensor<B, 1>, d: &Tensor<B, 1>) -> Tensor<B, 1> {
    let p_norm = p.clone().square().sum().sqrt();
    let d_norm = d.clone().square().sum().sqrt();
    let degenerate = p_norm
        .clone()
        .lower_equal_elem(0.0)
        .bool_or(d_norm.clone().lower_equal_elem(0.0));
    (p_norm * LARS_ETA / d_norm).mask_fill(degenerate, 1.0)
}

struct Updater<'a, A: AutodiffBackend> {
    path: Path,
    grads: BTreeMap<String, Tensor<A::InnerBackend, 1>>,
    optimizer: &'a mut Optimizer<A::InnerBackend>,
    lr: f64,
    weight_decay: f64,
}

impl<A: AutodiffBackend> Updater<'_, A> {
    /// One tensor's update: its new value and state. `p` and `g` are flattened; `ndim` is
    /// the parameter's.
    fn step(
        &self,
        name: &str,
        ndim: usize,
        p: Tensor<A::InnerBackend, 1>,
        g: Tensor<A::InnerBackend, 1>,
        state: Option<Moments<A::InnerBackend>>,
    ) -> (Tensor<A::InnerBackend, 1>, Moments<A::InnerBackend>) {
        let lr = self.lr;
        let wd = if decays(name, ndim) {
            self.weight_decay
        } else {
            0.0
        };
        let step = state.as_ref().map_or(0, |s| s.step) + 1;
        match self.optimizer.rule {
            Rule::AdamW => {
                let (m, v) = match state {
                    Some(Moments { m, v: Some(v), .. }) => (m, v),
                    _ => (g.zeros_like(), g.zeros_like()),
                };
                let p = if wd != 0.0 { p * (1.0 - lr * wd) } else { p };
                let m = m * BETA1 + g.clone() * (1.0 - BETA1);
                let v = v * BETA2 + g.square() * (1.0 - BETA2);
                let bias1 = 1.0 - BETA1.powi(step as i32);
                let bias2 = 1.0 - BETA2.powi(step as i32);
                let denom = (v.clone().sqrt() / bias2.sqrt()) + EPS;
                let p = p - (m.clone() / denom) * (lr / bias1);
                (
                    p,
                    Moments {
                        m,
                        v: Some(v),
                        step,
                    },
                )
            }
            Rule::Sgd | Rule::Lars => {
                let mut d = if wd != 0.0 { g + p.clone() * wd } else { g };
                if self.optimizer.rule == Rule::Lars && ndim != 1 {
                    d = d.clone() * trust_ratio(&p, &d);
                }
                let buf = match state {
                    Some(s) => s.m * MOMENTUM + d,
                    None => d,
                };
                let p = p - buf.clone() * lr;
                let moments = Moments {
                    m: buf,
                    v: None,
                    step,
                };
                (p, moments)
            }
        }
    }
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
        let state = self.optimizer.state.remove(&name);
        let (p, moments) = self.step(&name, D, p, g, state);
        self.optimizer.state.insert(name, moments);
        let value = Tensor::from_inner(p.reshape(shape)).require_grad();
        Param::from_mapped_value(id, value, mapper)
    }
}
