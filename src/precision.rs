//! Mixed precision: what `run.precision` selects, and the casts that carry it. The models
//! compute in their input's dtype; parameters, optimizer moments, the EMA teacher and the
//! centre stay f32, and the statistics that bf16 would spoil run in f32 (the split that
//! PyTorch's autocast makes).

use burn::tensor::backend::Backend;
use burn::tensor::{DType, FloatDType, Tensor};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// everything in f32
    #[default]
    Fp32,
    /// matmuls, convolutions and attention in bf16 (f32 master weights)
    Bf16,
}

impl Precision {
    /// The dtype the networks compute in.
    pub fn dtype(self) -> DType {
        match self {
            Precision::Fp32 => DType::F32,
            Precision::Bf16 => DType::BF16,
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
        })
    }
}

/// `t` in `dtype`: an f32 parameter where it meets bf16 activations, say. The cast's
/// backward casts the gradient back, so parameters get f32 gradients.
pub fn in_dtype<B: Backend, const D: usize>(t: Tensor<B, D>, dtype: DType) -> Tensor<B, D> {
    if t.dtype() == dtype {
        t
    } else {
        t.cast(FloatDType::from(dtype))
    }
}

/// `f` of `x` computed in f32, returned in `x`'s dtype (layer norm's statistics, a softmax,
/// a norm).
pub fn in_f32<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    f: impl FnOnce(Tensor<B, D>) -> Tensor<B, D>,
) -> Tensor<B, D> {
    let dtype = x.dtype();
    in_dtype(f(in_dtype(x, DType::F32)), dtype)
}
