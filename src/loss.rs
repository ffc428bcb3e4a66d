//! InfoNCE with the Cauchy similarity `1/(1+‖zᵢ−zⱼ‖²)` over the global batch.
//!
//! The global loss is the mean over all 2B views of `−log(sim(i, pos(i)) / Σ_{j≠i} sim(i, j))`.
//! Each rank computes the sum over its own 2b rows against all 2B gathered rows, divided by 2B,
//! so the ranks' parts add up to the global loss, and the sum over ranks of each part's
//! gradient with respect to the gathered rows is the global gradient.

use tch::{Kind, Tensor};

/// How a rank's rows sit in the gathered batch: each rank contributes `local` rows laid out as
/// `[first views; second views]`, ranks stacked in order.
#[derive(Debug, Clone, Copy)]
pub struct Rows {
    pub offset: i64,
    pub local: i64,
    pub total: i64,
}

impl Rows {
    /// The rows of rank `rank` of `world`, each rank holding `local` rows.
    pub fn of_rank(rank: usize, world: usize, local: i64) -> Rows {
        Rows {
            offset: rank as i64 * local,
            local,
            total: local * world as i64,
        }
    }
}

/// This rank's part of the global loss, a scalar differentiable with respect to `all`.
pub fn cauchy_infonce_part(all: &Tensor, rows: Rows) -> Tensor {
    let Rows {
        offset,
        local,
        total,
    } = rows;
    let device = all.device();
    let q = all.narrow(0, offset, local);
    let kind = all.kind();
    let sq = (&q * &q).sum_dim_intlist(1, true, kind)
        + (all * all).sum_dim_intlist(1, false, kind).unsqueeze(0)
        - q.matmul(&all.transpose(0, 1)) * 2.0;
    // Expanded squared distances can round below zero; the log of the kernel is −log1p(d²).
    let logits = sq.clamp_min(0.0).log1p().neg();
    let own = Tensor::arange(local, (Kind::Int64, device)) + offset;
    let is_self = own
        .unsqueeze(1)
        .eq_tensor(&Tensor::arange(total, (Kind::Int64, device)).unsqueeze(0));
    let logits = logits.masked_fill(&is_self, f64::NEG_INFINITY);
    let half = local / 2;
    let local_index = Tensor::arange(local, (Kind::Int64, device));
    let partner = (local_index + half).remainder(local) + offset;
    let positive = logits
        .gather(1, &partner.unsqueeze(1), false)
        .squeeze_dim(1);
    (logits.logsumexp(&[1i64][..], false) - positive).sum(kind) / total as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// The loss written out pair by pair, in f64.
    fn naive(z: &[[f64; 2]], offset: usize, local: usize) -> f64 {
        let n = z.len();
        let sim = |i: usize, j: usize| {
            1.0 / (1.0 + (z[i][0] - z[j][0]).powi(2) + (z[i][1] - z[j][1]).powi(2))
        };
        let mut s = 0.0;
        for r in 0..local {
            let i = offset + r;
            let pos = offset + (r + local / 2) % local;
            let denom: f64 = (0..n).filter(|&j| j != i).map(|j| sim(i, j)).sum();
            s -= (sim(i, pos) / denom).ln();
        }
        s / n as f64
    }

    fn points(n: usize) -> Vec<[f64; 2]> {
        (0..n)
            .map(|i| [(i as f64 * 0.7).sin() * 2.0, (i as f64 * 1.3).cos()])
            .collect()
    }

    #[test]
    fn matches_the_pairwise_definition_and_parts_add_up() {
        let z = points(12);
        let flat: Vec<f64> = z.iter().flatten().copied().collect();
        let all = Tensor::from_slice(&flat)
            .view([12, 2])
            .to_kind(Kind::Double);
        let whole = cauchy_infonce_part(
            &all,
            Rows {
                offset: 0,
                local: 12,
                total: 12,
            },
        )
        .double_value(&[]);
        assert!((whole - naive(&z, 0, 12)).abs() < 1e-12);
        // Two ranks of 6 rows each: their parts are their own terms, and they sum to the whole
        // only when the pairs live inside each rank's rows, as the trainer lays them out.
        let parts: f64 = (0..2)
            .map(|r| {
                cauchy_infonce_part(
                    &all,
                    Rows {
                        offset: 6 * r,
                        local: 6,
                        total: 12,
                    },
                )
                .double_value(&[])
            })
            .sum();
        assert!((parts - naive(&z, 0, 6) - naive(&z, 6, 6)).abs() < 1e-12);
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let z = points(8);
        let flat: Vec<f64> = z.iter().flatten().copied().collect();
        let all = Tensor::from_slice(&flat)
            .view([8, 2])
            .set_requires_grad(true);
        let rows = Rows {
            offset: 4,
            local: 4,
            total: 8,
        };
        let loss = cauchy_infonce_part(&all, rows);
        let grad = Tensor::run_backward(&[&loss], &[&all], false, false).remove(0);
        let eps = 1e-6;
        for k in 0..16 {
            let mut plus = z.clone();
            let mut minus = z.clone();
            plus[k / 2][k % 2] += eps;
            minus[k / 2][k % 2] -= eps;
            let fd = (naive(&plus, 4, 4) - naive(&minus, 4, 4)) / (2.0 * eps);
            let g = grad.double_value(&[(k / 2) as i64, (k % 2) as i64]);
            assert!((fd - g).abs() < 1e-7, "element {k}: {fd} vs {g}");
        }
        let _ = Device::Cpu;
    }
}
