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

/// Similarities a block of rows may hold at once (rows × all rows): 2²⁶ floats, 256 MiB per
/// matrix. A rank's rows against the whole global batch grow with the square of the batch
/// (2b × 2B: 4 GiB per matrix at B = 16,384 on one rank, several alive for the backward pass),
/// so larger parts are computed block by block.
const BLOCK_ELEMENTS: i64 = 1 << 26;

/// This rank's part of the global loss, a scalar differentiable with respect to `all`.
pub fn cauchy_infonce_part(all: &Tensor, rows: Rows) -> Tensor {
    cauchy_infonce_block(all, rows, 0, rows.local)
}

/// This rank's part of the global loss and its gradient with respect to every row of `all`
/// (which carries no graph): the part computed in blocks of rows, each block's backward pass
/// run before the next block is built, so that memory follows the block and not `rows`. The
/// blocks' parts add up to the whole part (each row's term is its own), and so do their
/// gradients. With a part small enough for one block the arithmetic is that of one pass.
pub fn cauchy_infonce_part_and_gradient(all: &Tensor, rows: Rows) -> (Tensor, Tensor) {
    let block = (BLOCK_ELEMENTS / rows.total.max(1)).clamp(1, rows.local.max(1));
    let all = all.detach().set_requires_grad(true);
    let mut loss: Option<Tensor> = None;
    let mut grad: Option<Tensor> = None;
    for start in (0..rows.local).step_by(block as usize) {
        let part = cauchy_infonce_block(&all, rows, start, block.min(rows.local - start));
        let g = Tensor::run_backward(&[&part], &[&all], false, false).remove(0);
        let part = part.detach();
        loss = Some(loss.map_or(part.shallow_clone(), |l| l + &part));
        grad = Some(grad.map_or(g.shallow_clone(), |acc| acc + &g));
    }
    let zero = || Tensor::zeros([], (all.kind(), all.device()));
    (
        loss.unwrap_or_else(zero),
        grad.unwrap_or_else(|| all.zeros_like()),
    )
}

/// The terms of rows `start..start + len` of this rank's rows (sum over them, divided by the
/// global 2B), differentiable with respect to `all`.
fn cauchy_infonce_block(all: &Tensor, rows: Rows, start: i64, len: i64) -> Tensor {
    let Rows {
        offset,
        local,
        total,
    } = rows;
    let device = all.device();
    let q = all.narrow(0, offset + start, len);
    let kind = all.kind();
    let sq = (&q * &q).sum_dim_intlist(1, true, kind)
        + (all * all).sum_dim_intlist(1, false, kind).unsqueeze(0)
        - q.matmul(&all.transpose(0, 1)) * 2.0;
    // Expanded squared distances can round below zero; the log of the kernel is −log1p(d²).
    let logits = sq.clamp_min(0.0).log1p().neg();
    // This block's rows as indices among the rank's rows, and among all rows.
    let local_index = Tensor::arange(len, (Kind::Int64, device)) + start;
    let own = &local_index + offset;
    let is_self = own
        .unsqueeze(1)
        .eq_tensor(&Tensor::arange(total, (Kind::Int64, device)).unsqueeze(0));
    let logits = logits.masked_fill(&is_self, f64::NEG_INFINITY);
    let half = local / 2;
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
    fn blocks_of_rows_give_the_whole_parts_loss_and_gradient() {
        let z = points(24);
        let flat: Vec<f64> = z.iter().flatten().copied().collect();
        let all = Tensor::from_slice(&flat)
            .view([24, 2])
            .to_kind(Kind::Double);
        let rows = Rows {
            offset: 12,
            local: 12,
            total: 24,
        };
        let (loss, grad) = cauchy_infonce_part_and_gradient(&all, rows);
        let leaf = all.set_requires_grad(true);
        let whole = cauchy_infonce_part(&leaf, rows);
        let expected = Tensor::run_backward(&[&whole], &[&leaf], false, false).remove(0);
        assert!((loss.double_value(&[]) - whole.double_value(&[])).abs() < 1e-12);
        assert!(grad.allclose(&expected, 0.0, 1e-12, false));
        // Blocks of 5, 5 and 2 rows, partners crossing block borders: the same sums.
        let mut summed = 0.0;
        let mut grads = all.zeros_like();
        for (start, len) in [(0, 5), (5, 5), (10, 2)] {
            let leaf = all.detach().set_requires_grad(true);
            let part = cauchy_infonce_block(&leaf, rows, start, len);
            summed += part.double_value(&[]);
            grads += Tensor::run_backward(&[&part], &[&leaf], false, false).remove(0);
        }
        assert!((summed - whole.double_value(&[])).abs() < 1e-12);
        assert!(grads.allclose(&expected, 0.0, 1e-12, false));
        assert!((summed - naive(&z, 12, 12)).abs() < 1e-12);
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
