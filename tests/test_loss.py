import math

import pytest
import torch

from picmap.loss import info_nce, log_similarity


def _direct_info_nce(z_a, z_b, similarity):
    """The InfoNCE loss written out term by term, with plain Python loops."""
    z = torch.cat([z_a, z_b]).double()
    n = len(z_a)
    total = 0.0
    for i in range(2 * n):
        pos = i + n if i < n else i - n
        denom = sum(similarity(z[i], z[j]) for j in range(2 * n) if j != i)
        total += -math.log(similarity(z[i], z[pos]) / denom)
    return total / (2 * n)


def _cauchy(a, b):
    return float(1 / (1 + ((a - b) ** 2).sum()))


def _cosine(a, b, temperature=0.5):
    return math.exp(float(a @ b / (a.norm() * b.norm())) / temperature)


@pytest.mark.parametrize(("metric", "similarity"), [("cauchy", _cauchy), ("cosine", _cosine)])
def test_info_nce_matches_direct_computation(metric, similarity):
    gen = torch.Generator().manual_seed(0)
    z_a, z_b = torch.randn(4, 2, generator=gen), torch.randn(4, 2, generator=gen)
    got = info_nce(z_a, z_b, metric=metric, temperature=0.5)
    assert got.item() == pytest.approx(_direct_info_nce(z_a, z_b, similarity), rel=1e-5)


def test_cauchy_loss_prefers_pairs_together():
    apart = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    near = info_nce(apart, apart + 0.01)
    far = info_nce(apart, apart.roll(1, dims=0))
    assert near < far


def test_log_similarity_is_cauchy_kernel():
    q = torch.tensor([[0.0, 0.0]])
    k = torch.tensor([[3.0, 4.0]])
    assert log_similarity(q, k, "cauchy", 1.0).item() == pytest.approx(-math.log(26.0))


def test_loss_is_float32_and_finite_for_half_inputs():
    z = torch.randn(8, 2).to(torch.bfloat16)
    loss = info_nce(z[:4], z[4:])
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_gradient_flows_to_both_views():
    z_a = torch.randn(5, 2, requires_grad=True)
    z_b = torch.randn(5, 2, requires_grad=True)
    info_nce(z_a, z_b).backward()
    assert z_a.grad.abs().sum() > 0 and z_b.grad.abs().sum() > 0


def test_unknown_metric_is_refused():
    with pytest.raises(ValueError, match="metric='euclid'"):
        info_nce(torch.randn(2, 2), torch.randn(2, 2), metric="euclid")
