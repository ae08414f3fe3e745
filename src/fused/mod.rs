//! Fused ops: a backend extension (Burn's custom-op pattern) for the ops that, written with
//! Burn's tensor ops, cost a pass over memory per elementary step, forward and backward:
//! the exact GELU, layer norm with affine, softmax and log-softmax over the last
//! dimension, and batch norm over the channels (with batch statistics, and on given ones).
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
use crate::precision::in_f32;

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
    /// softmax(q kᵀ / sqrt(head_dim)) v, all [B, H, N, head_dim], without a graph
    fn attention_kernel(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
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
    /// softmax(q kᵀ / sqrt(head_dim)) v, all [B, H, N, head_dim]
    fn fused_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
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

/// Scaled dot-product attention per (sample, head), no mask: q, k, v [B, H, N, head_dim]
/// -> [B, H, N, head_dim]. Without a graph (the teacher, evaluation) on CUDA it is Burn's
/// flash attention; elsewhere, and under autodiff (the student), the matmuls around the
/// fused softmax, whose backward is known.
pub fn attention<B: FusedOps>(q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>) -> Tensor<B, 4> {
    tensor(B::fused_attention(float(q), float(k), float(v)))
}

/// q kᵀ, the softmax (in f32) and the product with v, as separate ops.
fn decomposed_attention<B: FusedOps>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
) -> FloatTensor<B> {
    let (q, k, v) = (tensor::<B, 4>(q), tensor::<B, 4>(k), tensor(v));
    let head_dim = q.dims()[3];
    let scores = q.matmul(k.swap_dims(2, 3)); // [B, H, N, N], in q's dtype
    let probs = in_f32(scores, |s| scaled_softmax(s, (head_dim as f64).powf(-0.5)));
    float(probs.matmul(v))
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
    fn fused_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        B::attention_kernel(q, k, v)
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

    fn fused_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        decomposed_attention::<Self>(q, k, v)
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

        /// Flex's own attention kernel (one small GEMM pair and a scalar softmax per
        /// sample and head) measured slower here: the quickstart teacher's forward took
        /// 33 ms more per step (179 against 146 ms) than the batched matmuls around the
        /// fused softmax
        fn attention_kernel(
            q: FloatTensor<Self>,
            k: FloatTensor<Self>,
            v: FloatTensor<Self>,
        ) -> FloatTensor<Self> {
            super::decomposed_attention::<Flex>(q, k, v)
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
        /// Burn's flash attention (scale None: 1 / sqrt(head_dim), as the models')
        fn attention_kernel(
            q: FloatTensor<Self>,
            k: FloatTensor<Self>,
            v: FloatTensor<Self>,
        ) -> FloatTensor<Self> {
            use burn::tensor::ops::{AttentionModuleOptions, ModuleOps};
            <Self as ModuleOps<Self>>::attention(
                q,
                k,
                v,
                None,
                None,
                AttentionModuleOptions::default(),
            )
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
