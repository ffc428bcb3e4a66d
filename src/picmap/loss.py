"""Contrastive InfoNCE losses: Cauchy similarity (t-SimCNE) and cosine similarity (SimCLR)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

METRICS = ("cauchy", "cosine")


def log_similarity(
    queries: torch.Tensor, keys: torch.Tensor, metric: str, temperature: float
) -> torch.Tensor:
    """Log of the pairwise similarity between rows of ``queries`` and rows of ``keys``.

    Cauchy: ``log 1/(1+‖q−k‖²)``. Cosine: ``cos(q, k) / temperature``.
    """
    if metric == "cauchy":
        # ‖q−k‖² expanded; clamped because rounding can make it slightly negative.
        sq = (queries * queries).sum(1, keepdim=True) + (keys * keys).sum(1) - 2 * queries @ keys.T
        return -torch.log1p(sq.clamp_min(0))
    if metric == "cosine":
        return F.normalize(queries, dim=1) @ F.normalize(keys, dim=1).T / temperature
    raise ValueError(f"metric={metric!r} is not known; use one of {METRICS}")


class _GatherWithGradients(torch.autograd.Function):
    """All processes' rows, stacked in rank order; backward hands each process the gradient of
    its own rows summed over all processes (every process's loss depends on every row).

    Written here because PyTorch's autograd gathers keep moving: torch.distributed.nn's is
    deprecated in 2.14 and `_functional_collectives.all_gather_single_autograd` is missing from
    2.11. All-reduce instead of reduce-scatter in backward, because gloo has no reduce-scatter;
    the gradient is 2·batch × dim floats, tiny next to the network's all-reduce.
    """

    @staticmethod
    def forward(ctx, z: torch.Tensor) -> torch.Tensor:
        z = z.contiguous()
        gathered = z.new_empty((dist.get_world_size() * len(z), *z.shape[1:]))
        dist.all_gather_into_tensor(gathered, z)
        return gathered

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        rows = len(grad) // dist.get_world_size()
        return grad[dist.get_rank() * rows : (dist.get_rank() + 1) * rows]


def _gather_across_processes(z: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All processes' rows, with gradients flowing back to each; and this process's offset."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return z, 0
    return _GatherWithGradients.apply(z), dist.get_rank() * len(z)


def info_nce(
    z_a: torch.Tensor, z_b: torch.Tensor, metric: str = "cauchy", temperature: float = 0.5
) -> torch.Tensor:
    """InfoNCE over a batch of view pairs ``(z_a[i], z_b[i])``.

    Each view's positive is the other view of its image; its negatives are all other views in
    the batch — across all processes when running distributed, so that N processes × batch B
    train the same objective as one process with batch N·B. Computed in float32.
    """
    local = torch.cat([z_a, z_b]).float()
    everything, offset = _gather_across_processes(local)
    n_local = len(z_a)
    rows = torch.arange(len(local), device=local.device)
    logits = log_similarity(local, everything, metric, temperature)
    # Row r of `local` is global row `offset + r`; exclude it from its own denominator.
    logits[rows, offset + rows] = float("-inf")
    # Local layout is [a_0..a_{n-1}, b_0..b_{n-1}]; gathered layout repeats it per process.
    positives = offset + torch.where(rows < n_local, rows + n_local, rows - n_local)
    return F.cross_entropy(logits, positives)
