//! The DINO loss: cross-entropy between the centred, sharpened teacher distribution of each
//! global view and the student distribution of every other view (`DINOLoss` of the official
//! code), and the centre that keeps the teacher from collapsing.

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, ElementConversion, Tensor};

use crate::device::InferenceBackend;
use crate::fused;
use crate::parallel::{Collective, ParallelError, mean_all};
use crate::precision::in_dtype;

pub struct DinoLoss<B: Backend> {
    pub student_temp: f64,
    pub center_momentum: f64,
    /// [1, K], an EMA of the teacher's batch-mean logits
    pub center: Tensor<B, 2>,
}

/// What the teacher's targets look like, for the logs and the collapse guard.
pub struct TeacherStats {
    /// Mean per-sample entropy of the teacher distribution (nats): ln K when uniform.
    pub entropy: f64,
    /// Entropy of the batch-mean teacher distribution: near 0 when every sample picks the
    /// same prototype.
    pub marginal_entropy: f64,
}

impl<B: InferenceBackend> DinoLoss<B> {
    pub fn new(
        out_dim: usize,
        student_temp: f64,
        center_momentum: f64,
        device: &B::Device,
    ) -> Self {
        Self {
            student_temp,
            center_momentum,
            center: Tensor::zeros([1, out_dim], device),
        }
    }

    /// softmax((t - center) / temp) per row, in f32: [2B, K] -> [2B, K].
    pub fn teacher_targets(&self, teacher_out: Tensor<B, 2>, teacher_temp: f64) -> Tensor<B, 2> {
        let teacher_out = in_dtype(teacher_out, DType::F32);
        fused::scaled_softmax(teacher_out - self.center.clone(), 1.0 / teacher_temp)
    }

    /// The mean of the raw teacher logits over this device's batch, in f32: [2B, K] -> [K].
    pub fn batch_center(teacher_out: Tensor<B, 2>) -> Tensor<B, 1> {
        in_dtype(teacher_out, DType::F32).mean_dim(0).squeeze_dim(0)
    }

    /// center <- m * center + (1 - m) * batch_center (the mean over all devices' batches);
    /// after the loss.
    pub fn update_center(&mut self, batch_center: Tensor<B, 1>) {
        self.center = self.center.clone() * self.center_momentum
            + batch_center.unsqueeze_dim(0) * (1.0 - self.center_momentum);
    }
}

impl<B: InferenceBackend> DinoLoss<B> {
    /// The loss for `student_out` [V*B, K] (view-major: global 1, global 2, then the locals)
    /// against teacher `targets` [2*B, K]. Averaged over the 2*(V-1) (teacher view i, student
    /// view v != i) pairs and over the batch.
    pub fn forward<A>(&self, student_out: Tensor<A, 2>, targets: Tensor<A, 2>) -> Tensor<A, 1>
    where
        A: AutodiffBackend<InnerBackend = B> + InferenceBackend,
    {
        let [rows, k] = student_out.dims();
        let b = targets.dims()[0] / 2;
        let views = rows / b;
        let student_out = in_dtype(student_out, DType::F32);
        let log_p = fused::scaled_log_softmax(student_out, 1.0 / self.student_temp);
        let log_p = log_p.reshape([views, b, k]);
        let q = targets.reshape([2, b, k]);
        // sum over v != i of log p_v = (sum over all v) - log p_i
        let others = log_p.clone().sum_dim(0) - log_p.narrow(0, 0, 2); // [2, B, K]
        let pairs = 2 * (views - 1);
        (q * others).sum().neg() / (pairs * b) as f64
    }
}

/// Entropies of the teacher targets [2B, K] of all devices: the mean entropy of a target,
/// and the entropy of their mean.
pub fn teacher_stats<B: InferenceBackend>(
    targets: Tensor<B, 2>,
    sync: &mut dyn Collective<B>,
) -> Result<TeacherStats, ParallelError> {
    let entropies = |p: Tensor<B, 2>| (p.clone() * p.clamp_min(1e-30).log()).sum_dim(1).neg();
    let rows = targets.dims()[0];
    let mean_entropy = entropies(targets.clone()).sum().div_scalar(rows as f64);
    let marginal = targets.mean_dim(0).squeeze_dim(0); // [K]
    let [mean_entropy, marginal] =
        mean_all(sync, vec![mean_entropy, marginal], "the teacher statistics")?
            .try_into()
            .expect("two means");
    Ok(TeacherStats {
        entropy: mean_entropy.into_scalar().elem(),
        marginal_entropy: entropies(marginal.unsqueeze_dim(0)).into_scalar().elem(),
    })
}
