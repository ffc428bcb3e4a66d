//! What the loop reports as its steps are settled: rank 0's step log and progress bar (with the
//! ETA), and the epoch's mean loss.

use std::path::Path;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tracing::info;

use super::{OutputError, Phases, StepRecord, TrainLog};
use crate::schedule::{Position, STAGE_NAMES};

pub struct Progress {
    log: Option<TrainLog>,
    bar: ProgressBar,
    /// The loss of the last settled step (NaN before any).
    pub last_loss: f64,
    epoch_loss: (f64, usize),
}

impl Progress {
    /// Reporting for a run of `total` steps of which `done` ran before; `log` is the step log's
    /// path on rank 0 (the other ranks report nothing).
    pub fn new(log: Option<&Path>, total: u64, done: u64) -> Result<Progress, OutputError> {
        let bar = match log {
            Some(_) => {
                let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
                bar.set_style(
                    ProgressStyle::with_template(
                        "{bar:30} {pos}/{len} steps · {msg} · {per_sec} · ETA {eta}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                bar.set_position(done);
                bar.reset_eta();
                bar
            }
            None => ProgressBar::hidden(),
        };
        Ok(Progress {
            log: log.map(|p| TrainLog::open(p, done)).transpose()?,
            bar,
            last_loss: f64::NAN,
            epoch_loss: (0.0, 0),
        })
    }

    /// Logs the step at `pos`, whose loss has just been read.
    pub fn step(
        &mut self,
        pos: Position,
        loss: f64,
        lr: f64,
        images_per_s: f64,
        phases: Option<Phases>,
    ) -> Result<(), OutputError> {
        self.last_loss = loss;
        self.epoch_loss = (self.epoch_loss.0 + loss, self.epoch_loss.1 + 1);
        if let Some(log) = self.log.as_mut() {
            log.append(&StepRecord {
                stage: pos.stage,
                epoch: pos.epoch,
                step: pos.step,
                loss,
                lr,
                images_per_s,
                phases,
            })?;
        }
        let stage = STAGE_NAMES[pos.stage];
        self.bar
            .set_message(format!("{stage} ep {} loss {loss:.4}", pos.epoch));
        self.bar.inc(1);
        Ok(())
    }

    /// Logs the mean loss of the epoch that ends at `pos` (of `epochs` in its stage).
    pub fn end_epoch(&mut self, pos: Position, epochs: usize) {
        let mean = self.epoch_loss.0 / self.epoch_loss.1.max(1) as f64;
        self.epoch_loss = (0.0, 0);
        self.bar.suspend(|| {
            info!(
                stage = STAGE_NAMES[pos.stage],
                epoch = pos.epoch + 1,
                of = epochs,
                loss = format!("{mean:.4}"),
                "epoch done"
            )
        });
    }

    /// Clears the bar (the run ends or stops); `failed` leaves it where it stood.
    pub fn close(&self, failed: bool) {
        match failed {
            true => self.bar.abandon(),
            false => self.bar.finish_and_clear(),
        }
    }
}
