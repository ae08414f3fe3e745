//! Images from the pipeline to the model: u8 NHWC on the host -> normalized f32 NCHW on the
//! device, as the recipe's `ToTensor` + `Normalize`.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor, TensorData};
use dino_pipeline::batch::{Batch, Position};

/// ImageNet statistics, as the recipe's `Normalize`.
const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const STD: [f32; 3] = [0.229, 0.224, 0.225];

/// `bytes` holds `shape` = [n, H, W, 3] packed RGB; -> [n, 3, H, W]. The bytes go to the
/// device as a u8 tensor (a float tensor made from them would be converted to f32 on the
/// host, single-threaded, and upload 4 bytes per value); the cast to float and the
/// normalization run on the device.
pub fn to_device<B: Backend>(bytes: &[u8], shape: [usize; 4], device: &B::Device) -> Tensor<B, 4> {
    let data = TensorData::new(bytes.to_vec(), shape);
    normalize(Tensor::<B, 4, Int>::from_data(data, (device, DType::U8)).float())
}

/// [n, H, W, 3] values in 0..=255 -> [n, 3, H, W] normalized.
pub fn normalize<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let device = x.device();
    let mean = Tensor::<B, 1>::from_floats(MEAN, &device).reshape([1, 1, 1, 3]);
    let std = Tensor::<B, 1>::from_floats(STD, &device).reshape([1, 1, 1, 3]);
    ((x / 255.0 - mean) / std).permute([0, 3, 1, 2])
}

/// One batch on the device, normalized, NCHW.
pub struct Images<B: Backend> {
    /// [2B, 3, Hg, Wg]: global 1 then global 2
    pub globals: Tensor<B, 4>,
    /// [N*B, 3, Hl, Wl], view-major; None without local crops
    pub locals: Option<Tensor<B, 4>>,
    pub n_globals: usize,
    pub n_locals: usize,
    /// where the pipeline continues after this batch
    pub next: Position,
}

impl<B: Backend> Images<B> {
    pub fn from_batch(batch: &Batch, device: &B::Device) -> Self {
        let s = batch.shape;
        let n_globals = 2 * s.batch_size;
        let n_locals = s.local_crops * s.batch_size;
        let g = s.global_size as usize;
        let l = s.local_size as usize;
        Self {
            globals: to_device(&batch.globals, [n_globals, g, g, 3], device),
            locals: (n_locals > 0).then(|| to_device(&batch.locals, [n_locals, l, l, 3], device)),
            n_globals,
            n_locals,
            next: batch.next,
        }
    }
}
