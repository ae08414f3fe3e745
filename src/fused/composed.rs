//! The fused ops written with Burn's own tensor ops: what the CUDA backend runs (so it
//! computes as the models did before the fused ops), and the reference the CPU kernels are
//! tested against. Tensors are taken as [rows, d] over their last dimension, and as
//! [N, C, S] over their channels for the batch norm.

use burn::tensor::activation::{
    gelu as burn_gelu, log_softmax as burn_log_softmax, softmax as burn_softmax,
};
use burn::tensor::backend::Backend;
use burn::tensor::module::linear as burn_linear;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Shape, Tensor, TensorMetadata, TensorPrimitive};

use super::{BatchNormOut, LayerNormOut};
use crate::precision::in_dtype;

/// `x` as [rows, last dim], and its shape to go back to.
fn rows<B: Backend>(x: FloatTensor<B>) -> (Tensor<B, 2>, Shape) {
    let shape = x.shape();
    let d = *shape.last().expect("a tensor has a dimension");
    let n = shape.num_elements() / d.max(1);
    let x = B::float_reshape(x, Shape::new([n, d]));
    (Tensor::from_primitive(TensorPrimitive::Float(x)), shape)
}

fn back<B: Backend, const D: usize>(x: Tensor<B, D>, shape: Shape) -> FloatTensor<B> {
    B::float_reshape(x.into_primitive().tensor(), shape)
}

fn vector<B: Backend>(x: FloatTensor<B>) -> Tensor<B, 1> {
    let n = x.shape().num_elements();
    Tensor::from_primitive(TensorPrimitive::Float(B::float_reshape(x, Shape::new([n]))))
}

pub fn gelu<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
    let (x, shape) = rows::<B>(x);
    back(burn_gelu(x), shape)
}

/// dy * (Φ(x) + x φ(x))
pub fn gelu_backward<B: Backend>(x: FloatTensor<B>, dy: FloatTensor<B>) -> FloatTensor<B> {
    let (x, shape) = rows::<B>(x);
    let (dy, _) = rows::<B>(dy);
    let cdf = ((x.clone() * std::f64::consts::FRAC_1_SQRT_2).erf() + 1.0) * 0.5;
    let pdf = (x.clone().square() * -0.5).exp()
        * (0.5 * std::f64::consts::FRAC_2_SQRT_PI * std::f64::consts::FRAC_1_SQRT_2);
    back(dy * (cdf + x * pdf), shape)
}

pub fn layer_norm<B: Backend>(
    x: FloatTensor<B>,
    w: FloatTensor<B>,
    b: FloatTensor<B>,
    eps: f64,
) -> LayerNormOut<B> {
    let (x, shape) = rows::<B>(x);
    let (var, mean) = x.clone().var_mean_bias(1);
    let std = (var + eps).sqrt();
    let y =
        (x - mean.clone()) / std.clone() * vector::<B>(w).unsqueeze() + vector::<B>(b).unsqueeze();
    let n = mean.dims()[0];
    LayerNormOut {
        y: back(y, shape),
        mean: mean.reshape([n]).into_primitive().tensor(),
        rstd: std.recip().reshape([n]).into_primitive().tensor(),
    }
}

/// (dx, dw, db) for the output gradient `dy`.
pub fn layer_norm_backward<B: Backend>(
    x: FloatTensor<B>,
    w: FloatTensor<B>,
    mean: FloatTensor<B>,
    rstd: FloatTensor<B>,
    dy: FloatTensor<B>,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let (x, shape) = rows::<B>(x);
    let (dy, _) = rows::<B>(dy);
    let d = x.dims()[1];
    let (mean, rstd) = (
        vector::<B>(mean).unsqueeze_dim(1),
        vector::<B>(rstd).unsqueeze_dim(1),
    );
    let xhat = (x - mean) * rstd.clone();
    let g = dy.clone() * vector::<B>(w).unsqueeze();
    let a = g.clone().mean_dim(1);
    let c = (g.clone() * xhat.clone()).mean_dim(1);
    let dx = (g - a - xhat.clone() * c) * rstd;
    let dw = (dy.clone() * xhat).sum_dim(0).reshape([d]);
    let db = dy.sum_dim(0).reshape([d]);
    (
        back(dx, shape),
        back(dw, Shape::new([d])),
        back(db, Shape::new([d])),
    )
}

/// softmax(scale * x); a scale of exactly 1 is not multiplied (the composed op of before)
pub fn softmax<B: Backend>(x: FloatTensor<B>, scale: f64) -> FloatTensor<B> {
    let (x, shape) = rows::<B>(x);
    let x = if scale == 1.0 { x } else { x * scale };
    back(burn_softmax(x, 1), shape)
}

/// scale * y (dy - Σ y dy) from the output `y`.
pub fn softmax_backward<B: Backend>(
    y: FloatTensor<B>,
    dy: FloatTensor<B>,
    scale: f64,
) -> FloatTensor<B> {
    let (y, shape) = rows::<B>(y);
    let (dy, _) = rows::<B>(dy);
    let dot = (y.clone() * dy.clone()).sum_dim(1);
    back(y * (dy - dot) * scale, shape)
}

/// log_softmax(scale * x); a scale of exactly 1 is not multiplied
pub fn log_softmax<B: Backend>(x: FloatTensor<B>, scale: f64) -> FloatTensor<B> {
    let (x, shape) = rows::<B>(x);
    let x = if scale == 1.0 { x } else { x * scale };
    back(burn_log_softmax(x, 1), shape)
}

/// scale * (dy - exp(y) Σ dy) from the output `y`.
pub fn log_softmax_backward<B: Backend>(
    y: FloatTensor<B>,
    dy: FloatTensor<B>,
    scale: f64,
) -> FloatTensor<B> {
    let (y, shape) = rows::<B>(y);
    let (dy, _) = rows::<B>(dy);
    let total = dy.clone().sum_dim(1);
    back((dy - y.exp() * total) * scale, shape)
}

/// `x` as [N, C, S] over its channels (dimension 1), and its shape to go back to.
fn channels<B: Backend>(x: FloatTensor<B>) -> (Tensor<B, 3>, Shape) {
    let shape = x.shape();
    let (n, c) = (shape[0], shape[1]);
    let s = shape.num_elements() / (n * c).max(1);
    let x = B::float_reshape(x, Shape::new([n, c, s]));
    (Tensor::from_primitive(TensorPrimitive::Float(x)), shape)
}

/// [C] -> [1, C, 1]
fn per_channel<B: Backend>(t: FloatTensor<B>) -> Tensor<B, 3> {
    vector::<B>(t).unsqueeze_dim::<2>(0).unsqueeze_dim(2)
}

/// [1, C, 1] -> [C]
fn flat<B: Backend>(t: Tensor<B, 3>) -> FloatTensor<B> {
    let c = t.dims()[1];
    t.reshape([c]).into_primitive().tensor()
}

/// (x - mean) / sqrt(var + eps) * w + b with the batch's per-channel statistics (biased var)
pub fn batch_norm<B: Backend>(
    x: FloatTensor<B>,
    w: FloatTensor<B>,
    b: FloatTensor<B>,
    eps: f64,
) -> BatchNormOut<B> {
    let (x, shape) = channels::<B>(x);
    let [n, _, s] = x.dims();
    let m = (n * s) as f64;
    let mean = x.clone().sum_dim(0).sum_dim(2) / m;
    let centered = x - mean.clone();
    let var = centered.clone().square().sum_dim(0).sum_dim(2) / m;
    let rstd = (var.clone() + eps).sqrt().recip();
    let y = centered * rstd.clone() * per_channel::<B>(w) + per_channel::<B>(b);
    BatchNormOut {
        y: back(y, shape),
        mean: flat(mean),
        var: flat(var),
        rstd: flat(rstd),
    }
}

/// (dx, dw, db) for the output gradient `dy`.
pub fn batch_norm_backward<B: Backend>(
    x: FloatTensor<B>,
    w: FloatTensor<B>,
    mean: FloatTensor<B>,
    rstd: FloatTensor<B>,
    dy: FloatTensor<B>,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let (x, shape) = channels::<B>(x);
    let (dy, _) = channels::<B>(dy);
    let [n, _, s] = x.dims();
    let m = (n * s) as f64;
    let rstd = per_channel::<B>(rstd);
    let xhat = (x - per_channel::<B>(mean)) * rstd.clone();
    let db = dy.clone().sum_dim(0).sum_dim(2);
    let dw = (dy.clone() * xhat.clone()).sum_dim(0).sum_dim(2);
    let dx = (dy - db.clone() / m - xhat * (dw.clone() / m)) * (rstd * per_channel::<B>(w));
    (back(dx, shape), flat(dw), flat(db))
}

/// x * scale + shift per channel
pub fn channel_affine<B: Backend>(
    x: FloatTensor<B>,
    scale: FloatTensor<B>,
    shift: FloatTensor<B>,
) -> FloatTensor<B> {
    let (x, shape) = channels::<B>(x);
    back(x * per_channel::<B>(scale) + per_channel::<B>(shift), shape)
}

fn tensor<B: Backend, const D: usize>(x: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(x))
}

/// x Wᵀ + b, x [rows, d_in], W [d_out, d_in]
pub fn linear<B: Backend>(
    x: FloatTensor<B>,
    w: FloatTensor<B>,
    b: Option<FloatTensor<B>>,
) -> FloatTensor<B> {
    let y = burn_linear(
        tensor::<B, 2>(x),
        tensor::<B, 2>(w).transpose(),
        b.map(vector),
    );
    y.into_primitive().tensor()
}

/// (dx = dy W, dW = dyᵀ x, db = Σ_rows dy), each where `want` asks.
pub fn linear_backward<B: Backend>(
    x: FloatTensor<B>,
    w: FloatTensor<B>,
    dy: FloatTensor<B>,
    want: [bool; 3],
) -> [Option<FloatTensor<B>>; 3] {
    let (x, w, dy) = (tensor::<B, 2>(x), tensor::<B, 2>(w), tensor::<B, 2>(dy));
    let d_out = w.dims()[0];
    let float = |g: Tensor<B, 2>| g.into_primitive().tensor();
    [
        want[0].then(|| float(dy.clone().matmul(w))),
        want[1].then(|| float(dy.clone().transpose().matmul(x))),
        want[2].then(|| B::float_reshape(float(dy.sum_dim(0)), Shape::new([d_out]))),
    ]
}

/// q, k, v, each [B, heads, N, head_dim], from the qkv projection [B, N, 3D].
fn split_heads<B: Backend>(qkv: FloatTensor<B>, heads: usize) -> [Tensor<B, 4>; 3] {
    let qkv = tensor::<B, 3>(qkv);
    let [b, n, d3] = qkv.dims();
    let hd = d3 / 3 / heads;
    let qkv = qkv.reshape([b, n, 3, heads, hd]);
    [0, 1, 2].map(|i| {
        qkv.clone()
            .narrow(2, i, 1)
            .reshape([b, n, heads, hd])
            .swap_dims(1, 2)
    })
}

/// [B, heads, N, head_dim] -> [B, N, heads x head_dim]
fn merge_heads<B: Backend>(x: Tensor<B, 4>) -> FloatTensor<B> {
    let [b, h, n, hd] = x.dims();
    x.swap_dims(1, 2)
        .reshape([b, n, h * hd])
        .into_primitive()
        .tensor()
}

fn attention_scale(head_dim: usize) -> f64 {
    (head_dim as f64).powf(-0.5)
}

/// The attention core as batched matmuls around the softmax (computed in f32), from the qkv
/// projection [B, N, 3D]: (the output [B, N, D], with `keep` the probabilities).
pub fn attention<B: Backend>(
    qkv: FloatTensor<B>,
    heads: usize,
    keep: bool,
) -> (FloatTensor<B>, Option<FloatTensor<B>>) {
    let [q, k, v] = split_heads::<B>(qkv, heads);
    let (dtype, scale) = (q.dtype(), attention_scale(q.dims()[3]));
    let scores = q.matmul(k.swap_dims(2, 3)); // [B, H, N, N], in q's dtype
    let probs = in_dtype(scores, DType::F32);
    let probs = in_dtype(
        tensor::<B, 4>(softmax::<B>(probs.into_primitive().tensor(), scale)),
        dtype,
    );
    let out = merge_heads(probs.clone().matmul(v));
    (out, keep.then(|| probs.into_primitive().tensor()))
}

/// Burn's fused attention kernel (no probabilities kept; its scale None is 1 / sqrt(head_dim))
#[cfg(feature = "cuda")]
pub fn flash_attention<B: Backend>(qkv: FloatTensor<B>, heads: usize) -> FloatTensor<B> {
    use burn::tensor::ops::AttentionModuleOptions;
    let [q, k, v] = split_heads::<B>(qkv, heads).map(|t| t.into_primitive().tensor());
    let out = B::attention(q, k, v, None, None, AttentionModuleOptions::default());
    merge_heads(tensor::<B, 4>(out))
}

/// The gradient of [`attention`] with respect to qkv, from its probabilities.
pub fn attention_backward<B: Backend>(
    qkv: FloatTensor<B>,
    probs: FloatTensor<B>,
    dout: FloatTensor<B>,
    heads: usize,
) -> FloatTensor<B> {
    let [q, k, v] = split_heads::<B>(qkv, heads);
    let [b, h, n, hd] = q.dims();
    let (dtype, scale) = (q.dtype(), attention_scale(hd));
    let probs = tensor::<B, 4>(probs);
    let d_out = tensor::<B, 3>(dout).reshape([b, n, h, hd]).swap_dims(1, 2);
    let dp = d_out.clone().matmul(v.swap_dims(2, 3));
    let f32 = |t: Tensor<B, 4>| in_dtype(t, DType::F32).into_primitive().tensor();
    let ds = softmax_backward::<B>(f32(probs.clone()), f32(dp), scale);
    let ds = in_dtype(tensor::<B, 4>(ds), dtype);
    let grads = [
        ds.clone().matmul(k),
        ds.swap_dims(2, 3).matmul(q),
        probs.swap_dims(2, 3).matmul(d_out),
    ]
    .map(|g| g.swap_dims(1, 2).unsqueeze_dim::<5>(2)); // [B, N, 1, H, hd]
    Tensor::cat(grads.to_vec(), 2)
        .reshape([b, n, 3 * h * hd])
        .into_primitive()
        .tensor()
}
