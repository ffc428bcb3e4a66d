//! launch/local.sh: its dry runs print the right mpirun command for 1 and 8 GPUs, for 2 CPU
//! ranks and for ranks on several hosts (a list or a hostfile), and the printed CPU command
//! runs; ranks started on other hosts (a remote shell that starts from a clean environment, as
//! ssh does) see the NCCL settings given to the launcher.

mod common;
use common::*;
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn local_sh(args: &[&str], cores: &str) -> Command {
    let mut c = Command::new("bash");
    c.arg(format!("{ROOT}/launch/local.sh"))
        .args(args)
        .env("CORES", cores)
        .env("TSIMCNE_BIN", BIN);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("NCCL_")) {
        c.env_remove(k);
    }
    c
}

fn dry_run(args: &[&str], cores: &str) -> String {
    let out = local_sh(args, cores).output().unwrap();
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

#[test]
fn hosts_and_hostfiles_put_n_ranks_on_each_host_and_pass_on_nccl_settings() {
    let listed = local_sh(
        &[
            "--gpus",
            "8",
            "--hosts",
            "gpu1,gpu2",
            "--dry-run",
            "--",
            "train",
        ],
        "16",
    )
    .env("NCCL_SOCKET_IFNAME", "ib0")
    .env("NCCL_IB_HCA", "mlx5_0")
    .output()
    .unwrap();
    let cmd = String::from_utf8_lossy(&listed.stdout);
    // printf %q escapes the comma; the shell reads it back as a plain one.
    assert!(
        cmd.starts_with("mpirun -n 16 --host gpu1:8\\,gpu2:8 --map-by ppr:8:node --bind-to none"),
        "{cmd}"
    );
    assert!(
        cmd.contains("-x NCCL_IB_HCA ") && cmd.contains("-x NCCL_SOCKET_IFNAME "),
        "{cmd}"
    );
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("hosts");
    std::fs::write(&file, "# the job's nodes\ngpu1 slots=8\n\ngpu2\n").unwrap();
    let from_file = dry_run(
        &[
            "--gpus",
            "8",
            "--hostfile",
            file.to_str().unwrap(),
            "--dry-run",
            "--",
            "train",
        ],
        "16",
    );
    assert!(
        from_file.starts_with(cmd.split(" -x ").next().unwrap()),
        "{from_file}"
    );
    assert!(!from_file.contains("NCCL_SOCKET_IFNAME"), "{from_file}");

    for (args, names) in [
        (vec!["--hosts", "gpu1:8"], "--hosts gpu1:8"),
        (
            vec!["--hostfile", "/nonexistent/hosts"],
            "--hostfile /nonexistent/hosts",
        ),
    ] {
        let mut all = vec!["--gpus", "8"];
        all.extend(args);
        all.extend(["--dry-run", "--", "train"]);
        let out = local_sh(&all, "16").output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(names), "{err}");
    }
}

#[test]
fn ranks_on_other_hosts_see_the_nccl_settings_given_to_the_launcher() {
    let (tmp, data) = scratch_with_cifar(20);
    // The remote shell: logs its host and starts the command from a clean environment, as a
    // login by ssh on another host would; the "hosts" are loopback addresses of this machine.
    let agent = tmp.path().join("agent.sh");
    let used = tmp.path().join("agent.log");
    std::fs::write(
        &agent,
        format!(
            "#!/bin/bash\necho \"$1\" >> {}\nhost=$1; shift\nexec env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=\"$HOME\" bash -c \"$*\"\n",
            used.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&agent, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = tmp.path().join("run");
    let train = train_args(Some("exactness.toml"), &data, &out, &["max_steps=1"]);
    let mut args = vec!["--cpu", "1", "--hosts", "127.0.0.2,127.0.0.3", "--"];
    args.extend(strs(&train));
    let run = local_sh(&args, "2")
        .env("OMPI_MCA_plm_rsh_agent", &agent)
        // Several OpenMPI daemons on one machine now and then crash writing hwloc's shared
        // topology (a segfault in hwloc_shmem_topology_write, 2 runs of 8 here); this turns
        // that sharing off.
        .env("OMPI_MCA_rtc_hwloc_vmhole", "none")
        .env("NCCL_SOCKET_IFNAME", "tsimcne-test0")
        .env("NCCL_IB_HCA", "mlx5_test:1")
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    let text = std::fs::read_to_string(&used).unwrap();
    let mut hosts: Vec<&str> = text.lines().collect();
    hosts.sort();
    assert_eq!(
        hosts,
        ["127.0.0.2", "127.0.0.3"],
        "both ranks start through the remote shell"
    );
    for rank in 0..2 {
        let line = stderr
            .lines()
            .find(|l| l.contains(&format!("rank {rank}/2 node=")))
            .unwrap_or_else(|| panic!("rank {rank}'s placement:\n{stderr}"));
        assert!(
            line.contains("nccl=\"NCCL_IB_HCA=mlx5_test:1 NCCL_SOCKET_IFNAME=tsimcne-test0\""),
            "{line}"
        );
    }
}
