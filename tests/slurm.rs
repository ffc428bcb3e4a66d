//! The job scripts on a real one-node SLURM (started by tests/slurm/cluster.sh; needs root, and
//! skips with one line for other users, and Debian's slurm-wlm and munge, which launch/setup.sh
//! installs): a CPU job preempted by
//! SIGUSR1 mid-stage checkpoints, requeues itself, resumes, and ends with the parameters of an
//! uninterrupted run — launched with mpirun on the same two tasks, and with `srun --mpi=pmix`
//! requeued onto one task (an elastic resume: same global batch, half the ranks).

mod common;
use common::cluster::{continued_on_one_rank, job_env, resumed_step, Cluster};
use common::*;
use std::time::Duration;

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

    let cluster = Cluster::start(&tmp.path().join("cluster"), 1);
    for (launcher, tasks_after) in [("mpirun", 2), ("srun", 1)] {
        let out = tmp.path().join(format!("job-{launcher}"));
        let log = tmp.path().join(format!("job-{launcher}.out"));
        // The job script reads its settings from the environment sbatch passes on.
        let id = cluster.submit(
            &[
                "--ntasks=2",
                "--cpus-per-task=1",
                &format!("--output={}", log.display()),
                "slurm/cpu.sbatch",
            ],
            &job_env(launcher, &data, &out, SETS),
        );
        wait_for("the first checkpoint", Duration::from_secs(120), || {
            checkpoint_steps(&out).last().is_some_and(|&s| s >= 6)
        });
        cluster.preempt_and_requeue(&id, (tasks_after != 2).then_some((1, tasks_after)));
        let state = cluster.wait_until_ended(&id, Duration::from_secs(240), &log);
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(state, "COMPLETED", "{launcher}:\n{text}");
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
        // one (how far that drifts from the uninterrupted run depends on the step the signal
        // lands at).
        let expected = if tasks_after == 2 {
            expected.clone()
        } else {
            let elastic = tmp.path().join(format!("elastic-{launcher}"));
            continued_on_one_rank("exactness.toml", &data, &elastic, SETS, resumed_step(&text))
        };
        let (diff, name) = max_relative_difference(&expected, &got, 1e-6);
        assert!(
            diff < 1e-6,
            "{launcher}: {name} differs by {diff:e} of its norm"
        );
    }
}
