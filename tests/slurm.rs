//! The job scripts on a real one-node SLURM (started by tests/slurm/cluster.sh; needs root, and
//! skips with one line for other users, and Debian's slurm-wlm and munge, which launch/setup.sh
//! installs): a CPU job preempted by
//! SIGUSR1 mid-stage checkpoints, requeues itself, resumes, and ends with the parameters of an
//! uninterrupted run — launched with mpirun on the same two tasks, and with `srun --mpi=pmix`
//! requeued onto one task (an elastic resume: same global batch, half the ranks).

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The test cluster; stopped when dropped, also when an assertion fails.
struct Cluster(PathBuf);

impl Cluster {
    fn start(dir: &Path) -> Cluster {
        let ok = Command::new("bash")
            .args([
                &format!("{ROOT}/tests/slurm/cluster.sh"),
                "start",
                dir.to_str().unwrap(),
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

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", self.0.join("slurm.conf"))
            .current_dir(ROOT);
        c
    }

    fn output(&self, program: &str, args: &[&str]) -> String {
        let out = self.command(program).args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A field of `scontrol show job`, e.g. JobState or Restarts.
    fn job_field(&self, id: &str, field: &str) -> String {
        let text = self.output("scontrol", &["show", "job", id]);
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{field}=")))
            .unwrap_or_default()
            .to_owned()
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

/// configs/exactness.toml's network (whose results do not depend on the world size), run long
/// enough for the signal to land mid-stage.
const SETS: &[&str] = &["epochs=[30,2,4]"];

#[test]
fn a_preempted_job_requeues_and_ends_as_an_uninterrupted_run() {
    if !needs_root("a_preempted_job_requeues_and_ends_as_an_uninterrupted_run") {
        return;
    }
    let (tmp, data) = scratch_with_cifar(40);
    let reference = tmp.path().join("reference");
    assert_ok(&train(2, "exactness.toml", &data, &reference, SETS));
    let (expected, _) = model_and_optimizer(&newest_checkpoint(&reference));

    let cluster = Cluster::start(&tmp.path().join("cluster"));
    let sets: String = SETS.iter().map(|s| format!("--set {s} ")).collect();
    for (launcher, tasks_after) in [("mpirun", 2), ("srun", 1)] {
        let out = tmp.path().join(format!("job-{launcher}"));
        let log = tmp.path().join(format!("job-{launcher}.out"));
        // The job script reads its settings from the environment sbatch passes on.
        let submitted = cluster
            .command("sbatch")
            .args([
                "--parsable",
                "--ntasks=2",
                "--cpus-per-task=1",
                &format!("--output={}", log.display()),
                "slurm/cpu.sbatch",
            ])
            .env("LAUNCHER", launcher)
            .env("CONFIG", "configs/exactness.toml")
            .env("DATA", &data)
            .env("OUT", &out)
            .env("BIN", BIN)
            .env("SETS", &sets)
            .output()
            .unwrap();
        let id = String::from_utf8_lossy(&submitted.stdout).trim().to_owned();
        assert!(
            !id.is_empty(),
            "sbatch: {}",
            String::from_utf8_lossy(&submitted.stderr)
        );
        wait_for("the first checkpoint", Duration::from_secs(120), || {
            checkpoint_steps(&out).last().is_some_and(|&s| s >= 6)
        });
        cluster.output("scancel", &["--signal=USR1", "--batch", &id]);
        wait_for("the requeue", Duration::from_secs(60), || {
            cluster.job_field(&id, "Restarts") == "1"
        });
        // SLURM holds a requeued job back for two minutes; the test lets it start as soon as it
        // is pending again and the stopped run's step has left the node (a new step of the same
        // job id meeting the old one's remains fails to launch).
        wait_for(
            "the job to be pending again",
            Duration::from_secs(60),
            || {
                cluster.job_field(&id, "JobState") == "PENDING"
                    && cluster
                        .output("squeue", &["-h", "-s", "-j", &id])
                        .trim()
                        .is_empty()
            },
        );
        if tasks_after != 2 {
            let size = format!("NumTasks={tasks_after}");
            let cpus = format!("NumCPUs={tasks_after}");
            cluster.output(
                "scontrol",
                &["update", &format!("jobid={id}"), &size, &cpus],
            );
        }
        std::thread::sleep(Duration::from_secs(2));
        cluster.output(
            "scontrol",
            &["update", &format!("jobid={id}"), "StartTime=now"],
        );
        wait_for("the job to finish", Duration::from_secs(240), || {
            matches!(
                cluster.job_field(&id, "JobState").as_str(),
                "COMPLETED" | "FAILED" | "CANCELLED" | "TIMEOUT"
            )
        });
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(
            cluster.job_field(&id, "JobState"),
            "COMPLETED",
            "{launcher}:\n{text}"
        );
        assert!(
            text.contains("stopped with a checkpoint: requeueing job"),
            "{launcher}:\n{text}"
        );
        assert!(
            text.contains("(restart 1)") && text.contains("resumed"),
            "{launcher}:\n{text}"
        );
        let resumed_on = format!("rank 0/{tasks_after} resumed");
        assert!(
            text.contains(&resumed_on) && text.contains("written_by_ranks=2"),
            "{launcher}:\n{text}"
        );
        assert!(out.join("embedding.npy").exists());
        let (got, _) = model_and_optimizer(&newest_checkpoint(&out));
        // The run it must equal: the uninterrupted one on the same two ranks; after a requeue
        // onto one task, the same run stopped at the same step on two ranks and continued on
        // one (rounding differs between world sizes, so that is the exact reference; how far it
        // drifts from the uninterrupted run depends on the step the signal lands at).
        let expected = if tasks_after == 2 {
            expected.clone()
        } else {
            let step = text
                .split("step=")
                .nth(1)
                .and_then(|t| t.split_whitespace().next())
                .expect("the step resumed from, in the job log");
            let elastic = tmp.path().join(format!("elastic-{launcher}"));
            assert_ok(&train(
                2,
                "exactness.toml",
                &data,
                &elastic,
                &[SETS[0], &format!("max_steps={step}")],
            ));
            assert_ok(&train(1, "exactness.toml", &data, &elastic, SETS));
            model_and_optimizer(&newest_checkpoint(&elastic)).0
        };
        let (diff, name) = max_relative_difference(&expected, &got, 1e-6);
        assert!(
            diff < 1e-6,
            "{launcher}: {name} differs by {diff:e} of its norm"
        );
    }
}
