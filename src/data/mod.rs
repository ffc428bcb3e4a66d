//! Image datasets read in place: CIFAR-10/100 binary batches and IDX files (MNIST,
//! Fashion-MNIST), with the format found from the folder's contents.
//!
//! Images stay as the files hold them (u8, channel-major) in memory maps; a rank copies out
//! only the images of its own slice of each batch, so its memory does not grow with the data.

pub mod cifar;
pub mod idx;
pub mod shard;

use std::path::{Path, PathBuf};

use memmap2::Mmap;

/// A data problem: names the file and says what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("data folder {0} does not exist; pass --data a folder of CIFAR-10/100 *.bin batches or IDX files")]
    Missing(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}: found neither CIFAR-10 (data_batch_*.bin, test_batch.bin), CIFAR-100 (train.bin, test.bin) nor IDX files (*-images-idx3-ubyte[.gz] with *-labels-idx1-ubyte[.gz])")]
    UnknownFormat(PathBuf),
    #[error("{path}: {message}")]
    Malformed { path: PathBuf, message: String },
}

impl DataError {
    pub(crate) fn malformed(path: &Path, message: impl Into<String>) -> Self {
        DataError::Malformed {
            path: path.to_owned(),
            message: message.into(),
        }
    }
}

/// Where an image belongs: the training split is what the network trains on; both are mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

/// Bytes of a file: memory-mapped, or decompressed into memory for `.gz` files.
pub(crate) enum Bytes {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

impl Bytes {
    pub(crate) fn open(path: &Path) -> Result<Bytes, DataError> {
        let io = |source| DataError::Io {
            path: path.to_owned(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        if path.extension().is_some_and(|e| e == "gz") {
            use std::io::Read;
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(file)
                .read_to_end(&mut out)
                .map_err(|e| {
                    DataError::malformed(path, format!("not a readable gzip file ({e})"))
                })?;
            return Ok(Bytes::Owned(out));
        }
        // SAFETY: the map is read-only; a file changed under a running job is outside what we
        // can defend against, as for any reader of a memory-mapped data set.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        Ok(Bytes::Mapped(map))
    }
}

/// A run of fixed-size records in one file: `header` bytes, then records of `stride` bytes
/// whose image starts `image_offset` bytes in.
pub(crate) struct Part {
    pub bytes: Bytes,
    pub first: usize,
    pub count: usize,
    pub header: usize,
    pub stride: usize,
    pub image_offset: usize,
}

/// A labelled image collection: training images first, then test images.
pub struct Dataset {
    pub name: String,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub n_train: usize,
    pub n_test: usize,
    pub labels: Vec<i64>,
    pub class_names: Vec<String>,
    parts: Vec<Part>,
}

impl Dataset {
    /// Opens the data folder `path`, detecting the format from the file names.
    pub fn open(path: &Path) -> Result<Dataset, DataError> {
        if !path.is_dir() {
            return Err(DataError::Missing(path.to_owned()));
        }
        if let Some(ds) = cifar::open(path)? {
            return Ok(ds);
        }
        if let Some(ds) = idx::open(path)? {
            return Ok(ds);
        }
        Err(DataError::UnknownFormat(path.to_owned()))
    }

    pub(crate) fn from_parts(
        name: String,
        (channels, height, width): (usize, usize, usize),
        n_train: usize,
        labels: Vec<i64>,
        class_names: Vec<String>,
        parts: Vec<Part>,
    ) -> Dataset {
        let n_test = labels.len() - n_train;
        Dataset {
            name,
            channels,
            height,
            width,
            n_train,
            n_test,
            labels,
            class_names,
            parts,
        }
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    pub fn split(&self, index: usize) -> Split {
        if index < self.n_train {
            Split::Train
        } else {
            Split::Test
        }
    }

    /// Per-channel mean and standard deviation of the pixels (in [0, 1]) of the first `n` images.
    pub fn channel_stats(&self, n: usize) -> (Vec<f64>, Vec<f64>) {
        let plane = self.height * self.width;
        let mut sum = vec![0f64; self.channels];
        let mut sq = vec![0f64; self.channels];
        for i in 0..n {
            for (c, px) in self.image(i).chunks(plane).enumerate() {
                for &v in px {
                    let v = f64::from(v) / 255.0;
                    sum[c] += v;
                    sq[c] += v * v;
                }
            }
        }
        let count = (n * plane).max(1) as f64;
        let mean: Vec<f64> = sum.iter().map(|s| s / count).collect();
        let std = sq
            .iter()
            .zip(&mean)
            .map(|(q, m)| (q / count - m * m).max(1e-6).sqrt())
            .collect();
        (mean, std)
    }

    /// Image `index` (C×H×W bytes, channel-major).
    pub fn image(&self, index: usize) -> &[u8] {
        let part = self
            .parts
            .iter()
            .find(|p| index >= p.first && index < p.first + p.count)
            .unwrap_or_else(|| panic!("image {index} out of range")); // ok: indices come from 0..len
        let start = part.header + (index - part.first) * part.stride + part.image_offset;
        &part.bytes[start..start + self.image_len()]
    }

    /// The images at `indices` as one u8 N×C×H×W tensor on the CPU.
    pub fn gather(&self, indices: impl ExactSizeIterator<Item = usize>) -> tch::Tensor {
        let n = indices.len() as i64;
        let mut bytes = Vec::with_capacity(indices.len() * self.image_len());
        for i in indices {
            bytes.extend_from_slice(self.image(i));
        }
        let shape = [
            n,
            self.channels as i64,
            self.height as i64,
            self.width as i64,
        ];
        tch::Tensor::from_slice(&bytes).view(shape)
    }
}

/// Checks that a file holds `header + count × stride` bytes, naming what is missing.
pub(crate) fn check_size(
    path: &Path,
    len: usize,
    header: usize,
    stride: usize,
) -> Result<usize, DataError> {
    let body = len.checked_sub(header).ok_or_else(|| {
        DataError::malformed(
            path,
            format!("{len} bytes is shorter than its {header}-byte header; the file is truncated"),
        )
    })?;
    if body == 0 || body % stride != 0 {
        return Err(DataError::malformed(
            path,
            format!(
                "{len} bytes is not a whole number of {stride}-byte records (after a {header}-byte header); the file is truncated or of another format",
            ),
        ));
    }
    Ok(body / stride)
}
