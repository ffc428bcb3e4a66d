//! A time limit on every collective. When a rank or its node dies mid-step, the other ranks wait
//! in their next collective for ever: MPI over TCP prints that a peer hung up and goes on
//! waiting, NCCL waits too, and the launcher (srun, whose step daemon on the dead node is gone)
//! waits for them. [`Watched`] times each collective on a thread of its own and ends the rank
//! with one line when one waits longer than the limit; the launcher then ends the job. The rank
//! also leaves that line in `OUT/STALLED`: srun has been seen to wait on for a step daemon
//! that died with its node even after the other ranks exited, and the job scripts end it then.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tch::Tensor;

use super::{Collectives, DistError};

/// The collectives that can wait for other ranks, named for the line that reports a stall.
const NAMES: [&str; 6] = [
    "all-gather",
    "all-reduce",
    "reduce-scatter",
    "host reduction",
    "broadcast",
    "barrier",
];

/// `inner`, with every collective that waits longer than a limit ending this process.
pub struct Watched {
    inner: Box<dyn Collectives>,
    clock: Arc<Clock>,
}

/// What the watching thread reads: when the collective under way began (milliseconds after
/// `origin`, plus one; 0 when none is) and which one it is.
struct Clock {
    origin: Instant,
    since_ms: AtomicU64,
    which: AtomicUsize,
}

impl Watched {
    /// Watches `inner`'s collectives: one that has not completed after `limit`, this process
    /// prints one line (naming the checkpoints of the run folder `out`), writes it to
    /// `out/STALLED` and exits with `exit_code`. A zero limit watches nothing.
    pub fn new(
        inner: Box<dyn Collectives>,
        limit: Duration,
        out: PathBuf,
        exit_code: i32,
    ) -> Watched {
        let clock = Arc::new(Clock {
            origin: Instant::now(),
            since_ms: AtomicU64::new(0),
            which: AtomicUsize::new(0),
        });
        if !limit.is_zero() {
            let watched = Arc::clone(&clock);
            let rank = inner.rank();
            std::thread::spawn(move || watch(&watched, limit, rank, &out, exit_code));
        }
        Watched { inner, clock }
    }

    fn timed<T>(&self, which: usize, f: impl FnOnce(&dyn Collectives) -> T) -> T {
        let now = self.clock.origin.elapsed().as_millis() as u64 + 1;
        self.clock.which.store(which, Ordering::Relaxed);
        self.clock.since_ms.store(now, Ordering::Release);
        let out = f(self.inner.as_ref());
        self.clock.since_ms.store(0, Ordering::Release);
        out
    }
}

/// The watching thread: checks a few times per limit, never returns.
fn watch(clock: &Clock, limit: Duration, rank: usize, out: &std::path::Path, exit_code: i32) {
    let limit_ms = limit.as_millis() as u64;
    let tick = (limit / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    loop {
        std::thread::sleep(tick);
        let since = clock.since_ms.load(Ordering::Acquire);
        let now = clock.origin.elapsed().as_millis() as u64 + 1;
        if since == 0 || now.saturating_sub(since) <= limit_ms {
            continue;
        }
        let what = NAMES[clock.which.load(Ordering::Relaxed)];
        let line = format!(
            "tsimcne-dist: rank {rank}: the {what} has waited {:.0} s for the other ranks \
             (stall_timeout_s): a rank or its node has died or stopped answering; ending this \
             rank. Run the same command again to resume from the newest checkpoint in {}",
            limit.as_secs_f64(),
            out.join("checkpoints").display()
        );
        eprintln!("{line}");
        // For the job script; the run folder may be gone or read-only, and the line is printed.
        let _ = std::fs::write(out.join("STALLED"), format!("{line}\n"));
        // The main thread is inside MPI or NCCL and cannot be unwound: end the process here.
        // SAFETY: _exit ends the process at once; nothing of ours is shared with it.
        unsafe { libc::_exit(exit_code) };
    }
}

impl Collectives for Watched {
    fn rank(&self) -> usize {
        self.inner.rank()
    }

    fn world(&self) -> usize {
        self.inner.world()
    }

    fn local(&self) -> (usize, usize) {
        self.inner.local()
    }

    fn all_gather(&self, t: &Tensor) -> Result<Tensor, DistError> {
        self.timed(0, |c| c.all_gather(t))
    }

    fn all_reduce_sum_(&self, t: &Tensor) -> Result<(), DistError> {
        self.timed(1, |c| c.all_reduce_sum_(t))
    }

    fn reduce_scatter_sum(&self, t: &Tensor) -> Result<Tensor, DistError> {
        self.timed(2, |c| c.reduce_scatter_sum(t))
    }

    fn max_host(&self, values: &[f64]) -> Vec<f64> {
        self.timed(3, |c| c.max_host(values))
    }

    fn broadcast_host(&self, bytes: &mut [u8]) {
        self.timed(4, |c| c.broadcast_host(bytes))
    }

    fn barrier(&self) {
        self.timed(5, |c| c.barrier())
    }

    fn abort(&self, code: i32) -> ! {
        self.inner.abort(code)
    }
}
