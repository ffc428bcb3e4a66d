//! Nothing a run reads back is trusted: a checkpoint that fails a check is skipped, with one
//! warning, for the next older one (and the run then ends exactly as an uninterrupted run);
//! another run's data, no usable checkpoint, or a second run on the same folder stop with one
//! line; a data file that changes under a running job stops it with one line.

mod common;
use common::*;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// configs/exactness.toml for 36 steps; a checkpoint every epoch (6 steps).
const SETS: &[&str] = &["epochs=[3,1,2]"];

fn run(ranks: usize, data: &Path, out: &Path, extra: &[&str]) -> Run {
    let sets: Vec<&str> = SETS.iter().chain(extra).copied().collect();
    train(ranks, "exactness.toml", data, out, &sets)
}

/// An uninterrupted run, and one stopped at step 30 (checkpoints 18 and 24 end stages; 30 is
/// the newest).
fn whole_and_stopped(tmp: &Path, data: &Path) -> (PathBuf, PathBuf) {
    let whole = tmp.join("whole");
    assert_ok(&run(2, data, &whole, &[]));
    let stopped = tmp.join("stopped");
    assert_ok(&run(2, data, &stopped, &["max_steps=30"]));
    assert_eq!(checkpoint_steps(&stopped), [18, 24, 30]);
    (whole, stopped)
}

fn copy(from: &Path, to: &Path) {
    let ok = std::process::Command::new("cp")
        .args(["-a", from.to_str().unwrap(), to.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(ok.success());
}

fn checkpoint(out: &Path, step: u64) -> PathBuf {
    out.join("checkpoints").join(format!("step-{step:010}"))
}

fn meta(ck: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(ck.join("meta.json")).unwrap()).unwrap()
}

fn set_meta(ck: &Path, meta: &serde_json::Value) {
    std::fs::write(
        ck.join("meta.json"),
        serde_json::to_vec_pretty(meta).unwrap(),
    )
    .unwrap();
}

/// Rewrites a checkpoint's state with `edit` applied to its tensors, and its meta's size and
/// digest to match: a state that is whole and signed, but not what the run saved.
fn rewrite_state(ck: &Path, edit: impl FnOnce(&mut Vec<(String, tch::Tensor)>)) {
    let state = ck.join("state.safetensors");
    let mut tensors = tch::Tensor::read_safetensors(&state).unwrap();
    edit(&mut tensors);
    tch::Tensor::write_safetensors(&tensors, &state).unwrap();
    let bytes = std::fs::read(&state).unwrap();
    let mut m = meta(ck);
    m["state_bytes"] = bytes.len().into();
    let digest: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    m["state_sha256"] = digest.into();
    set_meta(ck, &m);
}

/// Resumes `case` and checks that it skipped checkpoint 30 (saying `why`) and ended as `whole`.
fn falls_back_and_ends_as_whole(data: &Path, case: &Path, whole: &Path, why: &str) {
    let again = run(2, data, case, &[]);
    assert_ok(&again);
    let warnings: Vec<&str> = again
        .stderr
        .lines()
        .filter(|l| l.contains("skipped"))
        .collect();
    assert_eq!(warnings.len(), 1, "{}", again.stderr);
    assert!(
        warnings[0].contains("step-0000000030") && warnings[0].contains(why),
        "{}",
        warnings[0]
    );
    assert!(again.stderr.contains("step=24"), "{}", again.stderr);
    let (a, _) = model_and_optimizer(&newest_checkpoint(whole));
    let (b, _) = model_and_optimizer(&newest_checkpoint(case));
    let (diff, name) = max_relative_difference(&a, &b, 1e-6);
    assert!(diff < 1e-6, "{name} differs by {diff:e} of its norm");
    assert_eq!(losses(case).len(), 36, "each step logged once");
}

#[test]
fn a_checkpoint_that_fails_a_check_is_skipped_and_the_run_ends_as_an_uninterrupted_one() {
    let (tmp, data) = scratch_with_cifar(40);
    let (whole, stopped) = whole_and_stopped(tmp.path(), &data);
    type Damage = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, &str, Damage)> = vec![
        (
            "flipped",
            "SHA-256",
            Box::new(|ck| {
                let state = ck.join("state.safetensors");
                let mut b = std::fs::read(&state).unwrap();
                let mid = b.len() / 2;
                for x in &mut b[mid..mid + 4] {
                    *x = !*x;
                }
                std::fs::write(&state, b).unwrap();
            }),
        ),
        (
            "header",
            "SHA-256",
            Box::new(|ck| {
                let state = ck.join("state.safetensors");
                let mut b = std::fs::read(&state).unwrap();
                b[9] ^= 0x20;
                std::fs::write(&state, b).unwrap();
            }),
        ),
        (
            "swapped",
            "SHA-256",
            Box::new(|ck| {
                let older = ck
                    .with_file_name("step-0000000024")
                    .join("state.safetensors");
                std::fs::copy(older, ck.join("state.safetensors")).unwrap();
            }),
        ),
        (
            "no-tensor",
            "is missing",
            Box::new(|ck| rewrite_state(ck, |t| t.retain(|(n, _)| n != "hidden.weight"))),
        ),
        (
            "no-buffer",
            "is missing",
            Box::new(|ck| rewrite_state(ck, |t| t.retain(|(n, _)| n != "optim.hidden.weight"))),
        ),
        (
            "nan",
            "not finite; delete it",
            Box::new(|ck| {
                rewrite_state(ck, |t| {
                    let (_, w) = t.iter_mut().find(|(n, _)| n == "hidden.bias").unwrap();
                    *w = w.fill(f64::NAN);
                })
            }),
        ),
        (
            "stage-7",
            "not a place in this run's schedule",
            Box::new(|ck| {
                let mut m = meta(ck);
                m["position"]["stage"] = 7.into();
                set_meta(ck, &m);
            }),
        ),
        (
            "step-max",
            "not a place in this run's schedule",
            Box::new(|ck| {
                let mut m = meta(ck);
                m["position"]["step"] = u64::MAX.into();
                set_meta(ck, &m);
            }),
        ),
        (
            "batch",
            "not a place in this run's schedule",
            Box::new(|ck| {
                let mut m = meta(ck);
                m["position"]["batch"] = 999.into();
                set_meta(ck, &m);
            }),
        ),
    ];
    for (name, why, damage) in cases {
        let case = tmp.path().join(name);
        copy(&stopped, &case);
        damage(&checkpoint(&case, 30));
        falls_back_and_ends_as_whole(&data, &case, &whole, why);
    }
}

#[test]
fn no_usable_checkpoint_or_other_data_stops_with_one_line_and_changes_nothing() {
    let (tmp, data) = scratch_with_cifar(40);
    let stopped = tmp.path().join("stopped");
    assert_ok(&run(2, &data, &stopped, &["max_steps=30"]));
    let one_line = |r: &Run, expect: &str| {
        assert_eq!(r.code, 2, "{}", r.stderr);
        one_error_line(r, expect);
    };

    // Other data under the same --out: smaller, larger, another format.
    let smaller = tmp.path().join("smaller");
    write_cifar10(&smaller, 20);
    let larger = tmp.path().join("larger");
    write_cifar10(&larger, 60);
    let idx = tmp.path().join("idx");
    write_idx(&idx, 200, 32, 3, 0, 200);
    for (other, what) in [
        (
            &smaller,
            "200 training + 40 test images then, 100 training + 20 test images now",
        ),
        (&larger, "300 training + 60 test images now"),
        (&idx, "format: cifar10 then"),
    ] {
        one_line(&run(2, other, &stopped, &[]), what);
        assert_eq!(checkpoint_steps(&stopped), [18, 24, 30], "nothing removed");
    }

    // Every checkpoint torn: one line naming the newest and why, never a fresh start.
    for step in [18, 24, 30] {
        let state = checkpoint(&stopped, step).join("state.safetensors");
        let mut b = std::fs::read(&state).unwrap();
        b[20] ^= 1;
        std::fs::write(&state, b).unwrap();
    }
    let r = run(2, &data, &stopped, &[]);
    one_line(&r, "none of the 3 checkpoints");
    assert!(r.stderr.contains("step-0000000030: "), "{}", r.stderr);
    assert!(!stopped.join("embedding.npy").exists());
    assert_eq!(losses(&stopped).len(), 30, "the log is as it was");
}

#[test]
fn a_second_run_on_the_same_folder_is_refused_while_the_first_runs() {
    let (tmp, data) = scratch_with_cifar(40);
    let out = tmp.path().join("run");
    let args = train_args(Some("exactness.toml"), &data, &out, &["epochs=[400,1,1]"]);
    let mut second = None;
    let first = run_while(mpirun_command(2, &strs(&args)), |mpirun_pid| {
        wait_for(
            "the first run's checkpoint",
            std::time::Duration::from_secs(120),
            || !checkpoint_steps(&out).is_empty(),
        );
        second = Some(mpirun(2, &strs(&args)));
        // mpirun passes SIGUSR1 to the ranks without killing them: the first run stops cleanly.
        signal(mpirun_pid as i32, libc::SIGUSR1);
    });
    assert!(
        out.join("STOPPED").exists(),
        "the first run stopped: {}",
        first.stderr
    );
    let second = second.unwrap();
    assert_eq!(second.code, 2, "{}", second.stderr);
    let line = one_error_line(&second, "another run (pid ");
    assert!(line.contains(" on "), "names the host: {line}");
}

#[test]
fn a_data_file_changed_under_a_running_job_stops_it_with_one_line() {
    let (tmp, data) = scratch_with_cifar(40);
    let out = tmp.path().join("run");
    let args = train_args(Some("exactness.toml"), &data, &out, &["epochs=[400,1,1]"]);
    let job = run_while(mpirun_command(2, &strs(&args)), |_| {
        wait_for("a checkpoint", std::time::Duration::from_secs(120), || {
            !checkpoint_steps(&out).is_empty()
        });
        let file = data.join("data_batch_2.bin");
        let bytes = std::fs::read(&file).unwrap();
        std::fs::write(&file, &bytes[..bytes.len() - 3073]).unwrap();
    });
    assert_ne!(job.code, 0, "{}", job.stderr);
    assert!(
        job.stderr
            .contains("data_batch_2.bin changed while the run was using it"),
        "{}",
        job.stderr
    );
    assert!(!job.stderr.contains("panicked"), "{}", job.stderr);
    assert!(!newest_checkpoint(&out).as_os_str().is_empty());
}
