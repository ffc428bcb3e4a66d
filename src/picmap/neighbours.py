"""Nearest neighbours of every image in pixel space, for neighbour positives.

A recipe may pair an image with one of its nearest neighbours instead of with a second view of
itself (contrastive neighbour embeddings: Damrich, Böhm, Hamprecht & Kobak, ICLR 2023, show that
positives drawn from a kNN graph turn the contrastive loss into t-SNE's). Neighbours are found
after a PCA, as t-SNE does, of the square roots of the pixel intensities: distances between
them are Hellinger distances, in which faint strokes weigh more than in plain pixels. On the 10k
Fashion-MNIST subset that makes 77.6 % of each image's 15 neighbours share its class instead of
75.4 %, and the map 2 points better; on digits the share drops from 95.1 % to 93.9 %
(benchmarks/RESULTS.md). The search is exact, in chunks on the training device: quadratic in
the number of images. On a CPU 60,000 images take under a minute (43 s measured on 2 busy
cores); a million would take hours there, which is work for a GPU.
"""

from __future__ import annotations

import torch

# Principal components the pixels are reduced to, and at most how many images find them.
_PCA_DIMS, _PCA_SAMPLE = 50, 10_000
# Floats held at once: pixels of a chunk of images, or distances in the search (256 MiB).
_FLOATS_AT_ONCE = 2**26


def _rows_at_once(width: int) -> int:
    return max(1, _FLOATS_AT_ONCE // width)


def _root_pixels(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Each image as one row of the square roots of its intensities, scaled to [0, 1]."""
    return (images.to(device).flatten(1).float() / 255).sqrt()


def principal_axes(sample: torch.Tensor, dims: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean of the rows of ``sample`` and their top ``dims`` principal axes (as rows)."""
    centre = sample.mean(0)
    return centre, torch.linalg.svd(sample - centre, full_matrices=False).Vh[:dims]


@torch.no_grad()
def root_pixel_pca(
    images: torch.Tensor, device: torch.device, dims: int = _PCA_DIMS
) -> torch.Tensor:
    """Every image's first ``dims`` principal components of its square-rooted pixels, float32.

    The axes are those of a sample of up to ``_PCA_SAMPLE`` images.
    """
    rows = _rows_at_once(images[0].numel())
    step = max(1, len(images) // min(_PCA_SAMPLE, max(rows, 4 * dims)))
    sample = _root_pixels(images[::step], device)
    centre, axes = principal_axes(sample, dims)
    return torch.cat(
        [
            (_root_pixels(images[i : i + rows], device) - centre) @ axes.T
            for i in range(0, len(images), rows)
        ]
    )


@torch.no_grad()
def nearest_neighbours(points: torch.Tensor, k: int) -> torch.Tensor:
    """Indices ``(N, k)`` of each point's ``k`` nearest other points (Euclidean), nearest first."""
    if not 0 < k < len(points):
        raise ValueError(f"neighbours k={k} must be between 1 and the number of images − 1")
    norms = (points * points).sum(1)
    rows, size = [], _rows_at_once(len(points))
    for first in range(0, len(points), size):
        chunk = points[first : first + size]
        distances = norms[first : first + size, None] + norms - 2 * chunk @ points.T
        own = torch.arange(first, first + len(chunk), device=points.device)
        distances[own - first, own] = float("inf")
        rows.append(distances.topk(k, dim=1, largest=False).indices)
    return torch.cat(rows)


def draw_partners(
    order: torch.Tensor, neighbours: torch.Tensor, share: float, gen: torch.Generator
) -> torch.Tensor:
    """Each image of ``order``: one of its neighbours with probability ``share``, else itself."""
    n, k = len(order), neighbours.shape[1]
    pick = torch.randint(k, (n,), generator=gen, device=order.device)
    use = torch.rand(n, generator=gen, device=order.device) < share
    return torch.where(use, neighbours[order, pick], order)
