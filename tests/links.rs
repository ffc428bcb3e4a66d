//! benchmarks/links.sh at one small setting (root; skips with one line for other users): two
//! ranks on emulated hosts (network namespaces joined through a switch namespace, each link
//! shaped to 100 Mbit/s) train as two ranks under plain mpirun do, their gradients cross the
//! shaped link (the all-reduce takes at least the time its bytes need at that rate), and
//! nothing the script made is left behind.

mod common;
use common::*;
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// The link's rate in bits per second, as given to the script.
const RATE: (&str, f64) = ("100mbit", 100e6);
/// The token bucket the script gives a link this slow (bytes that may pass at once).
const BURST: f64 = 32768.0;

#[test]
fn ranks_on_emulated_hosts_train_as_under_mpirun_and_their_gradients_cross_the_shaped_link() {
    if !needs_root(
        "ranks_on_emulated_hosts_train_as_under_mpirun_and_their_gradients_cross_the_shaped_link",
    ) {
        return;
    }
    let (tmp, data) = scratch_with_cifar(40);
    let sets = ["max_steps=3"];
    let reference = tmp.path().join("reference");
    assert_ok(&train(2, "exactness.toml", &data, &reference, &sets));

    let bench = tmp.path().join("bench");
    // links.sh chooses --out itself (OUT/run).
    let config = format!("{ROOT}/configs/exactness.toml");
    let args = [
        &format!("{ROOT}/benchmarks/links.sh"),
        "run",
        bench.to_str().unwrap(),
        "2",
        RATE.0,
        "--config",
        &config,
        "--data",
        data.to_str().unwrap(),
        "--set",
        sets[0],
    ];
    let tag = format!("tslt{}", std::process::id());
    let out = Command::new("bash")
        .args(args)
        .env("LINK_TAG", &tag)
        .env("TSIMCNE_BIN", BIN)
        .env("LINK_RUN_LIMIT", "120")
        .output()
        .unwrap();
    let stderr = std::fs::read_to_string(bench.join("stderr.txt")).unwrap_or_default();
    assert!(
        out.status.success(),
        "{}\n{stderr}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = bench.join("run");

    // The same two ranks' arithmetic: the link changes the time, not the result.
    assert_eq!(losses(&run), losses(&reference));
    let (got, _) = model_and_optimizer(&newest_checkpoint(&run));
    let (expected, _) = model_and_optimizer(&newest_checkpoint(&reference));
    assert_eq!(max_relative_difference(&expected, &got, 0.0).0, 0.0);

    // Each all-reduce sends this rank's half of the gradients and receives the other's half:
    // at least the gradient's bytes cross the link, at its rate, less one token bucket.
    let trained: usize = parameters(&newest_checkpoint(&run))
        .iter()
        .filter(|(name, _)| {
            ["backbone.", "hidden.", "pretrain_out."]
                .iter()
                .any(|p| name.starts_with(p))
                && !name.contains("running_")
        })
        .map(|(_, v)| v.len())
        .sum();
    let bytes = 4.0 * trained as f64;
    let least = (bytes - BURST) * 8.0 / RATE.1;
    let log = std::fs::read_to_string(run.join("train-log.jsonl")).unwrap();
    for line in log.lines() {
        let record: serde_json::Value = serde_json::from_str(line).unwrap();
        let reduce = record["reduce_s"].as_f64().unwrap();
        assert!(
            reduce >= least,
            "an all-reduce of {bytes} bytes took {reduce} s, less than the {least} s the link allows"
        );
        for key in ["gather_s", "scatter_s"] {
            assert!(record[key].as_f64().unwrap() > 0.0, "{line}");
        }
    }

    // Every namespace the script made is gone.
    let listed = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(!listed.contains(&tag), "left behind: {listed}");
}
