//! A rank killed with SIGKILL — rank 0 while it writes checkpoints, or another rank — ends the
//! job (no hang) and leaves the newest checkpoint readable; the run then resumes from it.

mod common;
use common::*;
use std::time::Duration;

fn kill_rank_then_resume(rank: usize, after_checkpoints: usize) {
    let (tmp, data) = scratch_with_cifar(40);
    let out = tmp.path().join("run");
    let args = train_args(
        Some("exactness.toml"),
        &data,
        &out,
        &["model.backbone=tiny", "epochs=[20,2,4]"],
    );
    let args = strs(&args);
    let mut job = mpirun_command(2, &args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Folders, half-written ones too: the newest two are kept, so a third means one is being
    // written now.
    let folders = || std::fs::read_dir(out.join("checkpoints")).map_or(0, |d| d.flatten().count());
    wait_for("the checkpoints", Duration::from_secs(120), || {
        folders() >= after_checkpoints
    });
    signal(
        rank_pid(&out, rank).expect("the rank's process"),
        libc::SIGKILL,
    );
    wait_for(
        &format!("the other rank to end after rank {rank} died"),
        Duration::from_secs(30),
        || job.try_wait().unwrap().is_some(),
    );
    assert!(!out.join("embedding.npy").exists(), "killed before the end");

    // Every complete-looking checkpoint reads back; resuming continues from the newest.
    let newest = newest_checkpoint(&out);
    assert!(!parameters(&newest).is_empty());
    let again = mpirun(2, &args);
    assert_ok(&again);
    assert!(again.stderr.contains("resumed"), "{}", again.stderr);
    let left: Vec<String> = std::fs::read_dir(out.join("checkpoints"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        left.iter().all(|n| n.starts_with("step-")),
        "half-written checkpoints are cleaned: {left:?}"
    );
    assert_eq!(losses(&out).len(), 26 * 6);
}

#[test]
fn killing_rank_0_while_it_checkpoints_leaves_the_newest_checkpoint_readable() {
    kill_rank_then_resume(0, 3);
}

#[test]
fn killing_another_rank_ends_the_job_and_the_run_resumes() {
    kill_rank_then_resume(1, 2);
}
