//! The typed run configuration: TOML file, `--set key=value` overrides, validation, and the
//! resolved form saved beside the run's outputs.
//!
//! Every key has a default equal to the paper's recipe, so a config file only states what it
//! changes. Overrides are applied to the TOML document before it is typed, so `--set` accepts
//! exactly the keys and types the file does, and an unknown key or a wrong type is reported the
//! same way for both.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Bounds that keep a typo from reaching the allocator: a layer this wide, a batch this large
/// or this many neighbours is never meant.
const MAX_WIDTH: i64 = 1 << 16;
const MAX_BATCH: usize = 1 << 22;
pub const MAX_KNN_K: usize = 1000;
/// More torch threads than this is a typo (a node's cores are fewer).
const MAX_THREADS: usize = 1024;
/// Characters of a user's input quoted in an error line.
const QUOTE: usize = 120;

/// A configuration problem, reported before any work starts.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("--set {arg:?}: {message}")]
    Override { arg: String, message: String },
    #[error("config: {0}")]
    Invalid(String),
}

/// Which network maps an image to features.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backbone {
    /// The paper's ResNet-18 for 32×32 images (3×3 stride-1 stem, no max-pool), 512 features.
    Resnet18,
    /// Five 3×3 convolutions, 32–128 channels (≈0.3 M parameters), 128 features: CPU runs.
    Small,
    /// The same shape at half the width, 64 features.
    Tiny,
    /// Two hidden layers of 512 on the flattened pixels: small aligned grey images on a CPU.
    Mlp,
}

/// The normalisation layer inside the backbone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Norm {
    /// Batch norm over each rank's own images (the paper's choice; per-rank statistics make
    /// runs on different world sizes differ slightly).
    Batch,
    /// Group norm (8 groups): statistics per image, so the world size cannot change them.
    Group,
}

/// How the learning rate follows the global batch size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrRule {
    /// `lr × batch/256` (the paper's rule).
    Linear,
    /// `lr × sqrt(batch/256)`.
    Sqrt,
    /// `lr` as given.
    Fixed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Optimizer {
    Sgd,
    /// SGD with layer-wise trust ratios (You et al. 2017), for very large batches.
    Lars,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    Fp32,
    /// bfloat16 weights and activations in the network; loss and optimizer in float32.
    Bf16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// CUDA when a GPU is visible, else the CPU.
    Auto,
    Cpu,
    Cuda,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    pub backbone: Backbone,
    pub norm: Norm,
    pub hidden_dim: i64,
    /// Output size of stage 1 (pre-training).
    pub pretrain_dim: i64,
    /// Output size of stages 2 and 3: the map.
    pub map_dim: i64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            backbone: Backbone::Resnet18,
            norm: Norm::Batch,
            hidden_dim: 1024,
            pretrain_dim: 128,
            map_dim: 2,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    pub optimizer: Optimizer,
    /// Learning rate per 256 images of global batch (see `lr_rule`).
    pub lr: f64,
    pub lr_rule: LrRule,
    /// Each stage's learning rate as a fraction of the scaled `lr`.
    pub stage_lr_factor: [f64; 3],
    pub warmup_epochs: [usize; 3],
    pub momentum: f64,
    pub weight_decay: f64,
    /// Gradients are clamped to ±this after the all-reduce (0 turns clipping off).
    pub clip_value: f64,
    /// LARS trust coefficient.
    pub lars_eta: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            optimizer: Optimizer::Sgd,
            lr: 0.03,
            lr_rule: LrRule::Linear,
            stage_lr_factor: [1.0, 1.0, 0.001],
            warmup_epochs: [10, 0, 10],
            momentum: 0.9,
            weight_decay: 5e-4,
            clip_value: 4.0,
            lars_eta: 0.001,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentConfig {
    /// Area fraction of the random resized crop.
    pub crop_scale: [f64; 2],
    /// Aspect ratio range of the crop.
    pub crop_ratio: [f64; 2],
    pub flip_p: f64,
    /// Colour jitter strengths: brightness, contrast, saturation, hue.
    pub jitter: [f64; 4],
    pub jitter_p: f64,
    pub grayscale_p: f64,
    /// Neighbour positives (0: off, as in t-SimCNE): each image's second view is made from one
    /// of its this-many nearest training images in pixel space, drawn anew every epoch
    /// (src/neighbours.rs). Short CPU runs map far better with them (15 in configs/cpu.toml).
    pub neighbours: usize,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            crop_scale: [0.2, 1.0],
            crop_ratio: [3.0 / 4.0, 4.0 / 3.0],
            flip_p: 0.5,
            jitter: [0.4, 0.4, 0.4, 0.1],
            jitter_p: 0.8,
            grayscale_p: 0.2,
            neighbours: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub seed: u64,
    /// The global batch: images per step over all ranks together.
    pub batch_size: usize,
    /// Epochs of the three stages: pre-train, new map layer only, fine-tune all.
    pub epochs: [usize; 3],
    /// Stop after this many optimizer steps over the whole schedule (0: no limit).
    pub max_steps: u64,
    /// Use only the first this-many training images (0: all of them).
    pub train_limit: usize,
    /// Train on the test split's images too (never their labels), as the paper did; the kNN
    /// accuracy is still fitted on the training split and scored on the test split.
    pub train_on_test: bool,
    /// Checkpoint every this-many epochs (stage ends always checkpoint).
    pub checkpoint_every: usize,
    /// Torch threads per rank (0: this node's cores divided by its ranks).
    pub threads: usize,
    pub device: DeviceChoice,
    pub precision: Precision,
    /// Neighbours for the kNN accuracy of the map.
    pub knn_k: usize,
    /// Images per forward pass on a rank (0: the rank's whole share at once). Smaller passes
    /// bound the memory a global batch needs; each step then runs the network forward twice.
    pub micro_batch: usize,
    /// Split each step's time into data, compute, wait and communication in the step log.
    /// Costs a barrier before each collective and, on a GPU, a device synchronisation at each
    /// phase's end; off, a step's wall time alone is logged and nothing waits.
    pub phase_timing: bool,
    /// Seconds a collective may wait for the other ranks before this rank gives up (0: never).
    /// A rank or node that dies mid-step leaves the others waiting in a collective that never
    /// fails (MPI over TCP reports the lost peer and waits on), and their launcher with them.
    pub stall_timeout_s: f64,
    pub model: ModelConfig,
    pub optim: OptimConfig,
    pub augment: AugmentConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            seed: 0,
            batch_size: 1024,
            epochs: [1000, 50, 450],
            max_steps: 0,
            train_limit: 0,
            train_on_test: false,
            checkpoint_every: 10,
            threads: 0,
            device: DeviceChoice::Auto,
            precision: Precision::Fp32,
            knn_k: 15,
            micro_batch: 0,
            phase_timing: false,
            stall_timeout_s: 600.0,
            model: ModelConfig::default(),
            optim: OptimConfig::default(),
            augment: AugmentConfig::default(),
        }
    }
}

impl Config {
    /// Reads `path` (or the defaults when `None`), applies `overrides` (`key=value`, dotted keys,
    /// TOML values) and validates the result against `world_size`.
    pub fn load(
        path: Option<&Path>,
        overrides: &[String],
        world_size: usize,
    ) -> Result<Config, ConfigError> {
        let (text, origin) = match path {
            Some(p) => (
                std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_owned(),
                    source,
                })?,
                p.display().to_string(),
            ),
            None => (String::new(), "(defaults)".to_owned()),
        };
        let mut doc: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            origin: origin.clone(),
            message: one_line(&e.to_string()),
        })?;
        // A value that fails to type is blamed on the file only if the file alone fails.
        let file_types = toml::Value::Table(doc.clone()).try_into::<Config>().is_ok();
        let origin = match file_types && !overrides.is_empty() {
            true => format!("--set {}", quote(&overrides.join(" --set "))),
            false => origin,
        };
        for arg in overrides {
            apply_override(&mut doc, arg)?;
        }
        let config: Config = toml::Value::Table(doc)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse {
                origin,
                message: one_line(&e.to_string()),
            })?;
        config.validate(world_size)?;
        Ok(config)
    }

    /// The checks that need no data: every impossible value is named with the fix.
    pub fn validate(&self, world_size: usize) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.batch_size < 2 {
            return bad(format!(
                "batch_size = {} is too small: a contrastive step needs at least 2 images",
                self.batch_size
            ));
        }
        if self.batch_size > MAX_BATCH {
            return bad(format!(
                "batch_size = {} is beyond {MAX_BATCH} images per step; give a smaller global batch",
                self.batch_size
            ));
        }
        if self.batch_size % world_size != 0 {
            // The batch is part of the run: a resumed run keeps it, so the advice is about ranks.
            let fits: Vec<String> = (1..=world_size.max(8))
                .filter(|r| self.batch_size % r == 0)
                .map(|r| r.to_string())
                .collect();
            return bad(format!(
                "batch_size = {} (the global batch) is not divisible by the {world_size} ranks; \
                 launch {} ranks, or start a new run (another --out) with a multiple of {world_size}",
                self.batch_size,
                fits.join(", ")
            ));
        }
        if let Some(i) = self.epochs.iter().position(|&e| e == 0) {
            return bad(format!(
                "epochs[{i}] = 0: every stage needs at least one epoch (epochs = [pretrain, map layer, fine-tune])"
            ));
        }
        if !(self.stall_timeout_s.is_finite() && self.stall_timeout_s >= 0.0) {
            return bad(format!(
                "stall_timeout_s = {}: give seconds ≥ 0 (0: wait for the other ranks forever)",
                self.stall_timeout_s
            ));
        }
        if self.checkpoint_every == 0 {
            return bad("checkpoint_every = 0: give a number of epochs ≥ 1".into());
        }
        if !(1..=MAX_KNN_K).contains(&self.knn_k) {
            return bad(format!(
                "knn_k = {}: give a number of neighbours from 1 to {MAX_KNN_K}",
                self.knn_k
            ));
        }
        if self.threads > MAX_THREADS {
            return bad(format!(
                "threads = {}: give at most {MAX_THREADS} (0: this node's cores shared by its ranks)",
                self.threads
            ));
        }
        let m = &self.model;
        for (name, v, low) in [
            ("model.hidden_dim", m.hidden_dim, 1),
            ("model.pretrain_dim", m.pretrain_dim, 1),
            ("model.map_dim", m.map_dim, 2),
        ] {
            if !(low..=MAX_WIDTH).contains(&v) {
                return bad(format!(
                    "{name} = {v}: must be from {low} to {MAX_WIDTH} (a map has 2 dimensions or more)"
                ));
            }
        }
        let o = &self.optim;
        if !(o.lr.is_finite() && o.lr > 0.0) {
            return bad(format!("optim.lr = {}: must be a positive number", o.lr));
        }
        if o.stage_lr_factor
            .iter()
            .any(|f| !(f.is_finite() && *f >= 0.0))
        {
            return bad("optim.stage_lr_factor: factors must be ≥ 0".into());
        }
        for (i, (&w, &e)) in o.warmup_epochs.iter().zip(&self.epochs).enumerate() {
            if w > e {
                return bad(format!(
                    "optim.warmup_epochs[{i}] = {w} is longer than the stage's {e} epochs"
                ));
            }
        }
        if !(0.0..1.0).contains(&o.momentum) {
            return bad(format!(
                "optim.momentum = {}: must be in [0, 1)",
                o.momentum
            ));
        }
        if !(o.weight_decay >= 0.0 && o.clip_value >= 0.0 && o.lars_eta > 0.0) {
            return bad(
                "optim.weight_decay and optim.clip_value must be ≥ 0, optim.lars_eta > 0".into(),
            );
        }
        let a = &self.augment;
        if !(0.0 < a.crop_scale[0] && a.crop_scale[0] <= a.crop_scale[1] && a.crop_scale[1] <= 1.0)
        {
            return bad(format!(
                "augment.crop_scale = {:?}: need 0 < low ≤ high ≤ 1",
                a.crop_scale
            ));
        }
        if !(0.0 < a.crop_ratio[0] && a.crop_ratio[0] <= a.crop_ratio[1]) {
            return bad(format!(
                "augment.crop_ratio = {:?}: need 0 < low ≤ high",
                a.crop_ratio
            ));
        }
        for (name, p) in [
            ("augment.flip_p", a.flip_p),
            ("augment.jitter_p", a.jitter_p),
            ("augment.grayscale_p", a.grayscale_p),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return bad(format!("{name} = {p}: a probability must be in [0, 1]"));
            }
        }
        if a.neighbours > MAX_KNN_K {
            return bad(format!(
                "augment.neighbours = {}: give at most {MAX_KNN_K} (0: the two views are of the same image)",
                a.neighbours
            ));
        }
        if a.jitter[..3].iter().any(|s| !(0.0..=1.0).contains(s))
            || !(0.0..=0.5).contains(&a.jitter[3])
        {
            return bad(format!(
                "augment.jitter = {:?}: brightness, contrast, saturation in [0, 1], hue in [0, 0.5]",
                a.jitter
            ));
        }
        Ok(())
    }

    /// The checks that need the data: images of `shape` (channels, height, width) that the
    /// backbone can take, and enough training images (`n_train` in the data's training split)
    /// for `knn_k` neighbours.
    pub fn validate_data(&self, shape: [usize; 3], n_train: usize) -> Result<(), ConfigError> {
        let [_, h, w] = shape;
        let pooled = matches!(self.model.backbone, Backbone::Tiny | Backbone::Small);
        if pooled && (h < 4 || w < 4) {
            let name = serde_json::to_value(self.model.backbone).unwrap_or_default();
            return Err(ConfigError::Invalid(format!(
                "model.backbone = {name} halves the images twice (2×2 max-pools) and needs at least 4×4 pixels; these are {h}×{w}: use model.backbone = \"mlp\""
            )));
        }
        if self.knn_k >= n_train.max(1) {
            return Err(ConfigError::Invalid(format!(
                "knn_k = {} needs more than that many training images to score the map against; the data has {n_train}: lower knn_k",
                self.knn_k
            )));
        }
        Ok(())
    }

    /// The scaled learning rate of `stage` (0-based) before warm-up and decay.
    pub fn stage_lr(&self, stage: usize) -> f64 {
        let ratio = self.batch_size as f64 / 256.0;
        let scale = match self.optim.lr_rule {
            LrRule::Linear => ratio,
            LrRule::Sqrt => ratio.sqrt(),
            LrRule::Fixed => 1.0,
        };
        self.optim.lr * scale * self.optim.stage_lr_factor[stage]
    }

    /// The config as TOML, with the learning rate each stage starts from after warm-up, as
    /// comments a reader can check the rule against.
    pub fn to_resolved_toml(&self) -> String {
        let body = toml::to_string_pretty(self).unwrap_or_default();
        let lrs: Vec<String> = (0..3)
            .map(|s| format!("{:.6e}", self.stage_lr(s)))
            .collect();
        format!(
            "# Resolved configuration of this run (defaults filled in, --set applied).\n\
             # Peak learning rate per stage under lr_rule = {:?}: [{}]\n\n{body}",
            self.optim.lr_rule,
            lrs.join(", ")
        )
    }
}

/// `a.b.c=value` into the document: the value is parsed as TOML, and a bare word that is not
/// valid TOML is taken as a string (so `--set model.backbone=small` works unquoted).
fn apply_override(doc: &mut toml::Table, arg: &str) -> Result<(), ConfigError> {
    let err = |message: String| ConfigError::Override {
        arg: quote(arg),
        message,
    };
    let (key, raw) = arg
        .split_once('=')
        .ok_or_else(|| err("expected key=value, e.g. --set batch_size=512".into()))?;
    let path: Vec<&str> = key.trim().split('.').collect();
    if path.iter().any(|p| p.is_empty()) {
        return Err(err(format!("{key:?} is not a key")));
    }
    let raw = raw.trim();
    let value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t.remove("v").unwrap_or(toml::Value::String(raw.to_owned())),
        Err(_)
            if raw
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-".contains(c)) =>
        {
            toml::Value::String(raw.to_owned())
        }
        Err(e) => {
            return Err(err(format!(
                "value is not TOML: {}",
                one_line(&e.to_string())
            )))
        }
    };
    let (last, parents) = path.split_last().ok_or_else(|| err("empty key".into()))?;
    let mut table = doc;
    for p in parents {
        let entry = table
            .entry((*p).to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry
            .as_table_mut()
            .ok_or_else(|| err(format!("{p:?} is not a table")))?;
    }
    table.insert((*last).to_owned(), value);
    Ok(())
}

/// toml's messages span several lines with a source excerpt; the CLI prints one line, and
/// quotes at most [`QUOTE`] characters of it.
fn one_line(s: &str) -> String {
    quote(&s.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// `s` cut to [`QUOTE`] characters (marked with …).
pub fn quote(s: &str) -> String {
    match s.char_indices().nth(QUOTE) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_reach_nested_keys_and_types_are_checked() {
        let c = Config::load(
            None,
            &[
                "model.backbone=small".into(),
                "epochs=[20,1,30]".into(),
                "batch_size=64".into(),
            ],
            4,
        )
        .unwrap();
        assert_eq!(c.model.backbone, Backbone::Small);
        assert_eq!(c.epochs, [20, 1, 30]);
        assert!(Config::load(None, &["batch_size=\"x\"".into()], 1).is_err());
        assert!(Config::load(None, &["no_such_key=1".into()], 1).is_err());
        assert!(Config::load(None, &["batch_size=66".into()], 4).is_err());
    }

    #[test]
    fn lr_rules_scale_with_the_batch() {
        let mut c = Config {
            batch_size: 1024,
            ..Config::default()
        };
        assert!((c.stage_lr(0) - 0.12).abs() < 1e-12);
        assert!((c.stage_lr(2) - 0.12e-3).abs() < 1e-15);
        c.optim.lr_rule = LrRule::Sqrt;
        assert!((c.stage_lr(0) - 0.06).abs() < 1e-12);
        c.optim.lr_rule = LrRule::Fixed;
        assert!((c.stage_lr(1) - 0.03).abs() < 1e-12);
        assert!(c.to_resolved_toml().contains("lr_rule = \"fixed\""));
    }
}
