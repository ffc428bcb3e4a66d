//! The SLURM cluster of tests/slurm/cluster.sh, for the tests that submit jobs to it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{assert_ok, model_and_optimizer, newest_checkpoint, train, wait_for, Named, BIN};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The test cluster; stopped when dropped, also when an assertion fails.
pub struct Cluster(PathBuf);

impl Cluster {
    /// Starts a cluster of `nodes` nodes (n1, n2, ...) in `dir`.
    pub fn start(dir: &Path, nodes: usize) -> Cluster {
        let ok = Command::new("bash")
            .args([
                &format!("{ROOT}/tests/slurm/cluster.sh"),
                "start",
                dir.to_str().unwrap(),
                &nodes.to_string(),
            ])
            .status()
            .unwrap();
        let cluster = Cluster(dir.to_owned());
        assert!(
            ok.success(),
            "the test cluster did not start (root, slurm-wlm and munge are needed)"
        );
        cluster
    }

    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", self.0.join("slurm.conf"))
            .current_dir(ROOT);
        c
    }

    pub fn output(&self, program: &str, args: &[&str]) -> String {
        let out = self.command(program).args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A field of `scontrol show job`, e.g. JobState or Restarts.
    pub fn job_field(&self, id: &str, field: &str) -> String {
        let text = self.output("scontrol", &["show", "job", id]);
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{field}=")))
            .unwrap_or_default()
            .to_owned()
    }

    /// `sbatch --parsable ARGS` with `env` added to the job's environment; the job id.
    pub fn submit(&self, args: &[&str], env: &[(&str, OsString)]) -> String {
        let mut c = self.command("sbatch");
        c.arg("--parsable").args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(
            !id.is_empty(),
            "sbatch: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        id
    }

    /// Preempts job `id` the way SLURM warns a job before its time limit (SIGUSR1 to the batch
    /// shell), waits for the job script to requeue it, and lets it start again at once,
    /// resized to `nodes` nodes and `tasks` tasks if given.
    pub fn preempt_and_requeue(&self, id: &str, resize: Option<(usize, usize)>) {
        self.output("scancel", &["--signal=USR1", "--batch", id]);
        wait_for("the requeue", Duration::from_secs(60), || {
            self.job_field(id, "Restarts") == "1"
        });
        // SLURM holds a requeued job back; the test lets it start as soon as it is pending
        // again and the stopped run's step has left the nodes (a new step of the same job id
        // meeting the old one's remains fails to launch).
        wait_for(
            "the job to be pending again",
            Duration::from_secs(60),
            || {
                self.job_field(id, "JobState") == "PENDING"
                    && self
                        .output("squeue", &["-h", "-s", "-j", id])
                        .trim()
                        .is_empty()
            },
        );
        if let Some((nodes, tasks)) = resize {
            let job = format!("jobid={id}");
            let nodes = format!("NumNodes={nodes}");
            let tasks_ = format!("NumTasks={tasks}");
            let cpus = format!("NumCPUs={tasks}");
            self.output("scontrol", &["update", &job, &nodes, &tasks_, &cpus]);
        }
        std::thread::sleep(Duration::from_secs(2));
        self.output(
            "scontrol",
            &["update", &format!("jobid={id}"), "StartTime=now"],
        );
    }

    /// Waits until job `id` has ended; its final state. On a timeout the test fails with the
    /// job's log (`log`), its state and the processes of its steps.
    pub fn wait_until_ended(&self, id: &str, limit: Duration, log: &Path) -> String {
        let start = std::time::Instant::now();
        loop {
            let state = self.job_field(id, "JobState");
            if matches!(
                state.as_str(),
                "COMPLETED" | "FAILED" | "CANCELLED" | "TIMEOUT" | "NODE_FAIL"
            ) {
                return state;
            }
            if start.elapsed() > limit {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let ps = Command::new("ps")
                    .args(["-eo", "pid,ppid,etime,args"])
                    .output()
                    .unwrap();
                let ps = String::from_utf8_lossy(&ps.stdout);
                let steps: Vec<&str> = ps
                    .lines()
                    .filter(|l| {
                        l.contains("tsimcne")
                            || l.contains("srun")
                            || l.contains("slurmstepd")
                            || l.contains("orted")
                    })
                    .collect();
                panic!(
                    "job {id} still {state} after {limit:?}\n{}\nprocesses:\n{}\nlog:\n{text}",
                    self.output("squeue", &["-s", "-j", id]),
                    steps.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .args([
                &format!("{ROOT}/tests/slurm/cluster.sh"),
                "stop",
                self.0.to_str().unwrap(),
            ])
            .status();
    }
}

/// The step a requeued job resumed from, read from its log (`resumed ... step=N`).
pub fn resumed_step(job_log: &str) -> u64 {
    job_log
        .split(" resumed ")
        .nth(1)
        .and_then(|t| t.split("step=").nth(1))
        .and_then(|t| t.split_whitespace().next())
        .and_then(|t| t.parse().ok())
        .expect("the step resumed from, in the job log")
}

/// The exact reference of a run stopped at `step` on two ranks and continued on one (rounding
/// differs between world sizes, so the uninterrupted run is not): its final parameters.
pub fn continued_on_one_rank(
    config: &str,
    data: &Path,
    dir: &Path,
    sets: &[&str],
    step: u64,
) -> Named {
    let mut first: Vec<&str> = sets.to_vec();
    let limit = format!("max_steps={step}");
    first.push(&limit);
    assert_ok(&train(2, config, data, dir, &first));
    assert_ok(&train(1, config, data, dir, sets));
    model_and_optimizer(&newest_checkpoint(dir)).0
}

/// The environment through which the job scripts in slurm/ take their settings: `launcher`,
/// configs/exactness.toml, `data`, `out`, this build's binary and `--set` flags for `sets`.
pub fn job_env(
    launcher: &str,
    data: &Path,
    out: &Path,
    sets: &[&str],
) -> Vec<(&'static str, OsString)> {
    let sets: String = sets.iter().map(|s| format!("--set {s} ")).collect();
    vec![
        ("LAUNCHER", launcher.into()),
        ("CONFIG", "configs/exactness.toml".into()),
        ("DATA", data.into()),
        ("OUT", out.into()),
        ("BIN", BIN.into()),
        ("SETS", sets.into()),
    ]
}
