//! The training loop. One step, as data:
//!
//! ```text
//! this rank's indices of global batch k (+ their neighbour partners) + its views' parameters
//!   (drawn a step ahead) → images (resident on the device) → two augmented views → network
//!   → z (2b×d)
//!   → all-gather → Z (2B×d, a leaf) → this rank's part of the loss → dL_r/dZ
//!   → reduce-scatter (sum) → dL/dz (own rows) → backward into the flat gradient buffer
//!   → all-reduce (gradients + loss + stop flag) → clip → SGD on the stage's span
//! ```
//! Every rank holds the same parameters and takes the same steps; rank 0 writes. The network's
//! passes, whole or in micro-batches, are in [`passes`]. A step's loss
//! and stop flag stay on the device until the next step is queued (read one step late, and at
//! every epoch end), so nothing in a step waits for the device.

mod passes;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tch::{nn, Device, Kind, Tensor};
use tracing::{info, warn};

use crate::augment::{self, Normalize};
use crate::batches::{self, Batches, StepInput};
use crate::checkpoint::{self, Expect, Meta};
use crate::config::Config;
use crate::data::{shard, Dataset, Fingerprint};
use crate::dist::{self, Collectives};
pub use crate::error::TrainError;
use crate::loss::{cauchy_infonce_part_and_gradient, Rows};
use crate::model::{Network, Readout};
use crate::neighbours;
use crate::optim::{FlatParams, Span};
use crate::outputs::folder::RunFolder;
use crate::outputs::progress::Progress;
use crate::outputs::{report, Phases};
use crate::schedule::{self, Position, STAGE_NAMES};
use crate::timing::{Phase, PhaseClock};

/// Images per forward pass when embedding the whole data set.
const EMBED_CHUNK: usize = 1024;
/// Training images whose pixels set the normalisation (enough for stable channel statistics).
const NORM_SAMPLE: usize = 10_000;

/// How a `train` call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// All stages ran; the embedding and metrics are written.
    Finished,
    /// `max_steps` was reached; a checkpoint holds the position.
    StepLimit,
    /// A stop was requested (signal); a checkpoint holds the position.
    Stopped,
}

/// What the run is, resolved once before any step.
pub struct Trainer<'a> {
    cfg: Config,
    comm: &'a dyn Collectives,
    data: Dataset,
    out: PathBuf,
    device: Device,
    vs: nn::VarStore,
    net: Network,
    flat: FlatParams,
    /// What each stage trains, as a span of the flat buffers.
    spans: Vec<Span>,
    norm: Normalize,
    /// The training images on the device (u8 N×C×H×W), when they fit.
    resident: Option<Tensor>,
    n_train: usize,
    steps_per_epoch: usize,
    /// What the data is, recorded in every checkpoint.
    fingerprint: Fingerprint,
    /// Rank 0's hold on the run folder.
    folder: Option<RunFolder>,
    /// Where the run continues: the newest checkpoint's position, or the start.
    start: Position,
    last_checkpoint: String,
}

/// The per-rank settings every rank must agree on before any step: errors here are reported
/// by the lowest failing rank, and all ranks exit together.
pub fn prepare<'a>(
    cfg: Config,
    device: Device,
    comm: &'a dyn Collectives,
    data_dir: &Path,
    out: &Path,
) -> Result<Trainer<'a>, TrainError> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = match cfg.threads {
        0 => (cores / comm.local().0.max(1)).max(1),
        t if t > cores => {
            warn!(
                threads = t,
                cores, "more threads than this node's cores: using {cores}"
            );
            cores
        }
        t => t,
    };
    tch::set_num_threads(threads as i32);
    tch::set_num_interop_threads(1);
    if device.is_cuda() {
        tch::Cuda::cudnn_set_benchmark(true);
    }
    let data = Dataset::open(data_dir)?;
    cfg.validate_data([data.channels, data.height, data.width], data.n_train)?;
    let pool = if cfg.train_on_test {
        data.len()
    } else {
        data.n_train
    };
    let n_train = match cfg.train_limit {
        0 => pool,
        l => l.min(pool),
    };
    let k = cfg.augment.neighbours;
    if k > 0 && !(k < n_train && n_train <= neighbours::MAX_IMAGES) {
        return Err(TrainError::Setup(format!(
            "augment.neighbours = {k} searches {n_train} training images exhaustively, which needs more than {k} and at most {} of them; lower augment.neighbours or set train_limit",
            neighbours::MAX_IMAGES
        )));
    }
    if n_train < cfg.batch_size {
        return Err(TrainError::Setup(format!(
            "batch_size = {} is larger than the {n_train} training images in {}; lower batch_size",
            cfg.batch_size,
            data_dir.display()
        )));
    }
    let folder = match comm.is_root() {
        true => Some(RunFolder::open(out, &cfg)?),
        false => None,
    };
    if comm.is_root() {
        checkpoint::clean_partial(&out.join("checkpoints"));
    }
    tch::manual_seed(cfg.seed as i64);
    let vs = nn::VarStore::new(device);
    let net = Network::new(
        &vs.root(),
        &cfg.model,
        data.channels as i64,
        (data.height as i64, data.width as i64),
    );
    let flat = FlatParams::new(&vs, schedule::layout_group);
    let spans = (0..3)
        .map(|stage| flat.span(|name| schedule::trains(stage, name)))
        .collect::<Result<Vec<_>, _>>()?;
    let (mean, std) = data.channel_stats(n_train.min(NORM_SAMPLE));
    let norm = Normalize::new(&mean, &std, device);
    let resident = batches::fits_on_device(n_train, data.image_len())
        .then(|| data.gather(0..n_train).to(device));
    let steps_per_epoch = shard::steps_per_epoch(n_train, cfg.batch_size);
    let fingerprint = data.fingerprint();
    let expect = Expect {
        config: &cfg,
        data: &fingerprint,
        steps_per_epoch,
    };
    let resume = checkpoint::resume(&out.join("checkpoints"), &expect, &vs, &flat)?;
    for (dir, why) in resume.skipped.iter().filter(|_| comm.is_root()) {
        warn!(checkpoint = %dir.display(), "skipped: {why}; trying the next older one");
    }
    info!(
        dataset = %data.name,
        images = data.len(),
        train = n_train,
        device = ?device,
        threads,
        resident = resident.is_some(),
        steps_per_epoch,
        "prepared"
    );
    let mut trainer = Trainer {
        cfg,
        comm,
        data,
        out: out.to_owned(),
        device,
        vs,
        net,
        flat,
        spans,
        norm,
        resident,
        n_train,
        steps_per_epoch,
        fingerprint,
        folder,
        start: Position::START,
        last_checkpoint: "none".into(),
    };
    if let Some(ck) = resume.from {
        info!(
            checkpoint = %ck.dir.display(),
            step = ck.meta.position.step,
            written_by_ranks = ck.meta.world_size,
            "resumed"
        );
        trainer.start = ck.meta.position;
        trainer.last_checkpoint = ck.dir.display().to_string();
    }
    Ok(trainer)
}

/// A step whose loss and stop flag (summed over ranks) are still on the device.
struct Pending {
    pos: Position,
    lr: f64,
    tail: Tensor,
    phases: Option<Phases>,
    /// When the step began; it ends when the next one begins (or when it is read, if last).
    started: Instant,
}

impl<'a> Trainer<'a> {
    /// Runs the schedule from the newest checkpoint until it ends, `max_steps` is reached or
    /// `stop` is raised.
    pub fn run(mut self, stop: &AtomicBool) -> Result<Outcome, TrainError> {
        let root = self.comm.is_root();
        let mut pos = self.start;
        let log = self.out.join("train-log.jsonl");
        let total = schedule::total_steps(&self.cfg, self.steps_per_epoch);
        let mut progress = Progress::new(root.then_some(log.as_path()), total, pos.step)?;
        let mut pending: Option<Pending> = None;
        // A stop asked for before the first step (any rank): nothing new to save.
        let early = f64::from(u8::from(stop.load(Ordering::Relaxed)));
        let mut stop_all = self.comm.max_host(&[early])[0] > 0.0;
        if stop_all {
            self.mark_stopped(pos, &self.last_checkpoint.clone())?;
            return Ok(Outcome::Stopped);
        }
        // Searched only when a step will run (every rank knows the same position).
        let idle = pos.finished() || self.at_step_limit(pos);
        let graph = match self.cfg.augment.neighbours {
            k if k == 0 || idle => None,
            k => Some(Arc::new(neighbours::shared(
                self.comm,
                &self.data,
                self.n_train,
                k,
            ))),
        };
        let mut batches = Batches::new(
            &self.cfg,
            (self.comm.rank(), self.comm.world()),
            self.n_train,
            (self.data.height, self.data.width),
            self.steps_per_epoch,
            graph,
            self.device,
        );
        while !pos.finished() {
            if self.at_step_limit(pos) {
                self.settle(pending.take(), None, &mut progress)?;
                progress.close(false);
                // Resumed at the limit, no step ran: the checkpoint resumed from is the answer
                // (saving again would replace it with one that knows no loss).
                let ck = if pos == self.start && self.start.step > 0 {
                    self.last_checkpoint.clone()
                } else {
                    self.save(pos, false, progress.last_loss)?
                };
                info!(step = pos.step, checkpoint = %ck, "max_steps reached");
                return Ok(Outcome::StepLimit);
            }
            let started = Instant::now();
            let input = batches.take(pos);
            let lr = schedule::learning_rate(&self.cfg, &pos, self.steps_per_epoch);
            let mut clock = PhaseClock::new(self.cfg.phase_timing, self.device);
            let tail = self.step(&pos, &input, lr, stop.load(Ordering::Relaxed), &mut clock)?;
            let phases = clock.finish(self.comm);
            // The previous step's loss is read now, while this one runs on the device.
            let previous = pending.replace(Pending {
                pos,
                lr,
                tail,
                phases,
                started,
            });
            stop_all |= self.settle(previous, Some(started), &mut progress)?;
            let next = pos.advance(self.steps_per_epoch, &self.cfg.epochs);
            if next.epoch != pos.epoch || next.stage != pos.stage {
                stop_all |= self.settle(pending.take(), None, &mut progress)?;
                self.end_epoch(pos, next, &mut progress)?;
            }
            pos = next;
            if stop_all && !pos.finished() {
                self.settle(pending.take(), None, &mut progress)?;
                progress.close(false);
                let ck = self.save(pos, false, progress.last_loss)?;
                self.mark_stopped(pos, &ck)?;
                return Ok(Outcome::Stopped);
            }
        }
        progress.close(false);
        self.finish()?;
        Ok(Outcome::Finished)
    }

    /// Whether `pos` is at the config's `max_steps` (0: no limit).
    fn at_step_limit(&self, pos: Position) -> bool {
        self.cfg.max_steps > 0 && pos.step >= self.cfg.max_steps
    }

    /// One optimizer step; returns its loss and stop flag, summed over ranks, on the device.
    fn step(
        &mut self,
        pos: &Position,
        input: &StepInput,
        lr: f64,
        stop: bool,
        clock: &mut PhaseClock,
    ) -> Result<Tensor, TrainError> {
        let plan = schedule::plan(pos.stage);
        let span = &self.spans[pos.stage];
        let views = augment::apply(&self.images(input), &input.table, &self.norm);
        clock.lap(Phase::Data);

        let z = self.project(&views, plan);
        clock.lap_network(Phase::Compute);
        clock.wait_for_all(self.comm);
        let gathered = self.comm.all_gather(&z.detach())?;
        clock.lap(Phase::Gather);

        // This rank's part of the global loss and its gradient with respect to every row.
        let rows = Rows::of_rank(self.comm.rank(), self.comm.world(), z.size()[0]);
        let (part, grad_all) = cauchy_infonce_part_and_gradient(&gathered, rows);
        clock.lap(Phase::Compute);
        // Every rank's loss depends on every row; each rank needs the sum only for its own.
        clock.wait_for_all(self.comm);
        let grad_mine = self.comm.reduce_scatter_sum(&grad_all)?;
        clock.lap(Phase::Scatter);

        // Backward from this rank's rows into the gradient buffer; loss and stop flag beside it.
        self.flat.zero_grads();
        clock.lap(Phase::Compute);
        self.backpropagate(&views, &z, &grad_mine, plan);
        clock.lap_network(Phase::Compute);
        self.flat.set_tail(&part, stop);
        clock.wait_for_all(self.comm);
        self.comm.all_reduce_sum_(&self.flat.reduced(span))?;
        clock.lap(Phase::Reduce);
        self.flat.step(&self.cfg.optim, lr, span);
        clock.lap(Phase::Compute);
        Ok(self.flat.tail().copy())
    }

    /// Reads a pending step's loss and stop flag, logs the step, and stops the run on a loss
    /// that is not finite. Returns whether any rank asked to stop.
    fn settle(
        &self,
        step: Option<Pending>,
        ended: Option<Instant>,
        p: &mut Progress,
    ) -> Result<bool, TrainError> {
        let Some(step) = step else {
            return Ok(false);
        };
        let tail = Vec::<f32>::try_from(step.tail.to_device(Device::Cpu))?;
        let (loss, stop) = (f64::from(tail[0]), tail[1] > 0.0);
        let pos = step.pos;
        if !loss.is_finite() {
            p.close(true);
            return Err(TrainError::NotFinite {
                loss,
                step: pos.step,
                stage: STAGE_NAMES[pos.stage],
                epoch: pos.epoch,
                last: self.last_checkpoint.clone(),
            });
        }
        let seconds = ended.unwrap_or_else(Instant::now) - step.started;
        let images_per_s = self.cfg.batch_size as f64 / seconds.as_secs_f64();
        p.step(pos, loss, step.lr, images_per_s, step.phases)?;
        Ok(stop)
    }

    /// Logs the epoch that ends at `pos` and checkpoints when one is due (`next` is the
    /// position after it).
    fn end_epoch(
        &mut self,
        pos: Position,
        next: Position,
        p: &mut Progress,
    ) -> Result<(), TrainError> {
        p.end_epoch(pos, self.cfg.epochs[pos.stage]);
        self.data.check_unchanged()?;
        let stage_end = next.stage != pos.stage;
        if stage_end || (pos.epoch + 1) % self.cfg.checkpoint_every == 0 {
            self.last_checkpoint = self.save(next, stage_end, p.last_loss)?;
        }
        Ok(())
    }

    /// This step's images (u8, N×C×H×W) on the device.
    fn images(&self, input: &StepInput) -> Tensor {
        match &self.resident {
            Some(all) => all.index_select(0, &input.indices),
            None => {
                let host = input.host_indices.iter().map(|&i| i as usize);
                self.data.gather(host).to(self.device)
            }
        }
    }

    /// Says that the run stopped on request at `pos` (rank 0: the marker job scripts read).
    fn mark_stopped(&self, pos: Position, checkpoint: &str) -> Result<(), TrainError> {
        if let Some(folder) = &self.folder {
            folder.mark_stopped(pos.step, checkpoint)?;
        }
        warn!(
            step = pos.step,
            checkpoint, "stopped on request; run the same command again to resume"
        );
        Ok(())
    }

    fn save(&self, position: Position, stage_end: bool, loss: f64) -> Result<String, TrainError> {
        if !self.flat.all_finite() {
            return Err(TrainError::NotFiniteParameters {
                step: position.step,
                last: self.last_checkpoint.clone(),
            });
        }
        dist::average_buffers(self.comm, &self.vs)?;
        if !self.comm.is_root() {
            return Ok(String::new());
        }
        let meta = Meta {
            format: checkpoint::FORMAT,
            position,
            stage_end,
            world_size: self.comm.world(),
            loss,
            state_bytes: 0,
            state_sha256: None,
            data: Some(self.fingerprint.clone()),
            config: self.cfg.clone(),
        };
        let root = self.out.join("checkpoints");
        let dir = checkpoint::save_state(&root, meta, &self.vs, &self.flat)?;
        Ok(dir.display().to_string())
    }

    /// Embeds every image (train and test); rank 0 writes the report.
    fn finish(&self) -> Result<(), TrainError> {
        self.data.check_unchanged()?;
        dist::average_buffers(self.comm, &self.vs)?;
        let embedding = self.embed_all()?;
        if self.comm.is_root() {
            let facts = report::RunFacts {
                cfg: &self.cfg,
                world_size: self.comm.world(),
                train_images_used: self.n_train,
            };
            report::write(&self.out, &self.data, &embedding, &facts)?;
        }
        Ok(())
    }

    /// The map coordinates of every image, in index order; each rank embeds an equal share.
    fn embed_all(&self) -> Result<Tensor, TrainError> {
        let _guard = tch::no_grad_guard();
        let n = self.data.len();
        let (rank, world) = (self.comm.rank(), self.comm.world());
        let share = n.div_ceil(world);
        let (start, end) = ((rank * share).min(n), ((rank + 1) * share).min(n));
        let dim = self.cfg.model.map_dim;
        let mut chunks = vec![Tensor::zeros([0, dim], (Kind::Float, self.device))];
        for i in (start..end).step_by(EMBED_CHUNK) {
            let images = self.data.gather(i..(i + EMBED_CHUNK).min(end));
            let x = images.to(self.device).to_kind(Kind::Float) / 255.0;
            let hidden = self.trunk(&self.norm.apply(&x), false);
            chunks.push(self.net.readout(&hidden, Readout::Map));
        }
        // Every rank sends `share` rows; the last rank's padding is cut after the gather.
        let pad = share - (end - start);
        chunks.push(Tensor::zeros([pad as i64, dim], (Kind::Float, self.device)));
        let all = self.comm.all_gather(&Tensor::cat(&chunks, 0))?;
        Ok(all.narrow(0, 0, n as i64).to_device(Device::Cpu))
    }
}
