//! Which images each rank reads at each step.
//!
//! Every epoch has one permutation of the training images, drawn from (seed, stage, epoch)
//! alone; global batch `k` is its `k`-th run of `batch_size` images, and rank `r` of `W` takes
//! the `r`-th of `W` equal slices of that. So the global batch sequence is the same for every
//! world size, and a run can resume mid-epoch on another number of ranks.

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
        let order = crate::rng::epoch_order(7, 0, 3, n);
        for k in 0..steps_per_epoch(n, b) {
            let whole = global_batch(&order, b, k);
            for world in [1, 2, 3, 4, 6] {
                let joined: Vec<usize> = (0..world)
                    .flat_map(|r| rank_slice(whole, r, world).to_vec())
                    .collect();
                assert_eq!(joined, whole, "world {world}, step {k}");
            }
        }
    }
}
