//! Images from the pipeline to the model: u8 NHWC on the host -> normalized f32 NCHW on the
//! device, as the recipe's `ToTensor` + `Normalize`.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

/// ImageNet statistics, as the recipe's `Normalize`.
const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const STD: [f32; 3] = [0.229, 0.224, 0.225];

/// `bytes` holds `shape` = [n, H, W, 3] packed RGB; -> [n, 3, H, W]. The bytes travel as u8
/// and become f32 on the device.
pub fn to_device<B: Backend>(bytes: &[u8], shape: [usize; 4], device: &B::Device) -> Tensor<B, 4> {
    let x = Tensor::<B, 4>::from_data(TensorData::new(bytes.to_vec(), shape), device);
    let mean = Tensor::<B, 1>::from_floats(MEAN, device).reshape([1, 1, 1, 3]);
    let std = Tensor::<B, 1>::from_floats(STD, device).reshape([1, 1, 1, 3]);
    ((x / 255.0 - mean) / std).permute([0, 3, 1, 2])
}
