//! Neighbour positives (`augment.neighbours`): each training image's k nearest training images
//! in pixel space, so that a step can pair a view of an image with a view of one of its
//! neighbours instead of a second view of itself. Damrich et al. (ICLR 2023) showed that
//! contrastive learning with neighbour pairs is t-SNE in another form; with augmentations alone
//! a short CPU run maps far below t-SNE of the pixels, and neighbours closed that gap
//! (docs/picmap-findings.md, "Neighbour-space positives").
//!
//! The space is the one picmap found best: square roots of the pixels (faint strokes count
//! beside bright areas), centred and projected on their leading principal components; the
//! search over it is exact. Rank 0 computes the graph on one thread, so that it does not depend
//! on how many ranks share the node, and sends it to every rank: all ranks pair with the same
//! neighbours, on any number of ranks.

use std::time::Instant;

use tch::{Kind, Tensor};
use tracing::info;

use crate::data::Dataset;
use crate::dist::Collectives;

/// Training images the exhaustive search takes at most: its N² distances on one thread take
/// about a minute at this size.
pub const MAX_IMAGES: usize = 100_000;
/// Principal components the search runs on (fewer when the images have fewer pixels).
const PCA_DIMS: i64 = 50;
/// Images whose pixels set the principal components (enough for stable leading directions).
const PCA_SAMPLE: i64 = 10_000;
/// Query rows per block of the exact search: a block's distances are 1024 × N floats.
const ROW_BLOCK: i64 = 1024;

/// The k nearest training images of every training image, nearest first, itself excluded.
#[derive(Debug, Clone, PartialEq)]
pub struct Neighbours {
    k: usize,
    ids: Vec<u32>,
}

impl Neighbours {
    /// A graph of `ids.len() / k` images from its rows (nearest first).
    pub fn from_rows(k: usize, ids: Vec<u32>) -> Neighbours {
        Neighbours { k, ids }
    }

    /// The neighbours of training image `image`, nearest first.
    pub fn of(&self, image: usize) -> &[u32] {
        &self.ids[image * self.k..(image + 1) * self.k]
    }

    pub fn k(&self) -> usize {
        self.k
    }

    /// The share of neighbour pairs among the first `labels.len()` images whose labels agree:
    /// how often a neighbour positive is of the image's own class (logged, never trained on).
    pub fn same_label_share(&self, labels: &[i64]) -> f64 {
        let n = labels.len().min(self.ids.len() / self.k.max(1));
        let (mut same, mut pairs) = (0usize, 0usize);
        for (i, label) in labels.iter().enumerate().take(n) {
            for &j in self.of(i).iter().filter(|&&j| (j as usize) < labels.len()) {
                pairs += 1;
                same += usize::from(labels[j as usize] == *label);
            }
        }
        same as f64 / pairs.max(1) as f64
    }
}

/// The exact `k` nearest neighbours of each of `images` (u8, N×C×H×W, on the CPU) among the
/// others, on one torch thread.
pub fn search(images: &Tensor, k: usize) -> Neighbours {
    let _guard = tch::no_grad_guard();
    let threads = tch::get_num_threads();
    tch::set_num_threads(1);
    let n = images.size()[0];
    let x = images.to_kind(Kind::Float).view([n, -1]).sqrt();
    let mean = x
        .narrow(0, 0, n.min(PCA_SAMPLE))
        .mean_dim(0, true, Kind::Float);
    let centred = x - &mean; // `x` is not kept: N×D floats can be a gigabyte
    let sample = centred.narrow(0, 0, n.min(PCA_SAMPLE));
    // Eigenvectors of the covariance, in ascending order of variance: the last ones lead.
    let (_, vectors) = sample.tr().mm(&sample).linalg_eigh("L");
    let pixels = vectors.size()[0];
    let dims = PCA_DIMS.min(pixels);
    let y = centred.mm(&vectors.narrow(1, pixels - dims, dims));
    let norms = y.square().sum_dim_intlist(1, false, Kind::Float);
    let mut ids = Vec::with_capacity(n as usize * k);
    for start in (0..n).step_by(ROW_BLOCK as usize) {
        let rows = ROW_BLOCK.min(n - start);
        let block = y.narrow(0, start, rows);
        let distances = (block.mm(&y.tr()) * -2.0)
            + norms.narrow(0, start, rows).unsqueeze(1)
            + norms.unsqueeze(0);
        // An image is not its own neighbour: its entry is (row i, column start + i).
        let _ = distances.diagonal(start, 0, 1).fill_(f64::INFINITY);
        let (_, nearest) = distances.topk(k as i64, 1, false, true);
        let nearest = Vec::<i64>::try_from(nearest.contiguous().view([-1]))
            .expect("topk gives a 1-D int64 tensor"); // ok: a contiguous CPU int64 tensor
        ids.extend(nearest.into_iter().map(|j| j as u32));
    }
    tch::set_num_threads(threads);
    Neighbours::from_rows(k, ids)
}

/// The neighbour graph of the first `n_train` training images on every rank: rank 0 searches
/// and broadcasts it.
pub fn shared(comm: &dyn Collectives, data: &Dataset, n_train: usize, k: usize) -> Neighbours {
    let started = Instant::now();
    let mut bytes = vec![0u8; n_train * k * 4];
    if comm.is_root() {
        let graph = search(&data.gather(0..n_train), k);
        for (out, id) in bytes.chunks_exact_mut(4).zip(&graph.ids) {
            out.copy_from_slice(&id.to_le_bytes());
        }
    }
    comm.broadcast_host(&mut bytes);
    let ids = bytes
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let graph = Neighbours::from_rows(k, ids);
    if comm.is_root() {
        let labelled = n_train.min(data.n_train);
        info!(
            images = n_train,
            k,
            same_class = format!("{:.3}", graph.same_label_share(&data.labels[..labelled])),
            seconds = format!("{:.1}", started.elapsed().as_secs_f64()),
            "neighbour positives"
        );
    }
    graph
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Grey 1×4×4 images, image i all `values[i]`.
    fn images(values: &[u8]) -> Tensor {
        let n = values.len() as i64;
        Tensor::from_slice(values)
            .view([n, 1, 1, 1])
            .expand([n, 1, 4, 4], false)
            .contiguous()
    }

    #[test]
    fn the_nearest_images_come_first_and_an_image_is_not_its_own_neighbour() {
        // Square roots of 0, 1, 4, 9, 100, 121, 144: 0, 1, 2, 3, 10, 11, 12 on every pixel.
        let graph = search(&images(&[0, 1, 4, 9, 100, 121, 144]), 2);
        assert_eq!(graph.of(0), &[1, 2]);
        assert_eq!(graph.of(3), &[2, 1]);
        assert_eq!(graph.of(4), &[5, 6]);
        assert_eq!(graph.of(6), &[5, 4]);
        for i in 0..7 {
            assert!(
                !graph.of(i).contains(&(i as u32)),
                "image {i} is its own neighbour"
            );
        }
    }

    #[test]
    fn the_search_over_blocks_equals_the_brute_force_ranking() {
        // More images than one block of rows, with distinct distances: random grey noise.
        tch::manual_seed(3);
        let n = ROW_BLOCK + 37;
        let x = Tensor::randint(256, [n, 1, 5, 5], (Kind::Uint8, tch::Device::Cpu));
        let graph = search(&x, 3);
        // Brute force in f64 over the same projection: all 25 pixels (fewer than PCA_DIMS), so
        // the projection is a rotation and distances are those of the centred square roots.
        let y = x.to_kind(Kind::Double).view([n, -1]).sqrt();
        for i in [0, 5, ROW_BLOCK - 1, ROW_BLOCK, n - 1] {
            let d = (&y - y.get(i))
                .square()
                .sum_dim_intlist(1, false, Kind::Double);
            let _ = d.get(i).fill_(f64::INFINITY);
            let (_, want) = d.topk(3, 0, false, true);
            let want: Vec<u32> = Vec::<i64>::try_from(want)
                .unwrap()
                .into_iter()
                .map(|j| j as u32)
                .collect();
            assert_eq!(graph.of(i as usize), &want[..], "image {i}");
        }
    }

    #[test]
    fn the_same_label_share_counts_agreeing_pairs() {
        let graph = Neighbours::from_rows(2, vec![1, 2, 0, 2, 0, 1]);
        // Image 0 and 1 agree, 2 differs: pairs 0-1 and 1-0 agree out of 6.
        assert!((graph.same_label_share(&[7, 7, 8]) - 2.0 / 6.0).abs() < 1e-12);
    }
}
