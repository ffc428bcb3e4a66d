//! The networks: a backbone from images to features, and the projection head.
//!
//! The head is Linear(features→hidden) → ReLU → readout. Two readouts live in the same
//! VarStore from the start — 128-D for pre-training (`pretrain_out`) and 2-D for the map
//! (`map_out`) — so the stage-2 "swap" is a choice of readout, and one checkpoint holds the
//! whole model at every stage. ResNet-18 as in the paper: 3×3 stride-1 stem, no max-pool.

use tch::nn::{self, Module, ModuleT};
use tch::Tensor;

use crate::config::{Backbone, ModelConfig, Norm};

/// A normalisation layer of either kind behind one `ModuleT`.
#[derive(Debug)]
enum NormLayer {
    Batch(nn::BatchNorm),
    Group(nn::GroupNorm),
}

impl ModuleT for NormLayer {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        match self {
            NormLayer::Batch(b) => b.forward_t(xs, train),
            NormLayer::Group(g) => g.forward(xs),
        }
    }
}

/// Groups of group norm: 8 divides every width used here.
const GROUPS: i64 = 8;

fn norm_layer(p: nn::Path, channels: i64, norm: Norm, dims: usize) -> NormLayer {
    match (norm, dims) {
        (Norm::Batch, 1) => NormLayer::Batch(nn::batch_norm1d(p, channels, Default::default())),
        (Norm::Batch, _) => NormLayer::Batch(nn::batch_norm2d(p, channels, Default::default())),
        (Norm::Group, _) => {
            NormLayer::Group(nn::group_norm(p, GROUPS, channels, Default::default()))
        }
    }
}

fn conv(p: nn::Path, c_in: i64, c_out: i64, k: i64, stride: i64) -> nn::Conv2D {
    let cfg = nn::ConvConfig {
        stride,
        padding: k / 2,
        bias: false,
        ..Default::default()
    };
    nn::conv2d(p, c_in, c_out, k, cfg)
}

/// Convolution then normalisation (no activation).
fn conv_norm(
    p: &nn::Path,
    c_in: i64,
    c_out: i64,
    k: i64,
    stride: i64,
    norm: Norm,
) -> nn::SequentialT {
    nn::seq_t()
        .add(conv(p / "conv", c_in, c_out, k, stride))
        .add(norm_layer(p / "norm", c_out, norm, 2))
}

/// ResNet's basic block: two 3×3 convolutions and a shortcut (1×1 where the shape changes).
fn basic_block(p: &nn::Path, c_in: i64, c_out: i64, stride: i64, norm: Norm) -> nn::FuncT<'static> {
    let first = conv_norm(&(p / "a"), c_in, c_out, 3, stride, norm);
    let second = conv_norm(&(p / "b"), c_out, c_out, 3, 1, norm);
    let shortcut = (stride != 1 || c_in != c_out)
        .then(|| conv_norm(&(p / "down"), c_in, c_out, 1, stride, norm));
    nn::func_t(move |xs, train| {
        let ys = first.forward_t(xs, train).relu();
        let ys = second.forward_t(&ys, train);
        let skip = match &shortcut {
            Some(s) => s.forward_t(xs, train),
            None => xs.shallow_clone(),
        };
        (ys + skip).relu()
    })
}

/// The paper's ResNet-18 for 32×32 images: 512 features.
fn resnet18(p: &nn::Path, channels: i64, norm: Norm) -> nn::SequentialT {
    let mut seq = nn::seq_t()
        .add(conv_norm(&(p / "stem"), channels, 64, 3, 1, norm))
        .add_fn(|x| x.relu());
    let mut c_in = 64;
    for (i, (c_out, stride)) in [(64, 1), (128, 2), (256, 2), (512, 2)]
        .into_iter()
        .enumerate()
    {
        let layer = p / format!("layer{}", i + 1);
        seq = seq
            .add(basic_block(&(&layer / "0"), c_in, c_out, stride, norm))
            .add(basic_block(&(&layer / "1"), c_out, c_out, 1, norm));
        c_in = c_out;
    }
    seq.add_fn(|x| x.adaptive_avg_pool2d([1, 1]).flatten(1, -1))
}

/// Five 3×3 convolutions with two 2×2 max-pools, `4·width` features: a CPU-sized CNN.
fn small_cnn(p: &nn::Path, channels: i64, width: i64, norm: Norm) -> nn::SequentialT {
    let widths = [
        (channels, width),
        (width, width),
        (width, 2 * width),
        (2 * width, 2 * width),
        (2 * width, 4 * width),
    ];
    let mut seq = nn::seq_t();
    for (i, (c_in, c_out)) in widths.into_iter().enumerate() {
        seq = seq
            .add(conv_norm(
                &(p / format!("conv{i}")),
                c_in,
                c_out,
                3,
                1,
                norm,
            ))
            .add_fn(|x| x.relu());
        if i == 1 || i == 3 {
            seq = seq.add_fn(|x| x.max_pool2d_default(2));
        }
    }
    seq.add_fn(|x| x.adaptive_avg_pool2d([1, 1]).flatten(1, -1))
}

/// Two hidden layers of `width` on the flattened pixels.
fn pixel_mlp(p: &nn::Path, inputs: i64, width: i64, norm: Norm) -> nn::SequentialT {
    nn::seq_t()
        .add_fn(|x| x.flatten(1, -1))
        .add(nn::linear(p / "fc0", inputs, width, Default::default()))
        .add(norm_layer(p / "norm0", width, norm, 1))
        .add_fn(|x| x.relu())
        .add(nn::linear(p / "fc1", width, width, Default::default()))
        .add(norm_layer(p / "norm1", width, norm, 1))
        .add_fn(|x| x.relu())
}

/// Which readout a forward pass ends with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readout {
    /// `pretrain_dim` outputs (stage 1).
    Pretrain,
    /// `map_dim` outputs (stages 2 and 3).
    Map,
}

/// Backbone + head with both readouts.
#[derive(Debug)]
pub struct Network {
    backbone: nn::SequentialT,
    hidden: nn::Linear,
    pretrain_out: nn::Linear,
    map_out: nn::Linear,
}

/// VarStore prefixes, used to choose what each stage trains.
pub const BACKBONE: &str = "backbone";
pub const HIDDEN: &str = "hidden";
pub const PRETRAIN_OUT: &str = "pretrain_out";
pub const MAP_OUT: &str = "map_out";

impl Network {
    /// Builds the network for images of `channels × size × size` under `root`.
    pub fn new(root: &nn::Path, cfg: &ModelConfig, channels: i64, size: (i64, i64)) -> Network {
        let b = root / BACKBONE;
        let (backbone, features) = match cfg.backbone {
            Backbone::Resnet18 => (resnet18(&b, channels, cfg.norm), 512),
            Backbone::Small => (small_cnn(&b, channels, 32, cfg.norm), 128),
            Backbone::Tiny => (small_cnn(&b, channels, 16, cfg.norm), 64),
            Backbone::Mlp => (
                pixel_mlp(&b, channels * size.0 * size.1, 512, cfg.norm),
                512,
            ),
        };
        let linear = |name: &str, i, o| nn::linear(root / name, i, o, Default::default());
        Network {
            backbone,
            hidden: linear(HIDDEN, features, cfg.hidden_dim),
            pretrain_out: linear(PRETRAIN_OUT, cfg.hidden_dim, cfg.pretrain_dim),
            map_out: linear(MAP_OUT, cfg.hidden_dim, cfg.map_dim),
        }
    }

    /// The head's hidden layer (after its ReLU).
    pub fn trunk(&self, images: &Tensor, train: bool) -> Tensor {
        self.hidden
            .forward(&self.backbone.forward_t(images, train))
            .relu()
    }

    /// The readout applied to the trunk's output.
    pub fn readout(&self, hidden: &Tensor, readout: Readout) -> Tensor {
        match readout {
            Readout::Pretrain => self.pretrain_out.forward(hidden),
            Readout::Map => self.map_out.forward(hidden),
        }
    }

    pub fn forward(&self, images: &Tensor, readout: Readout, train: bool) -> Tensor {
        self.readout(&self.trunk(images, train), readout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;
    use tch::{Device, Kind};

    fn params(cfg: &ModelConfig, c: i64) -> i64 {
        let vs = nn::VarStore::new(Device::Cpu);
        let net = Network::new(&vs.root(), cfg, c, (32, 32));
        let x = Tensor::rand([2, c, 32, 32], (Kind::Float, Device::Cpu));
        assert_eq!(
            net.forward(&x, Readout::Pretrain, true).size(),
            [2, cfg.pretrain_dim]
        );
        assert_eq!(
            net.forward(&x, Readout::Map, false).size(),
            [2, cfg.map_dim]
        );
        vs.trainable_variables()
            .iter()
            .map(|t| t.numel() as i64)
            .sum()
    }

    #[test]
    fn resnet18_has_the_papers_size() {
        let cfg = ModelConfig::default();
        let n = params(&cfg, 3);
        // 11.17 M in the backbone, 512·1024 + 1024 hidden, 1024·128 + 128 and 1024·2 + 2 readouts.
        let backbone = n - (512 * 1024 + 1024) - (1024 * 128 + 128) - (1024 * 2 + 2);
        assert!((11_160_000..11_180_000).contains(&backbone), "{backbone}");
        for backbone in [Backbone::Small, Backbone::Tiny, Backbone::Mlp] {
            for norm in [Norm::Batch, Norm::Group] {
                assert!(
                    params(
                        &ModelConfig {
                            backbone,
                            norm,
                            ..cfg.clone()
                        },
                        1
                    ) > 0
                );
            }
        }
    }
}
