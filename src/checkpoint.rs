//! Checkpoints: one folder per checkpoint, `checkpoints/step-NNNNNNNNNN/` with `state.safetensors`
//! (model variables and momentum buffers) and `meta.json` (position, world size, config).
//!
//! Rank 0 writes a checkpoint into a hidden temporary folder, fsyncs both files, renames the
//! folder into place and fsyncs the parent: a checkpoint folder either exists whole or not at
//! all, so a kill at any moment leaves the previous checkpoint readable. Every rank resumes from
//! the newest folder that reads back. The random streams are counter-based (keyed by seed,
//! stage, epoch and image), so the position is all the random state there is.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use crate::config::Config;
use crate::optim::FlatParams;
use crate::outputs::{sync_dir, write_atomic_bytes, OutputError};
use crate::schedule::Position;

/// Checkpoints kept besides the last one of each stage.
const KEEP_NEWEST: usize = 2;
const STATE: &str = "state.safetensors";
const META: &str = "meta.json";
/// Prefix of the optimizer's tensors in the state file; the model's variables have none.
const OPTIM: &str = "optim.";

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error("cannot write checkpoint {path}: {message}")]
    Write { path: PathBuf, message: String },
    #[error("checkpoint {path} does not read back: {message}")]
    Read { path: PathBuf, message: String },
    #[error("{path} was written by a run with another configuration ({field} differs: {was} there, {now} now); resume with the same config or choose a new --out")]
    Mismatch {
        path: PathBuf,
        field: String,
        was: String,
        now: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    pub format: u32,
    /// The next step to run.
    pub position: Position,
    /// Whether this checkpoint ends a stage (kept when newer ones arrive).
    pub stage_end: bool,
    /// The ranks that wrote it; any other number resumes it, with the same global batch.
    pub world_size: usize,
    pub loss: f64,
    pub state_bytes: u64,
    pub config: Config,
}

/// A checkpoint on disk.
#[derive(Debug)]
pub struct Checkpoint {
    pub dir: PathBuf,
    pub meta: Meta,
}

impl Checkpoint {
    /// The saved tensors, by name.
    pub fn tensors(&self) -> Result<Vec<(String, Tensor)>, CheckpointError> {
        Tensor::read_safetensors(self.dir.join(STATE)).map_err(|e| CheckpointError::Read {
            path: self.dir.clone(),
            message: e.to_string(),
        })
    }
}

/// Writes a checkpoint of the model (every variable of `vs`, batch-norm statistics too) and the
/// optimizer's momentum at `meta.position` under `root`, and prunes old ones.
pub fn save_state(
    root: &Path,
    meta: Meta,
    vs: &nn::VarStore,
    opt: &FlatParams,
) -> Result<PathBuf, CheckpointError> {
    let mut tensors: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    tensors.extend(
        opt.momentum()
            .into_iter()
            .map(|(n, t)| (format!("{OPTIM}{n}"), t)),
    );
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    save(root, meta, &tensors)
}

/// Copies a checkpoint's tensors into the model and the optimizer. Momentum buffers a
/// checkpoint lacks stay zero: a buffer that starts at zero takes its first step's update, as
/// one that did not exist yet.
pub fn restore(
    ck: &Checkpoint,
    vs: &nn::VarStore,
    opt: &FlatParams,
) -> Result<(), CheckpointError> {
    let mut vars = vs.variables();
    let mut momentum: std::collections::HashMap<String, Tensor> =
        opt.momentum().into_iter().collect();
    let _guard = tch::no_grad_guard();
    for (name, t) in ck.tensors()? {
        let target = match name.strip_prefix(OPTIM) {
            Some(buf) => momentum.get_mut(buf),
            None => vars.get_mut(&name),
        };
        let Some(target) = target else { continue };
        if target.size() != t.size() {
            return Err(CheckpointError::Read {
                path: ck.dir.clone(),
                message: format!(
                    "{name} has shape {:?}, the model {:?}",
                    t.size(),
                    target.size()
                ),
            });
        }
        target.copy_(&t);
    }
    Ok(())
}

/// Writes a checkpoint of `tensors` at `meta.position` under `root` and prunes old ones.
fn save(
    root: &Path,
    mut meta: Meta,
    tensors: &[(String, Tensor)],
) -> Result<PathBuf, CheckpointError> {
    let name = format!("step-{:010}", meta.position.step);
    let fin = root.join(&name);
    let tmp = root.join(format!(".partial-{name}"));
    let err = |message: String| CheckpointError::Write {
        path: fin.clone(),
        message,
    };
    let io = |e: std::io::Error| err(e.to_string());
    std::fs::create_dir_all(root).map_err(io)?;
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io)?;
    let named: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    Tensor::write_safetensors(&named, tmp.join(STATE)).map_err(|e| err(e.to_string()))?;
    let state = std::fs::File::open(tmp.join(STATE)).map_err(io)?;
    state.sync_all().map_err(io)?;
    meta.state_bytes = state.metadata().map_err(io)?.len();
    let json = serde_json::to_vec_pretty(&meta).map_err(|e| err(e.to_string()))?;
    write_atomic_bytes(&tmp.join(META), &json)?;
    if fin.exists() {
        // The same step saved again (a resumed run stopping where it started): replace it.
        std::fs::remove_dir_all(&fin).map_err(io)?;
    }
    std::fs::rename(&tmp, &fin).map_err(io)?;
    sync_dir(root).map_err(io)?;
    prune(root);
    Ok(fin)
}

/// Removes checkpoints beyond the newest few, keeping every stage's last one. Best effort:
/// a checkpoint that cannot be removed costs disk, not correctness.
fn prune(root: &Path) {
    let all = list(root);
    for (i, ck) in all.iter().enumerate() {
        if i >= KEEP_NEWEST && !ck.meta.stage_end {
            let _ = std::fs::remove_dir_all(&ck.dir);
        }
    }
}

/// Complete checkpoints under `root`, newest first. A folder that does not read back (its meta
/// missing or unparsable, its state file of the wrong size) is skipped.
pub fn list(root: &Path) -> Vec<Checkpoint> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut found: Vec<Checkpoint> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("step-"))
        .filter_map(|e| {
            read_meta(&e.path()).map(|meta| Checkpoint {
                dir: e.path(),
                meta,
            })
        })
        .collect();
    found.sort_by_key(|c| std::cmp::Reverse(c.meta.position.step));
    found
}

fn read_meta(dir: &Path) -> Option<Meta> {
    let meta: Meta = serde_json::from_slice(&std::fs::read(dir.join(META)).ok()?).ok()?;
    let size = std::fs::metadata(dir.join(STATE)).ok()?.len();
    (size == meta.state_bytes).then_some(meta)
}

/// The newest complete checkpoint, after checking that it belongs to a run of `config`.
pub fn latest(root: &Path, config: &Config) -> Result<Option<Checkpoint>, CheckpointError> {
    let Some(ck) = list(root).into_iter().next() else {
        return Ok(None);
    };
    check_compatible(&ck, config)?;
    Ok(Some(ck))
}

/// Everything but the run-length and machine settings must match for a resume to continue the
/// same run.
fn check_compatible(ck: &Checkpoint, now: &Config) -> Result<(), CheckpointError> {
    let norm = |c: &Config| {
        let mut c = c.clone();
        c.max_steps = 0;
        c.threads = 0;
        c.checkpoint_every = 1;
        c.device = crate::config::DeviceChoice::Auto;
        c.phase_timing = false;
        serde_json::to_value(c).unwrap_or_default()
    };
    let (was, now_v) = (norm(&ck.meta.config), norm(now));
    if was == now_v {
        return Ok(());
    }
    let (field, a, b) = first_difference("", &was, &now_v).unwrap_or_default();
    Err(CheckpointError::Mismatch {
        path: ck.dir.clone(),
        field,
        was: a,
        now: b,
    })
}

fn first_difference(
    prefix: &str,
    a: &serde_json::Value,
    b: &serde_json::Value,
) -> Option<(String, String, String)> {
    match (a, b) {
        (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
            x.iter().find_map(|(k, v)| {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                first_difference(&key, v, y.get(k).unwrap_or(&serde_json::Value::Null))
            })
        }
        _ if a != b => Some((prefix.to_owned(), a.to_string(), b.to_string())),
        _ => None,
    }
}

/// Removes temporary folders a killed writer left behind.
pub fn clean_partial(root: &Path) {
    if let Ok(entries) = std::fs::read_dir(root) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(".partial-") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(step: u64, stage_end: bool) -> Meta {
        Meta {
            format: 1,
            position: Position {
                step,
                ..Position::START
            },
            stage_end,
            world_size: 1,
            loss: 0.0,
            state_bytes: 0,
            config: Config::default(),
        }
    }

    #[test]
    fn save_list_prune_and_reject_torn_or_foreign_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let t = vec![("w".to_owned(), Tensor::from_slice(&[1.0f32, 2.0]))];
        for step in 1..=5 {
            save(root, meta(step, step == 2), &t).unwrap();
        }
        let steps: Vec<u64> = list(root).iter().map(|c| c.meta.position.step).collect();
        assert_eq!(steps, [5, 4, 2], "newest two and the stage end are kept");
        let newest = latest(root, &Config::default()).unwrap().unwrap();
        assert_eq!(
            Vec::<f32>::try_from(&newest.tensors().unwrap()[0].1).unwrap(),
            [1.0, 2.0]
        );
        // A torn state file makes the folder invisible; the previous one is used.
        std::fs::write(newest.dir.join(STATE), b"torn").unwrap();
        assert_eq!(
            latest(root, &Config::default())
                .unwrap()
                .unwrap()
                .meta
                .position
                .step,
            4
        );
        let other = Config {
            batch_size: 512,
            ..Config::default()
        };
        let err = latest(root, &other).unwrap_err().to_string();
        assert!(
            err.contains("batch_size differs: 1024 there, 512 now"),
            "{err}"
        );
        let fine = Config {
            max_steps: 7,
            threads: 3,
            ..Config::default()
        };
        assert!(latest(root, &fine).is_ok());
    }
}
