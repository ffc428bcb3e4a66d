//! Which images each rank reads at each step.
//!
//! Every epoch has one permutation of the training images, drawn from (seed, stage, epoch)
//! alone; global batch `k` is its `k`-th run of `batch_size` images, and rank `r` of `W` takes
//! the `r`-th of `W` equal slices of that. So the global batch sequence is the same for every
//! world size, and a run can resume mid-epoch on another number of ranks.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// A (stage, epoch) position's random stream: the ChaCha key is derived from all three numbers
/// so that no two epochs of any stage share a stream.
pub fn epoch_rng(seed: u64, stage: usize, epoch: usize, purpose: u8) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&(stage as u64).to_le_bytes());
    key[16..24].copy_from_slice(&(epoch as u64).to_le_bytes());
    key[24] = purpose;
    ChaCha8Rng::from_seed(key)
}

/// Stream purposes, so the permutation and the augmentations never share random numbers.
pub const ORDER: u8 = 1;
pub const AUGMENT: u8 = 2;

/// The order in which an epoch visits the `n` training images.
pub fn epoch_order(seed: u64, stage: usize, epoch: usize, n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut epoch_rng(seed, stage, epoch, ORDER));
    order
}

/// Global batches per epoch; the last incomplete batch is dropped, as in the reference.
pub fn steps_per_epoch(n: usize, batch_size: usize) -> usize {
    n / batch_size
}

/// The image indices of global batch `k` of `order`.
pub fn global_batch(order: &[usize], batch_size: usize, k: usize) -> &[usize] {
    &order[k * batch_size..(k + 1) * batch_size]
}

/// Rank `rank`'s slice of a global batch split among `world` ranks (equal slices).
pub fn rank_slice(batch: &[usize], rank: usize, world: usize) -> &[usize] {
    let per = batch.len() / world;
    &batch[rank * per..(rank + 1) * per]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_global_batch_sequence_does_not_depend_on_the_world_size() {
        let (n, b) = (103, 12);
        let order = epoch_order(7, 0, 3, n);
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..n).collect::<Vec<_>>(), "a permutation");
        for k in 0..steps_per_epoch(n, b) {
            let whole = global_batch(&order, b, k);
            for world in [1, 2, 3, 4, 6] {
                let joined: Vec<usize> = (0..world)
                    .flat_map(|r| rank_slice(whole, r, world).to_vec())
                    .collect();
                assert_eq!(joined, whole, "world {world}, step {k}");
            }
        }
        assert_ne!(order, epoch_order(7, 0, 4, n), "epochs differ");
        assert_ne!(order, epoch_order(7, 1, 3, n), "stages differ");
        assert_eq!(order, epoch_order(7, 0, 3, n), "reproducible");
    }
}
