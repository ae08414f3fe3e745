//! The DINO networks: backbones behind one trait (the ViT in timm's layout, the ResNet in
//! torchvision's), the DINO head, and the multi-crop wrapper that runs each crop resolution
//! as one backbone pass.

mod backbone;
mod batch_norm;
mod head;
mod layers;
mod pos_embed;
mod resnet;
mod vit;

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use crate::config::ModelConfig;
use crate::device::InferenceBackend;

pub use backbone::{Backbone, BackboneKind, PassRows};
pub use batch_norm::{BatchNorm, BatchStats, Norm, is_buffer, is_counter};
pub use head::{DinoHead, WeightNormLinear, l2_normalize};
pub use layers::{Init, LayerNorm, Linear, Mlp};
pub use resnet::{Bottleneck, Conv, ResNet};
pub use vit::{Attention, Block, BlockDrop, PatchEmbed, VisionTransformer};

/// A ViT's shape. `img_size` fixes the learned positional grid (`img_size / patch_size`
/// per side); other crop sizes interpolate it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VitConfig {
    pub embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    pub mlp_ratio: usize,
    pub patch_size: usize,
    pub img_size: usize,
}

/// The named architectures of the recipe (`dino-recipe.md` §1.3).
pub const ARCHS: [(&str, usize, usize, usize); 3] = [
    ("vit_tiny", 192, 12, 3),
    ("vit_small", 384, 12, 6),
    ("vit_base", 768, 12, 12),
];

impl VitConfig {
    pub fn named(arch: &str, patch_size: usize, img_size: usize) -> Option<Self> {
        ARCHS
            .iter()
            .find(|(name, ..)| *name == arch)
            .map(|&(_, embed_dim, depth, num_heads)| Self {
                embed_dim,
                depth,
                num_heads,
                mlp_ratio: 4,
                patch_size,
                img_size,
            })
    }
}

/// A ResNet's shape: bottleneck blocks per stage, and the stem's width (64 in torchvision;
/// stage i has inner width `width << i` and output `4 * width << i`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResNetConfig {
    pub layers: [usize; 4],
    pub width: usize,
}

/// The named ResNets (torchvision's, bottleneck blocks): name, blocks per stage.
pub const RESNETS: [(&str, [usize; 4]); 3] = [
    ("resnet50", [3, 4, 6, 3]),
    ("resnet101", [3, 4, 23, 3]),
    ("resnet152", [3, 8, 36, 3]),
];

impl ResNetConfig {
    pub fn named(arch: &str) -> Option<Self> {
        RESNETS
            .iter()
            .find(|(name, _)| *name == arch)
            .map(|&(_, layers)| Self { layers, width: 64 })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeadConfig {
    pub out_dim: usize,
    pub hidden_dim: usize,
    pub bottleneck_dim: usize,
    pub norm_last_layer: bool,
    /// batch norm after each hidden layer of the MLP (the official `use_bn_in_head`)
    pub use_bn: bool,
}

/// Crops of one resolution, [n, 3, H, W], with the backbone's stochastic-depth plan for
/// their pass (the student's; `None` for the teacher).
pub type CropGroup<B, M> = (Tensor<B, 4>, Option<<M as Backbone<B>>::DropPlan>);

/// Backbone + head, as the official `MultiCropWrapper`. Generic over the backbone (not an
/// enum of them): Burn names an enum's parameters by variant, which would change every
/// checkpoint and export key.
#[derive(Module, Debug)]
pub struct Dino<B: Backend, M> {
    pub backbone: M,
    pub head: DinoHead<B>,
}

impl<B: InferenceBackend, M: Backbone<B>> Dino<B, M> {
    /// The backbone is drawn first from the seed, then the head: the same backbone as a
    /// lone `M::from_config` from that seed (what the `init` baseline of `knn` rebuilds).
    pub fn new(cfg: &ModelConfig, seed: u64, device: &B::Device) -> Self {
        let mut init = Init::new(seed);
        let backbone = M::from_config(cfg, &mut init, device);
        let head = DinoHead::new(&cfg.head(), backbone.feature_dim(), &mut init, device);
        Self { backbone, head }
    }

    /// Each group holds crops of one resolution ([n_i, 3, H_i, W_i], one backbone pass each,
    /// with its own stochastic-depth plan and its own batch statistics); the features are
    /// concatenated in order and the head runs once on all: -> [sum n_i, K].
    pub fn forward(&self, groups: Vec<CropGroup<B, M>>, norm: &mut Norm<B>) -> Tensor<B, 2> {
        let features = groups
            .into_iter()
            .map(|(x, drop)| self.backbone.forward(x, drop.as_ref(), norm))
            .collect();
        self.head.forward(Tensor::cat(features, 0), norm)
    }
}
