//! The network's passes over a rank's views: forward to the projections z, and backward from
//! the gradient of the loss with respect to z into the flat gradient buffer.
//!
//! With `micro_batch` set, both passes go over `micro_batch` images (twice as many views) at a
//! time, so that a global batch is not bounded by what a device holds at once (gradient
//! caching): the forward pass keeps no graph; after the loss, each micro-batch runs again with
//! its graph and is backpropagated from its rows of dL/dz. The views are the same on both
//! passes (they are made once per step). Batch norm then normalises by each micro-batch's
//! statistics, and its running statistics are updated once per step (by the second pass); with
//! group norm the step is the same as without micro-batches, up to rounding.

use tch::{Kind, Tensor};

use super::Trainer;
use crate::config::Precision;
use crate::precision;
use crate::schedule::StagePlan;

impl Trainer<'_> {
    /// The projections of `views` (2b rows: b first views, then b second views), with the graph
    /// back to the trained variables unless the passes are micro-batched.
    pub(super) fn project(&self, views: &Tensor, plan: StagePlan) -> Tensor {
        let micro = self.cfg.micro_batch as i64;
        if micro == 0 {
            return self.forward(views, plan);
        }
        let b = views.size()[0] / 2;
        let kept = self.running_statistics();
        let parts: Vec<Tensor> = tch::no_grad(|| {
            chunks(b, micro)
                .map(|c| self.forward(&pair_rows(views, b, c), plan))
                .collect()
        });
        self.restore(&kept);
        // Back into the layout of the whole batch: every part's first views, then its second.
        let half = |part: &Tensor, second: i64| {
            let len = part.size()[0] / 2;
            part.narrow(0, second * len, len)
        };
        let rows: Vec<Tensor> = (0..2)
            .flat_map(|second| parts.iter().map(move |p| half(p, second)))
            .collect();
        Tensor::cat(&rows, 0)
    }

    /// Backpropagates `grad` (dL/dz for the rows of `z`) into the trained variables' gradients.
    pub(super) fn backpropagate(&self, views: &Tensor, z: &Tensor, grad: &Tensor, plan: StagePlan) {
        let micro = self.cfg.micro_batch as i64;
        if micro == 0 {
            return (z * grad).sum(Kind::Float).backward();
        }
        let b = views.size()[0] / 2;
        for c in chunks(b, micro) {
            let part = self.forward(&pair_rows(views, b, c), plan);
            (part * pair_rows(grad, b, c)).sum(Kind::Float).backward();
        }
    }

    /// Views → projections, training only what the stage trains.
    fn forward(&self, views: &Tensor, plan: StagePlan) -> Tensor {
        let hidden = match plan.trains_trunk {
            true => self.trunk(views, true),
            false => tch::no_grad(|| self.trunk(views, true)),
        };
        self.net.readout(&hidden, plan.readout)
    }

    /// The network up to the readout, under bf16 autocast if the config asks for it; the
    /// readout after it always runs in f32 (bf16's steps at the map's scale are as large as
    /// the distances between neighbours).
    pub(super) fn trunk(&self, images: &Tensor, train: bool) -> Tensor {
        let hidden = match self.cfg.precision {
            Precision::Fp32 => self.net.trunk(images, train),
            Precision::Bf16 => precision::bf16(self.device, || self.net.trunk(images, train)),
        };
        hidden.to_kind(Kind::Float)
    }

    /// Copies of the variables that are not trained (batch norm's running statistics).
    fn running_statistics(&self) -> Vec<(Tensor, Tensor)> {
        self.vs
            .variables()
            .into_values()
            .filter(|t| !t.requires_grad())
            .map(|t| (t.copy(), t))
            .collect()
    }

    fn restore(&self, kept: &[(Tensor, Tensor)]) {
        let _guard = tch::no_grad_guard();
        for (saved, live) in kept {
            live.shallow_clone().copy_(saved);
        }
    }
}

/// (first image, images) of each micro-batch of `b` images.
fn chunks(b: i64, micro: i64) -> impl Iterator<Item = (i64, i64)> {
    (0..b)
        .step_by(micro as usize)
        .map(move |start| (start, micro.min(b - start)))
}

/// The rows of images `start..start + len` in both halves of `t` (2b rows): their first views,
/// then their second views.
fn pair_rows(t: &Tensor, b: i64, (start, len): (i64, i64)) -> Tensor {
    Tensor::cat(&[t.narrow(0, start, len), t.narrow(0, b + start, len)], 0)
}
