//! Bad inputs: each gives one line naming the input and a non-zero exit, on every rank, before
//! any step — no panic, no backtrace, no hang, and nothing the user had is touched.

mod common;
use common::*;
use std::path::Path;

/// Runs `args` on two ranks and checks the one-line, non-zero outcome; returns the line.
fn refuses<S: AsRef<str>>(args: &[S], expect: &str) -> String {
    refuses_on(2, args, expect).1
}

/// As `refuses`, on `ranks` ranks; returns the exit code and the line.
fn refuses_on<S: AsRef<str>>(ranks: usize, args: &[S], expect: &str) -> (i32, String) {
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    let run = mpirun(ranks, &args);
    (run.code, one_error_line(&run, expect))
}

/// A small run of the built-in config on `data` into `out`, with `sets` on top.
fn small_run(data: &str, out: &str, sets: &[&str]) -> Vec<String> {
    let base = [
        "model.backbone=tiny",
        "batch_size=16",
        "epochs=[1,1,1]",
        "optim.warmup_epochs=[0,0,0]",
    ];
    let sets: Vec<&str> = base.iter().chain(sets).copied().collect();
    train_args(None, Path::new(data), Path::new(out), &sets)
}

#[test]
fn bad_inputs_each_give_one_line_and_a_non_zero_exit() {
    let tmp = tempfile::tempdir().unwrap();
    let t = |name: &str| tmp.path().join(name).to_str().unwrap().to_owned();
    let good = t("cifar");
    write_cifar10(Path::new(&good), 20);
    let out = t("out");
    let cfg = |name: &str, text: &str| {
        let p = t(name);
        std::fs::write(&p, text).unwrap();
        p
    };

    // Configs.
    refuses(
        &[
            "train",
            "--config",
            &t("nope.toml"),
            "--data",
            &good,
            "--out",
            &out,
        ],
        "cannot read config",
    );
    refuses(
        &[
            "train",
            "--config",
            &cfg("syntax.toml", "batch_size = = 3"),
            "--data",
            &good,
            "--out",
            &out,
        ],
        "syntax.toml",
    );
    refuses(
        &[
            "train",
            "--config",
            &cfg("unknown.toml", "batchsize = 64"),
            "--data",
            &good,
            "--out",
            &out,
        ],
        "batchsize",
    );
    refuses(
        &[
            "train",
            "--config",
            &cfg("type.toml", "batch_size = \"big\""),
            "--data",
            &good,
            "--out",
            &out,
        ],
        "type.toml",
    );
    refuses(
        &small_run(&good, &out, &["batch_size=33"]),
        "not divisible by the 2 ranks",
    );
    refuses(
        &small_run(&good, &out, &["epochs=[0,1,1]"]),
        "epochs[0] = 0",
    );
    refuses(
        &small_run(&good, &out, &["batch_size"]),
        "expected key=value",
    );
    refuses(&small_run(&good, &out, &["model.depth=3"]), "depth");
    refuses(&small_run(&good, &out, &["optim.lr=-1"]), "optim.lr");
    refuses(&small_run(&good, &out, &["model.backbone=vgg"]), "vgg");
    refuses(
        &small_run(&good, &out, &["augment.flip_p=2"]),
        "augment.flip_p",
    );
    refuses(
        &small_run(&good, &out, &["optim.warmup_epochs=[5,0,0]"]),
        "warmup_epochs[0]",
    );
    refuses(&small_run(&good, &out, &["device=cuda"]), "no GPU");
    refuses(
        &small_run(&good, &out, &["batch_size=1000"]),
        "larger than the 100 training images",
    );
    refuses(
        &small_run(&good, &out, &["augment.neighbours=100"]),
        "augment.neighbours = 100 searches 100 training images",
    );
    refuses(
        &small_run(&good, &out, &["augment.neighbours=1001"]),
        "augment.neighbours = 1001: give at most 1000",
    );

    // Data.
    refuses(&small_run(&t("missing"), &out, &[]), "does not exist");
    std::fs::create_dir_all(t("empty")).unwrap();
    refuses(&small_run(&t("empty"), &out, &[]), "found neither");
    let truncated = t("truncated");
    write_cifar10(Path::new(&truncated), 20);
    let b3 = Path::new(&truncated).join("data_batch_3.bin");
    let bytes = std::fs::read(&b3).unwrap();
    std::fs::write(&b3, &bytes[..bytes.len() - 100]).unwrap();
    refuses(&small_run(&truncated, &out, &[]), "data_batch_3.bin");
    let partial = t("partial");
    write_cifar10(Path::new(&partial), 20);
    std::fs::remove_file(Path::new(&partial).join("data_batch_5.bin")).unwrap();
    refuses(&small_run(&partial, &out, &[]), "data_batch_5.bin: missing");
    let labels = t("labels");
    write_cifar10(Path::new(&labels), 20);
    let b1 = Path::new(&labels).join("data_batch_1.bin");
    let mut bytes = std::fs::read(&b1).unwrap();
    bytes[3073] = 42;
    std::fs::write(&b1, bytes).unwrap();
    refuses(&small_run(&labels, &out, &[]), "record 1 has label 42");
    write_idx(Path::new(&t("magic")), 10, 4, 9, 0, 10);
    refuses(&small_run(&t("magic"), &out, &[]), "not an IDX file");
    write_idx(Path::new(&t("short")), 10, 4, 3, 16, 10);
    refuses(
        &small_run(&t("short"), &out, &[]),
        "header says 10 images but the file holds 9",
    );
    write_idx(Path::new(&t("count")), 10, 4, 3, 0, 8);
    refuses(&small_run(&t("count"), &out, &[]), "8 labels for 10 images");
    write_idx(Path::new(&t("gz")), 10, 4, 3, 0, 10);
    std::fs::remove_file(Path::new(&t("gz")).join("train-images-idx3-ubyte")).unwrap();
    write_file(
        &Path::new(&t("gz")).join("train-images-idx3-ubyte.gz"),
        b"not gzip at all",
    );
    refuses(&small_run(&t("gz"), &out, &[]), "not a readable gzip file");

    // Flags.
    refuses(
        &["train", "--data", &good, "--out", &out, "--epochs", "3"],
        "--epochs",
    );
    refuses(&["train", "--out", &out], "--data");

    // Output folders.
    let file = t("a-file");
    std::fs::write(&file, b"keep me").unwrap();
    refuses(&small_run(&good, &file, &[]), "is a file; choose a folder");
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    let dangling = t("dangling");
    std::os::unix::fs::symlink(t("nowhere"), &dangling).unwrap();
    refuses(&small_run(&good, &dangling, &[]), "which does not exist");
    let with_file = t("checkpoints-file");
    write_file(&Path::new(&with_file).join("checkpoints"), b"keep me too");
    refuses(&small_run(&good, &with_file, &[]), "checkpoints is a file");
}

/// Values that once reached libtorch unchecked (a panic, an allocation failure, a hang) and
/// messages that once said something untrue: each is one true line now.
#[test]
fn values_and_paths_that_misled_get_one_true_line() {
    let tmp = tempfile::tempdir().unwrap();
    let t = |name: &str| tmp.path().join(name).to_str().unwrap().to_owned();
    let good = t("cifar");
    write_cifar10(Path::new(&good), 20);
    let out = t("out");
    for side in [1, 2] {
        let tiny = t(&format!("idx-{side}"));
        write_idx(Path::new(&tiny), 40, side, 3, 0, 40);
        refuses(&small_run(&tiny, &out, &[]), "needs at least 4×4 pixels");
    }
    let (code, line) = refuses_on(
        2,
        &small_run(&good, &out, &["model.hidden_dim=1000000000000"]),
        "model.hidden_dim",
    );
    assert_eq!(code, 2, "{line}");
    refuses(
        &small_run(&good, &out, &["threads=10000"]),
        "threads = 10000",
    );
    refuses(&small_run(&good, &out, &["knn_k=5000"]), "knn_k = 5000");
    refuses(&small_run(&good, &out, &["knn_k=200"]), "the data has 100");
    refuses(
        &small_run(&good, &out, &["model.map_dim=1"]),
        "model.map_dim = 1",
    );
    refuses(
        &small_run(&good, &out, &["batch_size=big"]),
        "config --set ",
    );
    let junk = format!("batch_size = {}", "9".repeat(5000));
    let file = t("junk.toml");
    std::fs::write(&file, junk).unwrap();
    let line = refuses(
        &["train", "--config", &file, "--data", &good, "--out", &out],
        "junk.toml",
    );
    assert!(
        line.len() < 400,
        "an error line quotes little of the input: {} chars",
        line.len()
    );

    refuses(
        &small_run(&t("cifar/data_batch_1.bin"), &out, &[]),
        "is a file; pass the folder",
    );
    let link = t("data-link");
    std::os::unix::fs::symlink(t("gone"), &link).unwrap();
    refuses(&small_run(&link, &out, &[]), "is a link to");
    let empty = t("idx-empty");
    write_idx(Path::new(&empty), 0, 4, 3, 0, 0);
    refuses(&small_run(&empty, &out, &[]), "holds no images");

    // A run of batch 16 resumed on 3 ranks: the advice is about ranks, not the batch.
    let (code, line) = refuses_on(3, &small_run(&good, &out, &[]), "launch 1, 2, 4, 8 ranks");
    assert_eq!(code, 2, "{line}");
}

#[test]
fn a_run_folder_of_another_config_is_refused_and_left_as_it_was() {
    let (tmp, data) = scratch_with_cifar(20);
    let out = tmp.path().join("run");
    let (d, o) = (data.to_str().unwrap(), out.to_str().unwrap());
    assert_ok(&mpirun(2, &strs(&small_run(d, o, &["max_steps=2"]))));
    let ck = newest_checkpoint(&out);
    let before = std::fs::read(ck.join("state.safetensors")).unwrap();
    let line = refuses(
        &small_run(d, o, &["max_steps=4", "seed=9"]),
        "seed differs: 0 there, 9 now",
    );
    assert!(line.contains("choose a new --out"), "{line}");
    assert_eq!(std::fs::read(ck.join("state.safetensors")).unwrap(), before);
    assert_eq!(newest_checkpoint(&out), ck);
}

#[test]
fn a_diverging_loss_stops_every_rank_and_keeps_the_last_good_checkpoint() {
    let (tmp, data) = scratch_with_cifar(20);
    let out = tmp.path().join("run");
    let (d, o) = (data.to_str().unwrap(), out.to_str().unwrap());
    // Stage 1 ends with a checkpoint; stage 2's rate then throws the map layer to infinity.
    let line = refuses(
        &small_run(
            d,
            o,
            &["optim.stage_lr_factor=[1.0,1e20,1.0]", "optim.clip_value=0"],
        ),
        "loss became",
    );
    let ck = newest_checkpoint(&out);
    assert!(
        line.contains(&ck.display().to_string()),
        "names the last good checkpoint: {line}"
    );
    assert!(line.contains("map-layer stage"), "{line}");
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ck.join("meta.json")).unwrap()).unwrap();
    assert_eq!(
        meta["position"]["stage"], 1,
        "the checkpoint is the end of stage 1"
    );
    assert!(!parameters(&ck).is_empty(), "and it reads back");
}
