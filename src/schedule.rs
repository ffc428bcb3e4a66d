//! The three stages of t-SimCNE as positions in one sequence of steps, and the learning rate
//! at each: linear warm-up over the stage's first epochs, then cosine decay to zero.

use crate::config::Config;
use crate::model::{Readout, BACKBONE, HIDDEN, MAP_OUT, PRETRAIN_OUT};

/// Stage names as the logs and checkpoints print them.
pub const STAGE_NAMES: [&str; 3] = ["pretrain", "map-layer", "fine-tune"];

/// What a stage trains and which readout it ends with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StagePlan {
    pub readout: Readout,
    /// Whether the backbone and hidden layer are trained (false: they run without gradients).
    pub trains_trunk: bool,
}

pub fn plan(stage: usize) -> StagePlan {
    match stage {
        0 => StagePlan {
            readout: Readout::Pretrain,
            trains_trunk: true,
        },
        1 => StagePlan {
            readout: Readout::Map,
            trains_trunk: false,
        },
        _ => StagePlan {
            readout: Readout::Map,
            trains_trunk: true,
        },
    }
}

/// Whether the variable `name` is trained in `stage`.
pub fn trains(stage: usize, name: &str) -> bool {
    let p = plan(stage);
    let under = |prefix: &str| name.starts_with(prefix) && name[prefix.len()..].starts_with('.');
    match p.readout {
        Readout::Pretrain => under(BACKBONE) || under(HIDDEN) || under(PRETRAIN_OUT),
        Readout::Map => under(MAP_OUT) || (p.trains_trunk && (under(BACKBONE) || under(HIDDEN))),
    }
}

/// Where a variable sits in the optimizer's flat buffers: stage 1's readout first, then the
/// trunk, then the map's readout, so that what each stage trains is one contiguous span
/// (stage 1: groups 0–1, stage 2: group 2, stage 3: groups 1–2).
pub fn layout_group(name: &str) -> u8 {
    match (trains(0, name), trains(1, name), trains(2, name)) {
        (true, _, false) => 0,
        (true, _, true) => 1,
        (false, _, true) => 2,
        _ => 3,
    }
}

/// A place in the schedule: the next step to run is batch `batch` of `epoch` of `stage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Position {
    pub stage: usize,
    pub epoch: usize,
    pub batch: usize,
    /// Steps run so far over the whole schedule.
    pub step: u64,
}

impl Position {
    pub const START: Position = Position {
        stage: 0,
        epoch: 0,
        batch: 0,
        step: 0,
    };

    /// The position after one more step, given the steps per epoch and the stages' epochs.
    pub fn advance(self, steps_per_epoch: usize, epochs: &[usize; 3]) -> Position {
        let mut p = Position {
            batch: self.batch + 1,
            step: self.step + 1,
            ..self
        };
        if p.batch == steps_per_epoch {
            p.batch = 0;
            p.epoch += 1;
            if p.epoch == epochs[p.stage] {
                p.epoch = 0;
                p.stage += 1;
            }
        }
        p
    }

    pub fn finished(&self) -> bool {
        self.stage >= 3
    }

    /// Whether this is a place in a schedule of `epochs` with `steps_per_epoch` steps per
    /// epoch: stage, epoch and batch in range (or the end of the schedule), and the step count
    /// the steps before them.
    pub fn fits(&self, steps_per_epoch: usize, epochs: &[usize; 3]) -> bool {
        let in_range = match self.stage {
            0..=2 => self.epoch < epochs[self.stage] && self.batch < steps_per_epoch,
            3 => self.epoch == 0 && self.batch == 0,
            _ => false,
        };
        let before: usize = epochs[..self.stage.min(3)].iter().sum();
        let steps = ((before + self.epoch) as u64)
            .checked_mul(steps_per_epoch as u64)
            .and_then(|s| s.checked_add(self.batch as u64));
        in_range && steps == Some(self.step)
    }
}

/// Steps in the whole schedule.
pub fn total_steps(cfg: &Config, steps_per_epoch: usize) -> u64 {
    cfg.epochs
        .iter()
        .map(|&e| (e * steps_per_epoch) as u64)
        .sum()
}

/// The learning rate of the step at `pos`.
pub fn learning_rate(cfg: &Config, pos: &Position, steps_per_epoch: usize) -> f64 {
    let peak = cfg.stage_lr(pos.stage);
    let t = (pos.epoch * steps_per_epoch + pos.batch) as f64;
    let warm = (cfg.optim.warmup_epochs[pos.stage] * steps_per_epoch) as f64;
    let total = (cfg.epochs[pos.stage] * steps_per_epoch) as f64;
    if t < warm {
        return peak * (t + 1.0) / warm;
    }
    let progress = (t - warm) / (total - warm).max(1.0);
    peak * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_walk_through_every_stage() {
        let epochs = [2, 1, 3];
        let mut p = Position::START;
        let mut seen = Vec::new();
        while !p.finished() {
            seen.push((p.stage, p.epoch, p.batch));
            p = p.advance(4, &epochs);
        }
        assert_eq!(seen.len(), 24);
        assert_eq!(p.step, 24);
        assert_eq!(seen[8], (1, 0, 0));
        assert_eq!(seen[23], (2, 2, 3));
    }

    #[test]
    fn only_places_in_the_schedule_fit() {
        let epochs = [2, 1, 3];
        let mut p = Position::START;
        while !p.finished() {
            assert!(p.fits(4, &epochs), "{p:?}");
            p = p.advance(4, &epochs);
        }
        assert!(p.fits(4, &epochs), "the end: {p:?}");
        let at = |stage, epoch, batch, step| Position {
            stage,
            epoch,
            batch,
            step,
        };
        assert!(!at(7, 0, 0, 24).fits(4, &epochs), "no stage 7");
        assert!(!at(0, 1, 4, 8).fits(4, &epochs), "batch past the epoch");
        assert!(!at(1, 0, 0, 9).fits(4, &epochs), "step count off");
        assert!(!at(0, 0, 0, u64::MAX).fits(4, &epochs));
    }

    #[test]
    fn warm_up_then_cosine() {
        let cfg = Config {
            batch_size: 256,
            epochs: [10, 2, 20],
            ..Config::default()
        };
        let lr = |stage, epoch, batch| {
            learning_rate(
                &cfg,
                &Position {
                    stage,
                    epoch,
                    batch,
                    step: 0,
                },
                5,
            )
        };
        let peak = 0.03;
        assert!((lr(0, 0, 0) - peak / 50.0).abs() < 1e-12); // warm-up of 10 epochs × 5 steps
        assert!((lr(0, 9, 4) - peak).abs() < 1e-12);
        assert!((lr(1, 0, 0) - peak).abs() < 1e-12); // no warm-up, cosine from the top
        assert!(lr(1, 1, 4) < 0.05 * peak);
        assert!((lr(2, 9, 4) - peak * 1e-3).abs() < 1e-15); // stage 3 peaks at lr/1000
        assert!(lr(2, 19, 4) < 1e-3 * peak * 1e-3);
    }

    #[test]
    fn each_stage_trains_its_own_variables() {
        assert!(trains(0, "backbone.stem.conv.weight") && trains(0, "pretrain_out.weight"));
        assert!(!trains(0, "map_out.weight"));
        assert!(
            trains(1, "map_out.bias") && !trains(1, "hidden.weight") && !trains(1, "backbone.x")
        );
        assert!(
            trains(2, "hidden.weight")
                && trains(2, "map_out.weight")
                && !trains(2, "pretrain_out.bias")
        );
        assert!(!trains(2, "backbones.x"), "prefixes match whole names");
    }

    #[test]
    fn the_layout_makes_each_stage_one_run() {
        let mut names = [
            "map_out.weight",
            "backbone.stem.conv.weight",
            "pretrain_out.bias",
            "hidden.weight",
            "map_out.bias",
            "pretrain_out.weight",
        ];
        names.sort_by_key(|n| (layout_group(n), *n));
        for stage in 0..3 {
            let marks: Vec<bool> = names.iter().map(|n| trains(stage, n)).collect();
            let first = marks.iter().position(|&m| m).unwrap();
            let last = marks.iter().rposition(|&m| m).unwrap();
            assert!(
                marks[first..=last].iter().all(|&m| m),
                "stage {stage}: {names:?}"
            );
        }
    }
}
