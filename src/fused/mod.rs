//! Fused ops: a backend extension (Burn's custom-op pattern) for the ops that, written with
//! Burn's tensor ops, cost a pass over memory per elementary step, forward and backward:
//! the exact GELU, layer norm with affine, softmax and log-softmax over the last
//! dimension, batch norm over the channels (with batch statistics, and on given ones), and
//! the products whose composed form copies: a linear layer (bias added by the product, no
//! broadcast pass; its bias gradient one column sum) and the attention core read straight
//! from the qkv projection's rows (no head split or merge copies, forward or backward).
//!
//! - [`FusedKernels`]: an inner backend's forward and backward kernels. The CPU (`Flex`)
//!   runs this project's vectorized, thread-count-deterministic kernels (`cpu.rs`); CUDA runs
//!   the composed Burn ops (`composed.rs`), as the models did before.
//! - [`FusedOps`]: the differentiable forward ops the models call; on `Autodiff<B>` each is
//!   one graph node whose backward is `B`'s backward kernel.

mod composed;
mod cpu;

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorPrimitive};

pub use cpu::vectorized;

use crate::parallel::batch_sync;

/// A layer norm's output and, per row, the statistics its backward needs.
pub struct LayerNormOut<B: Backend> {
    pub y: FloatTensor<B>,
    /// [rows]
    pub mean: FloatTensor<B>,
    /// [rows], 1 / sqrt(var + eps)
    pub rstd: FloatTensor<B>,
}

/// A training batch norm's output and, per channel, the batch statistics.
pub struct BatchNormOut<B: Backend> {
    pub y: FloatTensor<B>,
    /// [C]
    pub mean: FloatTensor<B>,
    /// [C], biased (the normalization's)
    pub var: FloatTensor<B>,
    /// [C], 1 / sqrt(var + eps)
    pub rstd: FloatTensor<B>,
}

/// Forward and backward kernels of an inner (non-autodiff) backend. Row ops work over the
/// last dimension; channel ops over dimension 1 of [N, C, ...].
pub trait FusedKernels: Backend {
    /// x Φ(x), Φ the standard normal CDF (PyTorch's `gelu`, not its tanh approximation)
    fn gelu_kernel(x: FloatTensor<Self>) -> FloatTensor<Self>;
    fn gelu_backward_kernel(x: FloatTensor<Self>, dy: FloatTensor<Self>) -> FloatTensor<Self>;
    /// (x - mean) / sqrt(var + eps) * w + b per row, the variance biased (PyTorch's)
    fn layer_norm_kernel(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        b: FloatTensor<Self>,
        eps: f64,
    ) -> LayerNormOut<Self>;
    /// (dx, dw, db)
    fn layer_norm_backward_kernel(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        rstd: FloatTensor<Self>,
        dy: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
    /// softmax(scale * x)
    fn softmax_kernel(x: FloatTensor<Self>, scale: f64) -> FloatTensor<Self>;
    /// from the softmax's output `y`
    fn softmax_backward_kernel(
        y: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self>;
    /// x Wᵀ + b: x [rows, d_in], W [d_out, d_in] (PyTorch's layout), b [d_out]
    fn linear_kernel(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        b: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self>;
    /// (dx, dW, db) for the output gradient `dy` [rows, d_out], each where `want` asks
    fn linear_backward_kernel(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        want: [bool; 3],
    ) -> [Option<FloatTensor<Self>>; 3];
    /// softmax(q kᵀ / sqrt(head_dim)) v per sample and head from the qkv projection
    /// [B, N, 3D] (q, k, v side by side, each `heads` x head_dim): the output [B, N, D] with
    /// the heads side by side, and with `keep` the probabilities [B, heads, N, N]
    fn attention_kernel(
        qkv: FloatTensor<Self>,
        heads: usize,
        keep: bool,
    ) -> (FloatTensor<Self>, Option<FloatTensor<Self>>);
    /// the gradient with respect to qkv, from the kept probabilities
    fn attention_backward_kernel(
        qkv: FloatTensor<Self>,
        probs: FloatTensor<Self>,
        dout: FloatTensor<Self>,
        heads: usize,
    ) -> FloatTensor<Self>;
    /// log_softmax(scale * x)
    fn log_softmax_kernel(x: FloatTensor<Self>, scale: f64) -> FloatTensor<Self>;
    /// from the log-softmax's output `y`
    fn log_softmax_backward_kernel(
        y: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self>;
    /// (x - mean) / sqrt(var + eps) * w + b per channel, with the batch's statistics
    fn batch_norm_kernel(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        b: FloatTensor<Self>,
        eps: f64,
    ) -> BatchNormOut<Self>;
    /// (dx, dw, db)
    fn batch_norm_backward_kernel(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        rstd: FloatTensor<Self>,
        dy: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
    /// x * scale + shift per channel
    fn channel_affine_kernel(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
}

/// The differentiable fused ops.
pub trait FusedOps: Backend {
    fn fused_gelu(x: FloatTensor<Self>) -> FloatTensor<Self>;
    fn fused_layer_norm(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        b: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self>;
    fn fused_softmax(x: FloatTensor<Self>, scale: f64) -> FloatTensor<Self>;
    fn fused_log_softmax(x: FloatTensor<Self>, scale: f64) -> FloatTensor<Self>;
    /// x Wᵀ + b, x [rows, d_in], W [d_out, d_in]
    fn fused_linear(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        b: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self>;
    /// the attention core from the qkv projection [B, N, 3D] -> [B, N, D]
    fn fused_attention(qkv: FloatTensor<Self>, heads: usize) -> FloatTensor<Self>;
    /// (y, mean, biased var): the statistics without a graph
    fn fused_batch_norm(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        b: FloatTensor<Self>,
        eps: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
    fn fused_channel_affine(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
    /// The mean over the ranks of the step's batch-norm collective
    /// ([`crate::parallel::batch_sync`]); its gradient is the mean over the ranks of theirs.
    fn fused_rank_mean(x: FloatTensor<Self>) -> FloatTensor<Self>;
    /// The ranks [`Self::fused_rank_mean`] averages over (1 outside a synchronized step).
    fn rank_world() -> usize;
}

fn float<B: Backend, const D: usize>(x: Tensor<B, D>) -> FloatTensor<B> {
    x.into_primitive().tensor()
}

fn tensor<B: Backend, const D: usize>(x: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(x))
}

/// The exact GELU, elementwise.
pub fn gelu<B: FusedOps, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    tensor(B::fused_gelu(float(x)))
}

/// Layer norm over the last dimension with weight and bias [d].
pub fn layer_norm<B: FusedOps, const D: usize>(
    x: Tensor<B, D>,
    w: Tensor<B, 1>,
    b: Tensor<B, 1>,
    eps: f64,
) -> Tensor<B, D> {
    tensor(B::fused_layer_norm(float(x), float(w), float(b), eps))
}

/// Batch norm over the channels of `x` [N, C, ...] with its batch statistics, weight and
/// bias [C]: (y, the batch mean [C], its biased variance [C]); the statistics carry no
/// gradient.
pub fn batch_norm<B: FusedOps, const D: usize>(
    x: Tensor<B, D>,
    w: Tensor<B, 1>,
    b: Tensor<B, 1>,
    eps: f64,
) -> (Tensor<B, D>, Tensor<B, 1>, Tensor<B, 1>) {
    let (y, mean, var) = B::fused_batch_norm(float(x), float(w), float(b), eps);
    (tensor(y), tensor(mean), tensor(var))
}

/// x * scale + shift per channel of `x` [N, C, ...] (a batch norm on given statistics).
pub fn channel_affine<B: FusedOps, const D: usize>(
    x: Tensor<B, D>,
    scale: Tensor<B, 1>,
    shift: Tensor<B, 1>,
) -> Tensor<B, D> {
    tensor(B::fused_channel_affine(
        float(x),
        float(scale),
        float(shift),
    ))
}

/// The mean over the ranks of a synchronized step of `x` [n] (SyncBatchNorm's statistics),
/// differentiable: rank r's `x` affects every rank's loss, so its gradient is the mean of
/// the ranks' gradients of the result.
pub fn rank_mean<B: FusedOps>(x: Tensor<B, 1>) -> Tensor<B, 1> {
    tensor(B::fused_rank_mean(float(x)))
}

/// The ranks [`rank_mean`] averages over: 1 outside a synchronized step of several ranks.
pub fn rank_world<B: FusedOps>() -> usize {
    B::rank_world()
}

/// Softmax over the last dimension.
pub fn softmax<B: FusedOps, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    scaled_softmax(x, 1.0)
}

/// softmax(scale * x) over the last dimension, in one pass (and one backward pass).
pub fn scaled_softmax<B: FusedOps, const D: usize>(x: Tensor<B, D>, scale: f64) -> Tensor<B, D> {
    // the kernels subtract the row max before scaling, which needs scale > 0
    assert!(
        scale > 0.0,
        "scaled_softmax: scale {scale} must be positive"
    );
    tensor(B::fused_softmax(float(x), scale))
}

/// log_softmax(scale * x) over the last dimension, in one pass (and one backward pass).
pub fn scaled_log_softmax<B: FusedOps, const D: usize>(
    x: Tensor<B, D>,
    scale: f64,
) -> Tensor<B, D> {
    assert!(
        scale > 0.0,
        "scaled_log_softmax: scale {scale} must be positive"
    );
    tensor(B::fused_log_softmax(float(x), scale))
}

/// A linear layer over the last dimension of `x` [..., d_in]: x Wᵀ + b with W [d_out,
/// d_in] (PyTorch's layout) and b [d_out] -> [..., d_out].
pub fn linear<B: FusedOps, const D: usize>(
    x: Tensor<B, D>,
    w: Tensor<B, 2>,
    b: Option<Tensor<B, 1>>,
) -> Tensor<B, D> {
    let mut dims = x.dims();
    let d_in = dims[D - 1];
    let rows = dims[..D - 1].iter().product();
    let y = B::fused_linear(float(x.reshape([rows, d_in])), float(w), b.map(float));
    dims[D - 1] = tensor::<B, 2>(y.clone()).dims()[1];
    tensor::<B, 2>(y).reshape(dims)
}

/// Scaled dot-product attention per (sample, head), no mask, from the qkv projection
/// [B, N, 3D] (q, k, v side by side, each `heads` x head_dim) -> [B, N, D], the heads side
/// by side: softmax(q kᵀ / sqrt(head_dim)) v. Without a graph (the teacher, evaluation) on
/// CUDA it is Burn's flash attention.
pub fn attention<B: FusedOps>(qkv: Tensor<B, 3>, heads: usize) -> Tensor<B, 3> {
    tensor(B::fused_attention(float(qkv), heads))
}

/// An inner backend runs its kernels directly (no graph, so no statistics kept).
impl<B: FusedKernels> FusedOps for B {
    fn fused_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        B::gelu_kernel(x)
    }
    fn fused_layer_norm(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        b: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        B::layer_norm_kernel(x, w, b, eps).y
    }
    fn fused_softmax(x: FloatTensor<Self>, scale: f64) -> FloatTensor<Self> {
        B::softmax_kernel(x, scale)
    }
    fn fused_log_softmax(x: FloatTensor<Self>, scale: f64) -> FloatTensor<Self> {
        B::log_softmax_kernel(x, scale)
    }
    fn fused_linear(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        b: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        B::linear_kernel(x, w, b)
    }
    fn fused_attention(qkv: FloatTensor<Self>, heads: usize) -> FloatTensor<Self> {
        B::attention_kernel(qkv, heads, false).0
    }
    fn fused_batch_norm(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        b: FloatTensor<Self>,
        eps: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let out = B::batch_norm_kernel(x, w, b, eps);
        (out.y, out.mean, out.var)
    }
    fn fused_channel_affine(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        B::channel_affine_kernel(x, scale, shift)
    }
    fn fused_rank_mean(x: FloatTensor<Self>) -> FloatTensor<Self> {
        float(batch_sync::mean::<B>(tensor(x)))
    }
    fn rank_world() -> usize {
        batch_sync::world::<B>()
    }
}

#[derive(Debug)]
struct GeluBackward;

impl<B: FusedKernels> Backward<B, 1> for GeluBackward {
    /// the input
    type State = FloatTensor<B>;
    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let x = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |dy| {
            B::gelu_backward_kernel(x, dy)
        });
    }
}

/// The backward of a normalization with affine (x, weight, bias), over rows (layer norm) or
/// channels (batch norm): the same parents and the same state.
#[derive(Debug)]
enum NormBackward {
    Layer,
    Batch,
}

impl<B: FusedKernels> Backward<B, 3> for NormBackward {
    /// input, weight, mean, rstd
    type State = (
        FloatTensor<B>,
        FloatTensor<B>,
        FloatTensor<B>,
        FloatTensor<B>,
    );
    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x_node, w_node, b_node] = ops.parents;
        let dy = grads.consume::<B>(&ops.node);
        let (x, w, mean, rstd) = ops.state;
        let (dx, dw, db) = match self {
            NormBackward::Layer => B::layer_norm_backward_kernel(x, w, mean, rstd, dy),
            NormBackward::Batch => B::batch_norm_backward_kernel(x, w, mean, rstd, dy),
        };
        for (node, grad) in [(x_node, dx), (w_node, dw), (b_node, db)] {
            if let Some(node) = node {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

/// The backward of a linear layer: parents x, W and, with a bias, b.
#[derive(Debug)]
struct LinearBackward;

impl<B: FusedKernels, const N: usize> Backward<B, N> for LinearBackward {
    /// x, W
    type State = (FloatTensor<B>, FloatTensor<B>);
    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = grads.consume::<B>(&ops.node);
        let (x, w) = ops.state;
        let want = [0, 1, 2].map(|i| ops.parents.get(i).is_some_and(Option::is_some));
        let found = B::linear_backward_kernel(x, w, dy, want);
        for (node, grad) in ops.parents.into_iter().zip(found) {
            if let (Some(node), Some(grad)) = (node, grad) {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

#[derive(Debug)]
struct AttentionBackward;

impl<B: FusedKernels> Backward<B, 1> for AttentionBackward {
    /// qkv, the probabilities, the heads
    type State = (FloatTensor<B>, FloatTensor<B>, usize);
    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (qkv, probs, heads) = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |dout| {
            B::attention_backward_kernel(qkv, probs, dout, heads)
        });
    }
}

#[derive(Debug)]
struct RankMeanBackward;

impl<B: FusedKernels> Backward<B, 1> for RankMeanBackward {
    type State = ();
    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        unary::<B, _>(ops.parents, ops.node, grads, |dy| {
            float(batch_sync::mean::<B>(tensor(dy)))
        });
    }
}

#[derive(Debug)]
struct SoftmaxBackward;

impl<B: FusedKernels> Backward<B, 1> for SoftmaxBackward {
    /// the output, and the scale
    type State = (FloatTensor<B>, f64);
    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (y, scale) = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |dy| {
            B::softmax_backward_kernel(y, dy, scale)
        });
    }
}

#[derive(Debug)]
struct LogSoftmaxBackward;

impl<B: FusedKernels> Backward<B, 1> for LogSoftmaxBackward {
    /// the output, and the scale
    type State = (FloatTensor<B>, f64);
    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (y, scale) = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |dy| {
            B::log_softmax_backward_kernel(y, dy, scale)
        });
    }
}

impl<B: FusedKernels, C: CheckpointStrategy> FusedOps for Autodiff<B, C> {
    fn fused_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        match GeluBackward
            .prepare::<C>([x.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let y = B::gelu_kernel(x.primitive.clone());
                prep.finish(x.primitive, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::gelu_kernel(x.primitive)),
        }
    }

    fn fused_layer_norm(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        b: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        match NormBackward::Layer
            .prepare::<C>([x.node.clone(), w.node.clone(), b.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let out = B::layer_norm_kernel(
                    x.primitive.clone(),
                    w.primitive.clone(),
                    b.primitive,
                    eps,
                );
                prep.finish((x.primitive, w.primitive, out.mean, out.rstd), out.y)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::layer_norm_kernel(x.primitive, w.primitive, b.primitive, eps).y)
            }
        }
    }

    fn fused_softmax(x: FloatTensor<Self>, scale: f64) -> FloatTensor<Self> {
        match SoftmaxBackward
            .prepare::<C>([x.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let y = B::softmax_kernel(x.primitive, scale);
                prep.finish((y.clone(), scale), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::softmax_kernel(x.primitive, scale)),
        }
    }

    fn fused_log_softmax(x: FloatTensor<Self>, scale: f64) -> FloatTensor<Self> {
        match LogSoftmaxBackward
            .prepare::<C>([x.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let y = B::log_softmax_kernel(x.primitive, scale);
                prep.finish((y.clone(), scale), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::log_softmax_kernel(x.primitive, scale)),
        }
    }

    fn fused_linear(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        b: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        let (xp, wp) = (x.primitive.clone(), w.primitive.clone());
        let y = B::linear_kernel(
            x.primitive,
            w.primitive,
            b.as_ref().map(|b| b.primitive.clone()),
        );
        let prep = match b {
            Some(b) => LinearBackward
                .prepare::<C>([x.node, w.node, b.node])
                .compute_bound()
                .stateful(),
            None => {
                return match LinearBackward
                    .prepare::<C>([x.node, w.node])
                    .compute_bound()
                    .stateful()
                {
                    OpsKind::Tracked(prep) => prep.finish((xp, wp), y),
                    OpsKind::UnTracked(prep) => prep.finish(y),
                };
            }
        };
        match prep {
            OpsKind::Tracked(prep) => prep.finish((xp, wp), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }

    fn fused_attention(qkv: FloatTensor<Self>, heads: usize) -> FloatTensor<Self> {
        match AttentionBackward
            .prepare::<C>([qkv.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (out, probs) = B::attention_kernel(qkv.primitive.clone(), heads, true);
                let probs = probs.expect("the kernel keeps the probabilities when asked");
                prep.finish((qkv.primitive, probs, heads), out)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::attention_kernel(qkv.primitive, heads, false).0)
            }
        }
    }

    fn fused_batch_norm(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        b: FloatTensor<Self>,
        eps: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let prep = NormBackward::Batch
            .prepare::<C>([x.node.clone(), w.node.clone(), b.node.clone()])
            .compute_bound()
            .stateful();
        let (x, w) = (x.primitive, w.primitive);
        let out = B::batch_norm_kernel(x.clone(), w.clone(), b.primitive, eps);
        let (mean, var) = (
            Self::from_inner(out.mean.clone()),
            Self::from_inner(out.var),
        );
        let y = match prep {
            OpsKind::Tracked(prep) => prep.finish((x, w, out.mean, out.rstd), out.y),
            OpsKind::UnTracked(prep) => prep.finish(out.y),
        };
        (y, mean, var)
    }

    /// the composed ops, whose gradients Burn knows (evaluation runs on inner backends)
    fn fused_channel_affine(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        composed::channel_affine::<Self>(x, scale, shift)
    }

    fn fused_rank_mean(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let mean = float(batch_sync::mean::<B>(tensor(x.primitive)));
        (RankMeanBackward.prepare::<C>([x.node.clone()]))
            .compute_bound()
            .stateless(mean)
    }

    fn rank_world() -> usize {
        batch_sync::world::<B>()
    }
}

mod flex {
    use burn::backend::Flex;
    use burn::backend::flex::FlexTensor;
    use burn::tensor::ops::FloatTensor;
    use burn::tensor::{DType, TensorData, TensorMetadata};

    use super::{BatchNormOut, FusedKernels, LayerNormOut, composed, cpu};

    /// `x` contiguous, or `None` for another dtype than f32 or no values at all (which then
    /// run the composed ops: Flex computes those in any float dtype).
    fn values(x: &FlexTensor) -> Option<FlexTensor> {
        let usable = x.dtype() == DType::F32 && x.shape().num_elements() > 0;
        usable.then(|| x.to_contiguous())
    }

    fn slice(x: &FlexTensor) -> &[f32] {
        x.as_slice::<f32>().expect("contiguous f32")
    }

    fn like(values: Vec<f32>, x: &FlexTensor) -> FlexTensor {
        FlexTensor::from_data(TensorData::new(values, x.shape()))
    }

    impl FusedKernels for Flex {
        fn gelu_kernel(x: FloatTensor<Self>) -> FloatTensor<Self> {
            match values(&x) {
                Some(c) => like(cpu::gelu(slice(&c)), &x),
                None => composed::gelu::<Flex>(x),
            }
        }

        fn gelu_backward_kernel(x: FloatTensor<Self>, dy: FloatTensor<Self>) -> FloatTensor<Self> {
            match (values(&x), values(&dy)) {
                (Some(xc), Some(dyc)) => like(cpu::gelu_backward(slice(&xc), slice(&dyc)), &x),
                _ => composed::gelu_backward::<Flex>(x, dy),
            }
        }

        fn layer_norm_kernel(
            x: FloatTensor<Self>,
            w: FloatTensor<Self>,
            b: FloatTensor<Self>,
            eps: f64,
        ) -> LayerNormOut<Self> {
            match (values(&x), values(&w), values(&b)) {
                (Some(xc), Some(wc), Some(bc)) => {
                    let out = cpu::layer_norm(slice(&xc), slice(&wc), slice(&bc), eps as f32);
                    let rows = out.mean.len();
                    LayerNormOut {
                        y: like(out.y, &x),
                        mean: FlexTensor::from_data(TensorData::new(out.mean, [rows])),
                        rstd: FlexTensor::from_data(TensorData::new(out.rstd, [rows])),
                    }
                }
                _ => composed::layer_norm::<Flex>(x, w, b, eps),
            }
        }

        fn layer_norm_backward_kernel(
            x: FloatTensor<Self>,
            w: FloatTensor<Self>,
            mean: FloatTensor<Self>,
            rstd: FloatTensor<Self>,
            dy: FloatTensor<Self>,
        ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
            let all = [&x, &w, &mean, &rstd, &dy].map(values);
            match all {
                [Some(xc), Some(wc), Some(mc), Some(rc), Some(dyc)] => {
                    let (dx, dw, db) = cpu::layer_norm_backward(
                        slice(&xc),
                        slice(&wc),
                        slice(&mc),
                        slice(&rc),
                        slice(&dyc),
                    );
                    (like(dx, &x), like(dw, &w), like(db, &w))
                }
                _ => composed::layer_norm_backward::<Flex>(x, w, mean, rstd, dy),
            }
        }

        fn softmax_kernel(x: FloatTensor<Self>, scale: f64) -> FloatTensor<Self> {
            match values(&x) {
                Some(c) => {
                    let d = *x.shape().last().expect("a tensor has a dimension");
                    like(cpu::softmax(slice(&c), d, scale as f32), &x)
                }
                None => composed::softmax::<Flex>(x, scale),
            }
        }

        fn softmax_backward_kernel(
            y: FloatTensor<Self>,
            dy: FloatTensor<Self>,
            scale: f64,
        ) -> FloatTensor<Self> {
            match (values(&y), values(&dy)) {
                (Some(yc), Some(dyc)) => {
                    let d = *y.shape().last().expect("a tensor has a dimension");
                    let dx = cpu::softmax_backward(slice(&yc), slice(&dyc), d, scale as f32);
                    like(dx, &y)
                }
                _ => composed::softmax_backward::<Flex>(y, dy, scale),
            }
        }

        fn linear_kernel(
            x: FloatTensor<Self>,
            w: FloatTensor<Self>,
            b: Option<FloatTensor<Self>>,
        ) -> FloatTensor<Self> {
            // Some(None): no bias; None: a bias the kernel cannot take
            let bias = match &b {
                Some(b) => values(b).map(Some),
                None => Some(None),
            };
            match (values(&x), values(&w), bias) {
                (Some(xc), Some(wc), Some(bc)) => {
                    let [rows, d_in] = dims2(&x);
                    let y = cpu::linear(slice(&xc), slice(&wc), bc.as_ref().map(slice), d_in);
                    FlexTensor::from_data(TensorData::new(y, [rows, dims2(&w)[0]]))
                }
                _ => composed::linear::<Flex>(x, w, b),
            }
        }

        fn linear_backward_kernel(
            x: FloatTensor<Self>,
            w: FloatTensor<Self>,
            dy: FloatTensor<Self>,
            want: [bool; 3],
        ) -> [Option<FloatTensor<Self>>; 3] {
            match [&x, &w, &dy].map(values) {
                [Some(xc), Some(wc), Some(dyc)] => {
                    let d_in = dims2(&x)[1];
                    let shapes = [x.shape(), w.shape(), [dims2(&w)[0]].into()];
                    let found =
                        cpu::linear_backward(slice(&xc), slice(&wc), slice(&dyc), d_in, want);
                    let mut shapes = shapes.into_iter();
                    found.map(|g| {
                        let shape = shapes.next().expect("three shapes");
                        g.map(|g| FlexTensor::from_data(TensorData::new(g, shape)))
                    })
                }
                _ => composed::linear_backward::<Flex>(x, w, dy, want),
            }
        }

        fn attention_kernel(
            qkv: FloatTensor<Self>,
            heads: usize,
            keep: bool,
        ) -> (FloatTensor<Self>, Option<FloatTensor<Self>>) {
            match values(&qkv) {
                Some(c) => {
                    let s = heads_of(&qkv, heads);
                    let (out, probs) = cpu::attention(s, slice(&c), scale(s));
                    let batch = qkv.shape()[0];
                    let out = FlexTensor::from_data(TensorData::new(out, [batch, s.n, s.d]));
                    let probs = keep.then(|| {
                        FlexTensor::from_data(TensorData::new(probs, [batch, heads, s.n, s.n]))
                    });
                    (out, probs)
                }
                None => composed::attention::<Flex>(qkv, heads, keep),
            }
        }

        fn attention_backward_kernel(
            qkv: FloatTensor<Self>,
            probs: FloatTensor<Self>,
            dout: FloatTensor<Self>,
            heads: usize,
        ) -> FloatTensor<Self> {
            match [&qkv, &probs, &dout].map(values) {
                [Some(qc), Some(pc), Some(dc)] => {
                    let s = heads_of(&qkv, heads);
                    let scale = scale(s);
                    like(
                        cpu::attention_backward(s, slice(&qc), slice(&pc), slice(&dc), scale),
                        &qkv,
                    )
                }
                _ => composed::attention_backward::<Flex>(qkv, probs, dout, heads),
            }
        }

        fn log_softmax_kernel(x: FloatTensor<Self>, scale: f64) -> FloatTensor<Self> {
            match values(&x) {
                Some(c) => {
                    let d = *x.shape().last().expect("a tensor has a dimension");
                    like(cpu::log_softmax(slice(&c), d, scale as f32), &x)
                }
                None => composed::log_softmax::<Flex>(x, scale),
            }
        }

        fn log_softmax_backward_kernel(
            y: FloatTensor<Self>,
            dy: FloatTensor<Self>,
            scale: f64,
        ) -> FloatTensor<Self> {
            match (values(&y), values(&dy)) {
                (Some(yc), Some(dyc)) => {
                    let d = *y.shape().last().expect("a tensor has a dimension");
                    let dx = cpu::log_softmax_backward(slice(&yc), slice(&dyc), d, scale as f32);
                    like(dx, &y)
                }
                _ => composed::log_softmax_backward::<Flex>(y, dy, scale),
            }
        }

        fn batch_norm_kernel(
            x: FloatTensor<Self>,
            w: FloatTensor<Self>,
            b: FloatTensor<Self>,
            eps: f64,
        ) -> BatchNormOut<Self> {
            match (values(&x), values(&w), values(&b)) {
                (Some(xc), Some(wc), Some(bc)) => {
                    let s = spatial(&x);
                    let out = cpu::batch_norm(slice(&xc), slice(&wc), slice(&bc), s, eps as f32);
                    let vector = |v: Vec<f32>| like(v, &w);
                    BatchNormOut {
                        y: like(out.y, &x),
                        mean: vector(out.mean),
                        var: vector(out.var),
                        rstd: vector(out.rstd),
                    }
                }
                _ => composed::batch_norm::<Flex>(x, w, b, eps),
            }
        }

        fn batch_norm_backward_kernel(
            x: FloatTensor<Self>,
            w: FloatTensor<Self>,
            mean: FloatTensor<Self>,
            rstd: FloatTensor<Self>,
            dy: FloatTensor<Self>,
        ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
            match [&x, &w, &mean, &rstd, &dy].map(values) {
                [Some(xc), Some(wc), Some(mc), Some(rc), Some(dyc)] => {
                    let (dx, dw, db) = cpu::batch_norm_backward(
                        slice(&xc),
                        slice(&wc),
                        slice(&mc),
                        slice(&rc),
                        slice(&dyc),
                        spatial(&x),
                    );
                    (like(dx, &x), like(dw, &w), like(db, &w))
                }
                _ => composed::batch_norm_backward::<Flex>(x, w, mean, rstd, dy),
            }
        }

        fn channel_affine_kernel(
            x: FloatTensor<Self>,
            scale: FloatTensor<Self>,
            shift: FloatTensor<Self>,
        ) -> FloatTensor<Self> {
            match (values(&x), values(&scale), values(&shift)) {
                (Some(xc), Some(a), Some(b)) => {
                    let y = cpu::channel_affine(slice(&xc), slice(&a), slice(&b), spatial(&x));
                    like(y, &x)
                }
                _ => composed::channel_affine::<Flex>(x, scale, shift),
            }
        }
    }

    fn dims2(x: &FlexTensor) -> [usize; 2] {
        let shape = x.shape();
        [shape[0], shape[1]]
    }

    /// The attention shape of a qkv projection [B, N, 3D].
    fn heads_of(qkv: &FlexTensor, heads: usize) -> cpu::Heads {
        let shape = qkv.shape();
        cpu::Heads {
            n: shape[1],
            d: shape[2] / 3,
            heads,
        }
    }

    /// 1 / sqrt(head_dim), the models' attention scale.
    fn scale(s: cpu::Heads) -> f32 {
        ((s.d / s.heads) as f64).powf(-0.5) as f32
    }

    /// The values per (sample, channel) of [N, C, ...].
    fn spatial(x: &FlexTensor) -> usize {
        let shape = x.shape();
        shape.num_elements() / (shape[0] * shape[1]).max(1)
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use burn::backend::Cuda;
    use burn::tensor::ops::FloatTensor;

    use super::{BatchNormOut, FusedKernels, LayerNormOut, composed};

    impl FusedKernels for Cuda {
        fn gelu_kernel(x: FloatTensor<Self>) -> FloatTensor<Self> {
            composed::gelu::<Cuda>(x)
        }
        fn gelu_backward_kernel(x: FloatTensor<Self>, dy: FloatTensor<Self>) -> FloatTensor<Self> {
            composed::gelu_backward::<Cuda>(x, dy)
        }
        fn layer_norm_kernel(
            x: FloatTensor<Self>,
            w: FloatTensor<Self>,
            b: FloatTensor<Self>,
            eps: f64,
        ) -> LayerNormOut<Self> {
            composed::layer_norm::<Cuda>(x, w, b, eps)
        }
        fn layer_norm_backward_kernel(
            x: FloatTensor<Self>,
            w: FloatTensor<Self>,
            mean: FloatTensor<Self>,
            rstd: FloatTensor<Self>,
            dy: FloatTensor<Self>,
        ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
            composed::layer_norm_backward::<Cuda>(x, w, mean, rstd, dy)
        }
        fn softmax_kernel(x: FloatTensor<Self>, scale: f64) -> FloatTensor<Self> {
            composed::softmax::<Cuda>(x, scale)
        }
        fn softmax_backward_kernel(
            y: FloatTensor<Self>,
            dy: FloatTensor<Self>,
            scale: f64,
        ) -> FloatTensor<Self> {
            composed::softmax_backward::<Cuda>(y, dy, scale)
        }
        fn linear_kernel(
            x: FloatTensor<Self>,
            w: FloatTensor<Self>,
            b: Option<FloatTensor<Self>>,
        ) -> FloatTensor<Self> {
            composed::linear::<Cuda>(x, w, b)
        }
        fn linear_backward_kernel(
            x: FloatTensor<Self>,
            w: FloatTensor<Self>,
            dy: FloatTensor<Self>,
            want: [bool; 3],
        ) -> [Option<FloatTensor<Self>>; 3] {
            composed::linear_backward::<Cuda>(x, w, dy, want)
        }
        /// without `keep` (the teacher, evaluation), Burn's flash attention
        fn attention_kernel(
            qkv: FloatTensor<Self>,
            heads: usize,
            keep: bool,
        ) -> (FloatTensor<Self>, Option<FloatTensor<Self>>) {
            if keep {
                composed::attention::<Cuda>(qkv, heads, true)
            } else {
                (composed::flash_attention::<Cuda>(qkv, heads), None)
            }
        }
        fn attention_backward_kernel(
            qkv: FloatTensor<Self>,
            probs: FloatTensor<Self>,
            dout: FloatTensor<Self>,
            heads: usize,
        ) -> FloatTensor<Self> {
            composed::attention_backward::<Cuda>(qkv, probs, dout, heads)
        }
        fn log_softmax_kernel(x: FloatTensor<Self>, scale: f64) -> FloatTensor<Self> {
            composed::log_softmax::<Cuda>(x, scale)
        }
        fn log_softmax_backward_kernel(
            y: FloatTensor<Self>,
            dy: FloatTensor<Self>,
            scale: f64,
        ) -> FloatTensor<Self> {
            composed::log_softmax_backward::<Cuda>(y, dy, scale)
        }
        fn batch_norm_kernel(
            x: FloatTensor<Self>,
            w: FloatTensor<Self>,
            b: FloatTensor<Self>,
            eps: f64,
        ) -> BatchNormOut<Self> {
            composed::batch_norm::<Cuda>(x, w, b, eps)
        }
        fn batch_norm_backward_kernel(
            x: FloatTensor<Self>,
            w: FloatTensor<Self>,
            mean: FloatTensor<Self>,
            rstd: FloatTensor<Self>,
            dy: FloatTensor<Self>,
        ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
            composed::batch_norm_backward::<Cuda>(x, w, mean, rstd, dy)
        }
        fn channel_affine_kernel(
            x: FloatTensor<Self>,
            scale: FloatTensor<Self>,
            shift: FloatTensor<Self>,
        ) -> FloatTensor<Self> {
            composed::channel_affine::<Cuda>(x, scale, shift)
        }
    }
}

/// The composed references, for the tests that check the kernels against them.
pub mod reference {
    pub use super::composed::*;
}
