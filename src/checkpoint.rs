//! Checkpoints: one folder per checkpoint, `checkpoints/step-NNNNNNNNNN/` with `state.safetensors`
//! (model variables and momentum buffers) and `meta.json` (position, world size, config, the
//! data's fingerprint and the state file's SHA-256).
//!
//! Rank 0 writes a checkpoint into a hidden temporary folder, fsyncs both files, renames the
//! folder into place and fsyncs the parent: a checkpoint folder either exists whole or not at
//! all, so a kill at any moment leaves the previous checkpoint readable. A resume trusts nothing
//! it reads: a checkpoint of another config or other data stops the run; one whose state file
//! fails its digest, whose position is not a place in the schedule, whose tensors are not the
//! model's and optimizer's, or that holds a value that is not finite is skipped, with a warning,
//! for the next older one. The random streams are counter-based (keyed by seed, stage, epoch
//! and image), so the position is all the random state there is.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::{nn, Tensor};

use crate::config::Config;
use crate::data::{hex, Fingerprint};
use crate::optim::FlatParams;
use crate::outputs::{sync_dir, write_atomic_bytes, OutputError};
use crate::schedule::Position;

/// Checkpoints kept besides the last one of each stage.
const KEEP_NEWEST: usize = 2;
const STATE: &str = "state.safetensors";
const META: &str = "meta.json";
/// Prefix of the optimizer's tensors in the state file; the model's variables have none.
const OPTIM: &str = "optim.";
/// Format 2 adds the state file's digest and the data's fingerprint, and saves every momentum
/// buffer; format 1 checkpoints (without them) still resume.
pub const FORMAT: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error("cannot write checkpoint {path}: {message}")]
    Write { path: PathBuf, message: String },
    #[error("{path} was written by a run with another configuration ({field} differs: {was} there, {now} now); resume with the same config or choose a new --out")]
    Mismatch {
        path: PathBuf,
        field: String,
        was: String,
        now: String,
    },
    #[error("{path} was written by a run on other data ({difference}); pass that run's --data, or choose a new --out for this data")]
    DataDiffers { path: PathBuf, difference: String },
    #[error("none of the {count} checkpoints in {root} can be resumed (the newest, {newest}: {why}); delete them to start over, or choose a new --out")]
    NoneUsable {
        root: PathBuf,
        count: usize,
        newest: String,
        why: String,
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
    #[serde(default)]
    pub state_sha256: Option<String>,
    #[serde(default)]
    pub data: Option<Fingerprint>,
    pub config: Config,
}

/// A checkpoint folder, its meta read (or why it could not be).
#[derive(Debug)]
pub struct Found {
    pub dir: PathBuf,
    pub meta: Result<Meta, String>,
}

/// A checkpoint that passed every check and was copied into the model and optimizer.
#[derive(Debug)]
pub struct Checkpoint {
    pub dir: PathBuf,
    pub meta: Meta,
}

/// What a resume found: the checkpoint it continues from, and the newer ones it skipped, with
/// the reason for each.
#[derive(Debug, Default)]
pub struct Resume {
    pub from: Option<Checkpoint>,
    pub skipped: Vec<(PathBuf, String)>,
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

/// The run's settings a checkpoint must match, and the schedule its position must fit.
pub struct Expect<'a> {
    pub config: &'a Config,
    pub data: &'a Fingerprint,
    pub steps_per_epoch: usize,
}

/// Restores the newest usable checkpoint under `root` into `vs` and `opt` (see the module's
/// head for what is checked). No checkpoint: a fresh start; checkpoints, none usable: an error.
pub fn resume(
    root: &Path,
    expect: &Expect,
    vs: &nn::VarStore,
    opt: &FlatParams,
) -> Result<Resume, CheckpointError> {
    let found = list(root);
    let mut resume = Resume::default();
    for f in &found {
        let verdict = f.meta.clone().and_then(|meta| {
            if let Some(e) = foreign(&f.dir, &meta, expect) {
                return Ok(Err(e));
            }
            verify(&f.dir, &meta, expect, vs, opt).map(|()| Ok(meta))
        });
        match verdict {
            Ok(Ok(meta)) => {
                resume.from = Some(Checkpoint {
                    dir: f.dir.clone(),
                    meta,
                });
                return Ok(resume);
            }
            Ok(Err(foreign)) => return Err(foreign),
            Err(why) => resume.skipped.push((f.dir.clone(), why)),
        }
    }
    match resume.skipped.first() {
        None => Ok(resume),
        Some((newest, why)) => Err(CheckpointError::NoneUsable {
            root: root.to_owned(),
            count: found.len(),
            newest: newest.display().to_string(),
            why: why.clone(),
        }),
    }
}

/// A checkpoint of another run: another config or other data.
fn foreign(dir: &Path, meta: &Meta, expect: &Expect) -> Option<CheckpointError> {
    if let Err(e) = check_compatible(dir, &meta.config, expect.config) {
        return Some(e);
    }
    let difference = meta.data.as_ref()?.difference(expect.data)?;
    Some(CheckpointError::DataDiffers {
        path: dir.to_owned(),
        difference,
    })
}

/// Every check of one checkpoint of this run; on success its tensors are in `vs` and `opt`.
fn verify(
    dir: &Path,
    meta: &Meta,
    expect: &Expect,
    vs: &nn::VarStore,
    opt: &FlatParams,
) -> Result<(), String> {
    let p = meta.position;
    if !p.fits(expect.steps_per_epoch, &expect.config.epochs) {
        return Err(format!(
            "its position (stage {}, epoch {}, batch {}, step {}) is not a place in this run's schedule",
            p.stage, p.epoch, p.batch, p.step
        ));
    }
    if !meta.loss.is_finite() && p.step > 0 {
        return Err(format!("its loss was {}", meta.loss));
    }
    let bytes = std::fs::read(dir.join(STATE)).map_err(|e| format!("{STATE}: {e}"))?;
    if bytes.len() as u64 != meta.state_bytes {
        return Err(format!(
            "{STATE} holds {} bytes, meta.json says {} (torn)",
            bytes.len(),
            meta.state_bytes
        ));
    }
    match &meta.state_sha256 {
        Some(digest) if *digest != hex(&Sha256::digest(&bytes)) => {
            return Err(format!("{STATE} does not match its SHA-256 in meta.json"));
        }
        None if meta.format >= 2 => return Err("meta.json has no digest".into()),
        _ => {}
    }
    let tensors = Tensor::read_safetensors(dir.join(STATE)).map_err(|e| format!("{STATE}: {e}"))?;
    let mut targets: std::collections::BTreeMap<String, Tensor> =
        vs.variables().into_iter().collect();
    for (name, t) in opt.momentum() {
        targets.insert(format!("{OPTIM}{name}"), t);
    }
    let mut pairs = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let target = targets
            .remove(&name)
            .ok_or_else(|| format!("it holds {name}, which the model does not have"))?;
        if target.size() != t.size() {
            return Err(format!(
                "{name} has shape {:?}, the model {:?}",
                t.size(),
                target.size()
            ));
        }
        if !bool::try_from(t.isfinite().all()).unwrap_or(false) {
            return Err(format!(
                "{name} holds values that are not finite; delete it"
            ));
        }
        pairs.push((target, t));
    }
    // Format 1 saved a momentum buffer only once it had been used; a missing one is zero.
    if let Some(missing) = targets
        .keys()
        .find(|n| meta.format >= 2 || !n.starts_with(OPTIM))
    {
        return Err(format!("{missing} is missing"));
    }
    let _guard = tch::no_grad_guard();
    for (mut target, t) in pairs {
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
    let mut state = std::fs::File::open(tmp.join(STATE)).map_err(io)?;
    state.sync_all().map_err(io)?;
    // The digest of what reached the file, read back.
    let mut hash = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = state.read(&mut buffer).map_err(io)?;
        if n == 0 {
            break;
        }
        hash.update(&buffer[..n]);
    }
    meta.state_bytes = state.metadata().map_err(io)?.len();
    meta.state_sha256 = Some(hex(&hash.finalize()));
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
    let readable = list(root)
        .into_iter()
        .filter_map(|f| f.meta.ok().map(|m| (f.dir, m.stage_end)));
    for (i, (dir, stage_end)) in readable.enumerate() {
        if i >= KEEP_NEWEST && !stage_end {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

/// The checkpoint folders under `root`, newest (highest step in the name) first.
pub fn list(root: &Path) -> Vec<Found> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut found: Vec<(u64, Found)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix("step-")?.parse().ok()?;
            let dir = e.path();
            let meta = std::fs::read(dir.join(META))
                .map_err(|e| format!("{META}: {e}"))
                .and_then(|b| {
                    serde_json::from_slice(&b)
                        .map_err(|e| format!("{META}: {}", crate::config::quote(&e.to_string())))
                });
            Some((step, Found { dir, meta }))
        })
        .collect();
    found.sort_by_key(|(step, _)| std::cmp::Reverse(*step));
    found.into_iter().map(|(_, f)| f).collect()
}

/// Everything but the run-length and machine settings must match for a resume to continue the
/// same run.
fn check_compatible(dir: &Path, was: &Config, now: &Config) -> Result<(), CheckpointError> {
    let norm = |c: &Config| {
        let mut c = c.clone();
        c.max_steps = 0;
        c.threads = 0;
        c.checkpoint_every = 1;
        c.device = crate::config::DeviceChoice::Auto;
        c.phase_timing = false;
        c.micro_batch = 0;
        c.stall_timeout_s = 0.0;
        serde_json::to_value(c).unwrap_or_default()
    };
    let (was, now_v) = (norm(was), norm(now));
    if was == now_v {
        return Ok(());
    }
    let (field, a, b) = first_difference("", &was, &now_v).unwrap_or_default();
    Err(CheckpointError::Mismatch {
        path: dir.to_owned(),
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
    use tch::Device;

    fn meta(step: u64, stage_end: bool) -> Meta {
        Meta {
            format: FORMAT,
            position: Position {
                step,
                batch: step as usize,
                ..Position::START
            },
            stage_end,
            world_size: 1,
            loss: 0.0,
            state_bytes: 0,
            state_sha256: None,
            data: Some(data()),
            config: Config::default(),
        }
    }

    fn data() -> Fingerprint {
        Fingerprint {
            format: "cifar10".into(),
            train: 50_000,
            test: 10_000,
            shape: [3, 32, 32],
            digest: "ab".into(),
        }
    }

    /// A model of one variable `w` = `value`, and its optimizer.
    fn model(value: f32) -> (nn::VarStore, FlatParams) {
        let vs = nn::VarStore::new(Device::Cpu);
        let _ = vs
            .root()
            .var_copy("w", &Tensor::from_slice(&[value, value]));
        let opt = FlatParams::new(&vs, |_| 0);
        (vs, opt)
    }

    fn w(vs: &nn::VarStore) -> Vec<f32> {
        Vec::<f32>::try_from(&vs.variables()["w"]).unwrap()
    }

    #[test]
    fn resume_takes_the_newest_good_checkpoint_and_says_what_it_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for step in 1..=5 {
            let (vs, opt) = model(step as f32);
            save_state(root, meta(step, step == 2), &vs, &opt).unwrap();
        }
        let steps: Vec<String> = list(root)
            .iter()
            .map(|f| f.dir.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            steps,
            ["step-0000000005", "step-0000000004", "step-0000000002"]
        );
        let config = Config::default();
        let expect = Expect {
            config: &config,
            data: &data(),
            steps_per_epoch: 48,
        };
        let (vs, opt) = model(0.0);
        let r = resume(root, &expect, &vs, &opt).unwrap();
        assert_eq!(r.from.unwrap().meta.position.step, 5);
        assert_eq!(w(&vs), [5.0, 5.0]);

        // One flipped byte in the newest state file: skipped for the next older one.
        let state = root.join("step-0000000005").join(STATE);
        let mut bytes = std::fs::read(&state).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        std::fs::write(&state, bytes).unwrap();
        let r = resume(root, &expect, &vs, &opt).unwrap();
        assert_eq!(r.from.unwrap().meta.position.step, 4);
        assert_eq!(w(&vs), [4.0, 4.0]);
        assert!(r.skipped[0].1.contains("SHA-256"), "{:?}", r.skipped);

        // Other data, another config: the run stops.
        let other = Fingerprint {
            train: 100,
            ..data()
        };
        let refused = |e: &Expect| resume(root, e, &vs, &opt).unwrap_err().to_string();
        let e = refused(&Expect {
            data: &other,
            ..expect
        });
        assert!(
            e.contains("50000 training + 10000 test images then, 100 training"),
            "{e}"
        );
        let config = Config {
            batch_size: 512,
            ..Config::default()
        };
        let e = refused(&Expect {
            config: &config,
            ..expect
        });
        assert!(e.contains("batch_size differs: 1024 there, 512 now"), "{e}");

        // Nothing usable left: one error naming the newest and why, never a fresh start.
        for step in [4, 2] {
            std::fs::write(root.join(format!("step-{step:010}")).join(META), b"{").unwrap();
        }
        let e = resume(root, &expect, &vs, &opt).unwrap_err().to_string();
        assert!(
            e.contains("none of the 3 checkpoints") && e.contains("SHA-256"),
            "{e}"
        );
    }
}
