//! SGD with momentum and weight decay (PyTorch's semantics), and LARS, over our own tensors.
//!
//! Hand-written because tch's optimizers keep their momentum buffers inside libtorch where a
//! checkpoint cannot reach them; an exact resume needs them, so they live here, by name.

use std::collections::BTreeMap;

use tch::{Kind, Tensor};

use crate::config::{OptimConfig, Optimizer};

/// The optimizer's state: one momentum buffer per trained variable, by name.
#[derive(Debug, Default)]
pub struct Sgd {
    pub buffers: BTreeMap<String, Tensor>,
}

impl Sgd {
    /// One update of `params` with their gradients `grads` (same order), at learning rate `lr`.
    ///
    /// SGD: `d = g + wd·p; b = m·b + d; p −= lr·b`. LARS (for weight matrices and kernels; biases
    /// and norm parameters take plain SGD): `d` is scaled by the trust ratio
    /// `η·‖p‖ / (‖g‖ + wd·‖p‖)` before entering the buffer.
    pub fn step(
        &mut self,
        cfg: &OptimConfig,
        lr: f64,
        params: &[(String, Tensor)],
        grads: &[Tensor],
    ) {
        let _guard = tch::no_grad_guard();
        for ((name, p), g) in params.iter().zip(grads) {
            let mut d = g + p * cfg.weight_decay;
            if cfg.optimizer == Optimizer::Lars && p.dim() > 1 {
                let pn = p.norm().double_value(&[]);
                let gn = g.norm().double_value(&[]);
                let denom = gn + cfg.weight_decay * pn;
                if pn > 0.0 && denom > 0.0 {
                    d *= cfg.lars_eta * pn / denom;
                }
            }
            let buf = match self.buffers.get_mut(name) {
                Some(b) => {
                    *b = &*b * cfg.momentum + &d;
                    b
                }
                None => self
                    .buffers
                    .entry(name.clone())
                    .or_insert(d.to_kind(Kind::Float)),
            };
            let mut p = p.shallow_clone();
            p -= &*buf * lr;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OptimConfig;

    fn vec(t: &Tensor) -> Vec<f64> {
        Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
    }

    #[test]
    fn sgd_matches_the_hand_computed_update() {
        let cfg = OptimConfig {
            momentum: 0.9,
            weight_decay: 0.1,
            ..OptimConfig::default()
        };
        let p = Tensor::from_slice(&[1.0f32, -2.0]);
        let g = Tensor::from_slice(&[0.5f32, 0.5]);
        let mut opt = Sgd::default();
        let params = vec![("w".to_owned(), p.shallow_clone())];
        opt.step(&cfg, 0.1, &params, &[g.shallow_clone()]);
        // d = g + 0.1 p = [0.6, 0.3]; b = d; p = [1 − 0.06, −2 − 0.03]
        let after = vec(&p);
        assert!((after[0] - 0.94).abs() < 1e-6 && (after[1] + 2.03).abs() < 1e-6);
        opt.step(&cfg, 0.1, &params, &[g]);
        // d = [0.5 + 0.094, 0.5 − 0.203] = [0.594, 0.297]; b = 0.9·[0.6, 0.3] + d = [1.134, 0.567]
        let after = vec(&p);
        assert!((after[0] - (0.94 - 0.1134)).abs() < 1e-6, "{after:?}");
        assert!((after[1] - (-2.03 - 0.0567)).abs() < 1e-6, "{after:?}");
    }

    #[test]
    fn lars_scales_matrices_by_the_trust_ratio() {
        let cfg = OptimConfig {
            optimizer: Optimizer::Lars,
            momentum: 0.0,
            weight_decay: 0.0,
            lars_eta: 0.01,
            ..OptimConfig::default()
        };
        // ‖p‖ = 5, ‖g‖ = 1 → trust = 0.01·5/1 = 0.05; update = lr·trust·g.
        let p = Tensor::from_slice(&[3.0f32, 4.0, 0.0, 0.0]).view([2, 2]);
        let g = Tensor::from_slice(&[0.6f32, 0.0, 0.8, 0.0]).view([2, 2]);
        let bias = Tensor::from_slice(&[1.0f32]);
        let params = vec![
            ("w".to_owned(), p.shallow_clone()),
            ("b".to_owned(), bias.shallow_clone()),
        ];
        Sgd::default().step(&cfg, 2.0, &params, &[g, Tensor::from_slice(&[1.0f32])]);
        let w = vec(&p);
        let expect = [3.0 - 2.0 * 0.05 * 0.6, 4.0, -2.0 * 0.05 * 0.8, 0.0];
        for (a, b) in w.iter().zip(expect) {
            assert!((a - b).abs() < 1e-6, "{w:?}");
        }
        assert!(
            (vec(&bias)[0] - (1.0 - 2.0)).abs() < 1e-6,
            "bias takes plain SGD"
        );
    }
}
