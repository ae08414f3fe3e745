//! The last block's CLS attention (`visualize_attention.py`, recipe §2): for every head, the
//! CLS query's attention over the patch tokens, on the patch grid, and the masks that keep a
//! given share of each head's attention mass.

use burn::tensor::Tensor;

use crate::device::InferenceBackend;
use crate::model::VisionTransformer;

/// One image's maps: `heads` maps of `grid_h x grid_w` patches, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionMaps {
    pub heads: usize,
    pub grid_h: usize,
    pub grid_w: usize,
    /// [heads, grid_h * grid_w]; each head's row sums to 1 minus its CLS-to-CLS weight
    pub maps: Vec<f32>,
}

impl AttentionMaps {
    pub fn head(&self, h: usize) -> &[f32] {
        let n = self.grid_h * self.grid_w;
        &self.maps[h * n..(h + 1) * n]
    }

    /// The heads' average map.
    pub fn mean(&self) -> Vec<f32> {
        let n = self.grid_h * self.grid_w;
        (0..n)
            .map(|i| (0..self.heads).map(|h| self.maps[h * n + i]).sum::<f32>() / self.heads as f32)
            .collect()
    }
}

/// `image` is [1, 3, H, W] with H and W multiples of the patch size.
pub fn cls_attention<B: InferenceBackend>(
    vit: &VisionTransformer<B>,
    image: Tensor<B, 4>,
    patch: usize,
) -> AttentionMaps {
    let [_, _, h, w] = image.dims();
    let attn = vit.last_attention(image); // [1, heads, 1 + n, 1 + n]
    let [_, heads, n1, _] = attn.dims();
    let cls = attn.narrow(2, 0, 1).narrow(3, 1, n1 - 1); // [1, heads, 1, n]
    let maps = cls
        .reshape([heads * (n1 - 1)])
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("f32 data");
    AttentionMaps {
        heads,
        grid_h: h / patch,
        grid_w: w / patch,
        maps,
    }
}

/// The patches that hold the top `threshold` share of a map's mass: sorted ascending and
/// normalized to sum 1, a patch is kept when the cumulative sum up to it exceeds
/// `1 - threshold`, as visualize_attention.py does.
pub fn threshold_mask(map: &[f32], threshold: f32) -> Vec<bool> {
    let total: f32 = map.iter().sum();
    let mut order: Vec<usize> = (0..map.len()).collect();
    order.sort_by(|&a, &b| map[a].total_cmp(&map[b]).then(a.cmp(&b)));
    let mut keep = vec![false; map.len()];
    let mut cumulative = 0.0f32;
    for i in order {
        cumulative += map[i] / total;
        keep[i] = cumulative > 1.0 - threshold;
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_keeps_the_largest_patches_up_to_the_share() {
        // normalized: 0.05, 0.1, 0.15, 0.3, 0.4; ascending cumsum 0.05, 0.15, 0.3, 0.6, 1.0
        let map = [0.3, 0.05, 0.4, 0.1, 0.15].map(|v| v * 0.8);
        assert_eq!(
            threshold_mask(&map, 0.6),
            [true, false, true, false, false],
            "0.6 of the mass: the two largest (0.7)"
        );
        assert_eq!(threshold_mask(&map, 0.75), [true, false, true, false, true]);
        assert!(threshold_mask(&map, 1.0).iter().all(|&k| k));
    }

    #[test]
    fn mean_averages_heads() {
        let maps = AttentionMaps {
            heads: 2,
            grid_h: 1,
            grid_w: 2,
            maps: vec![0.2, 0.6, 0.4, 0.0],
        };
        assert_eq!(maps.head(1), [0.4, 0.0]);
        assert_eq!(maps.mean(), vec![0.3, 0.3]);
    }
}
