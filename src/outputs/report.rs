//! The end-of-run report, written by rank 0 from the map of every image: the kNN accuracy of
//! the map (fitted on the training split, scored on the test split; leave-one-out where there
//! is no test split), `embedding.npy`, `embedding.csv`, `metrics.json` and `map.png`.

use std::path::Path;

use tch::Tensor;
use tracing::info;

use super::{write_atomic_bytes, write_csv, write_npy, OutputError};
use crate::config::Config;
use crate::data::Dataset;
use crate::metrics::knn_accuracy;

/// What the report says about the run besides the map.
pub struct RunFacts<'a> {
    pub cfg: &'a Config,
    pub world_size: usize,
    /// Training images the run trained on (`train_limit` applied).
    pub train_images_used: usize,
}

/// Scores `embedding` (N×D, every image of `data` in index order, on the CPU) and writes the
/// report into `out`.
pub fn write(
    out: &Path,
    data: &Dataset,
    embedding: &Tensor,
    run: &RunFacts,
) -> Result<(), OutputError> {
    let k = run.cfg.knn_k as i64;
    let labels = Tensor::from_slice(&data.labels);
    let (acc, protocol) = if data.n_test > 0 {
        let (train, test) = (data.n_train as i64, data.n_test as i64);
        let acc = knn_accuracy(
            &embedding.narrow(0, 0, train),
            &labels.narrow(0, 0, train),
            &embedding.narrow(0, train, test),
            &labels.narrow(0, train, test),
            k,
            false,
        );
        (acc, "fit on the training split, scored on the test split")
    } else {
        let acc = knn_accuracy(embedding, &labels, embedding, &labels, k, true);
        (acc, "leave-one-out on the training split")
    };
    info!(
        knn_accuracy = format!("{:.2} %", 100.0 * acc),
        k, protocol, "map evaluated"
    );
    write_npy(&out.join("embedding.npy"), embedding)?;
    let rows = Vec::<Vec<f32>>::try_from(embedding)?;
    let splits: Vec<&str> = (0..data.len()).map(|i| data.split(i).name()).collect();
    write_csv(&out.join("embedding.csv"), &rows, &splits, &data.labels)?;
    let metrics = serde_json::json!({
        "knn_accuracy": acc,
        "knn_k": run.cfg.knn_k,
        "protocol": protocol,
        "dataset": data.name,
        "images": data.len(),
        "train_images_used": run.train_images_used,
        "world_size": run.world_size,
        "batch_size": run.cfg.batch_size,
        "epochs": run.cfg.epochs,
        "neighbour_positives": run.cfg.augment.neighbours,
    });
    let text = serde_json::to_string_pretty(&metrics).unwrap_or_default();
    write_atomic_bytes(&out.join("metrics.json"), text.as_bytes())?;
    if rows.first().is_some_and(|r| r.len() >= 2) {
        let points: Vec<(f32, f32)> = rows.iter().map(|r| (r[0], r[1])).collect();
        let method = match run.cfg.augment.neighbours {
            0 => "t-SimCNE".to_owned(),
            k => format!("t-SimCNE, neighbour positives (k = {k})"),
        };
        let title = format!(
            "{} · {method} · kNN accuracy {:.1} %",
            data.name,
            100.0 * acc
        );
        crate::plot::draw_map(
            &out.join("map.png"),
            &points,
            &data.labels,
            &data.class_names,
            &title,
        )?;
    }
    Ok(())
}
