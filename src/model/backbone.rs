//! What the DINO wrapper, the trainer and the evaluations need of a backbone. A new backbone
//! is a new module implementing [`Backbone`], a variant of [`BackboneKind`], and one line in
//! each dispatch of `device.rs`.

use burn::module::{Module, ModuleDisplay};
use burn::tensor::Tensor;
use rand_xoshiro::Xoshiro256PlusPlus;

use super::batch_norm::Norm;
use super::layers::Init;
use crate::checkpoint::HostTensors;
use crate::config::ModelConfig;
use crate::device::InferenceBackend;
use crate::params;

/// The backbone families a config's `model.arch` can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackboneKind {
    Vit,
    ResNet,
}

impl BackboneKind {
    /// The family of a (validated) arch name.
    pub fn of(arch: &str) -> Option<Self> {
        if arch == "custom" || super::ARCHS.iter().any(|(name, ..)| *name == arch) {
            Some(Self::Vit)
        } else if arch == "resnet" || super::RESNETS.iter().any(|(name, ..)| *name == arch) {
            Some(Self::ResNet)
        } else {
            None
        }
    }
}

/// The rows of one pass (the globals, or the locals) that one device computes. A pass holds
/// `crops` crops of each sample, crop-major; the device holds `batch` consecutive samples of
/// the global batch of `global_batch`, from sample `first` on. Random draws are made per row
/// of the global pass, in order, and each device keeps its own: the draws are those of one
/// device training on the whole batch, whatever the device count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PassRows {
    pub crops: usize,
    pub global_batch: usize,
    pub first: usize,
    pub batch: usize,
}

impl PassRows {
    /// The rows of the global pass.
    pub fn total(&self) -> usize {
        self.crops * self.global_batch
    }

    /// The rows this device computes.
    pub fn local(&self) -> usize {
        self.crops * self.batch
    }

    /// This device's values of `all`, one per row of the global pass.
    pub fn select<T: Copy>(&self, all: &[T]) -> Vec<T> {
        assert_eq!(
            all.len(),
            self.total(),
            "one value per row of the global pass"
        );
        (0..self.crops)
            .flat_map(|c| {
                let start = c * self.global_batch + self.first;
                all[start..start + self.batch].iter().copied()
            })
            .collect()
    }
}

/// A network from crops to one feature vector each. Parameter paths are the backbone's own
/// (no wrapper prefix); `Dino` puts them under `backbone.`.
pub trait Backbone<B: InferenceBackend>: Module<B> + ModuleDisplay {
    /// The random part of one training pass (stochastic depth), drawn by [`Self::drop_plan`]
    /// and given back to [`Self::forward`].
    type DropPlan: Clone + Send;

    /// What an exported file loads into, for messages and `--help`.
    const EXPORT_LAYOUT: &'static str;

    /// A freshly initialized backbone of the config's shape, drawing from `init`.
    fn from_config(cfg: &ModelConfig, init: &mut Init, device: &B::Device) -> Self;

    /// The width of the features [`Self::forward`] returns.
    fn feature_dim(&self) -> usize;

    /// Stochastic depth for this device's `rows` of one pass at `rate`, drawn from `rng`
    /// for every row of the global batch (see [`PassRows`]); `None` when nothing is dropped
    /// (`rate` 0).
    fn drop_plan(
        &self,
        rate: f64,
        rows: PassRows,
        rng: &mut Xoshiro256PlusPlus,
        device: &B::Device,
    ) -> Option<Self::DropPlan>;

    /// [n, 3, H, W] -> [n, feature_dim]; batch norms (if any) normalize as `norm` says.
    fn forward(
        &self,
        x: Tensor<B, 4>,
        drop: Option<&Self::DropPlan>,
        norm: &mut Norm<B>,
    ) -> Tensor<B, 2>;

    /// The features of the last `n` stages, oldest first, each as [`Self::forward`] would
    /// return it had the network ended there (the official `get_intermediate_layers`, which
    /// linear probes concatenate): [B, 3, H, W] -> up to n x [B, feature_dim]. Evaluation:
    /// running statistics.
    fn intermediate_features(&self, x: Tensor<B, 4>, n: usize) -> Vec<Tensor<B, 2>>;

    /// The tensors of an export file, named as [`Self::EXPORT_LAYOUT`] names them. Parameter
    /// paths follow that layout already; a backbone with buffers adds them here.
    fn export(&self) -> HostTensors {
        params::to_host(&params::collect(self))
    }
}
