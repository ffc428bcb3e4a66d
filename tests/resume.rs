//! Interrupted runs resume where they stopped and end where an uninterrupted run ends: after a
//! kill mid-stage on the same ranks, and after a stop on 2 ranks continued on 1.

mod common;
use common::*;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::Duration;

/// This file's runs: configs/exactness.toml for 36 steps, on `data` into `out`.
fn args(data: &Path, out: &Path, sets: &[&str]) -> Vec<String> {
    let sets: Vec<&str> = ["epochs=[3,1,2]"].iter().chain(sets).copied().collect();
    train_args(Some("exactness.toml"), data, out, &sets)
}

#[test]
fn a_run_killed_mid_stage_resumes_to_the_same_parameters() {
    let (tmp, data) = scratch_with_cifar(40);
    let whole = tmp.path().join("whole");
    assert_ok(&mpirun(2, &strs(&args(&data, &whole, &[]))));

    // Kill the whole job (mpirun and both ranks) once stage 1's first epoch is checkpointed
    // (step 6 of 36), while its second epoch runs.
    let cut = tmp.path().join("cut");
    let mut child = mpirun_command(2, &strs(&args(&data, &cut, &[])))
        .process_group(0)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let newest = |out: &Path| checkpoint_steps(out).last().copied().unwrap_or(0);
    wait_for("a checkpoint at step 6", Duration::from_secs(120), || {
        newest(&cut) >= 6
    });
    let group = child.id() as libc::pid_t;
    assert!(group > 1);
    // SAFETY: a plain syscall; the negative pid names the job's own process group.
    assert_eq!(unsafe { libc::kill(-group, libc::SIGKILL) }, 0);
    let _ = child.wait();
    let killed_at = newest(&cut);
    assert!(
        killed_at < 36,
        "killed before the end (at step {killed_at})"
    );
    assert!(!cut.join("embedding.npy").exists());

    let again = mpirun(2, &strs(&args(&data, &cut, &[])));
    assert_ok(&again);
    assert!(again.stderr.contains("resumed"), "{}", again.stderr);
    let (a, _) = model_and_optimizer(&newest_checkpoint(&whole));
    let (b, _) = model_and_optimizer(&newest_checkpoint(&cut));
    let (diff, name) = max_relative_difference(&a, &b, 1e-6);
    assert!(diff < 1e-6, "{name} differs by {diff:e} of its norm");
    // Each step is logged once, and the maps agree.
    assert_eq!(losses(&cut).len(), 36);
    let ea = tch::Tensor::read_npy(whole.join("embedding.npy")).unwrap();
    let eb = tch::Tensor::read_npy(cut.join("embedding.npy")).unwrap();
    assert!(f64::try_from((ea - eb).abs().max()).unwrap() < 1e-4);
}

#[test]
fn two_ranks_stopped_mid_stage_continue_on_one() {
    let (tmp, data) = scratch_with_cifar(40);
    let one = tmp.path().join("one");
    assert_ok(&mpirun(1, &strs(&args(&data, &one, &["max_steps=16"]))));
    let moved = tmp.path().join("moved");
    assert_ok(&mpirun(2, &strs(&args(&data, &moved, &["max_steps=9"]))));
    let resumed = mpirun(1, &strs(&args(&data, &moved, &["max_steps=16"])));
    assert_ok(&resumed);
    assert!(
        resumed.stderr.contains("written_by_ranks=2"),
        "{}",
        resumed.stderr
    );
    let (a, _) = model_and_optimizer(&newest_checkpoint(&one));
    let (b, _) = model_and_optimizer(&newest_checkpoint(&moved));
    let (diff, name) = max_relative_difference(&a, &b, 1e-6);
    assert!(diff < 1e-5, "{name} differs by {diff:e} of its norm");
    let (la, lb) = (losses(&one), losses(&moved));
    assert_eq!(la.len(), 16);
    for (x, y) in la.iter().zip(&lb) {
        assert!((x - y).abs() <= 1e-5 * x.abs(), "{x} vs {y}");
    }
}

#[test]
fn the_same_command_again_at_its_step_limit_keeps_the_checkpoint_resumable() {
    let (tmp, data) = scratch_with_cifar(20);
    let out = tmp.path().join("run");
    let meta = |step: u64| {
        let path = out.join(format!("checkpoints/step-{step:010}/meta.json"));
        std::fs::read_to_string(path).unwrap()
    };
    assert_ok(&train(1, "exactness.toml", &data, &out, &["max_steps=2"]));
    let written = meta(2);
    // Again: nothing to run. The checkpoint stays as it was (it once was written anew with no
    // loss, as `null`, and then no later run could resume it).
    let again = train(1, "exactness.toml", &data, &out, &["max_steps=2"]);
    assert_ok(&again);
    assert!(again.stderr.contains("resumed"), "{}", again.stderr);
    assert_eq!(meta(2), written);
    let more = train(1, "exactness.toml", &data, &out, &["max_steps=3"]);
    assert_ok(&more);
    assert!(more.stderr.contains("step=2"), "{}", more.stderr);
    assert_eq!(checkpoint_steps(&out).last(), Some(&3));
}
