//! The DINO projection head: a 3-layer MLP to a bottleneck, L2 normalization, and a
//! weight-normalized linear layer to K prototypes (`DINOHead` of the official code).

use burn::module::{Module, Param};
use burn::tensor::Tensor;

use burn::tensor::backend::Backend;

use crate::device::InferenceBackend;
use crate::fused;

use super::HeadConfig;
use super::batch_norm::{BatchNorm, Norm};
use super::layers::{Init, Linear, constant, param};
use crate::precision::{in_dtype, in_f32};

/// `torch.nn.utils.weight_norm(Linear(bottleneck, K, bias=False))`: weight = g * v / ||v||
/// per output row.
#[derive(Module, Debug)]
pub struct WeightNormLinear<B: Backend> {
    /// [K, 1]; frozen at 1 when `norm_last_layer` (the logits are then cosines)
    pub weight_g: Param<Tensor<B, 2>>,
    /// [K, bottleneck]
    pub weight_v: Param<Tensor<B, 2>>,
}

impl<B: InferenceBackend> WeightNormLinear<B> {
    /// [M, bottleneck] -> [M, K]; the weight normalized in f32, the product in `x`'s dtype
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let v = self.weight_v.val();
        let norm = v.clone().square().sum_dim(1).sqrt(); // [K, 1]
        let weight = v * (self.weight_g.val() / norm);
        let dtype = x.dtype();
        x.matmul(in_dtype(weight, dtype).transpose())
    }
}

#[derive(Module, Debug)]
pub struct DinoHead<B: Backend> {
    /// Linear layers 0, 1, 2 (indices 0, 2, 4 of the official `nn.Sequential`, GELUs between;
    /// 0, 3, 6 with batch norms)
    pub mlp: Vec<Linear<B>>,
    /// with `use_bn`, the batch norm after each hidden layer (official indices 1 and 4);
    /// empty otherwise
    pub norms: Vec<BatchNorm<B>>,
    pub last_layer: WeightNormLinear<B>,
}

impl<B: InferenceBackend> DinoHead<B> {
    pub fn new(cfg: &HeadConfig, in_dim: usize, init: &mut Init, device: &B::Device) -> Self {
        let dims = [in_dim, cfg.hidden_dim, cfg.hidden_dim, cfg.bottleneck_dim];
        let mlp = dims
            .windows(2)
            .map(|w| Linear::trunc_normal(init, w[0], w[1], device))
            .collect();
        let norms = if cfg.use_bn {
            (0..2)
                .map(|_| BatchNorm::new(cfg.hidden_dim, device))
                .collect()
        } else {
            Vec::new()
        };
        // the last layer keeps PyTorch's default Linear init; weight_norm then sets g = ||v||,
        // which the official head overwrites with 1
        let (k, bottleneck) = (cfg.out_dim, cfg.bottleneck_dim);
        let bound = 1.0 / (bottleneck as f64).sqrt();
        let weight_g = constant(1.0, [k, 1], device);
        let weight_g = if cfg.norm_last_layer {
            weight_g.set_require_grad(false)
        } else {
            weight_g
        };
        Self {
            mlp,
            norms,
            last_layer: WeightNormLinear {
                weight_g,
                weight_v: param(init.uniform(k * bottleneck, bound), [k, bottleneck], device),
            },
        }
    }

    /// [M, D] -> [M, K]
    pub fn forward(&self, x: Tensor<B, 2>, norm: &mut Norm<B>) -> Tensor<B, 2> {
        let last = self.mlp.len() - 1;
        let mut x = x;
        for (i, layer) in self.mlp.iter().enumerate() {
            x = layer.forward(x);
            if i < last {
                if let Some(bn) = self.norms.get(i) {
                    x = bn.forward(x, norm);
                }
                x = fused::gelu(x);
            }
        }
        self.last_layer.forward(l2_normalize(x))
    }
}

/// `F.normalize(x, dim=-1, eps=1e-12)`: rows divided by max(norm, 1e-12), in f32.
pub fn l2_normalize<B: InferenceBackend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    in_f32(x, |x| {
        let norm = x.clone().square().sum_dim(1).sqrt().clamp_min(1e-12);
        x / norm
    })
}
