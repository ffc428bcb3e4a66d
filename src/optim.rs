//! The trained variables, their gradients and their momentum as three flat buffers, and the
//! update rules over them: SGD with momentum and weight decay (PyTorch's semantics) and LARS.
//!
//! Every trainable variable is a view into one flat parameter buffer, and its `.grad` a view
//! into one flat gradient buffer of the same layout: the backward pass accumulates straight
//! into the buffer that is all-reduced, and clipping and the update are a handful of ops on one
//! span of the buffers, whatever the number of tensors. The caller orders the variables so that
//! what each stage trains is one span ([`FlatParams::span`], resolved once per stage). Two
//! slots after the gradients carry the step's loss and stop flag through the same all-reduce.
//!
//! Hand-written because tch's optimizers keep their momentum inside libtorch where a checkpoint
//! cannot reach it; an exact resume needs it.

use tch::{nn, Kind, Tensor};

use crate::config::{OptimConfig, Optimizer};

/// Slots after the gradients: the loss and the stop flag.
const TAIL: i64 = 2;

/// One variable's place in the buffers.
#[derive(Debug)]
struct Entry {
    name: String,
    offset: i64,
    shape: Vec<i64>,
}

impl Entry {
    fn numel(&self) -> i64 {
        self.shape.iter().product()
    }
}

/// The variables one stage trains: a run of entries, contiguous in the buffers.
#[derive(Debug)]
pub struct Span {
    offset: i64,
    len: i64,
    /// For LARS: each entry's length, and whether it is a matrix or kernel (biases and norm
    /// parameters take plain SGD), on the device.
    lengths: Tensor,
    matrix: Tensor,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "the variables a stage trains are not contiguous in the parameter layout ({0} is out of place)"
)]
pub struct LayoutError(String);

#[derive(Debug)]
pub struct FlatParams {
    entries: Vec<Entry>,
    params: Tensor,
    /// Gradients, then the loss and stop-flag slots.
    grads: Tensor,
    momentum: Tensor,
}

impl FlatParams {
    /// Moves every trainable variable of `vs` into the flat buffers, ordered by `group` (then by
    /// name, so every rank has the same layout), and points the variables and their gradients
    /// at their places.
    pub fn new(vs: &nn::VarStore, group: impl Fn(&str) -> u8) -> FlatParams {
        let mut vars: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        vars.sort_by(|a, b| (group(&a.0), &a.0).cmp(&(group(&b.0), &b.0)));
        let mut entries = Vec::with_capacity(vars.len());
        let mut offset = 0;
        for (name, t) in &vars {
            entries.push(Entry {
                name: name.clone(),
                offset,
                shape: t.size(),
            });
            offset += t.numel() as i64;
        }
        let options = (Kind::Float, vs.device());
        let flat = FlatParams {
            params: Tensor::zeros([offset], options),
            grads: Tensor::zeros([offset + TAIL], options),
            momentum: Tensor::zeros([offset], options),
            entries,
        };
        // A zero backward gives every variable a gradient tensor to re-point.
        let touch = vars
            .iter()
            .map(|(_, t)| t.sum(Kind::Float))
            .fold(Tensor::zeros([], options), |a, b| a + b);
        (touch * 0.0).backward();
        let _guard = tch::no_grad_guard();
        for ((_, var), entry) in vars.iter().zip(&flat.entries) {
            let place = flat.view(&flat.params, entry);
            place.shallow_clone().copy_(var);
            var.shallow_clone().set_data(&place);
            var.grad().set_data(&flat.view(&flat.grads, entry));
        }
        flat
    }

    fn view(&self, buffer: &Tensor, e: &Entry) -> Tensor {
        buffer.narrow(0, e.offset, e.numel()).view(&e.shape[..])
    }

    /// The span of the variables for which `trained` is true; an error if they are not
    /// contiguous in the layout.
    pub fn span(&self, trained: impl Fn(&str) -> bool) -> Result<Span, LayoutError> {
        let marks: Vec<bool> = self.entries.iter().map(|e| trained(&e.name)).collect();
        let first = marks.iter().position(|&m| m).unwrap_or(0);
        let end = marks.iter().rposition(|&m| m).map_or(first, |i| i + 1);
        if let Some(i) = (first..end).find(|&i| !marks[i]) {
            return Err(LayoutError(self.entries[i].name.clone()));
        }
        let picked = &self.entries[first..end];
        let device = self.params.device();
        let lengths: Vec<i64> = picked.iter().map(Entry::numel).collect();
        let matrix: Vec<bool> = picked.iter().map(|e| e.shape.len() > 1).collect();
        Ok(Span {
            offset: picked.first().map_or(0, |e| e.offset),
            len: lengths.iter().sum(),
            lengths: Tensor::from_slice(&lengths).to(device),
            matrix: Tensor::from_slice(&matrix).to(device),
        })
    }

    /// Sets every gradient to zero before a backward pass.
    pub fn zero_grads(&mut self) {
        let _ = self.grads.zero_();
    }

    /// The part of the gradient buffer a step all-reduces for `span`: its gradients up to the
    /// end of the buffer, with the loss and stop-flag slots. (Gradients after the span, of
    /// variables the stage does not train, are zero and ride along.)
    pub fn reduced(&self, span: &Span) -> Tensor {
        let len = self.grads.size()[0] - span.offset;
        self.grads.narrow(0, span.offset, len)
    }

    /// The loss and stop-flag slots.
    pub fn tail(&self) -> Tensor {
        self.grads.narrow(0, self.grads.size()[0] - TAIL, TAIL)
    }

    /// Writes this rank's part of the loss and its stop request into their slots, to be summed
    /// over ranks with the gradients.
    pub fn set_tail(&mut self, loss: &Tensor, stop: bool) {
        let tail = self.tail();
        let _guard = tch::no_grad_guard();
        tail.narrow(0, 0, 1).copy_(&loss.detach().view([1]));
        let _ = tail.narrow(0, 1, 1).fill_(f64::from(u8::from(stop)));
    }

    /// One update of the span's variables with the (reduced) gradients in the buffer, at
    /// learning rate `lr`; gradients are clamped to ±`clip_value` first (0: no clipping).
    ///
    /// SGD: `d = g + wd·p; b = m·b + d; p −= lr·b` (a buffer that starts at zero takes `d` on its
    /// first step, as PyTorch's). LARS scales `d` of matrices and kernels by the trust ratio
    /// `η·‖p‖ / (‖g‖ + wd·‖p‖)` before it enters the buffer.
    pub fn step(&mut self, cfg: &OptimConfig, lr: f64, span: &Span) {
        let _guard = tch::no_grad_guard();
        let p = self.params.narrow(0, span.offset, span.len);
        let mut d = self.grads.narrow(0, span.offset, span.len);
        let mut b = self.momentum.narrow(0, span.offset, span.len);
        if cfg.clip_value > 0.0 {
            let _ = d.clamp_(-cfg.clip_value, cfg.clip_value);
        }
        if cfg.optimizer == Optimizer::Lars {
            let trust = trust_ratios(&p, &d, span, cfg);
            let _ = d.g_add_(&(&p * cfg.weight_decay));
            let _ = d.g_mul_(&trust);
        } else {
            let _ = d.g_add_(&(&p * cfg.weight_decay));
        }
        let _ = b.g_mul_scalar_(cfg.momentum);
        let _ = b.g_add_(&d);
        let _ = p.shallow_clone().g_sub_(&(&b * lr));
    }

    /// The momentum buffer of every variable, by name (views: writing them restores it).
    pub fn momentum(&self) -> Vec<(String, Tensor)> {
        self.entries
            .iter()
            .map(|e| (e.name.clone(), self.view(&self.momentum, e)))
            .collect()
    }

    /// Whether every parameter is finite (checked before a checkpoint is written).
    pub fn all_finite(&self) -> bool {
        bool::try_from(self.params.isfinite().all()).unwrap_or(false)
    }
}

/// Per element of the span: LARS's trust ratio of its variable (1 for biases and norm
/// parameters, and where a norm is zero).
fn trust_ratios(p: &Tensor, g: &Tensor, span: &Span, cfg: &OptimConfig) -> Tensor {
    let norms = |x: &Tensor| {
        Tensor::segment_reduce(
            &x.square(),
            "sum",
            Some(&span.lengths),
            None::<&Tensor>,
            None::<&Tensor>,
            0,
            false,
            0.0,
        )
        .sqrt()
    };
    let (pn, gn) = (norms(p), norms(g));
    let denom = &gn + &pn * cfg.weight_decay;
    let usable = span
        .matrix
        .logical_and(&pn.gt(0.0))
        .logical_and(&denom.gt(0.0));
    let ratio = (pn * cfg.lars_eta / denom).where_scalarother(&usable, 1.0);
    ratio.repeat_interleave_self_tensor(&span.lengths, 0, Some(span.len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OptimConfig;
    use tch::Device;

    fn values(t: &Tensor) -> Vec<f64> {
        Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
    }

    /// A store with a 2×2 matrix `a.w` and a bias `b.b` of the given values.
    fn store(w: [f32; 4], bias: f32) -> nn::VarStore {
        let vs = nn::VarStore::new(Device::Cpu);
        let root = vs.root();
        let _ = root
            .sub("a")
            .var_copy("w", &Tensor::from_slice(&w).view([2, 2]));
        let _ = root.sub("b").var_copy("b", &Tensor::from_slice(&[bias]));
        vs
    }

    fn var(vs: &nn::VarStore, name: &str) -> Tensor {
        vs.variables()[name].shallow_clone()
    }

    /// Sets the gradients as a backward pass would: through the variables' `.grad`.
    fn set_grads(vs: &nn::VarStore, w: [f32; 4], bias: f32) {
        let loss = (var(vs, "a.w") * Tensor::from_slice(&w).view([2, 2])).sum(Kind::Float)
            + var(vs, "b.b") * f64::from(bias);
        loss.sum(Kind::Float).backward();
    }

    #[test]
    fn variables_and_gradients_live_in_the_flat_buffers() {
        let vs = store([1.0, 2.0, 3.0, 4.0], 5.0);
        let mut flat = FlatParams::new(&vs, |name| u8::from(name.starts_with('a')));
        // The bias sorts first (group 0), then the matrix.
        assert_eq!(values(&flat.params), [5.0, 1.0, 2.0, 3.0, 4.0]);
        flat.zero_grads();
        set_grads(&vs, [0.5, 0.5, 0.5, 0.5], 2.0);
        assert_eq!(values(&flat.grads), [2.0, 0.5, 0.5, 0.5, 0.5, 0.0, 0.0]);
        let span = flat.span(|n| n.starts_with('a')).unwrap();
        assert_eq!(values(&flat.reduced(&span)).len(), 4 + 2);
        assert!(flat.span(|n| n != "b.b" && n != "a.w").is_ok(), "empty");
        flat.step(
            &OptimConfig {
                momentum: 0.0,
                weight_decay: 0.0,
                clip_value: 0.0,
                ..OptimConfig::default()
            },
            1.0,
            &span,
        );
        assert_eq!(values(&var(&vs, "a.w")), [0.5, 1.5, 2.5, 3.5]);
        assert_eq!(values(&var(&vs, "b.b")), [5.0], "outside the span");
    }

    #[test]
    fn a_span_must_be_contiguous() {
        let vs = nn::VarStore::new(Device::Cpu);
        for name in ["a", "b", "c"] {
            let _ = vs.root().var(name, &[1], nn::Init::Const(1.0));
        }
        let flat = FlatParams::new(&vs, |_| 0);
        let err = flat.span(|n| n != "b").unwrap_err().to_string();
        assert!(err.contains("b is out of place"), "{err}");
    }

    #[test]
    fn sgd_matches_the_hand_computed_update() {
        let cfg = OptimConfig {
            momentum: 0.9,
            weight_decay: 0.1,
            clip_value: 0.0,
            ..OptimConfig::default()
        };
        let vs = nn::VarStore::new(Device::Cpu);
        let _ = vs
            .root()
            .var_copy("w", &Tensor::from_slice(&[1.0f32, -2.0]));
        let mut flat = FlatParams::new(&vs, |_| 0);
        let span = flat.span(|_| true).unwrap();
        let step = |flat: &mut FlatParams| {
            flat.zero_grads();
            (var(&vs, "w") * 0.5).sum(Kind::Float).backward();
            flat.step(&cfg, 0.1, &span);
        };
        step(&mut flat);
        // d = g + 0.1 p = [0.6, 0.3]; b = d; p = [1 − 0.06, −2 − 0.03]
        let after = values(&var(&vs, "w"));
        assert!((after[0] - 0.94).abs() < 1e-6 && (after[1] + 2.03).abs() < 1e-6);
        step(&mut flat);
        // d = [0.5 + 0.094, 0.5 − 0.203] = [0.594, 0.297]; b = 0.9·[0.6, 0.3] + d = [1.134, 0.567]
        let after = values(&var(&vs, "w"));
        assert!((after[0] - (0.94 - 0.1134)).abs() < 1e-6, "{after:?}");
        assert!((after[1] - (-2.03 - 0.0567)).abs() < 1e-6, "{after:?}");
        let (name, buffer) = &flat.momentum()[0];
        assert_eq!(name, "w");
        assert!((values(buffer)[0] - 1.134).abs() < 1e-6);
    }

    #[test]
    fn clipping_bounds_each_gradient() {
        let vs = store([0.0; 4], 0.0);
        let mut flat = FlatParams::new(&vs, |_| 0);
        let span = flat.span(|_| true).unwrap();
        flat.zero_grads();
        set_grads(&vs, [10.0, -10.0, 0.5, 0.0], -3.0);
        let cfg = OptimConfig {
            momentum: 0.0,
            weight_decay: 0.0,
            clip_value: 1.0,
            ..OptimConfig::default()
        };
        flat.step(&cfg, 1.0, &span);
        assert_eq!(values(&var(&vs, "a.w")), [-1.0, 1.0, -0.5, 0.0]);
        assert_eq!(values(&var(&vs, "b.b")), [1.0]);
    }

    #[test]
    fn lars_scales_matrices_by_the_trust_ratio() {
        let cfg = OptimConfig {
            optimizer: Optimizer::Lars,
            momentum: 0.0,
            weight_decay: 0.0,
            lars_eta: 0.01,
            clip_value: 0.0,
            ..OptimConfig::default()
        };
        // ‖p‖ = 5, ‖g‖ = 1 → trust = 0.01·5/1 = 0.05; update = lr·trust·g.
        let vs = store([3.0, 4.0, 0.0, 0.0], 1.0);
        let mut flat = FlatParams::new(&vs, |_| 0);
        let span = flat.span(|_| true).unwrap();
        flat.zero_grads();
        set_grads(&vs, [0.6, 0.0, 0.8, 0.0], 1.0);
        flat.step(&cfg, 2.0, &span);
        let w = values(&var(&vs, "a.w"));
        let expect = [3.0 - 2.0 * 0.05 * 0.6, 4.0, -2.0 * 0.05 * 0.8, 0.0];
        for (a, b) in w.iter().zip(expect) {
            assert!((a - b).abs() < 1e-6, "{w:?}");
        }
        assert!(
            (values(&var(&vs, "b.b"))[0] - (1.0 - 2.0)).abs() < 1e-6,
            "bias takes plain SGD"
        );
    }
}
