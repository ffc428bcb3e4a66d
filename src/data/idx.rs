//! IDX files (MNIST, Fashion-MNIST): `train-images-idx3-ubyte` with `train-labels-idx1-ubyte`,
//! and the `t10k-` pair for the test split; each may be gzipped (`.gz`), as Debian ships them.

use std::path::{Path, PathBuf};

use super::{check_size, Bytes, DataError, Dataset, Part};

const FASHION_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// The path of `stem` in `dir`, plain or gzipped.
fn find(dir: &Path, stem: &str) -> Option<PathBuf> {
    [stem.to_owned(), format!("{stem}.gz")]
        .into_iter()
        .map(|n| dir.join(n))
        .find(|p| p.exists())
}

/// The IDX dataset in `dir`, or `None` when it holds no IDX image file.
pub fn open(dir: &Path) -> Result<Option<Dataset>, DataError> {
    let Some(train_images) = find(dir, "train-images-idx3-ubyte") else {
        return Ok(None);
    };
    let mut splits = vec![("train", train_images)];
    if let Some(test) = find(dir, "t10k-images-idx3-ubyte") {
        splits.push(("t10k", test));
    }
    let mut parts = Vec::new();
    let mut labels = Vec::new();
    let mut shape = (0, 0);
    let mut n_train = 0;
    for (prefix, images_path) in splits {
        let labels_path = find(dir, &format!("{prefix}-labels-idx1-ubyte")).ok_or_else(|| {
            DataError::malformed(
                &images_path,
                format!("has no {prefix}-labels-idx1-ubyte[.gz] beside it"),
            )
        })?;
        let bytes = Bytes::open(&images_path)?;
        let dims = header(&images_path, &bytes, 3)?;
        let (count, h, w) = (dims[0], dims[1], dims[2]);
        if h == 0 || w == 0 {
            return Err(DataError::malformed(&images_path, "images of zero size"));
        }
        if parts.is_empty() {
            shape = (h, w);
        } else if shape != (h, w) {
            return Err(DataError::malformed(
                &images_path,
                format!(
                    "{h}×{w} images, but the training images are {}×{}",
                    shape.0, shape.1
                ),
            ));
        }
        let n = check_size(&images_path, bytes.len(), 16, h * w)?;
        if n != count {
            return Err(DataError::malformed(
                &images_path,
                format!("header says {count} images but the file holds {n}; it is truncated"),
            ));
        }
        let label_bytes = Bytes::open(&labels_path)?;
        let label_dims = header(&labels_path, &label_bytes, 1)?;
        if label_dims[0] != count || label_bytes.len() != 8 + count {
            return Err(DataError::malformed(
                &labels_path,
                format!(
                    "{} labels for {count} images in {}",
                    label_bytes.len().saturating_sub(8),
                    images_path.display()
                ),
            ));
        }
        labels.extend(label_bytes[8..].iter().map(|&l| i64::from(l)));
        parts.push(Part {
            bytes,
            first: labels.len() - count,
            count,
            header: 16,
            stride: h * w,
            image_offset: 0,
        });
        if prefix == "train" {
            n_train = count;
        }
    }
    let is_fashion = dir.to_string_lossy().contains("fashion");
    let class_names = if is_fashion {
        FASHION_CLASSES.iter().map(|s| s.to_string()).collect()
    } else {
        Vec::new()
    };
    let name = if is_fashion { "fashion-mnist" } else { "idx" };
    Ok(Some(Dataset::from_parts(
        name.to_owned(),
        (1, shape.0, shape.1),
        n_train,
        labels,
        class_names,
        parts,
    )))
}

/// The dimensions in an IDX header of unsigned bytes with `rank` dimensions.
fn header(path: &Path, bytes: &[u8], rank: usize) -> Result<Vec<usize>, DataError> {
    let need = 4 + 4 * rank;
    if bytes.len() < need {
        return Err(DataError::malformed(
            path,
            "shorter than an IDX header; truncated",
        ));
    }
    if bytes[0] != 0 || bytes[1] != 0 || bytes[2] != 0x08 || bytes[3] as usize != rank {
        return Err(DataError::malformed(
            path,
            format!(
                "not an IDX file of unsigned bytes with {rank} dimension(s) (magic {:02x?})",
                &bytes[..4]
            ),
        ));
    }
    Ok((0..rank)
        .map(|d| {
            let b = &bytes[4 + 4 * d..8 + 4 * d];
            u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
        })
        .collect())
}
