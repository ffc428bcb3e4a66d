//! The run folder (`--out`): one run at a time, by an advisory lock rank 0 takes before it
//! writes anything; the resolved config; and the marker a run stopped on request leaves, so
//! that job scripts know a stop from a failure even where the launcher hides the exit code
//! (mpirun returns 1 when its ranks return 75).

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use tracing::warn;

use super::{write_atomic_bytes, OutputError};
use crate::config::{quote, Config};

/// The marker of a run stopped on request, with its step and checkpoint.
pub const STOPPED: &str = "STOPPED";
const LOCK: &str = ".lock";

#[derive(Debug, thiserror::Error)]
pub enum FolderError {
    #[error("--out {0} is a file; choose a folder (it will be made)")]
    NotAFolder(PathBuf),
    #[error("--out {path} is a link to {target}, which does not exist; make that folder or choose another --out")]
    DanglingLink { path: PathBuf, target: PathBuf },
    #[error("cannot make or write run folder {path}: {source}; choose another --out")]
    Unwritable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("another run ({holder}) is using {path}; wait for it to end, or choose another --out")]
    Busy { path: PathBuf, holder: String },
    #[error(transparent)]
    Output(#[from] OutputError),
}

/// Rank 0's hold on the run folder: released when dropped (or when the process ends).
pub struct RunFolder {
    path: PathBuf,
    _lock: File,
}

impl RunFolder {
    /// Checks `out`, makes it and its `checkpoints/`, locks it, clears an old stop marker and
    /// writes the resolved config.
    pub fn open(out: &Path, cfg: &Config) -> Result<RunFolder, FolderError> {
        for path in [out.to_owned(), out.join("checkpoints")] {
            if let Ok(target) = std::fs::read_link(&path) {
                if !path.exists() {
                    return Err(FolderError::DanglingLink { path, target });
                }
            }
            if path.exists() && !path.is_dir() {
                return Err(FolderError::NotAFolder(path));
            }
        }
        let unwritable = |source| FolderError::Unwritable {
            path: out.to_owned(),
            source,
        };
        std::fs::create_dir_all(out.join("checkpoints")).map_err(unwritable)?;
        let lock = lock(out).map_err(unwritable)??;
        match std::fs::remove_file(out.join(STOPPED)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(unwritable(e)),
            _ => {}
        }
        write_atomic_bytes(&out.join("config.toml"), cfg.to_resolved_toml().as_bytes())?;
        Ok(RunFolder {
            path: out.to_owned(),
            _lock: lock,
        })
    }

    /// Leaves the stop marker: the run stopped on request at `step`, resumable from
    /// `checkpoint`.
    pub fn mark_stopped(&self, step: u64, checkpoint: &str) -> Result<(), OutputError> {
        let text = format!("stopped on request at step {step}; resume from {checkpoint}\n");
        write_atomic_bytes(&self.path.join(STOPPED), text.as_bytes())
    }
}

/// Takes the folder's lock and writes who holds it; `Busy` if another process holds it. Where
/// the file system has no locks (some network mounts), a warning, and the run goes on.
fn lock(out: &Path) -> std::io::Result<Result<File, FolderError>> {
    let path = out.join(LOCK);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)?;
    // SAFETY: flock on a descriptor this process owns; it reads no memory.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            return Ok(Err(FolderError::Busy {
                path: out.to_owned(),
                holder: quote(holder.trim()),
            }));
        }
        warn!(folder = %out.display(), "cannot lock the run folder ({e}); a second run on it would not be noticed");
    }
    file.set_len(0)?;
    writeln!(file, "pid {} on {}", std::process::id(), hostname())?;
    Ok(Ok(file))
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into the buffer we own.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match rc {
        0 => String::from_utf8_lossy(&buf[..end]).into_owned(),
        _ => "an unknown host".into(),
    }
}
