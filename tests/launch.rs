//! launch/local.sh: its dry runs print the right mpirun command for 1 and 8 GPUs and for 2 CPU
//! ranks, and the printed CPU command runs.

mod common;
use common::*;
use std::process::Command;

fn dry_run(args: &[&str], cores: &str) -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("bash")
        .arg(format!("{root}/launch/local.sh"))
        .args(args)
        .env("CORES", cores)
        .env("TSIMCNE_BIN", BIN)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn dry_runs_print_the_commands_for_gpus_and_cpu_ranks() {
    let train = [
        "--", "train", "--data", "D", "--out", "O", "--set", "seed=4",
    ];
    for gpus in ["1", "8"] {
        let args: Vec<&str> = ["--gpus", gpus, "--dry-run"]
            .iter()
            .chain(&train)
            .copied()
            .collect();
        let cmd = dry_run(&args, "16");
        assert!(
            cmd.starts_with(&format!("mpirun -n {gpus} --bind-to none")),
            "{cmd}"
        );
        assert!(cmd.contains("-x NCCL_DEBUG=WARN"), "{cmd}");
        assert!(
            cmd.contains(&format!(
                "{BIN} train --set device=cuda --data D --out O --set seed=4"
            )),
            "{cmd}"
        );
        assert!(
            !cmd.contains("threads="),
            "GPU ranks keep torch's threads: {cmd}"
        );
    }
    let args: Vec<&str> = ["--cpu", "2", "--dry-run"]
        .iter()
        .chain(&train)
        .copied()
        .collect();
    let cmd = dry_run(&args, "2");
    assert!(cmd.starts_with("mpirun -n 2 --bind-to none"), "{cmd}");
    assert!(
        cmd.contains("-x OMP_NUM_THREADS=1")
            && cmd.contains("--set device=cpu --set threads=1 --data D"),
        "{cmd}"
    );
    assert!(!cmd.contains("--oversubscribe"), "{cmd}");
    let more = dry_run(&["--cpu", "4", "--dry-run", "--", "train"], "2");
    assert!(
        more.contains("--oversubscribe") && more.contains("threads=1"),
        "{more}"
    );
    assert!(dry_run(&["--cpu", "2", "--dry-run", "--", "train"], "8").contains("threads=4"));
}

#[test]
fn the_printed_cpu_command_runs() {
    let (tmp, data) = scratch_with_cifar(20);
    let out = tmp.path().join("run");
    let train = train_args(Some("exactness.toml"), &data, &out, &["max_steps=2"]);
    let mut args = vec!["--cpu", "2", "--dry-run", "--"];
    args.extend(train.iter().map(String::as_str));
    let cmd = dry_run(&args, "2");
    let run = Command::new("bash")
        .args(["-c", &cmd])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(losses(&out).len(), 2);
}
