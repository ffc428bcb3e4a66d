//! A whole run on two ranks writes what a user reads: the resolved config, the step log, the
//! embedding of every image (train and test), the kNN accuracy and the map.

mod common;
use common::*;

#[test]
fn a_finished_run_writes_its_outputs_and_learns_the_classes() {
    let (tmp, data) = scratch_with_cifar(40);
    let out = tmp.path().join("run");
    let run = train(
        2,
        "exactness.toml",
        &data,
        &out,
        &[
            "model.backbone=tiny",
            "model.norm=batch",
            "epochs=[6,2,2]",
            "optim.lr=0.12",
            "phase_timing=true",
        ],
    );
    assert_ok(&run);
    assert!(run.stderr.contains("map evaluated"), "{}", run.stderr);

    let config = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(
        config.contains("backbone = \"tiny\"") && config.contains("Peak learning rate per stage")
    );

    let log = std::fs::read_to_string(out.join("train-log.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    for key in [
        "stage",
        "epoch",
        "step",
        "loss",
        "lr",
        "images_per_s",
        "data_s",
        "compute_s",
        "wait_s",
        "comm_s",
    ] {
        assert!(first.get(key).is_some(), "log lacks {key}: {first}");
    }
    assert_eq!(log.lines().count(), 60, "6 steps per epoch, 10 epochs");
    // Each step's images/s is its own: a step's time runs from its start to the next one's
    // (a step read late must not be charged with its successor's time, or with none).
    let mut rates: Vec<f64> = log
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["images_per_s"]
                .as_f64()
                .unwrap()
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    let median = rates[rates.len() / 2];
    assert!(
        rates
            .iter()
            .all(|&r| r.is_finite() && r > 0.0 && r < 10.0 * median),
        "a step's rate is far from the others (median {median}): {rates:?}"
    );

    let csv = std::fs::read_to_string(out.join("embedding.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("index,split,label,x,y"));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 240);
    assert_eq!(rows.iter().filter(|r| r[1] == "test").count(), 40);
    // Labels follow the files' order: image i of file f has label (40 f + i) mod 10.
    assert!(rows
        .iter()
        .enumerate()
        .all(|(i, r)| r[2] == (i % 10).to_string()));
    let npy = tch::Tensor::read_npy(out.join("embedding.npy")).unwrap();
    assert_eq!(npy.size(), [240, 2]);
    assert_eq!(
        rows[17][3].parse::<f32>().unwrap(),
        npy.double_value(&[17, 0]) as f32
    );

    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("metrics.json")).unwrap()).unwrap();
    let acc = metrics["knn_accuracy"].as_f64().unwrap();
    assert!(
        acc > 0.5,
        "kNN accuracy {acc} on classes a network tells apart easily (chance: 0.1)"
    );
    assert_eq!(metrics["world_size"], 2);
    assert_eq!(
        metrics["neighbour_positives"], 0,
        "t-SimCNE's own pairs by default"
    );
    let png = std::fs::read(out.join("map.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");
}
