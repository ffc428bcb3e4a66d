//! The host's part of each step, prepared one step ahead: this rank's image indices of the
//! global batch and its views' augmentation parameters. The next step's are drawn on a helper
//! thread while the current step computes, and reach the device without waiting for it
//! (pinned memory, asynchronous copy), so the host never holds the device back.

use std::sync::Arc;
use std::thread::JoinHandle;

use tch::{Device, Tensor};

use crate::augment::{self, COLUMNS};
use crate::config::Config;
use crate::data::shard;
use crate::rng::epoch_order;
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
}

/// One step's input on the host.
struct HostBatch {
    indices: Vec<i64>,
    table: Vec<f32>,
}

/// One step's input on the device: this rank's image indices (into the training images) and
/// their views' parameter table (rows `0..n` first views, `n..2n` second views).
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
    HostBatch {
        indices: mine.iter().map(|&i| i as i64).collect(),
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
