//! Weighted k-NN classification (`eval_knn.py`, recipe §2): L2-normalized features of the
//! train split form the bank; each val sample's top-k neighbours by cosine similarity vote
//! for their labels with weight exp(sim / T); top-1 and top-5 come from the summed votes.

use std::cmp::Ordering;

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use dino_pipeline::eval::{EvalBatch, EvalError, EvalReader, Skipped};
use serde::Serialize;

use crate::device::InferenceBackend;
use crate::images;
use crate::model::{Backbone, Norm, l2_normalize};

#[derive(Debug, thiserror::Error)]
pub enum KnnError {
    #[error(transparent)]
    Eval(#[from] EvalError),
    #[error("split '{split}' has unlabeled samples (label -1); k-NN needs labels on both splits")]
    Unlabeled { split: String },
    #[error("split '{split}': no sample decodes cleanly")]
    NothingDecoded { split: String },
    #[error("split '{split}': label {label} is outside the {classes} classes of the manifest")]
    Label {
        split: String,
        label: i32,
        classes: usize,
    },
}

/// What a sample's feature is.
pub enum Features<M> {
    /// The backbone's output (a ViT's CLS token after the final norm: the recipe's k-NN
    /// feature).
    Backbone(Box<M>),
    /// The normalized pixels of the evaluation crop: the floor any learned feature must beat.
    Pixels,
}

impl<M> Features<M> {
    /// [n, D], each row L2-normalized.
    fn compute<B: InferenceBackend>(
        &self,
        batch: &EvalBatch,
        size: usize,
        device: &B::Device,
    ) -> Tensor<B, 2>
    where
        M: Backbone<B>,
    {
        let x = images::to_device::<B>(&batch.pixels, [batch.len, size, size, 3], device);
        let features = match self {
            // evaluation: a batch norm uses its running statistics
            Features::Backbone(backbone) => backbone.forward(x, None, &mut Norm::Running),
            Features::Pixels => x.reshape([batch.len, 3 * size * size]),
        };
        l2_normalize(features)
    }
}

/// The features and labels of a whole split: [n, D] on the device, and the samples left
/// out because they did not decode cleanly.
pub struct Bank<B: Backend> {
    pub features: Tensor<B, 2>,
    pub labels: Vec<i32>,
    pub skipped: Vec<Skipped>,
}

/// Runs every sample of `reader` through `features`; `progress` gets the samples done.
pub fn extract<B: InferenceBackend, M: Backbone<B>>(
    features: &Features<M>,
    reader: EvalReader,
    split: &str,
    size: usize,
    device: &B::Device,
    mut progress: impl FnMut(u64),
) -> Result<Bank<B>, KnnError> {
    let classes = reader.classes.len();
    let mut rows = Vec::new();
    let mut labels = Vec::with_capacity(reader.len as usize);
    let mut skipped = Vec::new();
    for batch in reader {
        let mut batch = batch?;
        progress(batch.skipped.len() as u64);
        skipped.append(&mut batch.skipped);
        if batch.len == 0 {
            continue;
        }
        if let Some(&label) = batch
            .labels
            .iter()
            .find(|&&l| l < 0 || l as usize >= classes)
        {
            return Err(if label < 0 {
                KnnError::Unlabeled {
                    split: split.into(),
                }
            } else {
                KnnError::Label {
                    split: split.into(),
                    label,
                    classes,
                }
            });
        }
        rows.push(features.compute(&batch, size, device));
        labels.extend_from_slice(&batch.labels);
        progress(batch.len as u64);
    }
    if rows.is_empty() {
        return Err(KnnError::NothingDecoded {
            split: split.into(),
        });
    }
    Ok(Bank {
        features: Tensor::cat(rows, 0),
        labels,
        skipped,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct KnnResult {
    pub k: usize,
    /// percent
    pub top1: f64,
    /// percent; with fewer than 5 classes (or k < 5) the first min(5, k) classes, as
    /// eval_knn.py counts
    pub top5: f64,
}

/// Bytes of similarities held at once: val rows are taken in chunks of this size.
const CHUNK_BYTES: usize = 256 << 20;

/// Classifies every `val` sample by its neighbours in `train`, for each k in `ks`.
/// `progress` gets the val samples done.
pub fn classify<B: InferenceBackend>(
    train: &Bank<B>,
    val: &Bank<B>,
    classes: usize,
    ks: &[usize],
    temperature: f32,
    mut progress: impl FnMut(u64),
) -> Vec<KnnResult> {
    let n_train = train.labels.len();
    let max_k = ks.iter().copied().max().unwrap_or(0).min(n_train);
    let chunk = (CHUNK_BYTES / (4 * n_train.max(1))).max(1);
    let bank_t = train.features.clone().transpose(); // [D, n_train]
    let mut correct = vec![(0u64, 0u64); ks.len()];
    let mut order: Vec<u32> = Vec::with_capacity(n_train);
    let mut scores = vec![0f32; classes];
    let mut ranked: Vec<usize> = (0..classes).collect();
    let n_val = val.labels.len();
    for start in (0..n_val).step_by(chunk) {
        let rows = chunk.min(n_val - start);
        let sim = val
            .features
            .clone()
            .narrow(0, start, rows)
            .matmul(bank_t.clone()); // [rows, n_train]
        let sim = sim
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .expect("f32 data");
        for (r, row) in sim.chunks_exact(n_train).enumerate() {
            let label = val.labels[start + r] as usize;
            nearest(row, max_k, &mut order);
            for (ki, &k) in ks.iter().enumerate() {
                scores.fill(0.0);
                for &i in &order[..k.min(max_k)] {
                    scores[train.labels[i as usize] as usize] +=
                        (row[i as usize] / temperature).exp();
                }
                ranked.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
                correct[ki].0 += u64::from(ranked[0] == label);
                correct[ki].1 += u64::from(ranked[..5.min(k).min(classes)].contains(&label));
            }
        }
        progress(rows as u64);
    }
    let pct = |c: u64| 100.0 * c as f64 / n_val.max(1) as f64;
    ks.iter()
        .zip(correct)
        .map(|(&k, (c1, c5))| KnnResult {
            k,
            top1: pct(c1),
            top5: pct(c5),
        })
        .collect()
}

/// The indices of the `k` largest similarities, largest first (ties: lower index first),
/// in `order`.
fn nearest(row: &[f32], k: usize, order: &mut Vec<u32>) {
    order.clear();
    order.extend(0..row.len() as u32);
    let cmp = |a: &u32, b: &u32| -> Ordering {
        row[*b as usize].total_cmp(&row[*a as usize]).then(a.cmp(b))
    };
    if k < order.len() {
        order.select_nth_unstable_by(k, cmp);
        order.truncate(k);
    }
    order.sort_unstable_by(cmp);
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::TensorData;

    fn bank(rows: &[[f32; 2]], labels: &[i32]) -> Bank<Flex> {
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        let t = Tensor::from_data(TensorData::new(flat, [rows.len(), 2]), &Default::default());
        Bank {
            features: l2_normalize(t),
            labels: labels.to_vec(),
            skipped: Vec::new(),
        }
    }

    /// Votes computed by hand: the query at 0 degrees has neighbours at 10 (class 1),
    /// 12 (class 0), 14 (class 0) and 170 degrees (class 1).
    #[test]
    fn weighted_votes_by_hand() {
        let deg = |d: f32| [d.to_radians().cos(), d.to_radians().sin()];
        let train = bank(
            &[deg(170.0), deg(12.0), deg(10.0), deg(14.0)],
            &[1, 0, 1, 0],
        );
        let val = bank(&[deg(0.0)], &[0]);
        let t = 0.07;
        let w = |d: f32| (d.to_radians().cos() / t).exp();
        // k = 1: class 1 only. k = 3: class 0 has w(12) + w(14), class 1 has w(10).
        assert!(w(12.0) + w(14.0) > w(10.0));
        let results = classify(&train, &val, 2, &[1, 3], t, |_| {});
        assert_eq!(results[0].top1, 0.0);
        assert_eq!(results[1].top1, 100.0);
        // "top-5" looks at the first min(5, k) classes, as eval_knn.py: one for k = 1
        assert_eq!(results[0].top5, 0.0);
        assert_eq!(results[1].top5, 100.0);

        // the weights outvote the majority: one neighbour at 10 degrees (class 1) beats two
        // at 40 and 45 (class 0)
        assert!(w(10.0) > w(40.0) + w(45.0));
        let train = bank(
            &[deg(170.0), deg(40.0), deg(10.0), deg(45.0)],
            &[0, 0, 1, 0],
        );
        let val = bank(&[deg(0.0)], &[1]);
        assert_eq!(classify(&train, &val, 2, &[3], t, |_| {})[0].top1, 100.0);
    }

    #[test]
    fn nearest_orders_and_breaks_ties_by_index() {
        let mut order = Vec::new();
        nearest(&[0.1, 0.9, 0.5, 0.9, -1.0], 3, &mut order);
        assert_eq!(order, [1, 3, 2]);
        nearest(&[0.3, 0.2], 5, &mut order);
        assert_eq!(order, [0, 1]);
    }
}
