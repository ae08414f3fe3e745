//! The ViT backbone of DINO (DeiT-style, pre-norm), named and shaped after timm's
//! `VisionTransformer`: `cls_token`, `pos_embed`, `patch_embed.proj`, `blocks.N.*`, `norm`.

use burn::module::{Module, Param};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::tensor::backend::Backend;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Tensor, TensorData};

use dino_pipeline::rng;
use rand_xoshiro::Xoshiro256PlusPlus;

use super::backbone::PassRows;
use super::batch_norm::Norm;
use super::layers::{Init, LayerNorm, Linear, Mlp, param};
use super::pos_embed::resize_matrix;
use super::{Backbone, VitConfig};
use crate::config::ModelConfig;
use crate::device::InferenceBackend;
use crate::fused;
use crate::precision::{in_dtype, in_f32};

const LN_EPS: f64 = 1e-6;

/// Non-overlapping patches to tokens: a Conv2d with stride = kernel = patch size.
#[derive(Module, Debug)]
pub struct PatchEmbed<B: Backend> {
    pub proj: Conv2d<B>,
}

impl<B: InferenceBackend> PatchEmbed<B> {
    fn new(init: &mut Init, patch: usize, dim: usize, device: &B::Device) -> Self {
        let mut proj = Conv2dConfig::new([3, dim], [patch, patch])
            .with_stride([patch, patch])
            .with_padding(PaddingConfig2d::Valid)
            .init(device);
        // PyTorch's default Conv2d init, which the recipe keeps for the patch embedding
        let bound = 1.0 / ((3 * patch * patch) as f64).sqrt();
        proj.weight = param(
            init.uniform(dim * 3 * patch * patch, bound),
            [dim, 3, patch, patch],
            device,
        );
        proj.bias = Some(param(init.uniform(dim, bound), [dim], device));
        Self { proj }
    }

    /// [B, 3, H, W] -> [B, H/p * W/p, D], patches in row-major order.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 3> {
        let dtype = x.dtype();
        let p = &self.proj;
        let x = conv2d(
            x,
            in_dtype(p.weight.val(), dtype),
            p.bias.as_ref().map(|b| in_dtype(b.val(), dtype)),
            ConvOptions::new(p.stride, [0, 0], p.dilation, p.groups),
        ); // [B, D, H/p, W/p]
        x.flatten::<3>(2, 3).swap_dims(1, 2)
    }
}

#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    pub qkv: Linear<B>,
    pub proj: Linear<B>,
    num_heads: usize,
}

impl<B: InferenceBackend> Attention<B> {
    fn new(init: &mut Init, dim: usize, num_heads: usize, device: &B::Device) -> Self {
        Self {
            qkv: Linear::trunc_normal(init, dim, 3 * dim, device),
            proj: Linear::trunc_normal(init, dim, dim, device),
            num_heads,
        }
    }

    /// The attention probabilities softmax(q k^T / sqrt(hd)): [B, N, D] -> [B, H, N, N].
    fn weights(&self, x: Tensor<B, 3>) -> Tensor<B, 4> {
        let [b, n, d] = x.dims();
        let (h, hd) = (self.num_heads, d / self.num_heads);
        // qkv's output features are (q|k|v) x heads x head_dim
        let qkv = self.qkv.forward(x).reshape([b, n, 3, h, hd]);
        let [q, k] = [0, 1].map(|i| {
            qkv.clone()
                .narrow(2, i, 1)
                .reshape([b, n, h, hd])
                .swap_dims(1, 2)
        }); // [B, H, N, hd]
        let scores = q.matmul(k.swap_dims(2, 3)); // [B, H, N, N]
        in_f32(scores, |s| fused::scaled_softmax(s, (hd as f64).powf(-0.5)))
    }

    /// [B, N, D] -> [B, N, D]
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let qkv = self.qkv.forward(x); // [B, N, 3D]
        let out = fused::attention(qkv, self.num_heads); // [B, N, D], heads side by side
        self.proj.forward(out)
    }
}

/// Per-sample stochastic-depth factors of one block, `[B, 1, 1]`: 0 for a dropped residual
/// branch, 1/keep otherwise. Drawn from the trainer's seeded stream for the pass, so that a
/// resumed run draws the same ones.
#[derive(Clone, Debug)]
pub struct BlockDrop<B: Backend> {
    pub attn: Tensor<B, 3>,
    pub mlp: Tensor<B, 3>,
}

#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    pub norm1: LayerNorm<B>,
    pub attn: Attention<B>,
    pub norm2: LayerNorm<B>,
    pub mlp: Mlp<B>,
}

impl<B: InferenceBackend> Block<B> {
    fn new(init: &mut Init, cfg: &VitConfig, device: &B::Device) -> Self {
        let d = cfg.embed_dim;
        Self {
            norm1: LayerNorm::new(d, LN_EPS, device),
            attn: Attention::new(init, d, cfg.num_heads, device),
            norm2: LayerNorm::new(d, LN_EPS, device),
            mlp: Mlp::new(init, d, d * cfg.mlp_ratio, device),
        }
    }

    pub fn forward(&self, x: Tensor<B, 3>, drop: Option<&BlockDrop<B>>) -> Tensor<B, 3> {
        let a = self.attn.forward(self.norm1.forward(x.clone()));
        let a = match drop {
            Some(drop) => a * in_dtype(drop.attn.clone(), x.dtype()),
            None => a,
        };
        let x = x + a;
        let m = self.mlp.forward(self.norm2.forward(x.clone()));
        let m = match drop {
            Some(drop) => m * in_dtype(drop.mlp.clone(), x.dtype()),
            None => m,
        };
        x + m
    }
}

#[derive(Module, Debug)]
pub struct VisionTransformer<B: Backend> {
    pub patch_embed: PatchEmbed<B>,
    /// [1, 1, D]
    pub cls_token: Param<Tensor<B, 3>>,
    /// [1, 1 + n0*n0, D], CLS position first, then the patches row-major
    pub pos_embed: Param<Tensor<B, 3>>,
    pub blocks: Vec<Block<B>>,
    pub norm: LayerNorm<B>,
    patch_size: usize,
}

impl<B: InferenceBackend> VisionTransformer<B> {
    pub fn new(cfg: &VitConfig, init: &mut Init, device: &B::Device) -> Self {
        let d = cfg.embed_dim;
        let n0 = cfg.img_size / cfg.patch_size;
        Self {
            patch_embed: PatchEmbed::new(init, cfg.patch_size, d, device),
            cls_token: param(init.trunc_normal(d, 0.02), [1, 1, d], device),
            pos_embed: param(
                init.trunc_normal((1 + n0 * n0) * d, 0.02),
                [1, 1 + n0 * n0, d],
                device,
            ),
            blocks: (0..cfg.depth)
                .map(|_| Block::new(init, cfg, device))
                .collect(),
            norm: LayerNorm::new(d, LN_EPS, device),
            patch_size: cfg.patch_size,
        }
    }

    /// The positional embedding for an `h x w` patch grid: [1, 1 + h*w, D].
    fn pos_embed_for(&self, h: usize, w: usize) -> Tensor<B, 3> {
        let pos = self.pos_embed.val();
        let [_, n, d] = pos.dims();
        let n0 = ((n - 1) as f64).sqrt().round() as usize;
        if h == n0 && w == n0 {
            return pos;
        }
        let cls = pos.clone().narrow(1, 0, 1);
        let grid = pos.narrow(1, 1, n0 * n0).reshape([n0 * n0, d]);
        let resize = Tensor::<B, 2>::from_data(
            TensorData::new(resize_matrix(n0, h, w), [h * w, n0 * n0]),
            &grid.device(),
        );
        let patches = resize.matmul(grid).unsqueeze::<3>(); // [1, h*w, D]
        Tensor::cat(vec![cls, patches], 1)
    }

    /// [B, 3, H, W] -> [B, 1 + n, D] tokens before the blocks.
    fn prepare_tokens(&self, x: Tensor<B, 4>) -> Tensor<B, 3> {
        let [b, _, h, w] = x.dims();
        let x = self.patch_embed.forward(x); // [B, n, D]
        let dtype = x.dtype();
        let cls = in_dtype(self.cls_token.val(), dtype).repeat_dim(0, b);
        let x = Tensor::cat(vec![cls, x], 1); // [B, 1 + n, D]
        x + in_dtype(
            self.pos_embed_for(h / self.patch_size, w / self.patch_size),
            dtype,
        )
    }

    /// All output tokens after the final norm: [B, 3, H, W] -> [B, 1 + n, D]. `drop` holds
    /// one entry per block (the student in training) or is `None`.
    pub fn forward_tokens(&self, x: Tensor<B, 4>, drop: Option<&[BlockDrop<B>]>) -> Tensor<B, 3> {
        let mut x = self.prepare_tokens(x);
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(x, drop.map(|d| &d[i]));
        }
        self.norm.forward(x)
    }

    /// The last block's attention probabilities, [B, heads, 1 + n, 1 + n].
    pub fn last_attention(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut x = self.prepare_tokens(x);
        let (last, rest) = self
            .blocks
            .split_last()
            .expect("a ViT has at least one block");
        for block in rest {
            x = block.forward(x, None);
        }
        last.attn.weights(last.norm1.forward(x))
    }
}

/// The CLS token of `tokens` [B, 1 + n, D] -> [B, D].
fn cls<B: Backend>(tokens: Tensor<B, 3>) -> Tensor<B, 2> {
    let [b, _, d] = tokens.dims();
    tokens.narrow(1, 0, 1).reshape([b, d])
}

impl<B: InferenceBackend> Backbone<B> for VisionTransformer<B> {
    /// one entry per block
    type DropPlan = Vec<BlockDrop<B>>;

    const EXPORT_LAYOUT: &'static str = "timm's VisionTransformer";

    fn from_config(cfg: &ModelConfig, init: &mut Init, device: &B::Device) -> Self {
        Self::new(&cfg.vit(), init, device)
    }

    fn feature_dim(&self) -> usize {
        self.cls_token.dims()[2]
    }

    /// Per block `i`, the drop rate rises linearly from 0 to `rate`
    /// (`torch.linspace(0, rate, depth)`), and each sample keeps its residual branch with
    /// probability 1 - rate_i, scaled by 1 / (1 - rate_i); attention then MLP, block by block.
    fn drop_plan(
        &self,
        rate: f64,
        rows: PassRows,
        rng: &mut Xoshiro256PlusPlus,
        device: &B::Device,
    ) -> Option<Vec<BlockDrop<B>>> {
        if rate == 0.0 {
            return None;
        }
        let depth = self.blocks.len();
        let mut draw = |block: usize| {
            let p = if depth > 1 {
                rate * block as f64 / (depth - 1) as f64
            } else {
                0.0
            };
            let keep = 1.0 - p;
            let values: Vec<f32> = (0..rows.total())
                .map(|_| {
                    if rng::unit(rng) < keep {
                        (1.0 / keep) as f32
                    } else {
                        0.0
                    }
                })
                .collect::<Vec<_>>();
            let values = rows.select(&values);
            Tensor::<B, 3>::from_data(TensorData::new(values, [rows.local(), 1, 1]), device)
        };
        Some(
            (0..depth)
                .map(|block| BlockDrop {
                    attn: draw(block),
                    mlp: draw(block),
                })
                .collect(),
        )
    }

    /// The CLS feature after the final norm: [B, 3, H, W] -> [B, D].
    fn forward(
        &self,
        x: Tensor<B, 4>,
        drop: Option<&Vec<BlockDrop<B>>>,
        _norm: &mut Norm<B>,
    ) -> Tensor<B, 2> {
        cls(self.forward_tokens(x, drop.map(Vec::as_slice)))
    }

    /// The CLS token after each of the last `n` blocks, through the final norm.
    fn intermediate_features(&self, x: Tensor<B, 4>, n: usize) -> Vec<Tensor<B, 2>> {
        let first = self.blocks.len().saturating_sub(n);
        let mut x = self.prepare_tokens(x);
        let mut out = Vec::with_capacity(n);
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(x, None);
            if i >= first {
                out.push(cls(self.norm.forward(x.clone())));
            }
        }
        out
    }
}
