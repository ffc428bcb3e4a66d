//! slurm/gpu-nodes.sbatch with CPU ranks (DEVICE=cpu) on a SLURM of two nodes on this machine
//! (tests/slurm/cluster.sh: two slurmd, n1 and n2; needs root, and skips with one line for other
//! users), launched by `srun --mpi=pmix` and by mpirun: every rank reports the node and
//! node-local rank SLURM or OpenMPI gave it and the NCCL settings sbatch passed on; the job is
//! preempted mid-stage, requeued onto one node and ends as the run continued on one rank would.
//! A node whose step dies mid-step ends the job with one line and a checkpoint that resumes.
//! Both ran 10 times in a row beside a CPU-bound study.

mod common;
use common::cluster::{continued_on_one_rank, job_env, resumed_step, Cluster};
use common::*;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// The two tests each start a cluster and train on it: one at a time on 2 cores.
static ONE_CLUSTER_AT_A_TIME: Mutex<()> = Mutex::new(());

/// configs/exactness.toml's network (whose results do not depend on the world size), run long
/// enough for the signal to land mid-stage.
const SETS: &[&str] = &["epochs=[30,2,4]"];

/// NCCL settings a site would give (the test checks that every rank sees them).
const NCCL: [(&str, &str); 2] = [
    ("NCCL_SOCKET_IFNAME", "tsimcne-test0"),
    ("NCCL_IB_HCA", "mlx5_test:1"),
];

/// Submits slurm/gpu-nodes.sbatch on two nodes, one CPU rank each; the job id.
fn submit_two_nodes(
    cluster: &Cluster,
    launcher: &str,
    data: &Path,
    out: &Path,
    log: &Path,
    sets: &[&str],
) -> String {
    let mut env = job_env(launcher, data, out, sets);
    env.push(("DEVICE", "cpu".into()));
    env.extend(NCCL.iter().map(|(k, v)| (*k, OsString::from(v))));
    cluster.submit(
        &[
            "--nodes=2",
            "--ntasks-per-node=1",
            "--cpus-per-task=1",
            "--gpus-per-task=0",
            &format!("--output={}", log.display()),
            "slurm/gpu-nodes.sbatch",
        ],
        &env,
    )
}

/// For a test as root: this test's turn, scratch CIFAR data and a cluster of two nodes (or
/// `None`, with one line, for other users).
fn two_nodes(test: &str) -> Option<(MutexGuard<'static, ()>, TempDir, PathBuf, Cluster)> {
    if !needs_root(test) {
        return None;
    }
    let turn = ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let (tmp, data) = scratch_with_cifar(40);
    let cluster = Cluster::start(&tmp.path().join("cluster"), 2);
    Some((turn, tmp, data, cluster))
}

/// The variable that carries the node-local rank under `launcher`.
fn local_rank_var(launcher: &str) -> &'static str {
    match launcher {
        "srun" => "SLURM_LOCALID",
        _ => "OMPI_COMM_WORLD_LOCAL_RANK",
    }
}

#[test]
fn a_two_node_job_reports_its_placement_requeues_onto_one_node_and_ends_as_that_run() {
    let Some((_one, tmp, data, cluster)) = two_nodes(
        "a_two_node_job_reports_its_placement_requeues_onto_one_node_and_ends_as_that_run",
    ) else {
        return;
    };
    for launcher in ["srun", "mpirun"] {
        let out = tmp.path().join(format!("job-{launcher}"));
        let log = tmp.path().join(format!("job-{launcher}.out"));
        let id = submit_two_nodes(&cluster, launcher, &data, &out, &log, SETS);
        wait_for("the first checkpoint", Duration::from_secs(120), || {
            checkpoint_steps(&out).last().is_some_and(|&s| s >= 6)
        });
        // Rank r on node n(r+1), first (local rank 0 of 1) on its node, as the launcher says,
        // with the site's NCCL settings.
        let text = std::fs::read_to_string(&log).unwrap();
        let var = local_rank_var(launcher);
        for rank in 0..2 {
            let placed = format!("rank {rank}/2 node=n{} local_rank=0/1 {var}=0 ", rank + 1);
            let line = text
                .lines()
                .find(|l| l.contains(&placed))
                .unwrap_or_else(|| panic!("{launcher}: no line with {placed:?}:\n{text}"));
            for (k, v) in NCCL {
                assert!(line.contains(&format!("{k}={v}")), "{launcher}: {line}");
            }
        }

        cluster.preempt_and_requeue(&id, Some((1, 1)));
        let state = cluster.wait_until_ended(&id, Duration::from_secs(240), &log);
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(state, "COMPLETED", "{launcher}:\n{text}");
        assert_eq!(cluster.job_field(&id, "NumNodes"), "1", "{launcher}");
        assert!(
            text.contains("stopped with a checkpoint: requeueing job")
                && text.contains("(restart 1)"),
            "{launcher}:\n{text}"
        );
        assert!(
            text.contains(&format!("rank 0/1 node=n1 local_rank=0/1 {var}=0 "))
                || text.contains(&format!("rank 0/1 node=n2 local_rank=0/1 {var}=0 ")),
            "{launcher}: the resumed rank's placement:\n{text}"
        );
        assert!(
            text.contains("rank 0/1 resumed") && text.contains("written_by_ranks=2"),
            "{launcher}:\n{text}"
        );
        let (got, _) = model_and_optimizer(&newest_checkpoint(&out));
        let reference = tmp.path().join(format!("reference-{launcher}"));
        let expected = continued_on_one_rank(
            "exactness.toml",
            &data,
            &reference,
            SETS,
            resumed_step(&text),
        );
        let (diff, name) = max_relative_difference(&expected, &got, 1e-6);
        assert!(
            diff < 1e-6,
            "{launcher}: {name} differs by {diff:e} of its norm"
        );
    }
}

#[test]
fn a_node_that_dies_mid_step_ends_the_job_with_one_line_and_a_checkpoint_that_resumes() {
    let Some((_one, tmp, data, cluster)) = two_nodes(
        "a_node_that_dies_mid_step_ends_the_job_with_one_line_and_a_checkpoint_that_resumes",
    ) else {
        return;
    };
    // Long enough never to end by itself; rank 0 gives up on a collective after 10 s.
    let sets = ["epochs=[3000,2,4]", "stall_timeout_s=10"];
    for (launcher, parent) in [("srun", "slurmstepd"), ("mpirun", "orted")] {
        let out = tmp.path().join(format!("job-{launcher}"));
        let log = tmp.path().join(format!("job-{launcher}.out"));
        let id = submit_two_nodes(&cluster, launcher, &data, &out, &log, &sets);
        wait_for("the first checkpoint", Duration::from_secs(120), || {
            checkpoint_steps(&out).last().is_some_and(|&s| s >= 6)
        });
        // Node n2 dies: its step daemon (srun's slurmstepd, mpirun's orted) and rank 1 with it.
        let rank1 = rank_pid(&out, 1).expect("rank 1 runs");
        let stepd = parent_of(rank1);
        let name = std::fs::read_to_string(format!("/proc/{stepd}/comm")).unwrap();
        assert_eq!(name.trim(), parent, "{launcher}: rank 1's parent");
        signal(stepd, libc::SIGKILL);
        signal(rank1, libc::SIGKILL);
        let killed = Instant::now();
        let state = cluster.wait_until_ended(&id, Duration::from_secs(120), &log);
        let took = killed.elapsed();
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(state, "FAILED", "{launcher}:\n{text}");
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("tsimcne-dist exited with"))
            .collect();
        assert_eq!(lines.len(), 1, "{launcher}:\n{text}");
        let newest = newest_checkpoint(&out);
        assert!(
            lines[0].contains(&format!("the newest checkpoint is {}", newest.display())),
            "{launcher}: {}",
            lines[0]
        );
        if launcher == "srun" {
            // srun waits for the dead node's step: rank 0's time limit ends it, and the job
            // script ends srun if it still waits on for the dead step daemon (2 runs of 10 here,
            // which then ended 71 s after the kill: 10 s of limit and the script's 60 s).
            assert!(
                text.contains("rank 0: the ")
                    && text.contains("has waited 10 s for the other ranks"),
                "{launcher}:\n{text}"
            );
        }
        eprintln!("{launcher}: the job ended {took:?} after the node died");
        // The checkpoint it names resumes: one more step on one rank.
        let step = checkpoint_steps(&out).last().copied().unwrap();
        let mut more = sets.to_vec();
        let limit = format!("max_steps={}", step + 1);
        more.push(&limit);
        let resumed = train(1, "exactness.toml", &data, &out, &more);
        assert_ok(&resumed);
        assert!(resumed.stderr.contains("resumed"), "{}", resumed.stderr);
        assert_eq!(checkpoint_steps(&out).last(), Some(&(step + 1)));
    }
}

fn parent_of(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // pid (comm) state ppid ...: the fields after the command's closing parenthesis.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after.split_whitespace().nth(1).unwrap().parse().unwrap()
}
