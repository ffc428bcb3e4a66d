//! The map's quality as the paper measures it: kNN classification accuracy (k = 15) in the
//! embedding, fitted on the training split and scored on the test split (leave-one-out on the
//! training split when the data has no test split).

use tch::{Device, Kind, Tensor};

/// Queries per distance block: a block is queries × references floats.
const BLOCK: i64 = 512;

/// Fraction of `queries` whose majority label among their `k` nearest `refs` is their own.
/// Ties go to the smallest label, as scikit-learn's KNeighborsClassifier decides them.
/// With `leave_one_out`, queries are the references themselves and each skips itself.
pub fn knn_accuracy(
    refs: &Tensor,
    ref_labels: &Tensor,
    queries: &Tensor,
    labels: &Tensor,
    k: i64,
    leave_one_out: bool,
) -> f64 {
    let _guard = tch::no_grad_guard();
    let n = queries.size()[0];
    if n == 0 || refs.size()[0] <= i64::from(leave_one_out) {
        return f64::NAN;
    }
    let skip = i64::from(leave_one_out);
    let k = k.min(refs.size()[0] - skip);
    let refs = refs.to_device(Device::Cpu).to_kind(Kind::Float);
    let ref_labels = ref_labels.to_device(Device::Cpu);
    let mut correct = 0i64;
    let mut start = 0;
    while start < n {
        let len = BLOCK.min(n - start);
        let q = queries
            .narrow(0, start, len)
            .to_device(Device::Cpu)
            .to_kind(Kind::Float);
        let d = Tensor::cdist(&q, &refs, 2.0, None::<i64>);
        let (_, nearest) = d.topk(k + skip, 1, false, true);
        let nearest = nearest.narrow(1, skip, k);
        let votes = ref_labels
            .index_select(0, &nearest.reshape([-1]))
            .view([len, k]);
        let (predicted, _) = votes.mode(1, false);
        let truth = labels.narrow(0, start, len).to_device(Device::Cpu);
        correct += predicted
            .eq_tensor(&truth)
            .sum(Kind::Int64)
            .int64_value(&[]);
        start += len;
    }
    correct as f64 / n as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separated_clusters_score_one_and_noise_scores_near_chance() {
        let centres = Tensor::from_slice(&[0.0f32, 0.0, 10.0, 0.0, 0.0, 10.0]).view([3, 2]);
        let labels = Tensor::arange(300, (Kind::Int64, Device::Cpu)).remainder(3);
        let x =
            centres.index_select(0, &labels) + Tensor::randn([300, 2], (Kind::Float, Device::Cpu));
        assert_eq!(knn_accuracy(&x, &labels, &x, &labels, 15, true), 1.0);
        let noise = Tensor::randn([300, 2], (Kind::Float, Device::Cpu));
        let acc = knn_accuracy(&noise, &labels, &noise, &labels, 15, true);
        assert!(acc < 0.55, "{acc}");
        // Leave-one-out matters: with k = 1 and no skip, each point finds itself.
        assert_eq!(
            knn_accuracy(&noise, &labels, &noise, &labels, 1, false),
            1.0
        );
        assert!(knn_accuracy(&noise, &labels, &noise, &labels, 1, true) < 0.6);
    }

    #[test]
    fn ties_go_to_the_smallest_label() {
        let refs = Tensor::from_slice(&[1.0f32, -1.0]).view([2, 1]);
        let ref_labels = Tensor::from_slice(&[4i64, 2]);
        let q = Tensor::from_slice(&[0.0f32]).view([1, 1]);
        assert_eq!(
            knn_accuracy(
                &refs,
                &ref_labels,
                &q,
                &Tensor::from_slice(&[2i64]),
                2,
                false
            ),
            1.0
        );
    }
}
