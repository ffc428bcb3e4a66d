//! The host's part of each step, prepared one step ahead: this rank's image indices of the
//! global batch (and, with neighbour positives, each one's partner) and its views' augmentation
//! parameters. The next step's are drawn on a helper
//! thread while the current step computes, and reach the device without waiting for it
//! (pinned memory, asynchronous copy), so the host never holds the device back.

use std::sync::Arc;
use std::thread::JoinHandle;

use tch::{Device, Tensor};

use crate::augment::{self, COLUMNS};
use crate::config::Config;
use crate::data::shard;
use crate::neighbours::Neighbours;
use crate::rng::{epoch_order, partner_choices};
use crate::schedule::Position;

/// What does not change during a run: enough to draw any position's batch on any thread.
struct Plan {
    seed: u64,
    batch_size: usize,
    rank: usize,
    world: usize,
    n_train: usize,
    size: (usize, usize),
    augment: crate::config::AugmentConfig,
    /// The neighbour graph when second views are of neighbours.
    neighbours: Option<Arc<Neighbours>>,
}

/// One step's input on the host.
struct HostBatch {
    indices: Vec<i64>,
    table: Vec<f32>,
}

/// One step's input on the device: the images its views are made of (indices into the
/// training images: this rank's b images, then with neighbour positives each one's partner)
/// and the views' parameter table (rows `0..b` first views, `b..2b` second views).
pub struct StepInput {
    pub indices: Tensor,
    pub table: Tensor,
    /// The indices on the host, for images read from the data files instead of the device.
    pub host_indices: Vec<i64>,
}

pub struct Batches {
    plan: Arc<Plan>,
    steps_per_epoch: usize,
    epochs: [usize; 3],
    device: Device,
    /// The epoch order last used, by (stage, epoch).
    order: Option<(usize, usize, Arc<Vec<usize>>)>,
    ahead: Option<(Position, JoinHandle<HostBatch>)>,
}

impl Batches {
    pub fn new(
        cfg: &Config,
        (rank, world): (usize, usize),
        n_train: usize,
        size: (usize, usize),
        steps_per_epoch: usize,
        neighbours: Option<Arc<Neighbours>>,
        device: Device,
    ) -> Batches {
        Batches {
            plan: Arc::new(Plan {
                seed: cfg.seed,
                batch_size: cfg.batch_size,
                rank,
                world,
                n_train,
                size,
                augment: cfg.augment.clone(),
                neighbours,
            }),
            steps_per_epoch,
            epochs: cfg.epochs,
            device,
            order: None,
            ahead: None,
        }
    }

    fn order(&mut self, pos: Position) -> Arc<Vec<usize>> {
        match &self.order {
            Some((s, e, o)) if (*s, *e) == (pos.stage, pos.epoch) => Arc::clone(o),
            _ => {
                let plan = &self.plan;
                let o = Arc::new(epoch_order(plan.seed, pos.stage, pos.epoch, plan.n_train));
                self.order = Some((pos.stage, pos.epoch, Arc::clone(&o)));
                o
            }
        }
    }

    /// The input of the step at `pos` on the device; starts drawing the next step's.
    pub fn take(&mut self, pos: Position) -> StepInput {
        let host = match self.ahead.take() {
            Some((p, handle)) if p == pos => handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            _ => {
                let order = self.order(pos);
                draw(&self.plan, &order, pos)
            }
        };
        let next = pos.advance(self.steps_per_epoch, &self.epochs);
        if !next.finished() {
            let (plan, order) = (Arc::clone(&self.plan), self.order(next));
            let handle = std::thread::spawn(move || draw(&plan, &order, next));
            self.ahead = Some((next, handle));
        }
        let rows = host.table.len() / COLUMNS;
        StepInput {
            indices: to_device(&host.indices, self.device),
            table: to_device(&host.table, self.device).view([rows as i64, COLUMNS as i64]),
            host_indices: host.indices,
        }
    }
}

fn draw(plan: &Plan, order: &[usize], pos: Position) -> HostBatch {
    let batch = shard::global_batch(order, plan.batch_size, pos.batch);
    let mine = shard::rank_slice(batch, plan.rank, plan.world);
    let params = augment::draw_pairs(
        plan.seed,
        pos.stage,
        pos.epoch,
        mine,
        &plan.augment,
        plan.size,
    );
    let mut indices: Vec<i64> = mine.iter().map(|&i| i as i64).collect();
    if let Some(graph) = &plan.neighbours {
        let picks = partner_choices(plan.seed, pos.stage, pos.epoch, mine, graph.k());
        indices.extend(mine.iter().zip(picks).map(|(&i, c)| graph.of(i)[c] as i64));
    }
    HostBatch {
        indices,
        table: augment::param_table(&params, plan.size),
    }
}

/// `host` as a 1-D tensor on `device`. On a GPU through pinned memory with an asynchronous
/// copy: a copy from pageable memory would wait for the device to finish all queued work.
pub fn to_device<T: tch::kind::Element>(host: &[T], device: Device) -> Tensor {
    let t = Tensor::from_slice(host);
    match device {
        Device::Cpu => t,
        _ => t
            .pin_memory(device)
            .to_device_(device, T::KIND, true, false),
    }
}

/// Whether `count` images of `image_len` bytes fit the budget for keeping the training images
/// on the device.
pub fn fits_on_device(count: usize, image_len: usize) -> bool {
    (count * image_len) as u64 <= RESIDENT_BYTES
}

/// Training images kept on the device at most (CIFAR-10: 150 MB; a larger set is read from
/// its memory map each step instead).
const RESIDENT_BYTES: u64 = 4 << 30;

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(rank: usize, neighbours: Option<Neighbours>) -> Plan {
        Plan {
            seed: 5,
            batch_size: 8,
            rank,
            world: 2,
            n_train: 16,
            size: (4, 4),
            augment: Default::default(),
            neighbours: neighbours.map(Arc::new),
        }
    }

    #[test]
    fn with_neighbour_positives_each_image_is_followed_by_one_of_its_neighbours() {
        // Image i's three neighbours are 100 + i, 200 + i and 300 + i (ids only, never read).
        let ids = (0..16u32)
            .flat_map(|i| [100 + i, 200 + i, 300 + i])
            .collect();
        let graph = Neighbours::from_rows(3, ids);
        let order = epoch_order(5, 0, 0, 16);
        let pos = Position::START;
        let mut partners_seen = std::collections::HashSet::new();
        for rank in 0..2 {
            let plain = draw(&plan(rank, None), &order, pos);
            let paired = draw(&plan(rank, Some(graph.clone())), &order, pos);
            assert_eq!(plain.indices.len(), 4, "this rank's 4 of the global 8");
            assert_eq!(
                paired.indices[..4],
                plain.indices[..],
                "first views: the same images"
            );
            assert_eq!(paired.table, plain.table, "the same views' parameters");
            for (&image, &partner) in paired.indices[..4].iter().zip(&paired.indices[4..]) {
                assert!(
                    [100, 200, 300].iter().any(|b| partner == b + image),
                    "image {image} paired with {partner}"
                );
                partners_seen.insert(partner - image);
            }
        }
        assert!(
            partners_seen.len() > 1,
            "one neighbour chosen for every image"
        );
    }
}
