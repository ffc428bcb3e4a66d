//! Stop requests, from the first instant to the last step: a signal before the first step ends
//! the run with 75 (nothing new to save); SIGINT to the ranks (as SIGTERM), SIGUSR1 to mpirun,
//! and a Ctrl-C to launch/local.sh stop it with a checkpoint and the STOPPED marker, and the run
//! then resumes and ends as an uninterrupted run. local.sh exits 75 (mpirun may report 1 for its
//! ranks' 75).

mod common;
use common::*;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const LONG: &[&str] = &["epochs=[20,2,4]"];

fn args(data: &Path, out: &Path) -> Vec<String> {
    train_args(Some("exactness.toml"), data, out, LONG)
}

/// The run continued after a stop ends as the uninterrupted run does.
fn resumes_to_the_uninterrupted_end(data: &Path, out: &Path, tmp: &Path) {
    assert!(out.join("STOPPED").exists(), "the stop marker");
    let again = mpirun(2, &strs(&args(data, out)));
    assert_ok(&again);
    assert!(again.stderr.contains("resumed"), "{}", again.stderr);
    assert!(
        !out.join("STOPPED").exists(),
        "a resumed run clears the marker"
    );
    let whole = tmp.join("whole");
    assert_ok(&mpirun(2, &strs(&args(data, &whole))));
    let (a, _) = model_and_optimizer(&newest_checkpoint(&whole));
    let (b, _) = model_and_optimizer(&newest_checkpoint(out));
    let (diff, name) = max_relative_difference(&a, &b, 1e-6);
    assert!(diff < 1e-6, "{name} differs by {diff:e} of its norm");
    assert_eq!(
        losses(out).len(),
        losses(&whole).len(),
        "each step logged once"
    );
}

#[test]
fn a_stop_before_the_first_step_exits_75() {
    let (tmp, data) = scratch_with_cifar(40);
    let out = tmp.path().join("run");
    let mut cmd = Command::new(BIN);
    cmd.args(strs(&args(&data, &out)));
    let run = run_while(cmd, |pid| {
        let pid = pid as i32;
        wait_for("the signal handlers", Duration::from_secs(30), || {
            catches(pid, libc::SIGTERM)
        });
        signal(pid, libc::SIGTERM);
    });
    assert_eq!(run.code, 75, "{}", run.stderr);
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    assert!(run.stderr.contains("stopped on request"), "{}", run.stderr);
    // The signal lands while MPI starts or the data loads; should the machine be quick enough
    // for a step to run first, that step is checkpointed.
    let steps = losses_if_any(&out).len() as u64;
    assert_eq!(checkpoint_steps(&out).last().copied().unwrap_or(0), steps);
    assert!(out.join("STOPPED").exists());
}

fn losses_if_any(out: &Path) -> Vec<f64> {
    match out.join("train-log.jsonl").exists() {
        true => losses(out),
        false => Vec::new(),
    }
}

#[test]
fn sigint_to_the_ranks_stops_the_run_as_sigterm_does_and_it_resumes() {
    let (tmp, data) = scratch_with_cifar(40);
    let out = tmp.path().join("run");
    let run = run_while(mpirun_command(2, &strs(&args(&data, &out))), |_| {
        wait_for("a checkpoint", Duration::from_secs(120), || {
            !checkpoint_steps(&out).is_empty()
        });
        for rank in 0..2 {
            signal(rank_pid(&out, rank).expect("the rank"), libc::SIGINT);
        }
    });
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    assert!(run.stderr.contains("stopped on request"), "{}", run.stderr);
    resumes_to_the_uninterrupted_end(&data, &out, tmp.path());
}

/// mpirun passes SIGUSR1 on and waits for the ranks (a SIGTERM or SIGINT of its own it passes
/// on too, but kills the ranks a second later: not something a test can wait on).
#[test]
fn sigusr1_to_mpirun_stops_the_job() {
    let (tmp, data) = scratch_with_cifar(40);
    let out = tmp.path().join("run");
    let run = run_while(mpirun_command(2, &strs(&args(&data, &out))), |pid| {
        wait_for("a checkpoint", Duration::from_secs(120), || {
            !checkpoint_steps(&out).is_empty()
        });
        signal(pid as i32, libc::SIGUSR1);
    });
    assert!(run.stderr.contains("stopped on request"), "{}", run.stderr);
    resumes_to_the_uninterrupted_end(&data, &out, tmp.path());
}

#[test]
fn ctrl_c_to_local_sh_stops_the_run_and_it_says_75() {
    let (tmp, data) = scratch_with_cifar(40);
    let out = tmp.path().join("run");
    let mut cmd = Command::new("bash");
    cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/launch/local.sh"))
        .args(["--cpu", "2", "--"])
        .args(strs(&args(&data, &out)))
        .env("TSIMCNE_BIN", BIN)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    // A process started in the background inherits SIGINT ignored, and a shell cannot trap a
    // signal ignored on entry: give the script the disposition a terminal's foreground job has.
    // SAFETY: between fork and exec only signal(2), which is async-signal-safe, is called.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            Ok(())
        });
    }
    let run = run_while(cmd, |script| {
        wait_for("a checkpoint", Duration::from_secs(120), || {
            !checkpoint_steps(&out).is_empty()
        });
        // mpirun is in a process group of its own: a terminal's Ctrl-C reaches the script.
        signal(script as i32, libc::SIGINT);
    });
    assert_eq!(run.code, 75, "local.sh reports the stop: {}", run.stderr);
    resumes_to_the_uninterrupted_end(&data, &out, tmp.path());
}
