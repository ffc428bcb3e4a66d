//! The run's random streams, all derived from `seed` and a place in the schedule: the order in
//! which an epoch visits the images, and each view's augmentation. None depends on the rank or
//! the world size, so a run gives the same global batches on any number of ranks and resumes
//! from its position alone (there is no generator state to save).

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// What a stream is for, so that the permutation and the augmentations never share numbers.
#[derive(Debug, Clone, Copy)]
enum Purpose {
    Order = 1,
    Augment = 2,
    Partner = 3,
}

/// A (stage, epoch) position's stream for `purpose`: the ChaCha key holds all of them, so no
/// two epochs of any stage share a stream.
fn epoch_rng(seed: u64, stage: usize, epoch: usize, purpose: Purpose) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&(stage as u64).to_le_bytes());
    key[16..24].copy_from_slice(&(epoch as u64).to_le_bytes());
    key[24] = purpose as u8;
    ChaCha8Rng::from_seed(key)
}

/// The order in which an epoch visits the `n` training images.
pub fn epoch_order(seed: u64, stage: usize, epoch: usize, n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut epoch_rng(seed, stage, epoch, Purpose::Order));
    order
}

/// The augmentation streams of one (stage, epoch): [`ViewStreams::view`] numbers them by image
/// and view, so the draw of a view does not depend on which rank makes it.
pub struct ViewStreams(ChaCha8Rng);

impl ViewStreams {
    pub fn new(seed: u64, stage: usize, epoch: usize) -> ViewStreams {
        ViewStreams(epoch_rng(seed, stage, epoch, Purpose::Augment))
    }

    /// The stream of view `view` (0 or 1) of image `image`.
    pub fn view(&self, image: usize, view: u64) -> ChaCha8Rng {
        let mut rng = self.0.clone();
        rng.set_stream(2 * image as u64 + view);
        rng
    }
}

/// Which of its `k` neighbours each of `images` is paired with in one (stage, epoch): a
/// stream per image, so the choice does not depend on which rank makes it.
pub fn partner_choices(
    seed: u64,
    stage: usize,
    epoch: usize,
    images: &[usize],
    k: usize,
) -> Vec<usize> {
    let base = epoch_rng(seed, stage, epoch, Purpose::Partner);
    images
        .iter()
        .map(|&image| {
            let mut rng = base.clone();
            rng.set_stream(image as u64);
            rand::Rng::random_range(&mut rng, 0..k)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn orders_are_permutations_that_differ_by_epoch_and_stage() {
        let order = epoch_order(7, 0, 3, 103);
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..103).collect::<Vec<_>>(), "a permutation");
        assert_ne!(order, epoch_order(7, 0, 4, 103), "epochs differ");
        assert_ne!(order, epoch_order(7, 1, 3, 103), "stages differ");
        assert_eq!(order, epoch_order(7, 0, 3, 103), "reproducible");
    }

    #[test]
    fn view_streams_differ_by_image_view_and_purpose() {
        let s = ViewStreams::new(7, 0, 3);
        let first = |mut r: ChaCha8Rng| r.random::<u64>();
        assert_eq!(
            first(s.view(5, 0)),
            first(ViewStreams::new(7, 0, 3).view(5, 0))
        );
        assert_ne!(first(s.view(5, 0)), first(s.view(5, 1)));
        assert_ne!(first(s.view(5, 0)), first(s.view(6, 0)));
        let order_stream = epoch_rng(7, 0, 3, Purpose::Order);
        assert_ne!(first(s.view(0, 0)), first(order_stream));
    }

    #[test]
    fn partner_choices_are_per_image_and_cover_every_neighbour() {
        let images: Vec<usize> = (0..2000).collect();
        let all = partner_choices(7, 0, 3, &images, 5);
        // An image's choice is the same whichever other images share its call (rank slices).
        assert_eq!(
            partner_choices(7, 0, 3, &images[1234..1236], 5),
            all[1234..1236]
        );
        assert_ne!(all, partner_choices(7, 0, 4, &images, 5), "epochs differ");
        for j in 0..5 {
            let count = all.iter().filter(|&&c| c == j).count();
            assert!(
                (300..500).contains(&count),
                "neighbour {j} chosen {count} times of 2000"
            );
        }
    }
}
