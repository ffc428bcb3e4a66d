//! Shared by the integration tests: small data sets in the real file formats, and runs of the
//! real binary under mpirun.
#![allow(dead_code)]

pub mod cluster;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Named tensors as flat f32 vectors.
pub type Named = Vec<(String, Vec<f32>)>;

pub const BIN: &str = env!("CARGO_BIN_EXE_tsimcne-dist");

/// A folder of CIFAR-10 binary batches: `per_file` images in each of the five training files
/// and in the test file. Class `c` is a colour blob at a class-specific place on noise, so a
/// network can learn the classes in a few steps.
pub fn write_cifar10(dir: &Path, per_file: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let mut state = 12345u64;
    let mut rand = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % 256) as u8
    };
    let names: Vec<String> = (1..=5)
        .map(|i| format!("data_batch_{i}.bin"))
        .chain(["test_batch.bin".to_owned()])
        .collect();
    for (f, name) in names.iter().enumerate() {
        let mut bytes = Vec::new();
        for i in 0..per_file {
            let label = ((f * per_file + i) % 10) as u8;
            bytes.push(label);
            let (cy, cx) = (4 + 3 * (label as usize % 4), 4 + 6 * (label as usize / 4));
            for ch in 0..3 {
                for y in 0..32usize {
                    for x in 0..32usize {
                        let inside = y.abs_diff(cy) < 8 && x.abs_diff(cx) < 8;
                        let tone = if inside {
                            60 + 60 * ((label as usize + ch) % 3) as u8
                        } else {
                            0
                        };
                        bytes.push(tone.saturating_add(rand() / 4));
                    }
                }
            }
        }
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

/// Writes `bytes` to `path`, making its folder.
pub fn write_file(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// IDX training files in `dir`: `n` grey `side`×`side` images (magic byte `magic`, the image
/// bytes `short_by` short) and `labels` labels.
pub fn write_idx(dir: &Path, n: u32, side: u32, magic: u8, short_by: usize, labels: u32) {
    let mut images = vec![0, 0, 8, magic];
    for d in [n, side, side] {
        images.extend(d.to_be_bytes());
    }
    images.extend(vec![7u8; (side * side * n) as usize - short_by]);
    write_file(&dir.join("train-images-idx3-ubyte"), &images);
    let mut l = vec![0, 0, 8, 1];
    l.extend(labels.to_be_bytes());
    l.extend((0..labels).map(|i| (i % 10) as u8));
    write_file(&dir.join("train-labels-idx1-ubyte"), &l);
}

/// A scratch folder (removed when dropped) with a CIFAR-10 folder `cifar/` in it (see
/// [`write_cifar10`]); returns both.
pub fn scratch_with_cifar(per_file: usize) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("cifar");
    write_cifar10(&data, per_file);
    (tmp, data)
}

/// The result of one run.
pub struct Run {
    pub code: i32,
    pub stderr: String,
    pub stdout: String,
}

fn finish(out: Output) -> Run {
    Run {
        code: out.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
    }
}

/// `mpirun -n ranks tsimcne-dist args…` (as root where the tests run as root).
pub fn mpirun_command(ranks: usize, args: &[&str]) -> Command {
    let mut cmd = Command::new("mpirun");
    cmd.args([
        "-n",
        &ranks.to_string(),
        "--bind-to",
        "none",
        "--oversubscribe",
    ])
    .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
    .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
    .env_remove("RUST_LOG")
    .arg(BIN)
    .args(args);
    cmd
}

/// Runs `cmd`, does `during` while it runs, and collects its outcome.
pub fn run_while(mut cmd: Command, during: impl FnOnce(u32)) -> Run {
    use std::process::Stdio;
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // The output is read on its own thread, so that a full pipe cannot stall the job.
    let collect = std::thread::spawn(move || child.wait_with_output().unwrap());
    during(pid);
    finish(collect.join().unwrap())
}

/// The pid of the tsimcne-dist process that is `rank` of the job writing to `out`.
pub fn rank_pid(out: &Path, rank: usize) -> Option<i32> {
    let out = out.to_str()?;
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let cmdline = String::from_utf8_lossy(&cmdline);
        if !cmdline.starts_with(BIN) || !cmdline.contains(out) {
            return None;
        }
        let environ = std::fs::read(e.path().join("environ")).ok()?;
        // mpirun sets both variables, srun --mpi=pmix the second; a singleton neither.
        let wanted = [
            format!("OMPI_COMM_WORLD_RANK={rank}"),
            format!("PMIX_RANK={rank}"),
        ];
        let vars: Vec<&[u8]> = environ.split(|&b| b == 0).collect();
        let launched = vars
            .iter()
            .any(|v| v.starts_with(b"OMPI_COMM_WORLD_RANK=") || v.starts_with(b"PMIX_RANK="));
        let mine = vars
            .iter()
            .any(|v| wanted.iter().any(|w| v == &w.as_bytes()));
        (!launched && rank == 0 || mine).then_some(pid)
    })
}

/// Whether process `pid` has a handler for `signal` installed (its SigCgt mask).
pub fn catches(pid: i32, signal: i32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (signal - 1)) != 0)
}

/// Sends `signal` to process `pid` (a negative pid: its process group).
pub fn signal(pid: i32, signal: i32) {
    // SAFETY: a plain syscall on a process (group) of this test's own job.
    assert_eq!(
        unsafe { libc::kill(pid, signal) },
        0,
        "kill({pid}, {signal})"
    );
}

pub fn mpirun(ranks: usize, args: &[&str]) -> Run {
    finish(mpirun_command(ranks, args).output().unwrap())
}

/// The binary on its own (MPI starts as a singleton).
pub fn run_alone(args: &[&str]) -> Run {
    finish(
        Command::new(BIN)
            .env_remove("RUST_LOG")
            .args(args)
            .output()
            .unwrap(),
    )
}

/// `train` of `configs/CONFIG` on `data` into `out` with `sets` overrides.
pub fn train(ranks: usize, config: &str, data: &Path, out: &Path, sets: &[&str]) -> Run {
    let args = train_args(Some(config), data, out, sets);
    mpirun(ranks, &strs(&args))
}

/// `train [--config configs/CONFIG] --data DATA --out OUT --set S…` as arguments (no config:
/// the built-in defaults).
pub fn train_args(config: Option<&str>, data: &Path, out: &Path, sets: &[&str]) -> Vec<String> {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut args = vec!["train".to_owned()];
    if let Some(config) = config {
        args.extend(["--config".to_owned(), format!("{root}/configs/{config}")]);
    }
    args.extend(
        [
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]
        .map(String::from),
    );
    for s in sets {
        args.extend(["--set".to_owned(), s.to_string()]);
    }
    args
}

/// Borrowed views of owned arguments.
pub fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// Whether this test can run here; if not, says so in one line naming the test and why.
pub fn needs_root(test: &str) -> bool {
    // SAFETY: a plain syscall without arguments.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        // Past the test harness's capture (it takes only print!/eprint!), so a user sees it.
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "skipped {test}: needs root");
    }
    root
}

/// Polls `done` until it holds; fails the test after `limit`.
pub fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The steps of the complete checkpoints under `out`, oldest first.
pub fn checkpoint_steps(out: &Path) -> Vec<u64> {
    let mut steps: Vec<u64> = std::fs::read_dir(out.join("checkpoints"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .strip_prefix("step-")?
                        .parse()
                        .ok()
                })
                .collect()
        })
        .unwrap_or_default();
    steps.sort_unstable();
    steps
}

/// Checks that `run` failed with exactly one `tsimcne-dist…` line containing `expect`, and no
/// panic or backtrace; returns the line.
pub fn one_error_line(run: &Run, expect: &str) -> String {
    assert_ne!(run.code, 0, "succeeded:\n{}", run.stderr);
    let ours: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("tsimcne-dist"))
        .collect();
    assert_eq!(ours.len(), 1, "expected one line, got:\n{}", run.stderr);
    assert!(ours[0].contains(expect), "{:?} lacks {expect:?}", ours[0]);
    assert!(
        !run.stderr.contains("panicked") && !run.stderr.contains("backtrace"),
        "{}",
        run.stderr
    );
    ours[0].to_owned()
}

pub fn assert_ok(run: &Run) {
    assert_eq!(run.code, 0, "run failed:\n{}", run.stderr);
}

/// The newest checkpoint folder under `out`.
pub fn newest_checkpoint(out: &Path) -> PathBuf {
    let step = *checkpoint_steps(out).last().expect("a checkpoint");
    out.join("checkpoints").join(format!("step-{step:010}"))
}

/// The model's variables in a checkpoint (no optimizer buffers), by name.
pub fn parameters(checkpoint: &Path) -> Named {
    let mut t: Named = tch::Tensor::read_safetensors(checkpoint.join("state.safetensors"))
        .unwrap()
        .into_iter()
        .map(|(n, t)| {
            (
                n,
                Vec::<f32>::try_from(t.to_kind(tch::Kind::Float).flatten(0, -1)).unwrap(),
            )
        })
        .collect();
    t.sort_by(|a, b| a.0.cmp(&b.0));
    t
}

/// A checkpoint's model variables and its optimizer's momentum buffers, apart.
pub fn model_and_optimizer(checkpoint: &Path) -> (Named, Named) {
    parameters(checkpoint)
        .into_iter()
        .partition(|(n, _)| !n.starts_with("optim."))
}

/// Largest ‖a − b‖ / ‖a‖ over the named tensors, which must match by name (tensors of norm
/// below `floor` are compared against `floor`).
pub fn max_relative_difference(
    a: &[(String, Vec<f32>)],
    b: &[(String, Vec<f32>)],
    floor: f64,
) -> (f64, String) {
    assert_eq!(
        a.iter().map(|x| &x.0).collect::<Vec<_>>(),
        b.iter().map(|x| &x.0).collect::<Vec<_>>()
    );
    let mut worst = (0f64, String::new());
    for ((name, x), (_, y)) in a.iter().zip(b) {
        assert_eq!(x.len(), y.len());
        let diff: f64 = x
            .iter()
            .zip(y)
            .map(|(p, q)| (f64::from(*p) - f64::from(*q)).powi(2))
            .sum::<f64>()
            .sqrt();
        let norm: f64 = x.iter().map(|p| f64::from(*p).powi(2)).sum::<f64>().sqrt();
        if diff / norm.max(floor) >= worst.0 {
            worst = (diff / norm.max(floor), name.clone());
        }
    }
    worst
}

/// Per-step losses from `train-log.jsonl`.
pub fn losses(out: &Path) -> Vec<f64> {
    std::fs::read_to_string(out.join("train-log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"]
                .as_f64()
                .unwrap()
        })
        .collect()
}
