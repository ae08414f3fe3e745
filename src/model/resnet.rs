//! The ResNet backbone of the DINO paper's convnet comparison: torchvision's `resnet50` with
//! `fc` replaced by identity (the average-pooled features), named and shaped as torchvision
//! names it (`conv1`, `bn1`, `layer1.0.conv1`, ..., `layer4.2.bn3`, `downsample.0/1`), so a
//! state dict maps tensor for tensor. Bottleneck blocks only (ResNet-50 and deeper); a
//! smaller `width` and fewer blocks give the CPU test configs the same code.

use burn::module::{Module, Param};
use burn::tensor::Tensor;
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use burn::tensor::module::{conv2d, max_pool2d};
use burn::tensor::ops::ConvOptions;
use rand_xoshiro::Xoshiro256PlusPlus;

use super::backbone::PassRows;
use super::batch_norm::{BatchNorm, Norm, is_counter};
use super::layers::{Init, param};
use super::{Backbone, ResNetConfig};
use crate::checkpoint::HostTensors;
use crate::config::ModelConfig;
use crate::device::InferenceBackend;
use crate::params;
use crate::precision::in_dtype;

/// A bottleneck's output has this many times its inner width (torchvision's `expansion`).
const EXPANSION: usize = 4;

/// A convolution without bias (every conv of a ResNet is followed by a batch norm).
#[derive(Module, Debug)]
pub struct Conv<B: Backend> {
    /// [out, in, k, k]
    pub weight: Param<Tensor<B, 4>>,
    stride: usize,
    padding: usize,
}

impl<B: InferenceBackend> Conv<B> {
    /// torchvision's init: `kaiming_normal_(mode="fan_out", nonlinearity="relu")`.
    fn new(
        init: &mut Init,
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        device: &B::Device,
    ) -> Self {
        let std = (2.0 / (c_out * k * k) as f64).sqrt();
        Self {
            weight: param(
                init.normal(c_out * c_in * k * k, std),
                [c_out, c_in, k, k],
                device,
            ),
            stride,
            padding: k / 2,
        }
    }

    /// [N, C_in, H, W] -> [N, C_out, H', W'], in `x`'s dtype
    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let weight = in_dtype(self.weight.val(), x.dtype());
        let (s, p) = (self.stride, self.padding);
        conv2d(x, weight, None, ConvOptions::new([s, s], [p, p], [1, 1], 1))
    }
}

/// torchvision's `Bottleneck` (stride on the 3x3 conv, "ResNet v1.5").
#[derive(Module, Debug)]
pub struct Bottleneck<B: Backend> {
    pub conv1: Conv<B>,
    pub bn1: BatchNorm<B>,
    pub conv2: Conv<B>,
    pub bn2: BatchNorm<B>,
    pub conv3: Conv<B>,
    pub bn3: BatchNorm<B>,
    /// a 1x1 conv and a batch norm (`downsample.0`, `downsample.1`) where the shape changes
    pub downsample: Option<(Conv<B>, BatchNorm<B>)>,
}

impl<B: InferenceBackend> Bottleneck<B> {
    fn new(init: &mut Init, c_in: usize, planes: usize, stride: usize, device: &B::Device) -> Self {
        let c_out = planes * EXPANSION;
        Self {
            conv1: Conv::new(init, c_in, planes, 1, 1, device),
            bn1: BatchNorm::new(planes, device),
            conv2: Conv::new(init, planes, planes, 3, stride, device),
            bn2: BatchNorm::new(planes, device),
            conv3: Conv::new(init, planes, c_out, 1, 1, device),
            bn3: BatchNorm::new(c_out, device),
            downsample: (stride != 1 || c_in != c_out).then(|| {
                (
                    Conv::new(init, c_in, c_out, 1, stride, device),
                    BatchNorm::new(c_out, device),
                )
            }),
        }
    }

    /// [N, C_in, H, W] -> [N, 4 * planes, H / stride, W / stride]
    fn forward(&self, x: Tensor<B, 4>, norm: &mut Norm<B>) -> Tensor<B, 4> {
        let out = relu(self.bn1.forward(self.conv1.forward(x.clone()), norm));
        let out = relu(self.bn2.forward(self.conv2.forward(out), norm));
        let out = self.bn3.forward(self.conv3.forward(out), norm);
        let identity = match &self.downsample {
            Some((conv, bn)) => bn.forward(conv.forward(x), norm),
            None => x,
        };
        relu(out + identity)
    }
}

#[derive(Module, Debug)]
pub struct ResNet<B: Backend> {
    /// the 7x7 stride-2 stem
    pub conv1: Conv<B>,
    pub bn1: BatchNorm<B>,
    pub layer1: Vec<Bottleneck<B>>,
    pub layer2: Vec<Bottleneck<B>>,
    pub layer3: Vec<Bottleneck<B>>,
    pub layer4: Vec<Bottleneck<B>>,
}

impl<B: InferenceBackend> ResNet<B> {
    /// Drawn in torchvision's module order (stem, then each block's convs, downsample last).
    pub fn new(cfg: &ResNetConfig, init: &mut Init, device: &B::Device) -> Self {
        let w = cfg.width;
        let conv1 = Conv::new(init, 3, w, 7, 2, device);
        let mut c_in = w;
        let mut layer = |stage: usize, blocks: usize, init: &mut Init| {
            let planes = w << stage;
            (0..blocks)
                .map(|i| {
                    let stride = if stage > 0 && i == 0 { 2 } else { 1 };
                    let block = Bottleneck::new(init, c_in, planes, stride, device);
                    c_in = planes * EXPANSION;
                    block
                })
                .collect::<Vec<_>>()
        };
        let [n1, n2, n3, n4] = cfg.layers;
        let layer1 = layer(0, n1, init);
        let layer2 = layer(1, n2, init);
        let layer3 = layer(2, n3, init);
        let layer4 = layer(3, n4, init);
        Self {
            conv1,
            bn1: BatchNorm::new(w, device),
            layer1,
            layer2,
            layer3,
            layer4,
        }
    }

    fn stages(&self) -> [&[Bottleneck<B>]; 4] {
        [&self.layer1, &self.layer2, &self.layer3, &self.layer4]
    }
}

impl<B: InferenceBackend> Backbone<B> for ResNet<B> {
    /// a ResNet has no stochastic depth (the official `drop_path_rate` is for ViTs only)
    type DropPlan = ();

    const EXPORT_LAYOUT: &'static str = "torchvision's resnet50 (without fc)";

    fn from_config(cfg: &ModelConfig, init: &mut Init, device: &B::Device) -> Self {
        Self::new(&cfg.resnet(), init, device)
    }

    fn feature_dim(&self) -> usize {
        let last = self
            .layer4
            .last()
            .expect("a ResNet has blocks in every stage");
        last.bn3.weight.dims()[0]
    }

    fn drop_plan(
        &self,
        _rate: f64,
        _rows: PassRows,
        _rng: &mut Xoshiro256PlusPlus,
        _device: &B::Device,
    ) -> Option<()> {
        None
    }

    /// The average-pooled output of the last stage: [N, 3, H, W] -> [N, 4 * 8 * width].
    fn forward(&self, x: Tensor<B, 4>, _drop: Option<&()>, norm: &mut Norm<B>) -> Tensor<B, 2> {
        let x = relu(self.bn1.forward(self.conv1.forward(x), norm)); // [N, w, H/2, W/2]
        let mut x = max_pool2d(x, [3, 3], [2, 2], [1, 1], [1, 1], false); // [N, w, H/4, W/4]
        for block in self.stages().into_iter().flatten() {
            x = block.forward(x, norm);
        } // [N, 32 w, H/32, W/32]
        let [n, c, _, _] = x.dims();
        x.mean_dim(3).mean_dim(2).reshape([n, c])
    }

    /// torchvision's state dict: parameters and buffers, the counters 0-d as PyTorch's.
    fn export(&self) -> HostTensors {
        let mut tensors = params::to_host(&params::collect(self));
        for (name, (shape, _)) in tensors.iter_mut() {
            if is_counter(name) {
                shape.clear();
            }
        }
        tensors
    }

    /// The pooled feature alone, whatever `n`: the official linear evaluation of a convnet
    /// probes it, not a concatenation of stages (whose widths differ).
    fn intermediate_features(&self, x: Tensor<B, 4>, _n: usize) -> Vec<Tensor<B, 2>> {
        vec![self.forward(x, None, &mut Norm::Running)]
    }
}
