//! What rank 0 writes into the run folder, each file atomically: `config.toml`,
//! `train-log.jsonl`, and at the end the report ([`report`]): `embedding.npy`, `embedding.csv`,
//! `metrics.json` and `map.png`.

pub mod folder;
pub mod progress;
pub mod report;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot draw {path}: {message}")]
    Plot { path: PathBuf, message: String },
    #[error("torch: {0}")]
    Tensor(#[from] tch::TchError),
}

pub(crate) fn write_error(path: &Path) -> impl FnOnce(std::io::Error) -> OutputError + '_ {
    move |source| OutputError::Write {
        path: path.to_owned(),
        source,
    }
}

/// Writes a file through a temporary sibling, fsync and rename, so that a reader (or a run
/// killed half-way) sees the old file or the new one, never a torn one.
pub fn write_atomic(
    path: &Path,
    fill: impl FnOnce(&Path) -> std::io::Result<()>,
) -> Result<(), OutputError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.partial"));
    let result = (|| {
        fill(&tmp)?;
        File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, path)?;
        sync_dir(path.parent().unwrap_or(Path::new(".")))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(write_error(path))
}

pub fn write_atomic_bytes(path: &Path, bytes: &[u8]) -> Result<(), OutputError> {
    write_atomic(path, |tmp| std::fs::write(tmp, bytes))
}

/// Makes a rename inside `dir` durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// One line of `train-log.jsonl`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct StepRecord {
    pub stage: usize,
    pub epoch: usize,
    pub step: u64,
    pub loss: f64,
    pub lr: f64,
    pub images_per_s: f64,
    /// With `phase_timing`: seconds this step spent reading, moving and augmenting images, in
    /// the network, loss and update, waiting for the slowest rank to reach the collectives, and
    /// in the collectives themselves (the slowest rank's figure for each).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub phases: Option<Phases>,
}

/// Seconds of one step by phase, and with benchmarks/opcount.cpp preloaded the operators this
/// rank dispatched outside the network (data, augmentation, loss, collectives' copies, update)
/// and inside it (forward and backward nodes).
#[derive(Debug, Default, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Phases {
    pub data_s: f64,
    pub compute_s: f64,
    pub wait_s: f64,
    /// All communication: the three collectives below together.
    pub comm_s: f64,
    /// The all-gather of the projections.
    pub gather_s: f64,
    /// The reduce-scatter of their gradients.
    pub scatter_s: f64,
    /// The all-reduce of the parameters' gradients (with the loss and stop flag).
    pub reduce_s: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops_outside_network: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops_network: Option<u64>,
}

/// `train-log.jsonl`, appended one line per step.
pub struct TrainLog {
    path: PathBuf,
    file: File,
}

impl TrainLog {
    /// Opens the log for appending after `done_steps` steps: lines of later steps (written by a
    /// run that was interrupted after its last checkpoint) are dropped, so each step appears once.
    pub fn open(path: &Path, done_steps: u64) -> Result<TrainLog, OutputError> {
        let kept: String = std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter(|l| serde_json::from_str::<StepRecord>(l).is_ok_and(|r| r.step < done_steps))
            .map(|l| format!("{l}\n"))
            .collect();
        write_atomic_bytes(path, kept.as_bytes())?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(write_error(path))?;
        Ok(TrainLog {
            path: path.to_owned(),
            file,
        })
    }

    pub fn append(&mut self, record: &StepRecord) -> Result<(), OutputError> {
        let line = serde_json::to_string(record).unwrap_or_default();
        writeln!(self.file, "{line}").map_err(write_error(&self.path))
    }
}

/// `embedding.npy`: the N×D float32 map, written by tch's npy writer.
pub fn write_npy(path: &Path, embedding: &tch::Tensor) -> Result<(), OutputError> {
    write_atomic(path, |tmp| {
        embedding
            .to_kind(tch::Kind::Float)
            .write_npy(tmp)
            .map_err(|e| std::io::Error::other(e.to_string()))
    })
}

/// `embedding.csv`: `index,split,label,x,y` (more columns for a wider map).
pub fn write_csv(
    path: &Path,
    rows: &[Vec<f32>],
    splits: &[&str],
    labels: &[i64],
) -> Result<(), OutputError> {
    let dims = rows.first().map_or(0, Vec::len);
    let mut names = vec!["index".to_owned(), "split".into(), "label".into()];
    names.extend(
        ["x", "y"]
            .iter()
            .map(|s| s.to_string())
            .chain((2..dims).map(|d| format!("z{d}")))
            .take(dims),
    );
    let mut out = names.join(",") + "\n";
    for (i, row) in rows.iter().enumerate() {
        out.push_str(&format!("{i},{},{}", splits[i], labels[i]));
        for v in row {
            out.push_str(&format!(",{v}"));
        }
        out.push('\n');
    }
    write_atomic_bytes(path, out.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.npy");
        let t = tch::Tensor::from_slice(&[1.0f32, 2.0, 3.0, -4.5]).view([2, 2]);
        write_npy(&path, &t).unwrap();
        let back = tch::Tensor::read_npy(&path).unwrap();
        assert_eq!(
            Vec::<f32>::try_from(back.view([-1])).unwrap(),
            [1.0, 2.0, 3.0, -4.5]
        );
        assert!(!dir.path().join(".e.npy.partial").exists());
    }

    #[test]
    fn the_log_drops_steps_after_the_resume_point() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        let rec = |step| StepRecord {
            stage: 0,
            epoch: 0,
            step,
            loss: 1.0,
            lr: 0.1,
            images_per_s: 1.0,
            phases: (step % 2 == 0).then_some(Phases::default()),
        };
        let mut log = TrainLog::open(&path, 0).unwrap();
        for s in 0..5 {
            log.append(&rec(s)).unwrap();
        }
        drop(log);
        let mut log = TrainLog::open(&path, 3).unwrap();
        log.append(&rec(3)).unwrap();
        let steps: Vec<u64> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<StepRecord>(l).unwrap().step)
            .collect();
        assert_eq!(steps, [0, 1, 2, 3]);
    }
}
