//! Image datasets read in place: CIFAR-10/100 binary batches and IDX files (MNIST,
//! Fashion-MNIST), with the format found from the folder's contents.
//!
//! Images stay as the files hold them (u8, channel-major) in memory maps; a rank copies out
//! only the images of its own slice of each batch, so its memory does not grow with the data.

pub mod cifar;
pub mod idx;
pub mod shard;

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use memmap2::Mmap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

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
    #[error("--data {0} is a file; pass the folder that holds the data files")]
    NotAFolder(PathBuf),
    #[error("--data {path} is a link to {target}, which does not exist")]
    DanglingLink { path: PathBuf, target: PathBuf },
    #[error("{0} changed while the run was using it (its size or modification time); the run stops here and resumes from its last checkpoint once the data is back as it was")]
    Changed(PathBuf),
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
    Mapped {
        map: Mmap,
        path: PathBuf,
        stamp: Stamp,
    },
    Owned(Vec<u8>),
}

/// A file's size and modification time when it was mapped: if they change, the map may no
/// longer hold what was read (or reading it may fault).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
}

impl Stamp {
    fn of(path: &Path) -> std::io::Result<Stamp> {
        let meta = std::fs::metadata(path)?;
        Ok(Stamp {
            len: meta.len(),
            modified: meta.modified().ok(),
        })
    }
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped { map, .. } => map,
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
        let stamp = Stamp::of(path).map_err(io)?;
        // SAFETY: the map is read-only. A file changed under a running job could change or cut
        // what the map shows; `Dataset::check_unchanged` looks for that at every epoch end and
        // before the final embedding (README: what is not protected).
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        Ok(Bytes::Mapped {
            map,
            path: path.to_owned(),
            stamp,
        })
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
            if let Ok(target) = std::fs::read_link(path) {
                if !path.exists() {
                    let path = path.to_owned();
                    return Err(DataError::DanglingLink { path, target });
                }
            }
            if path.exists() {
                return Err(DataError::NotAFolder(path.to_owned()));
            }
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

    /// What identifies the data a run trains on, checked when a run resumes: format, images per
    /// split, image shape, and a digest of every label and of 64 images spread over the set.
    pub fn fingerprint(&self) -> Fingerprint {
        let mut hash = Sha256::new();
        for label in &self.labels {
            hash.update(label.to_le_bytes());
        }
        let n = self.len();
        for k in 0..SAMPLED.min(n) {
            hash.update(self.image(k * n / SAMPLED.min(n)));
        }
        Fingerprint {
            format: self.name.clone(),
            train: self.n_train,
            test: self.n_test,
            shape: [self.channels, self.height, self.width],
            digest: hex(&hash.finalize()[..16]),
        }
    }

    /// Fails if a data file changed since it was opened (a change while the run uses it).
    pub fn check_unchanged(&self) -> Result<(), DataError> {
        for part in &self.parts {
            if let Bytes::Mapped { path, stamp, .. } = &part.bytes {
                if Stamp::of(path).ok().as_ref() != Some(stamp) {
                    return Err(DataError::Changed(path.clone()));
                }
            }
        }
        Ok(())
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

/// Images whose bytes enter the data's digest.
const SAMPLED: usize = 64;

/// What identifies a data folder's contents (see [`Dataset::fingerprint`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub format: String,
    pub train: usize,
    pub test: usize,
    /// Channels, height, width.
    pub shape: [usize; 3],
    pub digest: String,
}

impl Fingerprint {
    /// How `now` differs from `self`, in words; `None` if it does not.
    pub fn difference(&self, now: &Fingerprint) -> Option<String> {
        let both = |what: &str, a: String, b: String| format!("{what}: {a} then, {b} now");
        if self.format != now.format {
            return Some(both("format", self.format.clone(), now.format.clone()));
        }
        if (self.train, self.test) != (now.train, now.test) {
            let split = |f: &Fingerprint| format!("{} training + {} test images", f.train, f.test);
            return Some(both("size", split(self), split(now)));
        }
        if self.shape != now.shape {
            let s = |f: &Fingerprint| format!("{}×{}×{}", f.shape[0], f.shape[1], f.shape[2]);
            return Some(both("image shape", s(self), s(now)));
        }
        (self.digest != now.digest)
            .then(|| "the same size and shape, other images or labels".into())
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
    if body == 0 {
        return Err(DataError::malformed(
            path,
            "holds no images (only its header); it is empty or cut short",
        ));
    }
    if body % stride != 0 {
        return Err(DataError::malformed(
            path,
            format!(
                "{len} bytes is not a whole number of {stride}-byte records (after a {header}-byte header); the file is truncated or of another format",
            ),
        ));
    }
    Ok(body / stride)
}
