//! CIFAR-10 and CIFAR-100 in their official binary format.
//!
//! CIFAR-10: `data_batch_1.bin` … `data_batch_5.bin` and `test_batch.bin`, records of one label
//! byte and 3072 image bytes (R, G, B planes of 32×32). CIFAR-100: `train.bin` and `test.bin`,
//! records of a coarse and a fine label byte, then the image; the fine label (100 classes) is
//! used. The `cifar-10-batches-bin` / `cifar-100-binary` folder the archives unpack to is also
//! accepted as the parent of `--data`.

use std::path::{Path, PathBuf};

use super::{check_size, Bytes, DataError, Dataset, Part};

const IMAGE: usize = 3 * 32 * 32;
const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// The CIFAR dataset in `dir` (or its archive sub-folder), or `None` when it holds no CIFAR.
pub fn open(dir: &Path) -> Result<Option<Dataset>, DataError> {
    for sub in [
        dir.to_owned(),
        dir.join("cifar-10-batches-bin"),
        dir.join("cifar-100-binary"),
    ] {
        let ten: Vec<PathBuf> = (1..=5)
            .map(|i| sub.join(format!("data_batch_{i}.bin")))
            .collect();
        if ten.iter().any(|p| p.exists()) || sub.join("test_batch.bin").exists() {
            let mut files = ten;
            files.push(sub.join("test_batch.bin"));
            let names = CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect();
            return read(&files, 5, 1, "cifar10", names).map(Some);
        }
        if sub.join("train.bin").exists() || sub.join("test.bin").exists() {
            let files = [sub.join("train.bin"), sub.join("test.bin")];
            return read(&files, 1, 2, "cifar100", Vec::new()).map(Some);
        }
    }
    Ok(None)
}

/// Reads `files` (the first `n_train_files` are the training split) whose records carry
/// `label_bytes` label bytes each, the last of which is the class.
fn read(
    files: &[PathBuf],
    n_train_files: usize,
    label_bytes: usize,
    name: &str,
    class_names: Vec<String>,
) -> Result<Dataset, DataError> {
    let stride = label_bytes + IMAGE;
    let mut parts = Vec::new();
    let mut labels = Vec::new();
    let mut n_train = 0;
    let max_label = if label_bytes == 1 { 9 } else { 99 };
    for (i, path) in files.iter().enumerate() {
        if !path.exists() {
            return Err(DataError::malformed(
                path,
                format!("missing; a {name} folder needs all of its batch files"),
            ));
        }
        let bytes = Bytes::open(path)?;
        let count = check_size(path, bytes.len(), 0, stride)?;
        for r in 0..count {
            let label = bytes[r * stride + label_bytes - 1];
            if label > max_label {
                return Err(DataError::malformed(
                    path,
                    format!("record {r} has label {label}, above {max_label}: not a {name} file"),
                ));
            }
            labels.push(i64::from(label));
        }
        parts.push(Part {
            bytes,
            first: labels.len() - count,
            count,
            header: 0,
            stride,
            image_offset: label_bytes,
        });
        if i < n_train_files {
            n_train += count;
        }
    }
    Ok(Dataset::from_parts(
        name.to_owned(),
        (3, 32, 32),
        n_train,
        labels,
        class_names,
        parts,
    ))
}
