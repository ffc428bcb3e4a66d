//! The training loop. One step, as data:
//!
//! ```text
//! order(seed, stage, epoch) → global batch k → this rank's slice → u8 images → device
//!   → two augmented views → network → z (2b×d) → all-gather → Z (2B×d, a leaf)
//!   → this rank's part of the loss → dL_r/dZ → reduce-scatter (sum) → dL/dz (own rows)
//!   → backward into the network → all-reduce the gradients (+ loss, stop flag) → clip → SGD
//! ```
//! Every rank holds the same parameters and takes the same steps; rank 0 writes.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tch::{nn, Device, Kind, Tensor};
use tracing::{info, warn};

use crate::augment::{self, Normalize};
use crate::checkpoint::{self, Checkpoint, CheckpointError, Meta};
use crate::config::{Config, DeviceChoice, Precision};
use crate::data::{shard, DataError, Dataset};
use crate::dist::{Collectives, DistError};
use crate::loss::{cauchy_infonce_part, Rows};
use crate::metrics::knn_accuracy;
use crate::model::{Network, Readout};
use crate::optim::Sgd;
use crate::outputs::{self, OutputError, StepRecord, TrainLog};
use crate::precision;
use crate::schedule::{self, Position, STAGE_NAMES};

/// Images per forward pass when embedding the whole data set.
const EMBED_CHUNK: usize = 1024;
/// Training images whose pixels set the normalisation (enough for stable channel statistics).
const NORM_SAMPLE: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error(transparent)]
    Dist(#[from] DistError),
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("{0}")]
    Setup(String),
    #[error("the loss became {loss} at step {step} ({stage} stage, epoch {epoch}); nothing was saved after the last good checkpoint ({last}); try a lower optim.lr or a longer warm-up")]
    NotFinite {
        loss: f64,
        step: u64,
        stage: &'static str,
        epoch: usize,
        last: String,
    },
}

impl TrainError {
    /// Errors in what the user gave (exit code 2) as opposed to failures while running.
    pub fn is_input_error(&self) -> bool {
        matches!(
            self,
            TrainError::Config(_)
                | TrainError::Data(_)
                | TrainError::Setup(_)
                | TrainError::Checkpoint(CheckpointError::Mismatch { .. })
        )
    }
}

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
    opt: Sgd,
    norm: Normalize,
    n_train: usize,
    steps_per_epoch: usize,
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
    let threads = if cfg.threads > 0 {
        cfg.threads
    } else {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        (cores / comm.local().0.max(1)).max(1)
    };
    tch::set_num_threads(threads as i32);
    tch::set_num_interop_threads(1);
    let data = Dataset::open(data_dir)?;
    let pool = if cfg.train_on_test {
        data.len()
    } else {
        data.n_train
    };
    let n_train = match cfg.train_limit {
        0 => pool,
        l => l.min(pool),
    };
    if n_train < cfg.batch_size {
        return Err(TrainError::Setup(format!(
            "batch_size = {} is larger than the {n_train} training images in {}; lower batch_size",
            cfg.batch_size,
            data_dir.display()
        )));
    }
    if comm.is_root() {
        std::fs::create_dir_all(out.join("checkpoints")).map_err(|e| {
            TrainError::Setup(format!(
                "cannot create output folder {}: {e}; choose another --out",
                out.display()
            ))
        })?;
        checkpoint::clean_partial(&out.join("checkpoints"));
        outputs::write_atomic_bytes(&out.join("config.toml"), cfg.to_resolved_toml().as_bytes())?;
    }
    tch::manual_seed(cfg.seed as i64);
    let vs = nn::VarStore::new(device);
    let net = Network::new(
        &vs.root(),
        &cfg.model,
        data.channels as i64,
        (data.height as i64, data.width as i64),
    );
    let norm = channel_stats(&data, n_train.min(NORM_SAMPLE), device);
    let steps_per_epoch = shard::steps_per_epoch(n_train, cfg.batch_size);
    let resume_from = checkpoint::latest(&out.join("checkpoints"), &cfg)?;
    info!(
        dataset = %data.name,
        images = data.len(),
        train = n_train,
        device = ?device,
        threads,
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
        opt: Sgd::default(),
        norm,
        n_train,
        steps_per_epoch,
        start: Position::START,
        last_checkpoint: "none".into(),
    };
    if let Some(ck) = resume_from {
        trainer.load(&ck)?;
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

/// The device of the rank that is `local_rank` on its node.
pub fn choose_device(choice: DeviceChoice, local_rank: usize) -> Result<Device, TrainError> {
    let gpus = tch::Cuda::device_count() as usize;
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Auto if gpus == 0 => Ok(Device::Cpu),
        DeviceChoice::Cuda if gpus == 0 => Err(TrainError::Setup(
            "device = \"cuda\" but torch sees no GPU (a binary built without --features cuda, or no visible device); use device = \"cpu\" or \"auto\"".into(),
        )),
        _ => Ok(Device::Cuda(local_rank % gpus)),
    }
}

/// Per-channel mean and standard deviation of the first `n` training images.
fn channel_stats(data: &Dataset, n: usize, device: Device) -> Normalize {
    let plane = data.height * data.width;
    let mut sum = vec![0f64; data.channels];
    let mut sq = vec![0f64; data.channels];
    for i in 0..n {
        for (c, px) in data.image(i).chunks(plane).enumerate() {
            for &v in px {
                let v = f64::from(v) / 255.0;
                sum[c] += v;
                sq[c] += v * v;
            }
        }
    }
    let count = (n * plane).max(1) as f64;
    let mean: Vec<f64> = sum.iter().map(|s| s / count).collect();
    let std: Vec<f64> = sq
        .iter()
        .zip(&mean)
        .map(|(q, m)| (q / count - m * m).max(1e-6).sqrt())
        .collect();
    Normalize::new(&mean, &std, device)
}

/// The phases a step's time is split into.
#[derive(Debug, Clone, Copy)]
enum Phase {
    Data,
    Compute,
    Wait,
    Comm,
}

/// Splits a step's wall time into phases. On CUDA it synchronises before each reading, so that
/// a phase is charged with its own kernels (the cost: the host cannot run ahead of the device).
struct PhaseClock {
    device: Device,
    last: Instant,
    timing: Timing,
}

impl PhaseClock {
    fn new(device: Device) -> PhaseClock {
        PhaseClock {
            device,
            last: Instant::now(),
            timing: Timing::default(),
        }
    }

    /// Charges the time since the last reading to `phase`.
    fn lap(&mut self, phase: Phase) {
        if let Device::Cuda(i) = self.device {
            tch::Cuda::synchronize(i as i64);
        }
        let s = self.last.elapsed().as_secs_f64();
        self.last = Instant::now();
        let t = &mut self.timing;
        *match phase {
            Phase::Data => &mut t.data,
            Phase::Compute => &mut t.compute,
            Phase::Wait => &mut t.wait,
            Phase::Comm => &mut t.comm,
        } += s;
    }

    /// Waits for the slowest rank before a collective, so that the collective's time is
    /// transfer time and imbalance between ranks shows as wait time of its own.
    fn wait_for_all(&mut self, comm: &dyn Collectives) {
        comm.barrier();
        self.lap(Phase::Wait);
    }
}

/// Seconds spent per phase in one step.
#[derive(Debug, Default, Clone, Copy)]
struct Timing {
    data: f64,
    compute: f64,
    wait: f64,
    comm: f64,
}

impl<'a> Trainer<'a> {
    fn root_checkpoints(&self) -> PathBuf {
        self.out.join("checkpoints")
    }

    /// The trained variables of `stage`, sorted by name (the same order on every rank).
    fn stage_params(&self, stage: usize) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self
            .vs
            .variables()
            .into_iter()
            .filter(|(name, t)| t.requires_grad() && schedule::trains(stage, name))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    fn load(&mut self, ck: &Checkpoint) -> Result<(), TrainError> {
        let mut vars = self.vs.variables();
        let _guard = tch::no_grad_guard();
        self.opt.buffers.clear();
        for (name, t) in ck.tensors()? {
            if let Some(buf) = name.strip_prefix("optim.") {
                self.opt.buffers.insert(buf.to_owned(), t.to(self.device));
            } else if let Some(var) = vars.get_mut(&name) {
                if var.size() != t.size() {
                    return Err(CheckpointError::Read {
                        path: ck.dir.clone(),
                        message: format!(
                            "{name} has shape {:?}, the model {:?}",
                            t.size(),
                            var.size()
                        ),
                    }
                    .into());
                }
                var.copy_(&t);
            }
        }
        Ok(())
    }

    /// Averages the non-trained variables (batch-norm running statistics) over ranks, so that
    /// what rank 0 saves and embeds with reflects every rank's images.
    fn sync_buffers(&self) -> Result<(), TrainError> {
        if self.comm.world() == 1 {
            return Ok(());
        }
        let mut names: Vec<(String, Tensor)> = self
            .vs
            .variables()
            .into_iter()
            .filter(|(_, t)| !t.requires_grad())
            .collect();
        names.sort_by(|a, b| a.0.cmp(&b.0));
        let _guard = tch::no_grad_guard();
        for (_, t) in names {
            let mean = self.comm.all_reduce_sum(&t)? / self.comm.world() as f64;
            t.shallow_clone().copy_(&mean);
        }
        Ok(())
    }

    /// The images at `indices` as one u8 N×C×H×W tensor on the rank's device.
    fn images_on_device(&self, indices: &[usize]) -> Tensor {
        let d = &self.data;
        let shape = [
            indices.len() as i64,
            d.channels as i64,
            d.height as i64,
            d.width as i64,
        ];
        Tensor::from_slice(&d.gather(indices))
            .view(shape)
            .to(self.device)
    }

    /// The network up to the readout, under bf16 autocast if the config asks for it; the
    /// readout after it always runs in f32 (bf16's steps at the map's scale are as large as
    /// the distances between neighbours).
    fn trunk(&self, images: &Tensor, train: bool) -> Tensor {
        let hidden = match self.cfg.precision {
            Precision::Fp32 => self.net.trunk(images, train),
            Precision::Bf16 => precision::bf16(self.device, || self.net.trunk(images, train)),
        };
        hidden.to_kind(Kind::Float)
    }

    fn save(&self, position: Position, stage_end: bool, loss: f64) -> Result<String, TrainError> {
        self.sync_buffers()?;
        if !self.comm.is_root() {
            return Ok(String::new());
        }
        let mut tensors: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        tensors.extend(
            self.opt
                .buffers
                .iter()
                .map(|(n, t)| (format!("optim.{n}"), t.shallow_clone())),
        );
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        let meta = Meta {
            format: 1,
            position,
            stage_end,
            world_size: self.comm.world(),
            loss,
            state_bytes: 0,
            config: self.cfg.clone(),
        };
        let dir = checkpoint::save(&self.root_checkpoints(), meta, &tensors)?;
        Ok(dir.display().to_string())
    }

    /// Runs the schedule from the newest checkpoint until it ends, `max_steps` is reached or
    /// `stop` is raised.
    pub fn run(mut self, stop: &AtomicBool) -> Result<Outcome, TrainError> {
        let (mut pos, mut last_ck) = (self.start, self.last_checkpoint.clone());
        let total = schedule::total_steps(&self.cfg, self.steps_per_epoch);
        let mut log = match self.comm.is_root() {
            true => Some(TrainLog::open(&self.out.join("train-log.jsonl"), pos.step)?),
            false => None,
        };
        let bar = progress_bar(self.comm.is_root(), total, pos.step);
        let mut order = (usize::MAX, usize::MAX, Vec::new());
        let mut last_loss = f64::NAN;
        let mut epoch_loss = (0.0, 0usize);
        while !pos.finished() {
            if self.cfg.max_steps > 0 && pos.step >= self.cfg.max_steps {
                bar.finish_and_clear();
                last_ck = self.save(pos, false, last_loss)?;
                info!(step = pos.step, checkpoint = %last_ck, "max_steps reached");
                return Ok(Outcome::StepLimit);
            }
            if (order.0, order.1) != (pos.stage, pos.epoch) {
                order = (
                    pos.stage,
                    pos.epoch,
                    shard::epoch_order(self.cfg.seed, pos.stage, pos.epoch, self.n_train),
                );
            }
            let lr = schedule::learning_rate(&self.cfg, &pos, self.steps_per_epoch);
            let started = Instant::now();
            let (loss, stop_all, timing) =
                self.step(&pos, &order.2, lr, stop.load(Ordering::Relaxed))?;
            let seconds = started.elapsed().as_secs_f64();
            if !loss.is_finite() {
                bar.abandon();
                return Err(TrainError::NotFinite {
                    loss,
                    step: pos.step,
                    stage: STAGE_NAMES[pos.stage],
                    epoch: pos.epoch,
                    last: last_ck,
                });
            }
            last_loss = loss;
            epoch_loss = (epoch_loss.0 + loss, epoch_loss.1 + 1);
            if let Some(log) = log.as_mut() {
                log.append(&StepRecord {
                    stage: pos.stage,
                    epoch: pos.epoch,
                    step: pos.step,
                    loss,
                    lr,
                    images_per_s: self.cfg.batch_size as f64 / seconds,
                    data_s: timing.data,
                    compute_s: timing.compute,
                    wait_s: timing.wait,
                    comm_s: timing.comm,
                })?;
            }
            bar.set_message(format!(
                "{} ep {} loss {loss:.4}",
                STAGE_NAMES[pos.stage], pos.epoch
            ));
            bar.inc(1);
            let next = pos.advance(self.steps_per_epoch, &self.cfg.epochs);
            let epoch_done = next.epoch != pos.epoch || next.stage != pos.stage;
            if epoch_done {
                let mean = epoch_loss.0 / epoch_loss.1.max(1) as f64;
                epoch_loss = (0.0, 0);
                bar.suspend(|| {
                    info!(
                        stage = STAGE_NAMES[pos.stage],
                        epoch = pos.epoch + 1,
                        of = self.cfg.epochs[pos.stage],
                        loss = format!("{mean:.4}"),
                        "epoch done"
                    )
                });
                let stage_end = next.stage != pos.stage;
                if stage_end || (pos.epoch + 1) % self.cfg.checkpoint_every == 0 {
                    last_ck = self.save(next, stage_end, loss)?;
                }
            }
            pos = next;
            if stop_all && !pos.finished() {
                bar.finish_and_clear();
                last_ck = self.save(pos, false, last_loss)?;
                warn!(step = pos.step, checkpoint = %last_ck, "stopped on request; run the same command again to resume");
                return Ok(Outcome::Stopped);
            }
        }
        bar.finish_and_clear();
        self.finish()?;
        Ok(Outcome::Finished)
    }

    /// One optimizer step; returns the global loss, whether any rank asked to stop, and timings.
    fn step(
        &mut self,
        pos: &Position,
        order: &[usize],
        lr: f64,
        stop: bool,
    ) -> Result<(f64, bool, Timing), TrainError> {
        let (rank, world) = (self.comm.rank(), self.comm.world());
        let mut clock = PhaseClock::new(self.device);

        // Data: this rank's images of global batch `pos.batch`, and their views' parameters.
        let batch = shard::global_batch(order, self.cfg.batch_size, pos.batch);
        let mine = shard::rank_slice(batch, rank, world);
        let images = self.images_on_device(mine);
        let params = augment::draw_pairs(
            self.cfg.seed,
            pos.stage,
            pos.epoch,
            mine,
            &self.cfg.augment,
            (self.data.height, self.data.width),
        );
        clock.lap(Phase::Data);

        // Forward to this rank's projections.
        let plan = schedule::plan(pos.stage);
        let views = augment::apply(&images, &params, &self.norm);
        let hidden = if plan.trains_trunk {
            self.trunk(&views, true)
        } else {
            tch::no_grad(|| self.trunk(&views, true))
        };
        let z = self.net.readout(&hidden, plan.readout);
        clock.lap(Phase::Compute);

        clock.wait_for_all(self.comm);
        let gathered = self.comm.all_gather(&z.detach())?;
        clock.lap(Phase::Comm);

        // This rank's part of the global loss and its gradient with respect to every row.
        let local = z.size()[0];
        let rows = Rows {
            offset: rank as i64 * local,
            local,
            total: local * world as i64,
        };
        let all = gathered.set_requires_grad(true);
        let part = cauchy_infonce_part(&all, rows);
        let grad_all = Tensor::run_backward(&[&part], &[&all], false, false).remove(0);
        clock.lap(Phase::Compute);
        // Every rank's loss depends on every row; each rank needs the sum only for its own.
        clock.wait_for_all(self.comm);
        let grad_mine = self.comm.reduce_scatter_sum(&grad_all)?;
        clock.lap(Phase::Comm);

        // Backward from this rank's rows into the network.
        let params_named = self.stage_params(pos.stage);
        for (_, p) in &params_named {
            p.shallow_clone().zero_grad();
        }
        (&z * grad_mine.detach()).sum(Kind::Float).backward();
        let grads: Vec<Tensor> = params_named
            .iter()
            .map(|(_, p)| {
                let g = p.grad();
                if g.defined() {
                    g.view([-1])
                } else {
                    p.zeros_like().view([-1])
                }
            })
            .collect();
        let mut pieces = grads;
        pieces.push(
            Tensor::from_slice(&[part.double_value(&[]) as f32, f32::from(u8::from(stop))])
                .to(self.device),
        );
        let flat = Tensor::cat(&pieces, 0);
        clock.lap(Phase::Compute);

        // Gradients, loss and stop flags of all ranks in one all-reduce.
        clock.wait_for_all(self.comm);
        let flat = self.comm.all_reduce_sum(&flat)?;
        clock.lap(Phase::Comm);
        let n = flat.size()[0];
        let tail = Vec::<f32>::try_from(flat.narrow(0, n - 2, 2).to_device(Device::Cpu))?;
        let (loss, stop_all) = (f64::from(tail[0]), tail[1] > 0.0);
        if loss.is_finite() {
            let mut offset = 0;
            let mut reduced = Vec::with_capacity(params_named.len());
            for (_, p) in &params_named {
                let len = p.numel() as i64;
                let mut g = flat.narrow(0, offset, len).view(&p.size()[..]);
                if self.cfg.optim.clip_value > 0.0 {
                    g = g.clamp(-self.cfg.optim.clip_value, self.cfg.optim.clip_value);
                }
                reduced.push(g);
                offset += len;
            }
            self.opt.step(&self.cfg.optim, lr, &params_named, &reduced);
        }
        clock.lap(Phase::Compute);
        let s = self.comm.max_host(&[
            clock.timing.data,
            clock.timing.compute,
            clock.timing.wait,
            clock.timing.comm,
        ]);
        Ok((
            loss,
            stop_all,
            Timing {
                data: s[0],
                compute: s[1],
                wait: s[2],
                comm: s[3],
            },
        ))
    }

    /// Embeds every image (train and test), measures kNN accuracy and writes the outputs.
    fn finish(&self) -> Result<(), TrainError> {
        self.sync_buffers()?;
        let embedding = self.embed_all()?;
        if !self.comm.is_root() {
            return Ok(());
        }
        let labels = Tensor::from_slice(&self.data.labels);
        let n_train = self.data.n_train as i64;
        let (acc, protocol) = if self.data.n_test > 0 {
            let test = self.data.n_test as i64;
            let acc = knn_accuracy(
                &embedding.narrow(0, 0, n_train),
                &labels.narrow(0, 0, n_train),
                &embedding.narrow(0, n_train, test),
                &labels.narrow(0, n_train, test),
                self.cfg.knn_k as i64,
                false,
            );
            (acc, "fit on the training split, scored on the test split")
        } else {
            let acc = knn_accuracy(
                &embedding,
                &labels,
                &embedding,
                &labels,
                self.cfg.knn_k as i64,
                true,
            );
            (acc, "leave-one-out on the training split")
        };
        info!(
            knn_accuracy = format!("{:.2} %", 100.0 * acc),
            k = self.cfg.knn_k,
            protocol,
            "map evaluated"
        );
        let out = &self.out;
        outputs::write_npy(&out.join("embedding.npy"), &embedding)?;
        let rows: Vec<Vec<f32>> = Vec::<Vec<f32>>::try_from(&embedding)?;
        let splits: Vec<&str> = (0..self.data.len())
            .map(|i| self.data.split(i).name())
            .collect();
        outputs::write_csv(
            &out.join("embedding.csv"),
            &rows,
            &splits,
            &self.data.labels,
        )?;
        let metrics = serde_json::json!({
            "knn_accuracy": acc,
            "knn_k": self.cfg.knn_k,
            "protocol": protocol,
            "dataset": self.data.name,
            "images": self.data.len(),
            "train_images_used": self.n_train,
            "world_size": self.comm.world(),
            "batch_size": self.cfg.batch_size,
            "epochs": self.cfg.epochs,
        });
        outputs::write_atomic_bytes(
            &out.join("metrics.json"),
            serde_json::to_string_pretty(&metrics)
                .unwrap_or_default()
                .as_bytes(),
        )?;
        if rows.first().is_some_and(|r| r.len() >= 2) {
            let points: Vec<(f32, f32)> = rows.iter().map(|r| (r[0], r[1])).collect();
            let title = format!(
                "{} · t-SimCNE · kNN accuracy {:.1} %",
                self.data.name,
                100.0 * acc
            );
            crate::plot::draw_map(
                &out.join("map.png"),
                &points,
                &self.data.labels,
                &self.data.class_names,
                &title,
            )?;
        }
        Ok(())
    }

    /// The map coordinates of every image, in index order; each rank embeds an equal share.
    fn embed_all(&self) -> Result<Tensor, TrainError> {
        let _guard = tch::no_grad_guard();
        let n = self.data.len();
        let (rank, world) = (self.comm.rank(), self.comm.world());
        let share = n.div_ceil(world);
        let start = (rank * share).min(n);
        let end = ((rank + 1) * share).min(n);
        let mut chunks = Vec::new();
        let mut i = start;
        while i < end {
            let j = (i + EMBED_CHUNK).min(end);
            let idx: Vec<usize> = (i..j).collect();
            let x = self.images_on_device(&idx).to_kind(Kind::Float) / 255.0;
            let hidden = self.trunk(&self.norm.apply(&x), false);
            chunks.push(self.net.readout(&hidden, Readout::Map));
            i = j;
        }
        let dim = self.cfg.model.map_dim;
        let mut mine = if chunks.is_empty() {
            Tensor::zeros([0, dim], (Kind::Float, self.device))
        } else {
            Tensor::cat(&chunks, 0)
        };
        let pad = share as i64 - mine.size()[0];
        if pad > 0 {
            mine = Tensor::cat(
                &[mine, Tensor::zeros([pad, dim], (Kind::Float, self.device))],
                0,
            );
        }
        let all = self.comm.all_gather(&mine)?;
        Ok(all.narrow(0, 0, n as i64).to_device(Device::Cpu))
    }
}

fn progress_bar(visible: bool, total: u64, done: u64) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps · {msg} · {per_sec} · ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_position(done);
    bar.reset_eta();
    bar
}
