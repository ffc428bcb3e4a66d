//! benchmarks/gpu.sh rehearsed on the CPU as it must run on the bare GPU machine: no MPI and no
//! ssh of the system. benchmarks/gpu-prepare.sh fills a temporary folder (this build's binary,
//! OpenMPI's packages, Fashion-MNIST); then, in a mount namespace of its own, every file the
//! carried packages installed on this machine is covered by /dev/null (so a library the carry
//! lacks cannot come from the system), and so are mpirun, orted, ssh and /etc/openmpi; and
//! gpu.sh runs in rehearsal mode (device=cpu, tiny network, small data). Needs root.

mod common;
use common::{needs_root, BIN};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Programs that would let OpenMPI (or a script) fall back on the system's MPI or on ssh.
const PROGRAMS: &[&str] = &["mpirun", "mpiexec", "orterun", "orted", "ssh", "rsh"];

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The regular files (not links, not folders) that `dpkg -L` lists for `packages`, resolved.
fn package_files(packages: &[String]) -> Result<BTreeSet<PathBuf>, String> {
    let out = Command::new("dpkg")
        .arg("-L")
        .args(packages)
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(text(&out));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(Path::new)
        .filter(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file()))
        .filter_map(|p| p.canonicalize().ok())
        .collect())
}

/// Every place a program of this name could be found, resolved to the file it runs.
fn program_files(name: &str) -> Vec<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/bin", "/bin", "/usr/sbin", "/usr/local/bin"])
        .filter_map(|dir| Path::new(dir).join(name).canonicalize().ok())
        .filter(|p| p.is_file())
        .collect()
}

/// The `key = value` lines under "Figures:" in summary.txt.
fn figure<'a>(summary: &'a str, key: &str) -> &'a str {
    summary
        .lines()
        .filter_map(|l| l.trim().split_once(" = "))
        .find(|(k, _)| *k == key)
        .unwrap_or_else(|| panic!("no figure {key} in summary.txt:\n{summary}"))
        .1
}

fn positive(summary: &str, key: &str) -> f64 {
    let value: f64 = figure(summary, key)
        .parse()
        .unwrap_or_else(|_| panic!("{key} is not a number in summary.txt:\n{summary}"));
    assert!(value > 0.0, "{key} = {value}:\n{summary}");
    value
}

#[test]
fn gpu_script_runs_through_with_the_system_mpi_and_ssh_hidden() {
    if !needs_root("gpu_script_runs_through_with_the_system_mpi_and_ssh_hidden") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let gpu = tmp.path().join("gpu");
    let out_dir = tmp.path().join("out");

    let prepare = Command::new("bash")
        .arg(format!("{ROOT}/benchmarks/gpu-prepare.sh"))
        .env("GPU_DIR", &gpu)
        .env("BIN", BIN)
        .output()
        .unwrap();
    assert!(
        prepare.status.success(),
        "gpu-prepare.sh failed: {}",
        text(&prepare)
    );

    // What to hide: the files of the carried packages as installed here, and of hwloc's
    // optional plugins (the GPU machine has none; gpu.sh keeps them unloaded anyway).
    let packages: Vec<String> = std::fs::read_to_string(gpu.join("packages.txt"))
        .unwrap()
        .split_whitespace()
        .map(String::from)
        .collect();
    for p in ["openmpi-bin", "libopenmpi3", "libpmix2"] {
        assert!(
            packages.iter().any(|q| q == p),
            "{p} not carried: {packages:?}"
        );
    }
    let mut hide = package_files(&packages).expect("the carried packages are installed here");
    hide.extend(package_files(&["libhwloc-plugins".to_owned()]).unwrap_or_default());
    for name in PROGRAMS {
        hide.extend(program_files(name));
    }
    for lib in ["libmpi.so.40", "libopen-pal.so.40", "libpmix.so.2"] {
        let system = Path::new("/usr/lib/x86_64-linux-gnu").join(lib);
        let real = system.canonicalize().unwrap();
        assert!(
            hide.contains(&real),
            "{} would stay visible",
            real.display()
        );
    }
    let list = tmp.path().join("hide.txt");
    let lines: Vec<String> = hide.iter().map(|p| p.display().to_string()).collect();
    std::fs::write(&list, lines.join("\n") + "\n").unwrap();

    let wrapper = tmp.path().join("hidden.sh");
    std::fs::write(
        &wrapper,
        format!(
            r#"set -eu
# Mounts made here stay in this namespace.
mount --make-rprivate /
while IFS= read -r f; do mount --bind /dev/null "$f"; done < '{list}'
[ ! -d /etc/openmpi ] || mount -t tmpfs tmpfs /etc/openmpi
for p in {programs}; do
  if w=$(command -v "$p") && [ -f "$w" ] && [ -x "$w" ]; then echo "hidden.sh: $w still runs"; exit 97; fi
done
while IFS= read -r f; do [ ! -s "$f" ] || {{ echo "hidden.sh: $f still readable"; exit 98; }}; done < '{list}'
[ -z "$(ls -A /etc/openmpi 2>/dev/null)" ] || {{ echo "hidden.sh: /etc/openmpi not empty"; exit 99; }}
echo "hidden.sh: $(wc -l < '{list}') files hidden"
exec bash '{root}/benchmarks/gpu.sh'
"#,
            list = list.display(),
            programs = PROGRAMS.join(" "),
            root = ROOT,
        ),
    )
    .unwrap();
    let run = Command::new("unshare")
        .arg("-m")
        .arg("bash")
        .arg(&wrapper)
        .env("GPU_SH_REHEARSAL", "1")
        .env("GPU_DIR", &gpu)
        .env("OUT", &out_dir)
        .env("WORK", tmp.path().join("work"))
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let log = text(&run);
    assert!(run.status.success(), "gpu.sh failed: {log}");
    assert!(log.contains("files hidden"), "{log}");

    let summary = std::fs::read_to_string(out_dir.join("summary.txt"))
        .unwrap_or_else(|e| panic!("no summary.txt ({e}): {log}"));
    eprintln!("{summary}");
    // OpenMPI came from the carried packages, launched without mpirun, with nothing missing.
    let carried = format!("libmpi.so.40 => {}/root/", gpu.display());
    assert!(summary.contains(&carried), "{summary}");
    assert!(summary.contains("libraries not found: none"), "{summary}");
    assert!(summary.contains("MPI launch: singleton"), "{summary}");
    assert!(summary.contains("GPU: no nvidia-smi"), "{summary}");
    // Every stage ran to its end, and each section has its figure.
    let stages: Vec<&str> = summary
        .lines()
        .skip_while(|l| !l.starts_with("Stages"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .collect();
    for stage in [
        "tsimcne-f32",
        "tsimcne-bf16",
        "torch-f32",
        "torch-bf16",
        "nccl",
        "fashion",
    ] {
        let line = stages
            .iter()
            .find(|l| l.split_whitespace().next() == Some(stage))
            .unwrap_or_else(|| panic!("no stage {stage}:\n{summary}"));
        assert_eq!(
            line.split_whitespace().nth(1),
            Some("0"),
            "{line}\n{summary}"
        );
    }
    for key in [
        "tsimcne-f32_images_per_s",
        "tsimcne-bf16_images_per_s",
        "torch-f32_images_per_s",
        "torch-bf16_images_per_s",
        "tsimcne-f32_epoch_s",
        "torch-f32_epoch_s",
    ] {
        positive(&summary, key);
    }
    assert!(figure(&summary, "nccl").starts_with("ran: ok"), "{summary}");
    let accuracy = positive(&summary, "fashion_knn_accuracy_percent");
    assert!(accuracy <= 100.0, "{summary}");

    // One archive with every stage's whole log.
    let archive = out_dir.join("logs.tar.gz");
    let listing = Command::new("tar")
        .arg("-tzf")
        .arg(&archive)
        .output()
        .unwrap();
    assert!(listing.status.success(), "{}", text(&listing));
    let listing = String::from_utf8_lossy(&listing.stdout);
    for name in [
        "logs/tsimcne-f32.log",
        "logs/torch-bf16.log",
        "logs/fashion.log",
        "runs/fashion/metrics.json",
    ] {
        assert!(
            listing.lines().any(|l| l == name),
            "{name} not in logs.tar.gz:\n{listing}"
        );
    }
}
