//! The building blocks shared by the backbone and the head, in PyTorch's parameter layout
//! (a Linear weight is `[d_out, d_in]`), so state dicts map tensor for tensor.

use burn::module::{Module, Param};

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use dino_pipeline::rng;
use rand_xoshiro::Xoshiro256PlusPlus;

use crate::device::InferenceBackend;
use crate::fused;
use crate::precision::{in_dtype, in_f32};

/// Parameters are drawn on the host from our own seeded stream, not the backend's: a model
/// is then identical on every device, and the recipe's init is written once.
pub struct Init {
    rng: Xoshiro256PlusPlus,
}

impl Init {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: rng::rng(seed, 0x1A17),
        }
    }

    fn standard_normal(&mut self) -> f64 {
        // Box-Muller; 1 - u keeps the logarithm's argument in (0, 1]
        let u1 = 1.0 - rng::unit(&mut self.rng);
        let u2 = rng::unit(&mut self.rng);
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// DINO's `trunc_normal_(std, a=-2, b=2)`: the cut is absolute, so at std 0.02 it only
    /// matters in principle; rejection keeps it exact.
    pub fn trunc_normal(&mut self, len: usize, std: f64) -> Vec<f32> {
        (0..len)
            .map(|_| {
                loop {
                    let v = self.standard_normal() * std;
                    if (-2.0..=2.0).contains(&v) {
                        break v as f32;
                    }
                }
            })
            .collect()
    }

    /// N(0, std²), untruncated (torchvision's kaiming_normal_ for convs).
    pub fn normal(&mut self, len: usize, std: f64) -> Vec<f32> {
        (0..len)
            .map(|_| (self.standard_normal() * std) as f32)
            .collect()
    }

    /// U(-bound, bound): PyTorch's default Linear/Conv init has bound 1/sqrt(fan_in) for both
    /// weight (kaiming_uniform with a=sqrt(5)) and bias.
    pub fn uniform(&mut self, len: usize, bound: f64) -> Vec<f32> {
        (0..len)
            .map(|_| ((2.0 * rng::unit(&mut self.rng) - 1.0) * bound) as f32)
            .collect()
    }
}

pub fn param<B: Backend, const D: usize>(
    values: Vec<f32>,
    shape: [usize; D],
    device: &B::Device,
) -> Param<Tensor<B, D>> {
    Param::from_tensor(Tensor::from_data(TensorData::new(values, shape), device))
}

pub fn constant<B: Backend, const D: usize>(
    value: f32,
    shape: [usize; D],
    device: &B::Device,
) -> Param<Tensor<B, D>> {
    param(vec![value; shape.iter().product()], shape, device)
}

#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    /// [d_out, d_in]
    pub weight: Param<Tensor<B, 2>>,
    pub bias: Option<Param<Tensor<B, 1>>>,
}

impl<B: InferenceBackend> Linear<B> {
    /// The recipe's init for every Linear of the ViT and the head MLP: truncated normal
    /// (std 0.02) weights, zero bias.
    pub fn trunc_normal(init: &mut Init, d_in: usize, d_out: usize, device: &B::Device) -> Self {
        Self {
            weight: param(init.trunc_normal(d_out * d_in, 0.02), [d_out, d_in], device),
            bias: Some(constant(0.0, [d_out], device)),
        }
    }

    /// [..., d_in] -> [..., d_out]
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let dtype = x.dtype();
        fused::linear(
            x,
            in_dtype(self.weight.val(), dtype),
            self.bias.as_ref().map(|b| in_dtype(b.val(), dtype)),
        )
    }
}

#[derive(Module, Debug)]
pub struct LayerNorm<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
    pub bias: Param<Tensor<B, 1>>,
    eps: f64,
}

impl<B: InferenceBackend> LayerNorm<B> {
    pub fn new(dim: usize, eps: f64, device: &B::Device) -> Self {
        Self {
            weight: constant(1.0, [dim], device),
            bias: constant(0.0, [dim], device),
            eps,
        }
    }

    /// Normalizes over the last dimension (biased variance, as PyTorch), in f32.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        in_f32(x, |x| {
            fused::layer_norm(x, self.weight.val(), self.bias.val(), self.eps)
        })
    }
}

/// fc1 -> exact GELU -> fc2.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    pub fc1: Linear<B>,
    pub fc2: Linear<B>,
}

impl<B: InferenceBackend> Mlp<B> {
    pub fn new(init: &mut Init, dim: usize, hidden: usize, device: &B::Device) -> Self {
        Self {
            fc1: Linear::trunc_normal(init, dim, hidden, device),
            fc2: Linear::trunc_normal(init, hidden, dim, device),
        }
    }

    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        self.fc2.forward(fused::gelu(self.fc1.forward(x)))
    }
}
