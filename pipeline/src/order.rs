//! The order in which an epoch visits the samples, and each rank's share of it.
//!
//! Row groups are shuffled, cut into windows of `window` row groups, and the samples of each
//! window shuffled together: a reader holds one window's row groups at a time, yet a sample's
//! neighbours in a batch come from several row groups of several shards. The order is a pure
//! function of (seed, epoch).

use crate::dataset::RowGroup;
use crate::rng;

/// Stream ids of [`rng::rng`] reserved for epoch orders: `EPOCH_STREAM + epoch`.
const EPOCH_STREAM: u64 = 1 << 32;

/// A sample by row group (index into the dataset's row groups) and row within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SampleRef {
    pub row_group: u32,
    pub row: u32,
}

/// The whole epoch's order (all ranks).
pub fn epoch_order(
    row_groups: &[RowGroup],
    seed: u64,
    epoch: u64,
    window: usize,
) -> Vec<SampleRef> {
    let mut r = rng::rng(seed, EPOCH_STREAM.wrapping_add(epoch));
    let mut groups: Vec<u32> = (0..row_groups.len() as u32).collect();
    rng::shuffle(&mut groups, &mut r);
    let total: usize = row_groups.iter().map(|g| g.rows as usize).sum();
    let mut order = Vec::with_capacity(total);
    for chunk in groups.chunks(window.max(1)) {
        let start = order.len();
        for &g in chunk {
            order.extend(
                (0..row_groups[g as usize].rows).map(|row| SampleRef { row_group: g, row }),
            );
        }
        rng::shuffle(&mut order[start..], &mut r);
    }
    order
}

/// How many samples each rank takes per epoch: the same for all ranks and a whole number of
/// batches; the remainder of the epoch (fewer than `world * batch` samples) is dropped.
pub fn samples_per_rank(len: u64, world: usize, batch: usize) -> u64 {
    len / world as u64 / batch as u64 * batch as u64
}

/// Rank `rank`'s share of an epoch's order: the epoch is cut into global batches of
/// `world * batch` samples, and each rank takes its `batch` consecutive samples of each. So
/// the ranks' k-th batches, concatenated in rank order, are the k-th batch a single rank of
/// `world * batch` would get: a run on several devices trains on the batches of one device.
pub fn rank_share(order: &[SampleRef], rank: usize, world: usize, batch: usize) -> Vec<SampleRef> {
    let per_rank = samples_per_rank(order.len() as u64, world, batch) as usize;
    order
        .chunks_exact(world * batch)
        .take(per_rank / batch)
        .flat_map(|global| &global[rank * batch..(rank + 1) * batch])
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups(sizes: &[u32]) -> Vec<RowGroup> {
        let mut first = 0;
        sizes
            .iter()
            .enumerate()
            .map(|(i, &rows)| {
                let g = RowGroup {
                    shard: i / 2,
                    index: i % 2,
                    rows,
                    first,
                    bytes: 0,
                };
                first += u64::from(rows);
                g
            })
            .collect()
    }

    #[test]
    fn an_epoch_visits_every_sample_once_in_a_seeded_order() {
        let rgs = groups(&[10, 7, 10, 3, 10, 10]);
        let a = epoch_order(&rgs, 5, 0, 2);
        assert_eq!(a, epoch_order(&rgs, 5, 0, 2));
        assert_ne!(a, epoch_order(&rgs, 5, 1, 2), "epochs differ");
        assert_ne!(a, epoch_order(&rgs, 6, 0, 2), "seeds differ");
        let mut sorted = a.clone();
        sorted.sort();
        let all: Vec<_> = rgs
            .iter()
            .enumerate()
            .flat_map(|(g, rg)| {
                (0..rg.rows).map(move |row| SampleRef {
                    row_group: g as u32,
                    row,
                })
            })
            .collect();
        assert_eq!(sorted, all);
    }

    #[test]
    fn a_window_mixes_its_row_groups_and_only_them() {
        let rgs = groups(&[50; 8]);
        let order = epoch_order(&rgs, 1, 3, 4);
        for window in order.chunks(200) {
            let mut seen: Vec<u32> = window.iter().map(|s| s.row_group).collect();
            seen.sort();
            seen.dedup();
            assert_eq!(seen.len(), 4, "each window spans 4 row groups");
            // the first 20 samples already draw from several row groups
            let mut head: Vec<u32> = window[..20].iter().map(|s| s.row_group).collect();
            head.sort();
            head.dedup();
            assert!(head.len() >= 3, "{head:?}");
        }
    }

    #[test]
    fn ranks_get_disjoint_equal_whole_batches() {
        let rgs = groups(&[37, 41, 29, 50]);
        let order = epoch_order(&rgs, 2, 0, 2);
        let (world, batch) = (3, 8);
        let shares: Vec<_> = (0..world)
            .map(|r| rank_share(&order, r, world, batch))
            .collect();
        for share in &shares {
            assert_eq!(share.len(), 48, "157 / 3 = 52 -> 6 batches of 8");
        }
        let mut all: Vec<_> = shares.concat();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 144, "disjoint");
    }

    #[test]
    fn the_ranks_batches_together_are_one_ranks_batches() {
        let rgs = groups(&[37, 41, 29, 50]);
        let order = epoch_order(&rgs, 2, 0, 2);
        let one = rank_share(&order, 0, 1, 12);
        let shares: Vec<_> = (0..3).map(|r| rank_share(&order, r, 3, 4)).collect();
        assert_eq!(one.len(), 156);
        for (k, global) in one.chunks(12).enumerate() {
            let parts: Vec<_> = shares
                .iter()
                .flat_map(|s| &s[k * 4..(k + 1) * 4])
                .copied()
                .collect();
            assert_eq!(parts, global, "batch {k}");
        }
    }
}
