//! `tsimcne-dist`: the command line. Every error ends as one line naming the input and the
//! fix, and a non-zero exit on every rank (2: bad input, 1: failure while running, 75: stopped
//! by a signal after a checkpoint, so that a job script can requeue).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use tsimcne_dist::config::Config;
use tsimcne_dist::dist::mpi::MpiCollectives;
use tsimcne_dist::dist::placement::Placement;
use tsimcne_dist::dist::watchdog::Watched;
use tsimcne_dist::dist::{self, Collectives};
use tsimcne_dist::train::{self, Outcome, TrainError};

/// Exit code of a run stopped by SIGUSR1/SIGTERM after writing its checkpoint (EX_TEMPFAIL).
const EXIT_STOPPED: u8 = 75;
const EXIT_INPUT: u8 = 2;
const EXIT_FAILED: u8 = 1;

#[derive(Parser)]
#[command(
    name = "tsimcne-dist",
    version,
    about = "t-SimCNE on many devices: launch one rank per device with mpirun or srun"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train the three stages; running the same command again resumes from the newest checkpoint.
    Train {
        /// TOML config (defaults: the paper's recipe).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Folder of CIFAR-10/100 binary batches or IDX files.
        #[arg(long)]
        data: PathBuf,
        /// Run folder: config, log, checkpoints, embedding, metrics, map.
        #[arg(long)]
        out: PathBuf,
        /// Override a config key, e.g. --set batch_size=512 --set model.backbone=small.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
}

fn main() -> ExitCode {
    keep_freed_memory();
    // Signals are watched from the first instant: a stop asked for while MPI starts or the data
    // loads ends the run with 75 before its first step (nothing to save); later, after the step
    // under way and a checkpoint.
    let stop = Arc::new(AtomicBool::new(false));
    let watched = watch_signals(&stop);
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if !e.use_stderr() => {
            let _ = e.print(); // --help, --version
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // Before MPI starts, every rank parsed the same flags: the first one speaks.
            if launcher_rank() == 0 {
                // clap's first paragraph, on one line: "the following required arguments
                // were not provided: --data <DATA>".
                let text = e.to_string();
                let head = text.split("\n\n").next().unwrap_or_default();
                let head: Vec<&str> = head.split_whitespace().collect();
                let head = head.join(" ");
                let head = head.strip_prefix("error: ").unwrap_or(&head);
                eprintln!("tsimcne-dist: {head}; see tsimcne-dist train --help");
            }
            return ExitCode::from(EXIT_INPUT);
        }
    };
    #[cfg(feature = "cuda")]
    if let Err(e) = dist::nccl::ensure_libnccl() {
        eprintln!("tsimcne-dist: {e}");
        return ExitCode::from(EXIT_FAILED);
    }
    let mpi = match MpiCollectives::init() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tsimcne-dist: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    init_logging(mpi.rank(), mpi.world());
    if let Err(e) = watched {
        tracing::warn!("cannot watch SIGUSR1/SIGTERM/SIGINT/SIGHUP ({e}): a stop request will end the run without a checkpoint");
    }
    let Command::Train {
        config,
        data,
        out,
        overrides,
    } = cli.command;

    // Everything that can be wrong with the inputs is found before any step, on every rank;
    // the lowest failing rank says what, and all ranks exit together.
    let placement = Placement::here(mpi.local());
    let chosen = Config::load(config.as_deref(), &overrides, mpi.world())
        .map_err(TrainError::from)
        .and_then(|cfg| Ok((dist::choose_device(cfg.device, placement.local_rank)?, cfg)));
    let (device, cfg) = match agree(&mpi, chosen) {
        Ok(v) => v,
        Err(code) => return code,
    };
    tracing::info!(target: PLACEMENT, device = ?device, "{placement}");
    if let Some(why) = placement.disagreement() {
        tracing::warn!("{why}");
    }
    let comm = match dist::connect(mpi, device) {
        Ok(c) => c,
        Err(e) => {
            // A rank that exits non-zero makes mpirun end the others.
            eprintln!("tsimcne-dist: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let comm = Watched::new(
        comm,
        Duration::from_secs_f64(cfg.stall_timeout_s),
        out.clone(),
        i32::from(EXIT_FAILED),
    );
    let comm: &dyn Collectives = &comm;
    let trainer = match agree(comm, train::prepare(cfg, device, comm, &data, &out)) {
        Ok(t) => t,
        Err(code) => return code,
    };

    match trainer.run(&stop) {
        Ok(Outcome::Finished) | Ok(Outcome::StepLimit) => ExitCode::SUCCESS,
        Ok(Outcome::Stopped) => ExitCode::from(EXIT_STOPPED),
        // Every rank sees the same loss, so every rank stops here together.
        Err(e @ TrainError::NotFinite { .. }) => {
            if comm.is_root() {
                report(comm, &e);
            }
            ExitCode::from(EXIT_FAILED)
        }
        // Any other error may be this rank's alone: the others would wait for it forever in
        // the next collective, so end the whole job.
        Err(e) => {
            report(comm, &e);
            if comm.world() > 1 {
                comm.abort(i32::from(EXIT_FAILED));
            }
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// Every step allocates and frees the same large activations (51 MB for one tiny-CNN layer at
/// batch 512). glibc serves blocks above 32 MB with a fresh mmap each time, and the kernel
/// then faults in and zeroes every page on first touch, every step: measured here, 30 % of a
/// CPU step. Served from the heap and not trimmed, the blocks are reused: the tiny CNN went
/// from 908 to 1,289 images/s on 2 cores. A user's own MALLOC_MMAP_MAX_ or
/// MALLOC_TRIM_THRESHOLD_ wins.
fn keep_freed_memory() {
    // SAFETY: mallopt only changes malloc's parameters; called before any other thread starts.
    unsafe {
        if std::env::var_os("MALLOC_MMAP_MAX_").is_none() {
            libc::mallopt(libc::M_MMAP_MAX, 0);
        }
        if std::env::var_os("MALLOC_TRIM_THRESHOLD_").is_none() {
            libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        }
    }
}

/// Seconds (monotonic) at the first stop request; 0 before any.
static FIRST_STOP: AtomicI64 = AtomicI64::new(0);
/// A request this long after the first means "now": the process ends at once (exit 130).
const INSIST_AFTER_S: i64 = 3;

/// SIGUSR1 (SLURM's warning before the time limit), SIGTERM, SIGINT and SIGHUP raise `stop`.
/// The same request arriving twice within a few seconds is one request (a launcher forwards the
/// terminal's Ctrl-C that the ranks also got; SLURM signals the ranks beside the job script); a
/// SIGTERM, SIGINT or SIGHUP after that ends the process at once.
fn watch_signals(stop: &Arc<AtomicBool>) -> std::io::Result<()> {
    for signal in [SIGTERM, SIGINT, SIGHUP, SIGUSR1] {
        let stop = Arc::clone(stop);
        let action = move || {
            let now = monotonic_seconds();
            let first = FIRST_STOP.load(Ordering::SeqCst);
            if first == 0 {
                FIRST_STOP.store(now.max(1), Ordering::SeqCst);
                stop.store(true, Ordering::SeqCst);
            } else if signal != SIGUSR1 && now - first >= INSIST_AFTER_S {
                // SAFETY: _exit is async-signal-safe and ends the process without unwinding.
                unsafe { libc::_exit(130) };
            }
        };
        // SAFETY: the action only reads the clock, touches atomics and may call _exit, all
        // async-signal-safe.
        unsafe { signal_hook::low_level::register(signal, action) }?;
    }
    Ok(())
}

fn monotonic_seconds() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we own; it is async-signal-safe.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec
}

/// This process's rank as the launcher set it (OpenMPI, PMIx, SLURM), before MPI starts.
fn launcher_rank() -> usize {
    [
        "OMPI_COMM_WORLD_RANK",
        "PMIX_RANK",
        "PMI_RANK",
        "SLURM_PROCID",
    ]
    .iter()
    .find_map(|v| std::env::var(v).ok()?.parse().ok())
    .unwrap_or(0)
}

/// Every rank's `result` agreed: the value when all succeeded, else the exit code, with the
/// lowest failing rank's error printed once.
fn agree<T>(comm: &dyn Collectives, result: Result<T, TrainError>) -> Result<T, ExitCode> {
    let failing = comm.first_failing(result.is_err());
    match (result, failing) {
        (Ok(v), None) => Ok(v),
        (Err(e), first) => {
            if first == Some(comm.rank()) {
                report(comm, &e);
            }
            Err(ExitCode::from(if e.is_input_error() {
                EXIT_INPUT
            } else {
                EXIT_FAILED
            }))
        }
        // This rank is fine but another is not: its error was printed there.
        (Ok(_), Some(_)) => Err(ExitCode::from(EXIT_INPUT)),
    }
}

fn report(comm: &dyn Collectives, e: &TrainError) {
    if comm.world() > 1 {
        eprintln!("tsimcne-dist: rank {}: {e}", comm.rank());
    } else {
        eprintln!("tsimcne-dist: {e}");
    }
}

/// The log target of each rank's placement line.
const PLACEMENT: &str = "placement";

/// Logs to stderr, every line tagged with the rank; `RUST_LOG` filters (default: info on rank
/// 0, warnings and the placement line on the others).
fn init_logging(rank: usize, world: usize) {
    use tracing_subscriber::EnvFilter;
    // Every rank says where it runs (a multi-node job's log then maps ranks to nodes).
    let default = if rank == 0 {
        "info".to_owned()
    } else {
        format!("warn,{PLACEMENT}=info")
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&default));
    let width = world.to_string().len();
    let tag = format!("rank {rank:>width$}/{world}");
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .event_format(RankFormat(tag))
        .init();
}

/// `2026-12-03T04:00:00Z  INFO rank 0/2 message key=value`.
struct RankFormat(String);

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for RankFormat
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        use tracing_subscriber::fmt::time::FormatTime;
        tracing_subscriber::fmt::time::SystemTime.format_time(&mut writer)?;
        write!(writer, " {:>5} {} ", event.metadata().level(), self.0)?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}
